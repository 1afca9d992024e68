/* The assigner's CUDA backend timed (scripts/bench-train-gpu's Sinkhorn
 * figure; not a test).
 *
 *   cuda_bench_assigner [B K D ITERS REPS QUEUE]     (4096 3000 128 3 50 0)
 *
 * One assign crop: B batch rows (unit vectors) plus QUEUE queue rows,
 * K prototypes of dimension D, eps 0.05, ITERS iterations, codes for the B
 * batch rows into page-locked memory (as the assigner's core asks for).
 * Warm-up 5 runs, then REPS runs; medians of the device time (cudaEvents
 * around the scores GEMM and the Sinkhorn kernels: what runs on the GPU per
 * assign crop) and of the whole call (the copy of the rows to the device and
 * of the codes back included).  Prints
 *   scores_ms X, sinkhorn_iter_ms X, sinkhorn_ms X (= scores + iterations,
 *   per assign crop, device), call_ms X (host, with the copies)
 * Exit 77 without a CUDA device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "assigner/sinkhorn.h"
#include "assigner/sinkhorn_cuda.h"
#include "common/rng.h"
#include "common/timeutil.h"
#include "tests/assigner/unit_rows.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv)
{
    int B = argc > 1 ? atoi(argv[1]) : 4096;
    int K = argc > 2 ? atoi(argv[2]) : 3000;
    int D = argc > 3 ? atoi(argv[3]) : 128;
    int iters = argc > 4 ? atoi(argv[4]) : 3;
    int reps = argc > 5 ? atoi(argv[5]) : 50;
    int queue = argc > 6 ? atoi(argv[6]) : 0;
    if (B < 1 || K < 1 || D < 1 || iters < 0 || reps < 1 || queue < 0) {
        fprintf(stderr, "usage: cuda_bench_assigner [B K D ITERS REPS QUEUE]\n");
        return 2;
    }
    char why[256];
    if (sinkhorn_cuda_device_count(why, sizeof why) == 0) {
        printf("SKIP: no CUDA device (%s)\n", why);
        return 77;
    }
    char err[256];
    struct sinkhorn_backend *g = sinkhorn_backend_cuda_new(0, err, sizeof err);
    if (!g) {
        fprintf(stderr, "cuda_bench_assigner: %s\n", err);
        return 1;
    }
    const int n = B + queue;
    if (g->reserve(g->impl, n, K, D) != 0) {
        fprintf(stderr, "cuda_bench_assigner: reserve: %s\n", g->error(g->impl));
        return 1;
    }
    struct swav_rng r;
    swav_rng_init(&r, 11, 0, 0, 0);
    float *x = malloc(sizeof(float) * (size_t)n * D), *w = malloc(sizeof(float) * (size_t)K * D);
    fill_unit_rows(x, n, D, &r);
    fill_unit_rows(w, K, D, &r);
    size_t cbytes = sizeof(float) * (size_t)B * K;
    float *codes = g->host_alloc(g->impl, cbytes);
    int pinned = codes != NULL;
    if (!codes) codes = malloc(cbytes);
    float *ent = malloc(sizeof(float) * B);
    int32_t *am = malloc(sizeof(int32_t) * B);
    struct sinkhorn_problem p = {
        .n = n, .d = D, .k = K, .out_row0 = queue, .out_rows = B, .epsilon = 0.05f,
        .iterations = iters, .entropy_every = (B + 511) / 512, /* as the core asks */
    };
    double *dev = malloc(sizeof(double) * reps), *sc = malloc(sizeof(double) * reps);
    double *it = malloc(sizeof(double) * reps), *call = malloc(sizeof(double) * reps);
    int bad = 0;
    for (int i = -5; i < reps; i++) {
        struct sinkhorn_result res = {0};
        p.w_same = i > -5; /* the next assign crop of a step: prototypes already there */
        double t0 = swav_now_s();
        bad |= g->run(g->impl, &p, x, w, codes, ent, am, &res) != 0;
        double t1 = swav_now_s();
        if (i >= 0) {
            sc[i] = res.ms_scores;
            it[i] = res.ms_sinkhorn;
            dev[i] = res.ms_scores + res.ms_sinkhorn;
            call[i] = (t1 - t0) * 1e3;
        }
    }
    if (bad) {
        fprintf(stderr, "cuda_bench_assigner: a run reported non-finite values\n");
        return 1;
    }
    printf("assigner cuda: B=%d queue=%d K=%d D=%d iterations=%d, %d runs (median), codes in %s "
           "memory\n", B, queue, K, D, iters, reps, pinned ? "page-locked" : "pageable");
    printf("scores_ms %.4f\n", median(sc, reps));
    printf("sinkhorn_iter_ms %.4f\n", median(it, reps));
    printf("sinkhorn_ms %.4f\n", median(dev, reps));
    printf("call_ms %.4f\n", median(call, reps));
    if (pinned) g->host_free(g->impl, codes);
    else free(codes);
    sinkhorn_backend_destroy(&g);
    free(x);
    free(w);
    free(ent);
    free(am);
    free(dev);
    free(sc);
    free(it);
    free(call);
    return 0;
}
