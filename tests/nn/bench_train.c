/* One SwAV training step on the CPU backend, timed (scripts/bench-train-cpu).
 *
 *   bench_train DEPTH WIDTH BATCH CROPS STEPS THREADS [HIDDEN FEAT K]
 *
 * CROPS is "2x224,6x96".  A step: normalize prototypes, multi-crop forward
 * (train mode), Sinkhorn (3 iterations, epsilon 0.05) on the scores of crops
 * 0 and 1, swapped-prediction loss, backward, SGD+LARC step (nn/optim.h).
 * One warm-up step (creates the primitives), then STEPS timed steps.  Prints
 * "images/s X" (images = batch, as the reference counts them). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/rng.h"
#include "common/timeutil.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "nn/resnet.h"
#include "tests/nn/bench_step.h"

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: bench_train DEPTH WIDTH BATCH CROPS STEPS THREADS [HIDDEN FEAT K]\n");
        return 2;
    }
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.depth = atoi(argv[1]);
    cfg.width = atoi(argv[2]);
    int batch = atoi(argv[3]);
    int steps = atoi(argv[5]);
    int threads = atoi(argv[6]);
    bench_head_args(&cfg, argc, argv, 7);
    struct bench_crops crops;
    if (bench_crops_parse(&crops, argv[4]) != 0) {
        return 2;
    }
    const struct nn_crop_group *groups = crops.groups;
    int ng = crops.n_groups, n_crops = crops.n_crops;
    nn_backend_t *be = nn_backend_cpu_new(threads);
    struct nn_model *m = nn_model_new(be, &cfg, groups, ng, batch);
    if (!m) {
        return 2;
    }
    struct nn_optim_config oc = nn_optim_config_swav(1e-6, 0);
    oc.nthreads = threads;
    struct nn_optim opt;
    nn_optim_init(&opt, &m->params, &oc);
    float *inputs[NN_MAX_GROUPS];
    struct swav_rng r;
    swav_rng_init(&r, 5, 0, 0, 0);
    for (int g = 0; g < ng; g++) {
        size_t n = (size_t)groups[g].n_crops * batch * 3 * groups[g].size * groups[g].size;
        inputs[g] = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            inputs[g][i] = (float)swav_rng_normal(&r);
        }
    }
    int K = cfg.nmb_prototypes;
    static const int assign[2] = {0, 1};
    struct nn_swav_loss_cfg lc = {n_crops, batch, 2, assign, 0.1f};
    float *q = malloc(sizeof(float) * 2 * batch * K);
    float *logp = malloc(sizeof(float) * m->n_rows * K);
    float *dscores = malloc(sizeof(float) * m->n_rows * K);
    double *rows = malloc(sizeof(double) * K), *cols = malloc(sizeof(double) * batch);
    double t0 = 0;
    clock_t c0 = 0;
    float loss = 0;
    double ph[5] = {0}; /* forward, sinkhorn+loss, zero_grad+backward, optimizer */
    for (int it = 0; it <= steps; it++) {
        double ta = swav_now_s();
        if (it == 1) {
            t0 = swav_now_s();
            c0 = clock();
        }
        nn_model_normalize_prototypes(m);
        nn_model_forward(m, (const float *const *)inputs, batch, NN_MODEL_TRAIN);
        double tb = swav_now_s();
        for (int i = 0; i < 2; i++) {
            bench_sinkhorn_ref(q + (size_t)i * batch * K, m->scores + (size_t)assign[i] * batch * K, batch, K,
                     0.05f, 3, rows, cols);
        }
        struct nn_tensor sc = nn_tensor_2d(m->scores, m->n_rows, K);
        struct nn_tensor dsc = nn_tensor_2d(dscores, m->n_rows, K);
        loss = nn_swav_loss_forward(be, logp, &sc, q, &lc);
        nn_swav_loss_backward(be, &dsc, logp, q, &lc);
        double tc = swav_now_s();
        nn_model_zero_grad(m);
        nn_model_backward(m, dscores);
        double td = swav_now_s();
        nn_optim_step(&opt, m->param_data, m->grad_data, 0.1, it);
        if (it > 0) {
            ph[0] += tb - ta;
            ph[1] += tc - tb;
            ph[2] += td - tc;
            ph[3] += swav_now_s() - td;
        }
    }
    double dt = swav_now_s() - t0;
    double dc = (double)(clock() - c0) / CLOCKS_PER_SEC;
    printf("loss %.4f arena %.1f MiB primitives %d\n", loss, nn_model_arena_bytes(m) / 1048576.0,
           nn_backend_cache_size(be));
    printf("seconds per step: forward %.3f, sinkhorn+loss %.3f, backward %.3f, optimizer %.3f\n",
           ph[0] / steps, ph[1] / steps, ph[2] / steps, ph[3] / steps);
    printf("images/s %.3f\n", steps * batch / dt);
    printf("cpu_seconds_per_image %.3f\n", dc / (steps * batch));
    nn_optim_free(&opt);
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
    return 0;
}
