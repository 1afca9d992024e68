/* Unit test: the CPU backend (scaling vectors, fused passes, threads) against
 * sinkhorn_plain (the reference's operations in order, double sums), over
 * sizes, thread counts, iteration counts and output windows, and over its
 * paths (exp fused into the score kernel, rows rescaled, the row-maximum
 * path past the fused range); the queue's FIFO
 * and file round trip; the core refusing non-finite input without changing
 * state.  Tolerance: |fast - plain| <= 2e-5 * |plain| + 1e-9 per code. */
#include <errno.h>
#include <stdbool.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "assigner/core.h"
#include "assigner/queue.h"
#include "assigner/scores.h"
#include "assigner/sinkhorn.h"
#include "common/rng.h"
#include "tests/assigner/unit_rows.h"
#include "tests/expect.h"

/* Whether the CPU backend runs its fused score+exp kernel here. */
static bool fused_here(void)
{
    return assigner_scores_have_kernel() && !getenv("SWAV_ASSIGNER_BLAS");
}

/* fused: 1 the fused path must run (where it can), 0 the row-maximum path
 * must; min_rebased: at least this many rows rescaled (fused only). */
static void check_data(const char *what, int n, int d, int k, int row0, int rows, int iters,
                       float eps, int threads, const float *x, const float *w, int fused,
                       int min_rebased)
{
    float *c1 = malloc(sizeof(float) * rows * k), *c2 = malloc(sizeof(float) * rows * k);
    float *scratch = malloc(sizeof(float) * n * k);
    float *ent = malloc(sizeof(float) * rows);
    int32_t *am = malloc(sizeof(int32_t) * rows);
    struct sinkhorn_problem p = {n, d, k, row0, rows, 0, 0, eps, iters, 1};
    struct sinkhorn_backend *b = sinkhorn_backend_cpu_new(threads);
    EXPECT(b->reserve(b->impl, n, k, d) == 0, "reserve");
    struct sinkhorn_result res = {0};
    int rc = b->run(b->impl, &p, x, w, c1, ent, am, &res);
    EXPECT(rc == 0, "run rc %d", rc);
    EXPECT(res.fused == (fused && fused_here()), "%s: fused %d, expected %d", what,
           (int)res.fused, fused && fused_here());
    if (fused_here() && fused) {
        EXPECT(res.rebased_rows >= min_rebased, "%s: %d rows rebased, expected >= %d", what,
               res.rebased_rows, min_rebased);
    }
    /* again with w_same (the next crop of a step): the same codes, bit for bit */
    float *c3 = malloc(sizeof(float) * rows * k);
    p.w_same = true;
    EXPECT(b->run(b->impl, &p, x, w, c3, NULL, NULL, NULL) == 0, "run w_same");
    EXPECT(memcmp(c1, c3, sizeof(float) * rows * k) == 0, "%s: w_same changed the codes", what);
    p.w_same = false;
    free(c3);
    sinkhorn_plain(&p, x, w, c2, scratch);
    double worst = 0;
    for (int i = 0; i < rows * k; i++) {
        double e = fabs((double)c1[i] - c2[i]) / (fabs((double)c2[i]) + 1e-9 / 2e-5);
        if (e > worst) worst = e;
    }
    EXPECT(worst <= 2e-5, "%s n=%d k=%d iters=%d threads=%d: worst relative error %.3g", what, n,
           k, iters, threads, worst);
    for (int i = 0; i < rows; i++) {
        double h = 0, mx = -1;
        int best = 0;
        for (int j = 0; j < k; j++) {
            double q = c2[i * k + j];
            if (q > 0) h -= q * log(q);
            if (q > mx) {
                mx = q;
                best = j;
            }
        }
        EXPECT(fabs(h - ent[i]) <= 1e-3 * (fabs(h) + 1e-3), "entropy row %d: %g vs %g", i,
               (double)ent[i], h);
        EXPECT(am[i] == best || c2[i * k + am[i]] >= (float)mx * (1 - 1e-5f),
               "argmax row %d: %d vs %d", i, am[i], best);
    }
    printf("%s n=%d d=%d k=%d rows=[%d,%d) iters=%d threads=%d: %s, %d rebased, worst rel %.3g, "
           "q[0]=%g/%g\n", what, n, d, k, row0, row0 + rows, iters, threads,
           res.fused ? "fused" : "row-maximum", res.rebased_rows, worst, (double)c1[0],
           (double)c2[0]);
    sinkhorn_backend_destroy(&b);
    free(c1);
    free(c2);
    free(scratch);
    free(ent);
    free(am);
}

/* Unit-vector samples and prototypes: the fused path while 1/eps <= 40. */
static void check_case(int n, int d, int k, int row0, int rows, int iters, float eps,
                       int threads)
{
    struct swav_rng r;
    swav_rng_init(&r, 1234, (uint32_t)n, (uint32_t)k, (uint32_t)iters);
    float *x = malloc(sizeof(float) * n * d), *w = malloc(sizeof(float) * k * d);
    fill_unit_rows(x, n, d, &r);
    fill_unit_rows(w, k, d, &r);
    check_data("unit", n, d, k, row0, rows, iters, eps, threads, x, w, 1.0f / eps <= 40.0f, 0);
    free(x);
    free(w);
}

/* The paths of the CPU backend: samples of varied norms (unequal row
 * scales in the fused path), samples opposite to every prototype (their
 * largest exp far below the bound: rescaled rows), and a bound past the
 * fused range (the row-maximum path with the same kernel). */
static void check_paths(void)
{
    const int n = 90, d = 16, k = 40;
    struct swav_rng r;
    swav_rng_init(&r, 77, 0, 0, 0);
    float *x = malloc(sizeof(float) * n * d), *w = malloc(sizeof(float) * k * d);
    fill_unit_rows(x, n, d, &r);
    fill_unit_rows(w, k, d, &r);
    for (int i = 0; i < n; i++) {
        float s = 0.5f + (float)(i % 7) / 6.0f; /* norms 0.5 .. 1.5 */
        for (int t = 0; t < d; t++) x[i * d + t] *= s;
    }
    /* 0.1: bound 15 */
    check_data("norms", n, d, k, 10, 80, 3, 0.1f, 2, x, w, 1, 0);
    check_data("norms", n, d, k, 0, 90, 0, 0.1f, 3, x, w, 1, 0);
    /* prototypes in a cone around e0, rows 3 and 50..54 at -e0:
     * S/eps = -1/0.03, 2^-shift exp(S/eps) ~ 2^-97 */
    fill_unit_rows(x, n, d, &r);
    for (int j = 0; j < k; j++) {
        double s = 0;
        for (int t = 0; t < d; t++) {
            w[j * d + t] = (t == 0 ? 4.0f : 0.0f) + (float)swav_rng_normal(&r) * 0.3f;
            s += (double)w[j * d + t] * w[j * d + t];
        }
        for (int t = 0; t < d; t++) w[j * d + t] = (float)(w[j * d + t] / sqrt(s));
    }
    const int far[] = {3, 50, 51, 52, 53, 54};
    for (int i = 0; i < 6; i++) {
        for (int t = 0; t < d; t++) x[far[i] * d + t] = t == 0 ? -1.0f : 0.0f;
    }
    check_data("far rows", n, d, k, 0, n, 3, 0.03f, 2, x, w, 1, 6);
    check_data("far rows", n, d, k, 0, n, 0, 0.03f, 1, x, w, 1, 6);
    /* 1/0.02 = 50 > 40 */
    fill_unit_rows(x, n, d, &r);
    fill_unit_rows(w, k, d, &r);
    check_data("bound 50", n, d, k, 20, 70, 3, 0.02f, 2, x, w, 0, 0);
    free(x);
    free(w);
}

static void test_queue(void)
{
    struct assigner_queue q;
    assigner_queue_init(&q, 2, 2, 4, 3, 2);
    assigner_queue_create(&q);
    EXPECT(!assigner_queue_last_row_nonzero(&q, 0), "empty queue used");
    for (int step = 0; step < 2; step++) {
        for (int i = 0; i < 2; i++)
            for (int r = 0; r < 2; r++) {
                float *s = assigner_queue_batch(&q, i, r);
                for (int t = 0; t < 2 * 3; t++) s[t] = (float)(100 * step + 10 * r + i + 1);
            }
        for (int i = 0; i < 2; i++) assigner_queue_push(&q, i);
        EXPECT(assigner_queue_last_row_nonzero(&q, 0) == (step == 1), "fill after step %d",
               step);
    }
    /* rank 1, crop 0: rows 0-1 newest (111), rows 2-3 older (11) */
    const float *seg = assigner_queue_block(&q, 0) + 4 * 3;
    EXPECT(seg[0] == 111 && seg[2 * 3] == 11, "FIFO order: %g %g", (double)seg[0],
           (double)seg[6]);
    char path[] = "/tmp/swav-test-queue-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    char err[256];
    EXPECT(assigner_queue_save(&q, path, 3, 77, err, sizeof err) == 0, "save: %s", err);
    struct assigner_queue q2;
    assigner_queue_init(&q2, 2, 2, 4, 3, 2);
    int64_t ep, st;
    EXPECT(assigner_queue_load(&q2, path, &ep, &st, err, sizeof err) == 0, "load: %s", err);
    EXPECT(ep == 3 && st == 77 && q2.present, "header");
    EXPECT(memcmp(q.buf, q2.buf, 2 * 4 * 3 * sizeof(float)) == 0, "data");
    struct assigner_queue q3;
    assigner_queue_init(&q3, 2, 2, 8, 3, 2);
    EXPECT(assigner_queue_load(&q3, path, &ep, &st, err, sizeof err) == -EINVAL,
           "geometry mismatch accepted");
    printf("queue: %s\n", err);
    unlink(path);
    EXPECT(assigner_queue_load(&q3, path, &ep, &st, err, sizeof err) == -ENOENT, "missing file");
    assigner_queue_free(&q);
    assigner_queue_free(&q2);
    assigner_queue_free(&q3);
}

static void test_core_nonfinite(void)
{
    struct assigner_config cfg = {.world_size = 2, .batch_size = 4, .nmb_prototypes = 10,
                                  .feat_dim = 8, .ncrops_assign = 2, .epsilon = 0.05f,
                                  .sinkhorn_iterations = 3, .queue_length = 16,
                                  .epoch_queue_starts = 0, .collapse_entropy_frac = 0.99};
    struct sinkhorn_backend *b = sinkhorn_backend_cpu_new(2);
    char err[256];
    assigner_core_t *c = assigner_core_new(&cfg, b, err, sizeof err);
    EXPECT(c != NULL, "core: %s", err);
    struct swav_rng r;
    swav_rng_init(&r, 5, 0, 0, 0);
    float protos[80];
    fill_unit_rows(protos, 10, 8, &r);
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 2; k++) fill_unit_rows(assigner_core_embed_slot(c, i, k), 4, 8, &r);
    struct assigner_stats st;
    EXPECT(assigner_core_step(c, 0, 0, protos, &st, err, sizeof err) == 0, "step: %s", err);
    size_t qbytes = (size_t)16 * 8 * sizeof(float);
    float *before = malloc(2 * qbytes);
    memcpy(before, assigner_queue_block(assigner_core_queue(c), 0), qbytes);
    memcpy(before + 16 * 8, assigner_queue_block(assigner_core_queue(c), 1), qbytes);
    assigner_core_embed_slot(c, 1, 1)[5] = NAN;
    EXPECT(assigner_core_step(c, 0, 1, protos, &st, err, sizeof err) < 0, "NaN accepted");
    printf("core: %s\n", err);
    EXPECT(memcmp(before, assigner_queue_block(assigner_core_queue(c), 0), qbytes) == 0 &&
               memcmp(before + 16 * 8, assigner_queue_block(assigner_core_queue(c), 1),
                      qbytes) == 0 &&
               assigner_core_last_step(c) == 0,
           "state changed by a refused step");
    /* an infinite prototype likewise */
    assigner_core_embed_slot(c, 1, 1)[5] = 0.5f;
    protos[13] = -INFINITY;
    EXPECT(assigner_core_step(c, 0, 1, protos, &st, err, sizeof err) < 0, "-Inf accepted");
    printf("core: %s\n", err);
    EXPECT(assigner_core_last_step(c) == 0, "state changed by a refused step");
    protos[13] = 0.25f;
    EXPECT(assigner_core_step(c, 0, 1, protos, &st, err, sizeof err) == 0, "finite step: %s",
           err);
    free(before);
    assigner_core_destroy(&c);
    sinkhorn_backend_destroy(&b);
}

/* The collapse monitor: healthy random assignments are not flagged; all
 * samples alike (one prototype gets every argmax) and all prototypes alike
 * (uniform assignments, entropy ln K) are, and counted. */
static void test_collapse(void)
{
    struct assigner_config cfg = {.world_size = 1, .batch_size = 64, .nmb_prototypes = 30,
                                  .feat_dim = 8, .ncrops_assign = 1, .epsilon = 0.05f,
                                  .sinkhorn_iterations = 3, .queue_length = 0,
                                  .epoch_queue_starts = 0, .collapse_entropy_frac = 0.95};
    struct sinkhorn_backend *b = sinkhorn_backend_cpu_new(2);
    char err[256];
    assigner_core_t *c = assigner_core_new(&cfg, b, err, sizeof err);
    struct swav_rng r;
    swav_rng_init(&r, 11, 0, 0, 0);
    float protos[30 * 8];
    struct assigner_stats st;
    fill_unit_rows(protos, 30, 8, &r);
    fill_unit_rows(assigner_core_embed_slot(c, 0, 0), 64, 8, &r);
    EXPECT(assigner_core_step(c, 0, 0, protos, &st, err, sizeof err) == 0, "%s", err);
    printf("collapse: random: entropy %.3f of %.3f, %d used, flags %d %d\n", st.entropy_mean,
           st.entropy_uniform, st.prototypes_used, st.collapse_uniform, st.collapse_few);
    EXPECT(!st.collapse_uniform && !st.collapse_few && st.collapse_warnings == 0,
           "healthy step flagged");
    float *e = assigner_core_embed_slot(c, 0, 0);
    for (int i = 1; i < 64; i++) memcpy(e + i * 8, e, 8 * sizeof(float));
    EXPECT(assigner_core_step(c, 0, 1, protos, &st, err, sizeof err) == 0, "%s", err);
    printf("collapse: same samples: %d used, flags %d %d, warnings %llu\n", st.prototypes_used,
           st.collapse_uniform, st.collapse_few, (unsigned long long)st.collapse_warnings);
    /* Sinkhorn's equipartition spreads identical samples evenly: the
     * assignments turn uniform, which is what the monitor sees */
    EXPECT(st.collapse_uniform && st.collapse_warnings == 1, "identical samples not flagged");
    fill_unit_rows(e, 64, 8, &r);
    for (int i = 1; i < 30; i++) memcpy(protos + i * 8, protos, 8 * sizeof(float));
    EXPECT(assigner_core_step(c, 0, 2, protos, &st, err, sizeof err) == 0, "%s", err);
    printf("collapse: same prototypes: entropy %.4f of %.4f, flags %d %d, warnings %llu\n",
           st.entropy_mean, st.entropy_uniform, st.collapse_uniform, st.collapse_few,
           (unsigned long long)st.collapse_warnings);
    EXPECT(st.collapse_uniform && fabs(st.entropy_mean - st.entropy_uniform) < 1e-3 &&
               st.collapse_warnings == 2, "uniform assignments not flagged");
    assigner_core_destroy(&c);
    /* the prototypes-used threshold */
    cfg.collapse_min_used = 31;
    c = assigner_core_new(&cfg, b, err, sizeof err);
    fill_unit_rows(protos, 30, 8, &r);
    fill_unit_rows(assigner_core_embed_slot(c, 0, 0), 64, 8, &r);
    EXPECT(assigner_core_step(c, 0, 0, protos, &st, err, sizeof err) == 0, "%s", err);
    EXPECT(st.collapse_few && !st.collapse_uniform && st.collapse_warnings == 1,
           "fewer prototypes than collapse_min_used not flagged (%d used)", st.prototypes_used);
    assigner_core_destroy(&c);
    sinkhorn_backend_destroy(&b);
}

int main(void)
{
    check_case(37, 16, 23, 0, 37, 3, 0.05f, 1);
    check_case(37, 16, 23, 0, 37, 3, 0.05f, 2);
    check_case(64, 32, 100, 48, 16, 3, 0.05f, 3);
    check_case(100, 8, 7, 90, 10, 1, 0.05f, 2);
    check_case(50, 8, 30, 10, 40, 0, 0.05f, 2);
    check_case(200, 128, 300, 100, 100, 5, 0.03f, 2);
    check_case(129, 16, 64, 1, 128, 3, 0.5f, 4);
    check_case(300, 128, 3000, 0, 300, 3, 0.05f, 2);
    check_paths();
    test_queue();
    test_core_nonfinite();
    test_collapse();
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("all passed\n");
    return 0;
}
