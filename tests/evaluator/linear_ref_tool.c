/* Test helper for test_linear_ref.py: runs the linear probe and the kNN
 * probe on raw files the script generated and dumps what PyTorch must
 * reproduce: the init weights, each epoch's order, each step's loss and lr,
 * the final weights, and the kNN counts.
 *
 * usage: linear_ref_tool DIR D C NT NV EPOCHS BATCH LR WD FINAL_LR NESTEROV
 *                        SCHED(cosine|step) MILESTONE GAMMA SEED */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "evaluator/knn.h"
#include "evaluator/linear.h"
#include "evaluator/results.h"
#include "tests/evaluator/ref_io.h"

struct rec {
    float *loss;
    double *lr;
    int64_t n, cap;
};

static void on_step(void *ctx, int epoch, int64_t step, float loss, double lr)
{
    struct rec *r = ctx;
    SWAV_ASSERT(step == r->n && r->n < r->cap);
    r->loss[r->n] = loss;
    r->lr[r->n++] = lr;
}

int main(int argc, char **argv)
{
    if (argc != 16) {
        fprintf(stderr, "usage: %s DIR D C NT NV EPOCHS BATCH LR WD FINAL_LR NESTEROV SCHED "
                        "MILESTONE GAMMA SEED\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    int D = atoi(argv[2]), C = atoi(argv[3]), NT = atoi(argv[4]), NV = atoi(argv[5]);
    struct eval_linear_config cfg;
    eval_linear_config_default(&cfg);
    cfg.epochs = atoi(argv[6]);
    cfg.batch_size = atoi(argv[7]);
    cfg.lr = atof(argv[8]);
    cfg.wd = atof(argv[9]);
    cfg.final_lr = atof(argv[10]);
    cfg.nesterov = atoi(argv[11]) != 0;
    cfg.sched = !strcmp(argv[12], "step") ? EVAL_SCHED_STEP : EVAL_SCHED_COSINE;
    cfg.n_decay = 1;
    cfg.decay_epochs[0] = atoi(argv[13]);
    cfg.gamma = atof(argv[14]);
    cfg.seed = (uint64_t)atoll(argv[15]);

    float *xt = read_exact(dir, "xt.f32", (size_t)NT * D * 4);
    int32_t *yt = read_exact(dir, "yt.i32", (size_t)NT * 4);
    float *xv = read_exact(dir, "xv.f32", (size_t)NV * D * 4);
    int32_t *yv = read_exact(dir, "yv.i32", (size_t)NV * 4);

    struct eval_linear m;
    eval_linear_init(&m, D, C, cfg.batch_size, cfg.seed);
    write_file(dir, "init.f32", m.params, m.n_params * 4);
    uint32_t *order = malloc(sizeof(uint32_t) * (size_t)NT * cfg.epochs);
    for (int e = 0; e < cfg.epochs; e++)
        eval_linear_epoch_order(cfg.seed, e, order + (size_t)e * NT, NT);
    write_file(dir, "order.u32", order, sizeof(uint32_t) * (size_t)NT * cfg.epochs);

    int64_t steps = (int64_t)cfg.epochs * ((NT + cfg.batch_size - 1) / cfg.batch_size);
    struct rec r = {malloc(sizeof(float) * steps), malloc(sizeof(double) * steps), 0, steps};
    struct eval_feature_source fs = {xt, yt, NT, D};
    struct eval_batch_source src = eval_linear_source_features(&fs);
    struct eval_linear_result res;
    enum eval_linear_status st = eval_linear_run(&m, &cfg, &src, xv, yv, NV, on_step, &r, &res);
    if (st != EVAL_LINEAR_OK) {
        fprintf(stderr, "linear: %s\n", eval_linear_status_str(st));
        return 1;
    }
    SWAV_ASSERT(r.n == steps);
    write_file(dir, "loss.f32", r.loss, sizeof(float) * r.n);
    write_file(dir, "lr.f64", r.lr, sizeof(double) * r.n);
    write_file(dir, "final.f32", m.params, m.n_params * 4);

    struct eval_knn_config kc;
    eval_knn_config_default(&kc);
    struct eval_acc acc;
    SWAV_ASSERT(eval_knn_run(xt, yt, NT, xv, yv, NV, D, C, &kc, &acc) == EVAL_KNN_OK);
    printf("{\"steps\": %lld, \"last_top1\": %.6f, \"last_top5\": %.6f, \"best_top1\": %.6f, "
           "\"knn_correct1\": %lld, \"knn_correct5\": %lld}\n",
           (long long)r.n, res.last_top1, res.last_top5, res.best_top1,
           (long long)acc.correct1, (long long)acc.correct5);
    eval_linear_free(&m);
    free(order);
    free(r.loss);
    free(r.lr);
    free(xt);
    free(yt);
    free(xv);
    free(yv);
    return 0;
}
