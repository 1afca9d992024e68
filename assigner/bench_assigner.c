/* Timing driver for scripts/bench-assigner: the assigner core (scores +
 * Sinkhorn + statistics + queue FIFO) on random unit vectors, one rank
 * holding the whole global batch.
 *
 *   swav-assigner-bench BATCH QUEUE K D CROPS THREADS STEPS
 *
 * Fills the queue first (untimed), then prints one line:
 *   ms_per_step M cpu_ms_per_step C scores_ms S sinkhorn_ms K queue_used U
 * (cpu: user + system time of the process, all threads) */
#include <math.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/rng.h"
#include "common/timeutil.h"
#include "core.h"
#include "sinkhorn.h"
#include "tests/assigner/unit_rows.h"

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: %s BATCH QUEUE K D CROPS THREADS STEPS\n", argv[0]);
        return 2;
    }
    swav_log_init("assigner-bench", -1);
    struct assigner_config cfg = {
        .world_size = 1, .batch_size = atoi(argv[1]), .queue_length = atoi(argv[2]),
        .nmb_prototypes = atoi(argv[3]), .feat_dim = atoi(argv[4]),
        .ncrops_assign = atoi(argv[5]), .epsilon = 0.05f, .sinkhorn_iterations = 3,
        .epoch_queue_starts = 0, .collapse_entropy_frac = 1.0, .collapse_min_used = 1,
    };
    int threads = atoi(argv[6]), steps = atoi(argv[7]);
    struct sinkhorn_backend *b = sinkhorn_backend_cpu_new(threads);
    char err[256];
    assigner_core_t *c = assigner_core_new(&cfg, b, err, sizeof err);
    if (!c) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    struct swav_rng r;
    swav_rng_init(&r, 7, 0, 0, 0);
    float *protos = malloc(sizeof(float) * cfg.nmb_prototypes * cfg.feat_dim);
    fill_unit_rows(protos, cfg.nmb_prototypes, cfg.feat_dim, &r);
    int fill = cfg.queue_length / cfg.batch_size;
    /* 3 batches made beforehand (as the reference side): the timed loop only
     * copies them in, as the service copies a received message */
    size_t per = (size_t)cfg.batch_size * cfg.feat_dim;
    float *pool = malloc(sizeof(float) * 3 * cfg.ncrops_assign * per);
    fill_unit_rows(pool, 3 * cfg.ncrops_assign * cfg.batch_size, cfg.feat_dim, &r);
    double t_all = 0, t_sc = 0, t_sk = 0, cpu0 = 0;
    int used = 0;
    for (int s = 0; s < fill + 1 + steps; s++) {
        for (int i = 0; i < cfg.ncrops_assign; i++) {
            memcpy(assigner_core_embed_slot(c, i, 0),
                   pool + ((size_t)(s % 3) * cfg.ncrops_assign + i) * per, per * sizeof(float));
        }
        struct assigner_stats st;
        if (s == fill + 1) cpu0 = cpu_s();
        double t0 = swav_now_s();
        if (assigner_core_step(c, 0, s, protos, &st, err, sizeof err) < 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        double t1 = swav_now_s();
        if (s > fill) {
            t_all += t1 - t0;
            t_sc += st.ms_scores;
            t_sk += st.ms_sinkhorn;
            used = st.queue_used;
        }
    }
    double cpu = cpu_s() - cpu0;
    printf("ms_per_step %.3f cpu_ms_per_step %.3f scores_ms %.3f sinkhorn_ms %.3f "
           "queue_used %d\n", t_all * 1e3 / steps, cpu * 1e3 / steps, t_sc / steps,
           t_sk / steps, used);
    free(protos);
    free(pool);
    assigner_core_destroy(&c);
    sinkhorn_backend_destroy(&b);
    return 0;
}
