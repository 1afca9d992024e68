/* safetensors reader and writer: see safetensors.h.
 *
 * Parsing works in two passes over the jansson tree: the first validates every
 * entry and sums the string storage, the second copies names and metadata
 * into one allocation, so a failure leaves nothing half built. */
#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/check.h"
#include "common/fileio.h"

static const char *const dtype_names[SAFETENSORS_NDTYPES] = {"F32", "F16", "BF16",
                                                             "I64", "I32", "U8"};
static const size_t dtype_sizes[SAFETENSORS_NDTYPES] = {4, 2, 2, 8, 4, 1};

const char *safetensors_dtype_name(enum safetensors_dtype dt)
{
    return (unsigned)dt < SAFETENSORS_NDTYPES ? dtype_names[dt] : "?";
}

size_t safetensors_dtype_size(enum safetensors_dtype dt)
{
    SWAV_ASSERT((unsigned)dt < SAFETENSORS_NDTYPES);
    return dtype_sizes[dt];
}

const char *safetensors_status_str(enum safetensors_status st)
{
    switch (st) {
    case SAFETENSORS_OK: return "ok";
    case SAFETENSORS_ERR_IO: return "i/o error";
    case SAFETENSORS_ERR_TRUNCATED: return "truncated file";
    case SAFETENSORS_ERR_HEADER_TOO_LARGE: return "header too large";
    case SAFETENSORS_ERR_JSON: return "header is not valid JSON";
    case SAFETENSORS_ERR_NOT_OBJECT: return "not a JSON object";
    case SAFETENSORS_ERR_MISSING_FIELD: return "missing field";
    case SAFETENSORS_ERR_WRONG_TYPE: return "field of the wrong type";
    case SAFETENSORS_ERR_BAD_DTYPE: return "unknown dtype";
    case SAFETENSORS_ERR_BAD_SHAPE: return "bad shape";
    case SAFETENSORS_ERR_BAD_NAME: return "bad tensor name";
    case SAFETENSORS_ERR_TOO_MANY: return "too many tensors";
    case SAFETENSORS_ERR_OFFSETS: return "data offsets out of range";
    case SAFETENSORS_ERR_SIZE_MISMATCH: return "shape and dtype disagree with the byte length";
    case SAFETENSORS_ERR_OVERLAP: return "tensors overlap";
    case SAFETENSORS_ERR_DUPLICATE: return "duplicate tensor name";
    case SAFETENSORS_ERR_METADATA: return "bad metadata";
    case SAFETENSORS_ERR_NOT_FOUND: return "no such tensor";
    case SAFETENSORS_ERR_CONVERT: return "unsupported dtype conversion";
    }
    return "unknown status";
}

static enum safetensors_status fail(char *err, size_t errlen, enum safetensors_status st,
                                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static enum safetensors_status fail(char *err, size_t errlen, enum safetensors_status st,
                                    const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return st;
}

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static void store_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static int dtype_from_name(const char *s)
{
    for (int i = 0; i < SAFETENSORS_NDTYPES; i++) {
        if (!strcmp(s, dtype_names[i])) {
            return i;
        }
    }
    return -1;
}

/* Name shown in messages: the tensor name, cut short if huge. */
#define NAMEFMT "\"%.200s\""

/* A JSON integer in [0, max]. */
static bool json_u64(const json_t *v, uint64_t max, uint64_t *out)
{
    if (!json_is_integer(v)) {
        return false;
    }
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x > max) {
        return false;
    }
    *out = (uint64_t)x;
    return true;
}

struct span {
    uint64_t begin, end;
    int idx;
    const char *name; /* jansson's key, alive while the tree is */
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->begin != y->begin) {
        return x->begin < y->begin ? -1 : 1;
    }
    if (x->end != y->end) {
        return x->end < y->end ? -1 : 1;
    }
    return x->idx - y->idx;
}

/* Validates one tensor entry; fills t (name left NULL) and its span. */
static enum safetensors_status parse_entry(const char *name, size_t name_len, const json_t *v,
                                           uint64_t data_len, struct safetensors_tensor *t,
                                           struct span *sp, char *err, size_t errlen)
{
    if (name_len == 0 || name_len > SAFETENSORS_MAX_NAME || strlen(name) != name_len) {
        return fail(err, errlen, SAFETENSORS_ERR_BAD_NAME,
                    "tensor name " NAMEFMT " (%zu bytes): empty, over %d bytes or with a NUL",
                    name, name_len, SAFETENSORS_MAX_NAME);
    }
    if (!json_is_object(v)) {
        return fail(err, errlen, SAFETENSORS_ERR_NOT_OBJECT,
                    "tensor " NAMEFMT ": entry is not an object", name);
    }
    const json_t *jd = json_object_get(v, "dtype");
    const json_t *js = json_object_get(v, "shape");
    const json_t *jo = json_object_get(v, "data_offsets");
    if (!jd || !js || !jo) {
        return fail(err, errlen, SAFETENSORS_ERR_MISSING_FIELD, "tensor " NAMEFMT ": no %s",
                    name, !jd ? "dtype" : !js ? "shape" : "data_offsets");
    }
    if (!json_is_string(jd)) {
        return fail(err, errlen, SAFETENSORS_ERR_WRONG_TYPE,
                    "tensor " NAMEFMT ": dtype is not a string", name);
    }
    int dt = dtype_from_name(json_string_value(jd));
    if (dt < 0) {
        return fail(err, errlen, SAFETENSORS_ERR_BAD_DTYPE,
                    "tensor " NAMEFMT ": dtype \"%.32s\" is not one of F32 F16 BF16 I64 I32 U8",
                    name, json_string_value(jd));
    }
    if (!json_is_array(js)) {
        return fail(err, errlen, SAFETENSORS_ERR_WRONG_TYPE,
                    "tensor " NAMEFMT ": shape is not an array", name);
    }
    size_t ndim = json_array_size(js);
    if (ndim > SAFETENSORS_MAX_DIMS) {
        return fail(err, errlen, SAFETENSORS_ERR_BAD_SHAPE,
                    "tensor " NAMEFMT ": rank %zu is over %d", name, ndim, SAFETENSORS_MAX_DIMS);
    }
    memset(t, 0, sizeof *t);
    t->dtype = (enum safetensors_dtype)dt;
    t->ndim = (int)ndim;
    /* numel x 8 bytes must fit in 63 bits */
    const uint64_t numel_max = (UINT64_C(1) << 59);
    uint64_t numel = 1;
    for (size_t i = 0; i < ndim; i++) {
        uint64_t d;
        if (!json_u64(json_array_get(js, i), numel_max, &d)) {
            return fail(err, errlen, SAFETENSORS_ERR_BAD_SHAPE,
                        "tensor " NAMEFMT ": dim %zu is not an integer in [0, 2^59]", name, i);
        }
        t->shape[i] = (int64_t)d;
        if (d != 0 && numel > numel_max / d) {
            return fail(err, errlen, SAFETENSORS_ERR_BAD_SHAPE,
                        "tensor " NAMEFMT ": element count overflows", name);
        }
        numel *= d;
    }
    t->numel = numel;
    t->nbytes = numel * dtype_sizes[dt];
    if (!json_is_array(jo) || json_array_size(jo) != 2) {
        return fail(err, errlen, SAFETENSORS_ERR_WRONG_TYPE,
                    "tensor " NAMEFMT ": data_offsets is not an array of two integers", name);
    }
    uint64_t b, e;
    if (!json_u64(json_array_get(jo, 0), UINT64_MAX >> 1, &b) ||
        !json_u64(json_array_get(jo, 1), UINT64_MAX >> 1, &e)) {
        return fail(err, errlen, SAFETENSORS_ERR_OFFSETS,
                    "tensor " NAMEFMT ": data_offsets are not non-negative integers", name);
    }
    if (b > e || e > data_len) {
        return fail(err, errlen, SAFETENSORS_ERR_OFFSETS,
                    "tensor " NAMEFMT ": data_offsets [%llu, %llu] reversed or past the %llu-byte data",
                    name, (unsigned long long)b, (unsigned long long)e,
                    (unsigned long long)data_len);
    }
    if (e - b != t->nbytes) {
        return fail(err, errlen, SAFETENSORS_ERR_SIZE_MISMATCH,
                    "tensor " NAMEFMT ": %s of %llu elements needs %llu bytes, offsets give %llu",
                    name, dtype_names[dt], (unsigned long long)numel,
                    (unsigned long long)t->nbytes, (unsigned long long)(e - b));
    }
    sp->begin = b;
    sp->end = e;
    return SAFETENSORS_OK;
}

/* buf holds at least the length prefix and the header (avail bytes); the
 * whole file is file_len bytes.  Tensor data pointers are set only when the
 * data is in buf (avail == file_len). */
static enum safetensors_status parse_impl(struct safetensors_file *out, const uint8_t *buf,
                                          size_t avail, uint64_t file_len, char *err,
                                          size_t errlen)
{
    if (avail < 8 || file_len < 8) {
        return fail(err, errlen, SAFETENSORS_ERR_TRUNCATED,
                    "%llu bytes: too short for the 8-byte header length",
                    (unsigned long long)file_len);
    }
    uint64_t hlen = load_le64(buf);
    if (hlen > SAFETENSORS_MAX_HEADER_BYTES) {
        return fail(err, errlen, SAFETENSORS_ERR_HEADER_TOO_LARGE,
                    "header length %llu is over the cap of %u bytes", (unsigned long long)hlen,
                    SAFETENSORS_MAX_HEADER_BYTES);
    }
    if (hlen > file_len - 8) {
        return fail(err, errlen, SAFETENSORS_ERR_TRUNCATED,
                    "header length %llu but only %llu bytes follow", (unsigned long long)hlen,
                    (unsigned long long)(file_len - 8));
    }
    SWAV_ASSERT(avail >= 8 + hlen);
    const uint8_t *data = avail == file_len ? buf + 8 + hlen : NULL;
    uint64_t data_len = file_len - 8 - hlen;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        return fail(err, errlen, SAFETENSORS_ERR_JSON, "header JSON, byte %d: %s", jerr.position,
                    jerr.text);
    }
    enum safetensors_status st = SAFETENSORS_OK;
    struct safetensors_tensor *tensors = NULL;
    struct span *spans = NULL;
    struct safetensors_meta *meta = NULL;
    char *strings = NULL;

    if (!json_is_object(root)) {
        st = fail(err, errlen, SAFETENSORS_ERR_NOT_OBJECT, "header is not a JSON object");
        goto out;
    }
    const json_t *jmeta = json_object_get(root, "__metadata__");
    size_t nt = json_object_size(root) - (jmeta ? 1 : 0);
    if (nt > SAFETENSORS_MAX_TENSORS) {
        st = fail(err, errlen, SAFETENSORS_ERR_TOO_MANY, "%zu tensors, over the cap of %d", nt,
                  SAFETENSORS_MAX_TENSORS);
        goto out;
    }
    size_t nm = 0;
    size_t strbytes = 0;
    if (jmeta) {
        if (!json_is_object(jmeta)) {
            st = fail(err, errlen, SAFETENSORS_ERR_NOT_OBJECT, "__metadata__ is not an object");
            goto out;
        }
        const char *k;
        size_t klen;
        json_t *v;
        json_object_keylen_foreach((json_t *)jmeta, k, klen, v)
        {
            if (!json_is_string(v)) {
                st = fail(err, errlen, SAFETENSORS_ERR_WRONG_TYPE,
                          "__metadata__ \"%.200s\": value is not a string", k);
                goto out;
            }
            size_t vlen = json_string_length(v);
            if (klen == 0 || klen > SAFETENSORS_MAX_NAME || strlen(k) != klen ||
                vlen > SAFETENSORS_MAX_META_VALUE || strlen(json_string_value(v)) != vlen) {
                st = fail(err, errlen, SAFETENSORS_ERR_METADATA,
                          "__metadata__ \"%.200s\": key or value empty, too long or with a NUL",
                          k);
                goto out;
            }
            strbytes += klen + 1 + vlen + 1;
            nm++;
        }
    }

    tensors = calloc(nt ? nt : 1, sizeof *tensors);
    spans = calloc(nt ? nt : 1, sizeof *spans);
    meta = calloc(nm ? nm : 1, sizeof *meta);
    if (!tensors || !spans || !meta) {
        st = fail(err, errlen, SAFETENSORS_ERR_IO, "out of memory for %zu tensors", nt);
        goto out;
    }
    size_t i = 0;
    {
        const char *k;
        size_t klen;
        json_t *v;
        json_object_keylen_foreach(root, k, klen, v)
        {
            if (v == jmeta && !strcmp(k, "__metadata__")) {
                continue;
            }
            st = parse_entry(k, klen, v, data_len, &tensors[i], &spans[i], err, errlen);
            if (st != SAFETENSORS_OK) {
                goto out;
            }
            spans[i].idx = (int)i;
            spans[i].name = k;
            tensors[i].data = data ? data + spans[i].begin : NULL;
            strbytes += klen + 1;
            i++;
        }
    }
    SWAV_ASSERT(i == nt);
    qsort(spans, nt, sizeof *spans, span_cmp);
    /* sorted by begin: a tensor overlaps an earlier one iff it starts before
     * the furthest end seen so far (empty tensors hold no bytes) */
    const struct span *far = NULL;
    for (size_t j = 0; j < nt; j++) {
        const struct span *b = &spans[j];
        if (b->end == b->begin) {
            continue;
        }
        if (far && b->begin < far->end) {
            st = fail(err, errlen, SAFETENSORS_ERR_OVERLAP,
                      "tensor " NAMEFMT " [%llu, %llu] overlaps tensor " NAMEFMT " [%llu, %llu]",
                      b->name, (unsigned long long)b->begin, (unsigned long long)b->end,
                      far->name, (unsigned long long)far->begin, (unsigned long long)far->end);
            goto out;
        }
        if (!far || b->end > far->end) {
            far = b;
        }
    }

    strings = malloc(strbytes ? strbytes : 1);
    if (!strings) {
        st = fail(err, errlen, SAFETENSORS_ERR_IO, "out of memory for tensor names");
        goto out;
    }
    char *s = strings;
    i = 0;
    {
        const char *k;
        size_t klen;
        json_t *v;
        json_object_keylen_foreach(root, k, klen, v)
        {
            if (v == jmeta && !strcmp(k, "__metadata__")) {
                continue;
            }
            memcpy(s, k, klen + 1);
            tensors[i++].name = s;
            s += klen + 1;
        }
        if (jmeta) {
            size_t m = 0;
            json_object_keylen_foreach((json_t *)jmeta, k, klen, v)
            {
                size_t vlen = json_string_length(v);
                memcpy(s, k, klen + 1);
                meta[m].key = s;
                s += klen + 1;
                memcpy(s, json_string_value(v), vlen + 1);
                meta[m].value = s;
                s += vlen + 1;
                m++;
            }
        }
    }
    SWAV_ASSERT((size_t)(s - strings) == strbytes);

    memset(out, 0, sizeof *out);
    out->tensors = tensors;
    out->ntensors = (int)nt;
    out->meta = meta;
    out->nmeta = (int)nm;
    out->strings = strings;
    tensors = NULL;
    meta = NULL;
    strings = NULL;
out:
    free(tensors);
    free(spans);
    free(meta);
    free(strings);
    json_decref(root);
    return st;
}

enum safetensors_status safetensors_parse(struct safetensors_file *out, const uint8_t *buf,
                                          size_t len, char *err, size_t errlen)
{
    return parse_impl(out, buf, len, len, err, errlen);
}

enum safetensors_status safetensors_read_header(struct safetensors_file *out, const char *path,
                                                char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return fail(err, errlen, SAFETENSORS_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    struct stat st;
    uint8_t pre[8];
    enum safetensors_status rc = SAFETENSORS_OK;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = fail(err, errlen, SAFETENSORS_ERR_IO, "%s: not a readable regular file", path);
        goto out;
    }
    if (st.st_size < 8 || pread(fd, pre, 8, 0) != 8) {
        rc = fail(err, errlen, SAFETENSORS_ERR_TRUNCATED, "%s: shorter than 8 bytes", path);
        goto out;
    }
    uint64_t hlen = load_le64(pre);
    if (hlen > SAFETENSORS_MAX_HEADER_BYTES || hlen > (uint64_t)st.st_size - 8) {
        /* let the parser word the fault */
        char perr[256];
        rc = parse_impl(out, pre, 8, (uint64_t)st.st_size, perr, sizeof perr);
        fail(err, errlen, rc, "%s: %s", path, perr);
        goto out;
    }
    buf = malloc(8 + hlen);
    if (!buf) {
        rc = fail(err, errlen, SAFETENSORS_ERR_IO, "%s: out of memory", path);
        goto out;
    }
    memcpy(buf, pre, 8);
    size_t got = 0;
    while (got < hlen) {
        ssize_t r = pread(fd, buf + 8 + got, hlen - got, (off_t)(8 + got));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            rc = fail(err, errlen, SAFETENSORS_ERR_IO, "cannot read %s", path);
            goto out;
        }
        got += (size_t)r;
    }
    char perr[512];
    rc = parse_impl(out, buf, 8 + hlen, (uint64_t)st.st_size, perr, sizeof perr);
    if (rc != SAFETENSORS_OK) {
        fail(err, errlen, rc, "%s: %s", path, perr);
    } else {
        for (int i = 0; i < out->ntensors; i++) {
            out->tensors[i].data = NULL; /* buf goes away */
        }
    }
out:
    free(buf);
    close(fd);
    return rc;
}

enum safetensors_status safetensors_read(struct safetensors_file *out, const char *path,
                                         size_t max_bytes, char *err, size_t errlen)
{
    void *buf = NULL;
    size_t len = 0;
    char ferr[512];
    if (max_bytes == 0) {
        max_bytes = (size_t)SAFETENSORS_MAX_FILE_BYTES;
    }
    int rc = swav_file_read_all(path, max_bytes, &buf, &len, ferr, sizeof ferr);
    if (rc != 0) {
        return fail(err, errlen, SAFETENSORS_ERR_IO, "%s", ferr);
    }
    char perr[512];
    enum safetensors_status st = safetensors_parse(out, buf, len, perr, sizeof perr);
    if (st != SAFETENSORS_OK) {
        free(buf);
        return fail(err, errlen, st, "%s: %s", path, perr);
    }
    out->owned = buf;
    return SAFETENSORS_OK;
}

void safetensors_file_free(struct safetensors_file *f)
{
    if (!f) {
        return;
    }
    free(f->tensors);
    free(f->meta);
    free(f->strings);
    free(f->owned);
    memset(f, 0, sizeof *f);
}

int safetensors_find(const struct safetensors_file *f, const char *name)
{
    for (int i = 0; i < f->ntensors; i++) {
        if (!strcmp(f->tensors[i].name, name)) {
            return i;
        }
    }
    return -1;
}

const char *safetensors_meta_get(const struct safetensors_file *f, const char *key)
{
    for (int i = 0; i < f->nmeta; i++) {
        if (!strcmp(f->meta[i].key, key)) {
            return f->meta[i].value;
        }
    }
    return NULL;
}

/* IEEE half to float, subnormals, infinities and NaNs included. */
static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal: value = man * 2^-24, exact in float */
        float v = (float)man * (1.0f / 16777216.0f);
        memcpy(&bits, &v, 4);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

enum safetensors_status safetensors_tensor_to_f32(const struct safetensors_tensor *t, float *dst)
{
    const uint8_t *p = t->data;
    uint64_t n = t->numel;
    switch (t->dtype) {
    case SAFETENSORS_F32:
        if (n) memcpy(dst, p, n * 4);
        return SAFETENSORS_OK;
    case SAFETENSORS_F16:
        for (uint64_t i = 0; i < n; i++) {
            dst[i] = half_to_float((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        }
        return SAFETENSORS_OK;
    case SAFETENSORS_BF16:
        for (uint64_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)(p[2 * i] | (p[2 * i + 1] << 8)) << 16;
            memcpy(&dst[i], &bits, 4);
        }
        return SAFETENSORS_OK;
    case SAFETENSORS_I64:
        for (uint64_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, p + 8 * i, 8);
            dst[i] = (float)v;
        }
        return SAFETENSORS_OK;
    case SAFETENSORS_I32:
        for (uint64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            dst[i] = (float)v;
        }
        return SAFETENSORS_OK;
    case SAFETENSORS_U8:
        for (uint64_t i = 0; i < n; i++) {
            dst[i] = (float)p[i];
        }
        return SAFETENSORS_OK;
    case SAFETENSORS_NDTYPES: break;
    }
    return SAFETENSORS_ERR_CONVERT;
}

enum safetensors_status safetensors_tensor_to_i64(const struct safetensors_tensor *t,
                                                  int64_t *dst)
{
    const uint8_t *p = t->data;
    uint64_t n = t->numel;
    switch (t->dtype) {
    case SAFETENSORS_I64:
        if (n) memcpy(dst, p, n * 8);
        return SAFETENSORS_OK;
    case SAFETENSORS_I32:
        for (uint64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            dst[i] = v;
        }
        return SAFETENSORS_OK;
    case SAFETENSORS_U8:
        for (uint64_t i = 0; i < n; i++) {
            dst[i] = p[i];
        }
        return SAFETENSORS_OK;
    default: return SAFETENSORS_ERR_CONVERT;
    }
}

/* ---- writer ---------------------------------------------------------------- */

struct safetensors_writer_entry {
    char *name;
    enum safetensors_dtype dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    const void *data;
    uint64_t nbytes;
    uint64_t begin; /* assigned at layout */
};

void safetensors_writer_init(struct safetensors_writer *w)
{
    memset(w, 0, sizeof *w);
}

void safetensors_writer_free(struct safetensors_writer *w)
{
    for (int i = 0; i < w->n; i++) {
        free(w->e[i].name);
    }
    free(w->e);
    json_decref((json_t *)w->meta);
    memset(w, 0, sizeof *w);
}

enum safetensors_status safetensors_writer_add(struct safetensors_writer *w, const char *name,
                                               enum safetensors_dtype dtype, int ndim,
                                               const int64_t *shape, const void *data)
{
    SWAV_ASSERT((unsigned)dtype < SAFETENSORS_NDTYPES);
    size_t nl = strlen(name);
    if (nl == 0 || nl > SAFETENSORS_MAX_NAME || !strcmp(name, "__metadata__")) {
        return SAFETENSORS_ERR_BAD_NAME;
    }
    if (ndim < 0 || ndim > SAFETENSORS_MAX_DIMS) {
        return SAFETENSORS_ERR_BAD_SHAPE;
    }
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            return SAFETENSORS_ERR_BAD_SHAPE;
        }
        numel *= (uint64_t)shape[i];
    }
    for (int i = 0; i < w->n; i++) {
        if (!strcmp(w->e[i].name, name)) {
            return SAFETENSORS_ERR_DUPLICATE;
        }
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->e = swav_xrealloc(w->e, (size_t)w->cap * sizeof *w->e);
    }
    struct safetensors_writer_entry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    e->name = swav_xstrdup(name);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        e->shape[i] = shape[i];
    }
    e->data = data;
    e->nbytes = numel * dtype_sizes[dtype];
    return SAFETENSORS_OK;
}

enum safetensors_status safetensors_writer_set_meta(struct safetensors_writer *w,
                                                    const char *key, const char *value)
{
    size_t kl = strlen(key), vl = strlen(value);
    if (kl == 0 || kl > SAFETENSORS_MAX_NAME || vl > SAFETENSORS_MAX_META_VALUE) {
        return SAFETENSORS_ERR_METADATA;
    }
    if (!w->meta) {
        w->meta = json_object();
        SWAV_ASSERT(w->meta);
    }
    json_t *v = json_string(value);
    if (!v) { /* not UTF-8 */
        return SAFETENSORS_ERR_METADATA;
    }
    SWAV_ASSERT(json_object_set_new((json_t *)w->meta, key, v) == 0);
    return SAFETENSORS_OK;
}

/* Layout: wider dtypes first (stable), contiguous.  Returns the padded header
 * (8-byte length prefix included) in a malloc'd buffer; order[] gets the
 * entry indices in data order. */
static enum safetensors_status writer_layout(const struct safetensors_writer *w, int *order,
                                             uint8_t **head, size_t *head_len,
                                             uint64_t *data_len)
{
    int k = 0;
    static const size_t widths[] = {8, 4, 2, 1};
    for (int wi = 0; wi < 4; wi++) {
        for (int i = 0; i < w->n; i++) {
            if (dtype_sizes[w->e[i].dtype] == widths[wi]) {
                order[k++] = i;
            }
        }
    }
    SWAV_ASSERT(k == w->n);
    json_t *root = json_object();
    SWAV_ASSERT(root);
    if (w->meta) {
        SWAV_ASSERT(json_object_set((json_t *)root, "__metadata__", (json_t *)w->meta) == 0);
    }
    uint64_t off = 0;
    for (int j = 0; j < w->n; j++) {
        struct safetensors_writer_entry *e = &w->e[order[j]];
        e->begin = off;
        json_t *shape = json_array();
        for (int d = 0; d < e->ndim; d++) {
            json_array_append_new(shape, json_integer(e->shape[d]));
        }
        json_t *ent = json_pack("{s:s, s:o, s:[I,I]}", "dtype", dtype_names[e->dtype], "shape",
                                shape, "data_offsets", (json_int_t)off,
                                (json_int_t)(off + e->nbytes));
        SWAV_ASSERT(ent);
        if (json_object_set_new(root, e->name, ent) != 0) {
            json_decref(root);
            return SAFETENSORS_ERR_BAD_NAME; /* not UTF-8 */
        }
        off += e->nbytes;
    }
    char *js = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    SWAV_ASSERT(js);
    size_t jl = strlen(js);
    size_t padded = (jl + 7) & ~(size_t)7;
    if (padded > SAFETENSORS_MAX_HEADER_BYTES) {
        free(js);
        return SAFETENSORS_ERR_HEADER_TOO_LARGE;
    }
    uint8_t *h = swav_xmalloc(8 + padded);
    store_le64(h, padded);
    memcpy(h + 8, js, jl);
    memset(h + 8 + jl, ' ', padded - jl);
    free(js);
    *head = h;
    *head_len = 8 + padded;
    *data_len = off;
    return SAFETENSORS_OK;
}

enum safetensors_status safetensors_writer_write(const struct safetensors_writer *w,
                                                 const char *path, char *err, size_t errlen)
{
    int *order = swav_xmalloc(((size_t)w->n + 1) * sizeof *order);
    uint8_t *head = NULL;
    size_t head_len = 0;
    uint64_t data_len = 0;
    enum safetensors_status st = writer_layout(w, order, &head, &head_len, &data_len);
    if (st != SAFETENSORS_OK) {
        free(order);
        return fail(err, errlen, st, "%s: %s", path, safetensors_status_str(st));
    }
    struct iovec *iov = swav_xmalloc(((size_t)w->n + 1) * sizeof *iov);
    iov[0].iov_base = head;
    iov[0].iov_len = head_len;
    for (int j = 0; j < w->n; j++) {
        const struct safetensors_writer_entry *e = &w->e[order[j]];
        iov[j + 1].iov_base = (void *)e->data;
        iov[j + 1].iov_len = (size_t)e->nbytes;
    }
    char ferr[512];
    int rc = swav_file_writev_atomic(path, iov, w->n + 1, 0644, ferr, sizeof ferr);
    free(iov);
    free(head);
    free(order);
    if (rc != 0) {
        return fail(err, errlen, SAFETENSORS_ERR_IO, "%s", ferr);
    }
    return SAFETENSORS_OK;
}

enum safetensors_status safetensors_writer_to_buffer(const struct safetensors_writer *w,
                                                     uint8_t **buf, size_t *len)
{
    int *order = swav_xmalloc(((size_t)w->n + 1) * sizeof *order);
    uint8_t *head = NULL;
    size_t head_len = 0;
    uint64_t data_len = 0;
    enum safetensors_status st = writer_layout(w, order, &head, &head_len, &data_len);
    if (st != SAFETENSORS_OK) {
        free(order);
        return st;
    }
    uint8_t *b = swav_xmalloc(head_len + (size_t)data_len + 1);
    memcpy(b, head, head_len);
    for (int j = 0; j < w->n; j++) {
        const struct safetensors_writer_entry *e = &w->e[order[j]];
        if (e->nbytes) {
            memcpy(b + head_len + e->begin, e->data, (size_t)e->nbytes);
        }
    }
    free(head);
    free(order);
    *buf = b;
    *len = head_len + (size_t)data_len;
    return SAFETENSORS_OK;
}

int safetensors_fuzz_one(const uint8_t *data, size_t size)
{
    struct safetensors_file f;
    char err[256];
    if (safetensors_parse(&f, data, size, err, sizeof err) != SAFETENSORS_OK) {
        return 0;
    }
    /* touch every byte a tensor claims, through the converters */
    float tmp[256];
    int64_t itmp[256];
    volatile float sink = 0;
    for (int i = 0; i < f.ntensors; i++) {
        struct safetensors_tensor t = f.tensors[i];
        SWAV_ASSERT(t.data >= data && t.data + t.nbytes <= data + size);
        uint64_t esz = safetensors_dtype_size(t.dtype);
        while (t.numel > 0) {
            uint64_t n = t.numel < 256 ? t.numel : 256;
            struct safetensors_tensor part = t;
            part.numel = n;
            part.nbytes = n * esz;
            SWAV_ASSERT(safetensors_tensor_to_f32(&part, tmp) == SAFETENSORS_OK);
            sink += tmp[0];
            if (safetensors_tensor_to_i64(&part, itmp) == SAFETENSORS_OK) {
                sink += (float)itmp[n - 1];
            }
            t.data += n * esz;
            t.numel -= n;
        }
    }
    for (int i = 0; i < f.nmeta; i++) {
        sink += (float)strlen(f.meta[i].key) + (float)strlen(f.meta[i].value);
    }
    (void)sink;
    safetensors_file_free(&f);
    return 0;
}
