/* A fixed team of worker threads for the assigner's passes: the caller runs
 * share 0 itself, workers 1..n-1 run theirs, and pool_run returns when all
 * are done.  Threads are created once (no thread start per step). */
#ifndef SWAV_ASSIGNER_POOL_H
#define SWAV_ASSIGNER_POOL_H

typedef struct assigner_pool assigner_pool_t;

/* fn(ctx, share, nshares) */
typedef void (*assigner_pool_fn)(void *ctx, int share, int nshares);

assigner_pool_t *assigner_pool_new(int nthreads);
void assigner_pool_destroy(assigner_pool_t **p);
int assigner_pool_size(const assigner_pool_t *p);
void assigner_pool_run(assigner_pool_t *p, assigner_pool_fn fn, void *ctx);

/* [lo, hi) of share s of n items split into nshares nearly equal parts. */
void assigner_pool_range(int n, int share, int nshares, int *lo, int *hi);

#endif
