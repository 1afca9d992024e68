/* SGD with momentum and weight decay, optionally wrapped by LARC, over one
 * flat parameter buffer, one gradient buffer and one momentum buffer laid out
 * by an nn_param_table (llm.c style: the optimizer touches three allocations).
 *
 * Semantics are those of the reference (main_swav.py: torch.optim.SGD(momentum
 * 0.9, weight_decay=wd) wrapped by apex's LARC(trust_coefficient=0.001,
 * clip=False, eps=1e-8)), per parameter tensor p with gradient g:
 *
 *   LARC:  if ||p|| != 0 and ||g|| != 0:
 *              a = trust * ||p|| / (||g|| + ||p|| * wd + eps)
 *              (clip: a = min(a / lr, 1))
 *              g = (g + wd * p) * a
 *          else g is left as is, and no weight decay at all (apex sets the
 *          group's weight_decay to 0 around the inner SGD step).
 *   plain SGD (larc off): g = g + wd * p
 *   then:  buf = momentum * buf + g   (first step: buf = g; a zero buffer
 *                                      gives exactly that)
 *          nesterov: g = g + momentum * buf, else g = buf
 *          p -= lr * g
 *
 * Parameters flagged NN_PARAM_PROTOTYPES get no update at all while
 * iteration < freeze_prototypes_niters (the reference sets their .grad to
 * None: momentum untouched, no decay).
 *
 * The gradient buffer is read only (apex rewrites p.grad in place; nothing in
 * the reference reads it afterwards).  Norms are accumulated in double, in
 * fixed-size chunks summed in a fixed order, so results do not depend on the
 * thread count.  Nothing is allocated per step. */
#ifndef SWAV_NN_OPTIM_H
#define SWAV_NN_OPTIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn/params.h"
#include "nn/tensor.h" /* nn_prototypes_normalize */

#define NN_OPTIM_MAX_GROUPS 8

struct nn_optim_config {
    double momentum;          /* 0.9 */
    double weight_decay;      /* --wd */
    bool nesterov;            /* eval_linear's --nesterov (plain SGD only) */
    bool larc;                /* wrap by LARC (pretraining) */
    double trust_coefficient; /* LARC: 0.001 */
    double eps;               /* LARC: 1e-8 */
    bool clip;                /* LARC: False in the reference */
    int64_t freeze_prototypes_niters; /* 0: never frozen */
    int nthreads;             /* worker threads for the step, 1 = caller only */
};

/* The reference's pretraining optimizer: SGD(momentum 0.9, wd) + LARC(0.001,
 * clip False, eps 1e-8), freeze_prototypes_niters as given. */
struct nn_optim_config nn_optim_config_swav(double weight_decay,
                                            int64_t freeze_prototypes_niters);

struct nn_optim_pool;
struct nn_optim_chunk;
struct nn_optim {
    struct nn_optim_config cfg;
    const struct nn_param_table *table; /* borrowed; must outlive the optimizer */
    float *momentum;                    /* (table->total) owned, zeroed at init */
    int *group;                         /* (table->n) parameter group of each tensor, 0 by default */
    /* private: chunks of the norm pass and their partial sums */
    struct nn_optim_chunk *chunks;
    int nchunks;
    double *partial;  /* (nchunks, 2): sum p^2, sum g^2 */
    struct nn_optim_pool *pool;
    /* set by nn_optim_init_on for a backend with its own optimizer (CUDA):
     * then momentum is that backend's memory and the step runs there */
    void *dev;
    const struct nn_backend_iface *dev_iface;
};

/* Allocates the momentum buffer (zeros) and the scratch; starts
 * cfg.nthreads - 1 worker threads. */
void nn_optim_init(struct nn_optim *o, const struct nn_param_table *table,
                   const struct nn_optim_config *cfg);
/* The same, on a backend: where the backend has its own optimizer (CUDA) the
 * momentum buffer and the step live there, and params/grads handed to the
 * steps are that backend's memory; elsewhere (CPU, or be NULL) this is
 * nn_optim_init. */
struct nn_backend;
void nn_optim_init_on(struct nn_optim *o, struct nn_backend *be,
                      const struct nn_param_table *table, const struct nn_optim_config *cfg);
void nn_optim_free(struct nn_optim *o);

/* Puts tensor `index` of the table in parameter group `group` (< NN_OPTIM_MAX_GROUPS),
 * for per-group learning rates (eval_semisup.py: trunk and head). */
void nn_optim_set_group(struct nn_optim *o, int index, int group);

/* One step at learning rate lr for every group; `iteration` is the global
 * iteration (epoch * iters_per_epoch + it), used for the prototype freeze. */
void nn_optim_step(struct nn_optim *o, float *params, const float *grads, double lr,
                   int64_t iteration);
/* One step with group_lr[g] for the tensors of group g; group_lr has
 * NN_OPTIM_MAX_GROUPS entries (a backend optimizer reads them all). */
void nn_optim_step_groups(struct nn_optim *o, float *params, const float *grads,
                          const double *group_lr, int64_t iteration);

/* nn_prototypes_normalize (tensor.h) of every table entry flagged
 * NN_PARAM_PROTOTYPES (2-d). */
void nn_optim_normalize_prototypes(const struct nn_param_table *table, float *params);

#endif
