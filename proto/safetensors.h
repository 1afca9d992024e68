/* The safetensors file format (huggingface/safetensors), our checkpoint format.
 *
 *     [u64 little-endian N][N bytes of JSON header][data]
 *
 * The header is a JSON object: one entry per tensor,
 *     "name": {"dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end]}
 * with offsets relative to the start of the data section, plus an optional
 * "__metadata__": {"key": "string value", ...}.  PyTorch, the safetensors
 * library and our own scripts read these files; the published SwAV weights
 * are converted to it by scripts/torch-to-safetensors.
 *
 * A file is untrusted input: the parser validates everything before any
 * tensor is handed out (header length cap, JSON syntax via jansson, field
 * types, dtype names, rank and dims, name length, shape x dtype == byte
 * length, offsets inside the data section, no two tensors overlapping) and
 * answers a fault with a status code and a message naming the tensor.  It
 * never crashes on bad input and writes *out only on success.  Unknown
 * fields inside an entry are ignored (room for later format additions).
 *
 * The writer lays tensors out contiguously (no gaps, as the reference library
 * requires), wider dtypes first so that each tensor is aligned to its element
 * size, pads the header with spaces to a multiple of 8, and replaces the file
 * atomically (common/fileio.h). */
#ifndef SWAV_PROTO_SAFETENSORS_H
#define SWAV_PROTO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define SAFETENSORS_MAX_HEADER_BYTES (16u << 20) /* JSON header cap */
#define SAFETENSORS_MAX_NAME 255                 /* bytes of a tensor name or metadata key */
#define SAFETENSORS_MAX_META_VALUE (1u << 20)    /* bytes of one metadata value */
#define SAFETENSORS_MAX_TENSORS 100000
#define SAFETENSORS_MAX_DIMS 8
#define SAFETENSORS_MAX_FILE_BYTES (64ull << 30) /* safetensors_read refuses larger files */

enum safetensors_dtype {
    SAFETENSORS_F32 = 0,
    SAFETENSORS_F16,
    SAFETENSORS_BF16,
    SAFETENSORS_I64,
    SAFETENSORS_I32,
    SAFETENSORS_U8,
    SAFETENSORS_NDTYPES
};

enum safetensors_status {
    SAFETENSORS_OK = 0,
    SAFETENSORS_ERR_IO,              /* cannot open/read/write the file */
    SAFETENSORS_ERR_TRUNCATED,       /* shorter than 8 bytes, or than 8 + header length */
    SAFETENSORS_ERR_HEADER_TOO_LARGE,/* header length over SAFETENSORS_MAX_HEADER_BYTES */
    SAFETENSORS_ERR_JSON,            /* the header is not valid JSON (or has duplicate keys) */
    SAFETENSORS_ERR_NOT_OBJECT,      /* the header, an entry or __metadata__ is not an object */
    SAFETENSORS_ERR_MISSING_FIELD,   /* an entry lacks dtype, shape or data_offsets */
    SAFETENSORS_ERR_WRONG_TYPE,      /* a field of the wrong JSON type (or a non-string metadata value) */
    SAFETENSORS_ERR_BAD_DTYPE,       /* a dtype that is not one of ours */
    SAFETENSORS_ERR_BAD_SHAPE,       /* rank over the cap, a negative dim, or numel overflow */
    SAFETENSORS_ERR_BAD_NAME,        /* empty or over SAFETENSORS_MAX_NAME, or an embedded NUL */
    SAFETENSORS_ERR_TOO_MANY,        /* more than SAFETENSORS_MAX_TENSORS tensors */
    SAFETENSORS_ERR_OFFSETS,         /* begin > end, or end past the data section */
    SAFETENSORS_ERR_SIZE_MISMATCH,   /* end - begin != numel x dtype size */
    SAFETENSORS_ERR_OVERLAP,         /* two tensors share bytes */
    SAFETENSORS_ERR_DUPLICATE,       /* writer: a name given twice */
    SAFETENSORS_ERR_METADATA,        /* metadata key/value over its cap */
    SAFETENSORS_ERR_NOT_FOUND,       /* lookup of a name the file does not hold */
    SAFETENSORS_ERR_CONVERT,         /* a dtype conversion we do not do */
};

const char *safetensors_status_str(enum safetensors_status st);
const char *safetensors_dtype_name(enum safetensors_dtype dt); /* "F32", ... */
size_t safetensors_dtype_size(enum safetensors_dtype dt);      /* bytes per element */

struct safetensors_tensor {
    const char *name;  /* NUL terminated, points into the file's name storage */
    enum safetensors_dtype dtype;
    int ndim;          /* 0 for a scalar (numel 1) */
    int64_t shape[SAFETENSORS_MAX_DIMS];
    uint64_t numel;
    uint64_t nbytes;
    const uint8_t *data; /* into the file's bytes; possibly unaligned: copy, do not cast
                            (NULL after safetensors_read_header) */
};

struct safetensors_meta {
    const char *key;
    const char *value;
};

/* A parsed file.  Tensors are in the header's order (jansson keeps it). */
struct safetensors_file {
    struct safetensors_tensor *tensors;
    int ntensors;
    struct safetensors_meta *meta;
    int nmeta;
    /* private */
    uint8_t *owned;  /* the whole file when read by safetensors_read */
    char *strings;   /* names, keys and values, NUL separated */
};

/* Parse bytes buf[0..len) (which must outlive *out: tensors point into it).
 * On failure returns the status and a message in err naming the tensor or
 * field; *out is untouched. */
enum safetensors_status safetensors_parse(struct safetensors_file *out, const uint8_t *buf,
                                          size_t len, char *err, size_t errlen);
/* Read and parse a file of at most max_bytes (0: SAFETENSORS_MAX_FILE_BYTES). */
enum safetensors_status safetensors_read(struct safetensors_file *out, const char *path,
                                         size_t max_bytes, char *err, size_t errlen);
/* Read and validate only the header of a file (offsets checked against the
 * file's size): names, dtypes, shapes and metadata without reading the data;
 * every tensor's data is NULL.  For scanning a folder of checkpoints. */
enum safetensors_status safetensors_read_header(struct safetensors_file *out, const char *path,
                                                char *err, size_t errlen);
void safetensors_file_free(struct safetensors_file *f);

/* Index of the tensor called name, or -1. */
int safetensors_find(const struct safetensors_file *f, const char *name);
/* Value of a metadata key, or NULL. */
const char *safetensors_meta_get(const struct safetensors_file *f, const char *key);

/* Copy tensor t into dst as float32 (F32 copied; F16, BF16 widened; integer
 * dtypes converted); dst holds t->numel floats. */
enum safetensors_status safetensors_tensor_to_f32(const struct safetensors_tensor *t, float *dst);
/* Copy tensor t into dst as int64 (I64 copied, I32/U8 widened; float dtypes refused). */
enum safetensors_status safetensors_tensor_to_i64(const struct safetensors_tensor *t,
                                                  int64_t *dst);

/* ---- writer ---------------------------------------------------------------- */

struct safetensors_writer_entry;
struct safetensors_writer {
    struct safetensors_writer_entry *e;
    int n, cap;
    void *meta; /* json_t object */
};

void safetensors_writer_init(struct safetensors_writer *w);
void safetensors_writer_free(struct safetensors_writer *w);
/* Adds a tensor; data (numel x dtype size bytes) is borrowed until the write.
 * Refuses an empty/too long name, a duplicate, or a bad shape. */
enum safetensors_status safetensors_writer_add(struct safetensors_writer *w, const char *name,
                                               enum safetensors_dtype dtype, int ndim,
                                               const int64_t *shape, const void *data);
enum safetensors_status safetensors_writer_set_meta(struct safetensors_writer *w,
                                                    const char *key, const char *value);
/* Write atomically to path (temporary file, fsync, rename). */
enum safetensors_status safetensors_writer_write(const struct safetensors_writer *w,
                                                 const char *path, char *err, size_t errlen);
/* Serialize into one malloc'd buffer (tests, fuzz seeds, in-memory transfer). */
enum safetensors_status safetensors_writer_to_buffer(const struct safetensors_writer *w,
                                                     uint8_t **buf, size_t *len);

/* libFuzzer-style entry point: parses data, touches every tensor, returns 0. */
int safetensors_fuzz_one(const uint8_t *data, size_t size);

#endif
