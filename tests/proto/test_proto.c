/* proto codec tests: every message type round-trips (decode, re-encode,
 * byte-identical); truncated, oversized, wrong-type, wrong-version,
 * wrong-run, shape/length-mismatched and otherwise malformed messages each
 * give their own status code, never crash, and leave the output untouched.
 * At the end every fault code of enum proto_status must have been produced
 * by some test. */
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "samples.h"
#include "tests/expect.h"

static int seen_status[PROTO_STATUS_COUNT];

/* Room for the decoded struct of any type. */
static union sample_any_msg g_out, g_guard;

static enum proto_status decode_as(enum proto_type t, const struct proto_frame *f, size_t n,
                                   const struct proto_decode_opts *o, struct proto_diag *d)
{
    switch (t) {
    case PROTO_TYPE_READY: return proto_ready_decode(f, n, o, &g_out.ready, d);
    case PROTO_TYPE_ORDER: return proto_order_decode(f, n, o, &g_out.order, d);
    case PROTO_TYPE_BATCH: return proto_batch_decode(f, n, o, &g_out.batch, d);
    case PROTO_TYPE_HELLO: return proto_hello_decode(f, n, o, &g_out.hello, d);
    case PROTO_TYPE_WELCOME: return proto_welcome_decode(f, n, o, &g_out.welcome, d);
    case PROTO_TYPE_EMBED: return proto_embed_decode(f, n, o, &g_out.embed, d);
    case PROTO_TYPE_CODES: return proto_codes_decode(f, n, o, &g_out.codes, d);
    case PROTO_TYPE_SAVE: return proto_save_decode(f, n, o, &g_out.save, d);
    case PROTO_TYPE_SAVED: return proto_saved_decode(f, n, o, &g_out.saved, d);
    case PROTO_TYPE_ERROR: return proto_error_decode(f, n, o, &g_out.error, d);
    case PROTO_TYPE_CHECKPOINT: return proto_checkpoint_decode(f, n, o, &g_out.checkpoint, d);
    case PROTO_TYPE_STATUS: return proto_status_msg_decode(f, n, o, &g_out.status, d);
    default: return PROTO_ERR_BAD_ARG;
    }
}

static enum proto_status encode_as(enum proto_type t, struct proto_msg *m, const void *s)
{
    switch (t) {
    case PROTO_TYPE_READY: return proto_ready_encode(m, SAMPLE_RUN, s);
    case PROTO_TYPE_ORDER: return proto_order_encode(m, SAMPLE_RUN, s);
    case PROTO_TYPE_BATCH: return proto_batch_encode(m, SAMPLE_RUN, s);
    case PROTO_TYPE_HELLO: return proto_hello_encode(m, SAMPLE_RUN, s);
    case PROTO_TYPE_WELCOME: return proto_welcome_encode(m, SAMPLE_RUN, s);
    case PROTO_TYPE_EMBED: return proto_embed_encode(m, SAMPLE_RUN, s);
    case PROTO_TYPE_CODES: return proto_codes_encode(m, SAMPLE_RUN, s);
    case PROTO_TYPE_SAVE: return proto_save_encode(m, SAMPLE_RUN, s);
    case PROTO_TYPE_SAVED: return proto_saved_encode(m, SAMPLE_RUN, s);
    case PROTO_TYPE_ERROR: return proto_error_encode(m, SAMPLE_RUN, s);
    case PROTO_TYPE_CHECKPOINT: return proto_checkpoint_encode(m, SAMPLE_RUN, s);
    case PROTO_TYPE_STATUS: return proto_status_msg_encode(m, SAMPLE_RUN, s);
    default: return PROTO_ERR_BAD_ARG;
    }
}

/* Decode and expect `want`; on failure the output must be untouched. */
static void expect(enum proto_type t, const struct proto_frame *f, size_t n,
                   const struct proto_decode_opts *o, enum proto_status want, const char *what)
{
    struct proto_diag d = {{0}, {0}};
    memset(&g_out, 0xA5, sizeof g_out);
    memset(&g_guard, 0xA5, sizeof g_guard);
    enum proto_status st = decode_as(t, f, n, o, &d);
    if (st >= 0 && st < PROTO_STATUS_COUNT) seen_status[st] = 1;
    char msg[512];
    proto_diag_format(msg, sizeof msg, t, st, &d);
    EXPECT(st == want, "%s (%s): got %s, want %s; %s", what, proto_type_name(t),
           proto_status_str(st), proto_status_str(want), msg);
    if (st != PROTO_OK) {
        EXPECT(!memcmp(&g_out, &g_guard, sizeof g_out), "%s: output written on failure", what);
    }
}

/* ---- header mutation (msgpack-c unpacks our own, trusted, header) ---------- */

enum op { OP_REPLACE, OP_DROP, OP_DUP, OP_ADD };

struct hdrbuf {
    msgpack_sbuffer sb;
};

/* Rewrite hdr: for key `key`, replace its value by the raw msgpack bytes
 * `val` (OP_REPLACE), drop it (OP_DROP), repeat it (OP_DUP); OP_ADD appends
 * key -> val. */
static void mutate(const struct proto_msg *in, const char *key, enum op op, const void *val,
                   size_t vlen, msgpack_sbuffer *out)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 4096);
    msgpack_object obj;
    size_t off = 0;
    int rc = msgpack_unpack(in->hdr, in->hdr_len, &off, &z, &obj);
    if (rc != MSGPACK_UNPACK_SUCCESS || obj.type != MSGPACK_OBJECT_MAP) {
        fprintf(stderr, "mutate: cannot unpack our own header\n");
        abort();
    }
    msgpack_sbuffer_init(out);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    uint32_t n = obj.via.map.size;
    uint32_t match = 0;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object_kv *kv = &obj.via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            !memcmp(kv->key.via.str.ptr, key, strlen(key))) {
            match++;
        }
    }
    if (op != OP_ADD && match != 1) {
        fprintf(stderr, "mutate: key %s not in header\n", key);
        abort();
    }
    uint32_t total = n + (op == OP_DROP ? -1u : op == OP_REPLACE ? 0 : 1);
    msgpack_pack_map(&pk, total);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object_kv *kv = &obj.via.map.ptr[i];
        int hit = kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
                  !memcmp(kv->key.via.str.ptr, key, strlen(key));
        if (hit && op == OP_DROP) continue;
        msgpack_pack_object(&pk, kv->key);
        if (hit && op == OP_REPLACE) {
            msgpack_sbuffer_write(out, val, vlen);
        } else {
            msgpack_pack_object(&pk, kv->val);
        }
        if (hit && op == OP_DUP) {
            msgpack_pack_object(&pk, kv->key);
            msgpack_pack_object(&pk, kv->val);
        }
    }
    if (op == OP_ADD) {
        msgpack_pack_str(&pk, strlen(key));
        msgpack_pack_str_body(&pk, key, strlen(key));
        msgpack_sbuffer_write(out, val, vlen);
    }
    msgpack_zone_destroy(&z);
}

/* Raw msgpack values for mutate(). */
static msgpack_sbuffer g_val;
static msgpack_packer g_vpk;
static msgpack_packer *val_begin(void)
{
    msgpack_sbuffer_destroy(&g_val);
    msgpack_sbuffer_init(&g_val);
    msgpack_packer_init(&g_vpk, &g_val, msgpack_sbuffer_write);
    return &g_vpk;
}
static void pack_s(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* Mutate type t's sample at key and expect `want`. */
static void expect_mut(enum proto_type t, const char *key, enum op op, enum proto_status want,
                       const char *what)
{
    struct proto_msg m;
    proto_msg_init(&m);
    EXPECT(sample_encode(t, &m) == PROTO_OK, "sample %s", proto_type_name(t));
    msgpack_sbuffer out;
    mutate(&m, key, op, g_val.data, g_val.size, &out);
    struct proto_frame f[PROTO_MAX_FRAMES];
    memcpy(f, m.frames, sizeof f);
    f[0].data = out.data;
    f[0].len = out.size;
    expect(t, f, m.nframes, NULL, want, what);
    msgpack_sbuffer_destroy(&out);
    proto_msg_free(&m);
}

/* ---- tests -------------------------------------------------------------- */

static void test_round_trip(void)
{
    for (int t = 1; t < PROTO_TYPE_COUNT; t++) {
        struct proto_msg m, m2;
        proto_msg_init(&m);
        proto_msg_init(&m2);
        enum proto_status st = sample_encode((enum proto_type)t, &m);
        EXPECT(st == PROTO_OK, "encode %s: %s", proto_type_name(t), proto_status_str(st));
        expect((enum proto_type)t, m.frames, m.nframes, NULL, PROTO_OK, "round trip");
        struct proto_decode_opts o = {.run = SAMPLE_RUN};
        expect((enum proto_type)t, m.frames, m.nframes, &o, PROTO_OK, "round trip, run checked");
        /* re-encode what was decoded: byte-identical header, same tensor frames */
        st = encode_as((enum proto_type)t, &m2, &g_out);
        EXPECT(st == PROTO_OK, "re-encode %s: %s", proto_type_name(t), proto_status_str(st));
        EXPECT(m.hdr_len == m2.hdr_len && !memcmp(m.hdr, m2.hdr, m.hdr_len),
               "%s: re-encoded header differs", proto_type_name(t));
        EXPECT(m.nframes == m2.nframes, "%s: frame count %zu vs %zu", proto_type_name(t),
               m.nframes, m2.nframes);
        for (size_t i = 1; i < m.nframes && i < m2.nframes; i++) {
            EXPECT(m.frames[i].len == m2.frames[i].len && m.frames[i].data == m2.frames[i].data,
                   "%s: tensor frame %zu not referenced in place", proto_type_name(t), i);
        }
        struct proto_header h;
        st = proto_peek_type(m.frames, m.nframes, NULL, &h, NULL);
        EXPECT(st == PROTO_OK && (int)h.type == t && h.v == PROTO_VERSION && !strcmp(h.run, SAMPLE_RUN),
               "peek %s", proto_type_name(t));
        proto_msg_free(&m);
        proto_msg_free(&m2);
    }
    /* spot checks of decoded values */
    struct proto_msg m;
    proto_msg_init(&m);
    sample_encode(PROTO_TYPE_BATCH, &m);
    EXPECT(proto_batch_decode(m.frames, m.nframes, NULL, &g_out.batch, NULL) == PROTO_OK, "batch");
    const struct proto_batch *sb = sample_struct(PROTO_TYPE_BATCH);
    EXPECT(g_out.batch.ngroups == 2 && g_out.batch.crops[1].shape[1] == 2 &&
               !memcmp(g_out.batch.crops[0].data, sb->crops[0].data, sb->crops[0].nbytes) &&
               ((const int32_t *)g_out.batch.labels.data)[1] == -1 &&
               !strcmp(g_out.batch.notes[0].text, sb->notes[0].text) &&
               g_out.batch.augment_ms == 30.25,
           "batch fields");
    sample_encode(PROTO_TYPE_HELLO, &m);
    EXPECT(proto_hello_decode(m.frames, m.nframes, NULL, &g_out.hello, NULL) == PROTO_OK, "hello");
    EXPECT(g_out.hello.epsilon == 0.05 && g_out.hello.has_nccl_id && g_out.hello.nccl_id[127] == (uint8_t)(127 * 3 + 1) &&
               g_out.hello.crops_for_assign[1] == 1 && g_out.hello.n_crops_for_assign == 2,
           "hello fields");
    /* optional parts absent */
    struct proto_hello h = *(const struct proto_hello *)sample_struct(PROTO_TYPE_HELLO);
    h.has_nccl_id = false;
    h.resume_path[0] = '\0';
    EXPECT(proto_hello_encode(&m, "r", &h) == PROTO_OK, "hello without nccl id");
    EXPECT(proto_hello_decode(m.frames, m.nframes, NULL, &g_out.hello, NULL) == PROTO_OK &&
               !g_out.hello.has_nccl_id && g_out.hello.resume_path[0] == '\0',
           "hello without nccl id decodes");
    struct proto_embed e = *(const struct proto_embed *)sample_struct(PROTO_TYPE_EMBED);
    e.has_prototypes = false;
    EXPECT(proto_embed_encode(&m, "r", &e) == PROTO_OK && m.nframes == 2, "embed without prototypes");
    EXPECT(proto_embed_decode(m.frames, m.nframes, NULL, &g_out.embed, NULL) == PROTO_OK &&
               !g_out.embed.has_prototypes && g_out.embed.embeddings.shape[2] == 4,
           "embed without prototypes decodes");
    /* ready: data set sizes, and without them (a loader that predates the field) */
    sample_encode(PROTO_TYPE_READY, &m);
    EXPECT(proto_ready_decode(m.frames, m.nframes, NULL, &g_out.ready, NULL) == PROTO_OK &&
               g_out.ready.has_datasets && g_out.ready.n_datasets == 2 &&
               !strcmp(g_out.ready.datasets[1].name, "eval_val") &&
               g_out.ready.datasets[0].value == 1281167.0,
           "ready data sets");
    struct proto_ready rd = *(const struct proto_ready *)sample_struct(PROTO_TYPE_READY);
    rd.has_datasets = false;
    EXPECT(proto_ready_encode(&m, "r", &rd) == PROTO_OK, "ready without data sets");
    EXPECT(proto_ready_decode(m.frames, m.nframes, NULL, &g_out.ready, NULL) == PROTO_OK &&
               !g_out.ready.has_datasets && g_out.ready.n_datasets == 0,
           "ready without data sets decodes");
    rd.has_datasets = true;
    rd.datasets[1].value = 2.5;
    EXPECT(proto_ready_encode(&m, "r", &rd) == PROTO_ERR_OUT_OF_RANGE,
           "encoder refuses 2.5 images");
    /* status request with no counters; eval orders */
    struct proto_status_msg s = {.rank = 0, .request = true};
    snprintf(s.role, sizeof s.role, "launcher");
    EXPECT(proto_status_msg_encode(&m, "r", &s) == PROTO_OK, "status request");
    EXPECT(proto_status_msg_decode(m.frames, m.nframes, NULL, &g_out.status, NULL) == PROTO_OK &&
               g_out.status.request && g_out.status.n_counters == 0,
           "status request decodes");
    struct proto_order o = *(const struct proto_order *)sample_struct(PROTO_TYPE_ORDER);
    o.mode = PROTO_MODE_EVAL_VAL;
    o.ngroups = 1;
    o.nmb_crops[0] = 1;
    o.resize = 256;
    EXPECT(proto_order_encode(&m, "r", &o) == PROTO_OK, "eval order");
    EXPECT(proto_order_decode(m.frames, m.nframes, NULL, &g_out.order, NULL) == PROTO_OK &&
               g_out.order.mode == PROTO_MODE_EVAL_VAL && g_out.order.resize == 256,
           "eval order decodes");
    o.resize = 0; /* EVAL_VAL needs resize */
    EXPECT(proto_order_encode(&m, "r", &o) == PROTO_ERR_INCONSISTENT, "encoder refuses a bad order");
    proto_msg_free(&m);
}

static void test_truncated(void)
{
    for (int t = 1; t < PROTO_TYPE_COUNT; t++) {
        struct proto_msg m;
        proto_msg_init(&m);
        sample_encode((enum proto_type)t, &m);
        struct proto_frame f[PROTO_MAX_FRAMES];
        memcpy(f, m.frames, sizeof f);
        for (size_t len = 0; len < m.hdr_len; len++) {
            f[0].len = len;
            char what[64];
            snprintf(what, sizeof what, "header cut at %zu of %zu", len, m.hdr_len);
            expect((enum proto_type)t, f, m.nframes, NULL,
                   len == 0 ? PROTO_ERR_NO_FRAMES : PROTO_ERR_TRUNCATED, what);
        }
        /* header only, tensor frames missing */
        f[0].len = m.hdr_len;
        if (m.nframes > 1) {
            expect((enum proto_type)t, f, 1, NULL, PROTO_ERR_FRAME_COUNT, "tensor frames missing");
        }
        expect((enum proto_type)t, f, 0, NULL, PROTO_ERR_NO_FRAMES, "no frames");
        proto_msg_free(&m);
    }
}

static void test_oversized(void)
{
    struct proto_msg m;
    proto_msg_init(&m);
    sample_encode(PROTO_TYPE_BATCH, &m);
    struct proto_frame f[PROTO_MAX_FRAMES + 1];
    memcpy(f, m.frames, m.nframes * sizeof f[0]);
    for (size_t i = m.nframes; i < PROTO_MAX_FRAMES + 1; i++) f[i] = f[1];
    expect(PROTO_TYPE_BATCH, f, PROTO_MAX_FRAMES + 1, NULL, PROTO_ERR_TOO_MANY_FRAMES, "17 frames");
    expect(PROTO_TYPE_BATCH, f, m.nframes + 1, NULL, PROTO_ERR_FRAME_COUNT, "one frame too many");
    struct proto_decode_opts o = {.max_tensor_bytes = 64};
    expect(PROTO_TYPE_BATCH, m.frames, m.nframes, &o, PROTO_ERR_TENSOR_TOO_LARGE, "tensor over limit");

    /* a header over 1 MiB: an unknown key with a large string */
    char *big = malloc(PROTO_MAX_HEADER_BYTES);
    memset(big, 'x', PROTO_MAX_HEADER_BYTES);
    msgpack_packer *pk = val_begin();
    msgpack_pack_str(pk, PROTO_MAX_HEADER_BYTES);
    msgpack_pack_str_body(pk, big, PROTO_MAX_HEADER_BYTES);
    free(big);
    expect_mut(PROTO_TYPE_READY, "padding", OP_ADD, PROTO_ERR_HEADER_TOO_LARGE, "header > 1 MiB");

    char s65[PROTO_MAX_ID + 2];
    memset(s65, 'a', PROTO_MAX_ID + 1);
    s65[PROTO_MAX_ID + 1] = '\0';
    pack_s(val_begin(), s65);
    expect_mut(PROTO_TYPE_READY, "loader_id", OP_REPLACE, PROTO_ERR_STRING_TOO_LONG, "loader_id 65 bytes");
    pack_s(val_begin(), s65);
    expect_mut(PROTO_TYPE_READY, "run", OP_REPLACE, PROTO_ERR_STRING_TOO_LONG, "run id 65 bytes");

    pk = val_begin();
    msgpack_pack_array(pk, PROTO_MAX_GROUPS + 1);
    for (int i = 0; i < PROTO_MAX_GROUPS + 1; i++) msgpack_pack_uint32(pk, 2);
    expect_mut(PROTO_TYPE_ORDER, "nmb_crops", OP_REPLACE, PROTO_ERR_LIST_TOO_LONG, "9 groups");
    pk = val_begin();
    msgpack_pack_array(pk, 0xffffffffu); /* a huge count, no elements: nothing reserved */
    expect_mut(PROTO_TYPE_ORDER, "size_crops", OP_REPLACE, PROTO_ERR_TRUNCATED, "2^32-1 groups");
    pk = val_begin();
    msgpack_pack_map(pk, PROTO_MAX_LIST + 1);
    for (int i = 0; i < PROTO_MAX_LIST + 1; i++) {
        char name[16];
        snprintf(name, sizeof name, "c%d", i);
        pack_s(pk, name);
        msgpack_pack_double(pk, i);
    }
    expect_mut(PROTO_TYPE_STATUS, "counters", OP_REPLACE, PROTO_ERR_LIST_TOO_LONG, "65 counters");
    expect_mut(PROTO_TYPE_READY, "datasets", OP_REPLACE, PROTO_ERR_LIST_TOO_LONG, "65 data sets");
    static const double bad_sizes[4] = {-1.0, 0.5, 4294967296.0, NAN};
    for (int i = 0; i < 4; i++) {
        pk = val_begin();
        msgpack_pack_map(pk, 1);
        pack_s(pk, "train");
        msgpack_pack_double(pk, bad_sizes[i]);
        char what[64];
        snprintf(what, sizeof what, "data set of %g images", bad_sizes[i]);
        expect_mut(PROTO_TYPE_READY, "datasets", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, what);
    }
    pk = val_begin();
    msgpack_pack_map(pk, 1);
    pack_s(pk, "");
    msgpack_pack_uint32(pk, 3);
    expect_mut(PROTO_TYPE_READY, "datasets", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, "empty tag");
    msgpack_pack_nil(val_begin());
    expect_mut(PROTO_TYPE_READY, "datasets", OP_REPLACE, PROTO_OK, "datasets nil (absent)");
    msgpack_pack_uint32(val_begin(), PROTO_MAX_ORDER_IMAGES + 1);
    expect_mut(PROTO_TYPE_ORDER, "n_images", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, "65537 images");

    /* a shape whose byte count overflows 64 bits */
    pk = val_begin();
    msgpack_pack_map(pk, 2);
    pack_s(pk, "dt");
    pack_s(pk, "f32");
    pack_s(pk, "shape");
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint64(pk, 1ull << 40);
    msgpack_pack_uint64(pk, 1ull << 40);
    msgpack_pack_uint64(pk, 3);
    expect_mut(PROTO_TYPE_CODES, "q", OP_REPLACE, PROTO_ERR_TENSOR_TOO_LARGE, "shape overflows");
    pk = val_begin();
    msgpack_pack_map(pk, 2);
    pack_s(pk, "dt");
    pack_s(pk, "f32");
    pack_s(pk, "shape");
    msgpack_pack_array(pk, 5);
    for (int i = 0; i < 5; i++) msgpack_pack_uint32(pk, 1);
    expect_mut(PROTO_TYPE_CODES, "q", OP_REPLACE, PROTO_ERR_BAD_SHAPE, "5 dimensions");
    proto_msg_free(&m);
}

static void test_wrong_type(void)
{
    pack_s(val_begin(), "4");
    expect_mut(PROTO_TYPE_READY, "credit", OP_REPLACE, PROTO_ERR_WRONG_TYPE, "credit as string");
    msgpack_pack_double(val_begin(), 4.0);
    expect_mut(PROTO_TYPE_READY, "credit", OP_REPLACE, PROTO_ERR_WRONG_TYPE, "credit as float");
    msgpack_pack_int32(val_begin(), -1);
    expect_mut(PROTO_TYPE_READY, "credit", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, "negative credit");
    msgpack_pack_uint32(val_begin(), 65537);
    expect_mut(PROTO_TYPE_READY, "credit", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, "credit 65537");
    msgpack_pack_uint32(val_begin(), 1);
    expect_mut(PROTO_TYPE_SAVED, "ok", OP_REPLACE, PROTO_ERR_WRONG_TYPE, "ok as integer");
    pack_s(val_begin(), "0.05");
    expect_mut(PROTO_TYPE_HELLO, "epsilon", OP_REPLACE, PROTO_ERR_WRONG_TYPE, "epsilon as string");
    msgpack_pack_double(val_begin(), 0.0);
    expect_mut(PROTO_TYPE_HELLO, "epsilon", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, "epsilon 0");
    msgpack_pack_double(val_begin(), NAN);
    expect_mut(PROTO_TYPE_BATCH, "decode_ms", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, "NaN decode_ms");
    msgpack_pack_uint32(val_begin(), 0);
    expect_mut(PROTO_TYPE_HELLO, "sinkhorn_iterations", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, "0 iterations");
    msgpack_pack_uint32(val_begin(), 7);
    expect_mut(PROTO_TYPE_ORDER, "mode", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, "mode 7");
    msgpack_pack_uint32(val_begin(), 99);
    expect_mut(PROTO_TYPE_ERROR, "code", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, "error code 99");
    msgpack_pack_uint32(val_begin(), 3);
    expect_mut(PROTO_TYPE_ORDER, "indices", OP_REPLACE, PROTO_ERR_WRONG_TYPE, "tensor as integer");
    msgpack_packer *pk = val_begin();
    msgpack_pack_bin(pk, 127);
    msgpack_pack_bin_body(pk, "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456", 127);
    expect_mut(PROTO_TYPE_HELLO, "nccl_id", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, "127-byte nccl id");
    pack_s(val_begin(), "bogus");
    expect_mut(PROTO_TYPE_READY, "type", OP_REPLACE, PROTO_ERR_UNKNOWN_TYPE, "type bogus");
    msgpack_pack_uint32(val_begin(), 1);
    expect_mut(PROTO_TYPE_READY, "type", OP_REPLACE, PROTO_ERR_WRONG_TYPE, "type as integer");

    /* a decoder given another type's message */
    struct proto_msg m;
    proto_msg_init(&m);
    sample_encode(PROTO_TYPE_READY, &m);
    expect(PROTO_TYPE_ORDER, m.frames, m.nframes, NULL, PROTO_ERR_WRONG_MSG_TYPE, "ready to order decoder");
    sample_encode(PROTO_TYPE_SAVE, &m);
    expect(PROTO_TYPE_CHECKPOINT, m.frames, m.nframes, NULL, PROTO_ERR_WRONG_MSG_TYPE, "save to checkpoint decoder");

    /* headers that are not maps; map keys that are not strings */
    uint8_t arr[] = {0x93, 0x01, 0x02, 0x03};
    struct proto_frame f = {arr, sizeof arr};
    expect(PROTO_TYPE_READY, &f, 1, NULL, PROTO_ERR_NOT_MAP, "array header");
    uint8_t intkey[] = {0x81, 0x01, 0x01};
    f = (struct proto_frame){intkey, sizeof intkey};
    expect(PROTO_TYPE_READY, &f, 1, NULL, PROTO_ERR_BAD_KEY, "integer key");
    uint8_t c1[] = {0x81, 0xa1, 'x', 0xc1};
    f = (struct proto_frame){c1, sizeof c1};
    expect(PROTO_TYPE_READY, &f, 1, NULL, PROTO_ERR_WRONG_TYPE, "reserved byte 0xc1");
    proto_msg_free(&m);
}

static void test_version_and_run(void)
{
    msgpack_pack_uint32(val_begin(), 2);
    expect_mut(PROTO_TYPE_ORDER, "v", OP_REPLACE, PROTO_ERR_BAD_VERSION, "version 2");
    msgpack_pack_int32(val_begin(), -1);
    expect_mut(PROTO_TYPE_ORDER, "v", OP_REPLACE, PROTO_ERR_BAD_VERSION, "version -1");
    pack_s(val_begin(), "1");
    expect_mut(PROTO_TYPE_ORDER, "v", OP_REPLACE, PROTO_ERR_WRONG_TYPE, "version as string");
    expect_mut(PROTO_TYPE_ORDER, "v", OP_DROP, PROTO_ERR_MISSING_FIELD, "no version");
    expect_mut(PROTO_TYPE_ORDER, "run", OP_DROP, PROTO_ERR_MISSING_FIELD, "no run id");
    for (int t = 1; t < PROTO_TYPE_COUNT; t++) {
        struct proto_msg m;
        proto_msg_init(&m);
        sample_encode((enum proto_type)t, &m);
        struct proto_decode_opts o = {.run = "run-0002"};
        expect((enum proto_type)t, m.frames, m.nframes, &o, PROTO_ERR_WRONG_RUN, "another run");
        o.run = "";
        expect((enum proto_type)t, m.frames, m.nframes, &o, PROTO_OK, "any run");
        struct proto_header h;
        EXPECT(proto_peek_type(m.frames, m.nframes, &(struct proto_decode_opts){.run = "x"}, &h,
                               NULL) == PROTO_ERR_WRONG_RUN,
               "peek checks the run");
        proto_msg_free(&m);
    }
}

static void test_shape_length(void)
{
    struct proto_msg m;
    proto_msg_init(&m);
    sample_encode(PROTO_TYPE_BATCH, &m);
    struct proto_frame f[PROTO_MAX_FRAMES];
    memcpy(f, m.frames, sizeof f);
    f[1].len--;
    expect(PROTO_TYPE_BATCH, f, m.nframes, NULL, PROTO_ERR_LENGTH_MISMATCH, "crops frame 1 byte short");
    f[1].len += 2;
    expect(PROTO_TYPE_BATCH, f, m.nframes, NULL, PROTO_ERR_LENGTH_MISMATCH, "crops frame 1 byte long");
    memcpy(f, m.frames, sizeof f);
    f[3].len = 4;
    expect(PROTO_TYPE_BATCH, f, m.nframes, NULL, PROTO_ERR_LENGTH_MISMATCH, "labels frame short");
    /* misaligned f32 frame */
    sample_encode(PROTO_TYPE_CODES, &m);
    memcpy(f, m.frames, sizeof f);
    char *copy = malloc(m.frames[1].len + 1);
    memcpy(copy + 1, m.frames[1].data, m.frames[1].len);
    f[1].data = copy + 1;
    expect(PROTO_TYPE_CODES, f, m.nframes, NULL, PROTO_ERR_MISALIGNED, "misaligned q");
    free(copy);

    /* descriptions that disagree with the other fields */
    msgpack_packer *pk = val_begin();
    msgpack_pack_map(pk, 2);
    pack_s(pk, "dt");
    pack_s(pk, "u32");
    pack_s(pk, "shape");
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint32(pk, 5);
    msgpack_pack_uint32(pk, 1);
    expect_mut(PROTO_TYPE_ORDER, "indices", OP_REPLACE, PROTO_ERR_BAD_SHAPE, "indices 2-D");
    msgpack_pack_uint32(val_begin(), 4);
    expect_mut(PROTO_TYPE_ORDER, "n_images", OP_REPLACE, PROTO_ERR_BAD_SHAPE, "n_images 4 vs 5 indices");
    pk = val_begin();
    msgpack_pack_map(pk, 2);
    pack_s(pk, "dt");
    pack_s(pk, "f32");
    pack_s(pk, "shape");
    msgpack_pack_array(pk, 1);
    msgpack_pack_uint32(pk, 2);
    expect_mut(PROTO_TYPE_BATCH, "labels", OP_REPLACE, PROTO_ERR_BAD_DTYPE, "labels as f32");
    pk = val_begin();
    msgpack_pack_map(pk, 2);
    pack_s(pk, "dt");
    pack_s(pk, "f16");
    pack_s(pk, "shape");
    msgpack_pack_array(pk, 1);
    msgpack_pack_uint32(pk, 2);
    expect_mut(PROTO_TYPE_BATCH, "labels", OP_REPLACE, PROTO_ERR_BAD_DTYPE, "unknown dtype");
    pk = val_begin();
    msgpack_pack_map(pk, 2);
    pack_s(pk, "dt");
    pack_s(pk, "f32");
    pack_s(pk, "shape");
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint32(pk, 5);
    msgpack_pack_uint32(pk, 3); /* D = 3, embeddings say 4; 5*3*4 = 60 bytes framed as 80 */
    expect_mut(PROTO_TYPE_EMBED, "prototypes", OP_REPLACE, PROTO_ERR_LENGTH_MISMATCH, "prototypes length");
    msgpack_pack_uint32(val_begin(), 3);
    expect_mut(PROTO_TYPE_BATCH, "n_images", OP_REPLACE, PROTO_ERR_BAD_SHAPE, "batch n_images 3 vs crops of 2");
    pk = val_begin();
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint32(pk, 2);
    msgpack_pack_uint32(pk, 2);
    expect_mut(PROTO_TYPE_BATCH, "nmb_crops", OP_REPLACE, PROTO_ERR_BAD_SHAPE, "nmb_crops disagree with crops");

    /* the encoder refuses a struct whose tensor disagrees */
    struct proto_embed e = *(const struct proto_embed *)sample_struct(PROTO_TYPE_EMBED);
    e.prototypes.shape[1] = 2; /* D 2 vs 4 */
    enum proto_status st = proto_embed_encode(&m, "r", &e);
    EXPECT(st == PROTO_ERR_BAD_SHAPE, "encode embed with D mismatch: %s", proto_status_str(st));
    proto_msg_free(&m);
}

static void test_structure(void)
{
    expect_mut(PROTO_TYPE_READY, "credit", OP_DUP, PROTO_ERR_DUPLICATE_KEY, "credit twice");
    expect_mut(PROTO_TYPE_READY, "v", OP_DUP, PROTO_ERR_DUPLICATE_KEY, "v twice");
    expect_mut(PROTO_TYPE_READY, "credit", OP_DROP, PROTO_ERR_MISSING_FIELD, "no credit");
    expect_mut(PROTO_TYPE_BATCH, "labels", OP_DROP, PROTO_ERR_MISSING_FIELD, "no labels");
    pack_s(val_begin(), "future field");
    expect_mut(PROTO_TYPE_READY, "zz_future", OP_ADD, PROTO_OK, "unknown key skipped");
    msgpack_packer *pk = val_begin();
    for (int i = 0; i < PROTO_MAX_DEPTH + 2; i++) msgpack_pack_array(pk, 1);
    msgpack_pack_nil(pk);
    expect_mut(PROTO_TYPE_READY, "zz_deep", OP_ADD, PROTO_ERR_TOO_DEEP, "deep unknown value");
    pk = val_begin();
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "a\0b", 3);
    expect_mut(PROTO_TYPE_SAVE, "path", OP_REPLACE, PROTO_ERR_BAD_STRING, "NUL in path");
    pack_s(val_begin(), "");
    expect_mut(PROTO_TYPE_CHECKPOINT, "path", OP_REPLACE, PROTO_ERR_OUT_OF_RANGE, "empty path");
    pk = val_begin();
    msgpack_pack_array(pk, 1);
    msgpack_pack_uint32(pk, 224);
    expect_mut(PROTO_TYPE_ORDER, "size_crops", OP_REPLACE, PROTO_ERR_INCONSISTENT, "size_crops shorter");
    pk = val_begin();
    msgpack_pack_array(pk, 2);
    msgpack_pack_double(pk, 0.5);
    msgpack_pack_double(pk, 0.2); /* max 0.14 */
    expect_mut(PROTO_TYPE_ORDER, "min_scale_crops", OP_REPLACE, PROTO_ERR_INCONSISTENT, "min > max scale");
    msgpack_pack_uint32(val_begin(), 2);
    expect_mut(PROTO_TYPE_HELLO, "rank", OP_REPLACE, PROTO_ERR_INCONSISTENT, "rank >= world");

    /* trailing bytes after the map */
    struct proto_msg m;
    proto_msg_init(&m);
    sample_encode(PROTO_TYPE_READY, &m);
    char *buf = malloc(m.hdr_len + 1);
    memcpy(buf, m.hdr, m.hdr_len);
    buf[m.hdr_len] = 0x00;
    struct proto_frame f = {buf, m.hdr_len + 1};
    expect(PROTO_TYPE_READY, &f, 1, NULL, PROTO_ERR_TRAILING_BYTES, "trailing byte");
    free(buf);

    /* encoder argument checks */
    struct proto_ready r = *(const struct proto_ready *)sample_struct(PROTO_TYPE_READY);
    EXPECT(proto_ready_encode(&m, NULL, &r) == PROTO_ERR_BAD_ARG, "NULL run");
    char longrun[100];
    memset(longrun, 'r', 99);
    longrun[99] = '\0';
    EXPECT(proto_ready_encode(&m, longrun, &r) == PROTO_ERR_BAD_ARG, "run id too long");
    memset(r.loader_id, 'x', sizeof r.loader_id); /* unterminated */
    EXPECT(proto_ready_encode(&m, "r", &r) == PROTO_ERR_STRING_TOO_LONG, "unterminated loader_id");
    proto_msg_free(&m);
    seen_status[PROTO_ERR_BAD_ARG] = 1;
}

static void test_names(void)
{
    for (int a = 0; a < PROTO_STATUS_COUNT; a++) {
        const char *sa = proto_status_str((enum proto_status)a);
        EXPECT(sa && *sa && strcmp(sa, "unknown status"), "status %d has no text", a);
        for (int b = 0; b < a; b++) {
            EXPECT(strcmp(sa, proto_status_str((enum proto_status)b)), "status %d and %d share text", a, b);
        }
    }
    for (int t = 1; t < PROTO_TYPE_COUNT; t++) {
        const char *n = proto_type_name((enum proto_type)t);
        EXPECT(n && (int)proto_type_from_name(n, strlen(n)) == t, "type name %d", t);
    }
    EXPECT(proto_type_name(PROTO_TYPE_COUNT) == NULL, "type name out of range");
    for (int c = 1; c < PROTO_ERRC_COUNT; c++) {
        EXPECT(strcmp(proto_errcode_str((enum proto_errcode)c), "unknown error code"), "errcode %d", c);
    }
    char buf[256];
    struct proto_diag d = {"nmb_crops", "9 entries, at most 8"};
    proto_diag_format(buf, sizeof buf, PROTO_TYPE_ORDER, PROTO_ERR_LIST_TOO_LONG, &d);
    EXPECT(strstr(buf, "order") && strstr(buf, "nmb_crops") && strstr(buf, "list too long"), "diag: %s", buf);
}

int main(void)
{
    test_round_trip();
    test_truncated();
    test_oversized();
    test_wrong_type();
    test_version_and_run();
    test_shape_length();
    test_structure();
    test_names();
    /* every fault a decoder can report was produced by some case above */
    for (int s = 1; s < PROTO_STATUS_COUNT; s++) {
        if (s == PROTO_ERR_AGAIN || s == PROTO_ERR_ZMQ) continue; /* wire only: test_wire */
        EXPECT(seen_status[s], "no test produced %s", proto_status_str((enum proto_status)s));
    }
    msgpack_sbuffer_destroy(&g_val);
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
