/* The CUDA backend's low-precision NHWC backbone (nn/cuda/lowp_cuda.cu),
 * bf16 and then fp16, against the CPU backend in fp32 on the same inputs:
 * every layer, then the small SwAV model of test_cuda_model.c built with
 * cfg.act_dtype against the float CPU model (fp16 with the trainer's loss
 * scaling); last, the backend's non-finite check (the loss scaler's) on
 * planted infinities and NaNs, and on a real fp16 overflow.
 *
 * Inputs are representable in the type under test (random values rounded to
 * it, weights too), so both sides start from the same numbers: the CPU
 * computes in fp32 from them, the GPU in fp32 registers and stores bf16 or
 * fp16.  Error measure: max |cuda - cpu| / max |cpu| over an output.  Every
 * line starts with the type ("bf16 ...", "fp16 ...").
 *
 * Tolerances, from the significant bits (a rounding to nearest is off by at
 * most 2^-8 = 3.9e-3 of the value in bf16, 2^-11 = 4.9e-4 in fp16; fp16's
 * range ends at 65504, which these inputs stay far below):
 * - TOL_ROUND for an output stored in the type once (convolutions with fp32
 *   accumulation, BN outputs and input gradients, add, accumulate, pooling
 *   gradients, the filter gradient rounded once before its float +=): 1e-2
 *   in bf16 (2.5x margin), 2e-3 in fp16 (4x: the CPU's float sums in
 *   another order are a larger share of fp16's smaller rounding);
 * - 0 where no rounding happens (conversions, relu, max pooling forward, a
 *   weight copy reused until nn_backend_weights_updated);
 * - 1e-5 for BN statistics (sums in double of exactly representable values;
 *   the CPU's float runs are the larger error, ~3e-7 on the mean and 2.4e-6
 *   on M2 in test_cuda_layers), running statistics, and the average pool's
 *   float output; 1e-4 for BN's float parameter gradients (double sums of
 *   float products vs the CPU's float sums); 1e-12 for the SyncBN statistics
 *   against long double;
 * - the whole model: see test_model (errors compound over 20 layers, and
 *   this small model's gradients are ill-conditioned: compared by cosine).
 *
 * Exit 77 without a device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"
#include "nn/collective.h"
#include "nn/cuda/backend_cuda.h"
#include "nn/layers.h"
#include "nn/loss_scale.h"
#include "nn/optim.h"
#include "nn/resnet.h"
#include "nn/syncbn.h"

#define CHECK_REL_FLOOR 1e-6 /* of max |cpu| */
#define CHECK_NAME_WIDTH 44
#include "tests/cuda/compare.h"
#include "tests/cuda/bn_step.h"
#include "tests/cuda/swav_step.h"

static nn_backend_t *cpu, *gpu;
static struct swav_rng rng;
/* the type under test: NN_DTYPE_BF16, then NN_DTYPE_F16 (set_dtype) */
static enum nn_dtype DT;
static const char *DTN;  /* "bf16", "fp16": every line's first word */
static double TOL_ROUND; /* one rounding: 1e-2 bf16 (2^-8, 2.5x), 2e-3 fp16 (2^-11, 4x) */

static void set_dtype(enum nn_dtype dt)
{
    DT = dt;
    DTN = nn_dtype_name(dt);
    TOL_ROUND = dt == NN_DTYPE_BF16 ? 1e-2 : 2e-3;
}

static uint16_t lp_from(float v)
{
    return DT == NN_DTYPE_BF16 ? nn_bf16_from_f32(v) : nn_f16_from_f32(v);
}

static float lp_to(uint16_t h)
{
    return DT == NN_DTYPE_BF16 ? nn_f32_from_bf16(h) : nn_f32_from_f16(h);
}

static float lp_round(float v)
{
    return lp_to(lp_from(v));
}

/* compare.h's lines with the type first */
static void lreport(const char *name, double e, double tol)
{
    char n[160];
    snprintf(n, sizeof n, "%s %s", DTN, name);
    report(n, e, tol);
}

static void lexpect(int ok, const char *what)
{
    char n[160];
    snprintf(n, sizeof n, "%s %s", DTN, what);
    expect(ok, n);
}

/* ---- activations: the CPU's float NCHW copy and the GPU's bf16/fp16 NHWC one ---- */

struct act {
    float *c;    /* (n, ch, h, w) float NCHW, host */
    uint16_t *g; /* the same values, DT NHWC, backend memory */
    int64_t n, ch, h, w;
    size_t numel;
};

static struct nn_tensor act_cpu(const struct act *a)
{
    return nn_tensor_4d(a->c, NN_LAYOUT_NCHW, a->n, a->ch, a->h, a->w);
}

static struct nn_tensor act_gpu(const struct act *a)
{
    struct nn_tensor t = nn_tensor_4d((float *)a->g, NN_LAYOUT_NHWC, a->n, a->ch, a->h, a->w);
    t.dtype = DT;
    return t;
}

/* The CPU copy into the GPU one (host-side conversion; the backend idle). */
static void act_upload(struct act *a)
{
    nn_backend_sync(gpu);
    struct nn_tensor c = act_cpu(a), g = act_gpu(a);
    nn_tensor_convert(&g, &c);
}

/* Random DT-representable values, scale * N(0, 1) + shift (scale 0: zeros). */
static struct act act_new(int64_t n, int64_t ch, int64_t h, int64_t w, double scale, double shift)
{
    struct act a = {0};
    a.n = n, a.ch = ch, a.h = h, a.w = w;
    a.numel = (size_t)(n * ch * h * w);
    a.c = calloc(a.numel, sizeof(float));
    a.g = nn_backend_alloc(gpu, a.numel * sizeof(uint16_t));
    for (size_t i = 0; i < a.numel && (scale != 0 || shift != 0); i++) {
        a.c[i] = lp_round((float)(scale * swav_rng_normal(&rng) + shift));
    }
    act_upload(&a);
    return a;
}

static void act_free(struct act *a)
{
    free(a->c);
    nn_backend_free(gpu, a->g);
}

/* The GPU's DT values as float NCHW (host), after a sync. */
static float *act_download(const struct act *a)
{
    nn_backend_sync(gpu);
    float *f = malloc(a->numel * sizeof(float));
    struct nn_tensor t = nn_tensor_4d(f, NN_LAYOUT_NCHW, a->n, a->ch, a->h, a->w);
    struct nn_tensor g = act_gpu(a);
    nn_tensor_convert(&t, &g);
    return f;
}

static void act_check(const char *name, const struct act *a, double tol)
{
    float *f = act_download(a);
    lreport(name, rel_err(f, a->c, a->numel), tol);
    free(f);
}

/* ---- float arrays: a host copy for the CPU, backend memory for the GPU --------- */

struct pair {
    float *c, *g;
    size_t n;
};

static struct pair pair_new(size_t n, double scale, double shift)
{
    struct pair p = {calloc(n, sizeof(float)), nn_backend_alloc(gpu, n * sizeof(float)), n};
    nn_backend_sync(gpu);
    for (size_t i = 0; i < n; i++) {
        p.c[i] = p.g[i] = lp_round((float)(scale * swav_rng_normal(&rng) + shift));
    }
    return p;
}

static void pair_free(struct pair *p)
{
    free(p->c);
    nn_backend_free(gpu, p->g);
}

static void pair_check(const char *name, const struct pair *p, double tol)
{
    nn_backend_sync(gpu);
    lreport(name, rel_err(p->g, p->c, p->n), tol);
}

/* ---- conversion ------------------------------------------------------------------- */

static void test_convert(void)
{
    int64_t N = 3, H = 9, W = 7;
    size_t npix = (size_t)(N * H * W);
    float *src = nn_backend_alloc(gpu, npix * 3 * sizeof(float));
    uint16_t *dst = nn_backend_alloc(gpu, npix * NN_LOWP_STEM_CHANNELS * sizeof(uint16_t));
    float *back = nn_backend_alloc(gpu, npix * NN_LOWP_STEM_CHANNELS * sizeof(float));
    float *want = malloc(npix * 3 * sizeof(float));
    uint16_t *hw = malloc(npix * NN_LOWP_STEM_CHANNELS * sizeof(uint16_t));
    for (size_t i = 0; i < npix * 3; i++) {
        src[i] = (float)swav_rng_normal(&rng); /* not representable: the rounding shows */
        want[i] = src[i];
    }
    for (size_t i = 0; i < npix * NN_LOWP_STEM_CHANNELS; i++) {
        dst[i] = 0xffffu; /* NaN in both types: the zero channel must be written */
    }
    struct nn_tensor ts = nn_tensor_4d(src, NN_LAYOUT_NCHW, N, 3, H, W);
    struct nn_tensor td = nn_tensor_4d((float *)dst, NN_LAYOUT_NHWC, N, NN_LOWP_STEM_CHANNELS, H, W);
    td.dtype = DT;
    nn_convert(gpu, &td, &ts);
    nn_backend_sync(gpu);
    /* host reference: channel c < 3 rounded, channel 3 zero */
    int bad = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++)
                for (int64_t c = 0; c < NN_LOWP_STEM_CHANNELS; c++) {
                    uint16_t e = c < 3 ? lp_from(want[((n * 3 + c) * H + y) * W + x]) : 0;
                    hw[((n * H + y) * W + x) * NN_LOWP_STEM_CHANNELS + c] = e;
                }
    for (size_t i = 0; i < npix * NN_LOWP_STEM_CHANNELS; i++) {
        bad += dst[i] != hw[i];
    }
    printf("%s %-39s %d of %zu differ %s\n", DTN, "convert f32 NCHW -> NHWC (3 -> 4 ch)", bad,
           npix * NN_LOWP_STEM_CHANNELS, bad ? "FAIL" : "ok");
    failures += bad != 0;
    struct nn_tensor tb = nn_tensor_4d(back, NN_LAYOUT_NCHW, N, NN_LOWP_STEM_CHANNELS, H, W);
    nn_convert(gpu, &tb, &td);
    nn_backend_sync(gpu);
    bad = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < NN_LOWP_STEM_CHANNELS; c++)
            for (int64_t p = 0; p < H * W; p++) {
                float g = back[(n * NN_LOWP_STEM_CHANNELS + c) * H * W + p];
                float e = lp_to(hw[(n * H * W + p) * NN_LOWP_STEM_CHANNELS + c]);
                bad += memcmp(&g, &e, sizeof g) != 0;
            }
    printf("%s %-39s %d differ %s\n", DTN, "convert NHWC -> f32 NCHW (exact)", bad,
           bad ? "FAIL" : "ok");
    failures += bad != 0;
    nn_backend_free(gpu, src);
    nn_backend_free(gpu, dst);
    nn_backend_free(gpu, back);
    free(want);
    free(hw);
}

/* ---- convolutions ---------------------------------------------------------------------
 * cin_pad > C: the GPU input has cin_pad channels, the extra ones zero (the
 * stem's widened input); the CPU sees C.  The filter gradient accumulates
 * onto a nonzero one (layers.h's +=). */
static void test_conv(int N, int C, int cin_pad, int H, int O, int k, int s, int p, int with_dx)
{
    int Ho = (H + 2 * p - k) / s + 1;
    struct act x = act_new(N, C, H, H, 1, 0), xg = act_new(N, cin_pad, H, H, 0, 0);
    for (int64_t n = 0; n < N; n++) /* x's values in the first C channels of xg */
        for (int64_t c = 0; c < C; c++)
            memcpy(xg.c + (n * cin_pad + c) * H * H, x.c + (n * C + c) * H * H,
                   (size_t)H * H * sizeof(float));
    act_upload(&xg);
    struct pair w = pair_new((size_t)O * C * k * k, 0.2, 0), dw = pair_new(w.n, 0.5, 0);
    struct act y = act_new(N, O, Ho, Ho, 0, 0), dy = act_new(N, O, Ho, Ho, 1, 0);
    struct act dx = act_new(N, C, H, H, 0, 0);
    struct nn_tensor wc = nn_tensor_4d(w.c, NN_LAYOUT_NCHW, O, C, k, k);
    struct nn_tensor wg = nn_tensor_4d(w.g, NN_LAYOUT_NCHW, O, C, k, k);
    struct nn_tensor dwc = nn_tensor_4d(dw.c, NN_LAYOUT_NCHW, O, C, k, k);
    struct nn_tensor dwg = nn_tensor_4d(dw.g, NN_LAYOUT_NCHW, O, C, k, k);
    struct nn_tensor xc_ = act_cpu(&x), xg_ = act_gpu(cin_pad > C ? &xg : &x);
    struct nn_tensor yc = act_cpu(&y), yg = act_gpu(&y), dyc = act_cpu(&dy), dyg = act_gpu(&dy);
    struct nn_tensor dxc = act_cpu(&dx), dxg = act_gpu(&dx);
    nn_backend_weights_updated(cpu); /* new weights, maybe at a reused address */
    nn_backend_weights_updated(gpu);
    nn_conv2d_forward(cpu, &yc, &xc_, &wc, s, p);
    nn_conv2d_forward(gpu, &yg, &xg_, &wg, s, p);
    nn_conv2d_backward(cpu, with_dx ? &dxc : NULL, &dwc, &dyc, &xc_, &wc, s, p);
    nn_conv2d_backward(gpu, with_dx ? &dxg : NULL, &dwg, &dyg, &xg_, &wg, s, p);
    char name[96];
    snprintf(name, sizeof name, "conv%dx%d/s%d %d->%d%s fwd", k, k, s, C, O,
             cin_pad > C ? " (input widened)" : "");
    act_check(name, &y, TOL_ROUND);
    if (with_dx) {
        snprintf(name, sizeof name, "conv%dx%d/s%d %d->%d bwd data", k, k, s, C, O);
        act_check(name, &dx, TOL_ROUND);
    }
    snprintf(name, sizeof name, "conv%dx%d/s%d %d->%d bwd weight (+=)", k, k, s, C, O);
    pair_check(name, &dw, TOL_ROUND);
    /* the weight copy: reused until nn_backend_weights_updated, then remade */
    float *before = act_download(&y);
    nn_backend_sync(gpu);
    for (size_t i = 0; i < w.n; i++) {
        w.c[i] = w.g[i] = -2.0f * w.c[i]; /* exact in bf16 and fp16 */
    }
    nn_conv2d_forward(gpu, &yg, &xg_, &wg, s, p);
    float *stale = act_download(&y);
    int same = !memcmp(before, stale, y.numel * sizeof(float));
    snprintf(name, sizeof name, "conv%dx%d/s%d weight copy reused until updated", k, k, s);
    lexpect(same, name);
    nn_backend_weights_updated(cpu);
    nn_backend_weights_updated(gpu);
    nn_conv2d_forward(cpu, &yc, &xc_, &wc, s, p);
    nn_conv2d_forward(gpu, &yg, &xg_, &wg, s, p);
    snprintf(name, sizeof name, "conv%dx%d/s%d fwd after weights_updated", k, k, s);
    act_check(name, &y, TOL_ROUND);
    free(before);
    free(stale);
    act_free(&x), act_free(&xg), act_free(&y), act_free(&dy), act_free(&dx);
    pair_free(&w), pair_free(&dw);
}

/* ---- batch norm ----------------------------------------------------------------------
 * NHWC with C odd (scalar kernels) or even (pairs), M rows spanning several
 * row chunks; means far from zero against their spread. */

/* The buffers of one BatchNorm (or SyncBN) check, on both sides. */
struct bn_case {
    struct act x, y, dy, dx;
    struct pair w, b, rm, rv, sm, sv, dw, db;
    struct nn_tensor xc, xg, yc, yg, dyc, dyg, dxc, dxg;
    struct bn_side cs, gs; /* point into this struct: never copy it */
};

/* The activations: x as act_new(x_rand, x_spread) makes it, the output and
 * input gradient empty, dy random.  The caller may fill x (then act_upload). */
static void bn_case_acts(struct bn_case *k, int64_t N, int64_t C, int64_t H, int x_rand,
                         double x_spread)
{
    k->x = act_new(N, C, H, H, x_rand, x_spread), k->y = act_new(N, C, H, H, 0, 0);
    k->dy = act_new(N, C, H, H, 1, 0), k->dx = act_new(N, C, H, H, 0, 0);
}

/* Then the parameters and statistics (weight around 1, bias, running
 * statistics, the gradients to accumulate into) and both sides' views. */
static void bn_case_sides(struct bn_case *k, int64_t C)
{
    k->w = pair_new((size_t)C, 0.5, 1), k->b = pair_new((size_t)C, 0.5, 0);
    k->rm = pair_new((size_t)C, 0.1, 0), k->rv = pair_new((size_t)C, 0.1, 1.5);
    k->sm = pair_new((size_t)C, 0, 0), k->sv = pair_new((size_t)C, 0, 0);
    k->dw = pair_new((size_t)C, 1, 0), k->db = pair_new((size_t)C, 1, 0);
    k->xc = act_cpu(&k->x), k->xg = act_gpu(&k->x), k->yc = act_cpu(&k->y), k->yg = act_gpu(&k->y);
    k->dyc = act_cpu(&k->dy), k->dyg = act_gpu(&k->dy);
    k->dxc = act_cpu(&k->dx), k->dxg = act_gpu(&k->dx);
    k->cs = (struct bn_side){cpu, &k->yc, &k->dxc, &k->xc, &k->dyc, k->w.c, k->b.c, k->rm.c,
                             k->rv.c, k->sm.c, k->sv.c, k->dw.c, k->db.c, 0};
    k->gs = (struct bn_side){gpu, &k->yg, &k->dxg, &k->xg, &k->dyg, k->w.g, k->b.g, k->rm.g,
                             k->rv.g, k->sm.g, k->sv.g, k->dw.g, k->db.g, 0};
}

/* A BatchNorm step's results (BatchNorm's or SyncBN's) against the CPU's, a
 * line "<tag> <what>" each: the output and the input gradient (one
 * rounding), the saved and running statistics (training only), the
 * parameter gradients.  Then the case's buffers are freed. */
static void bn_case_check_free(struct bn_case *k, const char *tag, int train)
{
    char name[96];
#define BN_ACT(what, buf, tol)                              \
    snprintf(name, sizeof name, "%s %s", tag, what);        \
    act_check(name, &k->buf, tol)
#define BN_PAIR(what, buf, tol)                             \
    snprintf(name, sizeof name, "%s %s", tag, what);        \
    pair_check(name, &k->buf, tol)
    BN_ACT("out", y, TOL_ROUND);
    if (train) {
        BN_PAIR("save_mean", sm, 1e-5);
        BN_PAIR("save_var (biased)", sv, 1e-5);
        BN_PAIR("running_mean", rm, 1e-5);
        BN_PAIR("running_var (unbiased)", rv, 1e-5);
    }
    BN_ACT("dinp", dx, TOL_ROUND);
    BN_PAIR("dweight (+=)", dw, 1e-4);
    BN_PAIR("dbias (+=)", db, 1e-4);
#undef BN_ACT
#undef BN_PAIR
    act_free(&k->x), act_free(&k->y), act_free(&k->dy), act_free(&k->dx);
    struct pair *ps[] = {&k->w, &k->b, &k->rm, &k->rv, &k->sm, &k->sv, &k->dw, &k->db};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        pair_free(ps[i]);
    }
}

static void test_bn(int64_t N, int64_t C, int64_t H, unsigned flags)
{
    struct bn_case k;
    bn_case_acts(&k, N, C, H, 0, 0);
    for (int64_t c = 0; c < C; c++) {
        double mu = c % 3 == 0 ? 20.0 - (double)c : -1.0 + 0.25 * (double)c;
        double sd = 0.05 + 0.3 * (double)(c % 7);
        for (int64_t n = 0; n < N; n++)
            for (int64_t i = 0; i < H * H; i++)
                k.x.c[(n * C + c) * H * H + i] =
                    lp_round((float)(mu + sd * swav_rng_normal(&rng)));
    }
    act_upload(&k.x);
    bn_case_sides(&k, C);
    bn_step(flags, &k.cs, &k.gs);
    int train = (flags & NN_BN_TRAIN) != 0;
    char tag[64];
    snprintf(tag, sizeof tag, "bn %s%s C%d M%d", train ? "train" : "eval",
             (flags & NN_BN_RELU) ? "+relu" : "", (int)C, (int)(N * H * H));
    bn_case_check_free(&k, tag, train);
}

/* SyncBN's pieces on DT: statistics against long double on the same DT
 * values (1e-12: double sums), twice (same bits); backward_elemt against the
 * CPU (one rounding), its host arrays spoiled right after the call. */
static void test_bn_sync_pieces(int64_t N, int64_t C, int64_t H)
{
    struct act x = act_new(N, C, H, H, 0, 0), dx = act_new(N, C, H, H, 1, 0);
    for (int64_t c = 0; c < C; c++) {
        /* spreads of many bf16 steps (0.25 at 50; fp16's 0.03): no channel rounds to a
         * constant */
        double mu = c % 2 ? 50.0 : -3.0 + (double)c, sd = 1.0 + 0.4 * (double)(c % 5);
        for (int64_t i = 0; i < N * H * H; i++)
            x.c[(i / (H * H) * C + c) * H * H + i % (H * H)] =
                lp_round((float)(mu + sd * swav_rng_normal(&rng)));
    }
    act_upload(&x);
    struct nn_tensor xc = act_cpu(&x), xg = act_gpu(&x), dxc = act_cpu(&dx), dxg = act_gpu(&dx);
    double *mg = calloc((size_t)C * 4, sizeof(double)), *m2g = mg + C, *mg2 = mg + 2 * C,
           *m2g2 = mg + 3 * C;
    nn_batchnorm_stats(gpu, mg, m2g, &xg);
    nn_batchnorm_stats(gpu, mg2, m2g2, &xg);
    double em = 0, e2 = 0, M = (double)(N * H * H);
    for (int64_t c = 0; c < C; c++) {
        long double s = 0, q = 0;
        for (int64_t i = 0; i < N * H * H; i++) {
            s += x.c[(i / (H * H) * C + c) * H * H + i % (H * H)];
        }
        long double mean = s / M;
        for (int64_t i = 0; i < N * H * H; i++) {
            long double d = x.c[(i / (H * H) * C + c) * H * H + i % (H * H)] - mean;
            q += d * d;
        }
        double a = fabs((double)(mg[c] - mean)) / (fabs((double)mean) + sqrt((double)q / M));
        double b = fabs((double)(m2g[c] - q)) / (double)q;
        em = a > em || a != a ? a : em;
        e2 = b > e2 || b != b ? b : e2;
    }
    lreport("bn stats mean vs exact", em, 1e-12);
    lreport("bn stats m2 vs exact", e2, 1e-12);
    int same = !memcmp(mg, mg2, (size_t)C * sizeof(double)) &&
               !memcmp(m2g, m2g2, (size_t)C * sizeof(double));
    lexpect(same, "bn stats deterministic");
    struct pair w = pair_new((size_t)C, 0.5, 1), mean = pair_new((size_t)C, 0, 0);
    struct pair var = pair_new((size_t)C, 0, 0);
    float *mdy = malloc((size_t)C * sizeof(float)), *mdyx = malloc((size_t)C * sizeof(float));
    for (int64_t c = 0; c < C; c++) {
        mean.c[c] = mean.g[c] = (float)mg[c];
        var.c[c] = var.g[c] = (float)(m2g[c] / M);
        mdy[c] = (float)(0.1 * swav_rng_normal(&rng));
        mdyx[c] = (float)(0.1 * swav_rng_normal(&rng));
    }
    nn_batchnorm_backward_elemt(cpu, &dxc, &xc, w.c, mean.c, var.c, mdy, mdyx, 1e-5f);
    nn_batchnorm_backward_elemt(gpu, &dxg, &xg, w.g, mean.g, var.g, mdy, mdyx, 1e-5f);
    for (int64_t c = 0; c < C; c++) {
        mdy[c] = mdyx[c] = NAN; /* the caller may reuse them when the call returns */
    }
    act_check("bn backward_elemt dinp", &dx, TOL_ROUND);
    free(mdy);
    free(mdyx);
    free(mg);
    act_free(&x), act_free(&dx);
    pair_free(&w), pair_free(&mean), pair_free(&var);
}

/* nn_syncbn_forward/backward with a world of one on DT (statistics, the
 * eval-mode normalize with the fused ReLU's workspace, eval-mode backward,
 * backward_elemt) against the CPU's on float: test_bn's tolerances. */
static void test_syncbn_single(int64_t N, int64_t C, int64_t H, unsigned relu)
{
    struct bn_case k;
    bn_case_acts(&k, N, C, H, 1, 0.5);
    bn_case_sides(&k, C);
    int st = syncbn_step((int)C, relu, &k.cs, &k.gs);
    double cnt_c = k.cs.count, cnt_g = k.gs.count;
    char tag[48];
    snprintf(tag, sizeof tag, "syncbn(1)%s C%d", relu ? "+relu" : "", (int)C);
    int ok = st == 0 && cnt_g == cnt_c && cnt_c == (double)(N * H * H);
    printf("%s %-39s status %d, count cuda %g cpu %g %s\n", DTN, tag, st, cnt_g, cnt_c,
           ok ? "ok" : "FAIL");
    failures += !ok;
    bn_case_check_free(&k, tag, 1);
}

/* ---- element-wise ---------------------------------------------------------------------
 * odd: an odd element count (the pair kernels' tail); shifted: views one
 * element into their buffers (2-byte aligned only: the scalar kernels). */
static void test_eltwise(int64_t N, int64_t C, int64_t H, int shifted)
{
    struct act a = act_new(N, C, H, H, 1, 0), b = act_new(N, C, H, H, 1, 0);
    struct act y = act_new(N, C, H, H, 0, 0), dy = act_new(N, C, H, H, 1, 0);
    struct act dx = act_new(N, C, H, H, 0, 0), acc = act_new(N, C, H, H, 1, 0);
    struct act *all[] = {&a, &b, &y, &dy, &dx, &acc};
    struct nn_tensor tc[6], tg[6];
    uint16_t *spare[6];
    for (int i = 0; i < 6; i++) {
        tc[i] = act_cpu(all[i]);
        tg[i] = act_gpu(all[i]);
        spare[i] = NULL;
        if (shifted) { /* the same values one element further on */
            spare[i] = nn_backend_alloc(gpu, (all[i]->numel + 1) * sizeof(uint16_t));
            nn_backend_sync(gpu);
            memcpy(spare[i] + 1, all[i]->g, all[i]->numel * sizeof(uint16_t));
            tg[i].data = spare[i] + 1;
        }
    }
    char name[96];
    const char *tag = shifted ? " (2-byte aligned)" : (a.numel % 2 ? " (odd count)" : "");
    /* results land in tg[i].data: copied back into act.g to check */
#define ELT_CHECK(what, idx, tol)                                                             \
    do {                                                                                      \
        nn_backend_sync(gpu);                                                                 \
        if (shifted) {                                                                        \
            memcpy(all[idx]->g, spare[idx] + 1, all[idx]->numel * sizeof(uint16_t));          \
        }                                                                                     \
        snprintf(name, sizeof name, "%s%s", what, tag);                                       \
        act_check(name, all[idx], tol);                                                       \
    } while (0)
    nn_relu_forward(cpu, &tc[2], &tc[0]);
    nn_relu_forward(gpu, &tg[2], &tg[0]);
    ELT_CHECK("relu fwd", 2, 0);
    nn_relu_backward(cpu, &tc[4], &tc[3], &tc[2]);
    nn_relu_backward(gpu, &tg[4], &tg[3], &tg[2]);
    ELT_CHECK("relu bwd", 4, 0);
    nn_relu_backward(cpu, &tc[3], &tc[3], &tc[2]); /* in place, as the model does */
    nn_relu_backward(gpu, &tg[3], &tg[3], &tg[2]);
    ELT_CHECK("relu bwd in place", 3, 0);
    nn_add_forward(cpu, &tc[2], &tc[0], &tc[1], 1);
    nn_add_forward(gpu, &tg[2], &tg[0], &tg[1], 1);
    ELT_CHECK("add+relu fwd", 2, TOL_ROUND);
    nn_add_forward(cpu, &tc[2], &tc[0], &tc[1], 0);
    nn_add_forward(gpu, &tg[2], &tg[0], &tg[1], 0);
    ELT_CHECK("add fwd", 2, TOL_ROUND);
    nn_accumulate(cpu, &tc[5], &tc[0]);
    nn_accumulate(gpu, &tg[5], &tg[0]);
    ELT_CHECK("accumulate", 5, TOL_ROUND);
#undef ELT_CHECK
    for (int i = 0; i < 6; i++) {
        if (spare[i]) {
            nn_backend_free(gpu, spare[i]);
        }
        act_free(all[i]);
    }
}

/* ---- pooling ----------------------------------------------------------------------------- */

static void test_pool(int64_t N, int64_t C, int64_t H)
{
    int k = 3, s = 2, p = 1;
    int64_t Ho = (H + 2 * p - k) / s + 1;
    struct act x = act_new(N, C, H, H, 1, 0), y = act_new(N, C, Ho, Ho, 0, 0);
    struct act dy = act_new(N, C, Ho, Ho, 1, 0), dx = act_new(N, C, H, H, 0, 0);
    struct nn_tensor xc = act_cpu(&x), xg = act_gpu(&x), yc = act_cpu(&y), yg = act_gpu(&y);
    struct nn_tensor dyc = act_cpu(&dy), dyg = act_gpu(&dy), dxc = act_cpu(&dx), dxg = act_gpu(&dx);
    size_t wsc = nn_maxpool2d_workspace_bytes(cpu, &yc, &xc, k, s, p);
    size_t wsg = nn_maxpool2d_workspace_bytes(gpu, &yg, &xg, k, s, p);
    void *wc = nn_backend_alloc(cpu, wsc), *wg = nn_backend_alloc(gpu, wsg);
    char name[96];
    nn_maxpool2d_forward(cpu, &yc, &xc, wc, k, s, p);
    nn_maxpool2d_forward(gpu, &yg, &xg, wg, k, s, p);
    snprintf(name, sizeof name, "maxpool 3/2/1 C%d %dx%d fwd", (int)C, (int)H, (int)H);
    act_check(name, &y, 0);
    nn_maxpool2d_backward(cpu, &dxc, &dyc, wc, k, s, p);
    nn_maxpool2d_backward(gpu, &dxg, &dyg, wg, k, s, p);
    snprintf(name, sizeof name, "maxpool 3/2/1 C%d %dx%d bwd", (int)C, (int)H, (int)H);
    act_check(name, &dx, TOL_ROUND);
    nn_backend_free(cpu, wc);
    nn_backend_free(gpu, wg);
    struct pair a = pair_new((size_t)(N * C), 0, 0), da = pair_new((size_t)(N * C), 1, 0);
    struct nn_tensor avc = nn_tensor_2d(a.c, N, C), avg = nn_tensor_2d(a.g, N, C);
    struct nn_tensor davc = nn_tensor_2d(da.c, N, C), davg = nn_tensor_2d(da.g, N, C);
    nn_avgpool_forward(cpu, &avc, &xc);
    nn_avgpool_forward(gpu, &avg, &xg);
    snprintf(name, sizeof name, "avgpool C%d %dx%d fwd (float out)", (int)C, (int)H, (int)H);
    pair_check(name, &a, 1e-5);
    nn_avgpool_backward(cpu, &dxc, &davc);
    nn_avgpool_backward(gpu, &dxg, &davg);
    snprintf(name, sizeof name, "avgpool C%d %dx%d bwd", (int)C, (int)H, (int)H);
    act_check(name, &dx, TOL_ROUND);
    act_free(&x), act_free(&y), act_free(&dy), act_free(&dx);
    pair_free(&a), pair_free(&da);
}

/* ---- the model -------------------------------------------------------------------------
 * test_cuda_model.c's small SwAV model (ResNet-18 width 16, head 64 -> 16,
 * 30 prototypes, crops 2x48 + 2x32, batch 4, same seed: the same initial
 * float weights) with cfg.act_dtype (bf16, fp16) on the GPU against the
 * float model on the CPU: crops normalized by each backend from the same
 * uint8 batch, forward, loss, backward (fp16: with the trainer's dynamic
 * loss scaling from 2^16: while the non-finite check finds an overflow in
 * the gradients the GPU side's step is skipped, S halved and the step run
 * again from the same BN buffers, as the trainer skips a step; then the
 * gradients must be finite), SGD + LARC; then the CPU model takes the GPU
 * model's stepped parameters (convolution weights rescaled element by
 * element) and buffers, and both run a second step on the same weights,
 * which also shows a weight copy left stale.  Last (fp16 only), a step at a
 * loss scale of 2^30 must overflow fp16 (the average pool's gradient alone
 * exceeds 65504) and the non-finite check must see it in the float
 * gradients.
 *
 * What to expect: this model is ill-conditioned for elementwise checks.  In
 * fp32 on the CPU, perturbing only its input by 2^-8 (one bf16 rounding)
 * moves its feats by 3%, scores by 6% and every weight gradient by 30-50% of
 * the tensor's largest value (gradient cosine 0.92-0.99): a weight feeding a
 * train-mode batch norm gets the small remainder of a projection, and
 * layer4's batch norms see 8 values a channel.  bf16 rounds at every layer;
 * the host rehearsal (these bf16 kernels run by an emulator, convolutions
 * exact then rounded) measured, over its runs, loss 2e-3 to 6e-3, feats 0.07
 * to 0.09, scores 0.09 to 0.13, running statistics 2e-3 to 4e-3, gradient
 * cosine 0.88 to 0.92 over all parameters, 0.88 to 0.99 for the tensors
 * printed and at least 0.71 for any one tensor.  Tolerances: loss 2e-2,
 * feats and scores 0.3 (of the largest value), running statistics 5e-2,
 * gradient cosine at least 0.75 over all parameters and 0.5 for the single
 * tensors printed.  fp16 rounds 8x finer (2^-11); the same rehearsal (a
 * loss scale of 8192 after three overflows from 2^16: this model at width
 * 16 has large activation gradients) measured loss 6e-4 to 1.3e-3, feats
 * 0.008 to 0.010, scores 0.012 to 0.017, running statistics 3e-4 to 6e-4,
 * gradient cosine 0.991 to 0.996 over all parameters and at least 0.990
 * for the tensors printed; its tolerances: loss 1e-2, feats and scores 0.1,
 * running statistics 5e-3, cosine 0.9 over all and 0.8 for one tensor.  A wiring fault shows well beyond them: with the bf16
 * weight copies left stale (rehearsed), step 1 gave feats 0.89, scores 1.2
 * and a gradient cosine of 0.00; a wrong max-pool routing, a cosine of
 * 0.42; a wrong average-pool gradient, -0.09. */
static double cosine(const float *a, const float *b, size_t n)
{
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : (aa == bb ? 1.0 : 0.0);
}

static void cos_check(const char *name, const float *g, const float *c, size_t n, double min)
{
    double cs = cosine(g, c, n);
    int ok = cs >= min;
    printf("%-44s cosine %.4f (min %.2f) %s\n", name, cs, min, ok ? "ok" : "FAIL");
    failures += !ok;
}

static void test_model(void)
{
    struct nn_resnet_cfg cfg;
    step_model_cfg(&cfg);
    struct nn_resnet_cfg cfg_g = cfg;
    cfg_g.act_dtype = DT;
    const struct nn_crop_group groups[2] = {{2, 48}, {2, 32}};
    const int batch = 4, n_crops = 4, K = cfg.nmb_prototypes;
    struct nn_model *mc = nn_model_new(cpu, &cfg, groups, 2, batch);
    struct nn_model *mg = nn_model_new(gpu, &cfg_g, groups, 2, batch);
    if (!mc || !mg) {
        printf("FAIL: nn_model_new (%s on the GPU, float on the CPU)\n", DTN);
        failures++;
        nn_model_destroy(&mc);
        nn_model_destroy(&mg);
        return;
    }
    struct nn_tensor probe;
    int is_lowp = nn_model_activation(mg, 0, "layer1.0", &probe) == 0 && probe.dtype == DT &&
                  probe.layout == NN_LAYOUT_NHWC;
    lexpect(is_lowp, "model: backbone activations in the type, NHWC");
    nn_backend_sync(gpu);
    lreport("model: initial parameters (same seed)",
            rel_err(mg->param_data, mc->param_data, mc->params.total), 0);
    const int fp16 = DT == NN_DTYPE_F16;
    /* tolerances (see above): bf16's, and fp16's from its 8x smaller rounding */
    const double tol_loss = fp16 ? 1e-2 : 2e-2, tol_out = fp16 ? 0.1 : 0.3;
    const double tol_run = fp16 ? 5e-3 : 5e-2, cos_all = fp16 ? 0.9 : 0.75;
    const double cos_one = fp16 ? 0.8 : 0.5;
    struct nn_loss_scale ls;
    nn_loss_scale_init(&ls);
    float *buf_save = malloc(mg->buffers.total * sizeof(float));
    struct step_pair d;
    step_pair_init(&d, cpu, gpu, mc, mg, groups, 2, batch, n_crops, K, &rng);
    const size_t ns = d.ns;
    int cache_after_first = 0;
    for (int step = 0; step < 2; step++) {
        if (step == 1) { /* the same weights on both sides: the GPU's, stepped */
            nn_backend_sync(gpu);
            /* and every convolution weight scaled by its own factor in [0.5, 1.5]: a
             * bf16 copy left from step 0 would be far off (an optimizer step alone
             * moves these weights by about as much as bf16 rounds them) */
            for (int i = 0; i < mg->params.n; i++) {
                const struct nn_param *p = &mg->params.p[i];
                if (p->ndim != 4) {
                    continue;
                }
                for (size_t j = 0; j < p->numel; j++) {
                    mg->param_data[p->offset + j] *= (float)(0.5 + swav_rng_uniform(&rng));
                }
            }
            memcpy(mc->param_data, mg->param_data, mc->params.total * sizeof(float));
            memcpy(mc->buffer_data, mg->buffer_data, mc->buffers.total * sizeof(float));
        }
        float loss[2];
        loss[0] = side_step(mc, cpu, d.in_c, d.raw, groups, 2, batch, K, d.q_c, d.lp_c, d.ds_c,
                            &d.lc);
        printf("-- %s model step %d%s\n", DTN, step,
               step ? " (the CPU model on the GPU's weights)" : "");
        nn_backend_sync(gpu);
        memcpy(buf_save, mg->buffer_data, mg->buffers.total * sizeof(float));
        for (int attempt = 0;; attempt++) {
            loss[1] = side_step_scaled(mg, gpu, d.in_g, d.raw, groups, 2, batch, K, d.q_g,
                                       d.lp_g, d.ds_g, &d.lc, fp16 ? ls.scale : 1.0f);
            if (!fp16) {
                break;
            }
            float s_used = ls.scale;
            int nf = nn_backend_nonfinite(gpu, mg->grad_data, mg->params.total);
            if (!nf || attempt == 24) {
                char what[96];
                snprintf(what, sizeof what, "model: gradients finite at loss scale %g",
                         (double)s_used);
                lexpect(!nf, what);
                nn_loss_scale_update(&ls, nf);
                break;
            }
            nn_loss_scale_update(&ls, nf);
            printf("%s model: loss scale %g overflowed fp16: step skipped, scale now %g\n", DTN,
                   (double)s_used, (double)ls.scale);
            nn_backend_sync(gpu); /* the skipped step's BN buffer updates undone */
            memcpy(mg->buffer_data, buf_save, mg->buffers.total * sizeof(float));
        }
        double le = fabs(loss[1] - loss[0]) / fabs(loss[0]);
        printf("%-44s rel err %.3g (tol %.0e) %s  (cuda %s %.6f cpu %.6f)\n", "swav loss", le,
               tol_loss, le <= tol_loss ? "ok" : "FAIL", DTN, loss[1], loss[0]);
        failures += !(le <= tol_loss);
        report("feats (avgpool of the low-precision backbone)",
               rel_err(mg->feats, mc->feats, (size_t)mc->n_rows * mc->feat_channels), tol_out);
        report("scores", rel_err(mg->scores, mc->scores, ns), tol_out);
        report("BN running stats", rel_err(mg->buffer_data, mc->buffer_data, mc->buffers.total),
               tol_run);
        cos_check("all parameter gradients", mg->grad_data, mc->grad_data, mc->params.total,
                  cos_all);
        for (int i = 0; i < mc->params.n; i++) {
            const struct nn_param *p = &mc->params.p[i];
            if (i == 0 || i == mc->params.n - 1 || strstr(p->name, "layer4.1.conv2") ||
                strstr(p->name, "layer2.0.downsample.0") ||
                !strcmp(p->name, "projection_head.0.weight")) {
                char name[160];
                snprintf(name, sizeof name, "grad %s", p->name);
                cos_check(name, mg->grad_data + p->offset, mc->grad_data + p->offset, p->numel,
                          cos_one);
            }
        }
        for (int side = 0; side < 2; side++) {
            struct nn_model *m = side ? mg : mc;
            nn_optim_step(side ? &d.opt_g : &d.opt_c, m->param_data, m->grad_data, 4.8, step);
            nn_backend_sync(side ? gpu : cpu);
        }
        if (step == 0) {
            cache_after_first = nn_backend_cache_size(gpu);
        }
    }
    const float *nbt_g = nn_model_buffer(mg, "layer1.0.bn1.num_batches_tracked");
    int nbt_ok = *nbt_g == 4;
    printf("%-44s cuda %g (want 4) %s\n", "num_batches_tracked", *nbt_g, nbt_ok ? "ok" : "FAIL");
    failures += !nbt_ok;
    int cache_now = nn_backend_cache_size(gpu);
    printf("%-44s %d after step 1, %d after step 2 %s\n", "cache entries (nothing new after warm-up)",
           cache_after_first, cache_now, cache_now == cache_after_first ? "ok" : "FAIL");
    failures += cache_now != cache_after_first;
    if (fp16) { /* a real overflow: inf in the fp16 backward, seen in the float gradients */
        side_step_scaled(mg, gpu, d.in_g, d.raw, groups, 2, batch, K, d.q_g, d.lp_g, d.ds_g,
                         &d.lc, 0x1p30f);
        int nf = nn_backend_nonfinite(gpu, mg->grad_data, mg->params.total);
        lexpect(nf == 1, "model: loss scale 2^30 overflows fp16, check sees it");
    }
    free(buf_save);
    step_pair_free(&d, cpu, gpu);
    nn_model_destroy(&mg);
    nn_model_destroy(&mc);
}

/* ---- the loss scaler's check: nn_backend_nonfinite on the device ---------------------
 * A float buffer of the backend (an odd length, longer than one launch's
 * grid covers with a grid-stride loop of 4096 blocks) with +inf, -inf and a
 * NaN planted at its first, a middle and its last element in turn: each
 * found; finite extremes (FLT_MAX, the smallest subnormal, -0) and n = 0
 * not; the element just past n not looked at. */
static void test_nonfinite(void)
{
    const size_t n = (size_t)4096 * 256 * 2 + 77;
    float *x = nn_backend_alloc(gpu, n * sizeof(float));
    nn_backend_sync(gpu);
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)((double)(i % 1000) - 500.0);
    }
    int ok = nn_backend_nonfinite(gpu, x, n) == 0 && nn_backend_nonfinite(gpu, x, 0) == 0;
    const float finite[] = {3.4028235e38f, -3.4028235e38f, 0x1p-149f, -0.0f};
    for (size_t k = 0; k < 4; k++) {
        nn_backend_sync(gpu);
        x[n / 3] = finite[k];
        ok &= nn_backend_nonfinite(gpu, x, n) == 0;
    }
    const float bad[] = {INFINITY, -INFINITY, NAN};
    const size_t where[] = {0, n / 2, n - 1};
    int found = 0;
    for (size_t k = 0; k < 3; k++) {
        for (size_t w = 0; w < 3; w++) {
            nn_backend_sync(gpu);
            float keep = x[where[w]];
            x[where[w]] = bad[k];
            found += nn_backend_nonfinite(gpu, x, n) == 1;
            if (where[w] == n - 1) {
                ok &= nn_backend_nonfinite(gpu, x, n - 1) == 0;
            }
            nn_backend_sync(gpu);
            x[where[w]] = keep;
        }
    }
    printf("%-44s %d of 9 planted inf/NaN found, finite ones passed: %s\n",
           "nonfinite (loss scaling's check)", found, ok && found == 9 ? "ok" : "FAIL");
    failures += !(ok && found == 9);
    nn_backend_free(gpu, x);
}

static void run_layers_and_model(enum nn_dtype dt)
{
    set_dtype(dt);
    printf("==== %s (tolerance of one rounding %.0e) ====\n", DTN, TOL_ROUND);
    swav_rng_init(&rng, 17, 0, 0, 0);
    test_convert();
    test_conv(2, 8, 8, 12, 16, 3, 1, 1, 1);  /* a 3x3 block conv */
    test_conv(2, 3, NN_LOWP_STEM_CHANNELS, 20, 8, 7, 2, 3, 0); /* the stem: 3 -> 4 channels */
    test_conv(2, 16, 16, 9, 32, 1, 2, 0, 1); /* a downsample 1x1/s2 */
    test_conv(3, 8, 8, 3, 8, 3, 1, 1, 1);    /* 3x3 on a 3x3 map */
    test_bn(2, 64, 20, NN_BN_TRAIN);           /* pairs, 800 rows: several chunks */
    test_bn(2, 64, 20, NN_BN_TRAIN | NN_BN_RELU);
    test_bn(3, 13, 9, NN_BN_TRAIN | NN_BN_RELU); /* odd C: scalar kernels */
    test_bn(3, 13, 9, NN_BN_RELU);             /* eval, as SyncBN's normalize */
    test_bn(2, 64, 5, 0);
    test_bn(4, 96, 40, NN_BN_TRAIN);           /* 6400 rows, 96 channels: 2 tiles */
    test_bn_sync_pieces(3, 10, 17);
    test_bn_sync_pieces(2, 7, 11);
    test_syncbn_single(3, 32, 9, NN_BN_RELU);
    test_syncbn_single(2, 7, 6, 0);
    test_eltwise(3, 8, 7, 0);  /* even count: pairs */
    test_eltwise(3, 5, 7, 0);  /* odd count: pairs and a tail */
    test_eltwise(2, 6, 5, 1);  /* misaligned views: scalar */
    test_pool(2, 8, 11);
    test_pool(3, 5, 12);
    test_model();
}

int main(void)
{
    int rc = open_gpu(&gpu);
    if (rc) {
        return rc;
    }
    cpu = nn_backend_cpu_new(0);
    if (!nn_backend_has_lowp(gpu)) {
        printf("FAIL: the CUDA backend does not declare bf16/fp16\n");
        return 1;
    }
    const char *only = getenv("SWAV_LOWP_ONLY"); /* "bf16" or "fp16": one type (rehearsals) */
    if (!only || strcmp(only, "fp16") != 0) {
        run_layers_and_model(NN_DTYPE_BF16);
    }
    if (!only || strcmp(only, "bf16") != 0) {
        run_layers_and_model(NN_DTYPE_F16);
    }
    test_nonfinite();
    printf("cache entries %d\n", nn_backend_cache_size(gpu));
    nn_backend_destroy(&gpu);
    nn_backend_destroy(&cpu);
    printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
