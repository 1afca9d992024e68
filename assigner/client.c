/* Trainer side of the assigner link: see client.h. */
#include "client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/check.h"
#include "common/timeutil.h"
#include "proto/wire.h"

struct assigner_client {
    struct assigner_client_config cfg;
    char endpoint[PROTO_MAX_STR + 1];
    char run[PROTO_MAX_ID + 1];
    void *ctx;
    bool own_ctx;
    void *sock;
    struct proto_msg msg;
    struct proto_rx rx;
    struct proto_error last;
};

const char *assigner_client_status_str(enum assigner_client_status st)
{
    switch (st) {
    case ASSIGNER_CLIENT_OK: return "ok";
    case ASSIGNER_CLIENT_ERR_TIMEOUT: return "timeout";
    case ASSIGNER_CLIENT_ERR_REFUSED: return "refused";
    case ASSIGNER_CLIENT_ERR_PROTOCOL: return "protocol error";
    case ASSIGNER_CLIENT_ERR_ZMQ: return "zmq error";
    }
    return "?";
}

__attribute__((format(printf, 3, 4))) static void set_last(assigner_client_t *c,
                                                           enum proto_errcode code,
                                                           const char *fmt, ...)
{
    memset(&c->last, 0, sizeof c->last);
    c->last.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last.message, sizeof c->last.message, fmt, ap);
    va_end(ap);
}

assigner_client_t *assigner_client_new(void *zmq_ctx, const struct assigner_client_config *cfg,
                                       char *err, size_t errlen)
{
    if (!cfg->endpoint || !cfg->run || !cfg->run[0] || strlen(cfg->run) > PROTO_MAX_ID ||
        strlen(cfg->endpoint) > PROTO_MAX_STR) {
        snprintf(err, errlen, "assigner client: endpoint and run id (1..%d bytes) are required",
                 PROTO_MAX_ID);
        return NULL;
    }
    if (cfg->n_crops_for_assign < 1 || cfg->n_crops_for_assign > PROTO_MAX_LIST ||
        cfg->rank >= cfg->world_size) {
        snprintf(err, errlen, "assigner client: bad rank %u / world %u / %u assign crops",
                 cfg->rank, cfg->world_size, cfg->n_crops_for_assign);
        return NULL;
    }
    struct assigner_client *c = swav_xcalloc(1, sizeof *c);
    c->cfg = *cfg;
    snprintf(c->endpoint, sizeof c->endpoint, "%s", cfg->endpoint);
    snprintf(c->run, sizeof c->run, "%s", cfg->run);
    c->cfg.endpoint = c->endpoint;
    c->cfg.run = c->run;
    c->own_ctx = zmq_ctx == NULL;
    c->ctx = zmq_ctx ? zmq_ctx : zmq_ctx_new();
    ZMQ_CHECK_PTR(c->ctx);
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    ZMQ_CHECK_PTR(c->sock);
    if (cfg->curve_server_public && *cfg->curve_server_public) {
        char cerr[512];
        if (proto_socket_curve_client(c->sock, cfg->curve_server_public,
                                      cfg->curve_secret && *cfg->curve_secret ? cfg->curve_secret
                                                                              : NULL,
                                      cerr, sizeof cerr) != PROTO_OK) {
            snprintf(err, errlen, "assigner client: %s", cerr);
            zmq_close(c->sock);
            if (c->own_ctx) zmq_ctx_term(c->ctx);
            free(c);
            return NULL;
        }
    }
    if (proto_socket_setup(c->sock, -1, cfg->heartbeat_ms, 3 * cfg->heartbeat_ms) != PROTO_OK ||
        zmq_connect(c->sock, c->endpoint) != 0) {
        snprintf(err, errlen, "assigner client: cannot connect to %s: %s", c->endpoint,
                 zmq_strerror(zmq_errno()));
        zmq_close(c->sock);
        if (c->own_ctx) zmq_ctx_term(c->ctx);
        free(c);
        return NULL;
    }
    proto_msg_init(&c->msg);
    proto_rx_init(&c->rx);
    return c;
}

void assigner_client_destroy(assigner_client_t **pc)
{
    struct assigner_client *c = *pc;
    if (!c) return;
    proto_msg_free(&c->msg);
    proto_rx_free(&c->rx);
    zmq_close(c->sock);
    if (c->own_ctx) zmq_ctx_term(c->ctx);
    free(c);
    *pc = NULL;
}

const struct proto_error *assigner_client_last_error(const assigner_client_t *c)
{
    return &c->last;
}

void *assigner_client_socket(assigner_client_t *c)
{
    return c->sock;
}

static enum assigner_client_status send_now(assigner_client_t *c, enum proto_status enc)
{
    if (enc != PROTO_OK) {
        set_last(c, PROTO_ERRC_BAD_MESSAGE, "cannot encode: %s", proto_status_str(enc));
        return ASSIGNER_CLIENT_ERR_PROTOCOL;
    }
    /* never block: a dead assigner fills the pipe, and the caller has a deadline */
    enum proto_status st = proto_send(c->sock, NULL, 0, &c->msg, ZMQ_DONTWAIT);
    if (st == PROTO_ERR_AGAIN) {
        set_last(c, PROTO_ERRC_TIMEOUT, "send to %s: queue full (assigner gone?)", c->endpoint);
        return ASSIGNER_CLIENT_ERR_TIMEOUT;
    }
    if (st != PROTO_OK) {
        set_last(c, PROTO_ERRC_INTERNAL, "send: %s (%s)", proto_status_str(st),
                 zmq_strerror(zmq_errno()));
        return ASSIGNER_CLIENT_ERR_ZMQ;
    }
    return ASSIGNER_CLIENT_OK;
}

/* Receive until a message of type `want` (or an error) arrives, or the
 * deadline passes.  accept(c, ctx) says whether a decoded message of that
 * type is the awaited one (1), stale (0: skip), or bad (-1). */
typedef int (*accept_fn)(assigner_client_t *c, void *ctx);

static enum assigner_client_status await(assigner_client_t *c, enum proto_type want,
                                         uint64_t step, bool match_step, int timeout_ms,
                                         accept_fn accept, void *ctx)
{
    int64_t deadline = swav_now_ms() + (timeout_ms < 0 ? 0 : timeout_ms);
    for (;;) {
        int64_t left = deadline - swav_now_ms();
        if (left < 0) left = 0;
        zmq_pollitem_t item = {.socket = c->sock, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&item, 1, (long)left);
        if (rc < 0 && zmq_errno() != EINTR) {
            set_last(c, PROTO_ERRC_INTERNAL, "poll: %s", zmq_strerror(zmq_errno()));
            return ASSIGNER_CLIENT_ERR_ZMQ;
        }
        if (rc <= 0) {
            if (swav_now_ms() >= deadline) {
                set_last(c, PROTO_ERRC_TIMEOUT, "no %s from the assigner at %s within %d ms",
                         proto_type_name(want), c->endpoint, timeout_ms);
                c->last.step = step;
                return ASSIGNER_CLIENT_ERR_TIMEOUT;
            }
            continue;
        }
        enum proto_status st = proto_recv(c->sock, &c->rx, false, ZMQ_DONTWAIT);
        if (st == PROTO_ERR_AGAIN) continue;
        if (st != PROTO_OK) {
            set_last(c, PROTO_ERRC_BAD_MESSAGE, "receive: %s", proto_status_str(st));
            return st == PROTO_ERR_ZMQ ? ASSIGNER_CLIENT_ERR_ZMQ : ASSIGNER_CLIENT_ERR_PROTOCOL;
        }
        struct proto_header h;
        struct proto_diag diag;
        /* errors are read whatever their run id: "unknown run id" comes
         * under the assigner's run */
        struct proto_decode_opts any = {.run = NULL};
        st = proto_peek_type(c->rx.frames, c->rx.nframes, &any, &h, &diag);
        if (st != PROTO_OK) {
            continue; /* unreadable: skip */
        }
        if (h.type != PROTO_TYPE_ERROR && strcmp(h.run, c->run) != 0) {
            continue; /* another run's */
        }
        if (h.type == PROTO_TYPE_ERROR) {
            struct proto_error e;
            if (proto_error_decode(c->rx.frames, c->rx.nframes, &any, &e, NULL) != PROTO_OK) {
                continue;
            }
            /* an error about another request is stale (hello's carry step 0) */
            if (match_step && e.step != step) continue;
            c->last = e;
            return ASSIGNER_CLIENT_ERR_REFUSED;
        }
        if (h.type != want) continue;
        int a = accept(c, ctx);
        if (a > 0) return ASSIGNER_CLIENT_OK;
        if (a < 0) return ASSIGNER_CLIENT_ERR_PROTOCOL;
    }
}

struct hello_ctx {
    struct proto_welcome *out;
};

static int accept_welcome(assigner_client_t *c, void *vctx)
{
    struct hello_ctx *h = vctx;
    struct proto_welcome w;
    struct proto_decode_opts dopts = {.run = c->run};
    struct proto_diag diag;
    enum proto_status st = proto_welcome_decode(c->rx.frames, c->rx.nframes, &dopts, &w, &diag);
    if (st != PROTO_OK) {
        char text[400];
        proto_diag_format(text, sizeof text, PROTO_TYPE_WELCOME, st, &diag);
        set_last(c, PROTO_ERRC_BAD_MESSAGE, "%s", text);
        return -1;
    }
    if (w.rank != c->cfg.rank) return 0;
    if (h->out) *h->out = w;
    return 1;
}

enum assigner_client_status assigner_client_hello(assigner_client_t *c,
                                                  const uint8_t *nccl_id,
                                                  const char *resume_path,
                                                  uint32_t resume_epoch, int timeout_ms,
                                                  struct proto_welcome *welcome)
{
    struct proto_hello h;
    memset(&h, 0, sizeof h);
    const struct assigner_client_config *k = &c->cfg;
    h.rank = k->rank;
    h.world_size = k->world_size;
    h.nmb_prototypes = k->nmb_prototypes;
    h.feat_dim = k->feat_dim;
    h.epsilon = k->epsilon;
    h.sinkhorn_iterations = k->sinkhorn_iterations;
    h.queue_length = k->queue_length;
    h.epoch_queue_starts = k->epoch_queue_starts;
    h.n_crops_for_assign = k->n_crops_for_assign;
    memcpy(h.crops_for_assign, k->crops_for_assign, sizeof h.crops_for_assign);
    h.batch_size = k->batch_size;
    h.resume_epoch = resume_epoch;
    if (resume_path) {
        if (strlen(resume_path) > PROTO_MAX_STR) {
            set_last(c, PROTO_ERRC_BAD_MESSAGE, "resume_path too long");
            return ASSIGNER_CLIENT_ERR_PROTOCOL;
        }
        snprintf(h.resume_path, sizeof h.resume_path, "%s", resume_path);
    }
    if (nccl_id) {
        h.has_nccl_id = true;
        memcpy(h.nccl_id, nccl_id, sizeof h.nccl_id);
    }
    enum assigner_client_status st = send_now(c, proto_hello_encode(&c->msg, c->run, &h));
    if (st != ASSIGNER_CLIENT_OK) return st;
    struct hello_ctx ctx = {welcome};
    return await(c, PROTO_TYPE_WELCOME, 0, true, timeout_ms, accept_welcome, &ctx);
}

enum assigner_client_status assigner_client_embed(assigner_client_t *c, uint32_t epoch,
                                                  uint64_t step, const float *embeddings,
                                                  const float *prototypes)
{
    const struct assigner_client_config *k = &c->cfg;
    struct proto_embed e;
    memset(&e, 0, sizeof e);
    e.epoch = epoch;
    e.step = step;
    e.rank = k->rank;
    uint64_t ed[3] = {k->n_crops_for_assign, k->batch_size, k->feat_dim};
    proto_tensor_set(&e.embeddings, PROTO_DTYPE_F32, embeddings, 3, ed);
    if (prototypes) {
        uint64_t pd[2] = {k->nmb_prototypes, k->feat_dim};
        e.has_prototypes = true;
        proto_tensor_set(&e.prototypes, PROTO_DTYPE_F32, prototypes, 2, pd);
    }
    return send_now(c, proto_embed_encode(&c->msg, c->run, &e));
}

struct codes_ctx {
    uint64_t step;
    float *codes;
    struct proto_codes_stats *stats;
};

static int accept_codes(assigner_client_t *c, void *vctx)
{
    struct codes_ctx *x = vctx;
    const struct assigner_client_config *k = &c->cfg;
    struct proto_codes m;
    struct proto_decode_opts dopts = {.run = c->run};
    struct proto_diag diag;
    enum proto_status st = proto_codes_decode(c->rx.frames, c->rx.nframes, &dopts, &m, &diag);
    if (st != PROTO_OK) {
        char text[400];
        proto_diag_format(text, sizeof text, PROTO_TYPE_CODES, st, &diag);
        set_last(c, PROTO_ERRC_BAD_MESSAGE, "%s", text);
        return -1;
    }
    if (m.step != x->step) return 0; /* a late reply to an abandoned step */
    if (m.rank != k->rank || m.q.dtype != PROTO_DTYPE_F32 || m.q.ndim != 3 ||
        m.q.shape[0] != k->n_crops_for_assign || m.q.shape[1] != k->batch_size ||
        m.q.shape[2] != k->nmb_prototypes) {
        set_last(c, PROTO_ERRC_BAD_MESSAGE, "codes of rank %u with an unexpected shape", m.rank);
        return -1;
    }
    memcpy(x->codes, m.q.data, (size_t)m.q.nbytes);
    if (x->stats) *x->stats = m.stats;
    return 1;
}

enum assigner_client_status assigner_client_wait_codes(assigner_client_t *c, uint64_t step,
                                                       int timeout_ms, float *codes,
                                                       struct proto_codes_stats *stats)
{
    struct codes_ctx ctx = {step, codes, stats};
    return await(c, PROTO_TYPE_CODES, step, true, timeout_ms, accept_codes, &ctx);
}

struct saved_ctx {
    uint64_t step;
    struct proto_saved *out;
    bool ok;
};

static int accept_saved(assigner_client_t *c, void *vctx)
{
    struct saved_ctx *x = vctx;
    struct proto_saved m;
    struct proto_decode_opts dopts = {.run = c->run};
    if (proto_saved_decode(c->rx.frames, c->rx.nframes, &dopts, &m, NULL) != PROTO_OK) {
        set_last(c, PROTO_ERRC_BAD_MESSAGE, "a saved reply that does not decode");
        return -1;
    }
    if (m.step != x->step) return 0;
    if (x->out) *x->out = m;
    x->ok = m.ok;
    if (!m.ok) {
        set_last(c, PROTO_ERRC_INTERNAL, "%s", m.message);
        c->last.step = m.step;
    }
    return 1;
}

enum assigner_client_status assigner_client_save(assigner_client_t *c, uint32_t epoch,
                                                 uint64_t step, const char *checkpoint_path,
                                                 int timeout_ms, struct proto_saved *saved)
{
    struct proto_save m;
    memset(&m, 0, sizeof m);
    m.epoch = epoch;
    m.step = step;
    if (!checkpoint_path || !checkpoint_path[0] || strlen(checkpoint_path) > PROTO_MAX_STR) {
        set_last(c, PROTO_ERRC_BAD_MESSAGE, "save: checkpoint path empty or too long");
        return ASSIGNER_CLIENT_ERR_PROTOCOL;
    }
    snprintf(m.path, sizeof m.path, "%s", checkpoint_path);
    enum assigner_client_status st = send_now(c, proto_save_encode(&c->msg, c->run, &m));
    if (st != ASSIGNER_CLIENT_OK) return st;
    struct saved_ctx ctx = {step, saved, false};
    st = await(c, PROTO_TYPE_SAVED, step, true, timeout_ms, accept_saved, &ctx);
    if (st == ASSIGNER_CLIENT_OK && !ctx.ok) return ASSIGNER_CLIENT_ERR_REFUSED;
    return st;
}
