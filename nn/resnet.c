/* ResNet backbone + projection head + prototypes, multi-crop forward and
 * backward: see resnet.h.
 *
 * Build happens in three steps: declare every parameter and buffer in the
 * tables (state-dict order), allocate the flat buffers and initialize them,
 * then lay out the activations of every crop group in the arena (a measuring
 * pass, one allocation, a second pass that hands out the pointers).  The
 * measuring pass also queries the backend for workspace sizes, which creates
 * (and caches) the primitives of every shape. */
#include "resnet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/log.h"
#include "common/rng.h"
#include "backend_impl.h"
#include "layers.h"
#include "syncbn.h"

#define RN_BN_EPS 1e-5f
#define RN_BN_MOMENTUM 0.1f

struct rn_conv {
    size_t w; /* offset in params */
    int cin, cout, k, stride, pad;
};

struct rn_bn {
    size_t w, b;         /* params */
    size_t rm, rv, nbt;  /* buffers */
    int c;
    int zero_weight;
};

struct rn_block {
    int bottleneck, has_ds;
    struct rn_conv conv[3], ds;
    struct rn_bn bn[3], dsbn;
};

struct rn_linear {
    size_t w, b; /* b == (size_t)-1: no bias */
    int in, out;
};

/* Saved activations of one conv + BN (+ ReLU). */
struct rn_cbn_act {
    struct nn_tensor x; /* conv output, BN input */
    struct nn_tensor y; /* BN (+ReLU) output */
    float *mean, *var;
    double count; /* values per channel behind mean/var (SyncBN: all ranks') */
    void *ws;
};

struct rn_block_act {
    const struct nn_tensor *in; /* points at the previous output */
    struct rn_cbn_act u[3], d;
    struct nn_tensor out;
};

struct rn_group_act {
    struct nn_tensor input; /* user memory, set per forward */
    struct nn_tensor in_bf; /* cfg.act_dtype BF16/F16: input converted, (n, stem_cin, S, S) NHWC */
    struct rn_cbn_act stem;
    struct nn_tensor pool;
    void *pool_ws;
    struct rn_block_act *blocks;
    int rows0; /* first row of this group in the outputs */
    int batch; /* batch these tensors were laid out for */
};

struct nn_model_impl {
    enum nn_layout layout;
    enum nn_dtype dtype; /* of the backbone's activations: cfg.act_dtype (F32, BF16, F16) */
    int stem_cin;        /* channels of the stem's input: 3, NN_LOWP_STEM_CHANNELS in bf16/fp16 */
    struct rn_conv stem_conv;
    struct rn_bn stem_bn;
    int n_blocks;
    struct rn_block *blocks;
    int has_head, hidden;
    struct rn_linear head0, head3, protos;
    struct rn_bn head_bn;
    struct nn_arena arena;
    struct rn_group_act g[NN_MAX_GROUPS];
    /* head activations */
    float *h0, *h1, *h1_mean, *h1_var, *emb_raw, *norms;
    void *h1_ws;
    /* gradient scratch */
    float *gbuf[4];
    size_t gbuf_bytes;
    float *dfeats, *dh1, *dh0, *demb_raw, *demb;
    float *dhead_scratch;
    enum nn_model_mode last_mode;
    int last_batch;
    /* SyncBN (nn_model_set_sync_bn); NULL: per-rank statistics */
    nn_syncbn_t *sync;
    /* nn_model_set_grad_ready */
    nn_grad_ready_fn grad_ready;
    void *grad_ready_ctx;
    double h1_count;
    /* num_batches_tracked of the backbone's BatchNorms (buffer offsets):
     * a train-mode forward adds one per crop group, in one backend call */
    int64_t *nbt;
    int n_nbt;
};

/* ---- declaration -------------------------------------------------------------- */

static size_t rn_add(struct nn_param_table *t, const char *name, int ndim, int64_t a, int64_t b,
                     int64_t c, int64_t d, unsigned flags)
{
    int64_t shape[4] = {a, b, c, d};
    return nn_param_table_add(t, name, ndim, shape, flags);
}

static struct rn_conv rn_conv_decl(struct nn_model *m, const char *name, int cin, int cout, int k,
                                   int stride, int pad)
{
    struct rn_conv c = {0, cin, cout, k, stride, pad};
    char nm[NN_PARAM_NAME_MAX + 32];
    snprintf(nm, sizeof nm, "%s.weight", name);
    c.w = rn_add(&m->params, nm, 4, cout, cin, k, k, 0);
    return c;
}

static struct rn_bn rn_bn_decl(struct nn_model *m, const char *name, int c, int zero_weight)
{
    struct rn_bn n = {0};
    char nm[NN_PARAM_NAME_MAX + 32];
    n.c = c;
    n.zero_weight = zero_weight;
    snprintf(nm, sizeof nm, "%s.weight", name);
    n.w = rn_add(&m->params, nm, 1, c, 0, 0, 0, 0);
    snprintf(nm, sizeof nm, "%s.bias", name);
    n.b = rn_add(&m->params, nm, 1, c, 0, 0, 0, 0);
    snprintf(nm, sizeof nm, "%s.running_mean", name);
    n.rm = rn_add(&m->buffers, nm, 1, c, 0, 0, 0, 0);
    snprintf(nm, sizeof nm, "%s.running_var", name);
    n.rv = rn_add(&m->buffers, nm, 1, c, 0, 0, 0, 0);
    snprintf(nm, sizeof nm, "%s.num_batches_tracked", name);
    n.nbt = rn_add(&m->buffers, nm, 0, 0, 0, 0, 0, NN_PARAM_INT64);
    return n;
}

static struct rn_linear rn_linear_decl(struct nn_model *m, const char *name, int in, int out,
                                       int bias, unsigned flags)
{
    struct rn_linear l = {0, (size_t)-1, in, out};
    char nm[NN_PARAM_NAME_MAX + 32];
    snprintf(nm, sizeof nm, "%s.weight", name);
    l.w = rn_add(&m->params, nm, 2, out, in, 0, 0, flags);
    if (bias) {
        snprintf(nm, sizeof nm, "%s.bias", name);
        l.b = rn_add(&m->params, nm, 1, out, 0, 0, 0, 0);
    }
    return l;
}

/* ---- initialization ------------------------------------------------------------- */

static void rn_init_normal(float *w, size_t n, double std, struct swav_rng *r)
{
    for (size_t i = 0; i < n; i++) {
        w[i] = (float)(swav_rng_normal(r) * std);
    }
}

static void rn_init_uniform(float *w, size_t n, double bound, struct swav_rng *r)
{
    for (size_t i = 0; i < n; i++) {
        w[i] = (float)swav_rng_range(r, -bound, bound);
    }
}

static void rn_init_conv(struct nn_model *m, const struct rn_conv *c, uint32_t tag)
{
    struct swav_rng r;
    swav_rng_init(&r, m->cfg.seed, 0, tag, 0x6e6e0001u);
    /* kaiming_normal_(mode="fan_out", nonlinearity="relu") */
    double std = sqrt(2.0 / (double)(c->cout * c->k * c->k));
    rn_init_normal(m->param_data + c->w, (size_t)c->cout * c->cin * c->k * c->k, std, &r);
}

static void rn_init_bn(struct nn_model *m, const struct rn_bn *n)
{
    for (int i = 0; i < n->c; i++) {
        m->param_data[n->w + i] = n->zero_weight ? 0.0f : 1.0f;
        m->param_data[n->b + i] = 0.0f;
        m->buffer_data[n->rm + i] = 0.0f;
        m->buffer_data[n->rv + i] = 1.0f;
    }
    m->buffer_data[n->nbt] = 0.0f;
}

static void rn_init_linear(struct nn_model *m, const struct rn_linear *l, uint32_t tag)
{
    struct swav_rng r;
    swav_rng_init(&r, m->cfg.seed, 0, tag, 0x6e6e0002u);
    /* torch default: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias likewise */
    double bound = 1.0 / sqrt((double)l->in);
    rn_init_uniform(m->param_data + l->w, (size_t)l->in * l->out, bound, &r);
    if (l->b != (size_t)-1) {
        rn_init_uniform(m->param_data + l->b, (size_t)l->out, bound, &r);
    }
}

/* ---- activation layout -------------------------------------------------------------- */

static struct nn_tensor rn_act(struct nn_model_impl *I, size_t *max_bytes, int64_t n, int64_t c,
                               int64_t h, int64_t w)
{
    size_t bytes = nn_layout_bytes_dt(I->dtype, I->layout, n, c, h, w);
    if (bytes > *max_bytes) {
        *max_bytes = bytes;
    }
    struct nn_tensor t = nn_tensor_4d(nn_arena_alloc(&I->arena, bytes), I->layout, n, c, h, w);
    t.dtype = I->dtype;
    return t;
}

static void rn_cbn_plan(struct nn_model *m, struct rn_cbn_act *a, const struct rn_bn *bn,
                        int64_t n, int64_t h, int64_t w, int relu, size_t *maxb)
{
    struct nn_model_impl *I = m->impl;
    a->x = rn_act(I, maxb, n, bn->c, h, w);
    a->y = rn_act(I, maxb, n, bn->c, h, w);
    a->mean = nn_arena_alloc(&I->arena, (size_t)bn->c * sizeof(float));
    a->var = nn_arena_alloc(&I->arena, (size_t)bn->c * sizeof(float));
    a->ws = NULL;
    if (relu) {
        size_t ws = nn_batchnorm_workspace_bytes(m->be, &a->x, NN_BN_TRAIN | NN_BN_RELU);
        a->ws = ws ? nn_arena_alloc(&I->arena, ws) : NULL;
    }
}

static int rn_out_size(int in, int k, int stride, int pad)
{
    return (in + 2 * pad - k) / stride + 1;
}

/* One pass over everything that lives in the arena. */
static void rn_plan(struct nn_model *m)
{
    struct nn_model_impl *I = m->impl;
    nn_arena_rewind(&I->arena);
    size_t maxb = 0;
    int rows = 0;
    for (int gi = 0; gi < m->n_groups; gi++) {
        struct rn_group_act *g = &I->g[gi];
        int64_t n = (int64_t)m->groups[gi].n_crops * m->batch;
        int s = m->groups[gi].size;
        g->rows0 = rows;
        g->batch = m->batch;
        rows += (int)n;
        const struct rn_conv *sc = &I->stem_conv;
        if (nn_dtype_is_lowp(I->dtype)) {
            size_t b = nn_layout_bytes_dt(I->dtype, I->layout, n, I->stem_cin, s, s);
            g->in_bf = nn_tensor_4d(nn_arena_alloc(&I->arena, b), I->layout, n, I->stem_cin, s, s);
            g->in_bf.dtype = I->dtype;
        }
        int h = rn_out_size(s, sc->k, sc->stride, sc->pad);
        rn_cbn_plan(m, &g->stem, &I->stem_bn, n, h, h, 1, &maxb);
        const struct nn_tensor *prev = &g->stem.y;
        if (!m->cfg.small_stem) {
            int hp = rn_out_size(h, 3, 2, 1);
            g->pool = rn_act(I, &maxb, n, sc->cout, hp, hp);
            size_t ws = nn_maxpool2d_workspace_bytes(m->be, &g->pool, &g->stem.y, 3, 2, 1);
            g->pool_ws = nn_arena_alloc(&I->arena, ws);
            prev = &g->pool;
            h = hp;
        }
        for (int bi = 0; bi < I->n_blocks; bi++) {
            const struct rn_block *b = &I->blocks[bi];
            struct rn_block_act *a = &g->blocks[bi];
            a->in = prev;
            int nconv = b->bottleneck ? 3 : 2;
            int hin = h;
            for (int ci = 0; ci < nconv; ci++) {
                const struct rn_conv *c = &b->conv[ci];
                h = rn_out_size(h, c->k, c->stride, c->pad);
                rn_cbn_plan(m, &a->u[ci], &b->bn[ci], n, h, h, ci < nconv - 1, &maxb);
            }
            if (b->has_ds) {
                int hd = rn_out_size(hin, 1, b->ds.stride, 0);
                SWAV_ASSERT(hd == h);
                rn_cbn_plan(m, &a->d, &b->dsbn, n, h, h, 0, &maxb);
            }
            a->out = rn_act(I, &maxb, n, b->bn[nconv - 1].c, h, h);
            prev = &a->out;
        }
    }
    SWAV_ASSERT(rows == m->n_rows);
    size_t R = (size_t)m->n_rows;
    m->feats = nn_arena_alloc(&I->arena, R * m->feat_channels * sizeof(float));
    I->dfeats = nn_arena_alloc(&I->arena, R * m->feat_channels * sizeof(float));
    if (I->has_head) {
        int fd = m->cfg.feat_dim;
        if (I->hidden) {
            I->h0 = nn_arena_alloc(&I->arena, R * I->hidden * sizeof(float));
            I->h1 = nn_arena_alloc(&I->arena, R * I->hidden * sizeof(float));
            I->dh0 = nn_arena_alloc(&I->arena, R * I->hidden * sizeof(float));
            I->dh1 = nn_arena_alloc(&I->arena, R * I->hidden * sizeof(float));
            I->h1_mean = nn_arena_alloc(&I->arena, I->hidden * sizeof(float));
            I->h1_var = nn_arena_alloc(&I->arena, I->hidden * sizeof(float));
            struct nn_tensor t = nn_tensor_2d(NULL, m->n_rows, I->hidden);
            size_t ws = nn_batchnorm_workspace_bytes(m->be, &t, NN_BN_TRAIN | NN_BN_RELU);
            I->h1_ws = ws ? nn_arena_alloc(&I->arena, ws) : NULL;
        }
        I->emb_raw = nn_arena_alloc(&I->arena, R * fd * sizeof(float));
        I->demb_raw = nn_arena_alloc(&I->arena, R * fd * sizeof(float));
        m->embedding = nn_arena_alloc(&I->arena, R * fd * sizeof(float));
        I->demb = nn_arena_alloc(&I->arena, R * fd * sizeof(float));
        I->norms = nn_arena_alloc(&I->arena, R * sizeof(float));
        if (m->cfg.nmb_prototypes > 0) {
            m->scores = nn_arena_alloc(&I->arena, R * m->cfg.nmb_prototypes * sizeof(float));
        }
    }
    I->gbuf_bytes = maxb;
    for (int i = 0; i < 4; i++) {
        I->gbuf[i] = nn_arena_alloc(&I->arena, maxb);
    }
}

/* ---- build ---------------------------------------------------------------------- */

void nn_resnet_cfg_default(struct nn_resnet_cfg *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->depth = 50;
    cfg->width = 64;
    cfg->hidden_mlp = 2048;
    cfg->feat_dim = 128;
    cfg->nmb_prototypes = 3000;
    cfg->seed = 31;
}

static void rn_stage_counts(int depth, int counts[4], int *bottleneck)
{
    static const int c18[4] = {2, 2, 2, 2}, c34[4] = {3, 4, 6, 3}, c101[4] = {3, 4, 23, 3};
    const int *c = depth == 18 ? c18 : depth == 101 ? c101 : c34;
    memcpy(counts, c, sizeof(int) * 4);
    *bottleneck = depth >= 50;
}

struct nn_model *nn_model_new(nn_backend_t *be, const struct nn_resnet_cfg *cfg,
                              const struct nn_crop_group *groups, int n_groups, int batch)
{
    if (cfg->depth != 18 && cfg->depth != 34 && cfg->depth != 50 && cfg->depth != 101) {
        LOG_ERROR("nn: resnet depth %d is not one of 18, 34, 50, 101", cfg->depth);
        return NULL;
    }
    if (cfg->width < 1 || cfg->width > 4096) {
        LOG_ERROR("nn: resnet width %d out of range", cfg->width);
        return NULL;
    }
    if (n_groups < 1 || n_groups > NN_MAX_GROUPS || batch < 1) {
        LOG_ERROR("nn: %d crop groups (1..%d) with batch %d", n_groups, NN_MAX_GROUPS, batch);
        return NULL;
    }
    int min_size = cfg->small_stem ? 8 : 32;
    for (int i = 0; i < n_groups; i++) {
        if (groups[i].n_crops < 1 || groups[i].size < min_size || groups[i].size > 4096) {
            LOG_ERROR("nn: crop group %d: %d crops of %d pixels (size must be >= %d)", i,
                      groups[i].n_crops, groups[i].size, min_size);
            return NULL;
        }
    }
    if (cfg->nmb_prototypes > 0 && cfg->feat_dim <= 0) {
        LOG_ERROR("nn: prototypes need a projection head (feat_dim > 0)");
        return NULL;
    }
    if (cfg->act_dtype != NN_DTYPE_F32 &&
        (!nn_dtype_is_lowp(cfg->act_dtype) || !nn_backend_has_lowp(be))) {
        LOG_ERROR("nn: a %s backbone (cfg.act_dtype, --use_fp16) needs a backend that has one"
                  " (cuda); the %s backend computes in fp32 only",
                  nn_dtype_name(cfg->act_dtype), nn_backend_name(be));
        return NULL;
    }
    struct nn_model *m = swav_xcalloc(1, sizeof *m);
    struct nn_model_impl *I = swav_xcalloc(1, sizeof *I);
    m->impl = I;
    m->cfg = *cfg;
    m->be = be;
    m->n_groups = n_groups;
    memcpy(m->groups, groups, sizeof(*groups) * (size_t)n_groups);
    m->batch = batch;
    m->n_rows = 0;
    for (int i = 0; i < n_groups; i++) {
        m->n_rows += groups[i].n_crops * batch;
    }
    I->layout = (!cfg->plain_layout && cfg->width % 8 == 0 && be->iface->blocked_layout)
                    ? NN_LAYOUT_NCHW8C
                    : NN_LAYOUT_NCHW;
    I->dtype = NN_DTYPE_F32;
    I->stem_cin = 3;
    if (cfg->act_dtype != NN_DTYPE_F32) {
        I->layout = NN_LAYOUT_NHWC;
        I->dtype = cfg->act_dtype;
        I->stem_cin = NN_LOWP_STEM_CHANNELS;
    }
    nn_param_table_init(&m->params);
    nn_param_table_init(&m->buffers);

    /* declare, in state-dict order */
    int w = cfg->width;
    if (cfg->small_stem) {
        I->stem_conv = rn_conv_decl(m, "conv1", 3, w, 3, 1, 1);
    } else {
        /* ZeroPad2d(1) then pad 2 == one zero pad of 3 */
        I->stem_conv = rn_conv_decl(m, "conv1", 3, w, 7, 2, 3);
    }
    I->stem_bn = rn_bn_decl(m, "bn1", w, 0);
    int counts[4], bottleneck;
    rn_stage_counts(cfg->depth, counts, &bottleneck);
    int expansion = bottleneck ? 4 : 1;
    I->n_blocks = counts[0] + counts[1] + counts[2] + counts[3];
    I->blocks = swav_xcalloc((size_t)I->n_blocks, sizeof *I->blocks);
    int inplanes = w, planes = w, bi = 0;
    for (int s = 0; s < 4; s++) {
        if (s > 0) {
            planes *= 2;
        }
        for (int j = 0; j < counts[s]; j++, bi++) {
            struct rn_block *b = &I->blocks[bi];
            int stride = (s > 0 && j == 0) ? 2 : 1;
            char pre[32], nm[64];
            snprintf(pre, sizeof pre, "layer%d.%d", s + 1, j);
            b->bottleneck = bottleneck;
            int zi = cfg->zero_init_residual;
            if (bottleneck) {
                snprintf(nm, sizeof nm, "%s.conv1", pre);
                b->conv[0] = rn_conv_decl(m, nm, inplanes, planes, 1, 1, 0);
                snprintf(nm, sizeof nm, "%s.bn1", pre);
                b->bn[0] = rn_bn_decl(m, nm, planes, 0);
                snprintf(nm, sizeof nm, "%s.conv2", pre);
                b->conv[1] = rn_conv_decl(m, nm, planes, planes, 3, stride, 1);
                snprintf(nm, sizeof nm, "%s.bn2", pre);
                b->bn[1] = rn_bn_decl(m, nm, planes, 0);
                snprintf(nm, sizeof nm, "%s.conv3", pre);
                b->conv[2] = rn_conv_decl(m, nm, planes, planes * 4, 1, 1, 0);
                snprintf(nm, sizeof nm, "%s.bn3", pre);
                b->bn[2] = rn_bn_decl(m, nm, planes * 4, zi);
            } else {
                snprintf(nm, sizeof nm, "%s.conv1", pre);
                b->conv[0] = rn_conv_decl(m, nm, inplanes, planes, 3, stride, 1);
                snprintf(nm, sizeof nm, "%s.bn1", pre);
                b->bn[0] = rn_bn_decl(m, nm, planes, 0);
                snprintf(nm, sizeof nm, "%s.conv2", pre);
                b->conv[1] = rn_conv_decl(m, nm, planes, planes, 3, 1, 1);
                snprintf(nm, sizeof nm, "%s.bn2", pre);
                b->bn[1] = rn_bn_decl(m, nm, planes, zi);
            }
            if (stride != 1 || inplanes != planes * expansion) {
                b->has_ds = 1;
                snprintf(nm, sizeof nm, "%s.downsample.0", pre);
                b->ds = rn_conv_decl(m, nm, inplanes, planes * expansion, 1, stride, 0);
                snprintf(nm, sizeof nm, "%s.downsample.1", pre);
                b->dsbn = rn_bn_decl(m, nm, planes * expansion, 0);
            }
            inplanes = planes * expansion;
        }
    }
    m->feat_channels = inplanes;
    I->has_head = cfg->feat_dim > 0;
    I->hidden = I->has_head ? cfg->hidden_mlp : 0;
    if (I->has_head) {
        if (I->hidden > 0) {
            I->head0 = rn_linear_decl(m, "projection_head.0", inplanes, I->hidden, 1, 0);
            I->head_bn = rn_bn_decl(m, "projection_head.1", I->hidden, 0);
            I->head3 = rn_linear_decl(m, "projection_head.3", I->hidden, cfg->feat_dim, 1, 0);
        } else {
            I->head0 = rn_linear_decl(m, "projection_head", inplanes, cfg->feat_dim, 1, 0);
        }
        if (cfg->nmb_prototypes > 0) {
            I->protos = rn_linear_decl(m, "prototypes", cfg->feat_dim, cfg->nmb_prototypes, 0,
                                       NN_PARAM_PROTOTYPES);
        }
    }

    /* initialize on the host, then copy into the backend's memory (which
     * the host may not touch: the CUDA backend's is device memory) */
    const size_t param_bytes = (m->params.total ? m->params.total : 1) * sizeof(float);
    const size_t buffer_bytes = (m->buffers.total ? m->buffers.total : 1) * sizeof(float);
    m->param_data = swav_xcalloc(1, param_bytes);
    m->buffer_data = swav_xcalloc(1, buffer_bytes);
    uint32_t tag = 0;
    rn_init_conv(m, &I->stem_conv, tag++);
    rn_init_bn(m, &I->stem_bn);
    I->nbt = swav_xcalloc(1 + 4 * (size_t)I->n_blocks, sizeof(int64_t));
    I->nbt[I->n_nbt++] = (int64_t)I->stem_bn.nbt;
    for (int i = 0; i < I->n_blocks; i++) {
        struct rn_block *b = &I->blocks[i];
        for (int c = 0; c < (b->bottleneck ? 3 : 2); c++) {
            rn_init_conv(m, &b->conv[c], tag++);
            rn_init_bn(m, &b->bn[c]);
            I->nbt[I->n_nbt++] = (int64_t)b->bn[c].nbt;
        }
        if (b->has_ds) {
            rn_init_conv(m, &b->ds, tag++);
            rn_init_bn(m, &b->dsbn);
            I->nbt[I->n_nbt++] = (int64_t)b->dsbn.nbt;
        }
    }
    if (I->has_head) {
        rn_init_linear(m, &I->head0, tag++);
        if (I->hidden) {
            rn_init_bn(m, &I->head_bn);
            rn_init_linear(m, &I->head3, tag++);
        }
        if (cfg->nmb_prototypes > 0) {
            rn_init_linear(m, &I->protos, tag++);
        }
    }
    float *host_params = m->param_data, *host_buffers = m->buffer_data;
    m->param_data = nn_backend_alloc(be, param_bytes);
    m->buffer_data = nn_backend_alloc(be, buffer_bytes);
    m->grad_data = nn_backend_alloc(be, param_bytes);
    nn_backend_copy(be, m->param_data, host_params, param_bytes);
    nn_backend_copy(be, m->buffer_data, host_buffers, buffer_bytes);
    free(host_params);
    free(host_buffers);

    /* activations: measure, allocate once, lay out */
    for (int i = 0; i < n_groups; i++) {
        I->g[i].blocks = swav_xcalloc((size_t)I->n_blocks, sizeof(struct rn_block_act));
    }
    nn_arena_init(&I->arena, be);
    rn_plan(m);
    nn_arena_commit(&I->arena);
    rn_plan(m);
    m->out = m->scores ? m->scores : m->embedding ? m->embedding : m->feats;
    m->out_dim = m->scores ? cfg->nmb_prototypes : m->embedding ? cfg->feat_dim : m->feat_channels;
    I->last_batch = -1;
    return m;
}

void nn_model_destroy(struct nn_model **mp)
{
    if (!mp || !*mp) {
        return;
    }
    struct nn_model *m = *mp;
    struct nn_model_impl *I = m->impl;
    for (int i = 0; i < m->n_groups; i++) {
        free(I->g[i].blocks);
    }
    nn_syncbn_destroy(&I->sync);
    free(I->blocks);
    free(I->nbt);
    nn_arena_free(&I->arena);
    nn_backend_free(m->be, m->param_data);
    nn_backend_free(m->be, m->grad_data);
    nn_backend_free(m->be, m->buffer_data);
    nn_param_table_free(&m->params);
    nn_param_table_free(&m->buffers);
    free(I);
    free(m);
    *mp = NULL;
}

/* ---- forward -------------------------------------------------------------------- */

static struct nn_tensor rn_weight(struct nn_model *m, const struct rn_conv *c, float *base)
{
    return nn_tensor_4d(base + c->w, NN_LAYOUT_NCHW, c->cout, c->cin, c->k, c->k);
}

/* Resizes a planned activation to the batch of this call (its memory was
 * sized for the built batch). */
static void rn_rebatch(struct nn_tensor *t, int64_t n)
{
    t->shape[0] = n;
}

/* A BatchNorm2d/1d forward: SyncBN in train mode when the model has it. */
static void rn_bn_forward(struct nn_model *m, struct nn_tensor *y, const struct nn_tensor *x,
                          const struct rn_bn *bn, float *mean, float *var, double *count, void *ws,
                          unsigned fl)
{
    float *P = m->param_data, *B = m->buffer_data;
    if ((fl & NN_BN_TRAIN) && m->impl->sync) {
        nn_syncbn_forward(m->impl->sync, m->be, y, x, P + bn->w, P + bn->b, B + bn->rm,
                          B + bn->rv, mean, var, count, ws, fl & NN_BN_RELU, RN_BN_MOMENTUM,
                          RN_BN_EPS);
    } else {
        nn_batchnorm_forward(m->be, y, x, P + bn->w, P + bn->b, B + bn->rm, B + bn->rv, mean,
                             var, ws, fl, RN_BN_MOMENTUM, RN_BN_EPS);
        *count = (double)nn_tensor_numel(x) / (double)x->shape[1];
    }
}

/* Its backward (train mode); dinp may alias dout. */
static void rn_bn_backward(struct nn_model *m, struct nn_tensor *dinp, const struct nn_tensor *dout,
                           const struct nn_tensor *x, const struct rn_bn *bn, const float *mean,
                           const float *var, double count, const void *ws, unsigned fl)
{
    float *P = m->param_data, *G = m->grad_data;
    if (m->impl->sync) {
        nn_syncbn_backward(m->impl->sync, m->be, dinp, G + bn->w, G + bn->b, dout, x, P + bn->w,
                           mean, var, count, ws, fl & NN_BN_RELU, RN_BN_EPS);
    } else {
        nn_batchnorm_backward(m->be, dinp, G + bn->w, G + bn->b, dout, x, P + bn->w, mean, var, ws,
                              fl, RN_BN_EPS);
    }
}

static void rn_cbn_forward(struct nn_model *m, struct rn_cbn_act *a, const struct nn_tensor *in,
                           const struct rn_conv *c, const struct rn_bn *bn, int relu,
                           enum nn_model_mode mode)
{
    float *P = m->param_data;
    struct nn_tensor w = rn_weight(m, c, P);
    rn_rebatch(&a->x, in->shape[0]);
    rn_rebatch(&a->y, in->shape[0]);
    nn_conv2d_forward(m->be, &a->x, in, &w, c->stride, c->pad);
    unsigned fl = (mode == NN_MODEL_TRAIN ? NN_BN_TRAIN : 0) | (relu ? NN_BN_RELU : 0);
    rn_bn_forward(m, &a->y, &a->x, bn, a->mean, a->var, &a->count,
                  mode == NN_MODEL_TRAIN ? a->ws : NULL, fl);
}

int nn_model_forward(struct nn_model *m, const float *const *inputs, int batch,
                     enum nn_model_mode mode)
{
    struct nn_model_impl *I = m->impl;
    SWAV_ASSERT(batch >= 1 && batch <= m->batch);
    nn_backend_weights_updated(m->be); /* the optimizer may have stepped */
    int rows = 0;
    for (int gi = 0; gi < m->n_groups; gi++) {
        struct rn_group_act *g = &I->g[gi];
        int64_t n = (int64_t)m->groups[gi].n_crops * batch;
        int s = m->groups[gi].size;
        g->rows0 = rows;
        rows += (int)n;
        g->input = nn_tensor_4d((float *)inputs[gi], NN_LAYOUT_NCHW, n, 3, s, s);
        const struct nn_tensor *stem_in = &g->input;
        if (nn_dtype_is_lowp(I->dtype)) {
            rn_rebatch(&g->in_bf, n);
            nn_convert(m->be, &g->in_bf, &g->input);
            stem_in = &g->in_bf;
        }
        rn_cbn_forward(m, &g->stem, stem_in, &I->stem_conv, &I->stem_bn, 1, mode);
        const struct nn_tensor *prev = &g->stem.y;
        if (!m->cfg.small_stem) {
            rn_rebatch(&g->pool, n);
            nn_maxpool2d_forward(m->be, &g->pool, &g->stem.y, g->pool_ws, 3, 2, 1);
            prev = &g->pool;
        }
        for (int bi = 0; bi < I->n_blocks; bi++) {
            const struct rn_block *b = &I->blocks[bi];
            struct rn_block_act *a = &g->blocks[bi];
            int nconv = b->bottleneck ? 3 : 2;
            const struct nn_tensor *x = prev;
            for (int ci = 0; ci < nconv; ci++) {
                rn_cbn_forward(m, &a->u[ci], x, &b->conv[ci], &b->bn[ci], ci < nconv - 1, mode);
                x = &a->u[ci].y;
            }
            const struct nn_tensor *identity = prev;
            if (b->has_ds) {
                rn_cbn_forward(m, &a->d, prev, &b->ds, &b->dsbn, 0, mode);
                identity = &a->d.y;
            }
            rn_rebatch(&a->out, n);
            nn_add_forward(m->be, &a->out, x, identity, 1);
            prev = &a->out;
        }
        struct nn_tensor f = nn_tensor_2d(m->feats + (size_t)g->rows0 * m->feat_channels, n,
                                          m->feat_channels);
        nn_avgpool_forward(m->be, &f, prev);
    }
    m->n_rows = rows;
    I->last_mode = mode;
    I->last_batch = batch;
    if (mode == NN_MODEL_TRAIN) {
        nn_backend_add_at(m->be, m->buffer_data, I->nbt, I->n_nbt, (float)m->n_groups);
    }
    if (!I->has_head) {
        return nn_model_sync_status(m);
    }
    float *P = m->param_data;
    struct nn_tensor feats = nn_tensor_2d(m->feats, rows, m->feat_channels);
    struct nn_tensor er = nn_tensor_2d(I->emb_raw, rows, m->cfg.feat_dim);
    if (I->hidden) {
        struct nn_tensor h0 = nn_tensor_2d(I->h0, rows, I->hidden);
        struct nn_tensor h1 = nn_tensor_2d(I->h1, rows, I->hidden);
        nn_linear_forward(m->be, &h0, &feats, P + I->head0.w, P + I->head0.b);
        unsigned fl = (mode == NN_MODEL_TRAIN ? NN_BN_TRAIN : 0) | NN_BN_RELU;
        rn_bn_forward(m, &h1, &h0, &I->head_bn, I->h1_mean, I->h1_var, &I->h1_count,
                      mode == NN_MODEL_TRAIN ? I->h1_ws : NULL, fl);
        if (mode == NN_MODEL_TRAIN) {
            int64_t off = (int64_t)I->head_bn.nbt;
            nn_backend_add_at(m->be, m->buffer_data, &off, 1, 1.0f);
        }
        nn_linear_forward(m->be, &er, &h1, P + I->head3.w, P + I->head3.b);
    } else {
        nn_linear_forward(m->be, &er, &feats, P + I->head0.w, P + I->head0.b);
    }
    struct nn_tensor emb = nn_tensor_2d(m->embedding, rows, m->cfg.feat_dim);
    if (m->cfg.no_l2norm) {
        nn_backend_copy(m->be, m->embedding, I->emb_raw,
                        (size_t)rows * m->cfg.feat_dim * sizeof(float));
    } else {
        nn_l2_normalize_forward(m->be, &emb, &er, I->norms);
    }
    if (m->scores) {
        struct nn_tensor sc = nn_tensor_2d(m->scores, rows, m->cfg.nmb_prototypes);
        nn_linear_forward(m->be, &sc, &emb, P + I->protos.w, NULL);
    }
    return nn_model_sync_status(m);
}

/* ---- backward --------------------------------------------------------------------- */

static float *rn_free_buf(struct nn_model_impl *I, const float *a, const float *b, const float *c)
{
    for (int i = 0; i < 4; i++) {
        if (I->gbuf[i] != a && I->gbuf[i] != b && I->gbuf[i] != c) {
            return I->gbuf[i];
        }
    }
    SWAV_ASSERT(0);
    return NULL;
}

static struct nn_tensor rn_like(float *data, const struct nn_tensor *t)
{
    struct nn_tensor r = *t;
    r.data = data;
    return r;
}

/* dy (gradient of the BN(+ReLU) output) -> gradient of the conv input in dx
 * (NULL: none).  dy is overwritten (the BN backward runs in place). */
static void rn_cbn_backward(struct nn_model *m, struct nn_tensor *dx, struct nn_tensor *dy,
                            const struct rn_cbn_act *a, const struct nn_tensor *in,
                            const struct rn_conv *c, const struct rn_bn *bn, int relu)
{
    float *P = m->param_data, *G = m->grad_data;
    unsigned fl = NN_BN_TRAIN | (relu ? NN_BN_RELU : 0);
    rn_bn_backward(m, dy, dy, &a->x, bn, a->mean, a->var, a->count, a->ws, fl);
    struct nn_tensor w = rn_weight(m, c, P);
    struct nn_tensor dw = rn_weight(m, c, G);
    nn_conv2d_backward(m->be, dx, &dw, dy, in, &w, c->stride, c->pad);
}

int nn_model_backward(struct nn_model *m, const float *dout)
{
    struct nn_model_impl *I = m->impl;
    SWAV_ASSERT(I->last_mode == NN_MODEL_TRAIN && I->last_batch > 0);
    float *P = m->param_data, *G = m->grad_data;
    int rows = m->n_rows;
    const float *dfeats = dout;
    if (I->has_head) {
        int fd = m->cfg.feat_dim;
        struct nn_tensor emb = nn_tensor_2d(m->embedding, rows, fd);
        struct nn_tensor demb = nn_tensor_2d(I->demb, rows, fd);
        if (m->scores) {
            struct nn_tensor dsc = nn_tensor_2d((float *)dout, rows, m->cfg.nmb_prototypes);
            nn_linear_backward(m->be, &demb, G + I->protos.w, NULL, &dsc, &emb, P + I->protos.w);
        } else {
            nn_backend_copy(m->be, I->demb, dout, (size_t)rows * fd * sizeof(float));
        }
        struct nn_tensor der = nn_tensor_2d(I->demb_raw, rows, fd);
        if (m->cfg.no_l2norm) {
            nn_backend_copy(m->be, I->demb_raw, I->demb, (size_t)rows * fd * sizeof(float));
        } else {
            nn_l2_normalize_backward(m->be, &der, &demb, &emb, I->norms);
        }
        struct nn_tensor feats = nn_tensor_2d(m->feats, rows, m->feat_channels);
        struct nn_tensor dfe = nn_tensor_2d(I->dfeats, rows, m->feat_channels);
        /* the head runs once over every group's rows: its gradients are
         * final after it (declared after the backbone: [head0.w, total)) */
        size_t head_lo = I->head0.w;
        if (I->hidden) {
            struct nn_tensor h0 = nn_tensor_2d(I->h0, rows, I->hidden);
            struct nn_tensor h1 = nn_tensor_2d(I->h1, rows, I->hidden);
            struct nn_tensor dh1 = nn_tensor_2d(I->dh1, rows, I->hidden);
            struct nn_tensor dh0 = nn_tensor_2d(I->dh0, rows, I->hidden);
            nn_linear_backward(m->be, &dh1, G + I->head3.w, G + I->head3.b, &der, &h1,
                               P + I->head3.w);
            rn_bn_backward(m, &dh0, &dh1, &h0, &I->head_bn, I->h1_mean, I->h1_var, I->h1_count,
                           I->h1_ws, NN_BN_TRAIN | NN_BN_RELU);
            nn_linear_backward(m->be, &dfe, G + I->head0.w, G + I->head0.b, &dh0, &feats,
                               P + I->head0.w);
        } else {
            nn_linear_backward(m->be, &dfe, G + I->head0.w, G + I->head0.b, &der, &feats,
                               P + I->head0.w);
        }
        dfeats = I->dfeats;
        if (I->grad_ready) {
            I->grad_ready(I->grad_ready_ctx, head_lo);
        }
    }
    for (int gi = m->n_groups - 1; gi >= 0; gi--) {
        struct rn_group_act *g = &I->g[gi];
        const struct nn_tensor *last = &g->blocks[I->n_blocks - 1].out;
        int64_t n = last->shape[0];
        float *gcur = I->gbuf[0];
        struct nn_tensor dcur = rn_like(gcur, last);
        struct nn_tensor df = nn_tensor_2d((float *)dfeats + (size_t)g->rows0 * m->feat_channels,
                                           n, m->feat_channels);
        nn_avgpool_backward(m->be, &dcur, &df);
        for (int bi = I->n_blocks - 1; bi >= 0; bi--) {
            const struct rn_block *b = &I->blocks[bi];
            struct rn_block_act *a = &g->blocks[bi];
            const struct nn_tensor *in = bi > 0 ? &g->blocks[bi - 1].out
                                                : (m->cfg.small_stem ? &g->stem.y : &g->pool);
            int nconv = b->bottleneck ? 3 : 2;
            /* through the final ReLU, in place: d of the sum */
            nn_relu_backward(m->be, &dcur, &dcur, &a->out);
            float *t1 = rn_free_buf(I, gcur, NULL, NULL);
            float *t2 = rn_free_buf(I, gcur, t1, NULL);
            float *t3 = rn_free_buf(I, gcur, t1, t2);
            /* main branch; dcur stays intact for the identity/downsample path */
            struct nn_tensor dy = rn_like(t1, &a->u[nconv - 1].y);
            const struct rn_cbn_act *ul = &a->u[nconv - 1];
            rn_bn_backward(m, &dy, &dcur, &ul->x, &b->bn[nconv - 1], ul->mean, ul->var, ul->count,
                           NULL, NN_BN_TRAIN);
            /* dy is now d(conv_last output); walk back through the convs */
            float *bufs[2] = {t1, t2};
            int cur = 0;
            for (int ci = nconv - 1; ci >= 0; ci--) {
                const struct rn_conv *c = &b->conv[ci];
                const struct nn_tensor *cin = ci > 0 ? &a->u[ci - 1].y : in;
                struct nn_tensor dw = rn_weight(m, c, G);
                struct nn_tensor w = rn_weight(m, c, P);
                struct nn_tensor dxin = rn_like(ci > 0 ? bufs[1 - cur] : t3, cin);
                nn_conv2d_backward(m->be, &dxin, &dw, &dy, cin, &w, c->stride, c->pad);
                if (ci > 0) {
                    /* BN(+ReLU) of the previous unit, in place */
                    const struct rn_cbn_act *u = &a->u[ci - 1];
                    const struct rn_bn *bn = &b->bn[ci - 1];
                    rn_bn_backward(m, &dxin, &dxin, &u->x, bn, u->mean, u->var, u->count, u->ws,
                                   NN_BN_TRAIN | NN_BN_RELU);
                    cur = 1 - cur;
                    dy = dxin;
                }
            }
            struct nn_tensor dx = rn_like(t3, in);
            if (b->has_ds) {
                struct nn_tensor dd = rn_like(t1, &a->d.y);
                struct nn_tensor dxd = rn_like(t2, in);
                rn_bn_backward(m, &dd, &dcur, &a->d.x, &b->dsbn, a->d.mean, a->d.var, a->d.count,
                               NULL, NN_BN_TRAIN);
                struct nn_tensor wd = rn_weight(m, &b->ds, P);
                struct nn_tensor dwd = rn_weight(m, &b->ds, G);
                nn_conv2d_backward(m->be, &dxd, &dwd, &dd, in, &wd, b->ds.stride, b->ds.pad);
                nn_accumulate(m->be, &dx, &dxd);
            } else {
                nn_accumulate(m->be, &dx, &dcur);
            }
            gcur = t3;
            dcur = dx;
            if (gi == 0 && I->grad_ready) {
                /* the last group done with this block: its parameters
                 * (declared in order: [conv1.weight, the next block's)) are
                 * final */
                I->grad_ready(I->grad_ready_ctx, b->conv[0].w);
            }
        }
        /* stem */
        struct nn_tensor dstem = rn_like(rn_free_buf(I, gcur, NULL, NULL), &g->stem.y);
        if (!m->cfg.small_stem) {
            nn_maxpool2d_backward(m->be, &dstem, &dcur, g->pool_ws, 3, 2, 1);
        } else {
            dstem = dcur;
        }
        const struct nn_tensor *stem_in = nn_dtype_is_lowp(I->dtype) ? &g->in_bf : &g->input;
        rn_cbn_backward(m, NULL, &dstem, &g->stem, stem_in, &I->stem_conv, &I->stem_bn, 1);
    }
    if (I->grad_ready) {
        I->grad_ready(I->grad_ready_ctx, 0); /* the stem: everything */
    }
    return nn_model_sync_status(m);
}

void nn_model_set_grad_ready(struct nn_model *m, nn_grad_ready_fn fn, void *ctx)
{
    struct nn_model_impl *I = m->impl;
    /* the calls' offsets rely on the declaration order: stem, blocks, head */
    for (int i = 0; i < I->n_blocks; i++) {
        SWAV_ASSERT(I->blocks[i].conv[0].w > (i ? I->blocks[i - 1].conv[0].w : I->stem_bn.b));
    }
    SWAV_ASSERT(!I->has_head || I->head0.w > I->blocks[I->n_blocks - 1].conv[0].w);
    I->grad_ready = fn;
    I->grad_ready_ctx = ctx;
}

int nn_model_set_sync_bn(struct nn_model *m, struct nn_collective *c, int group_size, char *err,
                         size_t errlen)
{
    struct nn_model_impl *I = m->impl;
    nn_syncbn_destroy(&I->sync);
    if (!c || c->world == 1) {
        return 0;
    }
    int max_c = I->hidden;
    max_c = I->stem_bn.c > max_c ? I->stem_bn.c : max_c;
    for (int i = 0; i < I->n_blocks; i++) {
        const struct rn_block *b = &I->blocks[i];
        for (int k = 0; k < (b->bottleneck ? 3 : 2); k++) {
            max_c = b->bn[k].c > max_c ? b->bn[k].c : max_c;
        }
        if (b->has_ds && b->dsbn.c > max_c) {
            max_c = b->dsbn.c;
        }
    }
    I->sync = nn_syncbn_new(c, group_size, max_c, err, errlen);
    return I->sync ? 0 : -1;
}

int nn_model_sync_status(const struct nn_model *m)
{
    return m->impl->sync ? nn_syncbn_status(m->impl->sync) : 0;
}

void nn_model_zero_grad(struct nn_model *m)
{
    nn_backend_zero(m->be, m->grad_data, m->params.total * sizeof(float));
}

void nn_model_normalize_prototypes(struct nn_model *m)
{
    struct nn_model_impl *I = m->impl;
    if (!m->scores) {
        return;
    }
    nn_backend_normalize_rows(m->be, m->param_data + I->protos.w, m->cfg.nmb_prototypes,
                              m->cfg.feat_dim);
}

float *nn_model_param(struct nn_model *m, const char *name)
{
    int i = nn_param_table_find(&m->params, name);
    return i < 0 ? NULL : m->param_data + m->params.p[i].offset;
}

float *nn_model_grad(struct nn_model *m, const char *name)
{
    int i = nn_param_table_find(&m->params, name);
    return i < 0 ? NULL : m->grad_data + m->params.p[i].offset;
}

float *nn_model_buffer(struct nn_model *m, const char *name)
{
    int i = nn_param_table_find(&m->buffers, name);
    return i < 0 ? NULL : m->buffer_data + m->buffers.p[i].offset;
}

int nn_model_activation(const struct nn_model *m, int group, const char *name,
                        struct nn_tensor *out)
{
    const struct nn_model_impl *I = m->impl;
    if (!strncmp(name, "projection_head.", 16)) {
        if (!I->hidden || m->n_rows < 1) {
            return -1;
        }
        if (!strcmp(name + 16, "0")) {
            *out = nn_tensor_2d(I->h0, m->n_rows, I->hidden);
        } else if (!strcmp(name + 16, "1")) {
            *out = nn_tensor_2d(I->h1, m->n_rows, I->hidden);
        } else {
            return -1;
        }
        return 0;
    }
    if (group < 0 || group >= m->n_groups) {
        return -1;
    }
    const struct rn_group_act *g = &I->g[group];
    if (!strcmp(name, "conv1")) {
        *out = g->stem.x;
        return 0;
    }
    if (!strcmp(name, "bn1")) {
        *out = g->stem.y;
        return 0;
    }
    int counts[4], bottleneck, s, j, used = 0;
    rn_stage_counts(m->cfg.depth, counts, &bottleneck);
    if (sscanf(name, "layer%d.%d%n", &s, &j, &used) != 2 || s < 1 || s > 4 || j < 0 ||
        j >= counts[s - 1]) {
        return -1;
    }
    int bi = j;
    for (int i = 0; i < s - 1; i++) {
        bi += counts[i];
    }
    const struct rn_block_act *a = &g->blocks[bi];
    const char *rest = name + used;
    int k = 0, kused = 0;
    if (!*rest) {
        *out = a->out;
    } else if (I->blocks[bi].has_ds && !strcmp(rest, ".downsample.0")) {
        *out = a->d.x;
    } else if (I->blocks[bi].has_ds && !strcmp(rest, ".downsample.1")) {
        *out = a->d.y;
    } else if ((sscanf(rest, ".conv%d%n", &k, &kused) == 1 ||
                sscanf(rest, ".bn%d%n", &k, &kused) == 1) &&
               !rest[kused] && k >= 1 && k <= (bottleneck ? 3 : 2)) {
        *out = rest[1] == 'c' ? a->u[k - 1].x : a->u[k - 1].y;
    } else {
        return -1;
    }
    return 0;
}

size_t nn_model_arena_bytes(const struct nn_model *m)
{
    return m->impl->arena.size;
}
