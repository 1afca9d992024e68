/* Assigner state machine: see core.h. */
#include "core.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/log.h"

#define ENTROPY_ROWS 512


#define COLLAPSE_PATIENCE 100
#define COLLAPSE_REPEAT 1000

struct assigner_core {
    struct assigner_config cfg;
    struct sinkhorn_backend *backend;
    int queue_length;        /* rounded */
    struct assigner_queue queue;
    bool use_the_queue;      /* reference's train()-local flag */
    int64_t flag_epoch;      /* epoch the flag belongs to */
    int64_t last_step, last_epoch;
    uint64_t collapse_warnings;
    uint64_t collapse_run; /* consecutive flagged steps */
    float *codes;            /* (world, ncrops, bs, K): per rank contiguous */
    bool codes_backend;      /* codes from backend->host_alloc (else malloc) */
    float *entropy;          /* (ncrops, world*bs) */
    int32_t *argmax;         /* (ncrops, world*bs) */
    uint8_t *seen;           /* (K) */
};

static int check_cfg(const struct assigner_config *c, char *err, size_t errlen)
{
#define RANGE(field, lo, hi)                                                              \
    if (!((double)c->field >= (lo) && (double)c->field <= (hi))) {                        \
        snprintf(err, errlen, "%s = %g is out of range [%g, %g]", #field, (double)c->field, \
                 (double)(lo), (double)(hi));                                             \
        return -1;                                                                        \
    }
    RANGE(world_size, 1, 4096);
    RANGE(batch_size, 1, 1 << 20);
    RANGE(nmb_prototypes, 1, 1 << 20);
    RANGE(feat_dim, 1, 1 << 16);
    RANGE(ncrops_assign, 1, 64);
    RANGE(epsilon, 1e-6, 1e6);
    RANGE(sinkhorn_iterations, 0, 1000);
    RANGE(queue_length, 0, 1 << 26);
    RANGE(epoch_queue_starts, 0, 1 << 30);
    RANGE(collapse_entropy_frac, 0, 1);
    RANGE(collapse_min_used, 0, 1 << 20);
#undef RANGE
    double rows = (double)c->world_size * c->batch_size + c->queue_length;
    if (rows * c->nmb_prototypes > 4e9 || rows * c->feat_dim > 4e9) {
        snprintf(err, errlen, "problem too large: %.0f rows x %d prototypes", rows,
                 c->nmb_prototypes);
        return -1;
    }
    return 0;
}

assigner_core_t *assigner_core_new(const struct assigner_config *cfg,
                                   struct sinkhorn_backend *backend, char *err, size_t errlen)
{
    if (check_cfg(cfg, err, errlen) < 0) {
        return NULL;
    }
    struct assigner_core *c = swav_xcalloc(1, sizeof *c);
    c->cfg = *cfg;
    c->backend = backend;
    const int w = cfg->world_size, bs = cfg->batch_size, k = cfg->nmb_prototypes;
    c->queue_length = cfg->queue_length - cfg->queue_length % (bs * w);
    assigner_queue_init(&c->queue, cfg->ncrops_assign, w, c->queue_length / w, cfg->feat_dim, bs);
    size_t rows = (size_t)w * bs;
    size_t codes_bytes = (size_t)cfg->ncrops_assign * rows * k * sizeof(float);
    /* a GPU backend copies the codes back fastest into its own (page-locked) memory */
    c->codes = backend->host_alloc ? backend->host_alloc(backend->impl, codes_bytes) : NULL;
    c->codes_backend = c->codes != NULL;
    if (!c->codes) {
        c->codes = swav_xmalloc(codes_bytes);
    }
    c->entropy = swav_xmalloc((size_t)cfg->ncrops_assign * rows * sizeof(float));
    c->argmax = swav_xmalloc((size_t)cfg->ncrops_assign * rows * sizeof(int32_t));
    c->seen = swav_xmalloc((size_t)k);
    c->last_step = -1;
    c->last_epoch = -1;
    c->flag_epoch = -1;
    if (backend->reserve(backend->impl, c->queue_length + w * bs, k, cfg->feat_dim) < 0) {
        const char *why = backend->error ? backend->error(backend->impl) : "";
        snprintf(err, errlen, "%s backend: cannot make room for %d x %d scores: %s",
                 backend->name, c->queue_length + w * bs, k, why[0] ? why : "out of memory");
        assigner_core_destroy(&c);
        return NULL;
    }
    return c;
}

void assigner_core_destroy(assigner_core_t **pc)
{
    struct assigner_core *c = *pc;
    if (!c) {
        return;
    }
    assigner_queue_free(&c->queue);
    if (c->codes_backend) {
        c->backend->host_free(c->backend->impl, c->codes);
    } else {
        free(c->codes);
    }
    free(c->entropy);
    free(c->argmax);
    free(c->seen);
    free(c);
    *pc = NULL;
}

const struct assigner_config *assigner_core_config(const assigner_core_t *c)
{
    return &c->cfg;
}

int assigner_core_queue_length(const assigner_core_t *c)
{
    return c->queue_length;
}

struct assigner_queue *assigner_core_queue(assigner_core_t *c)
{
    return &c->queue;
}

float *assigner_core_embed_slot(assigner_core_t *c, int crop, int rank)
{
    SWAV_ASSERT(crop >= 0 && crop < c->cfg.ncrops_assign && rank >= 0 &&
                rank < c->cfg.world_size);
    return assigner_queue_batch(&c->queue, crop, rank);
}

const float *assigner_core_codes(const assigner_core_t *c, int crop, int rank)
{
    const size_t bs = (size_t)c->cfg.batch_size, k = (size_t)c->cfg.nmb_prototypes;
    return c->codes + ((size_t)rank * c->cfg.ncrops_assign + (size_t)crop) * bs * k;
}

const float *assigner_core_rank_codes(const assigner_core_t *c, int rank)
{
    return assigner_core_codes(c, 0, rank);
}

static int first_nonfinite(const float *x, size_t n, size_t *at)
{
    /* x * 0 is NaN exactly for NaN and +-Inf: a vectorised sum over the
     * whole array first, the element only when there is one */
    float z = 0.0f;
#pragma omp simd reduction(+ : z)
    for (size_t i = 0; i < n; i++) {
        z += x[i] * 0.0f;
    }
    if (z == 0.0f) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            *at = i;
            return 1;
        }
    }
    return 0;
}

int assigner_core_step(assigner_core_t *c, int64_t epoch, int64_t step, const float *protos,
                       struct assigner_stats *st, char *err, size_t errlen)
{
    const struct assigner_config *cfg = &c->cfg;
    const int w = cfg->world_size, bs = cfg->batch_size, k = cfg->nmb_prototypes,
              d = cfg->feat_dim;
    size_t at;
    if (first_nonfinite(protos, (size_t)k * d, &at)) {
        snprintf(err, errlen, "prototypes: non-finite value at row %zu", at / (size_t)d);
        return -1;
    }
    for (int i = 0; i < cfg->ncrops_assign; i++) {
        for (int r = 0; r < w; r++) {
            if (first_nonfinite(assigner_queue_batch(&c->queue, i, r), (size_t)bs * d, &at)) {
                snprintf(err, errlen, "embeddings of rank %d, assign crop %d: non-finite value "
                         "at row %zu", r, i, at / (size_t)d);
                return -1;
            }
        }
    }

    /* Decide everything first, commit only when every crop succeeded. */
    bool create = c->queue_length > 0 && epoch >= cfg->epoch_queue_starts && !c->queue.present;
    bool was_present = c->queue.present;
    if (create) {
        assigner_queue_create(&c->queue);
    }
    bool flag = c->flag_epoch == epoch ? c->use_the_queue : false;
    bool used_any = false;
    struct sinkhorn_result res_sum = {0};
    double ent_sum = 0.0;
    memset(c->seen, 0, (size_t)k);
    int used = 0;
    const int rows = w * bs;
    /* the mean entropy is estimated from at most ENTROPY_ROWS evenly spaced
     * rows per crop (a log per code of a 4096-row batch costs as much as the
     * exp); exact up to that size */
    const int ent_every = (rows + ENTROPY_ROWS - 1) / ENTROPY_ROWS;
    int ent_n = 0;
    for (int i = 0; i < cfg->ncrops_assign; i++) {
        bool use = false;
        if (c->queue.present && (flag || assigner_queue_last_row_nonzero(&c->queue, i))) {
            use = true;
            flag = true;
        }
        int qrows = use ? assigner_queue_rows(&c->queue) : 0;
        struct sinkhorn_problem p = {
            .n = qrows + rows,
            .d = d,
            .k = k,
            .out_row0 = qrows,
            .out_rows = rows,
            .out_group = bs,
            .out_group_stride = (size_t)cfg->ncrops_assign * bs * k,
            .epsilon = cfg->epsilon,
            .iterations = cfg->sinkhorn_iterations,
            .entropy_every = ent_every,
            .w_same = i > 0,
        };
        const float *x = assigner_queue_batch(&c->queue, i, 0) - (size_t)qrows * d;
        float *codes = c->codes + (size_t)i * bs * k;
        float *ent = c->entropy + (size_t)i * rows;
        int32_t *am = c->argmax + (size_t)i * rows;
        struct sinkhorn_result res = {0};
        if (c->backend->run(c->backend->impl, &p, x, protos, codes, ent, am, &res) < 0) {
            snprintf(err, errlen, "Sinkhorn of assign crop %d produced non-finite values "
                     "(embeddings or prototypes not normalised?)", i);
            if (create && !was_present) {
                c->queue.present = false;
            }
            return -1;
        }
        res_sum.ms_scores += res.ms_scores;
        res_sum.ms_sinkhorn += res.ms_sinkhorn;
        res_sum.ms_copy += res.ms_copy;
        used_any |= use;
        for (int r = 0; r < rows; r++) {
            if (r % ent_every == 0) {
                ent_sum += ent[r];
                ent_n++;
            }
            if (!c->seen[am[r]]) {
                c->seen[am[r]] = 1;
                used++;
            }
        }
    }
    /* commit: FIFO push after the assignment, as the reference */
    for (int i = 0; i < cfg->ncrops_assign; i++) {
        assigner_queue_push(&c->queue, i);
    }
    c->use_the_queue = flag;
    c->flag_epoch = epoch;
    c->last_step = step;
    c->last_epoch = epoch;

    struct assigner_stats s = {0};
    s.step = step;
    s.entropy_mean = ent_sum / ent_n;
    s.entropy_uniform = log((double)k);
    s.prototypes_used = used;
    s.ms_scores = res_sum.ms_scores;
    s.ms_sinkhorn = res_sum.ms_sinkhorn;
    s.ms_copy = res_sum.ms_copy;
    s.queue_used = used_any;
    int total = rows * cfg->ncrops_assign;
    int min_used = cfg->collapse_min_used;
    if (min_used == 0) {
        int lim = total < k ? total : k;
        min_used = (int)ceil(0.05 * lim);
        if (min_used < 2) min_used = 2;
        if (min_used > lim) min_used = lim;
    }
    s.collapse_uniform = k > 1 && s.entropy_mean > cfg->collapse_entropy_frac * s.entropy_uniform;
    s.collapse_few = used < min_used;
    /* Every flagged step is counted (and reported in codes); the log speaks
     * once the condition has held for COLLAPSE_PATIENCE steps in a row (a
     * fresh network's codes are near uniform for a while), then every
     * COLLAPSE_REPEAT steps while it lasts. */
    c->collapse_run = s.collapse_uniform || s.collapse_few ? c->collapse_run + 1 : 0;
    if (c->collapse_run) {
        c->collapse_warnings++;
    }
    if (c->collapse_run == COLLAPSE_PATIENCE ||
        (c->collapse_run > COLLAPSE_PATIENCE && c->collapse_run % COLLAPSE_REPEAT == 0)) {
        LOG_LIMITED(SWAV_LOG_WARN,
                    "COLLAPSE? step %lld, %llu steps in a row: %s%s%s (entropy %.4f of ln K = "
                    "%.4f, %d of %d prototypes used, threshold %d); %llu steps flagged so far",
                    (long long)step, (unsigned long long)c->collapse_run,
                    s.collapse_uniform ? "assignments near uniform" : "",
                    s.collapse_uniform && s.collapse_few ? ", " : "",
                    s.collapse_few ? "few prototypes used" : "", s.entropy_mean,
                    s.entropy_uniform, used, k, min_used,
                    (unsigned long long)c->collapse_warnings);
    }
    s.collapse_warnings = c->collapse_warnings;
    if (st) {
        *st = s;
    }
    return 0;
}

int assigner_core_save(assigner_core_t *c, const char *path, char *err, size_t errlen)
{
    return assigner_queue_save(&c->queue, path, c->last_epoch, c->last_step, err, errlen);
}

int assigner_core_load(assigner_core_t *c, const char *path, char *err, size_t errlen)
{
    int64_t epoch = -1, step = -1;
    /* load into a scratch queue first: a bad file leaves the state unchanged */
    struct assigner_queue tmp;
    assigner_queue_init(&tmp, c->queue.ncrops, c->queue.world, c->queue.rows_per_rank,
                        c->queue.d, c->queue.batch);
    int rc = assigner_queue_load(&tmp, path, &epoch, &step, err, errlen);
    if (rc == 0) {
        size_t per = (size_t)assigner_queue_rows(&tmp) * (size_t)tmp.d;
        for (int i = 0; tmp.present && i < tmp.ncrops; i++) {
            size_t at;
            if (first_nonfinite(assigner_queue_block(&tmp, i), per, &at)) {
                snprintf(err, errlen, "%s: non-finite value in the queue of crop %d", path, i);
                rc = -EINVAL;
                break;
            }
        }
    }
    if (rc == 0) {
        struct assigner_queue old = c->queue;
        c->queue = tmp;
        tmp = old;
        c->last_step = step;
        c->last_epoch = epoch;
        /* a resumed epoch restarts train(): use_the_queue starts False */
        c->flag_epoch = -1;
        c->use_the_queue = false;
    }
    assigner_queue_free(&tmp);
    return rc;
}

int64_t assigner_core_last_step(const assigner_core_t *c)
{
    return c->last_step;
}

int64_t assigner_core_last_epoch(const assigner_core_t *c)
{
    return c->last_epoch;
}

void assigner_core_reset_queue(assigner_core_t *c)
{
    assigner_queue_create(&c->queue);
    c->queue.present = false;
    c->use_the_queue = false;
    c->flag_epoch = -1;
}

int64_t assigner_core_queue_fill(const assigner_core_t *c)
{
    const struct assigner_queue *q = &c->queue;
    if (!q->present) {
        return 0;
    }
    int64_t rows = 0;
    const float *seg = assigner_queue_block(q, 0);
    for (int i = 0; i < q->rows_per_rank; i++) {
        const float *row = seg + (size_t)i * q->d;
        bool nz = false;
        for (int t = 0; t < q->d && !nz; t++) nz = row[t] != 0.0f;
        rows += nz;
    }
    return rows * q->world;
}
