/* garbage_probe: connect one ZeroMQ socket to an endpoint of a running
 * `swav train` and send it a fixed set of bad messages, for the garbage fault
 * test (tests/fault/test_garbage.py).  Nothing it sends may change the run.
 *
 *   garbage_probe TYPE ENDPOINT RUN SEED
 *
 * TYPE dealer (a ROUTER: the assigner, a trainer's or the evaluator's loader
 * endpoint): random bytes, an empty frame, a msgpack header cut short, a
 * valid `checkpoint` message of this run (a type no ROUTER takes), a valid
 * `ready` of another run, a 1 MiB + 1 header frame (over
 * PROTO_MAX_HEADER_BYTES), a message of 40 frames; then it reads what comes
 * back for a second.
 * TYPE push (the gradient ring's PULL): random bytes, a header-sized frame
 * of random bytes with a chunk, a header with the wrong magic, one of
 * another run's tag, one of this run's tag (SEED ^ 0x5eed, as trainer/main.c
 * derives it) for a call that never comes, one with extra frames, one that
 * announces 8 MiB and sends them.
 * TYPE xsub (the trainer's --pub): garbage subscription messages (random
 * bytes, an unsubscribe of what was never subscribed, a 4 KiB subscription,
 * an empty frame, three frames in one message).
 * Prints one line per message sent, then "replies: N" (dealer) and "done";
 * exit 0.  Exit 2: bad arguments or a socket that does not connect. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/timeutil.h"
#include "proto/proto.h"

/* trainer/ring.c's frame header (kept in step with it by this test) */
struct ring_hdr {
    uint32_t magic;
    uint32_t kind;
    uint64_t run_tag;
    uint64_t call;
    uint32_t chunk;
    uint32_t from;
    uint64_t bytes;
};
#define RING_MAGIC 0x52494e47u

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static void fill_random(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        p[i] = (unsigned char)rng;
    }
}

/* Sends nframes frames (data[i], len[i]) as one message. */
static void send_msg(void *s, const char *what, size_t nframes, const void *const *data,
                     const size_t *len)
{
    for (size_t i = 0; i < nframes; i++) {
        if (zmq_send(s, data[i], len[i], i + 1 < nframes ? ZMQ_SNDMORE : 0) < 0) {
            printf("%s: send failed: %s\n", what, zmq_strerror(zmq_errno()));
            return;
        }
    }
    printf("sent %s\n", what);
    fflush(stdout);
}

static void send1(void *s, const char *what, const void *data, size_t len)
{
    send_msg(s, what, 1, &data, &len);
}

static void dealer_garbage(void *s, const char *run)
{
    static unsigned char big[(1u << 20) + 1];
    unsigned char rnd[200];
    fill_random(rnd, sizeof rnd);
    send1(s, "random bytes", rnd, sizeof rnd);
    send1(s, "an empty frame", "", 0);

    struct proto_msg m;
    proto_msg_init(&m);
    struct proto_checkpoint c = {.epoch = 1, .step = 10};
    snprintf(c.path, sizeof c.path, "/nonexistent/garbage.safetensors");
    if (proto_checkpoint_encode(&m, run, &c) == PROTO_OK) {
        send1(s, "a truncated msgpack header", m.frames[0].data, m.frames[0].len / 2);
        send1(s, "a valid message of the wrong type (checkpoint)", m.frames[0].data,
              m.frames[0].len);
    }
    struct proto_ready r = {.credit = 4, .workers = 1};
    snprintf(r.loader_id, sizeof r.loader_id, "garbage-probe");
    if (proto_ready_encode(&m, "not-this-run", &r) == PROTO_OK) {
        send1(s, "a ready of another run", m.frames[0].data, m.frames[0].len);
    }
    proto_msg_free(&m);

    fill_random(big, sizeof big);
    big[0] = 0xdf; /* a msgpack map32 that announces more than follows */
    send1(s, "a 1 MiB + 1 header frame", big, sizeof big);

    const void *frames[40];
    size_t lens[40];
    for (int i = 0; i < 40; i++) {
        frames[i] = rnd + i;
        lens[i] = 4;
    }
    send_msg(s, "a message of 40 frames", 40, frames, lens);
}

static void push_garbage(void *s, uint64_t seed)
{
    static unsigned char big[8u << 20];
    unsigned char rnd[200];
    fill_random(rnd, sizeof rnd);
    const uint64_t tag = seed ^ 0x5eedull;
    send1(s, "random bytes", rnd, sizeof rnd);

    const void *f2[2] = {rnd, rnd + sizeof(struct ring_hdr)};
    size_t l2[2] = {sizeof(struct ring_hdr), 64};
    send_msg(s, "a header-sized frame of random bytes and a chunk", 2, f2, l2);

    struct ring_hdr h = {0x47414d45u, 1, tag, 1, 0, 0, 64};
    f2[0] = &h;
    send_msg(s, "a ring header with the wrong magic", 2, f2, l2);
    h.magic = RING_MAGIC;
    h.run_tag = tag ^ 0xffffull;
    send_msg(s, "a ring header of another run's tag", 2, f2, l2);
    h.run_tag = tag;
    h.call = 1000000000ull;
    send_msg(s, "a ring header of this run for a call that never comes", 2, f2, l2);

    const void *f4[4] = {&h, rnd, rnd, rnd};
    size_t l4[4] = {sizeof h, 64, 64, 64};
    send_msg(s, "a ring message with extra frames", 4, f4, l4);

    fill_random(big, sizeof big);
    h.bytes = sizeof big;
    f2[1] = big;
    l2[1] = sizeof big;
    send_msg(s, "a ring header announcing 8 MiB and the 8 MiB", 2, f2, l2);
}

static void xsub_garbage(void *s)
{
    /* not longer: libzmq keeps subscriptions in a trie it walks by recursion,
     * one level a byte (a 1 MiB one overflows the probe's own stack) */
    static unsigned char big[4096];
    unsigned char rnd[200];
    fill_random(rnd, sizeof rnd);
    rnd[0] = 7; /* neither subscribe (1) nor unsubscribe (0) */
    send1(s, "random bytes as a subscription", rnd, sizeof rnd);
    send1(s, "an unsubscribe of what was never subscribed", "\0garbage", 8);
    fill_random(big, sizeof big);
    big[0] = 1;
    send1(s, "a 4 KiB subscription", big, sizeof big);
    send1(s, "an empty frame", "", 0);
    const void *f3[3] = {"\1a", "\1b", "\1c"};
    size_t l3[3] = {2, 2, 2};
    send_msg(s, "three subscription frames in one message", 3, f3, l3);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: garbage_probe dealer|push|xsub ENDPOINT RUN SEED\n");
        return 2;
    }
    int type = !strcmp(argv[1], "push")     ? ZMQ_PUSH
               : !strcmp(argv[1], "xsub")   ? ZMQ_XSUB
               : !strcmp(argv[1], "dealer") ? ZMQ_DEALER
                                            : -1;
    if (type < 0) {
        fprintf(stderr, "garbage_probe: unknown socket type %s\n", argv[1]);
        return 2;
    }
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, type);
    int linger = 5000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(s, argv[2]) != 0) {
        fprintf(stderr, "garbage_probe: connect %s: %s\n", argv[2], zmq_strerror(zmq_errno()));
        return 2;
    }
    if (type == ZMQ_DEALER) {
        dealer_garbage(s, argv[3]);
        int replies = 0;
        int64_t until = swav_now_ms() + 1000;
        while (swav_now_ms() < until) {
            zmq_pollitem_t item = {s, 0, ZMQ_POLLIN, 0};
            if (zmq_poll(&item, 1, 100) <= 0) continue;
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, s, 0) >= 0 && !zmq_msg_more(&m)) replies++;
            zmq_msg_close(&m);
        }
        printf("replies: %d\n", replies);
    } else if (type == ZMQ_PUSH) {
        push_garbage(s, strtoull(argv[4], NULL, 10));
    } else {
        xsub_garbage(s);
    }
    printf("done\n");
    zmq_close(s); /* lingers up to 5 s for what is still queued */
    zmq_ctx_term(ctx);
    return 0;
}
