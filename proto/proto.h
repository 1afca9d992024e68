/* Wire messages of every link (DESIGN.md "Wire protocol"): typed structs with
 * one encoder and one decoder+validator per message type.
 *
 * A message is an array of frames (a ZeroMQ multipart message without the
 * ROUTER identity frames, which proto/wire.h handles).  Frame 0 is a msgpack
 * map, the header:
 *
 *     {"v": 1, "type": "order", "run": "<run id>", <the type's fields>...}
 *
 * Tensors travel as raw frames after the header, in a fixed order per type
 * (documented below and in docs/protocol.md).  The header describes each one
 * as {"dt": "u8"|"i32"|"u32"|"f32", "shape": [d0, ...]} under the tensor's
 * field name, and a decoder checks dtype x shape against the frame's byte
 * length.  Encoders use msgpack-c's packer; decoders use the small
 * bounds-checked msgpack reader of proto.c, which never allocates (msgpack-c's
 * unpacker reserves memory from counts read off the wire before it has seen
 * the elements).
 *
 * Decoders work on frames only (no ZeroMQ), validate the version, the type,
 * the run id, then each field, return at the first failure with one status
 * code per fault, and write *out only on success.  Every count and size read
 * from the wire is capped (the PROTO_MAX_* below).  Strings are copied into
 * the struct's fixed arrays (NUL terminated; an embedded NUL is rejected);
 * tensors are referenced, not copied: out->x.data points into the frame,
 * which must outlive the decoded struct.
 *
 * Unknown header keys are skipped (a newer peer may add fields); a missing
 * required key, a duplicate key, or a value of the wrong msgpack type is an
 * error.  Integers must be msgpack integers; floats (double fields) accept
 * msgpack float32/float64 and integers. */
#ifndef SWAV_PROTO_PROTO_H
#define SWAV_PROTO_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1

/* ---- caps on everything read from the wire -------------------------------- */
#define PROTO_MAX_FRAMES 16           /* header + tensor frames */
#define PROTO_MAX_HEADER_BYTES (1u << 20)
#define PROTO_MAX_ID 64               /* run id, loader id, dataset tag, role, counter names, field names */
#define PROTO_MAX_STR 4096            /* paths, messages */
#define PROTO_MAX_NOTE_TEXT 256       /* text of one per-image note */
#define PROTO_MAX_LIST 64             /* crops_for_assign, status counters, notes */
#define PROTO_MAX_GROUPS 8            /* resolution groups (nmb_crops/size_crops entries) */
#define PROTO_MAX_DIMS 4              /* tensor rank */
#define PROTO_MAX_ORDER_IMAGES 65536u /* image indices per order */
#define PROTO_MAX_CROP_SIZE 4096u     /* size_crops entries, resize */
#define PROTO_MAX_CROPS_PER_IMAGE 64u /* nmb_crops entries */
#define PROTO_MAX_TENSOR_BYTES_DEFAULT (1ull << 30) /* per tensor; configurable per decode */
#define PROTO_MAX_DEPTH 8             /* nesting of skipped unknown values */
#define PROTO_NCCL_ID_BYTES 128

/* ---- status codes: one per fault ---------------------------------------- */
enum proto_status {
    PROTO_OK = 0,
    PROTO_ERR_NO_FRAMES,        /* zero frames, or an empty header frame */
    PROTO_ERR_TOO_MANY_FRAMES,  /* more than PROTO_MAX_FRAMES */
    PROTO_ERR_HEADER_TOO_LARGE, /* header frame over PROTO_MAX_HEADER_BYTES */
    PROTO_ERR_TRUNCATED,        /* the header's msgpack ends mid-value */
    PROTO_ERR_TRAILING_BYTES,   /* bytes after the header map */
    PROTO_ERR_NOT_MAP,          /* the header is not a msgpack map */
    PROTO_ERR_TOO_DEEP,         /* an (unknown) value nested deeper than PROTO_MAX_DEPTH */
    PROTO_ERR_BAD_KEY,          /* a map key that is not a string (or too long) */
    PROTO_ERR_DUPLICATE_KEY,    /* a known key given twice */
    PROTO_ERR_MISSING_FIELD,    /* a required field is absent */
    PROTO_ERR_WRONG_TYPE,       /* a field of the wrong msgpack type */
    PROTO_ERR_OUT_OF_RANGE,     /* a number outside its allowed range (or not finite) */
    PROTO_ERR_STRING_TOO_LONG,  /* a string over its cap */
    PROTO_ERR_BAD_STRING,       /* a string with an embedded NUL */
    PROTO_ERR_LIST_TOO_LONG,    /* a list over its cap */
    PROTO_ERR_BAD_VERSION,      /* "v" is not PROTO_VERSION */
    PROTO_ERR_UNKNOWN_TYPE,     /* "type" names no message type */
    PROTO_ERR_WRONG_MSG_TYPE,   /* decoder of one type given another type */
    PROTO_ERR_WRONG_RUN,        /* "run" is not the expected run id */
    PROTO_ERR_BAD_DTYPE,        /* a tensor's dtype is unknown or not the one expected */
    PROTO_ERR_BAD_SHAPE,        /* rank 0 or > PROTO_MAX_DIMS, or a shape that disagrees with other fields */
    PROTO_ERR_TENSOR_TOO_LARGE, /* a tensor over the byte limit */
    PROTO_ERR_FRAME_COUNT,      /* number of frames differs from the tensors described */
    PROTO_ERR_LENGTH_MISMATCH,  /* a frame's length differs from dtype x shape */
    PROTO_ERR_MISALIGNED,       /* a tensor frame not aligned to its element size */
    PROTO_ERR_INCONSISTENT,     /* fields disagree (list lengths, counts) */
    PROTO_ERR_BAD_ARG,          /* encoder given an invalid struct (a caller bug) */
    PROTO_ERR_AGAIN,            /* wire: no message now (non-blocking / timeout) */
    PROTO_ERR_ZMQ,              /* wire: a ZeroMQ call failed (see zmq_errno) */
    PROTO_STATUS_COUNT
};
const char *proto_status_str(enum proto_status st);

/* ---- message types -------------------------------------------------------- */
enum proto_type {
    PROTO_TYPE_NONE = 0,
    PROTO_TYPE_READY,      /* loader -> trainer: credit */
    PROTO_TYPE_ORDER,      /* trainer -> loader: a work order */
    PROTO_TYPE_BATCH,      /* loader -> trainer: crops of an order */
    PROTO_TYPE_HELLO,      /* trainer -> assigner: rank + config */
    PROTO_TYPE_WELCOME,    /* assigner -> trainer: reply to hello (rank 0's NCCL id, queue state) */
    PROTO_TYPE_EMBED,      /* trainer -> assigner: embeddings (+ prototypes from rank 0) */
    PROTO_TYPE_CODES,      /* assigner -> trainer: rows of Q + statistics */
    PROTO_TYPE_SAVE,       /* trainer -> assigner: persist the queue */
    PROTO_TYPE_SAVED,      /* assigner -> trainer: result of save */
    PROTO_TYPE_ERROR,      /* any -> any */
    PROTO_TYPE_CHECKPOINT, /* trainer rank 0 -> evaluator (PUB/SUB) */
    PROTO_TYPE_STATUS,     /* role <-> launcher: counters (request: request = true) */
    PROTO_TYPE_COUNT
};
/* "ready", "order", ...; NULL for an invalid value. */
const char *proto_type_name(enum proto_type t);
/* PROTO_TYPE_NONE when the name is unknown. */
enum proto_type proto_type_from_name(const char *name, size_t len);

/* ---- frames and tensors -------------------------------------------------- */
struct proto_frame {
    const void *data;
    size_t len;
};

enum proto_dtype {
    PROTO_DTYPE_NONE = 0,
    PROTO_DTYPE_U8,  /* "u8" */
    PROTO_DTYPE_I32, /* "i32" */
    PROTO_DTYPE_U32, /* "u32" */
    PROTO_DTYPE_F32, /* "f32" */
};
size_t proto_dtype_size(enum proto_dtype dt); /* 0 for NONE */
const char *proto_dtype_name(enum proto_dtype dt);

/* A tensor frame: data is referenced (into the received frame when decoded,
 * into the caller's memory when encoding), little-endian host layout,
 * row-major, dense. */
struct proto_tensor {
    enum proto_dtype dtype;
    uint32_t ndim;
    uint64_t shape[PROTO_MAX_DIMS];
    const void *data;
    uint64_t nbytes; /* dtype size x product of shape */
};
/* Fill a tensor from dtype, data and ndim dims (a helper for encoders);
 * returns PROTO_ERR_BAD_SHAPE for ndim 0 or > PROTO_MAX_DIMS, or when the
 * byte count overflows. */
enum proto_status proto_tensor_set(struct proto_tensor *t, enum proto_dtype dtype,
                                   const void *data, uint32_t ndim, const uint64_t *dims);

/* ---- decode options and diagnostics -------------------------------------- */
struct proto_decode_opts {
    const char *run;           /* expected run id; NULL or "" accepts any */
    uint64_t max_tensor_bytes; /* per tensor; 0 means PROTO_MAX_TENSOR_BYTES_DEFAULT */
};

/* Filled by a decoder on failure (may be NULL): which field and what. */
struct proto_diag {
    char field[PROTO_MAX_ID + 1]; /* "" when the fault is not one field's */
    char detail[160];
};
/* "order: field 'nmb_crops': list too long (9 > 8) [list too long]". */
void proto_diag_format(char *buf, size_t len, enum proto_type type, enum proto_status st,
                       const struct proto_diag *diag);

/* ---- generic header peek ------------------------------------------------- */
struct proto_header {
    uint32_t v;
    enum proto_type type;
    char run[PROTO_MAX_ID + 1];
};
/* Reads only v, type and run (in whatever order they come) and checks the
 * version and, when opts->run is set, the run id.  For dispatch. */
enum proto_status proto_peek_type(const struct proto_frame *frames, size_t nframes,
                                  const struct proto_decode_opts *opts,
                                  struct proto_header *out, struct proto_diag *diag);

/* ---- encoded messages ------------------------------------------------------ */
/* An encoded message: frames[0] is the header (owned, in hdr, reused across
 * encodes), frames[1..] reference the caller's tensor data (not copied). */
struct proto_msg {
    struct proto_frame frames[PROTO_MAX_FRAMES];
    size_t nframes;
    char *hdr;
    size_t hdr_len, hdr_cap;
};
void proto_msg_init(struct proto_msg *m);
void proto_msg_free(struct proto_msg *m);

/* ============================================================================
 * Messages.  Frame order after the header is given for each type.
 * ========================================================================== */

/* A named number: status counters, ready's data set sizes. */
struct proto_counter {
    char name[PROTO_MAX_ID + 1]; /* non-empty */
    double value;                /* finite */
};

/* ready: loader -> trainer.  "I can take `credit` more orders."  The
 * optional `datasets` map names each data set the loader serves with its
 * image count ({"train": 1281167, "eval_val": 50000}; an untagged data set
 * is listed as "train"), so that a consumer (the evaluator) learns the sizes
 * without asking; each count an integer in 0 .. 2^32 - 1.  Absent
 * (has_datasets false) from a loader that predates the field. */
struct proto_ready {
    char loader_id[PROTO_MAX_ID + 1];
    uint32_t credit;  /* 0 .. 65536 */
    uint32_t workers; /* 0 .. 65536 (decode threads) */
    bool has_datasets;
    uint32_t n_datasets; /* 0 .. PROTO_MAX_LIST */
    struct proto_counter datasets[PROTO_MAX_LIST]; /* name: the tag, value: images */
};

/* order: trainer -> loader.  Frames: header, indices (u32 [n_images]). */
enum proto_mode {
    PROTO_MODE_SWAV = 0,       /* multi-crop (RandomResizedCrop + flip + color + blur) */
    PROTO_MODE_EVAL_TRAIN = 1, /* RandomResizedCrop(size_crops[0]) + flip */
    PROTO_MODE_EVAL_VAL = 2,   /* Resize(resize) + CenterCrop(size_crops[0]) */
    PROTO_MODE_COUNT
};
struct proto_order {
    uint64_t order_id;
    uint32_t epoch;
    uint64_t step;
    uint32_t rank;
    uint64_t seed;
    enum proto_mode mode;
    char dataset[PROTO_MAX_ID + 1]; /* data set tag ("train", "val"), may be "" */
    uint32_t ngroups;               /* 1 .. PROTO_MAX_GROUPS; 1 for the EVAL modes */
    uint32_t nmb_crops[PROTO_MAX_GROUPS];  /* 1 .. PROTO_MAX_CROPS_PER_IMAGE */
    uint32_t size_crops[PROTO_MAX_GROUPS]; /* 1 .. PROTO_MAX_CROP_SIZE */
    double min_scale_crops[PROTO_MAX_GROUPS]; /* 0 < min <= max <= 1 */
    double max_scale_crops[PROTO_MAX_GROUPS];
    uint32_t resize;   /* EVAL_VAL: shorter side before the center crop; else 0 */
    uint32_t n_images; /* 1 .. PROTO_MAX_ORDER_IMAGES */
    struct proto_tensor indices; /* u32 [n_images]: dataset indices */
};

/* batch: loader -> trainer.  Frames: header, crops[0..ngroups) (u8 NHWC
 * [n_images * nmb_crops[g], size_crops[g], size_crops[g], 3], image-major:
 * crop c of image i is row i * nmb_crops[g] + c), labels (i32 [n_images]). */
enum proto_note_code {
    PROTO_NOTE_SUBSTITUTED = 1, /* image unreadable: a deterministic other image was used */
    PROTO_NOTE_WARNING = 2,     /* decoded with a warning (e.g. truncated JPEG) */
};
struct proto_note {
    uint32_t position; /* 0 .. n_images-1 */
    uint32_t code;     /* enum proto_note_code (others are passed through) */
    char text[PROTO_MAX_NOTE_TEXT + 1];
};
struct proto_batch {
    uint64_t order_id;
    uint32_t epoch;
    uint64_t step;
    uint32_t rank;
    char loader_id[PROTO_MAX_ID + 1];
    uint32_t n_images; /* 1 .. PROTO_MAX_ORDER_IMAGES */
    uint32_t ngroups;  /* 1 .. PROTO_MAX_GROUPS */
    uint32_t nmb_crops[PROTO_MAX_GROUPS];
    uint32_t size_crops[PROTO_MAX_GROUPS];
    struct proto_tensor crops[PROTO_MAX_GROUPS]; /* u8 NHWC, see above */
    struct proto_tensor labels;                  /* i32 [n_images], -1: unlabeled */
    uint32_t n_notes;                            /* 0 .. PROTO_MAX_LIST */
    struct proto_note notes[PROTO_MAX_LIST];
    double decode_ms, augment_ms; /* >= 0 */
};

/* hello: trainer -> assigner.  Header only.  The assigner checks that every
 * rank sends the same config. */
struct proto_hello {
    uint32_t rank;       /* < world_size */
    uint32_t world_size; /* 1 .. 65536 */
    uint32_t nmb_prototypes; /* K: 1 .. 1<<24 */
    uint32_t feat_dim;       /* D: 1 .. 1<<16 */
    double epsilon;          /* > 0 */
    uint32_t sinkhorn_iterations; /* 1 .. 1<<20 */
    uint32_t queue_length;
    uint32_t epoch_queue_starts;
    uint32_t n_crops_for_assign; /* 1 .. PROTO_MAX_LIST */
    uint32_t crops_for_assign[PROTO_MAX_LIST];
    uint32_t batch_size;      /* per rank, >= 1 */
    uint32_t resume_epoch;    /* 0 when not resuming */
    char resume_path[PROTO_MAX_STR + 1]; /* may be "" */
    bool has_nccl_id;
    uint8_t nccl_id[PROTO_NCCL_ID_BYTES]; /* msgpack bin of exactly 128 bytes */
};

/* welcome: assigner -> trainer, the reply to hello (its own type).  Header
 * only.  Sent once all world_size ranks said hello with an agreeing config;
 * a disagreeing config gets `error` (PROTO_ERRC_REFUSED_CONFIG) instead. */
struct proto_welcome {
    uint32_t rank;
    uint32_t world_size;
    bool has_nccl_id;
    uint8_t nccl_id[PROTO_NCCL_ID_BYTES]; /* rank 0's */
    uint32_t queue_length; /* rows, rounded to a multiple of the global batch */
    uint64_t queue_fill;   /* rows filled (after a restored queue) */
    uint32_t epoch;        /* the epoch the assigner resumes at */
    uint64_t step;
};

/* embed: trainer -> assigner.  Frames: header, embeddings (f32 [n_assign,
 * B, D]), and from rank 0 prototypes (f32 [K, D]; D equal). */
struct proto_embed {
    uint32_t epoch;
    uint64_t step;
    uint32_t rank;
    struct proto_tensor embeddings;
    bool has_prototypes;
    struct proto_tensor prototypes;
};

/* codes: assigner -> trainer.  Frames: header, q (f32 [n_assign, B, K]). */
struct proto_codes_stats {
    double entropy;          /* mean per-sample entropy of the codes, nats */
    uint32_t prototypes_used;
    double sinkhorn_ms;
    bool queue_used;
    uint64_t queue_fill;
    uint32_t collapse_warnings;
};
struct proto_codes {
    uint32_t epoch;
    uint64_t step;
    uint32_t rank;
    struct proto_tensor q;
    struct proto_codes_stats stats;
};

/* save: trainer -> assigner (persist the queue next to a checkpoint). */
struct proto_save {
    uint32_t epoch;
    uint64_t step;
    char path[PROTO_MAX_STR + 1]; /* non-empty */
};

/* saved: assigner -> trainer. */
struct proto_saved {
    uint32_t epoch;
    uint64_t step;
    char path[PROTO_MAX_STR + 1];
    bool ok;
    char message[PROTO_MAX_STR + 1];
};

/* error: any role -> its peer. */
enum proto_errcode {
    PROTO_ERRC_BAD_MESSAGE = 1,    /* a message that did not decode */
    PROTO_ERRC_WRONG_RUN = 2,      /* another run's message */
    PROTO_ERRC_REFUSED_CONFIG = 3, /* config disagrees; `field` names it */
    PROTO_ERRC_MISSING_RANK = 4,   /* a rank did not report in time */
    PROTO_ERRC_TIMEOUT = 5,
    PROTO_ERRC_INTERNAL = 6,
    PROTO_ERRC_BUSY = 7,           /* try again later */
    PROTO_ERRC_OUT_OF_ORDER = 8,   /* step/epoch not the expected one */
    PROTO_ERRC_COUNT
};
const char *proto_errcode_str(enum proto_errcode c);
struct proto_error {
    enum proto_errcode code;
    char field[PROTO_MAX_ID + 1]; /* may be "" */
    char message[PROTO_MAX_STR + 1];
    uint64_t step;
};

/* checkpoint: trainer rank 0 -> evaluator. */
struct proto_checkpoint {
    uint32_t epoch;
    uint64_t step;
    char path[PROTO_MAX_STR + 1]; /* non-empty */
};

/* status: a role -> launcher (counters), or launcher -> role (request =
 * true, no counters needed).  (struct proto_status_msg: `proto_status` is
 * the status-code enum.) */
struct proto_status_msg {
    char role[PROTO_MAX_ID + 1];
    int32_t rank; /* -1: no rank */
    bool request;
    uint32_t n_counters; /* 0 .. PROTO_MAX_LIST */
    struct proto_counter counters[PROTO_MAX_LIST];
};

/* ---- encoders and decoders ------------------------------------------------- *
 * encode: validates the struct like the decoder would (PROTO_ERR_* on a bad
 * struct), writes the header into out->hdr and points out->frames at it and
 * at the tensors' data.  `run` must be 1 .. PROTO_MAX_ID bytes.
 * decode: see the top of this file.  opts and diag may be NULL. */
#define PROTO_DECLARE_CODEC(name, st)                                                      \
    enum proto_status proto_##name##_encode(struct proto_msg *out, const char *run,       \
                                            const struct st *m);                          \
    enum proto_status proto_##name##_decode(const struct proto_frame *frames,             \
                                            size_t nframes,                               \
                                            const struct proto_decode_opts *opts,         \
                                            struct st *out, struct proto_diag *diag);

PROTO_DECLARE_CODEC(ready, proto_ready)
PROTO_DECLARE_CODEC(order, proto_order)
PROTO_DECLARE_CODEC(batch, proto_batch)
PROTO_DECLARE_CODEC(hello, proto_hello)
PROTO_DECLARE_CODEC(welcome, proto_welcome)
PROTO_DECLARE_CODEC(embed, proto_embed)
PROTO_DECLARE_CODEC(codes, proto_codes)
PROTO_DECLARE_CODEC(save, proto_save)
PROTO_DECLARE_CODEC(saved, proto_saved)
PROTO_DECLARE_CODEC(error, proto_error)
PROTO_DECLARE_CODEC(checkpoint, proto_checkpoint)
PROTO_DECLARE_CODEC(status_msg, proto_status_msg)

#undef PROTO_DECLARE_CODEC

#endif
