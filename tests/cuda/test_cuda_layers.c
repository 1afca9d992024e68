/* Every layer of nn/layers.h on the CUDA backend against the CPU backend
 * (the reference) on the same inputs, plus the device step pieces of
 * nn/cuda/backend_cuda.h (crop normalization, prototype normalization,
 * Sinkhorn, SGD+LARC) against their CPU versions.  fp32 on both sides.
 *
 * Error measure per output: max |cuda - cpu| / max(max |cpu|, 1e-6).
 * Tolerances (stated per check below): 1e-4 for convolutions and linear
 * layers (different summation orders over up to ~600 terms), 5e-4 for the
 * convolutions of ResNet-50's shapes at batch 32 (test_conv's callers), 1e-4 for batch
 * norm, 1e-5 for element-wise and row-wise ops, 1e-3 for the running
 * variance (cuDNN's unbiasing in float); the SyncBN pieces state theirs
 * (test_bn_stats, test_bn_elemt, test_syncbn_single).
 *
 * Exit 77 (skipped) when no CUDA device is present. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"
#include "nn/collective.h"
#include "nn/cuda/backend_cuda.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "nn/syncbn.h"
#include "tests/nn/bench_step.h"

#define CHECK_REL_FLOOR 1e-6 /* of max |cpu| */
#define CHECK_NAME_WIDTH 34
#include "tests/cuda/compare.h"
#include "tests/cuda/bn_step.h"

static nn_backend_t *cpu, *gpu;
static struct swav_rng rng;

struct pair {
    float *c, *g; /* CPU (malloc), CUDA (managed, nn_backend_alloc) */
    size_t n;
};

static struct pair pair_new(size_t n, double scale)
{
    struct pair p = {calloc(n ? n : 1, sizeof(float)), nn_backend_alloc(gpu, (n ? n : 1) * sizeof(float)), n};
    for (size_t i = 0; i < n && scale != 0; i++) {
        float v = (float)(scale * swav_rng_normal(&rng));
        p.c[i] = v;
        p.g[i] = v;
    }
    return p;
}

static void pair_free(struct pair *p)
{
    free(p->c);
    nn_backend_free(gpu, p->g);
}

static void pair_check(const char *name, struct pair *p, double tol)
{
    nn_backend_sync(gpu);
    check(name, p->g, p->c, p->n, tol);
}

static void check_scalar(const char *name, double g, double c, double tol)
{
    double e = fabs(g - c) / (fabs(c) > 1e-6 ? fabs(c) : 1e-6);
    int ok = e <= tol;
    printf("%-34s rel err %.3g (tol %.0e) %s  (cuda %.7g cpu %.7g)\n", name, e, tol,
           ok ? "ok" : "FAIL", g, c);
    failures += !ok;
}

#define T4(buf, side, n, c, h, w) nn_tensor_4d((buf).side, NN_LAYOUT_NCHW, n, c, h, w)

static void test_conv(int N, int C, int H, int O, int k, int s, int p, double tol)
{
    int Ho = (H + 2 * p - k) / s + 1;
    struct pair x = pair_new((size_t)N * C * H * H, 1), w = pair_new((size_t)O * C * k * k, 0.2);
    struct pair y = pair_new((size_t)N * O * Ho * Ho, 0), dy = pair_new(y.n, 1);
    struct pair dx = pair_new(x.n, 0), dw = pair_new(w.n, 0.5); /* += onto nonzero */
    struct nn_tensor wc = T4(w, c, O, C, k, k), wg = T4(w, g, O, C, k, k);
    struct nn_tensor xc = T4(x, c, N, C, H, H), xg = T4(x, g, N, C, H, H);
    struct nn_tensor yc = T4(y, c, N, O, Ho, Ho), yg = T4(y, g, N, O, Ho, Ho);
    struct nn_tensor dyc = T4(dy, c, N, O, Ho, Ho), dyg = T4(dy, g, N, O, Ho, Ho);
    struct nn_tensor dxc = T4(dx, c, N, C, H, H), dxg = T4(dx, g, N, C, H, H);
    struct nn_tensor dwc = T4(dw, c, O, C, k, k), dwg = T4(dw, g, O, C, k, k);
    nn_conv2d_forward(cpu, &yc, &xc, &wc, s, p);
    nn_conv2d_forward(gpu, &yg, &xg, &wg, s, p);
    nn_conv2d_backward(cpu, &dxc, &dwc, &dyc, &xc, &wc, s, p);
    nn_conv2d_backward(gpu, &dxg, &dwg, &dyg, &xg, &wg, s, p);
    char name[64];
    snprintf(name, sizeof name, "conv%dx%d/s%d %d>%d@%d fwd", k, k, s, C, O, H);
    pair_check(name, &y, tol);
    snprintf(name, sizeof name, "conv%dx%d/s%d %d>%d@%d bwd data", k, k, s, C, O, H);
    pair_check(name, &dx, tol);
    snprintf(name, sizeof name, "conv%dx%d/s%d %d>%d@%d bwd weight (+=)", k, k, s, C, O, H);
    pair_check(name, &dw, tol);
    pair_free(&x), pair_free(&w), pair_free(&y), pair_free(&dy), pair_free(&dx), pair_free(&dw);
}

static void test_bn(int ndim, unsigned flags)
{
    int N = 4, C = 8, H = ndim == 4 ? 5 : 1;
    size_t n = (size_t)N * C * H * H;
    struct pair x = pair_new(n, 1), y = pair_new(n, 0), dy = pair_new(n, 1), dx = pair_new(n, 0);
    struct pair w = pair_new(C, 1), bsh = pair_new(C, 1), rm = pair_new(C, 0.1), rv = pair_new(C, 0);
    struct pair sm = pair_new(C, 0), sv = pair_new(C, 0), dw = pair_new(C, 1), db = pair_new(C, 1);
    for (int c = 0; c < C; c++) {
        rv.c[c] = rv.g[c] = 1.0f + 0.1f * (float)c;
    }
    if (x.n) { /* shift the input so the mean is not ~0 */
        for (size_t i = 0; i < n; i++) {
            x.c[i] += 0.5f;
            x.g[i] += 0.5f;
        }
    }
    struct nn_tensor xc, xg, yc, yg, dyc, dyg, dxc, dxg;
    if (ndim == 4) {
        xc = T4(x, c, N, C, H, H), xg = T4(x, g, N, C, H, H), yc = T4(y, c, N, C, H, H);
        yg = T4(y, g, N, C, H, H), dyc = T4(dy, c, N, C, H, H), dyg = T4(dy, g, N, C, H, H);
        dxc = T4(dx, c, N, C, H, H), dxg = T4(dx, g, N, C, H, H);
    } else {
        xc = nn_tensor_2d(x.c, N, C), xg = nn_tensor_2d(x.g, N, C), yc = nn_tensor_2d(y.c, N, C);
        yg = nn_tensor_2d(y.g, N, C), dyc = nn_tensor_2d(dy.c, N, C), dyg = nn_tensor_2d(dy.g, N, C);
        dxc = nn_tensor_2d(dx.c, N, C), dxg = nn_tensor_2d(dx.g, N, C);
    }
    struct bn_side cs = {cpu, &yc, &dxc, &xc, &dyc, w.c, bsh.c, rm.c, rv.c,
                         sm.c, sv.c, dw.c, db.c, 0};
    struct bn_side gs = {gpu, &yg, &dxg, &xg, &dyg, w.g, bsh.g, rm.g, rv.g,
                         sm.g, sv.g, dw.g, db.g, 0};
    bn_step(flags, &cs, &gs);
    int train = (flags & NN_BN_TRAIN) != 0;
    char name[64];
    const char *tag = ndim == 4 ? (train ? "bn2d train" : "bn2d eval") : (train ? "bn1d train" : "bn1d eval");
    const char *relu = (flags & NN_BN_RELU) ? "+relu" : "";
#define BN_CHECK(what, buf, tol)                                         \
    snprintf(name, sizeof name, "%s%s %s", tag, relu, what);            \
    pair_check(name, &buf, tol)
    BN_CHECK("out", y, 1e-4);
    if (train) {
        BN_CHECK("save_mean", sm, 1e-5);
        BN_CHECK("save_var (biased)", sv, 1e-4);
        BN_CHECK("running_mean", rm, 1e-5);
        BN_CHECK("running_var (unbiased)", rv, 1e-3);
    }
    BN_CHECK("dinp", dx, 1e-4);
    BN_CHECK("dweight (+=)", dw, 1e-4);
    BN_CHECK("dbias (+=)", db, 1e-4);
    struct pair *ps[] = {&x, &y, &dy, &dx, &w, &bsh, &rm, &rv, &sm, &sv, &dw, &db};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        pair_free(ps[i]);
    }
}

/* ---- SyncBN pieces (nn_batchnorm_stats, nn_batchnorm_backward_elemt) ------
 * Inputs of odd channel counts and spatial sizes that are no multiple of the
 * kernels' 256-thread blocks, with channel means from -3 to 100 against
 * spreads from 0.01 to 5 (a mean far from zero against its spread is where a
 * one-pass variance loses digits). */
static void fill_channels(struct pair *x, int64_t N, int64_t C, int64_t HW)
{
    for (int64_t c = 0; c < C; c++) {
        double mu = c % 3 == 0 ? 100.0 - (double)c : -3.0 + 0.5 * (double)c;
        double sd = 0.01 + 0.37 * (double)(c % 14);
        for (int64_t n = 0; n < N; n++) {
            for (int64_t i = 0; i < HW; i++) {
                size_t o = (size_t)((n * C + c) * HW + i);
                x->c[o] = x->g[o] = (float)(mu + sd * swav_rng_normal(&rng));
            }
        }
    }
}

/* Exact statistics of the float inputs: two passes in long double. */
static void stats_ref(const float *x, int64_t N, int64_t C, int64_t HW, long double *mean,
                      long double *m2)
{
    long double M = (long double)(N * HW);
    for (int64_t c = 0; c < C; c++) {
        long double s = 0, q = 0;
        for (int64_t n = 0; n < N; n++) {
            for (int64_t i = 0; i < HW; i++) {
                s += x[(n * C + c) * HW + i];
            }
        }
        mean[c] = s / M;
        for (int64_t n = 0; n < N; n++) {
            for (int64_t i = 0; i < HW; i++) {
                long double d = x[(n * C + c) * HW + i] - mean[c];
                q += d * d;
            }
        }
        m2[c] = q;
    }
}

/* max over channels of |mean - ref| / (|ref mean| + ref std) and of
 * |m2 - ref| / ref m2 */
static void stats_err(const double *mean, const double *m2, const long double *rmean,
                      const long double *rm2, int64_t C, double M, double *em, double *e2)
{
    *em = *e2 = 0;
    for (int64_t c = 0; c < C; c++) {
        double scale = fabs((double)rmean[c]) + sqrt((double)rm2[c] / M);
        double a = fabs((double)((long double)mean[c] - rmean[c])) / scale;
        double b = fabs((double)((long double)m2[c] - rm2[c])) / (double)rm2[c];
        *em = a > *em || a != a ? a : *em; /* NaN propagates */
        *e2 = b > *e2 || b != b ? b : *e2;
    }
}

static struct nn_tensor bn_view(float *data, int ndim, int64_t N, int64_t C, int64_t H, int64_t W)
{
    return ndim == 4 ? nn_tensor_4d(data, NN_LAYOUT_NCHW, N, C, H, W) : nn_tensor_2d(data, N, C);
}

/* Tolerances: the CUDA statistics sum in double (16 values a thread, block
 * trees, at most 1024 chunk sums in order), so against the exact (long
 * double) statistics 1e-12: rounding of order 1e-15 times the cancellation
 * in s2 - s1^2/M (below ~20 here: the shift is a channel's first value,
 * within a few standard deviations of its mean); the CUDA reduction order
 * emulated on the host gave at most 3e-15 on these inputs.  Against the CPU
 * backend 1e-5: the CPU sums runs of up to 64 shifted values in float
 * (nn/backend_cpu.c), which measured (against long double) up to 3e-7 on the
 * mean and 2.4e-6 on M2 on these and the SyncBN checks' inputs, so 1e-9
 * would fail on the CPU's side.
 * Two CUDA runs on the same input must agree to the bit (fixed reduction
 * order, no atomics). */
static void test_bn_stats(int ndim, int64_t N, int64_t C, int64_t H, int64_t W)
{
    int64_t HW = ndim == 4 ? H * W : 1;
    double M = (double)(N * HW);
    struct pair x = pair_new((size_t)(N * C * HW), 0);
    fill_channels(&x, N, C, HW);
    struct nn_tensor xc = bn_view(x.c, ndim, N, C, H, W), xg = bn_view(x.g, ndim, N, C, H, W);
    double *mc = calloc((size_t)C * 6, sizeof(double));
    double *m2c = mc + C, *mg = mc + 2 * C, *m2g = mc + 3 * C, *mg2 = mc + 4 * C, *m2g2 = mc + 5 * C;
    long double *rm = calloc((size_t)C * 2, sizeof(long double)), *rm2 = rm + C;
    stats_ref(x.c, N, C, HW, rm, rm2);
    nn_batchnorm_stats(cpu, mc, m2c, &xc);
    /* host arrays filled and the stream synchronized when the call returns */
    nn_batchnorm_stats(gpu, mg, m2g, &xg);
    nn_batchnorm_stats(gpu, mg2, m2g2, &xg);
    char name[64];
    const char *tag = ndim == 4 ? "bn stats NCHW" : "bn stats NC";
    double em, e2;
    stats_err(mg, m2g, rm, rm2, C, M, &em, &e2);
    snprintf(name, sizeof name, "%s mean vs exact", tag);
    report(name, em, 1e-12);
    snprintf(name, sizeof name, "%s m2 vs exact", tag);
    report(name, e2, 1e-12);
    stats_err(mc, m2c, rm, rm2, C, M, &em, &e2);
    printf("%-34s rel err %.3g / %.3g (CPU backend, for scale)\n", "  cpu mean / m2 vs exact", em, e2);
    for (int64_t c = 0; c < C; c++) {
        rm[c] = mc[c];
        rm2[c] = m2c[c];
    }
    stats_err(mg, m2g, rm, rm2, C, M, &em, &e2);
    snprintf(name, sizeof name, "%s mean vs cpu", tag);
    report(name, em, 1e-5);
    snprintf(name, sizeof name, "%s m2 vs cpu", tag);
    report(name, e2, 1e-5);
    int same = !memcmp(mg, mg2, (size_t)C * sizeof(double)) &&
               !memcmp(m2g, m2g2, (size_t)C * sizeof(double));
    expect(same, ndim == 4 ? "bn stats NCHW deterministic" : "bn stats NC deterministic");
    free(mc);
    free(rm);
    pair_free(&x);
}

/* Same float operations in the same order on both sides (A, B in double,
 * the update without FMA): 1e-6 leaves room for nothing but a last bit. */
static void test_bn_elemt(int ndim, int64_t N, int64_t C, int64_t H, int64_t W)
{
    int64_t HW = ndim == 4 ? H * W : 1;
    size_t n = (size_t)(N * C * HW);
    struct pair x = pair_new(n, 0), dx = pair_new(n, 1), w = pair_new((size_t)C, 1);
    struct pair mean = pair_new((size_t)C, 0), var = pair_new((size_t)C, 0);
    fill_channels(&x, N, C, HW);
    for (int64_t c = 0; c < C; c++) { /* the channel's mean, as SyncBN passes */
        double s = 0;
        for (int64_t i = 0; i < N * HW; i++) {
            s += x.c[(i / HW * C + c) * HW + i % HW];
        }
        mean.c[c] = mean.g[c] = (float)(s / (double)(N * HW));
    }
    float *mdy = malloc((size_t)C * sizeof(float)), *mdyx = malloc((size_t)C * sizeof(float));
    for (int64_t c = 0; c < C; c++) {
        var.c[c] = var.g[c] = (float)(0.05 + 2.0 * swav_rng_uniform(&rng));
        mdy[c] = (float)(0.1 * swav_rng_normal(&rng));
        mdyx[c] = (float)(0.1 * swav_rng_normal(&rng));
    }
    struct nn_tensor xc = bn_view(x.c, ndim, N, C, H, W), xg = bn_view(x.g, ndim, N, C, H, W);
    struct nn_tensor dxc = bn_view(dx.c, ndim, N, C, H, W), dxg = bn_view(dx.g, ndim, N, C, H, W);
    nn_batchnorm_backward_elemt(cpu, &dxc, &xc, w.c, mean.c, var.c, mdy, mdyx, 1e-5f);
    nn_batchnorm_backward_elemt(gpu, &dxg, &xg, w.g, mean.g, var.g, mdy, mdyx, 1e-5f);
    /* layers.h: mean_dy, mean_dy_xhat are host arrays the caller may reuse
     * when the call returns (nn/syncbn.c does): spoil them before the sync */
    for (int64_t c = 0; c < C; c++) {
        mdy[c] = mdyx[c] = NAN;
    }
    pair_check(ndim == 4 ? "bn backward_elemt NCHW dinp" : "bn backward_elemt NC dinp", &dx, 1e-6);
    free(mdy);
    free(mdyx);
    pair_free(&x), pair_free(&dx), pair_free(&w), pair_free(&mean), pair_free(&var);
}

/* nn_syncbn_forward/backward with a world of one (nn_collective_single_new:
 * every collective the identity) on both backends: the whole SyncBN path
 * (stats, merge, eval-mode normalize, eval-mode backward, backward_elemt).
 * Tolerances: statistics 1e-5 (the CPU's float runs: up to 2.4e-6 on M2,
 * see test_bn_stats), outputs and gradients 1e-4 as the batch norm checks
 * above. */
static void test_syncbn_single(int ndim, unsigned relu)
{
    int64_t N = ndim == 4 ? 3 : 40, C = ndim == 4 ? 13 : 45, H = 9, W = 11;
    int64_t HW = ndim == 4 ? H * W : 1;
    size_t n = (size_t)(N * C * HW);
    struct pair x = pair_new(n, 1), y = pair_new(n, 0), dy = pair_new(n, 1), dx = pair_new(n, 0);
    struct pair w = pair_new((size_t)C, 1), bsh = pair_new((size_t)C, 1);
    struct pair rm = pair_new((size_t)C, 0.1), rv = pair_new((size_t)C, 0);
    struct pair sm = pair_new((size_t)C, 0), sv = pair_new((size_t)C, 0);
    struct pair dw = pair_new((size_t)C, 1), db = pair_new((size_t)C, 1);
    for (size_t i = 0; i < n; i++) {
        x.c[i] += 0.5f;
        x.g[i] += 0.5f;
    }
    for (int64_t c = 0; c < C; c++) {
        rv.c[c] = rv.g[c] = 1.0f + 0.1f * (float)c;
    }
    struct nn_tensor xc = bn_view(x.c, ndim, N, C, H, W), xg = bn_view(x.g, ndim, N, C, H, W);
    struct nn_tensor yc = bn_view(y.c, ndim, N, C, H, W), yg = bn_view(y.g, ndim, N, C, H, W);
    struct nn_tensor dyc = bn_view(dy.c, ndim, N, C, H, W), dyg = bn_view(dy.g, ndim, N, C, H, W);
    struct nn_tensor dxc = bn_view(dx.c, ndim, N, C, H, W), dxg = bn_view(dx.g, ndim, N, C, H, W);
    struct bn_side cs = {cpu, &yc, &dxc, &xc, &dyc, w.c, bsh.c, rm.c, rv.c,
                         sm.c, sv.c, dw.c, db.c, 0};
    struct bn_side gs = {gpu, &yg, &dxg, &xg, &dyg, w.g, bsh.g, rm.g, rv.g,
                         sm.g, sv.g, dw.g, db.g, 0};
    int st = syncbn_step((int)C, relu, &cs, &gs);
    double cnt_c = cs.count, cnt_g = gs.count;
    char name[64];
    const char *tag = ndim == 4 ? "syncbn(1) 2d" : "syncbn(1) 1d";
    const char *rl = relu ? "+relu" : "";
    int ok = st == 0 && cnt_c == (double)(N * HW) && cnt_g == cnt_c;
    printf("%s%s status %d, count cuda %g cpu %g %s\n", tag, rl, st, cnt_g, cnt_c,
           ok ? "ok" : "FAIL");
    failures += !ok;
#define SB_CHECK(what, buf, tol)                                        \
    snprintf(name, sizeof name, "%s%s %s", tag, rl, what);              \
    pair_check(name, &buf, tol)
    SB_CHECK("out", y, 1e-4);
    SB_CHECK("save_mean", sm, 1e-5);
    SB_CHECK("save_var (biased)", sv, 1e-5);
    SB_CHECK("running_mean", rm, 1e-5);
    SB_CHECK("running_var (unbiased)", rv, 1e-5);
    SB_CHECK("dinp", dx, 1e-4);
    SB_CHECK("dweight (+=)", dw, 1e-4);
    SB_CHECK("dbias (+=)", db, 1e-4);
#undef SB_CHECK
    struct pair *ps[] = {&x, &y, &dy, &dx, &w, &bsh, &rm, &rv, &sm, &sv, &dw, &db};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        pair_free(ps[i]);
    }
}

static void test_eltwise(void)
{
    int N = 3, C = 5, H = 7;
    size_t n = (size_t)N * C * H * H;
    struct pair a = pair_new(n, 1), b = pair_new(n, 1), y = pair_new(n, 0), dy = pair_new(n, 1);
    struct pair dx = pair_new(n, 0), acc = pair_new(n, 1);
    struct nn_tensor ac = T4(a, c, N, C, H, H), ag = T4(a, g, N, C, H, H);
    struct nn_tensor bc = T4(b, c, N, C, H, H), bg = T4(b, g, N, C, H, H);
    struct nn_tensor yc = T4(y, c, N, C, H, H), yg = T4(y, g, N, C, H, H);
    struct nn_tensor dyc = T4(dy, c, N, C, H, H), dyg = T4(dy, g, N, C, H, H);
    struct nn_tensor dxc = T4(dx, c, N, C, H, H), dxg = T4(dx, g, N, C, H, H);
    struct nn_tensor accc = T4(acc, c, N, C, H, H), accg = T4(acc, g, N, C, H, H);
    nn_relu_forward(cpu, &yc, &ac);
    nn_relu_forward(gpu, &yg, &ag);
    pair_check("relu fwd", &y, 1e-6);
    nn_relu_backward(cpu, &dxc, &dyc, &yc);
    nn_relu_backward(gpu, &dxg, &dyg, &yg);
    pair_check("relu bwd", &dx, 1e-6);
    nn_add_forward(cpu, &yc, &ac, &bc, 1);
    nn_add_forward(gpu, &yg, &ag, &bg, 1);
    pair_check("add+relu fwd", &y, 1e-6);
    nn_add_forward(cpu, &yc, &ac, &bc, 0);
    nn_add_forward(gpu, &yg, &ag, &bg, 0);
    pair_check("add fwd", &y, 1e-6);
    nn_accumulate(cpu, &accc, &ac);
    nn_accumulate(gpu, &accg, &ag);
    pair_check("accumulate", &acc, 1e-6);
    pair_free(&a), pair_free(&b), pair_free(&y), pair_free(&dy), pair_free(&dx), pair_free(&acc);
}

static void test_pool(void)
{
    int N = 2, C = 4, H = 11, k = 3, s = 2, p = 1, Ho = (H + 2 * p - k) / s + 1;
    struct pair x = pair_new((size_t)N * C * H * H, 1), y = pair_new((size_t)N * C * Ho * Ho, 0);
    struct pair dy = pair_new(y.n, 1), dx = pair_new(x.n, 0);
    struct nn_tensor xc = T4(x, c, N, C, H, H), xg = T4(x, g, N, C, H, H);
    struct nn_tensor yc = T4(y, c, N, C, Ho, Ho), yg = T4(y, g, N, C, Ho, Ho);
    struct nn_tensor dyc = T4(dy, c, N, C, Ho, Ho), dyg = T4(dy, g, N, C, Ho, Ho);
    struct nn_tensor dxc = T4(dx, c, N, C, H, H), dxg = T4(dx, g, N, C, H, H);
    size_t wsc = nn_maxpool2d_workspace_bytes(cpu, &yc, &xc, k, s, p);
    size_t wsg = nn_maxpool2d_workspace_bytes(gpu, &yg, &xg, k, s, p);
    void *wc = nn_backend_alloc(cpu, wsc), *wg = nn_backend_alloc(gpu, wsg);
    nn_maxpool2d_forward(cpu, &yc, &xc, wc, k, s, p);
    nn_maxpool2d_forward(gpu, &yg, &xg, wg, k, s, p);
    pair_check("maxpool 3/2/1 fwd", &y, 0);
    nn_maxpool2d_backward(cpu, &dxc, &dyc, wc, k, s, p);
    nn_maxpool2d_backward(gpu, &dxg, &dyg, wg, k, s, p);
    pair_check("maxpool 3/2/1 bwd", &dx, 1e-6);
    nn_backend_free(cpu, wc);
    nn_backend_free(gpu, wg);
    /* global average pooling: (N, C, H, W) -> (N, C) */
    struct pair a = pair_new((size_t)N * C, 0), da = pair_new((size_t)N * C, 1);
    struct nn_tensor avc = nn_tensor_2d(a.c, N, C), avg = nn_tensor_2d(a.g, N, C);
    struct nn_tensor davc = nn_tensor_2d(da.c, N, C), davg = nn_tensor_2d(da.g, N, C);
    nn_avgpool_forward(cpu, &avc, &xc);
    nn_avgpool_forward(gpu, &avg, &xg);
    pair_check("avgpool fwd", &a, 1e-5);
    nn_avgpool_backward(cpu, &dxc, &davc);
    nn_avgpool_backward(gpu, &dxg, &davg);
    pair_check("avgpool bwd", &dx, 1e-6);
    pair_free(&x), pair_free(&y), pair_free(&dy), pair_free(&dx), pair_free(&a), pair_free(&da);
}

static void test_linear(void)
{
    int N = 6, I = 40, O = 24;
    struct pair x = pair_new((size_t)N * I, 1), w = pair_new((size_t)O * I, 0.2), b = pair_new(O, 1);
    struct pair y = pair_new((size_t)N * O, 0), dy = pair_new(y.n, 1), dx = pair_new(x.n, 0);
    struct pair dw = pair_new(w.n, 0.5), db = pair_new(O, 0.5);
    struct nn_tensor xc = nn_tensor_2d(x.c, N, I), xg = nn_tensor_2d(x.g, N, I);
    struct nn_tensor yc = nn_tensor_2d(y.c, N, O), yg = nn_tensor_2d(y.g, N, O);
    struct nn_tensor dyc = nn_tensor_2d(dy.c, N, O), dyg = nn_tensor_2d(dy.g, N, O);
    struct nn_tensor dxc = nn_tensor_2d(dx.c, N, I), dxg = nn_tensor_2d(dx.g, N, I);
    nn_linear_forward(cpu, &yc, &xc, w.c, b.c);
    nn_linear_forward(gpu, &yg, &xg, w.g, b.g);
    pair_check("linear fwd (+bias)", &y, 1e-5);
    nn_linear_backward(cpu, &dxc, dw.c, db.c, &dyc, &xc, w.c);
    nn_linear_backward(gpu, &dxg, dw.g, db.g, &dyg, &xg, w.g);
    pair_check("linear bwd data", &dx, 1e-5);
    pair_check("linear bwd weight (+=)", &dw, 1e-5);
    pair_check("linear bwd bias (+=)", &db, 1e-5);
    nn_linear_forward(cpu, &yc, &xc, w.c, NULL);
    nn_linear_forward(gpu, &yg, &xg, w.g, NULL);
    pair_check("linear fwd (no bias)", &y, 1e-5);
    pair_free(&x), pair_free(&w), pair_free(&b), pair_free(&y), pair_free(&dy), pair_free(&dx);
    pair_free(&dw), pair_free(&db);
}

static void test_rows(void)
{
    int N = 5, D = 300;
    struct pair x = pair_new((size_t)N * D, 1), y = pair_new(x.n, 0), nr = pair_new(N, 0);
    struct pair dy = pair_new(x.n, 1), dx = pair_new(x.n, 0);
    struct nn_tensor xc = nn_tensor_2d(x.c, N, D), xg = nn_tensor_2d(x.g, N, D);
    struct nn_tensor yc = nn_tensor_2d(y.c, N, D), yg = nn_tensor_2d(y.g, N, D);
    struct nn_tensor dyc = nn_tensor_2d(dy.c, N, D), dyg = nn_tensor_2d(dy.g, N, D);
    struct nn_tensor dxc = nn_tensor_2d(dx.c, N, D), dxg = nn_tensor_2d(dx.g, N, D);
    nn_l2_normalize_forward(cpu, &yc, &xc, nr.c);
    nn_l2_normalize_forward(gpu, &yg, &xg, nr.g);
    pair_check("l2 normalize fwd", &y, 1e-6);
    pair_check("l2 normalize norms", &nr, 1e-6);
    nn_l2_normalize_backward(cpu, &dxc, &dyc, &yc, nr.c);
    nn_l2_normalize_backward(gpu, &dxg, &dyg, &yg, nr.g);
    pair_check("l2 normalize bwd", &dx, 1e-5);
    nn_log_softmax_forward(cpu, &yc, &xc, 10.0f);
    nn_log_softmax_forward(gpu, &yg, &xg, 10.0f);
    pair_check("log_softmax(10x) fwd", &y, 1e-6);
    nn_log_softmax_backward(cpu, &dxc, &dyc, &yc, 10.0f);
    nn_log_softmax_backward(gpu, &dxg, &dyg, &yg, 10.0f);
    pair_check("log_softmax(10x) bwd", &dx, 1e-5);
    pair_free(&x), pair_free(&y), pair_free(&nr), pair_free(&dy), pair_free(&dx);
}

/* rows of p turned into a probability (soft targets, SwAV codes) */
static void softmax_rows(struct pair *p, int N, int K)
{
    for (int n = 0; n < N; n++) {
        double s = 0;
        for (int k = 0; k < K; k++) {
            s += exp(p->c[n * K + k]);
        }
        for (int k = 0; k < K; k++) {
            p->c[n * K + k] = p->g[n * K + k] = (float)(exp(p->c[n * K + k]) / s);
        }
    }
}

static void test_losses(void)
{
    int n_crops = 4, bs = 8, K = 50;
    static const int assign[2] = {0, 1};
    struct nn_swav_loss_cfg lc = {n_crops, bs, 2, assign, 0.1f};
    int R = n_crops * bs;
    struct pair sc = pair_new((size_t)R * K, 0.3), q = pair_new((size_t)2 * bs * K, 1);
    struct pair lp = pair_new(sc.n, 0), ds = pair_new(sc.n, 0);
    softmax_rows(&q, 2 * bs, K);
    struct nn_tensor scc = nn_tensor_2d(sc.c, R, K), scg = nn_tensor_2d(sc.g, R, K);
    struct nn_tensor dsc = nn_tensor_2d(ds.c, R, K), dsg = nn_tensor_2d(ds.g, R, K);
    float lc_ = nn_swav_loss_forward(cpu, lp.c, &scc, q.c, &lc);
    float lg_ = nn_swav_loss_forward(gpu, lp.g, &scg, q.g, &lc);
    check_scalar("swav loss fwd value", lg_, lc_, 1e-5);
    pair_check("swav loss fwd logp", &lp, 1e-5);
    nn_swav_loss_backward(cpu, &dsc, lp.c, q.c, &lc);
    nn_swav_loss_backward(gpu, &dsg, lp.g, q.g, &lc);
    pair_check("swav loss bwd", &ds, 1e-5);

    int N = 7, C = 13;
    struct pair lo = pair_new((size_t)N * C, 1), t = pair_new(lo.n, 1), lp2 = pair_new(lo.n, 0);
    struct pair dl = pair_new(lo.n, 0);
    softmax_rows(&t, N, C);
    struct nn_tensor loc = nn_tensor_2d(lo.c, N, C), log_ = nn_tensor_2d(lo.g, N, C);
    struct nn_tensor dlc = nn_tensor_2d(dl.c, N, C), dlg = nn_tensor_2d(dl.g, N, C);
    float a = nn_cross_entropy_soft_forward(cpu, lp2.c, &loc, t.c);
    float b = nn_cross_entropy_soft_forward(gpu, lp2.g, &log_, t.g);
    check_scalar("cross entropy (soft) fwd", b, a, 1e-5);
    nn_cross_entropy_soft_backward(cpu, &dlc, lp2.c, t.c);
    nn_cross_entropy_soft_backward(gpu, &dlg, lp2.g, t.g);
    pair_check("cross entropy (soft) bwd", &dl, 1e-5);
    int32_t *lab_c = calloc((size_t)N, sizeof(int32_t));
    int32_t *lab_g = nn_backend_alloc(gpu, (size_t)N * sizeof(int32_t));
    for (int n = 0; n < N; n++) {
        lab_c[n] = lab_g[n] = (int32_t)swav_rng_below(&rng, (uint32_t)C);
    }
    a = nn_cross_entropy_forward(cpu, lp2.c, &loc, lab_c);
    b = nn_cross_entropy_forward(gpu, lp2.g, &log_, lab_g);
    check_scalar("cross entropy fwd", b, a, 1e-5);
    nn_cross_entropy_backward(cpu, &dlc, lp2.c, lab_c);
    nn_cross_entropy_backward(gpu, &dlg, lp2.g, lab_g);
    pair_check("cross entropy bwd", &dl, 1e-5);
    free(lab_c);
    nn_backend_free(gpu, lab_g);
    pair_free(&sc), pair_free(&q), pair_free(&lp), pair_free(&ds);
    pair_free(&lo), pair_free(&t), pair_free(&lp2), pair_free(&dl);
}

static void test_step_pieces(void)
{
    /* crops */
    int n = 2, h = 9, w = 7;
    size_t np = (size_t)n * h * w * 3;
    uint8_t *u = nn_backend_alloc(gpu, np);
    for (size_t i = 0; i < np; i++) {
        u[i] = (uint8_t)swav_rng_below(&rng, 256);
    }
    struct pair f = pair_new(np, 0);
    nn_normalize_u8(f.c, u, n, h, w);
    nn_backend_normalize_crops(gpu, f.g, u, n, 1, h, w); /* one crop an image: plain NHWC -> NCHW */
    pair_check("normalize u8 NHWC -> NCHW", &f, 1e-6);
    nn_backend_free(gpu, u);
    pair_free(&f);
    /* prototypes */
    struct pair pr = pair_new(30 * 16, 1);
    nn_prototypes_normalize(pr.c, 30, 16);
    nn_backend_normalize_rows(gpu, pr.g, 30, 16);
    pair_check("prototypes normalize", &pr, 1e-6);
    pair_free(&pr);
    /* sinkhorn */
    int B = 300, K = 64; /* 3 row chunks of the column sums */
    struct pair s = pair_new((size_t)B * K, 0.3), q = pair_new(s.n, 0);
    double *rows = malloc(sizeof(double) * K), *cols = malloc(sizeof(double) * B);
    bench_sinkhorn_ref(q.c, s.c, B, K, 0.05f, 3, rows, cols);
    free(rows);
    free(cols);
    nn_cuda_sinkhorn(gpu, q.g, s.g, B, K, 0.05f, 3);
    pair_check("sinkhorn 300x64 (eps .05, 3 it)", &q, 1e-5);
    pair_free(&s), pair_free(&q);
    /* K over one block of threads (2 column blocks, rows strided), 8 row chunks */
    B = 1000, K = 300;
    s = pair_new((size_t)B * K, 0.3), q = pair_new(s.n, 0);
    rows = malloc(sizeof(double) * K), cols = malloc(sizeof(double) * B);
    bench_sinkhorn_ref(q.c, s.c, B, K, 0.05f, 3, rows, cols);
    free(rows);
    free(cols);
    nn_cuda_sinkhorn(gpu, q.g, s.g, B, K, 0.05f, 3);
    pair_check("sinkhorn 1000x300 (eps .05, 3 it)", &q, 1e-5);
    pair_free(&s), pair_free(&q);
    /* SGD + LARC: three tensors, prototypes frozen for the first step */
    struct nn_param_table t;
    nn_param_table_init(&t);
    int64_t s1[2] = {70000, 2}, s2[1] = {33}, s3[2] = {10, 8};
    nn_param_table_add(&t, "a.weight", 2, s1, 0);
    nn_param_table_add(&t, "b.bias", 1, s2, 0);
    nn_param_table_add(&t, "prototypes.weight", 2, s3, NN_PARAM_PROTOTYPES);
    struct pair p = pair_new(t.total, 1), g = pair_new(t.total, 0.01);
    struct nn_optim_config oc = nn_optim_config_swav(1e-6, 1);
    oc.nthreads = 1;
    struct nn_optim oc_cpu;
    nn_optim_init(&oc_cpu, &t, &oc);
    struct nn_cuda_optim *og = nn_cuda_optim_new(gpu, &t, &oc);
    for (int it = 0; it < 3; it++) {
        nn_optim_step(&oc_cpu, p.c, g.c, 0.3, it);
        nn_cuda_optim_step(og, p.g, g.g, 0.3, it);
    }
    pair_check("sgd+larc 3 steps params", &p, 1e-6);
    struct pair mom = {oc_cpu.momentum, nn_cuda_optim_momentum(og), t.total};
    pair_check("sgd+larc 3 steps momentum", &mom, 1e-5);
    nn_cuda_optim_destroy(&og);
    nn_optim_free(&oc_cpu);
    pair_free(&p), pair_free(&g);
    nn_param_table_free(&t);
}

/* The table's memory operations (nn/backend.h) on both backends, with the
 * contract's timing: a host source may be reused when the call returns (it
 * is spoiled right after), a copy into host memory is complete when the
 * call returns (read before any sync, behind a queued kernel).  Exact (tol
 * 0): copies, zero, add_at, scale (one float multiply each side).  1e-6:
 * normalize_crops (the GPU may fuse the multiply-add) and normalize_rows. */
static void test_mem_ops(void)
{
    size_t n = 1000;
    struct pair a = pair_new(n, 1), b = pair_new(n, 0);
    float *host = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float));
    memcpy(host, a.c, n * sizeof(float));
    nn_backend_copy(cpu, b.c, host, n * sizeof(float));
    nn_backend_copy(gpu, b.g, host, n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        host[i] = NAN;
    }
    pair_check("copy host -> backend", &b, 0);
    nn_backend_copy(cpu, b.c + 10, a.c + 500, 300 * sizeof(float));
    nn_backend_copy(gpu, b.g + 10, a.g + 500, 300 * sizeof(float));
    pair_check("copy backend -> backend", &b, 0);
    nn_backend_zero(cpu, b.c + 100, 200 * sizeof(float));
    nn_backend_zero(gpu, b.g + 100, 200 * sizeof(float));
    pair_check("zero", &b, 0);
    nn_backend_scale(cpu, b.c, n, 0.37f);
    nn_backend_scale(gpu, b.g, n, 0.37f);
    pair_check("scale", &b, 0);
    int64_t off[4] = {3, 17, 999, 500};
    nn_backend_add_at(cpu, b.c, off, 4, 2.5f);
    nn_backend_add_at(gpu, b.g, off, 4, 2.5f);
    off[0] = off[1] = off[2] = off[3] = 0;
    pair_check("add_at (host offsets)", &b, 0);
    /* behind a queued kernel, into host memory: there on return */
    nn_backend_scale(cpu, b.c, n, -1.5f);
    nn_backend_scale(gpu, b.g, n, -1.5f);
    nn_backend_copy(gpu, out, b.g, n * sizeof(float));
    check("copy backend -> host (no sync)", out, b.c, n, 0);
    free(host);
    free(out);
    pair_free(&a), pair_free(&b);

    /* crops: (batch, n_crops, h, w, 3) image-major -> (n_crops * batch, 3,
     * h, w) crop-major; host (staged) and backend (read in place) sources */
    int batch = 3, nc = 2, h = 5, w = 7;
    size_t nb = (size_t)batch * nc * h * w * 3;
    uint8_t *src = malloc(nb), *usrc = nn_backend_alloc(gpu, nb);
    for (size_t i = 0; i < nb; i++) {
        src[i] = usrc[i] = (uint8_t)swav_rng_below(&rng, 256);
    }
    struct pair f = pair_new(nb, 0);
    nn_backend_normalize_crops(cpu, f.c, src, batch, nc, h, w);
    nn_backend_normalize_crops(gpu, f.g, src, batch, nc, h, w);
    memset(src, 0x5a, nb);
    pair_check("normalize_crops (host batch)", &f, 1e-6);
    nn_backend_zero(gpu, f.g, nb * sizeof(float));
    nn_backend_normalize_crops(gpu, f.g, usrc, batch, nc, h, w);
    pair_check("normalize_crops (backend batch)", &f, 1e-6);
    free(src);
    nn_backend_free(gpu, usrc);
    pair_free(&f);
    struct pair pr = pair_new(7 * 33, 1);
    nn_backend_normalize_rows(cpu, pr.c, 7, 33);
    nn_backend_normalize_rows(gpu, pr.g, 7, 33);
    pair_check("normalize_rows", &pr, 1e-6);
    pair_free(&pr);
}

/* The optimizer through nn_optim_init_on (the CUDA backend's own) against
 * the CPU's on the paths test_step_pieces does not take: three parameter
 * groups with their own learning rates (set_group, step_groups), plain SGD
 * with momentum and weight decay, Nesterov, no momentum, LARC with clip.
 * Three steps each; tolerances as the SGD+LARC check there (params 1e-6,
 * momentum 1e-5: the GPU may fuse multiply-adds). */
static void test_optim_paths(void)
{
    struct nn_param_table t;
    nn_param_table_init(&t);
    int64_t s1[2] = {300, 7}, s2[1] = {33}, s3[2] = {10, 8};
    nn_param_table_add(&t, "a.weight", 2, s1, 0);
    nn_param_table_add(&t, "b.bias", 1, s2, 0);
    nn_param_table_add(&t, "c.weight", 2, s3, 0);
    static const struct {
        const char *name;
        double momentum;
        bool nesterov, larc, clip;
    } cases[] = {
        {"sgd momentum+wd, groups", 0.9, false, false, false},
        {"sgd nesterov, groups", 0.9, true, false, false},
        {"sgd no momentum, groups", 0.0, false, false, false},
        {"larc clip, groups", 0.9, false, true, true},
    };
    double lrs[NN_OPTIM_MAX_GROUPS] = {0.3, 0.05, 1.7};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        struct nn_optim_config oc = nn_optim_config_swav(1e-4, 0);
        oc.momentum = cases[k].momentum;
        oc.nesterov = cases[k].nesterov;
        oc.larc = cases[k].larc;
        oc.clip = cases[k].clip;
        oc.nthreads = 1;
        struct pair p = pair_new(t.total, 1), g = pair_new(t.total, 0.01);
        struct nn_optim o_c, o_g;
        nn_optim_init(&o_c, &t, &oc);
        nn_optim_init_on(&o_g, gpu, &t, &oc);
        if (!o_g.dev) {
            printf("%-34s FAIL: the CUDA backend has no optimizer of its own\n", cases[k].name);
            failures++;
        }
        for (int i = 1; i < 3; i++) {
            nn_optim_set_group(&o_c, i, i);
            nn_optim_set_group(&o_g, i, i);
        }
        for (int it = 0; it < 3; it++) {
            nn_optim_step_groups(&o_c, p.c, g.c, lrs, it);
            nn_optim_step_groups(&o_g, p.g, g.g, lrs, it);
        }
        char name[80];
        snprintf(name, sizeof name, "%s params", cases[k].name);
        pair_check(name, &p, 1e-6);
        struct pair mom = {o_c.momentum, o_g.momentum, t.total};
        snprintf(name, sizeof name, "%s momentum", cases[k].name);
        pair_check(name, &mom, 1e-5);
        nn_optim_free(&o_g);
        nn_optim_free(&o_c);
        pair_free(&p), pair_free(&g);
    }
    nn_param_table_free(&t);
}

int main(void)
{
    int rc = open_gpu(&gpu);
    if (rc) {
        return rc;
    }
    cpu = nn_backend_cpu_new(0);
    swav_rng_init(&rng, 11, 0, 0, 0);
    test_conv(2, 8, 12, 16, 3, 1, 1, 1e-4);
    test_conv(2, 3, 20, 8, 7, 2, 3, 1e-4);
    test_conv(2, 16, 9, 32, 1, 2, 0, 1e-4);
    test_conv(3, 8, 3, 8, 3, 1, 1, 1e-4);
    /* ResNet-50's own shapes at batch 32, where cudnnFind picks other algorithms
     * than on the small ones (Winograd, FFT, implicit GEMM variants: their
     * transforms lose a few more bits than direct sums over 576 or 256 terms,
     * hence 5e-4) and the filter gradient sums 100,352 positions (+= onto
     * nonzero: beta 1 on the big algorithms too) */
    test_conv(32, 64, 56, 64, 3, 1, 1, 5e-4);
    test_conv(32, 256, 56, 64, 1, 1, 0, 5e-4);
    test_conv(32, 3, 224, 64, 7, 2, 3, 5e-4);
    test_bn(4, NN_BN_TRAIN);
    test_bn(4, NN_BN_TRAIN | NN_BN_RELU);
    test_bn(4, NN_BN_RELU);
    test_bn(2, NN_BN_TRAIN);
    test_bn(2, 0);
    test_bn_stats(4, 5, 13, 37, 41);    /* 1517 a plane, 7585 a channel: 2 chunks */
    test_bn_stats(2, 150, 45, 1, 1);    /* channel groups 32 + 13, 3 row chunks of 50 */
    test_bn_stats(4, 336, 3, 112, 112); /* 4.2M a channel: the 1024-chunk cap */
    test_bn_elemt(4, 5, 13, 37, 41);
    test_bn_elemt(2, 150, 45, 1, 1);
    test_syncbn_single(4, NN_BN_RELU);
    test_syncbn_single(4, 0);
    test_syncbn_single(2, 0);
    test_eltwise();
    test_pool();
    test_linear();
    test_rows();
    test_losses();
    test_step_pieces();
    test_mem_ops();
    test_optim_paths();
    printf("cache entries %d\n", nn_backend_cache_size(gpu));
    nn_backend_destroy(&gpu);
    nn_backend_destroy(&cpu);
    printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
