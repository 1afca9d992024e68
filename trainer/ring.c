/* Ring all-reduce over ZeroMQ: see ring.h.
 *
 * Wire format of one ring frame pair (internal to the ranks of one run, so a
 * fixed little header rather than msgpack): frame 0 = struct ring_hdr, frame
 * 1 = the chunk's bytes.  The receiver checks magic, run tag, sender rank,
 * call number, kind, chunk and byte count before touching its buffer, and
 * drops (with a warning) whatever does not match. */
#include "ring.h"

#include <errno.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/check.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "proto/wire.h"

#define RING_MAGIC 0x52494e47u /* "RING" */
#define RING_MAX_BYTES ((int64_t)1 << 32)

enum ring_kind { RING_REDUCE = 1, RING_GATHER = 2, RING_BCAST = 3 };

struct ring_hdr {
    uint32_t magic;
    uint32_t kind;
    uint64_t run_tag;
    uint64_t call;
    uint32_t chunk;
    uint32_t from; /* the sender's rank */
    uint64_t bytes;
};

struct ring {
    struct nn_collective base; /* first: the nn_collective handle */
    void *pull, *push;
    void *own_ctx;          /* CURVE: the ring's own context, for its ZAP handler */
    struct proto_zap *zap;  /* CURVE: lets in the run's trainer key only */
    uint64_t run_tag;
    uint64_t call;
    int timeout_ms;
    size_t scratch_cap;
};

static size_t chunk_start(size_t n, int world, int c)
{
    return (size_t)((unsigned __int128)n * (unsigned)c / (unsigned)world);
}

static int ring_fail(struct ring *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int ring_fail(struct ring *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->base.err, sizeof r->base.err, fmt, ap);
    va_end(ap);
    LOG_ERROR("collective: %s", r->base.err);
    return status;
}

static int ring_send(struct ring *r, enum ring_kind kind, uint32_t chunk, const void *data,
                     size_t bytes)
{
    struct ring_hdr h = {RING_MAGIC, kind, r->run_tag, r->call, chunk, (uint32_t)r->base.rank, bytes};
    int next = (r->base.rank + 1) % r->base.world;
    if (zmq_send(r->push, &h, sizeof h, ZMQ_SNDMORE) < 0 ||
        zmq_send(r->push, data, bytes, 0) < 0) {
        if (zmq_errno() == EAGAIN) {
            return ring_fail(r, NN_COLLECTIVE_ERR_TIMEOUT,
                             "rank %d could not send to rank %d within %d ms (dead or stopped?)",
                             r->base.rank, next, r->timeout_ms);
        }
        return ring_fail(r, NN_COLLECTIVE_ERR_TRANSPORT, "rank %d: send to rank %d failed: %s",
                         r->base.rank, next, zmq_strerror(zmq_errno()));
    }
    return 0;
}

/* Reads one whole message from the PULL: its first frame into h (*hlen
 * bytes of it), its second into msg (initialised here, closed by the
 * caller); returns the number of frames, or -1 when the receive failed. */
static int ring_read(struct ring *r, struct ring_hdr *h, int *hlen, zmq_msg_t *msg)
{
    zmq_msg_init(msg);
    int n = zmq_recv(r->pull, h, sizeof *h, 0);
    if (n < 0) return -1;
    *hlen = n;
    int frames = 1, more = 0;
    size_t more_len = sizeof more;
    zmq_getsockopt(r->pull, ZMQ_RCVMORE, &more, &more_len);
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, r->pull, 0) < 0) {
            zmq_msg_close(&part);
            return -1;
        }
        more = zmq_msg_more(&part);
        if (++frames == 2) {
            zmq_msg_move(msg, &part);
        }
        zmq_msg_close(&part);
    }
    return frames;
}

/* Receives the next frame pair from the previous rank into msg (data frame):
 * (kind, chunk, bytes) of the current call, from rank prev, of this run.
 * Anything else on the PULL (ZeroMQ cannot tell who sent it: without CURVE
 * anyone who can reach the endpoint may connect) is dropped with a
 * rate-limited warning, and the wait goes on for the expected frame until
 * timeout_ms after the call began to wait. */
static int ring_recv(struct ring *r, enum ring_kind kind, uint32_t chunk, size_t bytes,
                     zmq_msg_t *msg)
{
    int prev = (r->base.rank + r->base.world - 1) % r->base.world;
    int64_t until = swav_now_ms() + r->timeout_ms;
    unsigned dropped = 0;
    for (;;) {
        zmq_pollitem_t item = {r->pull, 0, ZMQ_POLLIN, 0};
        int64_t left = until - swav_now_ms();
        int rc = left > 0 ? zmq_poll(&item, 1, (long)left) : 0;
        if (rc < 0 && zmq_errno() == EINTR) continue;
        if (rc == 0) {
            return ring_fail(r, NN_COLLECTIVE_ERR_TIMEOUT,
                             "rank %d got nothing from rank %d within %d ms (dead or stopped?)%s",
                             r->base.rank, prev, r->timeout_ms,
                             dropped ? "; frames that were not its were dropped" : "");
        }
        struct ring_hdr h;
        int hlen = 0;
        int frames = ring_read(r, &h, &hlen, msg);
        if (frames < 0) {
            zmq_msg_close(msg);
            return ring_fail(r, NN_COLLECTIVE_ERR_TRANSPORT, "rank %d: receive failed: %s",
                             r->base.rank, zmq_strerror(zmq_errno()));
        }
        char why[200];
        if (frames != 2 || hlen != (int)sizeof h) {
            snprintf(why, sizeof why, "a malformed message (%d frame%s, %d header bytes)", frames,
                     frames == 1 ? "" : "s", hlen);
        } else if (h.magic != RING_MAGIC || h.run_tag != r->run_tag) {
            snprintf(why, sizeof why, "a frame not of this run (magic %08x, tag %016llx)", h.magic,
                     (unsigned long long)h.run_tag);
        } else if (h.from != (uint32_t)prev || h.call != r->call || h.kind != (uint32_t)kind ||
                   h.chunk != chunk || h.bytes != bytes || zmq_msg_size(msg) != bytes) {
            snprintf(why, sizeof why,
                     "an out-of-sequence frame: from rank %u call %llu kind %u chunk %u bytes "
                     "%llu (%zu sent), expected from rank %d call %llu kind %u chunk %u bytes %zu",
                     h.from, (unsigned long long)h.call, h.kind, h.chunk,
                     (unsigned long long)h.bytes, zmq_msg_size(msg), prev,
                     (unsigned long long)r->call, (unsigned)kind, chunk, bytes);
        } else {
            return 0;
        }
        zmq_msg_close(msg);
        dropped++;
        LOG_LIMITED(SWAV_LOG_WARN, "gradient ring (rank %d): dropped %s", r->base.rank, why);
    }
}

static int ring_allreduce(struct nn_collective *c, float *buf, size_t n)
{
    struct ring *r = (struct ring *)c;
    const int w = c->world, me = c->rank;
    r->call++;
    /* Reduce-scatter: after step s, rank me has summed s+2 ranks' values of
     * chunk (me - s - 1); at the end it holds the total of chunk (me + 1). */
    for (int s = 0; s < w - 1; s++) {
        int cs = ((me - s) % w + w) % w, cr = ((me - s - 1) % w + w) % w;
        size_t s0 = chunk_start(n, w, cs), s1 = chunk_start(n, w, cs + 1);
        size_t r0 = chunk_start(n, w, cr), r1 = chunk_start(n, w, cr + 1);
        int rc = ring_send(r, RING_REDUCE, (uint32_t)cs, buf + s0, (s1 - s0) * sizeof(float));
        if (rc) return rc;
        zmq_msg_t msg;
        rc = ring_recv(r, RING_REDUCE, (uint32_t)cr, (r1 - r0) * sizeof(float), &msg);
        if (rc) return rc;
        const float *in = zmq_msg_data(&msg);
        float *out = buf + r0;
        for (size_t i = 0; i < r1 - r0; i++) {
            out[i] = in[i] + out[i];
        }
        zmq_msg_close(&msg);
    }
    /* All-gather: pass the finished chunks around. */
    for (int s = 0; s < w - 1; s++) {
        int cs = ((me + 1 - s) % w + w) % w, cr = ((me - s) % w + w) % w;
        size_t s0 = chunk_start(n, w, cs), s1 = chunk_start(n, w, cs + 1);
        size_t r0 = chunk_start(n, w, cr), r1 = chunk_start(n, w, cr + 1);
        int rc = ring_send(r, RING_GATHER, (uint32_t)cs, buf + s0, (s1 - s0) * sizeof(float));
        if (rc) return rc;
        zmq_msg_t msg;
        rc = ring_recv(r, RING_GATHER, (uint32_t)cr, (r1 - r0) * sizeof(float), &msg);
        if (rc) return rc;
        memcpy(buf + r0, zmq_msg_data(&msg), (r1 - r0) * sizeof(float));
        zmq_msg_close(&msg);
    }
    return 0;
}

static int ring_broadcast(struct nn_collective *c, void *buf, size_t bytes, int root)
{
    struct ring *r = (struct ring *)c;
    const int w = c->world, me = c->rank;
    SWAV_ASSERT(root >= 0 && root < w);
    r->call++;
    int next = (me + 1) % w;
    if (me != root) {
        zmq_msg_t msg;
        int rc = ring_recv(r, RING_BCAST, (uint32_t)root, bytes, &msg);
        if (rc) return rc;
        memcpy(buf, zmq_msg_data(&msg), bytes);
        zmq_msg_close(&msg);
    }
    if (next != root) {
        return ring_send(r, RING_BCAST, (uint32_t)root, buf, bytes);
    }
    return 0;
}

static void ring_destroy(struct nn_collective *c)
{
    struct ring *r = (struct ring *)c;
    if (r->pull) zmq_close(r->pull);
    if (r->push) zmq_close(r->push);
    proto_zap_destroy(&r->zap);
    if (r->own_ctx) zmq_ctx_term(r->own_ctx);
    free(r);
}

static const struct nn_collective_ops ring_ops = {
    .allreduce_sum = ring_allreduce,
    .broadcast = ring_broadcast,
    .destroy = ring_destroy,
};

struct nn_collective *trainer_ring_new(void *zmq_ctx, int rank, int world,
                                       const char *const *endpoints, uint64_t run_tag,
                                       int timeout_ms, const char *curve_keypair, char *err,
                                       size_t errlen)
{
    if (world < 1 || rank < 0 || rank >= world) {
        snprintf(err, errlen, "rank %d is not in a world of %d", rank, world);
        return NULL;
    }
    struct ring *r = swav_xcalloc(1, sizeof *r);
    r->base.ops = &ring_ops;
    r->base.rank = rank;
    r->base.world = world;
    r->run_tag = run_tag;
    r->timeout_ms = timeout_ms;
    if (world == 1) {
        return &r->base;
    }
    const bool curve = curve_keypair && curve_keypair[0];
    if (curve) {
        r->own_ctx = zmq_ctx_new();
        ZMQ_CHECK_PTR(r->own_ctx);
        zmq_ctx = r->own_ctx;
        char what[600];
        snprintf(what, sizeof what, "gradient ring (rank %d, %s)", rank, endpoints[rank]);
        char zerr[512];
        r->zap = proto_zap_new_logged(r->own_ctx, curve_keypair, what, zerr, sizeof zerr);
        if (!r->zap) {
            snprintf(err, errlen, "rank %d: CURVE: %s", rank, zerr);
            ring_destroy(&r->base);
            return NULL;
        }
    }
    r->pull = zmq_socket(zmq_ctx, ZMQ_PULL);
    r->push = zmq_socket(zmq_ctx, ZMQ_PUSH);
    ZMQ_CHECK_PTR(r->pull);
    ZMQ_CHECK_PTR(r->push);
    if (curve) {
        char cerr[512];
        if (proto_socket_curve_server(r->pull, curve_keypair, cerr, sizeof cerr) != PROTO_OK ||
            proto_socket_curve_client(r->push, curve_keypair, curve_keypair, cerr,
                                      sizeof cerr) != PROTO_OK) {
            snprintf(err, errlen, "rank %d: CURVE: %s", rank, cerr);
            ring_destroy(&r->base);
            return NULL;
        }
    }
    int zero = 0;
    int64_t maxmsg = RING_MAX_BYTES;
    ZMQ_CHECK(zmq_setsockopt(r->pull, ZMQ_LINGER, &zero, sizeof zero));
    ZMQ_CHECK(zmq_setsockopt(r->push, ZMQ_LINGER, &zero, sizeof zero));
    ZMQ_CHECK(zmq_setsockopt(r->pull, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg));
    ZMQ_CHECK(zmq_setsockopt(r->push, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms));
    int ivl = 1000, ttl = 10000;
    ZMQ_CHECK(zmq_setsockopt(r->push, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl));
    ZMQ_CHECK(zmq_setsockopt(r->push, ZMQ_HEARTBEAT_TIMEOUT, &ttl, sizeof ttl));
    if (zmq_bind(r->pull, endpoints[rank]) != 0) {
        snprintf(err, errlen, "rank %d cannot bind %s: %s", rank, endpoints[rank],
                 zmq_strerror(zmq_errno()));
        ring_destroy(&r->base);
        return NULL;
    }
    if (zmq_connect(r->push, endpoints[(rank + 1) % world]) != 0) {
        snprintf(err, errlen, "rank %d cannot connect to %s: %s", rank,
                 endpoints[(rank + 1) % world], zmq_strerror(zmq_errno()));
        ring_destroy(&r->base);
        return NULL;
    }
    return &r->base;
}
