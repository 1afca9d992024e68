/* SyncBN across in-process ranks (suite 'unit'): W threads, each a rank with
 * its own CPU backend, joined by a small shared-memory collective (sums in
 * rank order, like the ring: identical bits on every rank).
 *
 * 1. The layer (nn/syncbn.h) on rank r's rows equals plain train-mode BN
 *    (nn_batchnorm_forward/backward) on the concatenated batch: outputs
 *    and input gradients of r's rows, the saved statistics, the running
 *    stats, and the weight/bias gradients summed over the ranks.  nChw8c
 *    (16 channels), plain NCHW (12), BatchNorm1d (N, 40), with and without
 *    the fused ReLU, 2 ranks; 4 ranks in groups of 2 (apex's process
 *    groups), each group against its own rows.
 * 2. The model (nn_model_set_sync_bn): 2 ranks with batch b and the same
 *    weights equal one model with batch 2b on the same crops (rank r's
 *    images are images r*b.. of each crop): embeddings and scores of every
 *    row, running stats, and the parameter gradients summed over the ranks
 *    (rank r backpropagates its rows of one d loss / d scores) against the
 *    single model's.  ResNet-18 width 8, small stem, 2x16 + 2x12 crops,
 *    hidden 32.
 * 3. A collective that fails: the status comes back, is sticky, and the
 *    layer falls back to this rank's statistics.
 * Tolerance (stated): max |a - b| <= TOL * max |b| per tensor, TOL 2e-5
 * (float rounding of sums in another order; the statistics themselves are
 * exchanged to ~48 bits); for a gradient the scale is floored at 1e-3 of the
 * largest gradient; the Linear bias before the head's BatchNorm, whose true
 * gradient is 0, is checked to be below 1e-5 of the largest gradient. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"
#include "nn/layers.h"
#include "nn/resnet.h"
#include "nn/syncbn.h"

#define TOL 2e-5
#define MAXW 4

static int failures;

/* n floats of backend memory holding a copy of h (zeros when h is NULL):
 * layers take the backend's memory only (nn/guard.h) */
static float *dev_in(nn_backend_t *be, const float *h, size_t n)
{
    float *d = nn_backend_alloc(be, (n ? n : 1) * sizeof(float));
    if (h) {
        nn_backend_copy(be, d, h, n * sizeof(float));
    }
    return d;
}

/* d copied back into h (unless h is NULL), then freed */
static void dev_out(nn_backend_t *be, float *h, float *d, size_t n)
{
    if (h) {
        nn_backend_copy(be, h, d, n * sizeof(float));
    }
    nn_backend_free(be, d);
}

static double rel_err_floor(const float *a, const float *b, size_t n, double floor)
{
    double d = 0, s = floor;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return d / s;
}

static double rel_err(const float *a, const float *b, size_t n)
{
    return rel_err_floor(a, b, n, 1e-30);
}

static void expect_close(const char *what, const float *a, const float *b, size_t n)
{
    double e = rel_err(a, b, n);
    int ok = e <= TOL && isfinite(e);
    printf("%-58s err %.2e %s\n", what, e, ok ? "ok" : "FAIL");
    failures += !ok;
}

/* ---- the test collective -------------------------------------------------- */

struct shm {
    pthread_barrier_t bar;
    int world;
    float *bufs[MAXW];
    int fail; /* every call fails */
};

struct tcoll {
    struct nn_collective base;
    struct shm *sh;
};

static int t_allreduce(struct nn_collective *c, float *buf, size_t n)
{
    struct tcoll *t = (struct tcoll *)c;
    struct shm *sh = t->sh;
    if (sh->fail) {
        snprintf(c->err, sizeof c->err, "test collective: failing on purpose");
        return NN_COLLECTIVE_ERR_TIMEOUT;
    }
    sh->bufs[c->rank] = buf;
    pthread_barrier_wait(&sh->bar);
    float *sum = swav_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        float acc = 0;
        for (int r = 0; r < sh->world; r++) {
            acc += sh->bufs[r][i];
        }
        sum[i] = acc;
    }
    pthread_barrier_wait(&sh->bar);
    memcpy(buf, sum, n * sizeof(float));
    free(sum);
    pthread_barrier_wait(&sh->bar);
    return 0;
}

static int t_broadcast(struct nn_collective *c, void *buf, size_t bytes, int root)
{
    (void)c, (void)buf, (void)bytes, (void)root;
    SWAV_ASSERT(0);
    return 0;
}

static void t_destroy(struct nn_collective *c)
{
    (void)c;
}

static const struct nn_collective_ops t_ops = {t_allreduce, t_broadcast, t_destroy};

static void tcoll_init(struct tcoll *t, struct shm *sh, int rank)
{
    memset(t, 0, sizeof *t);
    t->base.ops = &t_ops;
    t->base.rank = rank;
    t->base.world = sh->world;
    t->sh = sh;
}

static void fill(float *x, size_t n, uint32_t tag, double scale, double offset)
{
    struct swav_rng r;
    swav_rng_init(&r, 11, 0, tag, 0x5b5b);
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)(offset + scale * swav_rng_normal(&r));
    }
}

/* ---- 1. the layer ----------------------------------------------------------- */

struct layer_case {
    const char *name;
    int ndim;
    enum nn_layout layout;
    int64_t n, c, hw; /* rows per rank, channels, spatial side */
    unsigned relu;
    int world, group;
};

struct layer_rank {
    const struct layer_case *lc;
    struct shm *sh;
    int rank;
    const float *x, *dy, *w, *b; /* the whole batch / parameters */
    float *y, *dx;               /* the whole batch: this rank writes its rows */
    float *save_mean, *save_var, *rm, *rv, *dw, *db; /* (C) of this rank */
    int status;
};

static struct nn_tensor lc_tensor(const struct layer_case *lc, float *data, int64_t rows)
{
    if (lc->ndim == 2) {
        return nn_tensor_2d(data, rows, lc->c);
    }
    return nn_tensor_4d(data, lc->layout, rows, lc->c, lc->hw, lc->hw);
}

static size_t lc_row_floats(const struct layer_case *lc)
{
    if (lc->ndim == 2) {
        return (size_t)lc->c;
    }
    return nn_layout_bytes(lc->layout, 1, lc->c, lc->hw, lc->hw) / sizeof(float);
}

static void *layer_rank_main(void *arg)
{
    struct layer_rank *R = arg;
    const struct layer_case *lc = R->lc;
    nn_backend_t *be = nn_backend_cpu_new(1);
    struct tcoll tc;
    tcoll_init(&tc, R->sh, R->rank);
    char err[256];
    nn_syncbn_t *s = nn_syncbn_new(&tc.base, lc->group, (int)lc->c, err, sizeof err);
    SWAV_ASSERT(s != NULL);
    size_t row = lc_row_floats(lc), off = (size_t)R->rank * lc->n * row, n = (size_t)lc->n * row;
    size_t C = (size_t)lc->c;
    /* this rank's rows and arrays, in its backend's memory */
    float *d_x = dev_in(be, R->x + off, n), *d_y = dev_in(be, NULL, n);
    float *d_dy = dev_in(be, R->dy + off, n), *d_dx = dev_in(be, NULL, n);
    float *d_w = dev_in(be, R->w, C), *d_b = dev_in(be, R->b, C), *d_rm = dev_in(be, R->rm, C);
    float *d_rv = dev_in(be, R->rv, C), *d_sm = dev_in(be, NULL, C), *d_sv = dev_in(be, NULL, C);
    float *d_dw = dev_in(be, R->dw, C), *d_db = dev_in(be, R->db, C);
    struct nn_tensor x = lc_tensor(lc, d_x, lc->n);
    struct nn_tensor y = lc_tensor(lc, d_y, lc->n);
    struct nn_tensor dy = lc_tensor(lc, d_dy, lc->n);
    struct nn_tensor dx = lc_tensor(lc, d_dx, lc->n);
    size_t wsb = nn_batchnorm_workspace_bytes(be, &x, NN_BN_TRAIN | lc->relu);
    void *ws = wsb ? nn_backend_alloc(be, wsb) : NULL;
    double count = 0;
    int st = nn_syncbn_forward(s, be, &y, &x, d_w, d_b, d_rm, d_rv, d_sm, d_sv, &count, ws,
                               lc->relu, 0.1f, 1e-5f);
    double want = (double)(lc->group ? lc->group : lc->world) * lc->n * (lc->ndim == 4 ? lc->hw * lc->hw : 1);
    if (R->sh->fail) {
        want = (double)lc->n * (lc->ndim == 4 ? lc->hw * lc->hw : 1);
    }
    if (count != want) {
        printf("FAIL %s rank %d: count %g, want %g\n", lc->name, R->rank, count, want);
        failures++;
    }
    st |= nn_syncbn_backward(s, be, &dx, d_dw, d_db, &dy, &x, d_w, d_sm, d_sv, count, ws, lc->relu,
                             1e-5f);
    R->status = st ? st : nn_syncbn_status(s);
    dev_out(be, R->y + off, d_y, n), dev_out(be, R->dx + off, d_dx, n);
    dev_out(be, R->save_mean, d_sm, C), dev_out(be, R->save_var, d_sv, C);
    dev_out(be, R->rm, d_rm, C), dev_out(be, R->rv, d_rv, C);
    dev_out(be, R->dw, d_dw, C), dev_out(be, R->db, d_db, C);
    dev_out(be, NULL, d_x, n), dev_out(be, NULL, d_dy, n);
    dev_out(be, NULL, d_w, C), dev_out(be, NULL, d_b, C);
    nn_backend_free(be, ws);
    nn_syncbn_destroy(&s);
    nn_backend_destroy(&be);
    return NULL;
}

/* Plain (one process) batch norm of `rows` rows with `flags`: the forward,
 * and the backward when dy is not NULL (dw, db +=); the arrays are host
 * memory, staged through the backend's. */
static void plain_bn(nn_backend_t *be, const struct layer_case *lc, int64_t rows, unsigned flags,
                     const float *x, const float *dy, const float *w, const float *b, float *y,
                     float *dx, float *sm, float *sv, float *rm, float *rv, float *dw, float *db)
{
    size_t n = (size_t)rows * lc_row_floats(lc), C = (size_t)lc->c;
    float *d_x = dev_in(be, x, n), *d_y = dev_in(be, NULL, n), *d_w = dev_in(be, w, C);
    float *d_b = dev_in(be, b, C), *d_rm = dev_in(be, rm, C), *d_rv = dev_in(be, rv, C);
    float *d_sm = dev_in(be, NULL, C), *d_sv = dev_in(be, NULL, C);
    struct nn_tensor tx = lc_tensor(lc, d_x, rows), ty = lc_tensor(lc, d_y, rows);
    size_t wsb = nn_batchnorm_workspace_bytes(be, &tx, flags);
    void *ws = wsb ? nn_backend_alloc(be, wsb) : NULL;
    nn_batchnorm_forward(be, &ty, &tx, d_w, d_b, d_rm, d_rv, d_sm, d_sv, ws, flags, 0.1f, 1e-5f);
    if (dy) {
        float *d_dy = dev_in(be, dy, n), *d_dx = dev_in(be, NULL, n);
        float *d_dw = dev_in(be, dw, C), *d_db = dev_in(be, db, C);
        struct nn_tensor tdy = lc_tensor(lc, d_dy, rows), tdx = lc_tensor(lc, d_dx, rows);
        nn_batchnorm_backward(be, &tdx, d_dw, d_db, &tdy, &tx, d_w, d_sm, d_sv, ws, flags, 1e-5f);
        dev_out(be, NULL, d_dy, n), dev_out(be, dx, d_dx, n);
        dev_out(be, dw, d_dw, C), dev_out(be, db, d_db, C);
    }
    dev_out(be, y, d_y, n), dev_out(be, sm, d_sm, C), dev_out(be, sv, d_sv, C);
    dev_out(be, rm, d_rm, C), dev_out(be, rv, d_rv, C);
    dev_out(be, NULL, d_x, n), dev_out(be, NULL, d_w, C), dev_out(be, NULL, d_b, C);
    nn_backend_free(be, ws);
}

static void test_layer(const struct layer_case *lc)
{
    int W = lc->world, G = lc->group ? lc->group : W;
    size_t row = lc_row_floats(lc), C = (size_t)lc->c, total = (size_t)W * lc->n * row;
    float *x = swav_xcalloc(total, sizeof(float));
    float *dy = swav_xcalloc(total, sizeof(float)), *y = swav_xcalloc(total, sizeof(float));
    float *dx = swav_xcalloc(total, sizeof(float));
    float *w = swav_xmalloc(C * sizeof(float)), *b = swav_xmalloc(C * sizeof(float));
    /* a mean far from 0 against the spread: the statistics must hold */
    fill(x, total, 1, 0.5, 3.0);
    fill(dy, total, 2, 1.0, 0.1);
    fill(w, C, 3, 0.2, 1.0);
    fill(b, C, 4, 0.2, 0.0);
    struct shm sh = {.world = W};
    pthread_barrier_init(&sh.bar, NULL, (unsigned)W);
    struct layer_rank R[MAXW];
    pthread_t th[MAXW];
    for (int r = 0; r < W; r++) {
        R[r] = (struct layer_rank){lc, &sh, r, x, dy, w, b, y, dx, NULL, NULL, NULL, NULL, NULL,
                                   NULL, 0};
        float **bufs[] = {&R[r].save_mean, &R[r].save_var, &R[r].rm, &R[r].rv, &R[r].dw, &R[r].db};
        for (int k = 0; k < 6; k++) {
            *bufs[k] = swav_xcalloc(C, sizeof(float));
        }
        for (size_t c = 0; c < C; c++) {
            R[r].rv[c] = 1.0f;
        }
        pthread_create(&th[r], NULL, layer_rank_main, &R[r]);
    }
    for (int r = 0; r < W; r++) {
        pthread_join(th[r], NULL);
    }
    pthread_barrier_destroy(&sh.bar);

    /* plain BN on each group's concatenated rows */
    nn_backend_t *be = nn_backend_cpu_new(1);
    for (int g0 = 0; g0 < W; g0 += G) {
        size_t off = (size_t)g0 * lc->n * row, rows = (size_t)G * lc->n;
        float *ry = swav_xcalloc(rows * row, sizeof(float)), *rdx = swav_xcalloc(rows * row, sizeof(float));
        float *sm = swav_xcalloc(C, 4), *sv = swav_xcalloc(C, 4), *rm = swav_xcalloc(C, 4);
        float *rv = swav_xcalloc(C, 4), *dw = swav_xcalloc(C, 4), *db = swav_xcalloc(C, 4);
        float *sdw = swav_xcalloc(C, 4), *sdb = swav_xcalloc(C, 4);
        for (size_t c = 0; c < C; c++) {
            rv[c] = 1.0f;
        }
        plain_bn(be, lc, (int64_t)rows, NN_BN_TRAIN | lc->relu, x + off, dy + off, w, b, ry, rdx,
                 sm, sv, rm, rv, dw, db);
        char what[160];
        for (int r = g0; r < g0 + G; r++) {
            if (R[r].status != 0) {
                printf("FAIL %s rank %d: status %d\n", lc->name, r, R[r].status);
                failures++;
            }
            size_t ro = (size_t)(r - g0) * lc->n * row, n = (size_t)lc->n * row;
            snprintf(what, sizeof what, "%s rank %d: output", lc->name, r);
            expect_close(what, y + off + ro, ry + ro, n);
            snprintf(what, sizeof what, "%s rank %d: d input", lc->name, r);
            expect_close(what, dx + off + ro, rdx + ro, n);
            snprintf(what, sizeof what, "%s rank %d: batch mean, variance", lc->name, r);
            expect_close(what, R[r].save_mean, sm, C);
            expect_close(what, R[r].save_var, sv, C);
            snprintf(what, sizeof what, "%s rank %d: running mean, variance", lc->name, r);
            expect_close(what, R[r].rm, rm, C);
            expect_close(what, R[r].rv, rv, C);
            for (size_t c = 0; c < C; c++) {
                sdw[c] += R[r].dw[c];
                sdb[c] += R[r].db[c];
            }
        }
        snprintf(what, sizeof what, "%s ranks %d..%d: d weight, d bias summed", lc->name, g0,
                 g0 + G - 1);
        expect_close(what, sdw, dw, C);
        expect_close(what, sdb, db, C);
        free(ry), free(rdx), free(sm), free(sv), free(rm), free(rv), free(dw), free(db);
        free(sdw), free(sdb);
    }
    nn_backend_destroy(&be);
    for (int r = 0; r < W; r++) {
        free(R[r].save_mean), free(R[r].save_var), free(R[r].rm), free(R[r].rv);
        free(R[r].dw), free(R[r].db);
    }
    free(x), free(dy), free(y), free(dx), free(w), free(b);
}

/* 3. a failing collective: sticky status, this rank's statistics */
static void test_failure(void)
{
    struct layer_case lc = {"failing collective", 4, NN_LAYOUT_NCHW8C, 4, 16, 3, NN_BN_RELU, 2, 0};
    size_t row = lc_row_floats(&lc), C = 16, total = 2 * (size_t)lc.n * row;
    float *x = swav_xcalloc(total, 4), *y = swav_xcalloc(total, 4), *yr = swav_xcalloc(total, 4);
    float *dy = swav_xcalloc(total, 4), *dx = swav_xcalloc(total, 4);
    float *w = swav_xmalloc(C * 4), *b = swav_xmalloc(C * 4);
    float *st[6];
    for (int k = 0; k < 6; k++) {
        st[k] = swav_xcalloc(C, 4);
    }
    fill(x, total, 5, 1.0, 0.5);
    fill(dy, total, 6, 1.0, 0.0);
    fill(w, C, 7, 0.1, 1.0);
    fill(b, C, 8, 0.1, 0.0);
    struct shm sh = {.world = 2, .fail = 1};
    struct layer_rank R = {&lc, &sh, 0, x, dy, w, b, y, dx, st[0], st[1], st[2], st[3], st[4],
                           st[5], 0};
    layer_rank_main(&R); /* rank 0 alone: its collective fails at once */
    int ok = R.status == NN_COLLECTIVE_ERR_TIMEOUT;
    printf("%-58s status %d %s\n", "failing collective: status returned, sticky", R.status,
           ok ? "ok" : "FAIL");
    failures += !ok;
    nn_backend_t *be = nn_backend_cpu_new(1);
    float *sm = swav_xcalloc(C, 4), *sv = swav_xcalloc(C, 4), *rm = swav_xcalloc(C, 4);
    float *rv = swav_xcalloc(C, 4);
    plain_bn(be, &lc, lc.n, NN_BN_TRAIN | NN_BN_RELU, x, NULL, w, b, yr, NULL, sm, sv, rm, rv, NULL,
             NULL);
    expect_close("failing collective: output = this rank's batch norm", y, yr, (size_t)lc.n * row);
    nn_backend_destroy(&be);
    free(x), free(y), free(yr), free(dy), free(dx), free(w), free(b), free(sm), free(sv), free(rm);
    free(rv);
    for (int k = 0; k < 6; k++) {
        free(st[k]);
    }
}

/* ---- 2. the model ---------------------------------------------------------------- */

#define M_B 3 /* batch per rank */
static const struct nn_crop_group m_groups[2] = {{2, 16}, {2, 12}};

static struct nn_resnet_cfg m_cfg(void)
{
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.depth = 18;
    cfg.width = 8;
    cfg.small_stem = 1;
    cfg.hidden_mlp = 32;
    cfg.feat_dim = 16;
    cfg.nmb_prototypes = 10;
    cfg.seed = 3;
    return cfg;
}

/* The whole batch of 2 * M_B images, per crop group: (n_crops * 2 M_B, 3, S, S)
 * crop-major; rank r's input is image rows [r M_B, (r + 1) M_B) of each crop. */
struct model_data {
    float *full[2], *rank_in[2][2]; /* [group], [rank][group] */
    float *dout_full, *dout_rank[2];
    size_t n_full[2]; /* floats of full[g] */
    int rows_full, K;
};

struct model_rank {
    struct shm *sh;
    int rank;
    struct model_data *d;
    float *emb, *scores, *grads, *buffers; /* outputs, owned */
    size_t n_emb, n_scores, n_params, n_buffers;
    int status;
};

static void *model_rank_main(void *arg)
{
    struct model_rank *R = arg;
    nn_backend_t *be = nn_backend_cpu_new(1);
    struct nn_resnet_cfg cfg = m_cfg();
    struct nn_model *m = nn_model_new(be, &cfg, m_groups, 2, M_B);
    SWAV_ASSERT(m != NULL);
    struct tcoll tc;
    tcoll_init(&tc, R->sh, R->rank);
    char err[256];
    SWAV_ASSERT(nn_model_set_sync_bn(m, &tc.base, 0, err, sizeof err) == 0);
    const struct model_data *d = R->d;
    float *d_in[2] = {dev_in(be, d->rank_in[R->rank][0], d->n_full[0] / 2),
                      dev_in(be, d->rank_in[R->rank][1], d->n_full[1] / 2)};
    size_t n_dout = (size_t)d->rows_full / 2 * d->K;
    float *d_dout = dev_in(be, d->dout_rank[R->rank], n_dout);
    const float *in[2] = {d_in[0], d_in[1]};
    R->status = nn_model_forward(m, in, M_B, NN_MODEL_TRAIN);
    nn_model_zero_grad(m);
    R->status |= nn_model_backward(m, d_dout);
    dev_out(be, NULL, d_in[0], d->n_full[0] / 2), dev_out(be, NULL, d_in[1], d->n_full[1] / 2);
    dev_out(be, NULL, d_dout, n_dout);
    R->n_emb = (size_t)m->n_rows * cfg.feat_dim;
    R->n_scores = (size_t)m->n_rows * cfg.nmb_prototypes;
    R->n_params = m->params.total;
    R->n_buffers = m->buffers.total;
    R->emb = nn_backend_to_host(be, m->embedding, R->n_emb);
    R->scores = nn_backend_to_host(be, m->scores, R->n_scores);
    R->grads = nn_backend_to_host(be, m->grad_data, R->n_params);
    R->buffers = nn_backend_to_host(be, m->buffer_data, R->n_buffers);
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
    return NULL;
}

/* Row r of the full model <-> (rank, row) of a rank model: both crop-major. */
static void rank_rows(float *dst, const float *full, int rank, int n_crops, size_t row_floats)
{
    for (int c = 0; c < n_crops; c++) {
        memcpy(dst + (size_t)c * M_B * row_floats,
               full + ((size_t)c * 2 * M_B + (size_t)rank * M_B) * row_floats,
               (size_t)M_B * row_floats * sizeof(float));
    }
}

static void test_model(void)
{
    struct nn_resnet_cfg cfg = m_cfg();
    struct model_data d = {0};
    int n_crops = 0;
    for (int g = 0; g < 2; g++) {
        size_t img = 3 * (size_t)m_groups[g].size * m_groups[g].size;
        size_t n = (size_t)m_groups[g].n_crops * 2 * M_B * img;
        d.n_full[g] = n;
        d.full[g] = swav_xmalloc(n * 4);
        fill(d.full[g], n, 20 + (uint32_t)g, 1.0, 0.0);
        for (int r = 0; r < 2; r++) {
            d.rank_in[r][g] = swav_xmalloc(n / 2 * 4);
            rank_rows(d.rank_in[r][g], d.full[g], r, m_groups[g].n_crops, img);
        }
        n_crops += m_groups[g].n_crops;
    }
    d.K = cfg.nmb_prototypes;
    d.rows_full = n_crops * 2 * M_B;
    d.dout_full = swav_xmalloc((size_t)d.rows_full * d.K * 4);
    fill(d.dout_full, (size_t)d.rows_full * d.K, 30, 0.05, 0.0);
    for (int r = 0; r < 2; r++) {
        d.dout_rank[r] = swav_xmalloc((size_t)d.rows_full / 2 * d.K * 4);
        rank_rows(d.dout_rank[r], d.dout_full, r, n_crops, (size_t)d.K);
    }
    struct shm sh = {.world = 2};
    pthread_barrier_init(&sh.bar, NULL, 2);
    struct model_rank R[2];
    pthread_t th[2];
    for (int r = 0; r < 2; r++) {
        R[r] = (struct model_rank){.sh = &sh, .rank = r, .d = &d};
        pthread_create(&th[r], NULL, model_rank_main, &R[r]);
    }
    for (int r = 0; r < 2; r++) {
        pthread_join(th[r], NULL);
    }
    pthread_barrier_destroy(&sh.bar);

    nn_backend_t *be = nn_backend_cpu_new(1);
    struct nn_model *m = nn_model_new(be, &cfg, m_groups, 2, 2 * M_B);
    float *d_full[2] = {dev_in(be, d.full[0], d.n_full[0]), dev_in(be, d.full[1], d.n_full[1])};
    float *d_dout = dev_in(be, d.dout_full, (size_t)d.rows_full * d.K);
    const float *in[2] = {d_full[0], d_full[1]};
    nn_model_forward(m, in, 2 * M_B, NN_MODEL_TRAIN);
    nn_model_zero_grad(m);
    nn_model_backward(m, d_dout);
    dev_out(be, NULL, d_full[0], d.n_full[0]), dev_out(be, NULL, d_full[1], d.n_full[1]);
    dev_out(be, NULL, d_dout, (size_t)d.rows_full * d.K);
    float *emb_full = nn_backend_to_host(be, m->embedding, (size_t)m->n_rows * cfg.feat_dim);
    float *scores_full = nn_backend_to_host(be, m->scores, (size_t)m->n_rows * d.K);
    float *buffers_full = nn_backend_to_host(be, m->buffer_data, m->buffers.total);
    float *grads_full = nn_backend_to_host(be, m->grad_data, m->params.total);
    char what[160];
    for (int r = 0; r < 2; r++) {
        if (R[r].status) {
            printf("FAIL model rank %d: status %d\n", r, R[r].status);
            failures++;
        }
        float *e = swav_xmalloc(R[r].n_emb * 4), *s = swav_xmalloc(R[r].n_scores * 4);
        rank_rows(e, emb_full, r, n_crops, (size_t)cfg.feat_dim);
        rank_rows(s, scores_full, r, n_crops, (size_t)d.K);
        snprintf(what, sizeof what, "model rank %d of 2 (batch %d) vs batch %d: embedding", r, M_B,
                 2 * M_B);
        expect_close(what, R[r].emb, e, R[r].n_emb);
        snprintf(what, sizeof what, "model rank %d of 2 vs batch %d: scores", r, 2 * M_B);
        expect_close(what, R[r].scores, s, R[r].n_scores);
        free(e), free(s);
    }
    /* every buffer: running stats and num_batches_tracked */
    for (int i = 0; i < m->buffers.n; i++) {
        const struct nn_param *p = &m->buffers.p[i];
        for (int r = 0; r < 2; r++) {
            double e = rel_err(R[r].buffers + p->offset, buffers_full + p->offset, p->numel);
            if (!(e <= TOL)) {
                printf("FAIL model rank %d: buffer %s err %.2e\n", r, p->name, e);
                failures++;
            }
        }
    }
    printf("%-58s checked\n", "model: running stats, num_batches_tracked, 2 ranks");
    float *g = swav_xcalloc(m->params.total, 4);
    for (size_t i = 0; i < m->params.total; i++) {
        g[i] = R[0].grads[i] + R[1].grads[i];
    }
    /* the scale of a tensor floored at 1e-3 of the largest gradient: the
     * Linear bias before the head's BatchNorm has a true gradient of 0 */
    double gmax = 0, worst = 0;
    for (size_t i = 0; i < m->params.total; i++) {
        gmax = fmax(gmax, fabs(grads_full[i]));
    }
    const char *worst_name = "";
    for (int i = 0; i < m->params.n; i++) {
        const struct nn_param *p = &m->params.p[i];
        double e = rel_err_floor(g + p->offset, grads_full + p->offset, p->numel, 1e-3 * gmax);
        if (!strcmp(p->name, "projection_head.0.bias")) {
            /* before a BatchNorm: exactly 0, both sides only rounding noise */
            double bmax = 0;
            for (size_t j = 0; j < p->numel; j++) {
                bmax = fmax(bmax, fabs(g[p->offset + j]));
            }
            int bok = bmax <= 1e-5 * gmax;
            printf("%-58s %.1e of the largest %s\n", "model: projection_head.0.bias (0 in exact)",
                   bmax / gmax, bok ? "ok" : "FAIL");
            failures += !bok;
            continue;
        }
        if (!(e <= worst)) {
            worst = e;
            worst_name = p->name;
        }
    }
    int ok = worst <= TOL;
    printf("%-58s worst err %.2e (%s) %s\n", "model: every parameter gradient, summed over ranks",
           worst, worst_name, ok ? "ok" : "FAIL");
    failures += !ok;
    free(g);
    free(emb_full), free(scores_full), free(buffers_full), free(grads_full);
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
    for (int r = 0; r < 2; r++) {
        free(R[r].emb), free(R[r].scores), free(R[r].grads), free(R[r].buffers);
        free(d.dout_rank[r]);
        for (int k = 0; k < 2; k++) {
            free(d.rank_in[r][k]);
        }
    }
    free(d.full[0]), free(d.full[1]), free(d.dout_full);
}

int main(void)
{
    static const struct layer_case cases[] = {
        {"BN2d nChw8c C16 3x3 +ReLU, 2 ranks", 4, NN_LAYOUT_NCHW8C, 4, 16, 3, NN_BN_RELU, 2, 0},
        {"BN2d nChw8c C16 5x5, 2 ranks", 4, NN_LAYOUT_NCHW8C, 3, 16, 5, 0, 2, 0},
        {"BN2d NCHW C12 4x4 +ReLU, 2 ranks", 4, NN_LAYOUT_NCHW, 3, 12, 4, NN_BN_RELU, 2, 0},
        {"BN1d (N, 40) +ReLU, 2 ranks", 2, NN_LAYOUT_NC, 5, 40, 1, NN_BN_RELU, 2, 0},
        {"BN2d nChw8c C24 2x2 +ReLU, 4 ranks in groups of 2", 4, NN_LAYOUT_NCHW8C, 2, 24, 2,
         NN_BN_RELU, 4, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_layer(&cases[i]);
    }
    test_failure();
    test_model();
    printf("%s: %d failures\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
