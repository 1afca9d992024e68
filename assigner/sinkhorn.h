/* Scores and Sinkhorn-Knopp behind a backend seam.
 *
 * The problem is the reference's distributed_sinkhorn (main_swav.py) over the
 * global matrix of all ranks: rows x (n, d) are the samples to assign (the
 * queue rows of every rank, then the batch rows of every rank), w (k, d) the
 * current prototypes.  With S = x w^T, the reference computes
 *
 *     Q = exp(S / epsilon)^T;  Q /= sum(Q)
 *     repeat `iterations` times:  Q /= rowsum(Q); Q /= K;  Q /= colsum(Q); Q /= B
 *     return (Q * B)^T              (B = n, every rank's columns counted)
 *
 * The CPU backend computes the scores by chunks of rows in each worker and
 * turns them into exp while they are in registers or cache; it never
 * rewrites the matrix: it keeps E = exp(S/eps) scaled per row (a power of two
 * from a bound of the row, or the row maximum: see sinkhorn.c) and two
 * scaling vectors,
 * Q = diag(v) E diag(u) in sample-by-prototype layout, so that an iteration
 * is one fused pass over E (a dot product per row for the column
 * normalisation, an axpy per row for the next row sums), and Q is written
 * only for the rows asked for, once, at the end.
 *
 * A backend is a table of functions behind an opaque handle (ggml style); the
 * CUDA one (sinkhorn_cuda.h, built where the toolkit is) plugs in with the
 * same signature. */
#ifndef SWAV_ASSIGNER_SINKHORN_H
#define SWAV_ASSIGNER_SINKHORN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sinkhorn_problem {
    int n;           /* rows of x: samples, the reference's B (all ranks) */
    int d;           /* feature dimension */
    int k;           /* prototypes */
    int out_row0;    /* codes are written for rows [out_row0, out_row0 + out_rows) */
    int out_rows;
    /* Output row r goes to codes + (r / out_group) * out_group_stride +
     * (r % out_group) * k: ranks' rows land in per-rank buffers.  0: dense. */
    int out_group;
    size_t out_group_stride;
    float epsilon;
    int iterations;  /* sinkhorn_iterations, >= 0 */
    int entropy_every; /* entropy of output rows r % entropy_every == 0 only (0, 1: all) */
    /* The caller's promise that w is the same array with the same values as
     * in the previous run on this backend (the next assign crop of a step):
     * what the backend derived from w (packed panels, norms) is reused. */
    bool w_same;
};

/* Per-call results besides the codes. */
struct sinkhorn_result {
    double ms_scores;     /* x w^T and exp (one fused pass on the CPU) */
    double ms_sinkhorn;   /* iterations, writing Q */
    double ms_copy;       /* GPU: the rest of the call (copies to and from the device,
                             launches, waiting); 0 on the CPU */
    bool fused;           /* CPU: exp fused into the score kernel (else the row-maximum path) */
    int rebased_rows;     /* CPU, fused: rows rescaled for a maximum below 2^-60 */
};

struct sinkhorn_backend {
    const char *name;
    void *impl;
    /* Make room for problems up to n rows and k prototypes (allocation happens
     * here, never in run).  Returns 0, or -1 when out of memory. */
    int (*reserve)(void *impl, int n, int k, int d);
    /* x: (n, d); w: (k, d); codes: (out_rows, k) row-major, or grouped (above).
     * entropy (out_rows, optional): -sum_k q log q of each output row (of the
     * rows p->entropy_every selects; the others are left as they were);
     * argmax (out_rows, optional): the prototype with the largest q.
     * Returns 0, or -1 when a non-finite value appeared (codes unspecified). */
    int (*run)(void *impl, const struct sinkhorn_problem *p, const float *x, const float *w,
               float *codes, float *entropy, int32_t *argmax, struct sinkhorn_result *res);
    void (*free_impl)(void *impl);
    /* Optional (NULL on the CPU backend).  Why the last reserve failed. */
    const char *(*error)(void *impl);
    /* Optional: host memory for the codes that the backend copies into
     * fastest (page-locked), or NULL (then the caller mallocs); released
     * with host_free while the backend still exists. */
    void *(*host_alloc)(void *impl, size_t bytes);
    void (*host_free)(void *impl, void *p);
};

/* The CPU backend: `threads` worker threads, each calling OpenBLAS sgemm
 * (single-threaded: it sets openblas_set_num_threads(1)) on its rows. */
struct sinkhorn_backend *sinkhorn_backend_cpu_new(int threads);
void sinkhorn_backend_destroy(struct sinkhorn_backend **b);

/* Plain, obviously-correct version of the same computation (double
 * accumulation, the reference's operation order): the yardstick the fast
 * backends are checked against.  scratch: (k, n) floats. */
void sinkhorn_plain(const struct sinkhorn_problem *p, const float *x, const float *w,
                    float *codes, float *scratch);

#endif
