/* swav-assigner's service loop: see server.h and docs/assigner.md.
 *
 * One thread, one ROUTER socket, zmq_poll with a timeout set by the nearest
 * deadline (the gather of a step's embeddings, the hello round).  Every
 * message is decoded and checked completely before anything is changed; a
 * refused one gets `error` (code, field, message) and a rate-limited log line,
 * and leaves the session, the gather and the queue as they were. */
#include "server.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/check.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "core.h"
#include "proto/proto.h"
#include "proto/wire.h"
#include "sinkhorn.h"
#ifdef SWAV_HAVE_CUDA
#include "sinkhorn_cuda.h"
#endif

#define QUEUE_SUFFIX ".queue"

struct peer {
    bool registered;
    bool pending;           /* said hello in the current round */
    uint8_t id[PROTO_MAX_IDENTITY];
    size_t idlen;
    int64_t last_seen_ms;
    struct proto_hello hello;
};

struct assigner_server {
    struct assigner_server_opts o;
    char endpoint[PROTO_MAX_STR + 1];
    char resume[PROTO_MAX_STR + 1];
    void *ctx;
    void *sock;
    struct proto_zap *zap;  /* the allow-list's ZAP handler, or NULL */
    uint64_t zap_refused;   /* refusals already logged */
    volatile sig_atomic_t stop;

    char run[PROTO_MAX_ID + 1];   /* "" until adopted */
    /* session */
    bool have_cfg;
    struct proto_hello cfg;       /* the session's config (rank fields unused) */
    struct peer *peers;           /* [cfg.world_size] */
    bool established;
    int64_t hello_deadline;       /* 0: none */
    struct sinkhorn_backend *backend;
    assigner_core_t *core;
    /* A session re-formed over a live core (a trainer said hello again: a
     * retry after a timeout, or a restarted trainer group) does not know yet
     * whether the trainers go on from the live queue or from their checkpoint.
     * `restore` holds the queue they asked for (rank 0's resume_path, or an
     * empty one) until the first embed decides (see decide_restore). */
    assigner_core_t *restore;
    char restore_from[PROTO_MAX_STR + 8];
    /* the codes of step cached_step (-1: none) are still in the core, with
     * copies of the embeddings and prototypes that gave them: an embed that
     * repeats that step byte for byte is answered with them again */
    int64_t cached_step;
    float *last_emb;              /* [world][n_assign * batch * D] */
    float *last_protos;           /* [K * D] */
    float *g_emb;                 /* the step being gathered, likewise */
    struct proto_codes last_codes; /* header and statistics of step cached_step */
    /* gather */
    bool gathering;
    uint64_t g_step;
    uint32_t g_epoch;
    bool *got;
    int ngot;
    int64_t g_deadline;
    float *protos;
    /* io */
    struct proto_rx rx;
    struct proto_msg msg;
    uint64_t steps_done;
    uint64_t refused;
};

/* ---- replies -------------------------------------------------------------- */

static void send_msg(assigner_server_t *s, const uint8_t *id, size_t idlen, const char *what)
{
    enum proto_status st = proto_send(s->sock, id, idlen, &s->msg, ZMQ_DONTWAIT);
    if (st != PROTO_OK) {
        LOG_LIMITED(SWAV_LOG_WARN, "cannot send %s: %s (%s)", what, proto_status_str(st),
                    zmq_strerror(zmq_errno()));
    }
}

__attribute__((format(printf, 7, 8))) static void
send_error(assigner_server_t *s, const uint8_t *id, size_t idlen, enum proto_errcode code,
           const char *field, uint64_t step, const char *fmt, ...)
{
    struct proto_error e = {0};
    e.code = code;
    snprintf(e.field, sizeof e.field, "%s", field ? field : "");
    e.step = step;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    s->refused++;
    LOG_LIMITED(SWAV_LOG_WARN, "refused (%s%s%s): %s [%llu refused so far]",
                proto_errcode_str(code), e.field[0] ? ", field " : "", e.field, e.message,
                (unsigned long long)s->refused);
    const char *run = s->run[0] ? s->run : "?";
    if (proto_error_encode(&s->msg, run, &e) != PROTO_OK) {
        LOG_ERROR("cannot encode an error reply");
        return;
    }
    send_msg(s, id, idlen, "error");
}

/* ---- session -------------------------------------------------------------- */

static void reset_gather(assigner_server_t *s)
{
    s->gathering = false;
    s->ngot = 0;
    if (s->got && s->have_cfg) {
        memset(s->got, 0, (size_t)s->cfg.world_size * sizeof(bool));
    }
}

/* Errors to every rank that sent its embed for the step being gathered. */
static void abort_gather(assigner_server_t *s, enum proto_errcode code, const char *field,
                         const char *why)
{
    for (uint32_t r = 0; s->gathering && r < s->cfg.world_size; r++) {
        if (s->got[r]) {
            send_error(s, s->peers[r].id, s->peers[r].idlen, code, field, s->g_step,
                       "step %llu: %s", (unsigned long long)s->g_step, why);
        }
    }
    reset_gather(s);
}

static void drop_session(assigner_server_t *s)
{
    reset_gather(s);
    assigner_core_destroy(&s->core);
    assigner_core_destroy(&s->restore);
    s->cached_step = -1;
    free(s->peers);
    free(s->got);
    free(s->protos);
    free(s->last_emb);
    free(s->last_protos);
    free(s->g_emb);
    s->peers = NULL;
    s->got = NULL;
    s->protos = NULL;
    s->last_emb = NULL;
    s->last_protos = NULL;
    s->g_emb = NULL;
    s->have_cfg = false;
    s->established = false;
    s->hello_deadline = 0;
}

/* The first config field in which two hellos differ, or NULL. */
static const char *config_diff(const struct proto_hello *a, const struct proto_hello *b,
                               char *detail, size_t len)
{
#define CMP_U(f)                                                                   \
    if (a->f != b->f) {                                                            \
        snprintf(detail, len, "%s = %u, the session has %u", #f, (unsigned)a->f,   \
                 (unsigned)b->f);                                                  \
        return #f;                                                                 \
    }
    CMP_U(world_size);
    CMP_U(nmb_prototypes);
    CMP_U(feat_dim);
    if (a->epsilon != b->epsilon) {
        snprintf(detail, len, "epsilon = %.17g, the session has %.17g", a->epsilon, b->epsilon);
        return "epsilon";
    }
    CMP_U(sinkhorn_iterations);
    CMP_U(queue_length);
    CMP_U(epoch_queue_starts);
    CMP_U(batch_size);
    bool same = a->n_crops_for_assign == b->n_crops_for_assign;
    for (uint32_t i = 0; same && i < a->n_crops_for_assign; i++) {
        same = a->crops_for_assign[i] == b->crops_for_assign[i];
    }
    if (!same) {
        snprintf(detail, len, "crops_for_assign differs (%u entries, the session has %u)",
                 a->n_crops_for_assign, b->n_crops_for_assign);
        return "crops_for_assign";
    }
#undef CMP_U
    return NULL;
}

static bool peer_is(const struct peer *p, const uint8_t *id, size_t idlen)
{
    return p->registered && p->idlen == idlen && memcmp(p->id, id, idlen) == 0;
}

/* Whether the peer holding a rank is still connected: with ZMQ_ROUTER_MANDATORY
 * a send to a routing id whose connection is gone fails with EHOSTUNREACH at
 * once (a killed trainer's socket closes with its process).  The probe is an
 * `error` telling the holder that another peer claims its rank. */
static bool peer_alive(assigner_server_t *s, const struct peer *p, uint32_t rank)
{
    struct proto_error e = {0};
    e.code = PROTO_ERRC_REFUSED_CONFIG;
    snprintf(e.field, sizeof e.field, "rank");
    snprintf(e.message, sizeof e.message,
             "another peer says hello as rank %u, which this peer holds", rank);
    e.step = UINT64_MAX; /* matches no request: a live holder's client skips it */
    if (proto_error_encode(&s->msg, s->run[0] ? s->run : "?", &e) != PROTO_OK) {
        return true;
    }
    enum proto_status st = proto_send(s->sock, p->id, p->idlen, &s->msg, ZMQ_DONTWAIT);
    if (st == PROTO_ERR_ZMQ && zmq_errno() == EHOSTUNREACH) {
        LOG_INFO("rank %u: its previous peer is gone; a new peer takes the rank over", rank);
        return false;
    }
    return true;
}

static bool all_stale(const assigner_server_t *s, int64_t now)
{
    for (uint32_t r = 0; r < s->cfg.world_size; r++) {
        if (s->peers[r].registered && now - s->peers[r].last_seen_ms < s->o.stale_peer_ms) {
            return false;
        }
    }
    return true;
}

static assigner_core_t *make_core(assigner_server_t *s, char *err, size_t errlen)
{
    struct assigner_config cfg = {
        .world_size = (int)s->cfg.world_size,
        .batch_size = (int)s->cfg.batch_size,
        .nmb_prototypes = (int)s->cfg.nmb_prototypes,
        .feat_dim = (int)s->cfg.feat_dim,
        .ncrops_assign = (int)s->cfg.n_crops_for_assign,
        .epsilon = (float)s->cfg.epsilon,
        .sinkhorn_iterations = (int)s->cfg.sinkhorn_iterations,
        .queue_length = (int)s->cfg.queue_length,
        .epoch_queue_starts = (int)s->cfg.epoch_queue_starts,
        .collapse_entropy_frac = s->o.collapse_entropy_frac,
        .collapse_min_used = s->o.collapse_min_used,
    };
    return assigner_core_new(&cfg, s->backend, err, errlen);
}

/* All ranks said hello: make the core, load the queue, welcome everyone.
 *
 * A fresh assigner (no core yet) loads the queue of the checkpoint being
 * resumed at once.  A session that re-forms over a live core cannot tell yet
 * whether the trainers go on where the live queue is (a trainer that timed
 * out while this process was stopped or slow, or whose connection dropped,
 * says hello again and resends its step) or start again from their
 * checkpoint (a restarted trainer group): the queue they asked for is read
 * into `restore`, and the group's first embed decides (decide_restore). */
static void establish(assigner_server_t *s)
{
    char err[PROTO_MAX_STR];
    const uint32_t w = s->cfg.world_size;
    bool fresh = s->core == NULL;
    assigner_core_t *target = make_core(s, err, sizeof err);
    if (!target) {
        for (uint32_t r = 0; r < w; r++) {
            send_error(s, s->peers[r].id, s->peers[r].idlen, PROTO_ERRC_REFUSED_CONFIG, "",
                       0, "%s", err);
            s->peers[r].pending = false;
            if (fresh) s->peers[r].registered = false;
        }
        if (fresh) drop_session(s);
        else s->hello_deadline = 0;
        return;
    }
    /* the queue of the checkpoint being resumed: rank 0's resume_path, else --resume */
    const char *ckpt = s->peers[0].hello.resume_path[0] ? s->peers[0].hello.resume_path
                                                        : (fresh ? s->resume : "");
    char path[PROTO_MAX_STR + sizeof QUEUE_SUFFIX] = "";
    if (ckpt[0]) {
        snprintf(path, sizeof path, "%s%s", ckpt, QUEUE_SUFFIX);
        int rc = assigner_core_load(target, path, err, sizeof err);
        if (rc == -ENOENT) {
            /* expected when the run has no queue, or resumes before the
             * epoch that starts it (the queue did not exist to be saved) */
            if (assigner_core_queue_length(target) == 0 ||
                (s->peers[0].hello.resume_path[0] &&
                 s->peers[0].hello.resume_epoch < s->cfg.epoch_queue_starts)) {
                LOG_INFO("resume from %s: no queue to restore (--queue_length %u, resuming at "
                         "epoch %u, the queue starts at epoch %u)",
                         ckpt, (unsigned)s->cfg.queue_length,
                         (unsigned)s->peers[0].hello.resume_epoch,
                         (unsigned)s->cfg.epoch_queue_starts);
            } else {
                LOG_WARN("resume from %s: no queue file %s; starting without a queue (as "
                         "the reference does when queue<rank>.pth is absent)", ckpt, path);
            }
            assigner_core_reset_queue(target);
        } else if (rc < 0) {
            for (uint32_t r = 0; r < w; r++) {
                send_error(s, s->peers[r].id, s->peers[r].idlen, PROTO_ERRC_REFUSED_CONFIG,
                           "resume_path", 0, "cannot restore the queue: %s", err);
                s->peers[r].pending = false;
            }
            assigner_core_destroy(&target);
            if (fresh) {
                /* keep the empty core: the session config stays */
                s->core = make_core(s, err, sizeof err);
            }
            s->hello_deadline = 0;
            return;
        } else {
            LOG_INFO("queue %s from %s: step %lld, epoch %lld, %lld rows filled",
                     fresh ? "restored" : "read", path,
                     (long long)assigner_core_last_step(target),
                     (long long)assigner_core_last_epoch(target),
                     (long long)assigner_core_queue_fill(target));
        }
    }
    if (fresh) {
        s->core = target;
        s->cached_step = -1;
    } else {
        assigner_core_destroy(&s->restore);
        s->restore = target;
        snprintf(s->restore_from, sizeof s->restore_from, "%s", path[0] ? path : "");
        LOG_INFO("session re-forms over the live queue (step %lld): its first step decides "
                 "whether it goes on from there or from %s",
                 (long long)assigner_core_last_step(s->core),
                 path[0] ? path : "an empty queue (rank 0 resumes no checkpoint)");
    }
    /* the welcome describes the queue the trainers asked for */
    const assigner_core_t *q = s->restore && ckpt[0] ? s->restore : s->core;
    reset_gather(s);
    struct proto_welcome wm = {0};
    wm.world_size = w;
    wm.has_nccl_id = s->peers[0].hello.has_nccl_id;
    memcpy(wm.nccl_id, s->peers[0].hello.nccl_id, sizeof wm.nccl_id);
    wm.queue_length = (uint32_t)assigner_core_queue_length(q);
    wm.queue_fill = (uint64_t)assigner_core_queue_fill(q);
    int64_t ls = assigner_core_last_step(q), le = assigner_core_last_epoch(q);
    wm.step = ls < 0 ? 0 : (uint64_t)ls;
    wm.epoch = le < 0 ? 0 : (uint32_t)le;
    for (uint32_t r = 0; r < w; r++) {
        wm.rank = r;
        s->peers[r].pending = false;
        if (proto_welcome_encode(&s->msg, s->run, &wm) == PROTO_OK) {
            send_msg(s, s->peers[r].id, s->peers[r].idlen, "welcome");
        }
    }
    s->established = true;
    s->hello_deadline = 0;
    LOG_INFO("session of %u ranks established (run %s): K=%u D=%u batch %u/rank, %u assign "
             "crops, epsilon %g, %u iterations, queue %u rows (fill %llu), from step %llu",
             w, s->run, s->cfg.nmb_prototypes, s->cfg.feat_dim, s->cfg.batch_size,
             s->cfg.n_crops_for_assign, s->cfg.epsilon, s->cfg.sinkhorn_iterations,
             wm.queue_length, (unsigned long long)wm.queue_fill, (unsigned long long)wm.step);
}

static void on_hello(assigner_server_t *s, const uint8_t *id, size_t idlen, int64_t now)
{
    struct proto_hello h;
    struct proto_diag diag;
    struct proto_decode_opts dopts = {.run = s->run};
    enum proto_status st = proto_hello_decode(s->rx.frames, s->rx.nframes, &dopts, &h, &diag);
    if (st != PROTO_OK) {
        char text[400];
        proto_diag_format(text, sizeof text, PROTO_TYPE_HELLO, st, &diag);
        send_error(s, id, idlen, PROTO_ERRC_BAD_MESSAGE, diag.field, 0, "%s", text);
        return;
    }
    if (h.rank >= h.world_size) {
        send_error(s, id, idlen, PROTO_ERRC_REFUSED_CONFIG, "rank", 0,
                   "rank %u is not below world_size %u", h.rank, h.world_size);
        return;
    }
    char detail[256];
    if (s->have_cfg) {
        const char *field = config_diff(&h, &s->cfg, detail, sizeof detail);
        if (field) {
            if (!all_stale(s, now)) {
                send_error(s, id, idlen, PROTO_ERRC_REFUSED_CONFIG, field, 0,
                           "hello of rank %u refused: %s", h.rank, detail);
                return;
            }
            LOG_WARN("every rank of the session is gone and rank %u brings another config "
                     "(%s): starting a new session, the old queue is dropped", h.rank, detail);
            drop_session(s);
        }
    }
    if (!s->have_cfg) {
        s->cfg = h;
        s->have_cfg = true;
        s->peers = swav_xcalloc(h.world_size, sizeof *s->peers);
        s->got = swav_xcalloc(h.world_size, sizeof *s->got);
        s->protos = swav_xmalloc((size_t)h.nmb_prototypes * h.feat_dim * sizeof(float));
        size_t per = (size_t)h.n_crops_for_assign * h.batch_size * h.feat_dim;
        s->last_emb = swav_xcalloc((size_t)h.world_size * per, sizeof(float));
        s->g_emb = swav_xcalloc((size_t)h.world_size * per, sizeof(float));
        s->last_protos = swav_xcalloc((size_t)h.nmb_prototypes * h.feat_dim, sizeof(float));
        s->cached_step = -1;
    }
    struct peer *p = &s->peers[h.rank];
    if (p->registered && !peer_is(p, id, idlen) && now - p->last_seen_ms < s->o.stale_peer_ms &&
        peer_alive(s, p, h.rank)) {
        send_error(s, id, idlen, PROTO_ERRC_REFUSED_CONFIG, "rank", 0,
                   "duplicate rank %u: another peer holds it (seen %lld ms ago)", h.rank,
                   (long long)(now - p->last_seen_ms));
        return;
    }
    if (s->established) {
        /* a new round: a restarted trainer group says hello again */
        LOG_INFO("rank %u says hello again: the session re-forms until all %u ranks have",
                 h.rank, s->cfg.world_size);
        abort_gather(s, PROTO_ERRC_OUT_OF_ORDER, "hello",
                     "the session is re-forming (a rank said hello again)");
        s->established = false;
    }
    p->registered = true;
    p->pending = true;
    memcpy(p->id, id, idlen);
    p->idlen = idlen;
    p->last_seen_ms = now;
    p->hello = h;
    if (s->hello_deadline == 0) {
        s->hello_deadline = now + s->o.hello_timeout_ms;
    }
    for (uint32_t r = 0; r < s->cfg.world_size; r++) {
        if (!s->peers[r].pending) {
            return;
        }
    }
    establish(s);
}

/* ---- steps ---------------------------------------------------------------- */

static bool tensor_is(const struct proto_tensor *t, uint32_t ndim, const uint64_t *dims)
{
    if (t->dtype != PROTO_DTYPE_F32 || t->ndim != ndim) return false;
    for (uint32_t i = 0; i < ndim; i++) {
        if (t->shape[i] != dims[i]) return false;
    }
    return true;
}

static void shape_str(char *buf, size_t len, const struct proto_tensor *t)
{
    int n = snprintf(buf, len, "%s[", proto_dtype_name(t->dtype));
    for (uint32_t i = 0; i < t->ndim && n > 0 && (size_t)n < len; i++) {
        n += snprintf(buf + n, len - (size_t)n, i ? ", %llu" : "%llu",
                      (unsigned long long)t->shape[i]);
    }
    if (n > 0 && (size_t)n < len) snprintf(buf + n, len - (size_t)n, "]");
}

static bool all_finite(const float *x, size_t n, size_t *at)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            *at = i;
            return false;
        }
    }
    return true;
}

/* Rank r's rows of the core's codes, with m's step and statistics. */
static void send_codes(assigner_server_t *s, uint32_t r, struct proto_codes *m)
{
    const struct proto_hello *c = &s->cfg;
    uint64_t dims[3] = {c->n_crops_for_assign, c->batch_size, c->nmb_prototypes};
    m->rank = r;
    proto_tensor_set(&m->q, PROTO_DTYPE_F32, assigner_core_rank_codes(s->core, (int)r), 3, dims);
    if (proto_codes_encode(&s->msg, s->run, m) == PROTO_OK) {
        send_msg(s, s->peers[r].id, s->peers[r].idlen, "codes");
    } else {
        LOG_ERROR("cannot encode codes for rank %u", r);
    }
}

static void run_step(assigner_server_t *s)
{
    char err[512];
    struct assigner_stats st;
    s->cached_step = -1; /* the core's codes are being overwritten */
    if (assigner_core_step(s->core, s->g_epoch, (int64_t)s->g_step, s->protos, &st, err,
                           sizeof err) < 0) {
        abort_gather(s, PROTO_ERRC_INTERNAL, "", err);
        return;
    }
    /* what gave these codes, for a repeated embed (repeat_codes) */
    float *t = s->last_emb;
    s->last_emb = s->g_emb;
    s->g_emb = t;
    memcpy(s->last_protos, s->protos, (size_t)s->cfg.nmb_prototypes * s->cfg.feat_dim *
                                          sizeof(float));
    s->cached_step = (int64_t)s->g_step;
    const struct proto_hello *c = &s->cfg;
    struct proto_codes m = {0};
    m.epoch = s->g_epoch;
    m.step = s->g_step;
    m.stats.entropy = st.entropy_mean;
    m.stats.prototypes_used = (uint32_t)st.prototypes_used;
    /* the whole assignment (GPU: with the copies to and from the device) */
    m.stats.sinkhorn_ms = st.ms_scores + st.ms_sinkhorn + st.ms_copy;
    m.stats.queue_used = st.queue_used;
    m.stats.queue_fill = (uint64_t)assigner_core_queue_fill(s->core);
    m.stats.collapse_warnings = (uint32_t)st.collapse_warnings;
    for (uint32_t r = 0; r < c->world_size; r++) {
        send_codes(s, r, &m);
    }
    s->last_codes = m;
    s->steps_done++;
    if (s->o.log_every > 0 && (s->steps_done % (uint64_t)s->o.log_every == 0 ||
                               st.collapse_uniform || st.collapse_few)) {
        char copies[48] = "";
        if (st.ms_copy > 0.0) {
            snprintf(copies, sizeof copies, ", device copies %.2f ms", st.ms_copy);
        }
        LOG_INFO("step %llu epoch %u: entropy %.4f (ln K %.4f), %d prototypes used, scores "
                 "%.2f ms, sinkhorn %.2f ms%s, queue %s (%llu rows), collapse warnings %llu",
                 (unsigned long long)s->g_step, s->g_epoch, st.entropy_mean,
                 st.entropy_uniform, st.prototypes_used, st.ms_scores, st.ms_sinkhorn, copies,
                 st.queue_used ? "used" : "not used", (unsigned long long)m.stats.queue_fill,
                 (unsigned long long)st.collapse_warnings);
    }
    reset_gather(s);
}

static int find_rank(const assigner_server_t *s, const uint8_t *id, size_t idlen)
{
    for (uint32_t r = 0; s->have_cfg && r < s->cfg.world_size; r++) {
        if (peer_is(&s->peers[r], id, idlen)) return (int)r;
    }
    return -1;
}

/* Whether an embed repeats, byte for byte, the one that gave the cached codes
 * (a trainer that timed out waiting for them and sent its step again). */
static bool repeats_cached(const assigner_server_t *s, const struct proto_embed *e)
{
    const struct proto_hello *c = &s->cfg;
    if (s->cached_step < 0 || (int64_t)e->step != s->cached_step ||
        e->epoch != s->last_codes.epoch) {
        return false;
    }
    size_t per = (size_t)c->n_crops_for_assign * c->batch_size * c->feat_dim;
    if (memcmp(e->embeddings.data, s->last_emb + (size_t)e->rank * per, per * sizeof(float))) {
        return false;
    }
    return e->rank != 0 || !memcmp(e->prototypes.data, s->last_protos,
                                   (size_t)c->nmb_prototypes * c->feat_dim * sizeof(float));
}

/* The first embed of a session re-formed over a live core: when its step
 * follows the live queue (the next step, or the last one sent again), the
 * trainers went on from where the live queue is and keep it, so that a
 * retry changes nothing; otherwise (a group restarted from its checkpoint)
 * the queue they asked for replaces it. */
static void decide_restore(assigner_server_t *s, const struct proto_embed *e)
{
    if (!s->restore) return;
    int64_t last = assigner_core_last_step(s->core);
    if ((int64_t)e->step == last + 1 || repeats_cached(s, e)) {
        LOG_INFO("step %llu follows the live queue (step %lld): the re-formed session keeps it",
                 (unsigned long long)e->step, (long long)last);
        assigner_core_destroy(&s->restore);
        return;
    }
    LOG_INFO("step %llu does not follow the live queue (step %lld): the re-formed session "
             "goes on from %s (step %lld)", (unsigned long long)e->step, (long long)last,
             s->restore_from[0] ? s->restore_from : "an empty queue",
             (long long)assigner_core_last_step(s->restore));
    assigner_core_destroy(&s->core);
    s->core = s->restore;
    s->restore = NULL;
    s->cached_step = -1;
}

static void on_embed(assigner_server_t *s, const uint8_t *id, size_t idlen, int64_t now)
{
    struct proto_embed e;
    struct proto_diag diag;
    struct proto_decode_opts dopts = {.run = s->run};
    enum proto_status pst = proto_embed_decode(s->rx.frames, s->rx.nframes, &dopts, &e, &diag);
    if (pst != PROTO_OK) {
        char text[400];
        proto_diag_format(text, sizeof text, PROTO_TYPE_EMBED, pst, &diag);
        send_error(s, id, idlen, PROTO_ERRC_BAD_MESSAGE, diag.field, 0, "%s", text);
        return;
    }
    if (!s->established || find_rank(s, id, idlen) != (int)e.rank) {
        send_error(s, id, idlen, PROTO_ERRC_OUT_OF_ORDER, "hello", e.step,
                   "embed of rank %u: no session with this peer as rank %u; send hello first",
                   e.rank, e.rank);
        return;
    }
    const struct proto_hello *c = &s->cfg;
    s->peers[e.rank].last_seen_ms = now;
    char shape[128];
    uint64_t edims[3] = {c->n_crops_for_assign, c->batch_size, c->feat_dim};
    if (!tensor_is(&e.embeddings, 3, edims)) {
        shape_str(shape, sizeof shape, &e.embeddings);
        send_error(s, id, idlen, PROTO_ERRC_BAD_MESSAGE, "embeddings", e.step,
                   "embeddings of rank %u are %s, expected f32[%u, %u, %u]", e.rank, shape,
                   c->n_crops_for_assign, c->batch_size, c->feat_dim);
        return;
    }
    uint64_t pdims[2] = {c->nmb_prototypes, c->feat_dim};
    if (e.rank == 0 && (!e.has_prototypes || !tensor_is(&e.prototypes, 2, pdims))) {
        if (e.has_prototypes) shape_str(shape, sizeof shape, &e.prototypes);
        send_error(s, id, idlen, PROTO_ERRC_BAD_MESSAGE, "prototypes", e.step,
                   "rank 0 must send the prototypes as f32[%u, %u]; got %s", c->nmb_prototypes,
                   c->feat_dim, e.has_prototypes ? shape : "none");
        return;
    }
    size_t at;
    const float *emb = e.embeddings.data;
    size_t per = (size_t)c->batch_size * c->feat_dim;
    if (!all_finite(emb, per * c->n_crops_for_assign, &at)) {
        send_error(s, id, idlen, PROTO_ERRC_BAD_MESSAGE, "embeddings", e.step,
                   "embeddings of rank %u: non-finite value at [%zu, %zu, %zu]", e.rank,
                   at / per, (at % per) / c->feat_dim, at % c->feat_dim);
        return;
    }
    if (e.rank == 0 && !all_finite(e.prototypes.data,
                                   (size_t)c->nmb_prototypes * c->feat_dim, &at)) {
        send_error(s, id, idlen, PROTO_ERRC_BAD_MESSAGE, "prototypes", e.step,
                   "prototypes: non-finite value at [%zu, %zu]", at / c->feat_dim,
                   at % c->feat_dim);
        return;
    }
    decide_restore(s, &e);
    if (repeats_cached(s, &e)) {
        LOG_LIMITED(SWAV_LOG_INFO, "step %llu of rank %u again, the same embeddings: the same "
                    "codes again", (unsigned long long)e.step, e.rank);
        struct proto_codes m = s->last_codes;
        send_codes(s, e.rank, &m);
        return;
    }
    int64_t last = assigner_core_last_step(s->core);
    if (last >= 0 && e.step <= (uint64_t)last) {
        send_error(s, id, idlen, PROTO_ERRC_OUT_OF_ORDER, "step", e.step,
                   "stale step %llu from rank %u: step %lld is done",
                   (unsigned long long)e.step, e.rank, (long long)last);
        return;
    }
    int64_t last_epoch = assigner_core_last_epoch(s->core);
    if (last_epoch >= 0 && (int64_t)e.epoch < last_epoch) {
        send_error(s, id, idlen, PROTO_ERRC_OUT_OF_ORDER, "epoch", e.step,
                   "stale epoch %u from rank %u: epoch %lld is under way", e.epoch, e.rank,
                   (long long)last_epoch);
        return;
    }
    if (s->gathering) {
        if (e.step != s->g_step || e.epoch != s->g_epoch) {
            send_error(s, id, idlen, PROTO_ERRC_OUT_OF_ORDER, e.step != s->g_step ? "step" : "epoch",
                       e.step, "rank %u sent step %llu epoch %u while step %llu epoch %u is "
                       "being gathered", e.rank, (unsigned long long)e.step, e.epoch,
                       (unsigned long long)s->g_step, s->g_epoch);
            return;
        }
        if (s->got[e.rank]) {
            send_error(s, id, idlen, PROTO_ERRC_OUT_OF_ORDER, "rank", e.step,
                       "duplicate embed of rank %u for step %llu", e.rank,
                       (unsigned long long)e.step);
            return;
        }
    }
    /* accepted */
    memcpy(s->g_emb + (size_t)e.rank * per * c->n_crops_for_assign, emb,
           per * c->n_crops_for_assign * sizeof(float));
    for (uint32_t i = 0; i < c->n_crops_for_assign; i++) {
        memcpy(assigner_core_embed_slot(s->core, (int)i, (int)e.rank), emb + i * per,
               per * sizeof(float));
    }
    if (e.rank == 0) {
        memcpy(s->protos, e.prototypes.data, (size_t)c->nmb_prototypes * c->feat_dim *
                                                 sizeof(float));
    }
    if (!s->gathering) {
        s->gathering = true;
        s->g_step = e.step;
        s->g_epoch = e.epoch;
        s->g_deadline = now + s->o.embed_timeout_ms;
    }
    s->got[e.rank] = true;
    if (++s->ngot == (int)c->world_size) {
        run_step(s);
    }
}

static void on_save(assigner_server_t *s, const uint8_t *id, size_t idlen, int64_t now)
{
    struct proto_save m;
    struct proto_diag diag;
    struct proto_decode_opts dopts = {.run = s->run};
    enum proto_status pst = proto_save_decode(s->rx.frames, s->rx.nframes, &dopts, &m, &diag);
    if (pst != PROTO_OK) {
        char text[400];
        proto_diag_format(text, sizeof text, PROTO_TYPE_SAVE, pst, &diag);
        send_error(s, id, idlen, PROTO_ERRC_BAD_MESSAGE, diag.field, 0, "%s", text);
        return;
    }
    int rank = find_rank(s, id, idlen);
    if (rank < 0 || !s->core) {
        send_error(s, id, idlen, PROTO_ERRC_OUT_OF_ORDER, "hello", m.step,
                   "save from a peer that is not a rank of the session; send hello first");
        return;
    }
    s->peers[rank].last_seen_ms = now;
    struct proto_saved r = {0};
    r.epoch = m.epoch;
    r.step = m.step;
    if (strlen(m.path) + sizeof QUEUE_SUFFIX > sizeof r.path) {
        send_error(s, id, idlen, PROTO_ERRC_BAD_MESSAGE, "path", m.step, "path too long");
        return;
    }
    snprintf(r.path, sizeof r.path, "%s%s", m.path, QUEUE_SUFFIX);
    int64_t last = assigner_core_last_step(s->core);
    if (last >= 0 && (int64_t)m.step != last) {
        r.ok = false;
        snprintf(r.message, sizeof r.message,
                 "save for step %llu, but the queue is at step %lld: not written",
                 (unsigned long long)m.step, (long long)last);
    } else {
        char err[512];
        r.ok = assigner_core_save(s->core, r.path, err, sizeof err) == 0;
        snprintf(r.message, sizeof r.message, "%s", r.ok ? "" : err);
    }
    if (r.ok) {
        LOG_INFO("queue saved to %s (step %llu, %lld rows filled)", r.path,
                 (unsigned long long)m.step, (long long)assigner_core_queue_fill(s->core));
    } else {
        LOG_LIMITED(SWAV_LOG_WARN, "save refused: %s", r.message);
    }
    if (proto_saved_encode(&s->msg, s->run, &r) == PROTO_OK) {
        send_msg(s, id, idlen, "saved");
    }
}

static void on_message(assigner_server_t *s, int64_t now)
{
    const uint8_t *id = s->rx.identity;
    size_t idlen = s->rx.idlen;
    struct proto_header h;
    struct proto_diag diag;
    struct proto_decode_opts dopts = {.run = s->run};
    enum proto_status st = proto_peek_type(s->rx.frames, s->rx.nframes, &dopts, &h, &diag);
    if (st == PROTO_ERR_WRONG_RUN) {
        proto_peek_type(s->rx.frames, s->rx.nframes, NULL, &h, NULL);
        send_error(s, id, idlen, PROTO_ERRC_WRONG_RUN, "run", 0,
                   "unknown run id '%s': this assigner serves run '%s'", h.run, s->run);
        return;
    }
    if (st != PROTO_OK) {
        char text[400];
        proto_diag_format(text, sizeof text, PROTO_TYPE_NONE, st, &diag);
        send_error(s, id, idlen, PROTO_ERRC_BAD_MESSAGE, diag.field, 0, "%s", text);
        return;
    }
    switch (h.type) {
    case PROTO_TYPE_HELLO:
        if (!s->run[0]) {
            /* adopt the first hello's run id; a bad hello must not adopt it */
            snprintf(s->run, sizeof s->run, "%s", h.run);
            on_hello(s, id, idlen, now);
            if (!s->have_cfg) s->run[0] = '\0';
            else LOG_INFO("serving run '%s'", s->run);
        } else {
            on_hello(s, id, idlen, now);
        }
        break;
    case PROTO_TYPE_EMBED:
        on_embed(s, id, idlen, now);
        break;
    case PROTO_TYPE_SAVE:
        on_save(s, id, idlen, now);
        break;
    default:
        send_error(s, id, idlen, PROTO_ERRC_BAD_MESSAGE, "type", 0,
                   "the assigner does not take '%s' messages", proto_type_name(h.type));
        break;
    }
}

static void check_deadlines(assigner_server_t *s, int64_t now)
{
    if (s->gathering && now >= s->g_deadline) {
        char missing[256] = "";
        size_t n = 0;
        for (uint32_t r = 0; r < s->cfg.world_size && n + 12 < sizeof missing; r++) {
            if (!s->got[r]) n += (size_t)snprintf(missing + n, sizeof missing - n, "%s%u",
                                                  n ? ", " : "", r);
        }
        char why[400];
        snprintf(why, sizeof why, "rank(s) %s sent no embed within %d ms", missing,
                 s->o.embed_timeout_ms);
        LOG_WARN("step %llu: %s; the step is abandoned", (unsigned long long)s->g_step, why);
        abort_gather(s, PROTO_ERRC_MISSING_RANK, "rank", why);
    }
    if (s->hello_deadline && now >= s->hello_deadline) {
        char missing[256] = "";
        size_t n = 0;
        for (uint32_t r = 0; r < s->cfg.world_size && n + 12 < sizeof missing; r++) {
            if (!s->peers[r].pending) n += (size_t)snprintf(missing + n, sizeof missing - n,
                                                            "%s%u", n ? ", " : "", r);
        }
        LOG_WARN("hello round: rank(s) %s did not say hello within %d ms", missing,
                 s->o.hello_timeout_ms);
        for (uint32_t r = 0; r < s->cfg.world_size; r++) {
            if (s->peers[r].pending) {
                send_error(s, s->peers[r].id, s->peers[r].idlen, PROTO_ERRC_MISSING_RANK,
                           "rank", 0, "rank(s) %s did not say hello within %d ms", missing,
                           s->o.hello_timeout_ms);
                s->peers[r].pending = false;
            }
        }
        s->hello_deadline = 0;
    }
}

/* ---- lifecycle ------------------------------------------------------------ */

assigner_server_t *assigner_server_new(const struct assigner_server_opts *opts, char *err,
                                       size_t errlen)
{
    struct assigner_server *s = swav_xcalloc(1, sizeof *s);
    s->o = *opts;
    snprintf(s->endpoint, sizeof s->endpoint, "%s", opts->endpoint);
    snprintf(s->resume, sizeof s->resume, "%s", opts->resume ? opts->resume : "");
    snprintf(s->run, sizeof s->run, "%s", opts->run ? opts->run : "");
    s->o.endpoint = s->endpoint;
    s->o.resume = s->resume;
    s->cached_step = -1;
    s->ctx = zmq_ctx_new();
    ZMQ_CHECK_PTR(s->ctx);
    s->sock = zmq_socket(s->ctx, ZMQ_ROUTER);
    ZMQ_CHECK_PTR(s->sock);
    int one = 1;
    ZMQ_CHECK(zmq_setsockopt(s->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one));
    char cerr[512] = "";
    bool want_allow = opts->curve_allow && *opts->curve_allow;
    if (want_allow && !(opts->curve_secret && *opts->curve_secret)) {
        snprintf(cerr, sizeof cerr, "--curve_allow %s needs --curve_secret", opts->curve_allow);
    } else if (opts->curve_secret && *opts->curve_secret &&
               (proto_socket_curve_server(s->sock, opts->curve_secret, cerr, sizeof cerr) !=
                    PROTO_OK ||
                (want_allow &&
                 !(s->zap = proto_zap_new(s->ctx, opts->curve_allow, cerr, sizeof cerr))))) {
        SWAV_ASSERT(cerr[0]);
    }
    if (cerr[0]) {
        snprintf(err, errlen, "%s", cerr);
        zmq_close(s->sock);
        proto_zap_destroy(&s->zap);
        zmq_ctx_term(s->ctx);
        free(s);
        return NULL;
    }
    if (proto_socket_setup(s->sock, opts->max_msg_bytes, opts->heartbeat_ms,
                           3 * opts->heartbeat_ms) != PROTO_OK ||
        zmq_bind(s->sock, s->endpoint) != 0) {
        snprintf(err, errlen, "cannot bind %s: %s", s->endpoint, zmq_strerror(zmq_errno()));
        zmq_close(s->sock);
        proto_zap_destroy(&s->zap);
        zmq_ctx_term(s->ctx);
        free(s);
        return NULL;
    }
    int gpu = 0;
    const int kind = opts->device && opts->device[0]
                         ? swav_flags_parse_device(opts->device, &gpu) : 0;
    SWAV_ASSERT(kind >= 0); /* main checked the flag */
    if (kind == 1) {
#ifdef SWAV_HAVE_CUDA
        s->backend = sinkhorn_backend_cuda_new(gpu, cerr, sizeof cerr);
#else
        snprintf(cerr, sizeof cerr, "swav-assigner was built without CUDA (nvcc/cuDNN/NCCL "
                 "not found at build time)");
#endif
        if (!s->backend) {
            snprintf(err, errlen, "--device %s: %s", opts->device, cerr);
            zmq_close(s->sock);
            proto_zap_destroy(&s->zap);
            zmq_ctx_term(s->ctx);
            free(s);
            return NULL;
        }
    } else {
        s->backend = sinkhorn_backend_cpu_new(opts->threads);
    }
    proto_rx_init(&s->rx);
    proto_msg_init(&s->msg);
    return s;
}

void assigner_server_stop(assigner_server_t *s)
{
    s->stop = 1;
}

int assigner_server_run(assigner_server_t *s)
{
    LOG_INFO("listening on %s (run %s, %s backend, %d threads, embed timeout %d ms)",
             s->endpoint, s->run[0] ? s->run : "<first hello>", s->backend->name, s->o.threads,
             s->o.embed_timeout_ms);
    while (!s->stop) {
        int64_t now = swav_now_ms();
        int64_t wait = 200;
        if (s->gathering && s->g_deadline - now < wait) wait = s->g_deadline - now;
        if (s->hello_deadline && s->hello_deadline - now < wait) wait = s->hello_deadline - now;
        if (wait < 0) wait = 0;
        zmq_pollitem_t item = {.socket = s->sock, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&item, 1, (long)wait);
        if (rc < 0) {
            if (zmq_errno() == EINTR) continue;
            LOG_ERROR("zmq_poll: %s", zmq_strerror(zmq_errno()));
            return -1;
        }
        /* drain what is there, then look at the clock */
        for (int budget = 0; rc > 0 && budget < 64 && !s->stop; budget++) {
            enum proto_status st = proto_recv(s->sock, &s->rx, true, ZMQ_DONTWAIT);
            if (st == PROTO_ERR_AGAIN) break;
            now = swav_now_ms();
            if (st == PROTO_OK) {
                on_message(s, now);
            } else if (st == PROTO_ERR_ZMQ) {
                if (zmq_errno() == EINTR) break;
                LOG_ERROR("receive: %s", zmq_strerror(zmq_errno()));
                return -1;
            } else if (s->rx.idlen > 0) {
                send_error(s, s->rx.identity, s->rx.idlen, PROTO_ERRC_BAD_MESSAGE, "", 0,
                           "unreadable message: %s", proto_status_str(st));
            }
        }
        check_deadlines(s, swav_now_ms());
        if (s->zap) {
            uint64_t ok = 0, refused = 0;
            proto_zap_counts(s->zap, &ok, &refused);
            if (refused > s->zap_refused) {
                LOG_WARN("refused %llu connection(s): CURVE key not in --curve_allow %s",
                         (unsigned long long)(refused - s->zap_refused), s->o.curve_allow);
                s->zap_refused = refused;
            }
        }
    }
    LOG_INFO("stopping after %llu steps (%llu messages refused)",
             (unsigned long long)s->steps_done, (unsigned long long)s->refused);
    return 0;
}

void assigner_server_destroy(assigner_server_t **ps)
{
    struct assigner_server *s = *ps;
    if (!s) return;
    drop_session(s);
    sinkhorn_backend_destroy(&s->backend);
    proto_rx_free(&s->rx);
    proto_msg_free(&s->msg);
    zmq_close(s->sock);
    proto_zap_destroy(&s->zap);
    zmq_ctx_term(s->ctx);
    free(s);
    *ps = NULL;
}
