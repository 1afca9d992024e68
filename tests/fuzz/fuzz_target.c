/* One libFuzzer target per decoder: compiled once per message type with
 * -DFUZZ_TYPE=PROTO_TYPE_<X> (PROTO_TYPE_NONE: proto_peek_type).
 *
 * Beyond "no crash, no sanitizer report" it checks invariants and aborts when
 * one breaks: a status is a known code; a failed decode leaves the output
 * untouched; a decoded tensor is exactly its frame; what decoded re-encodes,
 * and the re-encoding decodes and re-encodes to the same bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "fuzz_frames.h"
#include "proto/proto.h"
#include "tests/proto/samples.h"

#ifndef FUZZ_TYPE
#error "compile with -DFUZZ_TYPE=PROTO_TYPE_<X>"
#endif

static union sample_any_msg g_out, g_guard, g_out2;

#define CODEC(T, name, field)                                                                 \
    case T:                                                                                   \
        if (enc) return proto_##name##_encode(enc, "fuzz-run", &in->field);                   \
        return proto_##name##_decode(f, n, &opts, &out->field, diag);

/* enc == NULL: decode f into out; else encode in into enc. */
static enum proto_status codec(enum proto_type t, const struct proto_frame *f, size_t n,
                               union sample_any_msg *out, struct proto_msg *enc,
                               const union sample_any_msg *in, struct proto_diag *diag)
{
    struct proto_decode_opts opts = {.run = NULL, .max_tensor_bytes = 1u << 26};
    switch (t) {
        CODEC(PROTO_TYPE_READY, ready, ready)
        CODEC(PROTO_TYPE_ORDER, order, order)
        CODEC(PROTO_TYPE_BATCH, batch, batch)
        CODEC(PROTO_TYPE_HELLO, hello, hello)
        CODEC(PROTO_TYPE_WELCOME, welcome, welcome)
        CODEC(PROTO_TYPE_EMBED, embed, embed)
        CODEC(PROTO_TYPE_CODES, codes, codes)
        CODEC(PROTO_TYPE_SAVE, save, save)
        CODEC(PROTO_TYPE_SAVED, saved, saved)
        CODEC(PROTO_TYPE_ERROR, error, error)
        CODEC(PROTO_TYPE_CHECKPOINT, checkpoint, checkpoint)
        CODEC(PROTO_TYPE_STATUS, status_msg, status)
    default: break;
    }
    abort();
}

/* Every decoded tensor is one whole frame. */
static void check_tensor(const struct proto_tensor *t, const struct proto_frame *f, size_t n)
{
    int found = 0;
    for (size_t i = 1; i < n; i++) {
        if (f[i].data == t->data && f[i].len == t->nbytes) found = 1;
    }
    FUZZ_REQUIRE(found);
    volatile uint8_t sink = 0;
    for (uint64_t i = 0; i < t->nbytes; i += 4093) sink ^= ((const uint8_t *)t->data)[i];
    if (t->nbytes) sink ^= ((const uint8_t *)t->data)[t->nbytes - 1];
    (void)sink;
}

static void check_tensors(enum proto_type t, const union sample_any_msg *m,
                          const struct proto_frame *f, size_t n)
{
    switch (t) {
    case PROTO_TYPE_ORDER: check_tensor(&m->order.indices, f, n); break;
    case PROTO_TYPE_BATCH:
        for (uint32_t g = 0; g < m->batch.ngroups; g++) check_tensor(&m->batch.crops[g], f, n);
        check_tensor(&m->batch.labels, f, n);
        break;
    case PROTO_TYPE_EMBED:
        check_tensor(&m->embed.embeddings, f, n);
        if (m->embed.has_prototypes) check_tensor(&m->embed.prototypes, f, n);
        break;
    case PROTO_TYPE_CODES: check_tensor(&m->codes.q, f, n); break;
    default: break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proto_frame f[FUZZ_MAX_FRAMES];
    size_t n = fuzz_frames_parse(data, size, f);
    struct proto_diag diag;
    enum proto_type type = FUZZ_TYPE;
    if (type == PROTO_TYPE_NONE) {
        struct proto_header h, hg;
        memset(&h, 0x5a, sizeof h);
        memcpy(&hg, &h, sizeof h);
        enum proto_status st = proto_peek_type(f, n, NULL, &h, &diag);
        FUZZ_REQUIRE(st >= PROTO_OK && st < PROTO_STATUS_COUNT);
        if (st == PROTO_OK) {
            FUZZ_REQUIRE(h.v == PROTO_VERSION && h.type > PROTO_TYPE_NONE && h.type < PROTO_TYPE_COUNT);
            FUZZ_REQUIRE(strlen(h.run) <= PROTO_MAX_ID);
        } else {
            FUZZ_REQUIRE(!memcmp(&h, &hg, sizeof h));
        }
        fuzz_frames_free(f, n);
        return 0;
    }
    memset(&g_out, 0x5a, sizeof g_out);
    memset(&g_guard, 0x5a, sizeof g_guard);
    enum proto_status st = codec(type, f, n, &g_out, NULL, NULL, &diag);
    FUZZ_REQUIRE(st >= PROTO_OK && st < PROTO_STATUS_COUNT);
    if (st != PROTO_OK) {
        FUZZ_REQUIRE(!memcmp(&g_out, &g_guard, sizeof g_out));
        char buf[512];
        proto_diag_format(buf, sizeof buf, type, st, &diag);
        fuzz_frames_free(f, n);
        return 0;
    }
    check_tensors(type, &g_out, f, n);
    /* decoded -> encodes -> decodes -> encodes to the same bytes */
    struct proto_msg e1, e2;
    proto_msg_init(&e1);
    proto_msg_init(&e2);
    st = codec(type, NULL, 0, NULL, &e1, &g_out, NULL);
    FUZZ_REQUIRE(st == PROTO_OK);
    st = codec(type, e1.frames, e1.nframes, &g_out2, NULL, NULL, &diag);
    FUZZ_REQUIRE(st == PROTO_OK);
    st = codec(type, NULL, 0, NULL, &e2, &g_out2, NULL);
    FUZZ_REQUIRE(st == PROTO_OK);
    FUZZ_REQUIRE(e1.hdr_len == e2.hdr_len && !memcmp(e1.hdr, e2.hdr, e1.hdr_len));
    FUZZ_REQUIRE(e1.nframes == e2.nframes);
    proto_msg_free(&e1);
    proto_msg_free(&e2);
    fuzz_frames_free(f, n);
    return 0;
}
