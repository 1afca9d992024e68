/* Model-level checks that need no torch (suite 'unit'):
 * - state-dict names and tables (params, buffers, prototype flag, int64 flag);
 * - a second step creates no new primitive (everything cached after warm-up)
 *   and gives bit-identical outputs and gradients (same params, same input);
 * - num_batches_tracked counts one per crop group (backbone) and one per step
 *   (head BN1d), as the reference;
 * - a smaller batch than built, eval mode, and both stems/blocks run and give
 *   finite values;
 * - nn_normalize_u8 and layout conversion round trip. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "nn/layers.h"
#include "nn/resnet.h"

#define EXPECT_SHOW_COND 1
#include "tests/expect.h"

static int all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            return 0;
        }
    }
    return 1;
}

/* the first value of a buffer of the model */
static float buffer0(struct nn_model *m, const char *name)
{
    float v;
    nn_backend_copy(m->be, &v, nn_model_buffer(m, name), sizeof v);
    return v;
}

/* One train step: forward, SwAV loss with fixed q, backward. Returns loss. */
static float step(nn_backend_t *be, struct nn_model *m, float **inputs, int batch, int n_crops,
                  const float *q, float *logp, float *dsc)
{
    static const int assign[2] = {0, 1};
    struct nn_swav_loss_cfg lc = {n_crops, batch, 2, assign, 0.1f};
    nn_model_forward(m, (const float *const *)inputs, batch, NN_MODEL_TRAIN);
    int K = m->cfg.nmb_prototypes;
    struct nn_tensor sc = nn_tensor_2d(m->scores, m->n_rows, K);
    struct nn_tensor d = nn_tensor_2d(dsc, m->n_rows, K);
    float loss = nn_swav_loss_forward(be, logp, &sc, q, &lc);
    nn_swav_loss_backward(be, &d, logp, q, &lc);
    nn_model_zero_grad(m);
    nn_model_backward(m, dsc);
    return loss;
}

static void test_model(nn_backend_t *be, int depth, int width, int small_stem,
                       const struct nn_crop_group *groups, int ng, int batch)
{
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.depth = depth;
    cfg.width = width;
    cfg.small_stem = small_stem;
    cfg.hidden_mlp = 16;
    cfg.feat_dim = 8;
    cfg.nmb_prototypes = 10;
    struct nn_model *m = nn_model_new(be, &cfg, groups, ng, batch);
    EXPECT(m != NULL, "model");
    if (!m) {
        return;
    }
    printf("resnet%d w%d %s: %d params (%zu floats), %d buffers, arena %.1f MiB\n", depth, width,
           small_stem ? "small stem" : "swav stem", m->params.n, m->params.total, m->buffers.n,
           nn_model_arena_bytes(m) / 1048576.0);
    /* names */
    EXPECT(!strcmp(m->params.p[0].name, "conv1.weight"), "first %s", m->params.p[0].name);
    EXPECT(!strcmp(m->params.p[1].name, "bn1.weight"), "second %s", m->params.p[1].name);
    int pi = nn_param_table_find(&m->params, "prototypes.weight");
    EXPECT(pi == m->params.n - 1 && (m->params.p[pi].flags & NN_PARAM_PROTOTYPES), "prototypes");
    EXPECT(nn_param_table_find(&m->params, "layer1.0.conv1.weight") >= 0, "layer1.0.conv1");
    EXPECT(nn_param_table_find(&m->params, "layer2.0.downsample.0.weight") >= 0, "downsample");
    EXPECT(nn_param_table_find(&m->params, "projection_head.3.bias") >= 0, "head");
    int bi = nn_param_table_find(&m->buffers, "bn1.num_batches_tracked");
    EXPECT(bi >= 0 && (m->buffers.p[bi].flags & NN_PARAM_INT64) && m->buffers.p[bi].ndim == 0,
           "num_batches_tracked");
    EXPECT(buffer0(m, "projection_head.1.running_var") == 1.0f, "running var init");
    /* inputs, q */
    struct swav_rng r;
    swav_rng_init(&r, 9, 0, 0, 0);
    float *inputs[NN_MAX_GROUPS];
    int n_crops = 0;
    for (int g = 0; g < ng; g++) {
        size_t n = (size_t)groups[g].n_crops * batch * 3 * groups[g].size * groups[g].size;
        float *h = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            h[i] = (float)swav_rng_normal(&r);
        }
        inputs[g] = nn_backend_alloc(be, n * sizeof(float)); /* a layer's input: backend memory */
        nn_backend_copy(be, inputs[g], h, n * sizeof(float));
        free(h);
        n_crops += groups[g].n_crops;
    }
    int K = cfg.nmb_prototypes;
    size_t R = (size_t)m->n_rows;
    float *hq = malloc(sizeof(float) * 2 * batch * K);
    for (int i = 0; i < 2 * batch * K; i++) {
        hq[i] = 1.0f / K + 0.05f * (float)swav_rng_uniform(&r);
    }
    float *q = nn_backend_alloc(be, sizeof(float) * 2 * batch * K);
    nn_backend_copy(be, q, hq, sizeof(float) * 2 * batch * K);
    free(hq);
    float *logp = nn_backend_alloc(be, sizeof(float) * R * K);
    float *dsc = nn_backend_alloc(be, sizeof(float) * R * K);
    nn_model_normalize_prototypes(m);
    float l1 = step(be, m, inputs, batch, n_crops, q, logp, dsc);
    int cache1 = nn_backend_cache_size(be);
    float *scores1 = nn_backend_to_host(be, m->scores, R * K);
    float *grads1 = nn_backend_to_host(be, m->grad_data, m->params.total);
    float l2 = step(be, m, inputs, batch, n_crops, q, logp, dsc);
    EXPECT(nn_backend_cache_size(be) == cache1, "second step created %d primitives",
           nn_backend_cache_size(be) - cache1);
    EXPECT(l1 == l2 && isfinite(l1), "loss %g then %g", l1, l2);
    float *scores2 = nn_backend_to_host(be, m->scores, R * K);
    float *grads2 = nn_backend_to_host(be, m->grad_data, m->params.total);
    EXPECT(!memcmp(scores1, scores2, sizeof(float) * R * K), "scores differ between steps");
    EXPECT(!memcmp(grads1, grads2, sizeof(float) * m->params.total),
           "gradients differ between steps");
    EXPECT(all_finite(grads2, m->params.total), "gradients finite");
    double gn = 0;
    for (size_t i = 0; i < m->params.total; i++) {
        gn += (double)grads2[i] * grads2[i];
    }
    EXPECT(gn > 0, "zero gradient");
    EXPECT(buffer0(m, "bn1.num_batches_tracked") == 2.0f * ng, "backbone nbt %g",
           buffer0(m, "bn1.num_batches_tracked"));
    EXPECT(buffer0(m, "projection_head.1.num_batches_tracked") == 2.0f, "head nbt");
    /* prototypes normalized */
    float *w = nn_backend_to_host(be, nn_model_param(m, "prototypes.weight"), (size_t)cfg.feat_dim);
    double n0 = 0;
    for (int d = 0; d < cfg.feat_dim; d++) {
        n0 += (double)w[d] * w[d];
    }
    free(w);
    EXPECT(fabs(n0 - 1.0) < 1e-5, "prototype norm %g", n0);
    /* smaller batch, then eval */
    if (batch > 1) {
        step(be, m, inputs, batch - 1, n_crops, q, logp, dsc);
        EXPECT(m->n_rows == n_crops * (batch - 1), "rows %d", m->n_rows);
        float *g = nn_backend_to_host(be, m->grad_data, m->params.total);
        EXPECT(all_finite(g, m->params.total), "small-batch gradients finite");
        free(g);
    }
    nn_model_forward(m, (const float *const *)inputs, batch, NN_MODEL_EVAL);
    float *es = nn_backend_to_host(be, m->scores, R * K);
    float *ef = nn_backend_to_host(be, m->feats, R * m->feat_channels);
    EXPECT(all_finite(es, R * K) && all_finite(ef, R * m->feat_channels), "eval finite");
    free(es);
    free(ef);
    free(scores2);
    free(grads2);
    printf("  loss %.5f, gradient norm %.4g, %d primitives\n", l1, sqrt(gn), cache1);
    for (int g = 0; g < ng; g++) {
        nn_backend_free(be, inputs[g]);
    }
    nn_backend_free(be, q);
    nn_backend_free(be, logp);
    nn_backend_free(be, dsc);
    free(scores1);
    free(grads1);
    nn_model_destroy(&m);
    EXPECT(m == NULL, "destroy clears");
}

static void test_tensor(void)
{
    uint8_t px[2 * 2 * 3];
    for (int i = 0; i < 12; i++) {
        px[i] = (uint8_t)(i * 20);
    }
    float out[12];
    nn_normalize_u8(out, px, 1, 2, 2);
    /* pixel (0,1) channel 2 is px[5] = 100 */
    float want = (100.0f / 255.0f - 0.406f) / 0.225f;
    EXPECT(fabsf(out[2 * 4 + 1] - want) < 1e-5f, "normalize %g vs %g", out[9], want);
    float a[2 * 5 * 3 * 3], b[2 * 8 * 3 * 3], c[2 * 5 * 3 * 3];
    for (int i = 0; i < 90; i++) {
        a[i] = (float)i;
    }
    struct nn_tensor ta = nn_tensor_4d(a, NN_LAYOUT_NCHW, 2, 5, 3, 3);
    struct nn_tensor tb = nn_tensor_4d(b, NN_LAYOUT_NCHW8C, 2, 5, 3, 3);
    struct nn_tensor tc = nn_tensor_4d(c, NN_LAYOUT_NCHW, 2, 5, 3, 3);
    EXPECT(nn_tensor_bytes(&tb) == sizeof b, "blocked bytes %zu", nn_tensor_bytes(&tb));
    nn_tensor_convert(&tb, &ta);
    nn_tensor_convert(&tc, &tb);
    EXPECT(!memcmp(a, c, sizeof a), "layout round trip");
    struct nn_arena ar;
    nn_arena_init(&ar, NULL);
    void *p1 = nn_arena_alloc(&ar, 10), *p2 = nn_arena_alloc(&ar, 100);
    nn_arena_commit(&ar);
    void *q1 = nn_arena_alloc(&ar, 10), *q2 = nn_arena_alloc(&ar, 100);
    EXPECT((char *)p2 - (char *)p1 == (char *)q2 - (char *)q1 && ((uintptr_t)q2 % 64) == 0,
           "arena offsets");
    nn_arena_free(&ar);
}

int main(void)
{
    nn_backend_t *be = nn_backend_cpu_new(2);
    test_tensor();
    const struct nn_crop_group g1[2] = {{2, 16}, {2, 8}};
    test_model(be, 18, 8, 1, g1, 2, 3);
    const struct nn_crop_group g2[2] = {{2, 32}, {1, 32}};
    test_model(be, 50, 8, 0, g2, 2, 2);
    const struct nn_crop_group g3[1] = {{3, 16}};
    test_model(be, 34, 12, 1, g3, 1, 2); /* plain NCHW layout */
    nn_backend_destroy(&be);
    printf("%s: %d failures\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
