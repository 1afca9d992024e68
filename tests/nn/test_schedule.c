/* LR schedules.  Without arguments: unit checks (warmup ends, cosine ends,
 * milestones).  With arguments it prints a whole schedule, one value a line
 * in C99 hex-float notation (exact), for test_schedule.py to compare with
 * numpy (main_swav.py) and torch (eval_linear.py, eval_semisup.py):
 *   test_schedule swav BASE FINAL START_WARMUP ITERS_PER_EPOCH EPOCHS WARMUP_EPOCHS
 *   test_schedule cosine BASE ETA_MIN T_MAX EPOCHS
 *   test_schedule multistep BASE GAMMA EPOCHS MILESTONE... */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/schedule.h"

static int unit_checks(void)
{
    int bad = 0;
    struct nn_sched_swav s = {4.8, 0.0048, 0.3, 10, 20, 2};
    bad += nn_sched_swav_length(&s) != 200;
    bad += nn_sched_swav_lr(&s, 0) != 0.3;
    bad += nn_sched_swav_lr(&s, 19) != 4.8;         /* linspace's endpoint */
    bad += nn_sched_swav_lr(&s, 20) != 4.8;         /* cosine at t = 0 */
    bad += fabs(nn_sched_swav_lr(&s, 199) - 0.0048) > 1e-3;
    for (int64_t i = 21; i < 200; i++) {
        bad += nn_sched_swav_lr(&s, i) > nn_sched_swav_lr(&s, i - 1); /* decreasing */
    }
    bad += nn_sched_cosine_annealing(0.3, 0, 100, 0) != 0.3;
    bad += fabs(nn_sched_cosine_annealing(0.3, 0, 100, 100)) > 1e-15;
    bad += fabs(nn_sched_cosine_annealing(0.3, 0, 100, 50) - 0.15) > 1e-12;
    int64_t ms[2] = {60, 80};
    bad += nn_sched_multistep(0.3, ms, 2, 0.1, 59) != 0.3;
    bad += fabs(nn_sched_multistep(0.3, ms, 2, 0.1, 60) - 0.03) > 1e-15;
    bad += fabs(nn_sched_multistep(0.3, ms, 2, 0.1, 99) - 0.003) > 1e-15;
    printf("schedule unit checks: %s\n", bad ? "FAILED" : "ok");
    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        return unit_checks();
    }
    if (!strcmp(argv[1], "swav") && argc == 8) {
        struct nn_sched_swav s = {atof(argv[2]), atof(argv[3]), atof(argv[4]),
                                  atoll(argv[5]), atoll(argv[6]), atoll(argv[7])};
        for (int64_t i = 0; i < nn_sched_swav_length(&s); i++) {
            printf("%a\n", nn_sched_swav_lr(&s, i));
        }
        return 0;
    }
    if (!strcmp(argv[1], "cosine") && argc == 6) {
        for (int64_t e = 0; e < atoll(argv[5]); e++) {
            printf("%a\n", nn_sched_cosine_annealing(atof(argv[2]), atof(argv[3]),
                                                     atoll(argv[4]), e));
        }
        return 0;
    }
    if (!strcmp(argv[1], "multistep") && argc >= 5) {
        int n = argc - 5;
        int64_t ms[64];
        for (int k = 0; k < n && k < 64; k++) {
            ms[k] = atoll(argv[5 + k]);
        }
        for (int64_t e = 0; e < atoll(argv[4]); e++) {
            printf("%a\n", nn_sched_multistep(atof(argv[2]), ms, n, atof(argv[3]), e));
        }
        return 0;
    }
    fprintf(stderr, "usage: see the top of test_schedule.c\n");
    return 2;
}
