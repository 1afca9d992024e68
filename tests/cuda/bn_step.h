/* One BatchNorm step and one SyncBN step (forward, then backward) on each
 * side, the CPU backend's first, as test_cuda_layers (float NCHW and NC) and
 * test_cuda_lowp (bf16 and fp16 NHWC) run them; the caller compares the results.
 * Momentum 0.1, eps 1e-5. */
#ifndef SWAV_TESTS_CUDA_BN_STEP_H
#define SWAV_TESTS_CUDA_BN_STEP_H

#include <stddef.h>

#include "common/check.h"
#include "nn/backend.h"
#include "nn/collective.h"
#include "nn/layers.h"
#include "nn/syncbn.h"

/* One side: its backend, tensors and per-channel arrays (that backend's
 * memory); count receives the values per channel SyncBN saw. */
struct bn_side {
    nn_backend_t *be;
    struct nn_tensor *y, *dx;
    const struct nn_tensor *x, *dy;
    float *w, *b, *rm, *rv, *sm, *sv, *dw, *db;
    double count;
};

/* nn_batchnorm_forward and _backward, flags NN_BN_TRAIN and NN_BN_RELU or
 * not: the backward takes the saved statistics when training, the running
 * ones otherwise. */
static inline void bn_step(unsigned flags, struct bn_side *c, struct bn_side *g)
{
    size_t wsc = nn_batchnorm_workspace_bytes(c->be, c->x, flags);
    size_t wsg = nn_batchnorm_workspace_bytes(g->be, g->x, flags);
    void *wc = nn_backend_alloc(c->be, wsc ? wsc : 64);
    void *wg = nn_backend_alloc(g->be, wsg ? wsg : 64);
    int train = (flags & NN_BN_TRAIN) != 0;
    nn_batchnorm_forward(c->be, c->y, c->x, c->w, c->b, c->rm, c->rv, c->sm, c->sv, wc, flags,
                         0.1f, 1e-5f);
    nn_batchnorm_forward(g->be, g->y, g->x, g->w, g->b, g->rm, g->rv, g->sm, g->sv, wg, flags,
                         0.1f, 1e-5f);
    nn_batchnorm_backward(c->be, c->dx, c->dw, c->db, c->dy, c->x, c->w, train ? c->sm : c->rm,
                          train ? c->sv : c->rv, wc, flags, 1e-5f);
    nn_batchnorm_backward(g->be, g->dx, g->dw, g->db, g->dy, g->x, g->w, train ? g->sm : g->rm,
                          train ? g->sv : g->rv, wg, flags, 1e-5f);
    nn_backend_free(c->be, wc);
    nn_backend_free(g->be, wg);
}

/* SyncBN over a one-rank collective, flags NN_BN_RELU or 0 (training).
 * Returns the statuses of the four calls or'ed (0: all succeeded). */
static inline int syncbn_step(int C, unsigned relu, struct bn_side *c, struct bn_side *g)
{
    struct nn_collective *coll = nn_collective_single_new();
    char err[256];
    nn_syncbn_t *sc = nn_syncbn_new(coll, 0, C, err, sizeof err);
    nn_syncbn_t *sg = nn_syncbn_new(coll, 0, C, err, sizeof err);
    SWAV_ASSERT(sc && sg);
    size_t wsc = nn_batchnorm_workspace_bytes(c->be, c->x, NN_BN_TRAIN | relu);
    size_t wsg = nn_batchnorm_workspace_bytes(g->be, g->x, NN_BN_TRAIN | relu);
    void *wc = nn_backend_alloc(c->be, wsc ? wsc : 64);
    void *wg = nn_backend_alloc(g->be, wsg ? wsg : 64);
    c->count = g->count = 0;
    int st = nn_syncbn_forward(sc, c->be, c->y, c->x, c->w, c->b, c->rm, c->rv, c->sm, c->sv,
                               &c->count, wc, relu, 0.1f, 1e-5f);
    st |= nn_syncbn_forward(sg, g->be, g->y, g->x, g->w, g->b, g->rm, g->rv, g->sm, g->sv,
                            &g->count, wg, relu, 0.1f, 1e-5f);
    st |= nn_syncbn_backward(sc, c->be, c->dx, c->dw, c->db, c->dy, c->x, c->w, c->sm, c->sv,
                             c->count, wc, relu, 1e-5f);
    st |= nn_syncbn_backward(sg, g->be, g->dx, g->dw, g->db, g->dy, g->x, g->w, g->sm, g->sv,
                             g->count, wg, relu, 1e-5f);
    nn_backend_free(c->be, wc);
    nn_backend_free(g->be, wg);
    nn_syncbn_destroy(&sc);
    nn_syncbn_destroy(&sg);
    nn_collective_destroy(&coll);
    return st;
}

#endif
