/* Learning-rate schedules of the reference, computed on the fly with the
 * same floating-point operations in the same order, so every value equals
 * the reference's to the last bit (tests/nn/test_schedule checks whole runs
 * against numpy and torch).
 *
 * - Pretraining (main_swav.py): per iteration, a linear warmup
 *   np.linspace(start_warmup, base_lr, iters_per_epoch * warmup_epochs), then
 *   a cosine from base_lr towards final_lr over the remaining
 *   iters_per_epoch * (epochs - warmup_epochs) iterations.
 * - Linear evaluation (eval_linear.py): per epoch, torch's
 *   CosineAnnealingLR(optimizer, epochs, eta_min=final_lr) or
 *   MultiStepLR(milestones=decay_epochs, gamma); semi-supervised evaluation
 *   (eval_semisup.py): MultiStepLR per parameter group.  torch computes both
 *   recursively (each epoch's value from the previous one); so do we. */
#ifndef SWAV_NN_SCHEDULE_H
#define SWAV_NN_SCHEDULE_H

#include <stdint.h>

struct nn_sched_swav {
    double base_lr;          /* --base_lr (4.8) */
    double final_lr;         /* --final_lr (0) */
    double start_warmup;     /* --start_warmup (0) */
    int64_t iters_per_epoch; /* len(train_loader) */
    int64_t epochs;          /* --epochs */
    int64_t warmup_epochs;   /* --warmup_epochs (10) */
};

/* Number of iterations of the whole run: iters_per_epoch * epochs. */
int64_t nn_sched_swav_length(const struct nn_sched_swav *s);
/* lr_schedule[iteration] of main_swav.py, iteration = epoch *
 * iters_per_epoch + it, 0 <= iteration < nn_sched_swav_length(s). */
double nn_sched_swav_lr(const struct nn_sched_swav *s, int64_t iteration);

/* torch.optim.lr_scheduler.CosineAnnealingLR(T_max, eta_min): the learning
 * rate in force during epoch `epoch` (after `epoch` calls of
 * scheduler.step()), starting from base_lr. */
double nn_sched_cosine_annealing(double base_lr, double eta_min, int64_t t_max, int64_t epoch);

/* torch.optim.lr_scheduler.MultiStepLR(milestones, gamma): the learning rate
 * in force during epoch `epoch`.  A milestone listed k times decays by
 * gamma^k, as torch's Counter does; order does not matter. */
double nn_sched_multistep(double base_lr, const int64_t *milestones, int nmilestones,
                          double gamma, int64_t epoch);

#endif
