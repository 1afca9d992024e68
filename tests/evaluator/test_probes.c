/* kNN and linear probes on generated data:
 *   - clearly separable classes (Gaussian clusters, means 3 sigma apart in
 *     every one of 64 dims): both probes must reach top-1 >= 99%;
 *   - random labels: top-1 must stay at chance, 10% +- 5 points (2000
 *     validation samples: the binomial std is 0.67 points), top-5 at
 *     50% +- 10 points;
 *   - kNN: threads and chunking do not change the result, and it equals a
 *     plain double-precision implementation of the same vote;
 *   - schedules: cosine and multistep values at known epochs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"
#include "evaluator/knn.h"
#include "evaluator/linear.h"
#include "tests/expect.h"


enum { D = 64, C = 10, NT = 4000, NV = 2000 };

static void gen(float *x, int32_t *y, int n, const float *means, bool random_labels,
                uint32_t tag)
{
    struct swav_rng r;
    swav_rng_init(&r, 7, 0, 0, tag);
    for (int i = 0; i < n; i++) {
        int c = (int)swav_rng_below(&r, C);
        for (int j = 0; j < D; j++)
            x[i * D + j] = (means ? means[c * D + j] : 0.0f) + (float)swav_rng_normal(&r);
        y[i] = random_labels ? (int32_t)swav_rng_below(&r, C) : c;
    }
}

/* Plain version: full similarity row in double, full sort by selection. */
static void knn_plain(const float *xt, const int32_t *yt, int nt, const float *xv,
                      const int32_t *yv, int nv, int k, double t, struct eval_acc *acc)
{
    double *s = malloc(sizeof(double) * nt);
    char *used = malloc(nt);
    memset(acc, 0, sizeof(*acc));
    for (int i = 0; i < nv; i++) {
        double nv2 = 0;
        for (int j = 0; j < D; j++)
            nv2 += (double)xv[i * D + j] * xv[i * D + j];
        for (int a = 0; a < nt; a++) {
            double dot = 0, na = 0;
            for (int j = 0; j < D; j++) {
                dot += (double)xv[i * D + j] * xt[a * D + j];
                na += (double)xt[a * D + j] * xt[a * D + j];
            }
            s[a] = dot / sqrt(nv2) / sqrt(na);
        }
        memset(used, 0, nt);
        float votes[C] = {0};
        for (int m = 0; m < k; m++) {
            int best = -1;
            for (int a = 0; a < nt; a++)
                if (!used[a] && (best < 0 || s[a] > s[best]))
                    best = a;
            used[best] = 1;
            votes[yt[best]] += (float)exp(s[best] / t);
        }
        eval_acc_add(acc, eval_label_rank(votes, C, yv[i]));
    }
    free(s);
    free(used);
}

static void run_knn(const float *xt, const int32_t *yt, const float *xv, const int32_t *yv,
                    int threads, int64_t chunk, struct eval_acc *acc)
{
    struct eval_knn_config kc;
    eval_knn_config_default(&kc);
    kc.threads = threads;
    kc.chunk_rows = chunk;
    enum eval_knn_status st = eval_knn_run(xt, yt, NT, xv, yv, NV, D, C, &kc, acc);
    SWAV_ASSERT(st == EVAL_KNN_OK);
}

static void run_linear(const float *xt, const int32_t *yt, const float *xv, const int32_t *yv,
                       int epochs, struct eval_linear_result *res)
{
    struct eval_linear_config lc;
    eval_linear_config_default(&lc);
    lc.epochs = epochs;
    lc.batch_size = 64;
    struct eval_linear m;
    eval_linear_init(&m, D, C, lc.batch_size, lc.seed);
    struct eval_feature_source fs = {xt, yt, NT, D};
    struct eval_batch_source src = eval_linear_source_features(&fs);
    enum eval_linear_status st = eval_linear_run(&m, &lc, &src, xv, yv, NV, NULL, NULL, res);
    SWAV_ASSERT(st == EVAL_LINEAR_OK);
    eval_linear_free(&m);
}

int main(void)
{
    float *means = malloc(sizeof(float) * C * D);
    struct swav_rng r;
    swav_rng_init(&r, 7, 0, 0, 99);
    for (int i = 0; i < C * D; i++)
        means[i] = (float)(1.5 * swav_rng_normal(&r));
    float *xt = malloc(sizeof(float) * NT * D), *xv = malloc(sizeof(float) * NV * D);
    int32_t *yt = malloc(sizeof(int32_t) * NT), *yv = malloc(sizeof(int32_t) * NV);

    /* separable */
    gen(xt, yt, NT, means, false, 1);
    gen(xv, yv, NV, means, false, 2);
    struct eval_acc a1, a2, a3, ap;
    run_knn(xt, yt, xv, yv, 1, 0, &a1);
    printf("knn separable: top1 %.2f top5 %.2f\n", eval_acc_top1(&a1), eval_acc_top5(&a1));
    EXPECT(eval_acc_top1(&a1) >= 99.0, "knn separable top1 %.2f < 99", eval_acc_top1(&a1));
    struct eval_linear_result lr;
    run_linear(xt, yt, xv, yv, 5, &lr);
    printf("linear separable: best top1 %.2f top5 %.2f (epoch %d), last train loss %.4f\n",
           lr.best_top1, lr.best_top5, lr.best_epoch, lr.last_train_loss);
    EXPECT(lr.best_top1 >= 99.0, "linear separable top1 %.2f < 99", lr.best_top1);

    /* random labels */
    gen(xt, yt, NT, NULL, true, 3);
    gen(xv, yv, NV, NULL, true, 4);
    run_knn(xt, yt, xv, yv, 1, 0, &a1);
    run_knn(xt, yt, xv, yv, 3, 7, &a2);
    run_knn(xt, yt, xv, yv, 2, 1, &a3);
    printf("knn random: top1 %.2f top5 %.2f\n", eval_acc_top1(&a1), eval_acc_top5(&a1));
    EXPECT(fabs(eval_acc_top1(&a1) - 10.0) <= 5.0, "knn random top1 %.2f not 10+-5",
           eval_acc_top1(&a1));
    EXPECT(fabs(eval_acc_top5(&a1) - 50.0) <= 10.0, "knn random top5 %.2f not 50+-10",
           eval_acc_top5(&a1));
    EXPECT(a1.correct1 == a2.correct1 && a1.correct5 == a2.correct5 &&
               a1.correct1 == a3.correct1 && a1.correct5 == a3.correct5,
           "knn threads/chunks differ: %lld/%lld %lld/%lld %lld/%lld", (long long)a1.correct1,
           (long long)a1.correct5, (long long)a2.correct1, (long long)a2.correct5,
           (long long)a3.correct1, (long long)a3.correct5);
    /* plain version on the first 300 validation rows */
    {
        struct eval_knn_config kc;
        eval_knn_config_default(&kc);
        struct eval_acc sub;
        SWAV_ASSERT(eval_knn_run(xt, yt, NT, xv, yv, 300, D, C, &kc, &sub) == EVAL_KNN_OK);
        knn_plain(xt, yt, NT, xv, yv, 300, 20, 0.07, &ap);
        printf("knn vs plain on 300 rows: %lld/%lld vs %lld/%lld\n", (long long)sub.correct1,
               (long long)sub.correct5, (long long)ap.correct1, (long long)ap.correct5);
        /* float vs double similarities may swap a near-tie at the k-th
         * neighbour: allow 2 samples of 300 to differ */
        EXPECT(llabs(sub.correct1 - ap.correct1) <= 2 && llabs(sub.correct5 - ap.correct5) <= 2,
               "knn differs from the plain version");
    }
    run_linear(xt, yt, xv, yv, 3, &lr);
    printf("linear random: best top1 %.2f (best over epochs) last top1 %.2f top5 %.2f\n",
           lr.best_top1, lr.last_top1, lr.last_top5);
    EXPECT(fabs(lr.last_top1 - 10.0) <= 5.0, "linear random top1 %.2f not 10+-5", lr.last_top1);
    EXPECT(fabs(lr.last_top5 - 50.0) <= 10.0, "linear random top5 %.2f not 50+-10",
           lr.last_top5);
    EXPECT(lr.best_top1 <= 15.0, "linear random best top1 %.2f over 15", lr.best_top1);

    /* bad input is a status, not a crash */
    {
        struct eval_knn_config kc;
        eval_knn_config_default(&kc);
        yt[5] = C;
        struct eval_acc x;
        EXPECT(eval_knn_run(xt, yt, NT, xv, yv, NV, D, C, &kc, &x) == EVAL_KNN_ERR_LABEL,
               "bad label accepted");
        kc.k = 0;
        EXPECT(eval_knn_run(xt, yt, NT, xv, yv, NV, D, C, &kc, &x) == EVAL_KNN_ERR_ARGS,
               "k=0 accepted");
    }

    /* schedules (torch values): CosineAnnealingLR(T=100, eta_min=0) from 0.3 */
    struct eval_linear_config lc;
    eval_linear_config_default(&lc);
    EXPECT(fabs(eval_linear_lr(&lc, 0) - 0.3) < 1e-12, "cosine epoch 0");
    EXPECT(fabs(eval_linear_lr(&lc, 50) - 0.15) < 1e-12, "cosine epoch 50");
    EXPECT(fabs(eval_linear_lr(&lc, 100)) < 1e-12, "cosine epoch 100");
    lc.sched = EVAL_SCHED_STEP;
    EXPECT(fabs(eval_linear_lr(&lc, 59) - 0.3) < 1e-12, "step epoch 59");
    EXPECT(fabs(eval_linear_lr(&lc, 60) - 0.03) < 1e-12, "step epoch 60");
    EXPECT(fabs(eval_linear_lr(&lc, 85) - 0.003) < 1e-12, "step epoch 85");

    free(means);
    free(xt);
    free(xv);
    free(yt);
    free(yv);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
