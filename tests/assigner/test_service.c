/* Fault test through real ZeroMQ sockets to a real swav-assigner process
 * (argv[1]), two trainer ranks on the client API, and an in-process core fed
 * only the accepted steps as the expectation:
 *  - hello refusals: a config field that disagrees (the error names it), a
 *    duplicate rank, an unknown run id;
 *  - bad embeds: NaN, wrong shapes, missing prototypes, a stale step, an
 *    unknown run id -- each answered with `error`, and the next good step's
 *    codes equal the core's that never saw the bad input (state unchanged);
 *  - a rank that never sends its embed: the other gets an error naming it;
 *  - save, kill -9, the clients see timeouts (bounded, no hang), restart,
 *    hello with the checkpoint: the queue comes back from the save and the
 *    next step's codes equal those of an uninterrupted run.
 * Codes must match within 1e-6 relative. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "assigner/client.h"
#include "assigner/core.h"
#include "assigner/sinkhorn.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/timeutil.h"
#include "proto/wire.h"

enum { W = 2, BS = 4, K = 10, D = 8, NC = 2, QL = 16 };
#define RUN "test-run"

static int failures;
#define EXPECT(cond, ...)                                        \
    do {                                                         \
        if (!(cond)) {                                           \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                        \
            fprintf(stderr, "\n");                               \
            failures++;                                          \
        }                                                        \
    } while (0)

static char g_endpoint[128];
static const char *g_binary;

static pid_t start_assigner(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        execl(g_binary, g_binary, "--endpoint", g_endpoint, "--embed_timeout_ms", "800",
              "--hello_timeout_ms", "2500", "--stale_peer_ms", "60000", "--threads", "2",
              "--log_every", "1", (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void config_for(struct assigner_client_config *c, int rank, const char *run)
{
    memset(c, 0, sizeof *c);
    c->endpoint = g_endpoint;
    c->run = run;
    c->rank = (uint32_t)rank;
    c->world_size = W;
    c->nmb_prototypes = K;
    c->feat_dim = D;
    c->epsilon = 0.05;
    c->sinkhorn_iterations = 3;
    c->queue_length = QL;
    c->epoch_queue_starts = 0;
    c->n_crops_for_assign = NC;
    c->crops_for_assign[0] = 0;
    c->crops_for_assign[1] = 1;
    c->batch_size = BS;
}

struct hello_job {
    assigner_client_t *c;
    const char *resume;
    enum assigner_client_status st;
    struct proto_welcome w;
    pthread_t th;
};

static void *hello_thread(void *arg)
{
    struct hello_job *j = arg;
    uint8_t nccl[PROTO_NCCL_ID_BYTES];
    memset(nccl, 0xab, sizeof nccl);
    j->st = assigner_client_hello(j->c, nccl, j->resume, 0, 10000, &j->w);
    return NULL;
}

static void hello_all(assigner_client_t **cl, const char *resume, struct proto_welcome *w0)
{
    struct hello_job jobs[W];
    for (int r = 0; r < W; r++) {
        jobs[r] = (struct hello_job){.c = cl[r], .resume = resume};
        pthread_create(&jobs[r].th, NULL, hello_thread, &jobs[r]);
    }
    for (int r = 0; r < W; r++) {
        pthread_join(jobs[r].th, NULL);
        EXPECT(jobs[r].st == ASSIGNER_CLIENT_OK, "hello of rank %d: %s: %s", r,
               assigner_client_status_str(jobs[r].st),
               assigner_client_last_error(cl[r])->message);
        EXPECT(jobs[r].w.has_nccl_id && jobs[r].w.nccl_id[5] == 0xab, "NCCL id not passed on");
    }
    if (w0) *w0 = jobs[0].w;
}

static void fill_unit(float *x, int n, struct swav_rng *r)
{
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int t = 0; t < D; t++) {
            x[i * D + t] = (float)swav_rng_normal(r);
            s += (double)x[i * D + t] * x[i * D + t];
        }
        for (int t = 0; t < D; t++) x[i * D + t] = (float)(x[i * D + t] / sqrt(s));
    }
}

struct step_data {
    float emb[W][NC * BS * D];
    float protos[K * D];
};

static void make_step(struct step_data *s, uint32_t step)
{
    struct swav_rng r;
    swav_rng_init(&r, 99, 0, step, 0);
    for (int k = 0; k < W; k++) fill_unit(s->emb[k], NC * BS, &r);
    fill_unit(s->protos, K, &r);
}

/* The expectation: the same core fed the accepted steps only. */
static assigner_core_t *g_expect;

static void expect_step(const struct step_data *s, uint32_t epoch, uint64_t step)
{
    for (int r = 0; r < W; r++)
        for (int i = 0; i < NC; i++)
            memcpy(assigner_core_embed_slot(g_expect, i, r), s->emb[r] + i * BS * D,
                   sizeof(float) * BS * D);
    char err[256];
    int rc = assigner_core_step(g_expect, epoch, (int64_t)step, s->protos, NULL, err, sizeof err);
    EXPECT(rc == 0, "expected core: %s", err);
}

static double compare_codes(const float *got, int rank)
{
    double worst = 0;
    for (int i = 0; i < NC; i++) {
        const float *e = assigner_core_codes(g_expect, i, rank);
        for (int j = 0; j < BS * K; j++) {
            double d = fabs((double)got[i * BS * K + j] - e[j]) / (fabs((double)e[j]) + 1e-12);
            if (d > worst) worst = d;
        }
    }
    return worst;
}

/* A good step through both ranks, checked against the expectation. */
static void good_step(assigner_client_t **cl, uint32_t epoch, uint64_t step, const char *what)
{
    struct step_data s;
    make_step(&s, (uint32_t)step);
    for (int r = 0; r < W; r++) {
        EXPECT(assigner_client_embed(cl[r], epoch, step, s.emb[r], r == 0 ? s.protos : NULL) ==
                   ASSIGNER_CLIENT_OK, "embed");
    }
    expect_step(&s, epoch, step);
    float codes[NC * BS * K];
    for (int r = 0; r < W; r++) {
        struct proto_codes_stats st;
        enum assigner_client_status cs = assigner_client_wait_codes(cl[r], step, 5000, codes, &st);
        EXPECT(cs == ASSIGNER_CLIENT_OK, "%s: codes of rank %d, step %llu: %s: %s", what, r,
               (unsigned long long)step, assigner_client_status_str(cs),
               assigner_client_last_error(cl[r])->message);
        if (cs != ASSIGNER_CLIENT_OK) continue;
        double worst = compare_codes(codes, r);
        EXPECT(worst <= 1e-6, "%s: codes of rank %d step %llu differ from the expectation by "
               "%.3g relative", what, r, (unsigned long long)step, worst);
        EXPECT(st.entropy > 0 && st.entropy <= log(K) + 1e-3 && st.prototypes_used >= 1 &&
                   st.prototypes_used <= K, "statistics: entropy %g, used %u", st.entropy,
               st.prototypes_used);
        if (r == 0) {
            printf("%s: step %llu ok (worst rel %.2g, entropy %.4f, %u prototypes, queue %s, "
                   "fill %llu)\n", what, (unsigned long long)step, worst, st.entropy,
                   st.prototypes_used, st.queue_used ? "used" : "not used",
                   (unsigned long long)st.queue_fill);
        }
    }
}

/* Expect an error reply to rank r's wait for `step`. */
static void expect_refused(assigner_client_t *c, uint64_t step, enum proto_errcode code,
                           const char *field, const char *what)
{
    float codes[NC * BS * K];
    enum assigner_client_status st = assigner_client_wait_codes(c, step, 5000, codes, NULL);
    const struct proto_error *e = assigner_client_last_error(c);
    EXPECT(st == ASSIGNER_CLIENT_ERR_REFUSED && e->code == code && strcmp(e->field, field) == 0,
           "%s: got %s, code %d field '%s': %s", what, assigner_client_status_str(st), e->code,
           e->field, e->message);
    printf("%s -> error %s, field '%s': %s\n", what, proto_errcode_str(e->code), e->field,
           e->message);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SWAV_ASSIGNER\n", argv[0]);
        return 2;
    }
    g_binary = argv[1];
    swav_log_init("test-service", -1);
    char dir[] = "/tmp/swav-test-assigner-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    snprintf(g_endpoint, sizeof g_endpoint, "ipc://%s/assigner.ipc", dir);
    char ckpt[256];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", dir);

    struct assigner_config ecfg = {.world_size = W, .batch_size = BS, .nmb_prototypes = K,
                                   .feat_dim = D, .ncrops_assign = NC, .epsilon = 0.05f,
                                   .sinkhorn_iterations = 3, .queue_length = QL,
                                   .epoch_queue_starts = 0, .collapse_entropy_frac = 0.95};
    struct sinkhorn_backend *be = sinkhorn_backend_cpu_new(2);
    char err[256];
    g_expect = assigner_core_new(&ecfg, be, err, sizeof err);

    pid_t pid = start_assigner();
    void *ctx = zmq_ctx_new();
    assigner_client_t *cl[W];
    struct assigner_client_config cc;
    for (int r = 0; r < W; r++) {
        config_for(&cc, r, RUN);
        cl[r] = assigner_client_new(ctx, &cc, err, sizeof err);
    }
    hello_all(cl, NULL, NULL);

    /* ---- hello refusals ---- */
    {
        config_for(&cc, 1, RUN);
        cc.nmb_prototypes = K + 1;
        assigner_client_t *x = assigner_client_new(ctx, &cc, err, sizeof err);
        enum assigner_client_status st = assigner_client_hello(x, NULL, NULL, 0, 3000, NULL);
        const struct proto_error *e = assigner_client_last_error(x);
        EXPECT(st == ASSIGNER_CLIENT_ERR_REFUSED && e->code == PROTO_ERRC_REFUSED_CONFIG &&
                   strcmp(e->field, "nmb_prototypes") == 0,
               "disagreeing hello: %s field '%s'", assigner_client_status_str(st), e->field);
        printf("hello with K=%d -> field '%s': %s\n", K + 1, e->field, e->message);
        assigner_client_destroy(&x);

        config_for(&cc, 1, RUN);
        x = assigner_client_new(ctx, &cc, err, sizeof err);
        st = assigner_client_hello(x, NULL, NULL, 0, 3000, NULL);
        EXPECT(st == ASSIGNER_CLIENT_ERR_REFUSED && strcmp(e->field, "rank") == 0,
               "duplicate rank: %s field '%s'", assigner_client_status_str(st), e->field);
        printf("duplicate rank 1 -> field '%s': %s\n", e->field, e->message);
        assigner_client_destroy(&x);

        config_for(&cc, 0, "other-run");
        x = assigner_client_new(ctx, &cc, err, sizeof err);
        st = assigner_client_hello(x, NULL, NULL, 0, 3000, NULL);
        e = assigner_client_last_error(x);
        EXPECT(st == ASSIGNER_CLIENT_ERR_REFUSED && e->code == PROTO_ERRC_WRONG_RUN,
               "unknown run id in hello: %s code %d", assigner_client_status_str(st), e->code);
        printf("hello of run other-run -> %s: %s\n", proto_errcode_str(e->code), e->message);
        /* and an embed of that run */
        struct step_data s;
        make_step(&s, 0);
        assigner_client_embed(x, 0, 0, s.emb[0], s.protos);
        expect_refused(x, 0, PROTO_ERRC_WRONG_RUN, "run", "embed of an unknown run id");
        assigner_client_destroy(&x);
    }

    good_step(cl, 0, 0, "first step");

    /* ---- bad embeds: each refused, state unchanged ---- */
    struct step_data s;
    make_step(&s, 1);
    {
        float bad[NC * BS * D];
        memcpy(bad, s.emb[1], sizeof bad);
        bad[BS * D + 3] = NAN;
        assigner_client_embed(cl[1], 0, 1, bad, NULL);
        expect_refused(cl[1], 1, PROTO_ERRC_BAD_MESSAGE, "embeddings", "embed with a NaN");
        bad[BS * D + 3] = INFINITY;
        assigner_client_embed(cl[1], 0, 1, bad, NULL);
        expect_refused(cl[1], 1, PROTO_ERRC_BAD_MESSAGE, "embeddings", "embed with an Inf");
        float badp[K * D];
        memcpy(badp, s.protos, sizeof badp);
        badp[7] = NAN;
        assigner_client_embed(cl[0], 0, 1, s.emb[0], badp);
        expect_refused(cl[0], 1, PROTO_ERRC_BAD_MESSAGE, "prototypes", "prototypes with a NaN");
        assigner_client_embed(cl[0], 0, 1, s.emb[0], NULL);
        expect_refused(cl[0], 1, PROTO_ERRC_BAD_MESSAGE, "prototypes",
                       "rank 0 without prototypes");

        /* wrong shape, crafted on rank 1's socket */
        struct proto_msg m;
        proto_msg_init(&m);
        struct proto_embed e = {.epoch = 0, .step = 1, .rank = 1};
        uint64_t dims[3] = {NC, BS - 1, D};
        proto_tensor_set(&e.embeddings, PROTO_DTYPE_F32, s.emb[1], 3, dims);
        proto_embed_encode(&m, RUN, &e);
        proto_send(assigner_client_socket(cl[1]), NULL, 0, &m, 0);
        expect_refused(cl[1], 1, PROTO_ERRC_BAD_MESSAGE, "embeddings", "embed of a wrong shape");
        uint64_t pd[2] = {K - 1, D}; /* (proto itself refuses a D that disagrees) */
        struct proto_embed e0 = {.epoch = 0, .step = 1, .rank = 0, .has_prototypes = true};
        uint64_t ed[3] = {NC, BS, D};
        proto_tensor_set(&e0.embeddings, PROTO_DTYPE_F32, s.emb[0], 3, ed);
        proto_tensor_set(&e0.prototypes, PROTO_DTYPE_F32, s.protos, 2, pd);
        proto_embed_encode(&m, RUN, &e0);
        proto_send(assigner_client_socket(cl[0]), NULL, 0, &m, 0);
        expect_refused(cl[0], 1, PROTO_ERRC_BAD_MESSAGE, "prototypes",
                       "prototypes of a wrong shape");
        /* a rank claiming another's number */
        struct proto_embed e2 = {.epoch = 0, .step = 1, .rank = 0};
        proto_tensor_set(&e2.embeddings, PROTO_DTYPE_F32, s.emb[1], 3, ed);
        proto_embed_encode(&m, RUN, &e2);
        proto_send(assigner_client_socket(cl[1]), NULL, 0, &m, 0);
        expect_refused(cl[1], 1, PROTO_ERRC_OUT_OF_ORDER, "hello",
                       "embed under another rank's number");
        proto_msg_free(&m);

        /* stale step */
        assigner_client_embed(cl[1], 0, 0, s.emb[1], NULL);
        expect_refused(cl[1], 0, PROTO_ERRC_OUT_OF_ORDER, "step", "embed of a stale step");
    }
    good_step(cl, 0, 1, "after the bad inputs");

    /* a duplicate embed within a gather */
    make_step(&s, 2);
    assigner_client_embed(cl[1], 0, 2, s.emb[1], NULL);
    assigner_client_embed(cl[1], 0, 2, s.emb[1], NULL);
    {
        /* the first is accepted (no reply yet); the second refused */
        float codes[NC * BS * K];
        enum assigner_client_status st = assigner_client_wait_codes(cl[1], 2, 3000, codes, NULL);
        const struct proto_error *e = assigner_client_last_error(cl[1]);
        EXPECT(st == ASSIGNER_CLIENT_ERR_REFUSED && strcmp(e->field, "rank") == 0,
               "duplicate embed: %s field '%s'", assigner_client_status_str(st), e->field);
        printf("duplicate embed -> field '%s': %s\n", e->field, e->message);
    }
    assigner_client_embed(cl[0], 0, 2, s.emb[0], s.protos);
    expect_step(&s, 0, 2);
    for (int r = 0; r < W; r++) {
        float codes[NC * BS * K];
        enum assigner_client_status st = assigner_client_wait_codes(cl[r], 2, 5000, codes, NULL);
        EXPECT(st == ASSIGNER_CLIENT_OK && compare_codes(codes, r) <= 1e-6,
               "step 2 after a duplicate: %s", assigner_client_status_str(st));
    }

    /* ---- a missing rank ---- */
    make_step(&s, 3);
    int64_t t0 = swav_now_ms();
    assigner_client_embed(cl[0], 0, 3, s.emb[0], s.protos);
    expect_refused(cl[0], 3, PROTO_ERRC_MISSING_RANK, "rank", "rank 1 silent");
    EXPECT(strstr(assigner_client_last_error(cl[0])->message, "rank(s) 1 ") != NULL,
           "the error does not name rank 1: %s", assigner_client_last_error(cl[0])->message);
    printf("  (after %lld ms)\n", (long long)(swav_now_ms() - t0));
    good_step(cl, 0, 3, "after a missing rank");
    good_step(cl, 1, 4, "epoch 1");

    /* ---- save, kill, restart ---- */
    struct proto_saved sv;
    enum assigner_client_status st = assigner_client_save(cl[0], 1, 4, ckpt, 5000, &sv);
    EXPECT(st == ASSIGNER_CLIENT_OK && sv.ok, "save: %s: %s", assigner_client_status_str(st),
           assigner_client_last_error(cl[0])->message);
    struct stat stt;
    char qpath[300];
    snprintf(qpath, sizeof qpath, "%s.queue", ckpt);
    EXPECT(stat(qpath, &stt) == 0 && strcmp(sv.path, qpath) == 0, "queue file %s", qpath);
    st = assigner_client_save(cl[0], 1, 3, ckpt, 5000, &sv);
    EXPECT(st == ASSIGNER_CLIENT_ERR_REFUSED && !sv.ok, "save for a step that is not the "
           "queue's accepted");

    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    make_step(&s, 5);
    t0 = swav_now_ms();
    for (int r = 0; r < W; r++) {
        assigner_client_embed(cl[r], 1, 5, s.emb[r], r == 0 ? s.protos : NULL);
    }
    for (int r = 0; r < W; r++) {
        float codes[NC * BS * K];
        st = assigner_client_wait_codes(cl[r], 5, 700, codes, NULL);
        EXPECT(st == ASSIGNER_CLIENT_ERR_TIMEOUT, "dead assigner: %s",
               assigner_client_status_str(st));
    }
    int64_t waited = swav_now_ms() - t0;
    printf("assigner killed: both ranks got %s after %lld ms: %s\n",
           assigner_client_status_str(st), (long long)waited,
           assigner_client_last_error(cl[0])->message);
    EXPECT(waited < 5000, "waits not bounded: %lld ms", (long long)waited);

    pid = start_assigner();
    struct proto_welcome w;
    hello_all(cl, ckpt, &w);
    EXPECT(w.step == 4 && w.queue_fill == (uint64_t)QL, "welcome after restart: step %llu, "
           "fill %llu", (unsigned long long)w.step, (unsigned long long)w.queue_fill);
    printf("restarted: welcome step %llu, queue fill %llu of %u\n", (unsigned long long)w.step,
           (unsigned long long)w.queue_fill, w.queue_length);
    good_step(cl, 1, 5, "after restart (queue restored)");
    good_step(cl, 1, 6, "after restart");

    /* a rank's process restarts (new socket, old one closed): its hello takes
     * the rank over at once, the group re-forms, steps go on */
    assigner_client_destroy(&cl[1]);
    config_for(&cc, 1, RUN);
    cl[1] = assigner_client_new(ctx, &cc, err, sizeof err);
    swav_sleep_ms(200);
    hello_all(cl, NULL, &w);
    EXPECT(w.step == 6, "welcome after a rank restart: step %llu", (unsigned long long)w.step);
    good_step(cl, 1, 7, "after a rank restart");

    /* ---- a rank that never says hello: a fresh assigner, rank 0 alone ---- */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    pid = start_assigner();
    {
        config_for(&cc, 0, RUN);
        assigner_client_t *x = assigner_client_new(ctx, &cc, err, sizeof err);
        t0 = swav_now_ms();
        st = assigner_client_hello(x, NULL, NULL, 0, 10000, NULL);
        const struct proto_error *e = assigner_client_last_error(x);
        EXPECT(st == ASSIGNER_CLIENT_ERR_REFUSED && e->code == PROTO_ERRC_MISSING_RANK &&
                   strstr(e->message, "rank(s) 1 ") != NULL,
               "lonely hello: %s code %d: %s", assigner_client_status_str(st), e->code,
               e->message);
        printf("rank 1 never says hello -> %s after %lld ms: %s\n", proto_errcode_str(e->code),
               (long long)(swav_now_ms() - t0), e->message);
        assigner_client_destroy(&x);
    }

    for (int r = 0; r < W; r++) assigner_client_destroy(&cl[r]);
    zmq_ctx_term(ctx);
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "assigner did not stop cleanly on "
           "SIGTERM (status %d)", status);
    unlink(qpath);
    char ipc[300];
    snprintf(ipc, sizeof ipc, "%s/assigner.ipc", dir);
    unlink(ipc);
    rmdir(dir);
    assigner_core_destroy(&g_expect);
    sinkhorn_backend_destroy(&be);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("all passed\n");
    return 0;
}
