/* SGD + LARC over flat buffers: see optim.h.
 *
 * A step is two passes over memory: the first accumulates ||p||^2 and ||g||^2
 * of every tensor (both in one read, per fixed chunk), the second applies
 * decay, LARC factor, momentum and update in one read-modify-write of p and
 * buf.  Work is split over threads by chunks of roughly equal size; the
 * per-tensor norm is the sum of its chunks' partial sums in chunk order, so
 * every thread count gives bit-identical results.
 *
 * Scalar arithmetic (the LARC factor) is done in float, as torch does it on
 * 0-dim float32 tensors, so that the step matches the reference to rounding. */
#include "optim.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"
#include "common/check.h"
#include "guard.h"

#define NN_OPTIM_CHUNK 16384 /* elements per norm chunk */

struct nn_optim_chunk {
    int param;     /* table index */
    size_t begin;  /* element offset in the flat buffer */
    size_t len;
};

struct nn_optim_job {
    float *params;
    const float *grads;
    const double *group_lr;
    int64_t iteration;
};

struct nn_optim_pool {
    struct nn_optim *o;
    int nthreads;
    pthread_t *threads;
    int *chunk0; /* (nthreads + 1): thread t does chunks [chunk0[t], chunk0[t+1]) */
    int *first_chunk; /* (table->n + 1) first chunk of each tensor */
    pthread_barrier_t start, mid, end;
    struct nn_optim_job job;
    int quit;
};

struct worker_arg {
    struct nn_optim_pool *pool;
    int tid;
};

struct nn_optim_config nn_optim_config_swav(double weight_decay,
                                            int64_t freeze_prototypes_niters)
{
    struct nn_optim_config c = {
        .momentum = 0.9,
        .weight_decay = weight_decay,
        .nesterov = false,
        .larc = true,
        .trust_coefficient = 0.001,
        .eps = 1e-8,
        .clip = false,
        .freeze_prototypes_niters = freeze_prototypes_niters,
        .nthreads = 1,
    };
    return c;
}

static bool is_frozen(const struct nn_optim *o, int i, int64_t iteration)
{
    return (o->table->p[i].flags & NN_PARAM_PROTOTYPES) &&
           iteration < o->cfg.freeze_prototypes_niters;
}

/* Pass 1: partial sums of squares of p and g for the chunks of [c0, c1). */
static void pass_norms(struct nn_optim *o, const struct nn_optim_job *job, int c0, int c1)
{
    for (int c = c0; c < c1; c++) {
        const struct nn_optim_chunk *ch = &o->chunks[c];
        double *out = &o->partial[2 * c];
        if (is_frozen(o, ch->param, job->iteration)) {
            out[0] = out[1] = 0;
            continue;
        }
        const float *p = job->params + ch->begin;
        const float *g = job->grads + ch->begin;
        /* four independent accumulators each, so the loop pipelines */
        double sp[4] = {0, 0, 0, 0}, sg[4] = {0, 0, 0, 0};
        size_t n = ch->len, i = 0;
        for (; i + 4 <= n; i += 4) {
            for (int k = 0; k < 4; k++) {
                double a = p[i + k], b = g[i + k];
                sp[k] += a * a;
                sg[k] += b * b;
            }
        }
        for (; i < n; i++) {
            double a = p[i], b = g[i];
            sp[0] += a * a;
            sg[0] += b * b;
        }
        out[0] = (sp[0] + sp[1]) + (sp[2] + sp[3]);
        out[1] = (sg[0] + sg[1]) + (sg[2] + sg[3]);
    }
}

/* Factor and decay of tensor i: *a = LARC factor (1 without LARC), *wd =
 * weight decay to add.  Reads the partial sums of all its chunks. */
static void tensor_coeffs(const struct nn_optim *o, const int *first_chunk, int i, float lr,
                          float *a, float *wd)
{
    const struct nn_optim_config *cfg = &o->cfg;
    if (!cfg->larc) {
        *a = 1.0f;
        *wd = (float)cfg->weight_decay;
        return;
    }
    double sp = 0, sg = 0;
    for (int c = first_chunk[i]; c < first_chunk[i + 1]; c++) {
        sp += o->partial[2 * c];
        sg += o->partial[2 * c + 1];
    }
    float pn = (float)sqrt(sp), gn = (float)sqrt(sg);
    if (pn != 0.0f && gn != 0.0f) {
        float wdf = (float)cfg->weight_decay;
        float num = (float)cfg->trust_coefficient * pn;
        float den = gn + pn * wdf;
        den = den + (float)cfg->eps;
        float ad = num / den;
        if (cfg->clip) {
            ad = ad / lr;
            if (!(ad < 1.0f)) {
                ad = 1.0f;
            }
        }
        *a = ad;
        *wd = wdf;
    } else {
        *a = 1.0f; /* g left as is ... */
        *wd = 0.0f; /* ... and apex zeroed the group's weight decay */
    }
}

/* Pass 2: update of the chunks [c0, c1). */
static void pass_update(struct nn_optim *o, const int *first_chunk,
                        const struct nn_optim_job *job, int c0, int c1)
{
    const float m = (float)o->cfg.momentum;
    const bool use_momentum = o->cfg.momentum != 0.0;
    const bool nesterov = o->cfg.nesterov;
    int cur = -1;
    float a = 1.0f, wd = 0.0f, lr = 0.0f;
    for (int c = c0; c < c1; c++) {
        const struct nn_optim_chunk *ch = &o->chunks[c];
        int i = ch->param;
        if (is_frozen(o, i, job->iteration)) {
            continue;
        }
        if (i != cur) {
            cur = i;
            lr = (float)job->group_lr[o->group[i]];
            tensor_coeffs(o, first_chunk, i, lr, &a, &wd);
        }
        float *restrict p = job->params + ch->begin;
        const float *restrict g = job->grads + ch->begin;
        float *restrict buf = o->momentum + ch->begin;
        const float nlr = -lr;
        size_t n = ch->len;
        if (o->cfg.larc) {
            /* torch: g += wd * p; g *= a; buf = buf * m + g; p += -lr * buf */
            for (size_t k = 0; k < n; k++) {
                float d = (g[k] + wd * p[k]) * a;
                float b = buf[k] * m + d;
                buf[k] = b;
                p[k] = p[k] + nlr * b;
            }
        } else if (!use_momentum) {
            for (size_t k = 0; k < n; k++) {
                float d = g[k] + wd * p[k];
                p[k] = p[k] + nlr * d;
            }
        } else {
            for (size_t k = 0; k < n; k++) {
                float d = g[k] + wd * p[k];
                float b = buf[k] * m + d;
                buf[k] = b;
                float u = nesterov ? d + m * b : b;
                p[k] = p[k] + nlr * u;
            }
        }
    }
}

static void *worker_main(void *argp)
{
    struct worker_arg *arg = argp;
    struct nn_optim_pool *pool = arg->pool;
    int t = arg->tid;
    free(arg);
    for (;;) {
        pthread_barrier_wait(&pool->start);
        if (pool->quit) {
            break;
        }
        struct nn_optim *o = pool->o;
        if (o->cfg.larc) {
            pass_norms(o, &pool->job, pool->chunk0[t], pool->chunk0[t + 1]);
        }
        pthread_barrier_wait(&pool->mid);
        pass_update(o, pool->first_chunk, &pool->job, pool->chunk0[t], pool->chunk0[t + 1]);
        pthread_barrier_wait(&pool->end);
    }
    return NULL;
}

void nn_optim_init(struct nn_optim *o, const struct nn_param_table *table,
                   const struct nn_optim_config *cfg)
{
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    if (o->cfg.nthreads < 1) {
        o->cfg.nthreads = 1;
    }
    o->table = table;
    /* SWAV_NN_GUARD: the momentum is backend memory, as the CUDA optimizer's */
    o->momentum = nn_guard_alloc((table->total ? table->total : 1) * sizeof(float));
    if (!o->momentum) {
        o->momentum = swav_xcalloc(table->total ? table->total : 1, sizeof(float));
    }
    o->group = swav_xcalloc((size_t)table->n + 1, sizeof(int));
    int nchunks = 0;
    for (int i = 0; i < table->n; i++) {
        size_t n = table->p[i].numel;
        nchunks += n ? (int)((n + NN_OPTIM_CHUNK - 1) / NN_OPTIM_CHUNK) : 0;
    }
    o->nchunks = nchunks;
    o->chunks = swav_xcalloc((size_t)nchunks + 1, sizeof *o->chunks);
    o->partial = swav_xcalloc(2 * (size_t)nchunks + 2, sizeof(double));

    struct nn_optim_pool *pool = swav_xcalloc(1, sizeof *pool);
    o->pool = pool;
    pool->o = o;
    pool->nthreads = o->cfg.nthreads;
    pool->first_chunk = swav_xcalloc((size_t)table->n + 1, sizeof(int));
    int c = 0;
    for (int i = 0; i < table->n; i++) {
        pool->first_chunk[i] = c;
        const struct nn_param *p = &table->p[i];
        for (size_t off = 0; off < p->numel; off += NN_OPTIM_CHUNK) {
            o->chunks[c].param = i;
            o->chunks[c].begin = p->offset + off;
            o->chunks[c].len = p->numel - off < NN_OPTIM_CHUNK ? p->numel - off : NN_OPTIM_CHUNK;
            c++;
        }
    }
    pool->first_chunk[table->n] = c;
    SWAV_ASSERT(c == nchunks);

    /* balance threads by elements */
    int T = pool->nthreads;
    pool->chunk0 = swav_xcalloc((size_t)T + 1, sizeof(int));
    size_t done = 0;
    int t = 1;
    for (int k = 0; k < nchunks && t < T; k++) {
        while (t < T && done >= table->total * (size_t)t / (size_t)T) {
            pool->chunk0[t++] = k;
        }
        done += o->chunks[k].len;
    }
    while (t <= T) {
        pool->chunk0[t++] = nchunks;
    }
    if (T > 1) {
        PTHREAD_CHECK(pthread_barrier_init(&pool->start, NULL, (unsigned)T));
        PTHREAD_CHECK(pthread_barrier_init(&pool->mid, NULL, (unsigned)T));
        PTHREAD_CHECK(pthread_barrier_init(&pool->end, NULL, (unsigned)T));
        pool->threads = swav_xcalloc((size_t)T, sizeof(pthread_t));
        for (int k = 1; k < T; k++) {
            struct worker_arg *arg = swav_xmalloc(sizeof *arg);
            arg->pool = pool;
            arg->tid = k;
            PTHREAD_CHECK(pthread_create(&pool->threads[k], NULL, worker_main, arg));
        }
    }
}

void nn_optim_init_on(struct nn_optim *o, struct nn_backend *be,
                      const struct nn_param_table *table, const struct nn_optim_config *cfg)
{
    if (!be || !be->iface->optim_new) {
        nn_optim_init(o, table, cfg);
        return;
    }
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    o->table = table;
    o->dev_iface = be->iface;
    o->dev = be->iface->optim_new(be, table, cfg);
    o->momentum = be->iface->optim_momentum(o->dev);
}

void nn_optim_free(struct nn_optim *o)
{
    if (o->dev) {
        o->dev_iface->optim_destroy(o->dev);
        memset(o, 0, sizeof *o);
        return;
    }
    struct nn_optim_pool *pool = o->pool;
    if (pool) {
        if (pool->nthreads > 1) {
            pool->quit = 1;
            pthread_barrier_wait(&pool->start);
            for (int k = 1; k < pool->nthreads; k++) {
                PTHREAD_CHECK(pthread_join(pool->threads[k], NULL));
            }
            pthread_barrier_destroy(&pool->start);
            pthread_barrier_destroy(&pool->mid);
            pthread_barrier_destroy(&pool->end);
            free(pool->threads);
        }
        free(pool->chunk0);
        free(pool->first_chunk);
        free(pool);
    }
    if (!nn_guard_free(o->momentum)) {
        free(o->momentum);
    }
    free(o->group);
    free(o->chunks);
    free(o->partial);
    memset(o, 0, sizeof *o);
}

void nn_optim_set_group(struct nn_optim *o, int index, int group)
{
    SWAV_ASSERT(index >= 0 && index < o->table->n);
    SWAV_ASSERT(group >= 0 && group < NN_OPTIM_MAX_GROUPS);
    if (o->dev) {
        o->dev_iface->optim_set_group(o->dev, index, group);
        return;
    }
    o->group[index] = group;
}

void nn_optim_step_groups(struct nn_optim *o, float *params, const float *grads,
                          const double *group_lr, int64_t iteration)
{
    if (o->dev) {
        o->dev_iface->optim_step_groups(o->dev, params, grads, group_lr, iteration);
        return;
    }
    struct nn_optim_pool *pool = o->pool;
    struct nn_optim_job job = {params, grads, group_lr, iteration};
    nn_guard_enter(); /* the host optimizer is the CPU backend's step */
    if (pool->nthreads == 1) {
        if (o->cfg.larc) {
            pass_norms(o, &job, 0, o->nchunks);
        }
        pass_update(o, pool->first_chunk, &job, 0, o->nchunks);
    } else {
        pool->job = job;
        pthread_barrier_wait(&pool->start);
        if (o->cfg.larc) {
            pass_norms(o, &job, pool->chunk0[0], pool->chunk0[1]);
        }
        pthread_barrier_wait(&pool->mid);
        pass_update(o, pool->first_chunk, &job, pool->chunk0[0], pool->chunk0[1]);
        pthread_barrier_wait(&pool->end);
    }
    nn_guard_leave();
}

void nn_optim_step(struct nn_optim *o, float *params, const float *grads, double lr,
                   int64_t iteration)
{
    double lrs[NN_OPTIM_MAX_GROUPS];
    for (int g = 0; g < NN_OPTIM_MAX_GROUPS; g++) {
        lrs[g] = lr;
    }
    nn_optim_step_groups(o, params, grads, lrs, iteration);
}

void nn_optim_normalize_prototypes(const struct nn_param_table *table, float *params)
{
    for (int i = 0; i < table->n; i++) {
        const struct nn_param *p = &table->p[i];
        if ((p->flags & NN_PARAM_PROTOTYPES) && p->ndim == 2) {
            nn_prototypes_normalize(params + p->offset, p->shape[0], p->shape[1]);
        }
    }
}
