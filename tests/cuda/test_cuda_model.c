/* End to end: one SwAV forward + loss + backward of the same model (ResNet-18,
 * width 16, head 64 -> 16, 30 prototypes, crops 2x32 + 2x16, batch 4; same
 * seed, so the same weights) on the CPU backend and on the CUDA backend,
 * same inputs and codes.  The CPU model has its own PyTorch parity test
 * (tests/nn), so agreement here carries that parity to the GPU.
 *
 * Tolerances (max |cuda - cpu| / max |cpu| over the whole output): loss
 * 1e-4, scores 1e-3, BN running statistics 1e-3, parameter gradients 2e-3
 * (fp32 through 20 layers with batch norm, different summation orders).
 *
 * Exit 77 without a device, or when the model's activations live in host
 * memory the GPU cannot address (the arena hook of docs/cuda.md not there
 * yet and no HMM). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "nn/cuda/backend_cuda.h"
#include "nn/layers.h"
#include "nn/resnet.h"

static int failures;

static double rel_err(const float *a, const float *ref, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= md)) {
            md = d;
        }
        if (fabs(ref[i]) > mr) {
            mr = fabs(ref[i]);
        }
    }
    return md / (mr > 1e-6 ? mr : 1e-6);
}

static void check(const char *name, const float *g, const float *c, size_t n, double tol)
{
    double e = rel_err(g, c, n);
    int ok = e <= tol;
    printf("%-36s rel err %.3g (tol %.0e) %s\n", name, e, tol, ok ? "ok" : "FAIL");
    failures += !ok;
}

int main(void)
{
    if (nn_cuda_device_count() == 0) {
        printf("SKIP: no CUDA device (%s)\n", nn_cuda_count_error());
        return 77;
    }
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.depth = 18;
    cfg.width = 16;
    cfg.hidden_mlp = 64;
    cfg.feat_dim = 16;
    cfg.nmb_prototypes = 30;
    cfg.plain_layout = 1;
    cfg.seed = 7;
    const struct nn_crop_group groups[2] = {{2, 32}, {2, 16}};
    const int batch = 4, n_crops = 4, K = cfg.nmb_prototypes;
    nn_backend_t *cpu = nn_backend_cpu_new(0), *gpu = nn_backend_cuda_new(0);
    if (!gpu) {
        printf("FAIL: nn_backend_cuda_new(0)\n");
        return 1;
    }
    struct nn_model *mc = nn_model_new(cpu, &cfg, groups, 2, batch);
    struct nn_model *mg = nn_model_new(gpu, &cfg, groups, 2, batch);
    if (!mc || !mg) {
        printf("FAIL: nn_model_new\n");
        return 1;
    }
    int usable = nn_cuda_pointer_usable(mg->scores);
    if (!usable) {
        printf("SKIP: the model's activations are host memory this GPU cannot address "
               "(arena not allocated through the backend yet: docs/cuda.md)\n");
        return 77;
    }
    if (usable == 2) {
        printf("note: activations in host memory reached through HMM/ATS\n");
    }
    check("initial parameters (same seed)", mg->param_data, mc->param_data, mc->params.total, 0);

    struct swav_rng r;
    swav_rng_init(&r, 21, 0, 0, 0);
    float *in_c[2], *in_g[2];
    for (int g = 0; g < 2; g++) {
        size_t n = (size_t)groups[g].n_crops * batch * 3 * groups[g].size * groups[g].size;
        in_c[g] = malloc(n * sizeof(float));
        in_g[g] = nn_backend_alloc(gpu, n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            in_c[g][i] = in_g[g][i] = (float)swav_rng_normal(&r);
        }
    }
    /* codes: fixed rows of a softmax, the same on both sides */
    size_t nq = (size_t)2 * batch * K, ns = (size_t)n_crops * batch * K;
    float *q_c = malloc(nq * sizeof(float)), *q_g = nn_backend_alloc(gpu, nq * sizeof(float));
    for (size_t row = 0; row < nq / K; row++) {
        double s = 0;
        for (int k = 0; k < K; k++) {
            s += q_c[row * K + k] = (float)exp(swav_rng_normal(&r));
        }
        for (int k = 0; k < K; k++) {
            q_c[row * K + k] = q_g[row * K + k] = (float)(q_c[row * K + k] / s);
        }
    }
    float *lp_c = malloc(ns * sizeof(float)), *ds_c = malloc(ns * sizeof(float));
    float *lp_g = nn_backend_alloc(gpu, ns * sizeof(float)), *ds_g = nn_backend_alloc(gpu, ns * sizeof(float));
    static const int assign[2] = {0, 1};
    struct nn_swav_loss_cfg lc = {n_crops, batch, 2, assign, 0.1f};

    float loss[2];
    for (int side = 0; side < 2; side++) {
        struct nn_model *m = side ? mg : mc;
        nn_backend_t *be = side ? gpu : cpu;
        nn_model_normalize_prototypes(m);
        nn_model_forward(m, (const float *const *)(side ? in_g : in_c), batch, NN_MODEL_TRAIN);
        struct nn_tensor sc = nn_tensor_2d(m->scores, m->n_rows, K);
        struct nn_tensor dsc = nn_tensor_2d(side ? ds_g : ds_c, m->n_rows, K);
        loss[side] = nn_swav_loss_forward(be, side ? lp_g : lp_c, &sc, side ? q_g : q_c, &lc);
        nn_swav_loss_backward(be, &dsc, side ? lp_g : lp_c, side ? q_g : q_c, &lc);
        nn_model_zero_grad(m);
        nn_model_backward(m, side ? ds_g : ds_c);
        nn_backend_sync(be);
    }
    double le = fabs(loss[1] - loss[0]) / fabs(loss[0]);
    printf("%-36s rel err %.3g (tol 1e-04) %s  (cuda %.6f cpu %.6f)\n", "swav loss", le,
           le <= 1e-4 ? "ok" : "FAIL", loss[1], loss[0]);
    failures += !(le <= 1e-4);
    check("scores", mg->scores, mc->scores, ns, 1e-3);
    check("BN running stats (buffers)", mg->buffer_data, mc->buffer_data, mc->buffers.total, 1e-3);
    check("all parameter gradients", mg->grad_data, mc->grad_data, mc->params.total, 2e-3);
    for (int i = 0; i < mc->params.n; i++) {
        const struct nn_param *p = &mc->params.p[i];
        if (i == 0 || i == mc->params.n - 1 || strstr(p->name, "layer4.1.conv2") ||
            strstr(p->name, "projection_head.0")) {
            char name[160];
            snprintf(name, sizeof name, "grad %s", p->name);
            check(name, mg->grad_data + p->offset, mc->grad_data + p->offset, p->numel, 2e-3);
        }
    }
    nn_model_destroy(&mg);
    nn_model_destroy(&mc);
    nn_backend_destroy(&gpu);
    nn_backend_destroy(&cpu);
    printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
