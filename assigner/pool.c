/* Worker team: see pool.h.  A generation counter under one mutex; the work is
 * a few passes per step, so a condition variable (not spinning) is enough
 * and leaves the cores to the trainers between steps. */
#include "pool.h"

#include <pthread.h>

#include "common/check.h"

struct assigner_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t go;
    pthread_cond_t done;
    unsigned long gen;
    int pending;
    int stop;
    assigner_pool_fn fn;
    void *ctx;
};

struct worker_arg {
    struct assigner_pool *p;
    int share;
};

static void *worker_main(void *arg)
{
    struct worker_arg *wa = arg;
    struct assigner_pool *p = wa->p;
    int share = wa->share;
    free(wa);
    unsigned long seen = 0;
    for (;;) {
        PTHREAD_CHECK(pthread_mutex_lock(&p->mu));
        while (p->gen == seen && !p->stop) {
            PTHREAD_CHECK(pthread_cond_wait(&p->go, &p->mu));
        }
        if (p->stop) {
            PTHREAD_CHECK(pthread_mutex_unlock(&p->mu));
            return NULL;
        }
        seen = p->gen;
        assigner_pool_fn fn = p->fn;
        void *ctx = p->ctx;
        PTHREAD_CHECK(pthread_mutex_unlock(&p->mu));
        fn(ctx, share, p->n);
        PTHREAD_CHECK(pthread_mutex_lock(&p->mu));
        if (--p->pending == 0) {
            PTHREAD_CHECK(pthread_cond_signal(&p->done));
        }
        PTHREAD_CHECK(pthread_mutex_unlock(&p->mu));
    }
}

assigner_pool_t *assigner_pool_new(int nthreads)
{
    SWAV_ASSERT(nthreads >= 1);
    struct assigner_pool *p = swav_xcalloc(1, sizeof *p);
    p->n = nthreads;
    PTHREAD_CHECK(pthread_mutex_init(&p->mu, NULL));
    PTHREAD_CHECK(pthread_cond_init(&p->go, NULL));
    PTHREAD_CHECK(pthread_cond_init(&p->done, NULL));
    p->threads = swav_xcalloc((size_t)nthreads, sizeof *p->threads);
    for (int i = 1; i < nthreads; i++) {
        struct worker_arg *wa = swav_xmalloc(sizeof *wa);
        wa->p = p;
        wa->share = i;
        PTHREAD_CHECK(pthread_create(&p->threads[i], NULL, worker_main, wa));
    }
    return p;
}

void assigner_pool_destroy(assigner_pool_t **pp)
{
    struct assigner_pool *p = *pp;
    if (!p) {
        return;
    }
    PTHREAD_CHECK(pthread_mutex_lock(&p->mu));
    p->stop = 1;
    PTHREAD_CHECK(pthread_cond_broadcast(&p->go));
    PTHREAD_CHECK(pthread_mutex_unlock(&p->mu));
    for (int i = 1; i < p->n; i++) {
        PTHREAD_CHECK(pthread_join(p->threads[i], NULL));
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
    *pp = NULL;
}

int assigner_pool_size(const assigner_pool_t *p)
{
    return p->n;
}

void assigner_pool_run(assigner_pool_t *p, assigner_pool_fn fn, void *ctx)
{
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    PTHREAD_CHECK(pthread_mutex_lock(&p->mu));
    p->fn = fn;
    p->ctx = ctx;
    p->pending = p->n - 1;
    p->gen++;
    PTHREAD_CHECK(pthread_cond_broadcast(&p->go));
    PTHREAD_CHECK(pthread_mutex_unlock(&p->mu));
    fn(ctx, 0, p->n);
    PTHREAD_CHECK(pthread_mutex_lock(&p->mu));
    while (p->pending > 0) {
        PTHREAD_CHECK(pthread_cond_wait(&p->done, &p->mu));
    }
    PTHREAD_CHECK(pthread_mutex_unlock(&p->mu));
}

void assigner_pool_range(int n, int share, int nshares, int *lo, int *hi)
{
    long q = n / nshares, r = n % nshares;
    *lo = (int)(share * q + (share < r ? share : r));
    *hi = (int)(*lo + q + (share < r ? 1 : 0));
}
