/* Wire messages: encoders (msgpack-c packer) and decoders (a bounds-checked
 * msgpack reader that never allocates).  See proto.h and docs/protocol.md.
 *
 * Every message type is described by one table of fields (name, kind, where
 * it lives in the struct, its range); one generic walker decodes and one
 * packs any type from its table, and a small per-type check validates what
 * ties fields together (list lengths, tensor shapes).  An encoder runs the
 * decoder over what it produced, so nothing is sent that a peer would
 * refuse. */
#include "proto.h"

#include <math.h>
#include <stdarg.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"

/* ---- names ----------------------------------------------------------------- */

const char *proto_status_str(enum proto_status st)
{
    switch (st) {
    case PROTO_OK: return "ok";
    case PROTO_ERR_NO_FRAMES: return "no frames (or an empty header)";
    case PROTO_ERR_TOO_MANY_FRAMES: return "too many frames";
    case PROTO_ERR_HEADER_TOO_LARGE: return "header frame too large";
    case PROTO_ERR_TRUNCATED: return "truncated header";
    case PROTO_ERR_TRAILING_BYTES: return "trailing bytes after the header";
    case PROTO_ERR_NOT_MAP: return "header is not a msgpack map";
    case PROTO_ERR_TOO_DEEP: return "value nested too deep";
    case PROTO_ERR_BAD_KEY: return "bad map key";
    case PROTO_ERR_DUPLICATE_KEY: return "duplicate key";
    case PROTO_ERR_MISSING_FIELD: return "missing field";
    case PROTO_ERR_WRONG_TYPE: return "field of the wrong type";
    case PROTO_ERR_OUT_OF_RANGE: return "value out of range";
    case PROTO_ERR_STRING_TOO_LONG: return "string too long";
    case PROTO_ERR_BAD_STRING: return "string with an embedded NUL";
    case PROTO_ERR_LIST_TOO_LONG: return "list too long";
    case PROTO_ERR_BAD_VERSION: return "unsupported protocol version";
    case PROTO_ERR_UNKNOWN_TYPE: return "unknown message type";
    case PROTO_ERR_WRONG_MSG_TYPE: return "unexpected message type";
    case PROTO_ERR_WRONG_RUN: return "message of another run";
    case PROTO_ERR_BAD_DTYPE: return "bad tensor dtype";
    case PROTO_ERR_BAD_SHAPE: return "bad tensor shape";
    case PROTO_ERR_TENSOR_TOO_LARGE: return "tensor too large";
    case PROTO_ERR_FRAME_COUNT: return "frame count differs from the tensors described";
    case PROTO_ERR_LENGTH_MISMATCH: return "frame length differs from dtype x shape";
    case PROTO_ERR_MISALIGNED: return "tensor frame misaligned";
    case PROTO_ERR_INCONSISTENT: return "inconsistent fields";
    case PROTO_ERR_BAD_ARG: return "invalid argument";
    case PROTO_ERR_AGAIN: return "no message now";
    case PROTO_ERR_ZMQ: return "ZeroMQ error";
    case PROTO_STATUS_COUNT: break;
    }
    return "unknown status";
}

static const char *const type_names[PROTO_TYPE_COUNT] = {
    [PROTO_TYPE_NONE] = NULL,
    [PROTO_TYPE_READY] = "ready",
    [PROTO_TYPE_ORDER] = "order",
    [PROTO_TYPE_BATCH] = "batch",
    [PROTO_TYPE_HELLO] = "hello",
    [PROTO_TYPE_WELCOME] = "welcome",
    [PROTO_TYPE_EMBED] = "embed",
    [PROTO_TYPE_CODES] = "codes",
    [PROTO_TYPE_SAVE] = "save",
    [PROTO_TYPE_SAVED] = "saved",
    [PROTO_TYPE_ERROR] = "error",
    [PROTO_TYPE_CHECKPOINT] = "checkpoint",
    [PROTO_TYPE_STATUS] = "status",
};

const char *proto_type_name(enum proto_type t)
{
    if ((int)t <= 0 || t >= PROTO_TYPE_COUNT) {
        return NULL;
    }
    return type_names[t];
}

enum proto_type proto_type_from_name(const char *name, size_t len)
{
    for (int t = 1; t < PROTO_TYPE_COUNT; t++) {
        if (strlen(type_names[t]) == len && !memcmp(type_names[t], name, len)) {
            return (enum proto_type)t;
        }
    }
    return PROTO_TYPE_NONE;
}

const char *proto_errcode_str(enum proto_errcode c)
{
    switch (c) {
    case PROTO_ERRC_BAD_MESSAGE: return "bad message";
    case PROTO_ERRC_WRONG_RUN: return "wrong run";
    case PROTO_ERRC_REFUSED_CONFIG: return "refused config";
    case PROTO_ERRC_MISSING_RANK: return "missing rank";
    case PROTO_ERRC_TIMEOUT: return "timeout";
    case PROTO_ERRC_INTERNAL: return "internal error";
    case PROTO_ERRC_BUSY: return "busy";
    case PROTO_ERRC_OUT_OF_ORDER: return "out of order";
    case PROTO_ERRC_COUNT: break;
    }
    return "unknown error code";
}

size_t proto_dtype_size(enum proto_dtype dt)
{
    switch (dt) {
    case PROTO_DTYPE_U8: return 1;
    case PROTO_DTYPE_I32:
    case PROTO_DTYPE_U32:
    case PROTO_DTYPE_F32: return 4;
    case PROTO_DTYPE_NONE: break;
    }
    return 0;
}

const char *proto_dtype_name(enum proto_dtype dt)
{
    switch (dt) {
    case PROTO_DTYPE_U8: return "u8";
    case PROTO_DTYPE_I32: return "i32";
    case PROTO_DTYPE_U32: return "u32";
    case PROTO_DTYPE_F32: return "f32";
    case PROTO_DTYPE_NONE: break;
    }
    return "none";
}

static enum proto_dtype dtype_from_name(const char *s, size_t len)
{
    for (int d = PROTO_DTYPE_U8; d <= PROTO_DTYPE_F32; d++) {
        const char *n = proto_dtype_name((enum proto_dtype)d);
        if (strlen(n) == len && !memcmp(n, s, len)) {
            return (enum proto_dtype)d;
        }
    }
    return PROTO_DTYPE_NONE;
}

/* nbytes = size(dtype) x prod(shape), or UINT64_MAX on overflow. */
static uint64_t tensor_bytes(enum proto_dtype dt, uint32_t ndim, const uint64_t *shape)
{
    uint64_t n = proto_dtype_size(dt);
    for (uint32_t i = 0; i < ndim; i++) {
        if (shape[i] != 0 && n > UINT64_MAX / shape[i]) {
            return UINT64_MAX;
        }
        n *= shape[i];
    }
    return n;
}

enum proto_status proto_tensor_set(struct proto_tensor *t, enum proto_dtype dtype,
                                   const void *data, uint32_t ndim, const uint64_t *dims)
{
    if (ndim == 0 || ndim > PROTO_MAX_DIMS || !proto_dtype_size(dtype)) {
        return PROTO_ERR_BAD_SHAPE;
    }
    uint64_t nb = tensor_bytes(dtype, ndim, dims);
    if (nb == UINT64_MAX) {
        return PROTO_ERR_BAD_SHAPE;
    }
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, dims, ndim * sizeof *dims);
    t->data = data;
    t->nbytes = nb;
    return PROTO_OK;
}

void proto_diag_format(char *buf, size_t len, enum proto_type type, enum proto_status st,
                       const struct proto_diag *diag)
{
    const char *tn = proto_type_name(type);
    const char *field = diag ? diag->field : "";
    const char *detail = diag ? diag->detail : "";
    snprintf(buf, len, "%s message: %s%s%s%s%s [%s]", tn ? tn : "unknown",
             *field ? "field '" : "", field, *field ? "': " : "", detail,
             *detail ? "" : proto_status_str(st), proto_status_str(st));
}

static enum proto_status fail(struct proto_diag *diag, enum proto_status st, const char *field,
                              const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static enum proto_status fail(struct proto_diag *diag, enum proto_status st, const char *field,
                              const char *fmt, ...)
{
    if (diag) {
        snprintf(diag->field, sizeof diag->field, "%s", field ? field : "");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(diag->detail, sizeof diag->detail, fmt, ap);
        va_end(ap);
    }
    return st;
}

/* ---- msgpack reader -------------------------------------------------------- */

struct rd {
    const uint8_t *p, *e;
};

static uint64_t be_read(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

static int rd_has(const struct rd *r, uint64_t n) { return (uint64_t)(r->e - r->p) >= n; }

/* Read an n-byte big-endian length/value after the tag. */
static enum proto_status rd_be(struct rd *r, int n, uint64_t *v)
{
    if (!rd_has(r, (uint64_t)n)) {
        return PROTO_ERR_TRUNCATED;
    }
    *v = be_read(r->p, n);
    r->p += n;
    return PROTO_OK;
}

static enum proto_status rd_tag(struct rd *r, uint8_t *t)
{
    if (!rd_has(r, 1)) {
        return PROTO_ERR_TRUNCATED;
    }
    *t = *r->p++;
    return PROTO_OK;
}

/* Integer of any msgpack width, as a sign and a magnitude-preserving pair:
 * *neg set when the value is negative (then *s holds it). */
static enum proto_status rd_integer(struct rd *r, uint64_t *u, int64_t *s, int *neg)
{
    const uint8_t *save = r->p;
    uint8_t t;
    enum proto_status st = rd_tag(r, &t);
    if (st) return st;
    uint64_t v;
    *neg = 0;
    if (t <= 0x7f) {
        *u = t;
        *s = t;
        return PROTO_OK;
    }
    if (t >= 0xe0) {
        *neg = 1;
        *s = (int8_t)t;
        return PROTO_OK;
    }
    if (t >= 0xcc && t <= 0xcf) {
        st = rd_be(r, 1 << (t - 0xcc), &v);
        if (st) return st;
        *u = v;
        *s = v > INT64_MAX ? INT64_MAX : (int64_t)v;
        return PROTO_OK;
    }
    if (t >= 0xd0 && t <= 0xd3) {
        int n = 1 << (t - 0xd0);
        st = rd_be(r, n, &v);
        if (st) return st;
        int64_t x;
        switch (n) {
        case 1: x = (int8_t)(uint8_t)v; break;
        case 2: x = (int16_t)(uint16_t)v; break;
        case 4: x = (int32_t)(uint32_t)v; break;
        default: x = (int64_t)v; break;
        }
        *s = x;
        if (x < 0) {
            *neg = 1;
        } else {
            *u = (uint64_t)x;
        }
        return PROTO_OK;
    }
    r->p = save;
    return PROTO_ERR_WRONG_TYPE;
}

static enum proto_status rd_uint(struct rd *r, uint64_t *u)
{
    int64_t s;
    int neg;
    enum proto_status st = rd_integer(r, u, &s, &neg);
    if (st) return st;
    return neg ? PROTO_ERR_OUT_OF_RANGE : PROTO_OK;
}

static enum proto_status rd_int(struct rd *r, int64_t *s)
{
    uint64_t u = 0;
    int neg;
    enum proto_status st = rd_integer(r, &u, s, &neg);
    if (st) return st;
    if (!neg && u > INT64_MAX) return PROTO_ERR_OUT_OF_RANGE;
    return PROTO_OK;
}

static enum proto_status rd_double(struct rd *r, double *d)
{
    if (!rd_has(r, 1)) return PROTO_ERR_TRUNCATED;
    uint8_t t = *r->p;
    uint64_t v;
    enum proto_status st;
    if (t == 0xca) {
        r->p++;
        if ((st = rd_be(r, 4, &v))) return st;
        uint32_t b = (uint32_t)v;
        float f;
        memcpy(&f, &b, 4);
        *d = f;
        return PROTO_OK;
    }
    if (t == 0xcb) {
        r->p++;
        if ((st = rd_be(r, 8, &v))) return st;
        memcpy(d, &v, 8);
        return PROTO_OK;
    }
    uint64_t u = 0;
    int64_t s;
    int neg;
    st = rd_integer(r, &u, &s, &neg);
    if (st) return st;
    *d = neg ? (double)s : (double)u;
    return PROTO_OK;
}

static enum proto_status rd_bool(struct rd *r, bool *b)
{
    if (!rd_has(r, 1)) return PROTO_ERR_TRUNCATED;
    uint8_t t = *r->p;
    if (t != 0xc2 && t != 0xc3) return PROTO_ERR_WRONG_TYPE;
    r->p++;
    *b = t == 0xc3;
    return PROTO_OK;
}

static int rd_nil(struct rd *r)
{
    if (rd_has(r, 1) && *r->p == 0xc0) {
        r->p++;
        return 1;
    }
    return 0;
}

/* Sized container or blob: tag ranges for the fix form and the 8/16/32 forms. */
static enum proto_status rd_str(struct rd *r, const char **s, uint64_t *len)
{
    if (!rd_has(r, 1)) return PROTO_ERR_TRUNCATED;
    uint8_t t = *r->p;
    uint64_t n;
    enum proto_status st;
    if (t >= 0xa0 && t <= 0xbf) {
        r->p++;
        n = t & 0x1f;
    } else if (t >= 0xd9 && t <= 0xdb) {
        r->p++;
        if ((st = rd_be(r, 1 << (t - 0xd9), &n))) return st;
    } else {
        return PROTO_ERR_WRONG_TYPE;
    }
    if (!rd_has(r, n)) return PROTO_ERR_TRUNCATED;
    *s = (const char *)r->p;
    *len = n;
    r->p += n;
    return PROTO_OK;
}

static enum proto_status rd_bin(struct rd *r, const uint8_t **b, uint64_t *len)
{
    if (!rd_has(r, 1)) return PROTO_ERR_TRUNCATED;
    uint8_t t = *r->p;
    uint64_t n;
    enum proto_status st;
    if (t < 0xc4 || t > 0xc6) return PROTO_ERR_WRONG_TYPE;
    r->p++;
    if ((st = rd_be(r, 1 << (t - 0xc4), &n))) return st;
    if (!rd_has(r, n)) return PROTO_ERR_TRUNCATED;
    *b = r->p;
    *len = n;
    r->p += n;
    return PROTO_OK;
}

static enum proto_status rd_array(struct rd *r, uint64_t *n)
{
    if (!rd_has(r, 1)) return PROTO_ERR_TRUNCATED;
    uint8_t t = *r->p;
    if (t >= 0x90 && t <= 0x9f) {
        r->p++;
        *n = t & 0x0f;
        return PROTO_OK;
    }
    if (t == 0xdc || t == 0xdd) {
        r->p++;
        return rd_be(r, t == 0xdc ? 2 : 4, n);
    }
    return PROTO_ERR_WRONG_TYPE;
}

static enum proto_status rd_map(struct rd *r, uint64_t *n)
{
    if (!rd_has(r, 1)) return PROTO_ERR_TRUNCATED;
    uint8_t t = *r->p;
    if (t >= 0x80 && t <= 0x8f) {
        r->p++;
        *n = t & 0x0f;
        return PROTO_OK;
    }
    if (t == 0xde || t == 0xdf) {
        r->p++;
        return rd_be(r, t == 0xde ? 2 : 4, n);
    }
    return PROTO_ERR_WRONG_TYPE;
}

/* Skip one value of any type; each element consumes at least one byte, so
 * the loops are bounded by the input whatever counts it claims. */
static enum proto_status rd_skip(struct rd *r, int depth)
{
    if (depth > PROTO_MAX_DEPTH) return PROTO_ERR_TOO_DEEP;
    uint8_t t;
    enum proto_status st = rd_tag(r, &t);
    if (st) return st;
    uint64_t n = 0, items = 0;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) return PROTO_OK;
    if (t >= 0x80 && t <= 0x8f) {
        items = 2ull * (t & 0x0f);
    } else if (t >= 0x90 && t <= 0x9f) {
        items = t & 0x0f;
    } else if (t >= 0xa0 && t <= 0xbf) {
        n = t & 0x1f;
    } else {
        switch (t) {
        case 0xc4: case 0xc5: case 0xc6:
            if ((st = rd_be(r, 1 << (t - 0xc4), &n))) return st;
            break;
        case 0xc7: case 0xc8: case 0xc9:
            if ((st = rd_be(r, 1 << (t - 0xc7), &n))) return st;
            n += 1; /* ext type byte */
            break;
        case 0xca: n = 4; break;
        case 0xcb: n = 8; break;
        case 0xcc: case 0xcd: case 0xce: case 0xcf: n = 1u << (t - 0xcc); break;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: n = 1u << (t - 0xd0); break;
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: n = 1 + (1u << (t - 0xd4)); break;
        case 0xd9: case 0xda: case 0xdb:
            if ((st = rd_be(r, 1 << (t - 0xd9), &n))) return st;
            break;
        case 0xdc: case 0xdd:
            if ((st = rd_be(r, t == 0xdc ? 2 : 4, &items))) return st;
            break;
        case 0xde: case 0xdf:
            if ((st = rd_be(r, t == 0xde ? 2 : 4, &items))) return st;
            items *= 2;
            break;
        default: /* 0xc1: never used */
            return PROTO_ERR_WRONG_TYPE;
        }
    }
    if (!rd_has(r, n)) return PROTO_ERR_TRUNCATED;
    r->p += n;
    for (uint64_t i = 0; i < items; i++) {
        if ((st = rd_skip(r, depth + 1))) return st;
    }
    return PROTO_OK;
}

/* ---- field tables -------------------------------------------------------- */

enum fkind {
    FK_U32,
    FK_U64,
    FK_I32,
    FK_F64,
    FK_BOOL,
    FK_STR,       /* char[cap + 1] */
    FK_ENUM,      /* int-sized enum, 0 .. umax (umin checked too) */
    FK_U32_LIST,  /* uint32_t[cap], count at cnt_off */
    FK_F64_LIST,  /* double[cap], count at cnt_off */
    FK_TENSOR,    /* struct proto_tensor */
    FK_TENSOR_LIST, /* struct proto_tensor[cap], count at cnt_off */
    FK_BIN,       /* uint8_t[cap], exactly cap bytes */
    FK_NOTES,     /* struct proto_note[cap], count at cnt_off */
    FK_COUNTERS,  /* struct proto_counter[cap] from a map, count at cnt_off */
};

struct fdesc {
    const char *name;
    enum fkind kind;
    size_t off;
    size_t cnt_off;  /* lists: uint32_t count; optional fields: bool present (has_off) */
    uint32_t cap;    /* strings: max bytes; lists: max elements; bin: exact bytes */
    uint64_t umin, umax; /* unsigned ints, enums, list elements */
    int64_t imin, imax;  /* FK_I32 */
    double dmin, dmax;   /* FK_F64 / FK_F64_LIST: dmin < v <= dmax when dmin_open */
    bool dmin_open;
    uint32_t minlen;     /* strings: min bytes; lists: min elements */
    enum proto_dtype dt; /* tensors */
    bool optional;       /* may be absent (or nil); has flag at has_off */
    size_t has_off;
};

#define MAX_FIELDS 32

struct mdesc {
    enum proto_type type;
    size_t size; /* sizeof the struct */
    const struct fdesc *f;
    size_t nf;
    /* cross-field checks on a decoded struct (tensor frames already matched) */
    enum proto_status (*check)(const void *m, struct proto_diag *diag);
};

#define OFF(st, fld) offsetof(struct st, fld)
#define CAPOF(st, fld) ((uint32_t)(sizeof(((struct st *)0)->fld)))
#define NELEM(st, fld) ((uint32_t)(sizeof(((struct st *)0)->fld) / sizeof(((struct st *)0)->fld[0])))

#define U32(st, fld, lo, hi) {.name = #fld, .kind = FK_U32, .off = OFF(st, fld), .umin = (lo), .umax = (hi)}
#define U64(st, fld, lo, hi) {.name = #fld, .kind = FK_U64, .off = OFF(st, fld), .umin = (lo), .umax = (hi)}
#define I32(st, fld, lo, hi) {.name = #fld, .kind = FK_I32, .off = OFF(st, fld), .imin = (lo), .imax = (hi)}
#define F64(st, fld, lo, hi, open) {.name = #fld, .kind = FK_F64, .off = OFF(st, fld), .dmin = (lo), .dmax = (hi), .dmin_open = (open)}
#define BOOL(st, fld) {.name = #fld, .kind = FK_BOOL, .off = OFF(st, fld)}
#define STR(st, fld, minl) {.name = #fld, .kind = FK_STR, .off = OFF(st, fld), .cap = CAPOF(st, fld) - 1, .minlen = (minl)}
#define ENUM(st, fld, lo, hi) {.name = #fld, .kind = FK_ENUM, .off = OFF(st, fld), .umin = (lo), .umax = (hi)}
#define U32_LIST(st, fld, cnt, lo, hi, minl) {.name = #fld, .kind = FK_U32_LIST, .off = OFF(st, fld), .cnt_off = OFF(st, cnt), .cap = NELEM(st, fld), .umin = (lo), .umax = (hi), .minlen = (minl)}
#define F64_LIST(st, fld, cnt, lo, hi, open, minl) {.name = #fld, .kind = FK_F64_LIST, .off = OFF(st, fld), .cnt_off = OFF(st, cnt), .cap = NELEM(st, fld), .dmin = (lo), .dmax = (hi), .dmin_open = (open), .minlen = (minl)}
#define TENSOR(st, fld, dtype) {.name = #fld, .kind = FK_TENSOR, .off = OFF(st, fld), .dt = (dtype)}
#define OPT_TENSOR(st, fld, dtype, has) {.name = #fld, .kind = FK_TENSOR, .off = OFF(st, fld), .dt = (dtype), .optional = true, .has_off = OFF(st, has)}
#define TENSOR_LIST(st, fld, cnt, dtype, minl) {.name = #fld, .kind = FK_TENSOR_LIST, .off = OFF(st, fld), .cnt_off = OFF(st, cnt), .cap = NELEM(st, fld), .dt = (dtype), .minlen = (minl)}
#define OPT_BIN(st, fld, has) {.name = #fld, .kind = FK_BIN, .off = OFF(st, fld), .cap = CAPOF(st, fld), .optional = true, .has_off = OFF(st, has)}

#define U32A(st, fld) U32(st, fld, 0, UINT32_MAX)
#define U64A(st, fld) U64(st, fld, 0, UINT64_MAX)

/* ---- per-type cross-field checks ------------------------------------------ */

static enum proto_status check_shape(const struct proto_tensor *t, const char *field,
                                     uint32_t ndim, const uint64_t *want,
                                     struct proto_diag *diag)
{
    /* want[i] == 0: any extent in that dimension */
    if (t->ndim != ndim) {
        return fail(diag, PROTO_ERR_BAD_SHAPE, field, "expected %u dimensions, got %u", ndim,
                    t->ndim);
    }
    for (uint32_t i = 0; i < ndim; i++) {
        if (want[i] && t->shape[i] != want[i]) {
            return fail(diag, PROTO_ERR_BAD_SHAPE, field,
                        "dimension %u is %llu, expected %llu", i,
                        (unsigned long long)t->shape[i], (unsigned long long)want[i]);
        }
    }
    return PROTO_OK;
}

static enum proto_status check_ready(const void *vm, struct proto_diag *diag)
{
    const struct proto_ready *m = vm;
    for (uint32_t i = 0; i < m->n_datasets; i++) {
        double v = m->datasets[i].value;
        if (!(v >= 0.0 && v <= (double)UINT32_MAX) || v != (double)(uint32_t)v) {
            return fail(diag, PROTO_ERR_OUT_OF_RANGE, "datasets",
                        "data set '%s': %g images (an integer in [0, 2^32 - 1])",
                        m->datasets[i].name, v);
        }
    }
    return PROTO_OK;
}

static enum proto_status check_order(const void *vm, struct proto_diag *diag)
{
    const struct proto_order *m = vm;
    for (uint32_t g = 0; g < m->ngroups; g++) {
        if (m->min_scale_crops[g] > m->max_scale_crops[g]) {
            return fail(diag, PROTO_ERR_INCONSISTENT, "min_scale_crops",
                        "group %u: min scale %g > max scale %g", g, m->min_scale_crops[g],
                        m->max_scale_crops[g]);
        }
    }
    if (m->mode != PROTO_MODE_SWAV && (m->ngroups != 1 || m->nmb_crops[0] != 1)) {
        return fail(diag, PROTO_ERR_INCONSISTENT, "nmb_crops",
                    "evaluation modes take one group of one crop");
    }
    if ((m->mode == PROTO_MODE_EVAL_VAL) != (m->resize != 0)) {
        return fail(diag, PROTO_ERR_INCONSISTENT, "resize",
                    "resize is set for (and only for) EVAL_VAL");
    }
    if (m->mode == PROTO_MODE_EVAL_VAL && m->resize < m->size_crops[0]) {
        return fail(diag, PROTO_ERR_INCONSISTENT, "resize", "resize %u < crop size %u",
                    m->resize, m->size_crops[0]);
    }
    uint64_t want[1] = {m->n_images};
    return check_shape(&m->indices, "indices", 1, want, diag);
}

static enum proto_status check_batch(const void *vm, struct proto_diag *diag)
{
    const struct proto_batch *m = vm;
    for (uint32_t g = 0; g < m->ngroups; g++) {
        uint64_t want[4] = {(uint64_t)m->n_images * m->nmb_crops[g], m->size_crops[g],
                            m->size_crops[g], 3};
        enum proto_status st = check_shape(&m->crops[g], "crops", 4, want, diag);
        if (st) return st;
    }
    uint64_t wl[1] = {m->n_images};
    enum proto_status st = check_shape(&m->labels, "labels", 1, wl, diag);
    if (st) return st;
    for (uint32_t i = 0; i < m->n_notes; i++) {
        if (m->notes[i].position >= m->n_images) {
            return fail(diag, PROTO_ERR_INCONSISTENT, "notes",
                        "note %u: position %u >= n_images %u", i, m->notes[i].position,
                        m->n_images);
        }
    }
    return PROTO_OK;
}

static enum proto_status check_hello(const void *vm, struct proto_diag *diag)
{
    const struct proto_hello *m = vm;
    if (m->rank >= m->world_size) {
        return fail(diag, PROTO_ERR_INCONSISTENT, "rank", "rank %u >= world_size %u", m->rank,
                    m->world_size);
    }
    return PROTO_OK;
}

static enum proto_status check_welcome(const void *vm, struct proto_diag *diag)
{
    const struct proto_welcome *m = vm;
    if (m->rank >= m->world_size) {
        return fail(diag, PROTO_ERR_INCONSISTENT, "rank", "rank %u >= world_size %u", m->rank,
                    m->world_size);
    }
    if (m->queue_fill > m->queue_length) {
        return fail(diag, PROTO_ERR_INCONSISTENT, "queue_fill", "queue_fill %llu > queue_length %u",
                    (unsigned long long)m->queue_fill, m->queue_length);
    }
    return PROTO_OK;
}

static enum proto_status check_embed(const void *vm, struct proto_diag *diag)
{
    const struct proto_embed *m = vm;
    uint64_t any3[3] = {0, 0, 0};
    enum proto_status st = check_shape(&m->embeddings, "embeddings", 3, any3, diag);
    if (st) return st;
    if (m->has_prototypes) {
        uint64_t want[2] = {0, m->embeddings.shape[2]};
        st = check_shape(&m->prototypes, "prototypes", 2, want, diag);
        if (st) return st;
    }
    return PROTO_OK;
}

static enum proto_status check_codes(const void *vm, struct proto_diag *diag)
{
    const struct proto_codes *m = vm;
    uint64_t any3[3] = {0, 0, 0};
    return check_shape(&m->q, "q", 3, any3, diag);
}

static enum proto_status check_status(const void *vm, struct proto_diag *diag)
{
    (void)vm;
    (void)diag;
    return PROTO_OK;
}

#define TABLE(name) static const struct fdesc name##_fields[]
#define MDESC(name, st, ty, chk) \
    static const struct mdesc name##_desc = {ty, sizeof(struct st), name##_fields, \
                                             sizeof name##_fields / sizeof name##_fields[0], chk}

TABLE(ready) = {
    STR(proto_ready, loader_id, 0),
    U32(proto_ready, credit, 0, 65536),
    U32(proto_ready, workers, 0, 65536),
    {.name = "datasets", .kind = FK_COUNTERS, .off = OFF(proto_ready, datasets),
     .cnt_off = OFF(proto_ready, n_datasets), .cap = NELEM(proto_ready, datasets),
     .optional = true, .has_off = OFF(proto_ready, has_datasets)},
};
MDESC(ready, proto_ready, PROTO_TYPE_READY, check_ready);

TABLE(order) = {
    U64A(proto_order, order_id),
    U32A(proto_order, epoch),
    U64A(proto_order, step),
    U32(proto_order, rank, 0, 65535),
    U64A(proto_order, seed),
    ENUM(proto_order, mode, 0, PROTO_MODE_COUNT - 1),
    STR(proto_order, dataset, 0),
    U32_LIST(proto_order, nmb_crops, ngroups, 1, PROTO_MAX_CROPS_PER_IMAGE, 1),
    U32_LIST(proto_order, size_crops, ngroups, 1, PROTO_MAX_CROP_SIZE, 1),
    F64_LIST(proto_order, min_scale_crops, ngroups, 0.0, 1.0, true, 1),
    F64_LIST(proto_order, max_scale_crops, ngroups, 0.0, 1.0, true, 1),
    U32(proto_order, resize, 0, PROTO_MAX_CROP_SIZE),
    U32(proto_order, n_images, 1, PROTO_MAX_ORDER_IMAGES),
    TENSOR(proto_order, indices, PROTO_DTYPE_U32),
};
MDESC(order, proto_order, PROTO_TYPE_ORDER, check_order);

TABLE(batch) = {
    U64A(proto_batch, order_id),
    U32A(proto_batch, epoch),
    U64A(proto_batch, step),
    U32(proto_batch, rank, 0, 65535),
    STR(proto_batch, loader_id, 0),
    U32(proto_batch, n_images, 1, PROTO_MAX_ORDER_IMAGES),
    U32_LIST(proto_batch, nmb_crops, ngroups, 1, PROTO_MAX_CROPS_PER_IMAGE, 1),
    U32_LIST(proto_batch, size_crops, ngroups, 1, PROTO_MAX_CROP_SIZE, 1),
    TENSOR_LIST(proto_batch, crops, ngroups, PROTO_DTYPE_U8, 1),
    TENSOR(proto_batch, labels, PROTO_DTYPE_I32),
    {.name = "notes", .kind = FK_NOTES, .off = OFF(proto_batch, notes),
     .cnt_off = OFF(proto_batch, n_notes), .cap = NELEM(proto_batch, notes)},
    F64(proto_batch, decode_ms, 0.0, 1e12, false),
    F64(proto_batch, augment_ms, 0.0, 1e12, false),
};
MDESC(batch, proto_batch, PROTO_TYPE_BATCH, check_batch);

TABLE(hello) = {
    U32(proto_hello, rank, 0, 65535),
    U32(proto_hello, world_size, 1, 65536),
    U32(proto_hello, nmb_prototypes, 1, 1u << 24),
    U32(proto_hello, feat_dim, 1, 1u << 16),
    F64(proto_hello, epsilon, 0.0, 1e6, true),
    U32(proto_hello, sinkhorn_iterations, 1, 1u << 20),
    U32A(proto_hello, queue_length),
    U32A(proto_hello, epoch_queue_starts),
    U32_LIST(proto_hello, crops_for_assign, n_crops_for_assign, 0, PROTO_MAX_LIST * PROTO_MAX_GROUPS, 1),
    U32(proto_hello, batch_size, 1, 1u << 20),
    U32A(proto_hello, resume_epoch),
    STR(proto_hello, resume_path, 0),
    OPT_BIN(proto_hello, nccl_id, has_nccl_id),
};
MDESC(hello, proto_hello, PROTO_TYPE_HELLO, check_hello);

TABLE(welcome) = {
    U32(proto_welcome, rank, 0, 65535),
    U32(proto_welcome, world_size, 1, 65536),
    OPT_BIN(proto_welcome, nccl_id, has_nccl_id),
    U32A(proto_welcome, queue_length),
    U64A(proto_welcome, queue_fill),
    U32A(proto_welcome, epoch),
    U64A(proto_welcome, step),
};
MDESC(welcome, proto_welcome, PROTO_TYPE_WELCOME, check_welcome);

TABLE(embed) = {
    U32A(proto_embed, epoch),
    U64A(proto_embed, step),
    U32(proto_embed, rank, 0, 65535),
    TENSOR(proto_embed, embeddings, PROTO_DTYPE_F32),
    OPT_TENSOR(proto_embed, prototypes, PROTO_DTYPE_F32, has_prototypes),
};
MDESC(embed, proto_embed, PROTO_TYPE_EMBED, check_embed);

TABLE(codes) = {
    U32A(proto_codes, epoch),
    U64A(proto_codes, step),
    U32(proto_codes, rank, 0, 65535),
    TENSOR(proto_codes, q, PROTO_DTYPE_F32),
    {.name = "entropy", .kind = FK_F64, .off = OFF(proto_codes, stats.entropy), .dmin = 0, .dmax = 1e6},
    {.name = "prototypes_used", .kind = FK_U32, .off = OFF(proto_codes, stats.prototypes_used), .umin = 0, .umax = UINT32_MAX},
    {.name = "sinkhorn_ms", .kind = FK_F64, .off = OFF(proto_codes, stats.sinkhorn_ms), .dmin = 0, .dmax = 1e12},
    {.name = "queue_used", .kind = FK_BOOL, .off = OFF(proto_codes, stats.queue_used)},
    {.name = "queue_fill", .kind = FK_U64, .off = OFF(proto_codes, stats.queue_fill), .umin = 0, .umax = UINT64_MAX},
    {.name = "collapse_warnings", .kind = FK_U32, .off = OFF(proto_codes, stats.collapse_warnings), .umin = 0, .umax = UINT32_MAX},
};
MDESC(codes, proto_codes, PROTO_TYPE_CODES, check_codes);

TABLE(save) = {
    U32A(proto_save, epoch),
    U64A(proto_save, step),
    STR(proto_save, path, 1),
};
MDESC(save, proto_save, PROTO_TYPE_SAVE, NULL);

TABLE(saved) = {
    U32A(proto_saved, epoch),
    U64A(proto_saved, step),
    STR(proto_saved, path, 0),
    BOOL(proto_saved, ok),
    STR(proto_saved, message, 0),
};
MDESC(saved, proto_saved, PROTO_TYPE_SAVED, NULL);

TABLE(error) = {
    ENUM(proto_error, code, 1, PROTO_ERRC_COUNT - 1),
    STR(proto_error, field, 0),
    STR(proto_error, message, 0),
    U64A(proto_error, step),
};
MDESC(error, proto_error, PROTO_TYPE_ERROR, NULL);

TABLE(checkpoint) = {
    U32A(proto_checkpoint, epoch),
    U64A(proto_checkpoint, step),
    STR(proto_checkpoint, path, 1),
};
MDESC(checkpoint, proto_checkpoint, PROTO_TYPE_CHECKPOINT, NULL);

TABLE(status_msg) = {
    STR(proto_status_msg, role, 0),
    I32(proto_status_msg, rank, -1, INT32_MAX),
    BOOL(proto_status_msg, request),
    {.name = "counters", .kind = FK_COUNTERS, .off = OFF(proto_status_msg, counters),
     .cnt_off = OFF(proto_status_msg, n_counters), .cap = NELEM(proto_status_msg, counters)},
};
MDESC(status_msg, proto_status_msg, PROTO_TYPE_STATUS, check_status);

/* ---- decoding ------------------------------------------------------------- */

static enum proto_status check_frames(const struct proto_frame *frames, size_t nframes,
                                      struct proto_diag *diag)
{
    if (nframes == 0 || !frames || !frames[0].data || frames[0].len == 0) {
        return fail(diag, PROTO_ERR_NO_FRAMES, NULL, "no header frame");
    }
    if (nframes > PROTO_MAX_FRAMES) {
        return fail(diag, PROTO_ERR_TOO_MANY_FRAMES, NULL, "%zu frames, at most %d", nframes,
                    PROTO_MAX_FRAMES);
    }
    if (frames[0].len > PROTO_MAX_HEADER_BYTES) {
        return fail(diag, PROTO_ERR_HEADER_TOO_LARGE, NULL, "header of %zu bytes, at most %u",
                    frames[0].len, PROTO_MAX_HEADER_BYTES);
    }
    return PROTO_OK;
}

static int key_is(const char *k, uint64_t klen, const char *name)
{
    size_t n = strlen(name);
    return klen == n && !memcmp(k, name, n);
}

/* Copy a wire string into char[cap + 1]. */
static enum proto_status copy_str(char *dst, uint32_t cap, uint32_t minlen, const char *s,
                                  uint64_t len, const char *field, struct proto_diag *diag)
{
    if (len > cap) {
        return fail(diag, PROTO_ERR_STRING_TOO_LONG, field, "%llu bytes, at most %u",
                    (unsigned long long)len, cap);
    }
    if (memchr(s, '\0', len)) {
        return fail(diag, PROTO_ERR_BAD_STRING, field, "embedded NUL byte");
    }
    if (len < minlen) {
        return fail(diag, PROTO_ERR_OUT_OF_RANGE, field, "empty string");
    }
    memcpy(dst, s, len);
    dst[len] = '\0';
    return PROTO_OK;
}

/* Walk the whole header (structure only), then read v, type and run. */
static enum proto_status peek(const struct proto_frame *frames, size_t nframes,
                              const struct proto_decode_opts *opts, struct proto_header *out,
                              struct proto_diag *diag)
{
    enum proto_status st = check_frames(frames, nframes, diag);
    if (st) return st;
    struct rd r = {frames[0].data, (const uint8_t *)frames[0].data + frames[0].len};
    uint64_t n;
    st = rd_map(&r, &n);
    if (st == PROTO_ERR_WRONG_TYPE) {
        return fail(diag, PROTO_ERR_NOT_MAP, NULL, "header is not a map");
    }
    if (st) return fail(diag, st, NULL, "header map");
    struct proto_header h = {0};
    bool have_v = false, have_type = false, have_run = false;
    const char *tname = NULL;
    uint64_t tlen = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *k;
        uint64_t klen;
        st = rd_str(&r, &k, &klen);
        if (st == PROTO_ERR_WRONG_TYPE) return fail(diag, PROTO_ERR_BAD_KEY, NULL, "key %llu is not a string", (unsigned long long)i);
        if (st) return fail(diag, st, NULL, "key %llu", (unsigned long long)i);
        const uint8_t *val = r.p;
        st = rd_skip(&r, 1);
        if (st) return fail(diag, st, NULL, "value of key %llu", (unsigned long long)i);
        struct rd vr = {val, r.p};
        if (key_is(k, klen, "v")) {
            if (have_v) return fail(diag, PROTO_ERR_DUPLICATE_KEY, "v", "given twice");
            have_v = true;
            uint64_t v;
            st = rd_uint(&vr, &v);
            if (st == PROTO_ERR_OUT_OF_RANGE) st = PROTO_ERR_BAD_VERSION;
            if (st) return fail(diag, st, "v", "protocol version");
            h.v = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
        } else if (key_is(k, klen, "type")) {
            if (have_type) return fail(diag, PROTO_ERR_DUPLICATE_KEY, "type", "given twice");
            have_type = true;
            st = rd_str(&vr, &tname, &tlen);
            if (st) return fail(diag, st, "type", "message type");
        } else if (key_is(k, klen, "run")) {
            if (have_run) return fail(diag, PROTO_ERR_DUPLICATE_KEY, "run", "given twice");
            have_run = true;
            const char *s;
            uint64_t slen;
            st = rd_str(&vr, &s, &slen);
            if (st) return fail(diag, st, "run", "run id");
            st = copy_str(h.run, PROTO_MAX_ID, 0, s, slen, "run", diag);
            if (st) return st;
        }
    }
    if (r.p != r.e) {
        return fail(diag, PROTO_ERR_TRAILING_BYTES, NULL, "%zu bytes after the header map",
                    (size_t)(r.e - r.p));
    }
    if (!have_v) return fail(diag, PROTO_ERR_MISSING_FIELD, "v", "no protocol version");
    if (h.v != PROTO_VERSION) {
        return fail(diag, PROTO_ERR_BAD_VERSION, "v", "version %u, this build speaks %d", h.v,
                    PROTO_VERSION);
    }
    if (!have_type) return fail(diag, PROTO_ERR_MISSING_FIELD, "type", "no message type");
    h.type = proto_type_from_name(tname, tlen);
    if (h.type == PROTO_TYPE_NONE) {
        return fail(diag, PROTO_ERR_UNKNOWN_TYPE, "type", "unknown type '%.*s'",
                    (int)(tlen > 32 ? 32 : tlen), tname);
    }
    if (!have_run) return fail(diag, PROTO_ERR_MISSING_FIELD, "run", "no run id");
    if (opts && opts->run && opts->run[0] && strcmp(opts->run, h.run) != 0) {
        return fail(diag, PROTO_ERR_WRONG_RUN, "run", "run '%s', expected '%s'", h.run,
                    opts->run);
    }
    *out = h;
    return PROTO_OK;
}

enum proto_status proto_peek_type(const struct proto_frame *frames, size_t nframes,
                                  const struct proto_decode_opts *opts,
                                  struct proto_header *out, struct proto_diag *diag)
{
    return peek(frames, nframes, opts, out, diag);
}

/* A tensor description {"dt": "f32", "shape": [..]}. */
static enum proto_status read_tensor_desc(struct rd *r, const struct fdesc *f, uint64_t limit,
                                          struct proto_tensor *t, struct proto_diag *diag)
{
    uint64_t n;
    enum proto_status st = rd_map(r, &n);
    if (st) return fail(diag, st, f->name, "tensor description is not a map");
    bool have_dt = false, have_shape = false;
    memset(t, 0, sizeof *t);
    for (uint64_t i = 0; i < n; i++) {
        const char *k;
        uint64_t klen;
        st = rd_str(r, &k, &klen);
        if (st == PROTO_ERR_WRONG_TYPE) return fail(diag, PROTO_ERR_BAD_KEY, f->name, "tensor key is not a string");
        if (st) return fail(diag, st, f->name, "tensor key");
        if (key_is(k, klen, "dt")) {
            if (have_dt) return fail(diag, PROTO_ERR_DUPLICATE_KEY, f->name, "dt given twice");
            have_dt = true;
            const char *s;
            uint64_t slen;
            st = rd_str(r, &s, &slen);
            if (st) return fail(diag, st, f->name, "dt");
            t->dtype = dtype_from_name(s, slen);
            if (t->dtype == PROTO_DTYPE_NONE) {
                return fail(diag, PROTO_ERR_BAD_DTYPE, f->name, "unknown dtype '%.*s'",
                            (int)(slen > 16 ? 16 : slen), s);
            }
            if (t->dtype != f->dt) {
                return fail(diag, PROTO_ERR_BAD_DTYPE, f->name, "dtype %s, expected %s",
                            proto_dtype_name(t->dtype), proto_dtype_name(f->dt));
            }
        } else if (key_is(k, klen, "shape")) {
            if (have_shape) return fail(diag, PROTO_ERR_DUPLICATE_KEY, f->name, "shape given twice");
            have_shape = true;
            uint64_t nd;
            st = rd_array(r, &nd);
            if (st) return fail(diag, st, f->name, "shape is not a list");
            if (nd == 0 || nd > PROTO_MAX_DIMS) {
                return fail(diag, PROTO_ERR_BAD_SHAPE, f->name, "%llu dimensions, 1 to %d allowed",
                            (unsigned long long)nd, PROTO_MAX_DIMS);
            }
            t->ndim = (uint32_t)nd;
            for (uint32_t d = 0; d < t->ndim; d++) {
                st = rd_uint(r, &t->shape[d]);
                if (st) return fail(diag, st, f->name, "shape[%u]", d);
            }
        } else {
            st = rd_skip(r, 3);
            if (st) return fail(diag, st, f->name, "tensor description");
        }
    }
    if (!have_dt) return fail(diag, PROTO_ERR_MISSING_FIELD, f->name, "tensor without dt");
    if (!have_shape) return fail(diag, PROTO_ERR_MISSING_FIELD, f->name, "tensor without shape");
    t->nbytes = tensor_bytes(t->dtype, t->ndim, t->shape);
    if (t->nbytes > limit) {
        return fail(diag, PROTO_ERR_TENSOR_TOO_LARGE, f->name, "%s bytes, at most %llu",
                    t->nbytes == UINT64_MAX ? "overflowing" : "too many",
                    (unsigned long long)limit);
    }
    return PROTO_OK;
}

static enum proto_status read_u32_in(struct rd *r, const struct fdesc *f, uint32_t *out,
                                     struct proto_diag *diag)
{
    uint64_t v;
    enum proto_status st = rd_uint(r, &v);
    if (st) return fail(diag, st, f->name, st == PROTO_ERR_OUT_OF_RANGE ? "negative" : "expected an unsigned integer");
    if (v < f->umin || v > f->umax) {
        return fail(diag, PROTO_ERR_OUT_OF_RANGE, f->name, "%llu outside [%llu, %llu]",
                    (unsigned long long)v, (unsigned long long)f->umin,
                    (unsigned long long)f->umax);
    }
    *out = (uint32_t)v;
    return PROTO_OK;
}

static enum proto_status read_f64_in(struct rd *r, const struct fdesc *f, double *out,
                                     struct proto_diag *diag)
{
    double d;
    enum proto_status st = rd_double(r, &d);
    if (st) return fail(diag, st, f->name, "expected a number");
    if (!isfinite(d) || d > f->dmax || (f->dmin_open ? d <= f->dmin : d < f->dmin)) {
        return fail(diag, PROTO_ERR_OUT_OF_RANGE, f->name, "%g outside %s%g, %g]", d,
                    f->dmin_open ? "(" : "[", f->dmin, f->dmax);
    }
    *out = d;
    return PROTO_OK;
}

static enum proto_status list_len(struct rd *r, const struct fdesc *f, uint64_t *n,
                                  struct proto_diag *diag)
{
    enum proto_status st = f->kind == FK_COUNTERS ? rd_map(r, n) : rd_array(r, n);
    if (st) return fail(diag, st, f->name, f->kind == FK_COUNTERS ? "expected a map" : "expected a list");
    if (*n > f->cap) {
        return fail(diag, PROTO_ERR_LIST_TOO_LONG, f->name, "%llu entries, at most %u",
                    (unsigned long long)*n, f->cap);
    }
    if (*n < f->minlen) {
        return fail(diag, PROTO_ERR_OUT_OF_RANGE, f->name, "%llu entries, at least %u",
                    (unsigned long long)*n, f->minlen);
    }
    return PROTO_OK;
}

static enum proto_status read_note(struct rd *r, struct proto_note *note, struct proto_diag *diag)
{
    uint64_t n;
    enum proto_status st = rd_map(r, &n);
    if (st) return fail(diag, st, "notes", "a note is not a map");
    bool hp = false, hc = false, ht = false;
    for (uint64_t i = 0; i < n; i++) {
        const char *k;
        uint64_t klen;
        st = rd_str(r, &k, &klen);
        if (st == PROTO_ERR_WRONG_TYPE) return fail(diag, PROTO_ERR_BAD_KEY, "notes", "note key is not a string");
        if (st) return fail(diag, st, "notes", "note key");
        bool *seen = NULL;
        if (key_is(k, klen, "position")) seen = &hp;
        else if (key_is(k, klen, "code")) seen = &hc;
        else if (key_is(k, klen, "text")) seen = &ht;
        if (seen && *seen) return fail(diag, PROTO_ERR_DUPLICATE_KEY, "notes", "'%.*s' given twice", (int)klen, k);
        if (seen) *seen = true;
        uint64_t v;
        if (seen == &hp || seen == &hc) {
            st = rd_uint(r, &v);
            if (st) return fail(diag, st, "notes", "note %s", seen == &hp ? "position" : "code");
            if (v > UINT32_MAX) return fail(diag, PROTO_ERR_OUT_OF_RANGE, "notes", "note value %llu", (unsigned long long)v);
            if (seen == &hp) note->position = (uint32_t)v;
            else note->code = (uint32_t)v;
        } else if (seen == &ht) {
            const char *s;
            uint64_t slen;
            st = rd_str(r, &s, &slen);
            if (st) return fail(diag, st, "notes", "note text");
            st = copy_str(note->text, PROTO_MAX_NOTE_TEXT, 0, s, slen, "notes", diag);
            if (st) return st;
        } else {
            st = rd_skip(r, 3);
            if (st) return fail(diag, st, "notes", "note");
        }
    }
    if (!hp || !hc || !ht) return fail(diag, PROTO_ERR_MISSING_FIELD, "notes", "note without position, code or text");
    return PROTO_OK;
}

static enum proto_status read_field(struct rd *r, const struct fdesc *f, char *base,
                                    uint64_t limit, uint32_t *count, struct proto_diag *diag)
{
    char *p = base + f->off;
    enum proto_status st;
    uint64_t u, n;
    if (f->optional && rd_nil(r)) {
        *(bool *)(base + f->has_off) = false;
        return PROTO_OK;
    }
    switch (f->kind) {
    case FK_U32:
        return read_u32_in(r, f, (uint32_t *)p, diag);
    case FK_ENUM: {
        uint32_t v;
        st = read_u32_in(r, f, &v, diag);
        if (st) return st;
        *(int *)p = (int)v;
        return PROTO_OK;
    }
    case FK_U64:
        st = rd_uint(r, &u);
        if (st) return fail(diag, st, f->name, st == PROTO_ERR_OUT_OF_RANGE ? "negative" : "expected an unsigned integer");
        if (u < f->umin || u > f->umax) {
            return fail(diag, PROTO_ERR_OUT_OF_RANGE, f->name, "%llu out of range", (unsigned long long)u);
        }
        *(uint64_t *)p = u;
        return PROTO_OK;
    case FK_I32: {
        int64_t s;
        st = rd_int(r, &s);
        if (st) return fail(diag, st, f->name, "expected an integer");
        if (s < f->imin || s > f->imax) {
            return fail(diag, PROTO_ERR_OUT_OF_RANGE, f->name, "%lld outside [%lld, %lld]",
                        (long long)s, (long long)f->imin, (long long)f->imax);
        }
        *(int32_t *)p = (int32_t)s;
        return PROTO_OK;
    }
    case FK_F64:
        return read_f64_in(r, f, (double *)p, diag);
    case FK_BOOL:
        st = rd_bool(r, (bool *)p);
        if (st) return fail(diag, st, f->name, "expected a boolean");
        return PROTO_OK;
    case FK_STR: {
        const char *s;
        st = rd_str(r, &s, &n);
        if (st) return fail(diag, st, f->name, "expected a string");
        return copy_str(p, f->cap, f->minlen, s, n, f->name, diag);
    }
    case FK_BIN: {
        const uint8_t *b;
        st = rd_bin(r, &b, &n);
        if (st) return fail(diag, st, f->name, "expected binary");
        if (n != f->cap) {
            return fail(diag, n > f->cap ? PROTO_ERR_STRING_TOO_LONG : PROTO_ERR_OUT_OF_RANGE,
                        f->name, "%llu bytes, expected %u", (unsigned long long)n, f->cap);
        }
        memcpy(p, b, n);
        *(bool *)(base + f->has_off) = true;
        return PROTO_OK;
    }
    case FK_U32_LIST:
    case FK_F64_LIST:
    case FK_TENSOR_LIST:
    case FK_NOTES:
    case FK_COUNTERS:
        st = list_len(r, f, &n, diag);
        if (st) return st;
        for (uint64_t i = 0; i < n; i++) {
            switch (f->kind) {
            case FK_U32_LIST: st = read_u32_in(r, f, (uint32_t *)p + i, diag); break;
            case FK_F64_LIST: st = read_f64_in(r, f, (double *)p + i, diag); break;
            case FK_TENSOR_LIST:
                st = read_tensor_desc(r, f, limit, (struct proto_tensor *)p + i, diag);
                break;
            case FK_NOTES: st = read_note(r, (struct proto_note *)p + i, diag); break;
            default: {
                struct proto_counter *c = (struct proto_counter *)p + i;
                const char *s;
                uint64_t slen;
                st = rd_str(r, &s, &slen);
                if (st == PROTO_ERR_WRONG_TYPE) st = PROTO_ERR_BAD_KEY;
                if (st) return fail(diag, st, f->name, "counter name");
                st = copy_str(c->name, PROTO_MAX_ID, 1, s, slen, f->name, diag);
                if (st) return st;
                for (uint64_t j = 0; j < i; j++) {
                    if (!strcmp(c->name, ((struct proto_counter *)p)[j].name)) {
                        return fail(diag, PROTO_ERR_DUPLICATE_KEY, f->name, "counter '%s' twice", c->name);
                    }
                }
                st = rd_double(r, &c->value);
                if (st) return fail(diag, st, f->name, "counter '%s'", c->name);
                if (!isfinite(c->value)) return fail(diag, PROTO_ERR_OUT_OF_RANGE, f->name, "counter '%s' not finite", c->name);
                break;
            }
            }
            if (st) return st;
        }
        *count = (uint32_t)n;
        if (f->optional) *(bool *)(base + f->has_off) = true;
        return PROTO_OK;
    case FK_TENSOR:
        st = read_tensor_desc(r, f, limit, (struct proto_tensor *)p, diag);
        if (st) return st;
        if (f->optional) *(bool *)(base + f->has_off) = true;
        return PROTO_OK;
    }
    return fail(diag, PROTO_ERR_BAD_ARG, f->name, "unknown field kind");
}

/* Point a decoded tensor at its frame, checking the frame's length. */
static enum proto_status bind_frame(struct proto_tensor *t, const struct proto_frame *fr,
                                    const char *field, struct proto_diag *diag)
{
    if (fr->len != t->nbytes) {
        return fail(diag, PROTO_ERR_LENGTH_MISMATCH, field,
                    "frame of %zu bytes, %s x shape says %llu", fr->len,
                    proto_dtype_name(t->dtype), (unsigned long long)t->nbytes);
    }
    if (fr->len && !fr->data) {
        return fail(diag, PROTO_ERR_LENGTH_MISMATCH, field, "frame without data");
    }
    size_t es = proto_dtype_size(t->dtype);
    if (es > 1 && ((uintptr_t)fr->data % es) != 0) {
        return fail(diag, PROTO_ERR_MISALIGNED, field, "frame not %zu-byte aligned", es);
    }
    t->data = fr->data;
    return PROTO_OK;
}

static enum proto_status decode_generic(const struct mdesc *md, const struct proto_frame *frames,
                                        size_t nframes, const struct proto_decode_opts *opts,
                                        void *tmp, struct proto_diag *diag)
{
    struct proto_header h;
    enum proto_status st = peek(frames, nframes, opts, &h, diag);
    if (st) return st;
    if (h.type != md->type) {
        return fail(diag, PROTO_ERR_WRONG_MSG_TYPE, "type", "got '%s', expected '%s'",
                    proto_type_name(h.type), proto_type_name(md->type));
    }
    uint64_t limit = opts && opts->max_tensor_bytes ? opts->max_tensor_bytes
                                                    : PROTO_MAX_TENSOR_BYTES_DEFAULT;
    char *base = tmp;
    memset(base, 0, md->size);
    uint64_t seen = 0;
    uint32_t counts[MAX_FIELDS] = {0};
    SWAV_ASSERT(md->nf <= MAX_FIELDS);

    /* peek() walked the structure: the map header and keys are known good */
    struct rd r = {frames[0].data, (const uint8_t *)frames[0].data + frames[0].len};
    uint64_t n;
    st = rd_map(&r, &n);
    SWAV_ASSERT(st == PROTO_OK);
    for (uint64_t i = 0; i < n; i++) {
        const char *k;
        uint64_t klen;
        st = rd_str(&r, &k, &klen);
        SWAV_ASSERT(st == PROTO_OK);
        size_t fi = md->nf;
        for (size_t j = 0; j < md->nf; j++) {
            if (key_is(k, klen, md->f[j].name)) {
                fi = j;
                break;
            }
        }
        if (fi == md->nf) {
            st = rd_skip(&r, 1); /* v, type, run or an unknown key */
            SWAV_ASSERT(st == PROTO_OK);
            continue;
        }
        if (seen & (1ull << fi)) {
            return fail(diag, PROTO_ERR_DUPLICATE_KEY, md->f[fi].name, "given twice");
        }
        seen |= 1ull << fi;
        st = read_field(&r, &md->f[fi], base, limit, &counts[fi], diag);
        if (st) return st;
    }

    /* required fields; lists sharing one count must agree */
    for (size_t j = 0; j < md->nf; j++) {
        const struct fdesc *f = &md->f[j];
        if (!(seen & (1ull << j))) {
            if (f->optional) continue;
            return fail(diag, PROTO_ERR_MISSING_FIELD, f->name, "required");
        }
        bool list = f->kind == FK_U32_LIST || f->kind == FK_F64_LIST ||
                    f->kind == FK_TENSOR_LIST || f->kind == FK_NOTES || f->kind == FK_COUNTERS;
        if (!list) continue;
        for (size_t i = 0; i < j; i++) {
            const struct fdesc *g = &md->f[i];
            if (g->cnt_off == f->cnt_off && counts[i] != counts[j] &&
                (g->kind == FK_U32_LIST || g->kind == FK_F64_LIST || g->kind == FK_TENSOR_LIST)) {
                return fail(diag, PROTO_ERR_INCONSISTENT, f->name,
                            "%u entries, but %s has %u", counts[j], g->name, counts[i]);
            }
        }
        *(uint32_t *)(base + f->cnt_off) = counts[j];
    }

    /* tensor frames, in table order */
    size_t want = 1;
    for (size_t j = 0; j < md->nf; j++) {
        const struct fdesc *f = &md->f[j];
        if (f->kind == FK_TENSOR && (!f->optional || *(bool *)(base + f->has_off))) want++;
        if (f->kind == FK_TENSOR_LIST) want += counts[j];
    }
    if (nframes != want) {
        return fail(diag, PROTO_ERR_FRAME_COUNT, NULL, "%zu frames, the header describes %zu",
                    nframes, want);
    }
    size_t fr = 1;
    for (size_t j = 0; j < md->nf; j++) {
        const struct fdesc *f = &md->f[j];
        if (f->kind == FK_TENSOR && (!f->optional || *(bool *)(base + f->has_off))) {
            st = bind_frame((struct proto_tensor *)(base + f->off), &frames[fr++], f->name, diag);
            if (st) return st;
        } else if (f->kind == FK_TENSOR_LIST) {
            for (uint32_t i = 0; i < counts[j]; i++) {
                st = bind_frame((struct proto_tensor *)(base + f->off) + i, &frames[fr++], f->name, diag);
                if (st) return st;
            }
        }
    }
    if (md->check) {
        st = md->check(base, diag);
        if (st) return st;
    }
    return PROTO_OK;
}

/* ---- encoding ------------------------------------------------------------- */

void proto_msg_init(struct proto_msg *m) { memset(m, 0, sizeof *m); }

void proto_msg_free(struct proto_msg *m)
{
    free(m->hdr);
    memset(m, 0, sizeof *m);
}

static int msg_write(void *data, const char *buf, size_t len)
{
    struct proto_msg *m = data;
    if (m->hdr_len + len > m->hdr_cap) {
        size_t cap = m->hdr_cap ? m->hdr_cap : 1024;
        while (cap < m->hdr_len + len) cap *= 2;
        m->hdr = swav_xrealloc(m->hdr, cap);
        m->hdr_cap = cap;
    }
    memcpy(m->hdr + m->hdr_len, buf, len);
    m->hdr_len += len;
    return 0;
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_tensor_desc(msgpack_packer *pk, const struct proto_tensor *t)
{
    msgpack_pack_map(pk, 2);
    pack_cstr(pk, "dt");
    pack_cstr(pk, proto_dtype_name(t->dtype));
    pack_cstr(pk, "shape");
    uint32_t nd = t->ndim <= PROTO_MAX_DIMS ? t->ndim : PROTO_MAX_DIMS;
    msgpack_pack_array(pk, nd);
    for (uint32_t i = 0; i < nd; i++) msgpack_pack_uint64(pk, t->shape[i]);
}

static size_t bounded_strlen(const char *s, size_t cap) { return strnlen(s, cap + 1); }

static enum proto_status encode_generic(const struct mdesc *md, struct proto_msg *out,
                                        const char *run, const void *m, void *scratch)
{
    if (!out || !m || !run || bounded_strlen(run, PROTO_MAX_ID) > PROTO_MAX_ID) {
        return PROTO_ERR_BAD_ARG;
    }
    const char *base = m;
    size_t nkeys = 3;
    for (size_t j = 0; j < md->nf; j++) {
        const struct fdesc *f = &md->f[j];
        if (f->optional && !*(const bool *)(base + f->has_off)) continue;
        if (f->kind == FK_STR && bounded_strlen(base + f->off, f->cap) > f->cap) {
            return PROTO_ERR_STRING_TOO_LONG;
        }
        nkeys++;
    }
    out->hdr_len = 0;
    out->nframes = 1;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msg_write);
    msgpack_pack_map(&pk, nkeys);
    pack_cstr(&pk, "v");
    msgpack_pack_uint32(&pk, PROTO_VERSION);
    pack_cstr(&pk, "type");
    pack_cstr(&pk, proto_type_name(md->type));
    pack_cstr(&pk, "run");
    pack_cstr(&pk, run);
    for (size_t j = 0; j < md->nf; j++) {
        const struct fdesc *f = &md->f[j];
        const char *p = base + f->off;
        if (f->optional && !*(const bool *)(base + f->has_off)) continue;
        bool list = f->kind == FK_U32_LIST || f->kind == FK_F64_LIST ||
                    f->kind == FK_TENSOR_LIST || f->kind == FK_NOTES || f->kind == FK_COUNTERS;
        uint32_t cnt = list ? *(const uint32_t *)(base + f->cnt_off) : 0;
        if (list && cnt > f->cap) return PROTO_ERR_LIST_TOO_LONG;
        pack_cstr(&pk, f->name);
        switch (f->kind) {
        case FK_U32: msgpack_pack_uint32(&pk, *(const uint32_t *)p); break;
        case FK_ENUM: msgpack_pack_int64(&pk, *(const int *)p); break;
        case FK_U64: msgpack_pack_uint64(&pk, *(const uint64_t *)p); break;
        case FK_I32: msgpack_pack_int32(&pk, *(const int32_t *)p); break;
        case FK_F64: msgpack_pack_double(&pk, *(const double *)p); break;
        case FK_BOOL:
            if (*(const bool *)p) msgpack_pack_true(&pk);
            else msgpack_pack_false(&pk);
            break;
        case FK_STR: pack_cstr(&pk, p); break;
        case FK_BIN:
            msgpack_pack_bin(&pk, f->cap);
            msgpack_pack_bin_body(&pk, p, f->cap);
            break;
        case FK_U32_LIST:
            msgpack_pack_array(&pk, cnt);
            for (uint32_t i = 0; i < cnt; i++) msgpack_pack_uint32(&pk, ((const uint32_t *)p)[i]);
            break;
        case FK_F64_LIST:
            msgpack_pack_array(&pk, cnt);
            for (uint32_t i = 0; i < cnt; i++) msgpack_pack_double(&pk, ((const double *)p)[i]);
            break;
        case FK_TENSOR_LIST:
            msgpack_pack_array(&pk, cnt);
            for (uint32_t i = 0; i < cnt; i++) pack_tensor_desc(&pk, (const struct proto_tensor *)p + i);
            break;
        case FK_TENSOR: pack_tensor_desc(&pk, (const struct proto_tensor *)p); break;
        case FK_NOTES:
            msgpack_pack_array(&pk, cnt);
            for (uint32_t i = 0; i < cnt; i++) {
                const struct proto_note *nt = (const struct proto_note *)p + i;
                if (bounded_strlen(nt->text, PROTO_MAX_NOTE_TEXT) > PROTO_MAX_NOTE_TEXT) {
                    return PROTO_ERR_STRING_TOO_LONG;
                }
                msgpack_pack_map(&pk, 3);
                pack_cstr(&pk, "position");
                msgpack_pack_uint32(&pk, nt->position);
                pack_cstr(&pk, "code");
                msgpack_pack_uint32(&pk, nt->code);
                pack_cstr(&pk, "text");
                pack_cstr(&pk, nt->text);
            }
            break;
        case FK_COUNTERS:
            msgpack_pack_map(&pk, cnt);
            for (uint32_t i = 0; i < cnt; i++) {
                const struct proto_counter *c = (const struct proto_counter *)p + i;
                if (bounded_strlen(c->name, PROTO_MAX_ID) > PROTO_MAX_ID) {
                    return PROTO_ERR_STRING_TOO_LONG;
                }
                pack_cstr(&pk, c->name);
                msgpack_pack_double(&pk, c->value);
            }
            break;
        }
        /* tensor frames in table order; lengths from dtype x shape */
        if (f->kind == FK_TENSOR || f->kind == FK_TENSOR_LIST) {
            uint32_t nt = f->kind == FK_TENSOR ? 1 : cnt;
            for (uint32_t i = 0; i < nt; i++) {
                const struct proto_tensor *t = (const struct proto_tensor *)p + i;
                if (t->ndim == 0 || t->ndim > PROTO_MAX_DIMS) return PROTO_ERR_BAD_SHAPE;
                uint64_t nb = tensor_bytes(t->dtype, t->ndim, t->shape);
                if (nb == UINT64_MAX || nb > SIZE_MAX) return PROTO_ERR_TENSOR_TOO_LARGE;
                if (nb && !t->data) return PROTO_ERR_BAD_ARG;
                if (out->nframes >= PROTO_MAX_FRAMES) return PROTO_ERR_TOO_MANY_FRAMES;
                out->frames[out->nframes].data = t->data;
                out->frames[out->nframes].len = (size_t)nb;
                out->nframes++;
            }
        }
    }
    out->frames[0].data = out->hdr;
    out->frames[0].len = out->hdr_len;
    /* What we send must be what a peer accepts. */
    struct proto_decode_opts o = {.run = run, .max_tensor_bytes = UINT64_MAX};
    enum proto_status st = decode_generic(md, out->frames, out->nframes, &o, scratch, NULL);
    if (st) {
        out->nframes = 0;
    }
    return st;
}

/* ---- the typed entry points ---------------------------------------------- */

#define DEFINE_CODEC(name)                                                                \
    enum proto_status proto_##name##_encode(struct proto_msg *out, const char *run,      \
                                            const struct proto_##name *m)                \
    {                                                                                     \
        struct proto_##name scratch;                                                      \
        return encode_generic(&name##_desc, out, run, m, &scratch);                       \
    }                                                                                     \
    enum proto_status proto_##name##_decode(const struct proto_frame *frames,            \
                                            size_t nframes,                              \
                                            const struct proto_decode_opts *opts,        \
                                            struct proto_##name *out,                    \
                                            struct proto_diag *diag)                     \
    {                                                                                     \
        struct proto_##name tmp;                                                          \
        enum proto_status st = decode_generic(&name##_desc, frames, nframes, opts, &tmp, \
                                              diag);                                      \
        if (st == PROTO_OK) {                                                             \
            *out = tmp;                                                                   \
        }                                                                                 \
        return st;                                                                        \
    }

DEFINE_CODEC(ready)
DEFINE_CODEC(order)
DEFINE_CODEC(batch)
DEFINE_CODEC(hello)
DEFINE_CODEC(welcome)
DEFINE_CODEC(embed)
DEFINE_CODEC(codes)
DEFINE_CODEC(save)
DEFINE_CODEC(saved)
DEFINE_CODEC(error)
DEFINE_CODEC(checkpoint)
DEFINE_CODEC(status_msg)
