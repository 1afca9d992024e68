/* Learning-rate schedules: see schedule.h.  Each expression keeps the
 * reference's operation order (C evaluates left to right like Python here,
 * and c_std=c11 turns off floating-point contraction), so results are the
 * reference's bits, not merely close. */
#include "schedule.h"

#include <math.h>

#include "common/check.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846 /* == math.pi */
#endif

int64_t nn_sched_swav_length(const struct nn_sched_swav *s)
{
    return s->iters_per_epoch * s->epochs;
}

/* np.linspace(start, stop, num)[i] (numpy 1.24: y = arange(num) * step + start,
 * or (arange / div) * delta + start when step underflows to 0; last = stop). */
static double linspace_at(double start, double stop, int64_t num, int64_t i)
{
    int64_t div = num - 1;
    double delta = stop - start;
    if (num > 1 && i == num - 1) {
        return stop;
    }
    double y = (double)i;
    if (div > 0) {
        double step = delta / (double)div;
        if (step == 0) {
            y = y / (double)div;
            y = y * delta;
        } else {
            y = y * step;
        }
    } else {
        y = y * delta;
    }
    return y + start;
}

double nn_sched_swav_lr(const struct nn_sched_swav *s, int64_t iteration)
{
    SWAV_ASSERT(s->warmup_epochs >= 0 && s->epochs >= s->warmup_epochs);
    SWAV_ASSERT(iteration >= 0 && iteration < nn_sched_swav_length(s));
    int64_t nwarm = s->iters_per_epoch * s->warmup_epochs;
    if (iteration < nwarm) {
        return linspace_at(s->start_warmup, s->base_lr, nwarm, iteration);
    }
    int64_t t = iteration - nwarm;
    int64_t ncos = s->iters_per_epoch * (s->epochs - s->warmup_epochs);
    return s->final_lr +
           0.5 * (s->base_lr - s->final_lr) * (1 + cos(M_PI * (double)t / (double)ncos));
}

static int64_t py_mod(int64_t a, int64_t b)
{
    int64_t r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}

double nn_sched_cosine_annealing(double base_lr, double eta_min, int64_t t_max, int64_t epoch)
{
    SWAV_ASSERT(t_max > 0 && epoch >= 0);
    /* torch 1.13 CosineAnnealingLR.get_lr, applied at each step() */
    double lr = base_lr;
    double T = (double)t_max;
    for (int64_t e = 1; e <= epoch; e++) {
        if (py_mod(e - 1 - t_max, 2 * t_max) == 0) {
            lr = lr + (base_lr - eta_min) * (1 - cos(M_PI / T)) / 2;
        } else {
            lr = (1 + cos(M_PI * (double)e / T)) / (1 + cos(M_PI * (double)(e - 1) / T)) *
                     (lr - eta_min) +
                 eta_min;
        }
    }
    return lr;
}

double nn_sched_multistep(double base_lr, const int64_t *milestones, int nmilestones,
                          double gamma, int64_t epoch)
{
    SWAV_ASSERT(epoch >= 0 && nmilestones >= 0);
    double lr = base_lr;
    for (int64_t e = 1; e <= epoch; e++) {
        int count = 0;
        for (int k = 0; k < nmilestones; k++) {
            count += milestones[k] == e;
        }
        if (count) {
            lr = lr * pow(gamma, (double)count);
        }
    }
    return lr;
}
