/* The assigner's CUDA backend (assigner/sinkhorn_cuda.h) against its CPU
 * backend (assigner/sinkhorn.h, itself checked against a double-precision
 * plain version in tests/assigner and against PyTorch's distributed_sinkhorn
 * in the parity tests) on the same problems:
 *
 *  - backend level: sizes from 1 row to 2560 x 3000 (every kernel shape of
 *    sinkhorn_cuda.cu, K not a multiple of 4, one row to many per block),
 *    output windows and per-rank groups, 0 to 3 iterations, samples of
 *    varied norms, sampled entropy rows, a prototype far from every sample
 *    (exp's lower clamp), and a problem both must refuse (S overflows: -1);
 *  - core level (assigner/core.h): world 1 and world 4, queue off and on
 *    (filling, then used), four steps of two assign crops: every rank's
 *    codes and the statistics the assigner reports.
 *
 * Tolerances, per code q (both sides fp32; the differences come from the
 * order of the sums in S = x w^T, amplified by 1/eps, and exp's last bits):
 * |gpu - cpu| <= 1.5e-4 |cpu| + 1e-12 and <= 3e-5 absolute.  The model: two
 * summation orders of a D = 128 dot product of unit vectors differ by about
 * 3e-7 (sigma), up to about 2e-6 at the tail of 7.7M scores; q moves by
 * dS / eps = 20 dS relative, so up to about 4e-5, and more for the samples of
 * larger norm: 1.5e-4 leaves a margin, while an indexing or iteration bug
 * moves codes by orders of magnitude more.  Entropy per row:
 * 1e-4 relative + 1e-6.  Argmax: the same prototype, or a near tie (the CPU
 * code at the GPU's argmax within REL_TOL of the CPU's maximum).  Statistics:
 * mean entropy 1e-4 relative; prototypes used equal, or differing by at
 * most the rows whose argmax is a near tie (counted and printed).  The GPU
 * repeated on the same problem gives the same codes, entropy and argmax,
 * bit for bit (no float atomics).  Rows whose entropy is not asked for
 * (entropy_every) are left as they were.
 *
 * fp32 scores: SWAV_CUDA_TF32 is unset.  Exit 77 (skipped) without a CUDA
 * device. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "assigner/core.h"
#include "assigner/sinkhorn.h"
#include "assigner/sinkhorn_cuda.h"
#include "common/rng.h"
#include "tests/assigner/unit_rows.h"
#define EXPECT_STREAM stdout /* among the progress lines */
#include "tests/expect.h"

#define REL_TOL 1.5e-4
#define ABS_TOL 3e-5
#define ENT_TOL 1e-4
#define ENTROPY_SENTINEL -7.0f

static struct sinkhorn_backend *cpu, *gpu;

/* Codes a (gpu) against b (cpu), n values: worst relative (in units of the
 * tolerance) and absolute difference; failures counted by the caller. */
struct cmp {
    double worst_rel; /* max |a - b| / (REL_TOL |b| + 1e-12), <= 1 passes */
    double worst_abs;
    size_t at;
};

static struct cmp compare_codes(const float *a, const float *b, size_t n)
{
    struct cmp c = {0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double r = d / (REL_TOL * fabs((double)b[i]) + 1e-12);
        if (!(r <= c.worst_rel)) {
            c.worst_rel = r; /* NaN sticks */
            c.at = i;
        }
        if (!(d <= c.worst_abs)) c.worst_abs = d;
    }
    return c;
}

static int first_argmax(const float *q, int k)
{
    int best = 0;
    for (int j = 1; j < k; j++) {
        if (q[j] > q[best]) best = j;
    }
    return best;
}

/* Output row r of a problem's codes (dense or grouped, sinkhorn.h). */
static float *code_row(const struct sinkhorn_problem *p, float *codes, int r)
{
    if (p->out_group > 0) {
        return codes + (size_t)(r / p->out_group) * p->out_group_stride +
               (size_t)(r % p->out_group) * (size_t)p->k;
    }
    return codes + (size_t)r * (size_t)p->k;
}

/* One problem on both backends.  expect_rc: 0, or -1 for a problem both
 * must refuse. */
static void check_problem(const char *what, struct sinkhorn_problem p, const float *x,
                          const float *w, int expect_rc)
{
    const int k = p.k, rows = p.out_rows;
    size_t span = p.out_group > 0 && rows > 0
                      ? (size_t)((rows - 1) / p.out_group) * p.out_group_stride +
                            (size_t)p.out_group * k
                      : (size_t)rows * k;
    if (span == 0) span = 1;
    float *cc = calloc(span, sizeof(float)), *gc = calloc(span, sizeof(float));
    float *gc2 = calloc(span, sizeof(float));
    float *ce = malloc(sizeof(float) * (rows + 1)), *ge = malloc(sizeof(float) * (rows + 1));
    float *ge2 = malloc(sizeof(float) * (rows + 1));
    int32_t *ca = calloc((size_t)rows + 1, sizeof(int32_t)), *ga = calloc((size_t)rows + 1, sizeof(int32_t));
    int32_t *ga2 = calloc((size_t)rows + 1, sizeof(int32_t));
    for (int r = 0; r <= rows; r++) ce[r] = ge[r] = ge2[r] = ENTROPY_SENTINEL;
    EXPECT(cpu->reserve(cpu->impl, p.n, k, p.d) == 0, "%s: cpu reserve", what);
    EXPECT(gpu->reserve(gpu->impl, p.n, k, p.d) == 0, "%s: gpu reserve: %s", what,
           gpu->error ? gpu->error(gpu->impl) : "");
    struct sinkhorn_result cres = {0}, gres = {0};
    p.w_same = false;
    int crc = cpu->run(cpu->impl, &p, x, w, cc, ce, ca, &cres);
    int grc = gpu->run(gpu->impl, &p, x, w, gc, ge, ga, &gres);
    /* again, and with w_same (w is not copied again): bit for bit */
    p.w_same = true;
    int grc2 = gpu->run(gpu->impl, &p, x, w, gc2, ge2, ga2, NULL);
    EXPECT(crc == expect_rc && grc == expect_rc && grc2 == expect_rc,
           "%s: rc cpu %d gpu %d/%d, expected %d", what, crc, grc, grc2, expect_rc);
    EXPECT(memcmp(gc, gc2, span * sizeof(float)) == 0 &&
               memcmp(ge, ge2, sizeof(float) * rows) == 0 &&
               memcmp(ga, ga2, sizeof(int32_t) * rows) == 0,
           "%s: a repeated GPU run differs", what);
    if (expect_rc != 0) {
        printf("%-10s n=%d k=%d: refused by both (rc %d, %d)\n", what, p.n, k, crc, grc);
        goto out;
    }
    struct cmp c = {0, 0, 0};
    int ties = 0;
    double ent_worst = 0;
    const int every = p.entropy_every > 1 ? p.entropy_every : 1;
    for (int r = 0; r < rows; r++) {
        const float *qc = code_row(&p, cc, r), *qg = code_row(&p, gc, r);
        struct cmp rc = compare_codes(qg, qc, (size_t)k);
        if (!(rc.worst_rel <= c.worst_rel)) {
            c.worst_rel = rc.worst_rel;
            c.at = (size_t)r * k + rc.at;
        }
        if (!(rc.worst_abs <= c.worst_abs)) c.worst_abs = rc.worst_abs;
        if (r % every == 0) {
            double e = fabs((double)ge[r] - ce[r]) / (ENT_TOL * fabs((double)ce[r]) + 1e-6);
            if (!(e <= ent_worst)) ent_worst = e;
        } else {
            EXPECT(ge[r] == ENTROPY_SENTINEL, "%s: entropy of row %d (not asked for) written",
                   what, r);
        }
        EXPECT(ga[r] == first_argmax(qg, k), "%s: row %d: gpu argmax %d is not its codes' %d",
               what, r, ga[r], first_argmax(qg, k));
        if (ga[r] != ca[r]) {
            ties++;
            EXPECT(qc[ga[r]] >= qc[ca[r]] * (1.0f - (float)REL_TOL),
                   "%s: row %d: argmax gpu %d (cpu code %g) cpu %d (%g): not a near tie", what,
                   r, ga[r], (double)qc[ga[r]], ca[r], (double)qc[ca[r]]);
        }
    }
    EXPECT(c.worst_rel <= 1.0 && c.worst_abs <= ABS_TOL,
           "%s: codes: worst |gpu-cpu| %.3g (abs tol %.0e), worst relative %.3g x tol %.0e at "
           "row %zu column %zu",
           what, c.worst_abs, ABS_TOL, c.worst_rel, REL_TOL, c.at / (size_t)k, c.at % (size_t)k);
    EXPECT(ent_worst <= 1.0, "%s: entropy off by %.3g x tol", what, ent_worst);
    printf("%-10s n=%d d=%d k=%d rows=[%d,%d) group %d iters=%d eps=%g: worst abs %.3g, rel "
           "%.3g x %.0e, entropy %.3g x tol, %d near ties; gpu scores %.3f ms sinkhorn %.3f ms "
           "copies %.3f ms\n",
           what, p.n, p.d, k, p.out_row0, p.out_row0 + rows, p.out_group, p.iterations,
           (double)p.epsilon, c.worst_abs, c.worst_rel, REL_TOL, ent_worst, ties,
           gres.ms_scores, gres.ms_sinkhorn, gres.ms_copy);
out:
    free(cc);
    free(gc);
    free(gc2);
    free(ce);
    free(ge);
    free(ge2);
    free(ca);
    free(ga);
    free(ga2);
}

/* Unit samples and prototypes (norms scaled when `norms`), a window of rows,
 * optionally grouped like the core's per-rank codes. */
static void check_case(int n, int d, int k, int row0, int rows, int group, int iters, float eps,
                       int every, bool norms)
{
    struct swav_rng r;
    swav_rng_init(&r, 4242, (uint32_t)n, (uint32_t)k, (uint32_t)iters);
    float *x = malloc(sizeof(float) * (size_t)n * d), *w = malloc(sizeof(float) * (size_t)k * d);
    fill_unit_rows(x, n, d, &r);
    fill_unit_rows(w, k, d, &r);
    if (norms) {
        for (int i = 0; i < n; i++) {
            float s = 0.5f + (float)(i % 7) / 6.0f; /* 0.5 .. 1.5 */
            for (int t = 0; t < d; t++) x[(size_t)i * d + t] *= s;
        }
    }
    struct sinkhorn_problem p = {
        .n = n, .d = d, .k = k, .out_row0 = row0, .out_rows = rows, .out_group = group,
        .out_group_stride = group > 0 ? (size_t)3 * group * k : 0, /* a gap between groups */
        .epsilon = eps, .iterations = iters, .entropy_every = every,
    };
    check_problem(norms ? "norms" : "unit", p, x, w, 0);
    free(x);
    free(w);
}

/* Samples in a cone around e0, one prototype at -e0, eps 0.01: its
 * exp(S/eps - m_b) is below e^-140 for every sample, which both backends
 * take as e^-87.3 (the CPU's exp clamps there): the prototype keeps a little
 * weight and the codes agree.  Then one sample and one prototype of norm
 * 1e20 along e0: S overflows to +inf, both refuse (-1). */
static void check_far_and_refused(void)
{
    const int n = 64, d = 16, k = 40;
    struct swav_rng r;
    swav_rng_init(&r, 99, 0, 0, 0);
    float *x = malloc(sizeof(float) * n * d), *w = malloc(sizeof(float) * k * d);
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int t = 0; t < d; t++) {
            x[i * d + t] = (t == 0 ? 4.0f : 0.0f) + (float)swav_rng_normal(&r) * 0.3f;
            s += (double)x[i * d + t] * x[i * d + t];
        }
        for (int t = 0; t < d; t++) x[i * d + t] = (float)(x[i * d + t] / sqrt(s));
    }
    fill_unit_rows(w, k, d, &r);
    for (int t = 0; t < d; t++) w[5 * d + t] = t == 0 ? -1.0f : 0.0f;
    struct sinkhorn_problem p = {.n = n, .d = d, .k = k, .out_row0 = 0, .out_rows = n,
                                 .epsilon = 0.01f, .iterations = 3, .entropy_every = 1};
    check_problem("far proto", p, x, w, 0);
    for (int t = 0; t < d; t++) {
        x[9 * d + t] = t == 0 ? 1e20f : 0.0f;
        w[7 * d + t] = t == 0 ? 1e20f : 0.0f;
    }
    check_problem("refused", p, x, w, -1);
    free(x);
    free(w);
}

/* ---- core level ------------------------------------------------------------ */

static void check_core(int world, int bs, int k, int d, int queue_length)
{
    struct assigner_config cfg = {
        .world_size = world, .batch_size = bs, .nmb_prototypes = k, .feat_dim = d,
        .ncrops_assign = 2, .epsilon = 0.05f, .sinkhorn_iterations = 3,
        .queue_length = queue_length, .epoch_queue_starts = 0, .collapse_entropy_frac = 0.99,
    };
    char err[256];
    assigner_core_t *cc = assigner_core_new(&cfg, cpu, err, sizeof err);
    EXPECT(cc != NULL, "cpu core: %s", err);
    assigner_core_t *gc = assigner_core_new(&cfg, gpu, err, sizeof err);
    EXPECT(gc != NULL, "gpu core: %s", err);
    if (!cc || !gc) {
        assigner_core_destroy(&cc);
        assigner_core_destroy(&gc);
        return;
    }
    struct swav_rng r;
    swav_rng_init(&r, 7, (uint32_t)world, (uint32_t)k, (uint32_t)queue_length);
    float *protos = malloc(sizeof(float) * (size_t)k * d);
    const size_t per_rank = (size_t)cfg.ncrops_assign * bs * k;
    for (int step = 0; step < 4; step++) {
        fill_unit_rows(protos, k, d, &r); /* the prototypes move every step */
        for (int i = 0; i < cfg.ncrops_assign; i++) {
            for (int rk = 0; rk < world; rk++) {
                float *a = assigner_core_embed_slot(cc, i, rk);
                fill_unit_rows(a, bs, d, &r);
                memcpy(assigner_core_embed_slot(gc, i, rk), a, sizeof(float) * (size_t)bs * d);
            }
        }
        struct assigner_stats cs, gs;
        int crc = assigner_core_step(cc, 0, step, protos, &cs, err, sizeof err);
        EXPECT(crc == 0, "cpu step %d: %s", step, err);
        int grc = assigner_core_step(gc, 0, step, protos, &gs, err, sizeof err);
        EXPECT(grc == 0, "gpu step %d: %s", step, err);
        if (crc || grc) break;
        struct cmp c = {0, 0, 0};
        int ties = 0;
        for (int rk = 0; rk < world; rk++) {
            const float *qc = assigner_core_rank_codes(cc, rk), *qg = assigner_core_rank_codes(gc, rk);
            struct cmp one = compare_codes(qg, qc, per_rank);
            if (!(one.worst_rel <= c.worst_rel)) c.worst_rel = one.worst_rel;
            if (!(one.worst_abs <= c.worst_abs)) c.worst_abs = one.worst_abs;
            for (size_t row = 0; row < per_rank / (size_t)k; row++) {
                ties += first_argmax(qg + row * k, k) != first_argmax(qc + row * k, k);
            }
        }
        double ent = fabs(gs.entropy_mean - cs.entropy_mean) / (ENT_TOL * fabs(cs.entropy_mean));
        int used_diff = abs(gs.prototypes_used - cs.prototypes_used);
        EXPECT(c.worst_rel <= 1.0 && c.worst_abs <= ABS_TOL,
               "core W=%d step %d: codes worst abs %.3g, relative %.3g x tol", world, step,
               c.worst_abs, c.worst_rel);
        EXPECT(ent <= 1.0, "core W=%d step %d: mean entropy gpu %.7f cpu %.7f", world, step,
               gs.entropy_mean, cs.entropy_mean);
        EXPECT(used_diff <= ties, "core W=%d step %d: prototypes used gpu %d cpu %d (%d near "
               "ties)", world, step, gs.prototypes_used, cs.prototypes_used, ties);
        EXPECT(gs.queue_used == cs.queue_used, "core W=%d step %d: queue used gpu %d cpu %d",
               world, step, (int)gs.queue_used, (int)cs.queue_used);
        printf("core W=%d bs=%d K=%d D=%d queue %d step %d (queue %s): worst abs %.3g, rel %.3g "
               "x tol; entropy %.6f/%.6f, used %d/%d (%d near ties); gpu %.3f+%.3f ms, copies "
               "%.3f ms\n",
               world, bs, k, d, queue_length, step, cs.queue_used ? "used" : "not used",
               c.worst_abs, c.worst_rel, gs.entropy_mean, cs.entropy_mean, gs.prototypes_used,
               cs.prototypes_used, ties, gs.ms_scores, gs.ms_sinkhorn, gs.ms_copy);
    }
    free(protos);
    assigner_core_destroy(&cc);
    assigner_core_destroy(&gc);
}

int main(void)
{
    char why[256];
    if (sinkhorn_cuda_device_count(why, sizeof why) == 0) {
        printf("SKIP: no CUDA device (%s)\n", why);
        return 77;
    }
    unsetenv("SWAV_CUDA_TF32");
    char err[256];
    gpu = sinkhorn_backend_cuda_new(0, err, sizeof err);
    if (!gpu) {
        printf("FAIL: %s\n", err);
        return 1;
    }
    cpu = sinkhorn_backend_cpu_new(4);

    /* every kernel shape (sinkhorn_cuda.cu's table, by K): 1..1024 -> (1, 8),
     * 2000 -> (2, 4), 3000 -> (3, 4), 4000 -> (4, 2), 5000 -> (6, 1), 7000 ->
     * (8, 1, 256), 10000 -> (8, 1, 512), 20000 -> (8, 1, 1024) */
    check_case(1, 8, 37, 0, 1, 0, 3, 0.05f, 1, false);
    check_case(7, 16, 40, 2, 5, 0, 1, 0.1f, 1, false);
    check_case(300, 32, 300, 100, 200, 0, 3, 0.05f, 3, false);
    check_case(300, 32, 301, 0, 300, 0, 0, 0.05f, 1, false);
    check_case(300, 32, 302, 50, 250, 0, 2, 0.05f, 1, true);
    check_case(1000, 64, 2000, 0, 1000, 250, 3, 0.05f, 2, false);
    check_case(2560, 128, 3000, 512, 2048, 512, 3, 0.05f, 4, false);
    check_case(700, 128, 3000, 0, 700, 0, 3, 0.1f, 1, true);
    check_case(500, 32, 4000, 0, 500, 0, 2, 0.05f, 1, false);
    check_case(300, 32, 5000, 0, 300, 100, 3, 0.05f, 1, false);
    check_case(200, 16, 7000, 10, 190, 0, 3, 0.05f, 1, false);
    check_case(100, 16, 10001, 0, 100, 0, 3, 0.05f, 1, false);
    check_case(50, 8, 20000, 0, 50, 0, 1, 0.05f, 1, false);
    check_case(4100, 16, 37, 4, 4096, 1024, 3, 0.05f, 1, false);
    check_far_and_refused();
    /* K past the backend's limit: refused at reserve, with the reason */
    EXPECT(gpu->reserve(gpu->impl, 8, SINKHORN_CUDA_MAX_K + 1, 8) < 0 &&
               strstr(gpu->error(gpu->impl), "prototypes") != NULL,
           "K = %d accepted", SINKHORN_CUDA_MAX_K + 1);

    check_core(1, 64, 300, 32, 0);
    check_core(1, 64, 300, 32, 128);
    check_core(4, 64, 3000, 128, 0);
    check_core(4, 64, 3000, 128, 512);

    sinkhorn_backend_destroy(&cpu);
    sinkhorn_backend_destroy(&gpu);
    printf("%s (%d failures)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
