/* What the timed SwAV-step benchmarks (tests/nn/bench_train.c on the CPU,
 * tests/cuda/bench_train_gpu.c on the GPU) and the CUDA layer tests share:
 * the command line's model and crop arguments, and distributed_sinkhorn with
 * one rank on the host (the reference the CUDA kernel is checked against). */
#ifndef SWAV_TESTS_NN_BENCH_STEP_H
#define SWAV_TESTS_NN_BENCH_STEP_H

#include "nn/resnet.h"

struct bench_crops {
    struct nn_crop_group groups[NN_MAX_GROUPS];
    int n_groups;
    int n_crops; /* over all groups */
};

/* "2x224,6x96" into crop groups; 0, or -1 with a message on stderr. */
int bench_crops_parse(struct bench_crops *c, const char *spec);

/* HIDDEN FEAT K at argv[first..first+2] into cfg when all three are there. */
void bench_head_args(struct nn_resnet_cfg *cfg, int argc, char **argv, int first);

/* Sinkhorn-Knopp on scores (B, K) into q (B, K), as the reference's
 * distributed_sinkhorn with one rank; rows (K) and cols (B) are scratch. */
void bench_sinkhorn_ref(float *q, const float *scores, int B, int K, float eps, int iters,
                        double *rows, double *cols);

#endif
