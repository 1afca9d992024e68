/* Exchange tool for the reference parity tests: runs the assigner core over a
 * sequence of steps read from a raw file and writes every step's codes.
 *
 * in:  int32 world, bs, K, D, ncrops, iterations, queue_length,
 *      epoch_queue_starts, nsteps, threads; float32 epsilon; then per step:
 *      int32 epoch; float32 prototypes (K, D); float32 embeddings
 *      (world, ncrops, bs, D).
 * out: per step: int32 queue_used; float32 codes (world, ncrops, bs, K). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "assigner/core.h"
#include "assigner/sinkhorn.h"
#include "common/log.h"

static void read_exact(FILE *f, void *p, size_t n)
{
    if (fread(p, 1, n, f) != n) {
        fprintf(stderr, "parity_tool: short input\n");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
        return 2;
    }
    swav_log_init("assigner-parity", -1);
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (!in || !out) {
        perror("parity_tool");
        return 1;
    }
    int32_t h[10];
    float eps;
    read_exact(in, h, sizeof h);
    read_exact(in, &eps, sizeof eps);
    struct assigner_config cfg = {
        .world_size = h[0], .batch_size = h[1], .nmb_prototypes = h[2], .feat_dim = h[3],
        .ncrops_assign = h[4], .sinkhorn_iterations = h[5], .queue_length = h[6],
        .epoch_queue_starts = h[7], .epsilon = eps, .collapse_entropy_frac = 1.0,
        .collapse_min_used = 1,
    };
    int nsteps = h[8];
    struct sinkhorn_backend *b = sinkhorn_backend_cpu_new(h[9]);
    char err[512];
    assigner_core_t *c = assigner_core_new(&cfg, b, err, sizeof err);
    if (!c) {
        fprintf(stderr, "parity_tool: %s\n", err);
        return 1;
    }
    const size_t w = (size_t)cfg.world_size, bs = (size_t)cfg.batch_size,
                 k = (size_t)cfg.nmb_prototypes, d = (size_t)cfg.feat_dim,
                 nc = (size_t)cfg.ncrops_assign;
    float *protos = malloc(k * d * sizeof(float));
    for (int s = 0; s < nsteps; s++) {
        int32_t epoch;
        read_exact(in, &epoch, sizeof epoch);
        read_exact(in, protos, k * d * sizeof(float));
        for (size_t r = 0; r < w; r++)
            for (size_t i = 0; i < nc; i++)
                read_exact(in, assigner_core_embed_slot(c, (int)i, (int)r),
                           bs * d * sizeof(float));
        struct assigner_stats st;
        if (assigner_core_step(c, epoch, s, protos, &st, err, sizeof err) < 0) {
            fprintf(stderr, "parity_tool: step %d: %s\n", s, err);
            return 1;
        }
        int32_t used = st.queue_used;
        fwrite(&used, sizeof used, 1, out);
        for (size_t r = 0; r < w; r++)
            for (size_t i = 0; i < nc; i++)
                fwrite(assigner_core_codes(c, (int)i, (int)r), sizeof(float), bs * k, out);
        fprintf(stderr, "step %d epoch %d: queue %d entropy %.4f used %d scores %.2f ms "
                "sinkhorn %.2f ms\n", s, epoch, used, st.entropy_mean, st.prototypes_used,
                st.ms_scores, st.ms_sinkhorn);
    }
    free(protos);
    assigner_core_destroy(&c);
    sinkhorn_backend_destroy(&b);
    return fclose(out) == 0 ? 0 : 1;
}
