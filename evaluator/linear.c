/* Linear probe (see linear.h).  Forward and backward are two GEMMs each;
 * the update is nn/optim.h's plain SGD, torch.optim.SGD step for step
 * (weight decay added to the gradient, a zero momentum buffer making the
 * first step buf = g, Nesterov on request), so that the parity test can hold
 * it to float rounding. */
#include "linear.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"
#include "common/log.h"
#include "nn/schedule.h"

void eval_linear_config_default(struct eval_linear_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->epochs = 100;
    cfg->batch_size = 32;
    cfg->lr = 0.3;
    cfg->wd = 1e-6;
    cfg->momentum = 0.9;
    cfg->nesterov = false;
    cfg->sched = EVAL_SCHED_COSINE;
    cfg->final_lr = 0.0;
    cfg->n_decay = 2;
    cfg->decay_epochs[0] = 60;
    cfg->decay_epochs[1] = 80;
    cfg->gamma = 0.1;
    cfg->seed = 31;
}

double eval_linear_lr(const struct eval_linear_config *cfg, int epoch)
{
    if (cfg->sched == EVAL_SCHED_STEP) {
        int64_t ms[EVAL_MAX_MILESTONES];
        int n = cfg->n_decay < EVAL_MAX_MILESTONES ? cfg->n_decay : EVAL_MAX_MILESTONES;
        for (int i = 0; i < n; i++)
            ms[i] = cfg->decay_epochs[i];
        return nn_sched_multistep(cfg->lr, ms, n, cfg->gamma, epoch);
    }
    return nn_sched_cosine_annealing(cfg->lr, cfg->final_lr, cfg->epochs, epoch);
}

void eval_linear_init(struct eval_linear *m, int64_t dim, int64_t n_classes, int64_t max_batch,
                      uint64_t seed)
{
    SWAV_ASSERT(dim > 0 && n_classes > 0 && max_batch > 0);
    SWAV_ASSERT(dim <= INT32_MAX && n_classes <= INT32_MAX && max_batch <= INT32_MAX);
    memset(m, 0, sizeof(*m));
    m->dim = dim;
    m->n_classes = n_classes;
    m->max_batch = max_batch;
    m->n_params = (size_t)(n_classes * dim + n_classes);
    m->params = swav_xcalloc(m->n_params, sizeof(float));
    m->grads = swav_xcalloc(m->n_params, sizeof(float));
    nn_param_table_init(&m->table);
    int64_t wshape[2] = {n_classes, dim}, bshape[1] = {n_classes};
    SWAV_ASSERT(nn_param_table_add(&m->table, "linear.weight", 2, wshape, 0) == 0);
    SWAV_ASSERT(nn_param_table_add(&m->table, "linear.bias", 1, bshape, 0) ==
                (size_t)(n_classes * dim));
    SWAV_ASSERT(m->table.total == m->n_params);
    struct nn_optim_config oc = {.momentum = 0.9, .nthreads = 1};
    nn_optim_init(&m->optim, &m->table, &oc);
    m->logits = swav_xcalloc((size_t)(max_batch * n_classes), sizeof(float));
    m->xbuf = swav_xcalloc((size_t)(max_batch * dim), sizeof(float));
    m->ybuf = swav_xcalloc((size_t)max_batch, sizeof(int32_t));
    struct swav_rng r;
    swav_rng_init(&r, seed, 0, 0, EVAL_RNG_LINEAR_INIT);
    for (int64_t i = 0; i < n_classes * dim; i++)
        m->params[i] = (float)(0.01 * swav_rng_normal(&r));
}

void eval_linear_free(struct eval_linear *m)
{
    free(m->params);
    free(m->grads);
    nn_optim_free(&m->optim);
    nn_param_table_free(&m->table);
    free(m->logits);
    free(m->xbuf);
    free(m->ybuf);
    memset(m, 0, sizeof(*m));
}

void eval_linear_forward(const struct eval_linear *m, const float *x, int64_t b, float *logits)
{
    int C = (int)m->n_classes, D = (int)m->dim;
    const float *bias = m->params + (size_t)C * D;
    for (int64_t i = 0; i < b; i++)
        memcpy(logits + i * C, bias, sizeof(float) * (size_t)C);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)b, C, D, 1.0f, x, D, m->params, D,
                1.0f, logits, C);
}

double eval_ce_row_backward(float *z, int C, int label, float scale)
{
    float mx = z[0];
    for (int c = 1; c < C; c++)
        mx = z[c] > mx ? z[c] : mx;
    double sum = 0.0;
    for (int c = 0; c < C; c++)
        sum += exp((double)z[c] - mx);
    double lse = mx + log(sum);
    double loss = lse - z[label];
    for (int c = 0; c < C; c++)
        z[c] = (float)exp((double)z[c] - lse) * scale;
    z[label] -= scale;
    return loss;
}

float eval_linear_step(struct eval_linear *m, const float *x, const int32_t *y, int64_t b,
                       double lr, const struct eval_linear_config *cfg)
{
    SWAV_ASSERT(b > 0 && b <= m->max_batch);
    int C = (int)m->n_classes, D = (int)m->dim;
    float *z = m->logits;
    eval_linear_forward(m, x, b, z);
    double loss = 0.0;
    float scale = 1.0f / (float)b;
    for (int64_t i = 0; i < b; i++)
        loss += eval_ce_row_backward(z + i * C, C, y[i], scale);
    loss /= (double)b;
    /* dW (C, D) = dz^T (C, b) · x (b, D); db = column sums of dz. */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, D, (int)b, 1.0f, z, C, x, D, 0.0f,
                m->grads, D);
    float *db = m->grads + (size_t)C * D;
    memset(db, 0, sizeof(float) * (size_t)C);
    for (int64_t i = 0; i < b; i++)
        for (int c = 0; c < C; c++)
            db[c] += z[i * C + c];

    /* torch.optim.SGD, dampening 0 (nn/optim.h, LARC off). */
    m->optim.cfg.momentum = cfg->momentum;
    m->optim.cfg.weight_decay = cfg->wd;
    m->optim.cfg.nesterov = cfg->nesterov;
    m->optim.cfg.larc = false;
    nn_optim_step(&m->optim, m->params, m->grads, lr, 0);
    return (float)loss;
}

void eval_linear_evaluate(struct eval_linear *m, const float *x, const int32_t *y, int64_t n,
                          struct eval_acc *acc, double *mean_loss)
{
    int C = (int)m->n_classes;
    struct eval_acc a = {0};
    double loss = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += m->max_batch) {
        int64_t b = n - i0 < m->max_batch ? n - i0 : m->max_batch;
        eval_linear_forward(m, x + i0 * m->dim, b, m->logits);
        for (int64_t i = 0; i < b; i++) {
            float *z = m->logits + i * C;
            eval_acc_add(&a, eval_label_rank(z, C, y[i0 + i]));
            loss += eval_ce_row_backward(z, C, y[i0 + i], 1.0f);
        }
    }
    *acc = a;
    if (mean_loss)
        *mean_loss = n ? loss / (double)n : 0.0;
}

static int feature_fill(void *ctx, int epoch, const uint32_t *idx, int64_t b, float *x,
                        int32_t *y)
{
    const struct eval_feature_source *fs = ctx;
    for (int64_t i = 0; i < b; i++) {
        SWAV_ASSERT(idx[i] < fs->n);
        memcpy(x + i * fs->dim, fs->x + (int64_t)idx[i] * fs->dim, sizeof(float) * (size_t)fs->dim);
        y[i] = fs->y[idx[i]];
    }
    return 0;
}

struct eval_batch_source eval_linear_source_features(struct eval_feature_source *fs)
{
    return (struct eval_batch_source){.ctx = fs, .n = fs->n, .fill = feature_fill};
}

void eval_linear_result_epoch(struct eval_linear_result *r, int epoch,
                              const struct eval_acc *acc, double val_loss, double loss_sum,
                              int64_t nb)
{
    r->last_top1 = eval_acc_top1(acc);
    r->last_top5 = eval_acc_top5(acc);
    r->last_val_loss = val_loss;
    r->last_train_loss = nb ? loss_sum / (double)nb : 0.0;
    if (r->last_top1 > r->best_top1) {
        r->best_top1 = r->last_top1;
        r->best_top5 = r->last_top5;
        r->best_epoch = epoch;
    }
}

void eval_linear_epoch_order(uint64_t seed, int epoch, uint32_t *perm, int64_t n)
{
    SWAV_ASSERT(n >= 0 && n <= UINT32_MAX);
    for (int64_t i = 0; i < n; i++)
        perm[i] = (uint32_t)i;
    struct swav_rng r;
    swav_rng_init(&r, seed, (uint32_t)epoch, 0, EVAL_RNG_LINEAR_PERM);
    swav_rng_shuffle_u32(&r, perm, (uint32_t)n);
}

const char *eval_linear_status_str(enum eval_linear_status st)
{
    switch (st) {
    case EVAL_LINEAR_OK: return "ok";
    case EVAL_LINEAR_ERR_ARGS: return "linear probe config or sizes out of range";
    case EVAL_LINEAR_ERR_LABEL: return "a label outside [0, n_classes)";
    case EVAL_LINEAR_ERR_SOURCE: return "the training batch source failed";
    }
    return "unknown linear status";
}

enum eval_linear_status eval_linear_run(struct eval_linear *m, const struct eval_linear_config *cfg,
                                        const struct eval_batch_source *train,
                                        const float *val_x, const int32_t *val_y, int64_t n_val,
                                        eval_linear_step_fn on_step, void *step_ctx,
                                        struct eval_linear_result *res)
{
    if (cfg->epochs < 1 || cfg->batch_size < 1 || cfg->batch_size > m->max_batch ||
        train->n < 1 || train->n > UINT32_MAX || n_val < 1 || !(cfg->lr >= 0.0) ||
        cfg->n_decay < 0 || cfg->n_decay > EVAL_MAX_MILESTONES)
        return EVAL_LINEAR_ERR_ARGS;
    for (int64_t i = 0; i < n_val; i++)
        if (val_y[i] < 0 || val_y[i] >= m->n_classes)
            return EVAL_LINEAR_ERR_LABEL;

    uint32_t *perm = swav_xmalloc(sizeof(uint32_t) * (size_t)train->n);
    struct eval_linear_result r = {.best_top1 = -1.0, .best_epoch = -1};
    enum eval_linear_status st = EVAL_LINEAR_OK;
    int64_t step = 0;
    for (int epoch = 0; epoch < cfg->epochs && st == EVAL_LINEAR_OK; epoch++) {
        double lr = eval_linear_lr(cfg, epoch);
        eval_linear_epoch_order(cfg->seed, epoch, perm, train->n);
        if (train->begin &&
            train->begin(train->ctx, epoch, perm, train->n, cfg->batch_size) != 0) {
            st = EVAL_LINEAR_ERR_SOURCE;
            break;
        }
        double sum = 0.0;
        int64_t nb = 0;
        for (int64_t i0 = 0; i0 < train->n; i0 += cfg->batch_size) {
            int64_t b = train->n - i0 < cfg->batch_size ? train->n - i0 : cfg->batch_size;
            if (train->fill(train->ctx, epoch, perm + i0, b, m->xbuf, m->ybuf) != 0) {
                st = EVAL_LINEAR_ERR_SOURCE;
                break;
            }
            for (int64_t i = 0; i < b; i++)
                if (m->ybuf[i] < 0 || m->ybuf[i] >= m->n_classes)
                    st = EVAL_LINEAR_ERR_LABEL;
            if (st != EVAL_LINEAR_OK)
                break;
            float loss = eval_linear_step(m, m->xbuf, m->ybuf, b, lr, cfg);
            sum += loss;
            nb++;
            if (on_step)
                on_step(step_ctx, epoch, step, loss, lr);
            step++;
        }
        if (st != EVAL_LINEAR_OK)
            break;
        struct eval_acc acc;
        double vloss;
        eval_linear_evaluate(m, val_x, val_y, n_val, &acc, &vloss);
        eval_linear_result_epoch(&r, epoch, &acc, vloss, sum, nb);
        LOG_DEBUG("linear probe epoch %d: lr %.5g train loss %.4f val loss %.4f top1 %.2f "
                  "top5 %.2f", epoch, lr, r.last_train_loss, vloss, r.last_top1, r.last_top5);
    }
    free(perm);
    r.steps = step;
    if (st == EVAL_LINEAR_OK)
        *res = r;
    return st;
}
