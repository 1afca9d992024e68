/* One SwAV training step on the CUDA backend, timed (scripts/bench-train-gpu).
 *
 *   cuda_bench_train DEPTH BATCH CROPS STEPS [HIDDEN FEAT K]
 *
 * Same step as tests/nn/bench_train.c, all on the device: uint8 crops
 * normalized (nn_backend_normalize_crops), prototypes normalized, multi-crop
 * forward (train mode, plain NCHW), Sinkhorn (3 iterations, eps 0.05) on the
 * scores of crops 0 and 1, swapped-prediction loss, backward, SGD+LARC.
 * After 3 untimed warm-up steps, STEPS timed ones.
 * Prints "images/s X" (images = batch) and "sinkhorn_ms X" (4096 x K, the
 * assigner's queue-sized problem).  The crops are in device memory: this is
 * the synthetic figure (no host-to-device copy of the batch).
 * BF16=1 in the environment builds the model with a bf16 channels_last
 * backbone (cfg.act_dtype: the trainer's --use_fp16), as the PyTorch side's
 * autocast; FP16=1 with an fp16 one and the trainer's dynamic loss scaling
 * in the timed step (dscores times S, gradients times 1 / S, the non-finite
 * check, which synchronizes, and the scaler's update; a skipped step skips
 * the optimizer, counted on the precision line); else fp32 NCHW.
 * Also printed: "launch_ms X step_ms Y", the host's time per step spent
 * queueing the work that does not wait for the GPU (crops to the forward's
 * return; the loss's return to the optimizer's) against the whole step: if
 * X is far below Y, kernel launches hide behind the GPU's work and a CUDA
 * graph of those parts would gain little (docs/cuda.md).  With FP16=1 the
 * overflow check waits for the backward inside the second part: there X
 * holds GPU time too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "common/timeutil.h"
#include "nn/cuda/backend_cuda.h"
#include "nn/layers.h"
#include "nn/loss_scale.h"
#include "nn/resnet.h"
#include "tests/nn/bench_step.h"

#define WARMUP 3

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: cuda_bench_train DEPTH BATCH CROPS STEPS [HIDDEN FEAT K]\n");
        return 2;
    }
    if (nn_cuda_device_count() == 0) {
        printf("SKIP: no CUDA device (%s)\n", nn_cuda_count_error());
        return 77;
    }
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.depth = atoi(argv[1]);
    cfg.plain_layout = 1;
    const char *bf16_env = getenv("BF16"), *fp16_env = getenv("FP16");
    int bf16 = bf16_env && bf16_env[0] == '1', fp16 = fp16_env && fp16_env[0] == '1';
    if (bf16 && fp16) {
        fprintf(stderr, "cuda_bench_train: BF16=1 and FP16=1: one of them\n");
        return 2;
    }
    cfg.act_dtype = bf16 ? NN_DTYPE_BF16 : fp16 ? NN_DTYPE_F16 : NN_DTYPE_F32;
    struct nn_loss_scale ls;
    nn_loss_scale_init(&ls);
    int batch = atoi(argv[2]);
    int steps = atoi(argv[4]);
    bench_head_args(&cfg, argc, argv, 5);
    struct bench_crops crops;
    if (bench_crops_parse(&crops, argv[3]) != 0) {
        return 2;
    }
    const struct nn_crop_group *groups = crops.groups;
    int ng = crops.n_groups, n_crops = crops.n_crops;
    nn_backend_t *be = nn_backend_cuda_new(0);
    if (!be) {
        return 2;
    }
    int K = cfg.nmb_prototypes;
    /* Sinkhorn alone first: it needs nothing of the model */
    {
        int B = 4096;
        float *s = nn_backend_alloc(be, sizeof(float) * B * K), *q = nn_backend_alloc(be, sizeof(float) * B * K);
        float *hs = malloc(sizeof(float) * B * K); /* device memory: filled by a copy */
        struct swav_rng r;
        swav_rng_init(&r, 3, 0, 0, 0);
        for (size_t i = 0; i < (size_t)B * K; i++) {
            hs[i] = (float)(0.05 * swav_rng_normal(&r));
        }
        nn_backend_copy(be, s, hs, sizeof(float) * B * K);
        free(hs);
        nn_cuda_sinkhorn(be, q, s, B, K, 0.05f, 3); /* warm-up */
        nn_backend_sync(be);
        int reps = 20;
        double t0 = swav_now_s();
        for (int i = 0; i < reps; i++) {
            nn_cuda_sinkhorn(be, q, s, B, K, 0.05f, 3);
        }
        nn_backend_sync(be);
        printf("sinkhorn_ms %.3f\n", (swav_now_s() - t0) * 1e3 / reps);
        fflush(stdout);
        nn_backend_free(be, s);
        nn_backend_free(be, q);
    }
    struct nn_model *m = nn_model_new(be, &cfg, groups, ng, batch);
    if (!m) {
        return 2;
    }
    struct nn_optim_config oc = nn_optim_config_swav(1e-6, 0);
    struct nn_optim opt;
    nn_optim_init_on(&opt, be, &m->params, &oc);
    float *inputs[NN_MAX_GROUPS];
    uint8_t *raw[NN_MAX_GROUPS];
    struct swav_rng r;
    swav_rng_init(&r, 5, 0, 0, 0);
    for (int g = 0; g < ng; g++) {
        size_t n = (size_t)groups[g].n_crops * batch * 3 * groups[g].size * groups[g].size;
        inputs[g] = nn_backend_alloc(be, n * sizeof(float));
        /* on the device, as the PyTorch side's synthetic crops (the host-to-device
         * copy of real batches is in the end-to-end run) */
        raw[g] = nn_backend_alloc(be, n);
        uint8_t *h = malloc(n);
        for (size_t i = 0; i < n; i++) {
            h[i] = (uint8_t)swav_rng_below(&r, 256);
        }
        nn_backend_copy(be, raw[g], h, n);
        free(h);
    }
    static const int assign[2] = {0, 1};
    struct nn_swav_loss_cfg lc = {n_crops, batch, 2, assign, 0.1f};
    float *q = nn_backend_alloc(be, sizeof(float) * 2 * batch * K);
    float *logp = nn_backend_alloc(be, sizeof(float) * m->n_rows * K);
    float *dscores = nn_backend_alloc(be, sizeof(float) * m->n_rows * K);
    double t0 = 0, launch = 0;
    float loss = 0;
    /* WARMUP untimed steps first (cudnnFind on every shape in the first;
     * clocks and caches settle), as the PyTorch side does */
    for (int it = 0; it < WARMUP + steps; it++) {
        if (it == WARMUP) {
            nn_backend_sync(be);
            t0 = swav_now_s();
            launch = 0;
        }
        double tq = swav_now_s();
        for (int g = 0; g < ng; g++) {
            nn_backend_normalize_crops(be, inputs[g], raw[g], batch, groups[g].n_crops,
                                       groups[g].size, groups[g].size);
        }
        nn_model_normalize_prototypes(m);
        nn_model_forward(m, (const float *const *)inputs, batch, NN_MODEL_TRAIN);
        launch += swav_now_s() - tq;
        for (int i = 0; i < 2; i++) {
            nn_cuda_sinkhorn(be, q + (size_t)i * batch * K, m->scores + (size_t)assign[i] * batch * K,
                             batch, K, 0.05f, 3);
        }
        struct nn_tensor sc = nn_tensor_2d(m->scores, m->n_rows, K);
        struct nn_tensor dsc = nn_tensor_2d(dscores, m->n_rows, K);
        loss = nn_swav_loss_forward(be, logp, &sc, q, &lc); /* reads the loss: a sync */
        tq = swav_now_s();
        nn_swav_loss_backward(be, &dsc, logp, q, &lc);
        if (fp16) {
            nn_backend_scale(be, dscores, (size_t)m->n_rows * K, ls.scale);
        }
        nn_model_zero_grad(m);
        nn_model_backward(m, dscores);
        int take = 1;
        if (fp16) {
            nn_backend_scale(be, m->grad_data, m->params.total, 1.0f / ls.scale);
            take = nn_loss_scale_update(&ls, nn_backend_nonfinite(be, m->grad_data,
                                                                  m->params.total));
        }
        if (take) {
            nn_optim_step(&opt, m->param_data, m->grad_data, 0.1, it);
        }
        launch += swav_now_s() - tq;
    }
    nn_backend_sync(be);
    double dt = swav_now_s() - t0;
    char extra[80] = "";
    if (fp16) {
        snprintf(extra, sizeof extra, " loss_scale %g skipped %lld", (double)ls.scale,
                 (long long)ls.skipped);
    }
    printf("precision %s loss %.4f arena %.1f MiB cache %d%s\n", nn_dtype_name(cfg.act_dtype),
           loss, nn_model_arena_bytes(m) / 1048576.0, nn_backend_cache_size(be), extra);
    printf("launch_ms %.3f step_ms %.3f\n", launch * 1e3 / steps, dt * 1e3 / steps);
    printf("images/s %.3f\n", steps * batch / dt);
    nn_optim_free(&opt);
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
    return 0;
}
