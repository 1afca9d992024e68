/* Consumer side of the loader link: window, credit, re-issue, duplicate
 * drop, in-order hand-out.  See client.h for the contract.
 *
 * All state lives in two small tables: a ring of order slots (window + 1:
 * the extra one is the batch handed out last, kept alive until the next
 * call) and a table of loaders keyed by their ROUTER identity.  Each slot
 * owns a heap-allocated proto_rx so that a received batch can be adopted by
 * swapping pointers: the decoded tensors point into zmq_msg_t parts (small
 * frames live inside the zmq_msg_t itself, misaligned ones in the
 * proto_rx's alignment buffer), so a proto_rx never moves. */
#include "client.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/check.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "proto/wire.h"

#define CLIENT_MAX_PEERS 256
#define CLIENT_MAX_DATASETS 16 /* per loader (swav-loader serves at most 8) */

enum slot_state {
    SLOT_FREE = 0,
    SLOT_QUEUED, /* waiting for credit */
    SLOT_SENT,   /* with a loader */
    SLOT_DONE,   /* batch received */
    SLOT_FAILED, /* refused max_attempts times */
};

struct slot {
    enum slot_state state;
    struct proto_order order; /* indices.data -> idx */
    uint32_t *idx;
    size_t idx_cap;
    int peer;                 /* loader it was sent to, -1 */
    int64_t sent_ms;
    uint32_t refusals;
    struct proto_rx *rx;         /* frames of the batch */
    struct proto_batch batch; /* decoded, points into rx */
};

struct peer {
    uint8_t id[PROTO_MAX_IDENTITY];
    size_t idlen;
    char loader_id[PROTO_MAX_ID + 1];
    uint32_t credit;      /* capacity announced in its last ready */
    uint32_t outstanding; /* orders of ours it holds */
    int64_t last_heard_ms;
    uint64_t last_given;  /* dispatch counter: spreads orders over equal loaders */
    int alive;
    int used;
    /* data sets of its last ready (has_datasets 0: it did not say) */
    int has_datasets;
    uint32_t n_datasets;
    char ds_tag[CLIENT_MAX_DATASETS][PROTO_MAX_ID + 1];
    uint64_t ds_images[CLIENT_MAX_DATASETS];
};

struct loader_client {
    struct loader_client_opts o;
    char run[PROTO_MAX_ID + 1];
    void *ctx;
    int own_ctx;
    void *sock;
    char endpoint[512];
    struct proto_zap *zap;  /* --curve_allow's handler, or NULL */
    uint64_t zap_refused;   /* refusals already logged */

    struct slot *slots; /* ring of window + 1 */
    uint32_t nslots, head, count;
    int handed;         /* the head slot was handed out by the last next() */
    uint64_t next_order_id, first_order_id;

    struct peer peers[CLIENT_MAX_PEERS];
    uint32_t npeers;
    uint64_t dispatch_counter;

    struct proto_rx *in;     /* receive buffer, swapped into a slot on adoption */
    struct proto_batch tmp_batch;
    struct proto_msg msg; /* encode buffer */
    struct loader_client_stats st;
    char last_error[512];
};

const char *loader_client_status_str(enum loader_client_status st)
{
    switch (st) {
    case LOADER_CLIENT_OK: return "ok";
    case LOADER_CLIENT_TIMEOUT: return "timeout waiting for the next batch";
    case LOADER_CLIENT_ERR_FULL: return "window full";
    case LOADER_CLIENT_ERR_EMPTY: return "no order submitted";
    case LOADER_CLIENT_ERR_ORDER: return "invalid order";
    case LOADER_CLIENT_ERR_FAILED: return "order failed";
    }
    return "unknown status";
}

int loader_client_new(struct loader_client **out, const struct loader_client_opts *opts,
                      char *err, size_t errlen)
{
    SWAV_ASSERT(out && opts);
    if (!opts->bind || !*opts->bind) {
        snprintf(err, errlen, "loader client: no endpoint to bind");
        return -1;
    }
    struct loader_client *c = swav_xcalloc(1, sizeof *c);
    c->o = *opts;
    if (!c->o.window) c->o.window = 8;
    if (!c->o.silence_ms) c->o.silence_ms = 5000;
    if (!c->o.deadline_ms) c->o.deadline_ms = 120000;
    if (!c->o.heartbeat_ivl_ms) c->o.heartbeat_ivl_ms = 1000;
    if (!c->o.heartbeat_timeout_ms) c->o.heartbeat_timeout_ms = 5000;
    if (!c->o.max_batch_bytes) c->o.max_batch_bytes = 1ull << 30;
    if (!c->o.max_attempts) c->o.max_attempts = 3;
    snprintf(c->run, sizeof c->run, "%s", opts->run && *opts->run ? opts->run : "swav");
    c->o.run = c->run;
    c->ctx = opts->zmq_ctx;
    if (!c->ctx) {
        c->ctx = zmq_ctx_new();
        ZMQ_CHECK_PTR(c->ctx);
        c->own_ctx = 1;
    }
    c->sock = zmq_socket(c->ctx, ZMQ_ROUTER);
    ZMQ_CHECK_PTR(c->sock);
    int one = 1;
    ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one));
    if (proto_socket_setup(c->sock, (int64_t)c->o.max_batch_bytes,
                           c->o.heartbeat_ivl_ms > 0 ? c->o.heartbeat_ivl_ms : 0,
                           c->o.heartbeat_timeout_ms) != PROTO_OK) {
        snprintf(err, errlen, "loader client: socket options: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (opts->curve_allow && *opts->curve_allow && !(opts->curve_secret && *opts->curve_secret)) {
        snprintf(err, errlen, "loader client: an allow-list (%s) needs a CURVE keypair",
                 opts->curve_allow);
        goto fail;
    }
    if (opts->curve_secret && *opts->curve_secret) {
        char cerr[512];
        if (proto_socket_curve_server(c->sock, opts->curve_secret, cerr, sizeof cerr) !=
            PROTO_OK) {
            snprintf(err, errlen, "loader client: %s", cerr);
            goto fail;
        }
        if (opts->curve_allow && *opts->curve_allow &&
            !(c->zap = proto_zap_new(c->ctx, opts->curve_allow, cerr, sizeof cerr))) {
            snprintf(err, errlen, "loader client: %s", cerr);
            goto fail;
        }
    }
    if (zmq_bind(c->sock, opts->bind) != 0) {
        snprintf(err, errlen, "loader client: cannot bind %s: %s", opts->bind,
                 zmq_strerror(zmq_errno()));
        goto fail;
    }
    size_t elen = sizeof c->endpoint;
    if (zmq_getsockopt(c->sock, ZMQ_LAST_ENDPOINT, c->endpoint, &elen) != 0) {
        snprintf(c->endpoint, sizeof c->endpoint, "%s", opts->bind);
    }
    c->nslots = c->o.window + 1;
    c->slots = swav_xcalloc(c->nslots, sizeof *c->slots);
    for (uint32_t i = 0; i < c->nslots; i++) {
        c->slots[i].rx = swav_xmalloc(sizeof *c->slots[i].rx);
        proto_rx_init(c->slots[i].rx);
        c->slots[i].peer = -1;
    }
    c->in = swav_xmalloc(sizeof *c->in);
    proto_rx_init(c->in);
    proto_msg_init(&c->msg);
    /* Order numbers start at a per-client value so that a batch meant for an
     * earlier incarnation of this consumer is recognised as stale. */
    c->next_order_id = ((uint64_t)swav_wall_ms() << 20) ^ ((uint64_t)getpid() << 8);
    c->first_order_id = c->next_order_id;
    *out = c;
    return 0;
fail:
    zmq_close(c->sock);
    if (c->own_ctx) zmq_ctx_term(c->ctx);
    free(c);
    return -1;
}

void loader_client_destroy(struct loader_client **cp)
{
    if (!cp || !*cp) return;
    struct loader_client *c = *cp;
    for (uint32_t i = 0; i < c->nslots; i++) {
        proto_rx_free(c->slots[i].rx);
        free(c->slots[i].rx);
        free(c->slots[i].idx);
    }
    free(c->slots);
    proto_rx_free(c->in);
    free(c->in);
    proto_msg_free(&c->msg);
    zmq_close(c->sock);
    proto_zap_destroy(&c->zap);
    if (c->own_ctx) zmq_ctx_term(c->ctx);
    free(c);
    *cp = NULL;
}

const char *loader_client_endpoint(const struct loader_client *c) { return c->endpoint; }

uint32_t loader_client_outstanding(const struct loader_client *c)
{
    return c->count - (uint32_t)c->handed;
}

void loader_client_get_stats(const struct loader_client *c, struct loader_client_stats *out)
{
    *out = c->st;
    out->loaders_alive = 0;
    for (uint32_t i = 0; i < c->npeers; i++) out->loaders_alive += c->peers[i].used && c->peers[i].alive;
    out->outstanding = loader_client_outstanding(c);
}

const char *loader_client_last_error(const struct loader_client *c) { return c->last_error; }

enum loader_client_dataset loader_client_dataset_size(const struct loader_client *c,
                                                      const char *tag, uint64_t *images,
                                                      char *why, size_t whylen)
{
    uint32_t announced = 0, found = 0;
    uint64_t lo = 0, hi = 0;
    char served[512] = "";
    size_t sl = 0;
    for (uint32_t i = 0; i < c->npeers; i++) {
        const struct peer *p = &c->peers[i];
        if (!p->used || !p->alive || !p->has_datasets) continue;
        announced++;
        for (uint32_t d = 0; d < p->n_datasets; d++) {
            if (!strcmp(p->ds_tag[d], tag)) {
                uint64_t v = p->ds_images[d];
                lo = found && lo < v ? lo : v;
                hi = found && hi > v ? hi : v;
                found++;
            } else {
                char q[PROTO_MAX_ID + 3];
                snprintf(q, sizeof q, "'%s'", p->ds_tag[d]);
                if (sl < sizeof served && !strstr(served, q))
                    sl += (size_t)snprintf(served + sl, sizeof served - sl, "%s%s",
                                           sl ? ", " : "", q);
            }
        }
    }
    if (found && lo != hi) {
        snprintf(why, whylen, "the loaders disagree on the size of data set '%s' (%" PRIu64
                 " and %" PRIu64 " images): different folders?", tag, lo, hi);
        *images = lo;
        return LOADER_CLIENT_DATASET_CONFLICT;
    }
    if (found) {
        *images = lo;
        if (whylen) why[0] = '\0';
        return LOADER_CLIENT_DATASET_FOUND;
    }
    if (!announced) {
        snprintf(why, whylen, "no connected loader has announced its data sets");
        return LOADER_CLIENT_DATASET_WAIT;
    }
    snprintf(why, whylen, "no data set '%s' on the %u connected loader%s (they serve %s)", tag,
             announced, announced == 1 ? "" : "s", sl ? served : "none");
    return LOADER_CLIENT_DATASET_ABSENT;
}

static struct slot *slot_at(struct loader_client *c, uint32_t k)
{
    return &c->slots[(c->head + k) % c->nslots];
}

/* ---- loaders ------------------------------------------------------------------ */

static const char *peer_name(const struct peer *p)
{
    return p->loader_id[0] ? p->loader_id : "(unnamed loader)";
}

static int peer_find(struct loader_client *c, const uint8_t *id, size_t idlen, int create)
{
    int free_slot = -1, oldest_dead = -1;
    for (uint32_t i = 0; i < c->npeers; i++) {
        struct peer *p = &c->peers[i];
        if (!p->used) {
            if (free_slot < 0) free_slot = (int)i;
            continue;
        }
        if (p->idlen == idlen && !memcmp(p->id, id, idlen)) return (int)i;
        if (!p->alive && p->outstanding == 0 &&
            (oldest_dead < 0 || p->last_heard_ms < c->peers[oldest_dead].last_heard_ms)) {
            oldest_dead = (int)i;
        }
    }
    if (!create) return -1;
    int k = free_slot;
    if (k < 0 && c->npeers < CLIENT_MAX_PEERS) k = (int)c->npeers++;
    if (k < 0) k = oldest_dead;
    if (k < 0) return -1;
    struct peer *p = &c->peers[k];
    memset(p, 0, sizeof *p);
    memcpy(p->id, id, idlen);
    p->idlen = idlen;
    p->used = 1;
    p->alive = 1;
    p->last_heard_ms = swav_now_ms();
    return k;
}

/* Take back every order a loader holds (it went silent or unreachable). */
static void peer_lost(struct loader_client *c, int k, const char *why)
{
    struct peer *p = &c->peers[k];
    uint32_t taken = 0;
    for (uint32_t i = 0; i < c->count; i++) {
        struct slot *s = slot_at(c, i);
        if (s->state == SLOT_SENT && s->peer == k) {
            s->state = SLOT_QUEUED;
            s->peer = -1;
            taken++;
        }
    }
    c->st.reissued += taken;
    if (p->alive) {
        LOG_WARN("loader %s %s: taking back its %u order%s", peer_name(p), why, taken,
                 taken == 1 ? "" : "s");
    }
    p->alive = 0;
    p->outstanding = 0;
}

static void housekeeping(struct loader_client *c, int64_t now)
{
    if (c->zap) {
        uint64_t ok = 0, refused = 0;
        proto_zap_counts(c->zap, &ok, &refused);
        if (refused > c->zap_refused) {
            LOG_WARN("refused %" PRIu64 " connection(s) on %s: CURVE key not in --curve_allow %s",
                     refused - c->zap_refused, c->endpoint, c->o.curve_allow);
            c->zap_refused = refused;
        }
    }
    for (uint32_t i = 0; i < c->npeers; i++) {
        struct peer *p = &c->peers[i];
        if (p->used && p->alive && now - p->last_heard_ms > c->o.silence_ms) {
            char why[64];
            snprintf(why, sizeof why, "silent for %" PRId64 " ms", now - p->last_heard_ms);
            peer_lost(c, (int)i, why);
        }
    }
    for (uint32_t i = 0; i < c->count; i++) {
        struct slot *s = slot_at(c, i);
        if (s->state == SLOT_SENT && now - s->sent_ms > c->o.deadline_ms) {
            LOG_WARN("order step %" PRIu64 " not answered by loader %s in %d ms: re-issuing it",
                     s->order.step, s->peer >= 0 ? peer_name(&c->peers[s->peer]) : "?",
                     c->o.deadline_ms);
            if (s->peer >= 0 && c->peers[s->peer].outstanding > 0) c->peers[s->peer].outstanding--;
            s->state = SLOT_QUEUED;
            s->peer = -1;
            c->st.reissued++;
        }
    }
}

/* Send queued orders, oldest first, to the loaders with the most free credit. */
static void dispatch(struct loader_client *c)
{
    for (uint32_t i = 0; i < c->count; i++) {
        struct slot *s = slot_at(c, i);
        if (s->state != SLOT_QUEUED) continue;
        for (;;) {
            int best = -1;
            uint32_t best_free = 0;
            for (uint32_t k = 0; k < c->npeers; k++) {
                struct peer *p = &c->peers[k];
                if (!p->used || !p->alive || p->credit <= p->outstanding) continue;
                uint32_t fr = p->credit - p->outstanding;
                if (best < 0 || fr > best_free ||
                    (fr == best_free && p->last_given < c->peers[best].last_given)) {
                    best = (int)k;
                    best_free = fr;
                }
            }
            if (best < 0) return; /* no credit anywhere: later */
            struct peer *p = &c->peers[best];
            enum proto_status ps = proto_order_encode(&c->msg, c->run, &s->order);
            SWAV_ASSERT(ps == PROTO_OK); /* checked at submit */
            ps = proto_send(c->sock, p->id, p->idlen, &c->msg, ZMQ_DONTWAIT);
            if (ps == PROTO_OK) {
                s->state = SLOT_SENT;
                s->peer = best;
                s->sent_ms = swav_now_ms();
                p->outstanding++;
                p->last_given = ++c->dispatch_counter;
                c->st.sent++;
                break;
            }
            if (ps == PROTO_ERR_AGAIN) {
                return; /* the pipe is full: later */
            }
            /* EHOSTUNREACH: the loader is gone (ROUTER_MANDATORY). */
            peer_lost(c, best, "unreachable");
        }
    }
}

/* ---- incoming --------------------------------------------------------------------- */

static int batch_matches(const struct proto_order *o, const struct proto_batch *b, char *why,
                         size_t whylen)
{
    if (b->epoch != o->epoch || b->step != o->step || b->rank != o->rank) {
        snprintf(why, whylen, "epoch/step/rank %u/%" PRIu64 "/%u, order has %u/%" PRIu64 "/%u",
                 b->epoch, b->step, b->rank, o->epoch, o->step, o->rank);
        return 0;
    }
    if (b->n_images != o->n_images || b->ngroups != o->ngroups) {
        snprintf(why, whylen, "%u images in %u groups, order has %u in %u", b->n_images,
                 b->ngroups, o->n_images, o->ngroups);
        return 0;
    }
    for (uint32_t g = 0; g < o->ngroups; g++) {
        const struct proto_tensor *t = &b->crops[g];
        uint64_t rows = (uint64_t)o->n_images * o->nmb_crops[g];
        if (b->nmb_crops[g] != o->nmb_crops[g] || b->size_crops[g] != o->size_crops[g] ||
            t->dtype != PROTO_DTYPE_U8 || t->ndim != 4 || t->shape[0] != rows ||
            t->shape[1] != o->size_crops[g] || t->shape[2] != o->size_crops[g] ||
            t->shape[3] != 3) {
            snprintf(why, whylen, "crops of group %u do not have the order's geometry", g);
            return 0;
        }
    }
    if (b->labels.dtype != PROTO_DTYPE_I32 || b->labels.ndim != 1 ||
        b->labels.shape[0] != o->n_images) {
        snprintf(why, whylen, "labels are not i32 [%u]", o->n_images);
        return 0;
    }
    return 1;
}

static void on_batch(struct loader_client *c, int k)
{
    struct peer *p = &c->peers[k];
    struct proto_diag diag = {0};
    struct proto_decode_opts dopts = {.run = c->run, .max_tensor_bytes = c->o.max_batch_bytes};
    struct proto_batch *b = &c->tmp_batch;
    enum proto_status ps = proto_batch_decode(c->in->frames, c->in->nframes, &dopts, b, &diag);
    if (ps != PROTO_OK) {
        char msg[400];
        proto_diag_format(msg, sizeof msg, PROTO_TYPE_BATCH, ps, &diag);
        c->st.bad_messages++;
        LOG_LIMITED(SWAV_LOG_WARN, "bad batch from loader %s dropped: %s", peer_name(p), msg);
        return;
    }
    snprintf(p->loader_id, sizeof p->loader_id, "%s", b->loader_id);
    struct slot *s = NULL;
    for (uint32_t i = 0; i < c->count; i++) {
        struct slot *t = slot_at(c, i);
        if (t->state != SLOT_FREE && t->order.order_id == b->order_id) {
            s = t;
            break;
        }
    }
    if (!s || s->state == SLOT_DONE || s->state == SLOT_FAILED) {
        /* Late answer to a re-issued order, or to one handed out already. */
        if (s || (b->order_id >= c->first_order_id && b->order_id < c->next_order_id)) {
            c->st.duplicates++;
            LOG_DEBUG("duplicate batch (order %" PRIu64 ", step %" PRIu64 ") from %s dropped",
                      b->order_id, b->step, peer_name(p));
        } else {
            c->st.stale++;
            LOG_LIMITED(SWAV_LOG_INFO, "batch of an unknown order %" PRIu64 " from %s dropped",
                        b->order_id, peer_name(p));
        }
        return;
    }
    char why[200];
    if (!batch_matches(&s->order, b, why, sizeof why)) {
        c->st.bad_messages++;
        LOG_LIMITED(SWAV_LOG_WARN, "batch from loader %s does not match its order (step %" PRIu64
                    "): %s; dropped", peer_name(p), s->order.step, why);
        return;
    }
    if (s->state == SLOT_SENT && s->peer >= 0 && c->peers[s->peer].outstanding > 0) {
        c->peers[s->peer].outstanding--;
    }
    struct proto_rx *t = s->rx;
    s->rx = c->in;
    c->in = t;
    s->batch = *b;
    s->state = SLOT_DONE;
    s->peer = -1;
    for (uint32_t i = 0; i < b->n_notes; i++) {
        if (b->notes[i].code == PROTO_NOTE_SUBSTITUTED) c->st.substituted++;
    }
}

static void on_error(struct loader_client *c, int k)
{
    struct peer *p = &c->peers[k];
    struct proto_error e;
    struct proto_diag diag = {0};
    struct proto_decode_opts dopts = {.run = c->run};
    enum proto_status ps = proto_error_decode(c->in->frames, c->in->nframes, &dopts, &e, &diag);
    if (ps != PROTO_OK) {
        char msg[400];
        proto_diag_format(msg, sizeof msg, PROTO_TYPE_ERROR, ps, &diag);
        c->st.bad_messages++;
        LOG_LIMITED(SWAV_LOG_WARN, "bad error message from loader %s: %s", peer_name(p), msg);
        return;
    }
    c->st.refusals++;
    for (uint32_t i = 0; i < c->count; i++) {
        struct slot *s = slot_at(c, i);
        if (s->state != SLOT_SENT || s->peer != k || s->order.step != e.step) continue;
        if (p->outstanding > 0) p->outstanding--;
        s->peer = -1;
        if (e.code == PROTO_ERRC_BUSY) {
            /* A stopping or overloaded loader: not the order's fault. */
            p->credit = 0;
            s->state = SLOT_QUEUED;
            c->st.reissued++;
            LOG_LIMITED(SWAV_LOG_INFO, "loader %s busy (%s): order step %" PRIu64 " re-issued",
                        peer_name(p), e.message, e.step);
            return;
        }
        s->refusals++;
        if (s->refusals >= c->o.max_attempts) {
            s->state = SLOT_FAILED;
            snprintf(c->last_error, sizeof c->last_error,
                     "order step %" PRIu64 " refused %u times; last by loader %.64s: %.300s [%s]",
                     s->order.step, s->refusals, peer_name(p), e.message,
                     proto_errcode_str(e.code));
        } else {
            s->state = SLOT_QUEUED;
        }
        LOG_LIMITED(SWAV_LOG_WARN, "loader %s refused order step %" PRIu64 ": %s [%s]",
                    peer_name(p), e.step, e.message, proto_errcode_str(e.code));
        return;
    }
    LOG_LIMITED(SWAV_LOG_WARN, "error from loader %s (step %" PRIu64 "): %s [%s]", peer_name(p),
                e.step, e.message, proto_errcode_str(e.code));
}

/* Receive everything waiting; returns the number of messages. */
static int drain(struct loader_client *c)
{
    int n = 0;
    for (;;) {
        enum proto_status ps = proto_recv(c->sock, c->in, true, ZMQ_DONTWAIT);
        if (ps == PROTO_ERR_AGAIN) return n;
        n++;
        if (ps == PROTO_ERR_ZMQ) {
            if (zmq_errno() == EINTR) return n;
            LOG_LIMITED(SWAV_LOG_WARN, "loader client: receive failed: %s",
                        zmq_strerror(zmq_errno()));
            return n;
        }
        if (ps != PROTO_OK) {
            c->st.bad_messages++;
            LOG_LIMITED(SWAV_LOG_WARN, "loader client: malformed message dropped: %s",
                        proto_status_str(ps));
            continue;
        }
        int k = peer_find(c, c->in->identity, c->in->idlen, 1);
        if (k < 0) {
            c->st.bad_messages++;
            LOG_LIMITED(SWAV_LOG_WARN, "loader client: more than %d loaders: message dropped",
                        CLIENT_MAX_PEERS);
            continue;
        }
        struct peer *p = &c->peers[k];
        p->last_heard_ms = swav_now_ms();
        if (!p->alive) {
            LOG_INFO("loader %s is back", peer_name(p));
            p->alive = 1;
        }
        struct proto_header h;
        struct proto_diag diag = {0};
        struct proto_decode_opts dopts = {.run = c->run};
        ps = proto_peek_type(c->in->frames, c->in->nframes, &dopts, &h, &diag);
        if (ps != PROTO_OK) {
            char msg[400];
            proto_diag_format(msg, sizeof msg, PROTO_TYPE_NONE, ps, &diag);
            c->st.bad_messages++;
            LOG_LIMITED(SWAV_LOG_WARN, "loader client: bad message from %s dropped: %s",
                        peer_name(p), msg);
            continue;
        }
        switch (h.type) {
        case PROTO_TYPE_READY: {
            struct proto_ready r;
            ps = proto_ready_decode(c->in->frames, c->in->nframes, &dopts, &r, &diag);
            if (ps != PROTO_OK) {
                char msg[400];
                proto_diag_format(msg, sizeof msg, PROTO_TYPE_READY, ps, &diag);
                c->st.bad_messages++;
                LOG_LIMITED(SWAV_LOG_WARN, "bad ready from a loader: %s", msg);
                break;
            }
            if (!p->loader_id[0] || strcmp(p->loader_id, r.loader_id) != 0) {
                LOG_INFO("loader %s connected (credit %u, %u workers)", r.loader_id, r.credit,
                         r.workers);
            }
            snprintf(p->loader_id, sizeof p->loader_id, "%s", r.loader_id);
            p->credit = r.credit;
            p->has_datasets = r.has_datasets;
            p->n_datasets = 0;
            for (uint32_t i = 0; i < r.n_datasets && i < CLIENT_MAX_DATASETS; i++) {
                snprintf(p->ds_tag[i], sizeof p->ds_tag[i], "%s", r.datasets[i].name);
                p->ds_images[i] = (uint64_t)r.datasets[i].value; /* an integer (decoder) */
                p->n_datasets++;
            }
            break;
        }
        case PROTO_TYPE_BATCH: on_batch(c, k); break;
        case PROTO_TYPE_ERROR: on_error(c, k); break;
        default:
            c->st.bad_messages++;
            LOG_LIMITED(SWAV_LOG_WARN, "loader client: unexpected '%s' message from %s dropped",
                        proto_type_name(h.type), peer_name(p));
        }
    }
}

/* ---- the API --------------------------------------------------------------------------- */

enum loader_client_status loader_client_submit(struct loader_client *c,
                                               const struct proto_order *order,
                                               uint64_t *order_id)
{
    if (loader_client_outstanding(c) >= c->o.window) return LOADER_CLIENT_ERR_FULL;
    struct proto_order o = *order;
    o.order_id = c->next_order_id;
    enum proto_status ps = proto_order_encode(&c->msg, c->run, &o);
    if (ps != PROTO_OK) {
        snprintf(c->last_error, sizeof c->last_error, "order step %" PRIu64 ": %s", o.step,
                 proto_status_str(ps));
        return LOADER_CLIENT_ERR_ORDER;
    }
    SWAV_ASSERT(c->count < c->nslots);
    struct slot *s = slot_at(c, c->count);
    SWAV_ASSERT(s->state == SLOT_FREE);
    if (s->idx_cap < o.n_images) {
        free(s->idx);
        s->idx = swav_xmalloc((size_t)o.n_images * sizeof *s->idx);
        s->idx_cap = o.n_images;
    }
    memcpy(s->idx, order->indices.data, (size_t)o.n_images * sizeof *s->idx);
    o.indices.data = s->idx;
    s->order = o;
    s->state = SLOT_QUEUED;
    s->peer = -1;
    s->refusals = 0;
    c->count++;
    c->next_order_id++;
    c->st.submitted++;
    if (order_id) *order_id = o.order_id;
    drain(c);
    housekeeping(c, swav_now_ms());
    dispatch(c);
    return LOADER_CLIENT_OK;
}

static void release_head(struct loader_client *c)
{
    struct slot *s = slot_at(c, 0);
    /* The frames stay in s->rx until the next receive into it (proto_recv
     * releases them and keeps its alignment buffer): no free/alloc per batch. */
    s->state = SLOT_FREE;
    s->peer = -1;
    c->head = (c->head + 1) % c->nslots;
    c->count--;
}

enum loader_client_status loader_client_next(struct loader_client *c,
                                             const struct proto_batch **batch, int timeout_ms)
{
    if (c->handed) {
        release_head(c);
        c->handed = 0;
    }
    if (c->count == 0) return LOADER_CLIENT_ERR_EMPTY;
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : swav_now_ms() + timeout_ms;
    for (;;) {
        drain(c);
        int64_t now = swav_now_ms();
        housekeeping(c, now);
        dispatch(c);
        struct slot *s = slot_at(c, 0);
        if (s->state == SLOT_DONE) {
            *batch = &s->batch;
            c->handed = 1;
            c->st.delivered++;
            return LOADER_CLIENT_OK;
        }
        if (s->state == SLOT_FAILED) {
            release_head(c);
            return LOADER_CLIENT_ERR_FAILED;
        }
        if (now >= deadline) return LOADER_CLIENT_TIMEOUT;
        int64_t wait = deadline - now;
        if (wait > 100) wait = 100; /* wake up for liveness checks */
        zmq_pollitem_t it = {.socket = c->sock, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, (long)wait) < 0) {
            if (zmq_errno() == EINTR) {
                return LOADER_CLIENT_TIMEOUT; /* a signal: let the caller look at its flags */
            }
            LOG_LIMITED(SWAV_LOG_WARN, "loader client: poll failed: %s", zmq_strerror(zmq_errno()));
        }
    }
}

void loader_client_poll(struct loader_client *c, int timeout_ms)
{
    int64_t deadline = swav_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        drain(c);
        int64_t now = swav_now_ms();
        housekeeping(c, now);
        dispatch(c);
        if (now >= deadline) return;
        zmq_pollitem_t it = {.socket = c->sock, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, (long)(deadline - now)) < 0 && zmq_errno() == EINTR) return;
    }
}
