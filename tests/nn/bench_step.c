/* Shared by the SwAV-step benchmarks and the CUDA layer tests: see bench_step.h. */
#include "bench_step.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int bench_crops_parse(struct bench_crops *c, const char *spec)
{
    memset(c, 0, sizeof *c);
    for (const char *p = spec; *p;) {
        int n, s, used;
        if (c->n_groups == NN_MAX_GROUPS || sscanf(p, "%dx%d%n", &n, &s, &used) != 2) {
            fprintf(stderr, "bad crops %s (want NxSIZE,... with at most %d groups)\n", spec,
                    NN_MAX_GROUPS);
            return -1;
        }
        c->groups[c->n_groups++] = (struct nn_crop_group){n, s};
        c->n_crops += n;
        p += used;
        if (*p == ',') {
            p++;
        }
    }
    return 0;
}

void bench_head_args(struct nn_resnet_cfg *cfg, int argc, char **argv, int first)
{
    if (argc >= first + 3) {
        cfg->hidden_mlp = atoi(argv[first]);
        cfg->feat_dim = atoi(argv[first + 1]);
        cfg->nmb_prototypes = atoi(argv[first + 2]);
    }
}

void bench_sinkhorn_ref(float *q, const float *scores, int B, int K, float eps, int iters,
                        double *rows, double *cols)
{
    double total = 0;
    for (int i = 0; i < B * K; i++) {
        q[i] = expf(scores[i] / eps);
        total += q[i];
    }
    for (int i = 0; i < B * K; i++) {
        q[i] = (float)(q[i] / total);
    }
    for (int it = 0; it < iters; it++) {
        memset(rows, 0, sizeof(double) * (size_t)K);
        for (int b = 0; b < B; b++)
            for (int k = 0; k < K; k++)
                rows[k] += q[b * K + k];
        for (int b = 0; b < B; b++)
            for (int k = 0; k < K; k++)
                q[b * K + k] = (float)(q[b * K + k] / rows[k] / K);
        for (int b = 0; b < B; b++) {
            cols[b] = 0;
            for (int k = 0; k < K; k++)
                cols[b] += q[b * K + k];
            for (int k = 0; k < K; k++)
                q[b * K + k] = (float)(q[b * K + k] / cols[b] / B);
        }
    }
    for (int i = 0; i < B * K; i++) {
        q[i] *= (float)B;
    }
}
