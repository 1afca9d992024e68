/* Finite-difference gradient checks for every layer of nn/layers.h on the
 * CPU backend, in both activation layouts where the layer has one.
 *
 * Each case computes loss = sum(r * out) in double for a fixed random r, so
 * that dout = r; the analytic gradients of its backward are compared with
 * central differences (step EPS) on a sample of elements of every input and
 * parameter.  Tolerance: |analytic - numeric| <= ATOL + RTOL * |numeric|,
 * ATOL 1e-2, RTOL 3e-2: fp32 forward passes make the numeric derivative
 * accurate to about 1e-3 here.  Elements that sit within 2*EPS of a ReLU or
 * max-pool kink are skipped (the derivative is not defined there). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "nn/backend.h"
#include "nn/layers.h"

#define EPS 5e-3f
#define ATOL 1e-2
#define RTOL 3e-2
#define SAMPLES 24

static nn_backend_t *be;
static struct swav_rng rng;
static int failures;

static float *randn(size_t n, float scale)
{
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    for (size_t i = 0; i < n; i++) {
        p[i] = (float)swav_rng_normal(&rng) * scale;
    }
    return p;
}

static float *zeros(size_t n)
{
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    memset(p, 0, n * sizeof(float));
    return p;
}

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        s += (double)a[i] * b[i];
    }
    return s;
}

typedef double (*loss_fn)(void *ctx);

/* Compares grad[i] with the central difference of loss() in x[i]. skip(i)
 * may veto elements near kinks. */
static void check(const char *what, float *x, const float *grad, size_t n, loss_fn loss, void *ctx,
                  int (*skip)(void *ctx, size_t i))
{
    double maxerr = 0;
    int bad = 0, tried = 0;
    for (int s = 0; s < SAMPLES && tried < 4 * SAMPLES; tried++) {
        size_t i = swav_rng_below(&rng, (uint32_t)n);
        if (skip && skip(ctx, i)) {
            continue;
        }
        s++;
        float keep = x[i];
        x[i] = keep + EPS;
        double lp = loss(ctx);
        x[i] = keep - EPS;
        double lm = loss(ctx);
        x[i] = keep;
        double num = (lp - lm) / (2.0 * EPS);
        double err = fabs(num - grad[i]);
        if (err > maxerr) {
            maxerr = err;
        }
        if (err > ATOL + RTOL * fabs(num)) {
            if (bad < 3) {
                fprintf(stderr, "  %s[%zu]: analytic %.6f numeric %.6f\n", what, i, grad[i], num);
            }
            bad++;
        }
    }
    printf("%-40s max |err| %.2e %s\n", what, maxerr, bad ? "FAIL" : "ok");
    if (bad) {
        failures++;
    }
}

/* ---- conv2d -------------------------------------------------------------------- */

struct conv_case {
    struct nn_tensor inp, w, out;
    float *r;
    int stride, pad;
};

static double conv_loss(void *p)
{
    struct conv_case *c = p;
    nn_backend_weights_updated(be); /* check() perturbs the weights in place */
    nn_conv2d_forward(be, &c->out, &c->inp, &c->w, c->stride, c->pad);
    return dot(c->out.data, c->r, nn_tensor_bytes(&c->out) / 4);
}

static void test_conv(enum nn_layout lin, enum nn_layout lout, int n, int ci, int co, int h, int k,
                      int stride, int pad)
{
    char name[128];
    int ho = (h + 2 * pad - k) / stride + 1;
    struct conv_case c;
    struct nn_tensor plain_in = nn_tensor_4d(randn((size_t)n * ci * h * h, 1), NN_LAYOUT_NCHW, n, ci, h, h);
    c.inp = nn_tensor_4d(zeros(nn_layout_bytes(lin, n, ci, h, h) / 4), lin, n, ci, h, h);
    nn_tensor_convert(&c.inp, &plain_in);
    c.w = nn_tensor_4d(randn((size_t)co * ci * k * k, 0.3f), NN_LAYOUT_NCHW, co, ci, k, k);
    c.out = nn_tensor_4d(zeros(nn_layout_bytes(lout, n, co, ho, ho) / 4), lout, n, co, ho, ho);
    c.r = randn(nn_tensor_bytes(&c.out) / 4, 1);
    c.stride = stride;
    c.pad = pad;
    conv_loss(&c);
    struct nn_tensor dinp = c.inp;
    dinp.data = randn(nn_tensor_bytes(&c.inp) / 4, 100); /* garbage: backward must overwrite */
    struct nn_tensor dw = c.w;
    dw.data = zeros(nn_tensor_numel(&c.w));
    struct nn_tensor dout = c.out;
    dout.data = c.r;
    nn_conv2d_backward(be, &dinp, &dw, &dout, &c.inp, &c.w, stride, pad);
    /* += semantics: a second backward doubles dweight */
    float *dw2 = zeros(nn_tensor_numel(&c.w));
    memcpy(dw2, dw.data, nn_tensor_numel(&c.w) * 4);
    nn_conv2d_backward(be, NULL, &dw, &dout, &c.inp, &c.w, stride, pad);
    double acc_err = 0;
    for (size_t i = 0; i < nn_tensor_numel(&c.w); i++) {
        acc_err = fmax(acc_err, fabs(((float *)dw.data)[i] - 2 * dw2[i]));
        ((float *)dw.data)[i] = dw2[i];
    }
    snprintf(name, sizeof name, "conv%dx%d s%d %s->%s dweight +=", k, k, stride,
             lin == NN_LAYOUT_NCHW ? "nchw" : "8c", lout == NN_LAYOUT_NCHW ? "nchw" : "8c");
    printf("%-40s max |err| %.2e %s\n", name, acc_err, acc_err > 1e-4 ? "FAIL" : "ok");
    failures += acc_err > 1e-4;
    snprintf(name, sizeof name, "conv%dx%d s%d %s->%s dinp", k, k, stride,
             lin == NN_LAYOUT_NCHW ? "nchw" : "8c", lout == NN_LAYOUT_NCHW ? "nchw" : "8c");
    check(name, c.inp.data, dinp.data, nn_tensor_bytes(&c.inp) / 4, conv_loss, &c, NULL);
    snprintf(name, sizeof name, "conv%dx%d s%d %s->%s dweight", k, k, stride,
             lin == NN_LAYOUT_NCHW ? "nchw" : "8c", lout == NN_LAYOUT_NCHW ? "nchw" : "8c");
    check(name, c.w.data, dw.data, nn_tensor_numel(&c.w), conv_loss, &c, NULL);
}

/* ---- batch norm ------------------------------------------------------------------ */

struct bn_case {
    struct nn_tensor inp, out;
    float *w, *b, *rm, *rv, *sm, *sv, *r;
    void *ws;
    unsigned flags;
};

static double bn_loss(void *p)
{
    struct bn_case *c = p;
    nn_batchnorm_forward(be, &c->out, &c->inp, c->w, c->b, c->rm, c->rv, c->sm, c->sv, c->ws,
                         c->flags, 0.1f, 1e-5f);
    return dot(c->out.data, c->r, nn_tensor_bytes(&c->out) / 4);
}

static int bn_skip(void *p, size_t i)
{
    struct bn_case *c = p;
    if (!(c->flags & NN_BN_RELU)) {
        return 0;
    }
    bn_loss(c);
    /* pre-activation near 0: out==0 can't tell; recompute without relu is
     * costly, so skip outputs that are exactly 0 or tiny */
    float y = ((float *)c->out.data)[i];
    return y < 0.05f;
}

static void test_bn(enum nn_layout layout, int ndim, int n, int ch, int h, unsigned flags)
{
    char name[128];
    struct bn_case c;
    memset(&c, 0, sizeof c);
    if (ndim == 4) {
        struct nn_tensor plain = nn_tensor_4d(randn((size_t)n * ch * h * h, 1.5f), NN_LAYOUT_NCHW, n, ch, h, h);
        c.inp = nn_tensor_4d(zeros(nn_layout_bytes(layout, n, ch, h, h) / 4), layout, n, ch, h, h);
        nn_tensor_convert(&c.inp, &plain);
        for (size_t i = 0; i < nn_tensor_bytes(&c.inp) / 4; i++) {
            ((float *)c.inp.data)[i] += 0.5f;
        }
        c.out = c.inp;
        c.out.data = zeros(nn_tensor_bytes(&c.inp) / 4);
    } else {
        c.inp = nn_tensor_2d(randn((size_t)n * ch, 1.5f), n, ch);
        c.out = nn_tensor_2d(zeros((size_t)n * ch), n, ch);
    }
    c.w = randn(ch, 1);
    c.b = randn(ch, 1);
    c.rm = randn(ch, 0.1f);
    c.rv = zeros(ch);
    for (int i = 0; i < ch; i++) {
        c.rv[i] = 0.5f + (float)i / ch;
    }
    c.sm = zeros(ch);
    c.sv = zeros(ch);
    c.flags = flags;
    size_t ws = nn_batchnorm_workspace_bytes(be, &c.inp, flags);
    c.ws = ws ? zeros(ws / 4 + 1) : NULL;
    size_t numel = nn_tensor_bytes(&c.out) / 4;
    c.r = randn(numel, 1);
    float *rm0 = zeros(ch), *rv0 = zeros(ch);
    memcpy(rm0, c.rm, ch * 4);
    memcpy(rv0, c.rv, ch * 4);
    bn_loss(&c);
    const char *lay = ndim == 2 ? "1d" : layout == NN_LAYOUT_NCHW ? "2d nchw" : "2d 8c";
    if (flags & NN_BN_TRAIN) {
        /* running stats: momentum 0.1, unbiased variance */
        double cnt = (double)numel / ch, err = 0;
        for (int k = 0; k < ch; k++) {
            err = fmax(err, fabs(c.rm[k] - (0.9 * rm0[k] + 0.1 * c.sm[k])));
            err = fmax(err, fabs(c.rv[k] - (0.9 * rv0[k] + 0.1 * c.sv[k] * cnt / (cnt - 1))));
        }
        snprintf(name, sizeof name, "bn%s running stats", lay);
        printf("%-40s max |err| %.2e %s\n", name, err, err > 1e-5 ? "FAIL" : "ok");
        failures += err > 1e-5;
    }
    struct nn_tensor dinp = c.inp, dout = c.out;
    dinp.data = zeros(numel);
    dout.data = c.r;
    float *dw = zeros(ch), *db = zeros(ch);
    const float *mean = (flags & NN_BN_TRAIN) ? c.sm : c.rm;
    const float *var = (flags & NN_BN_TRAIN) ? c.sv : c.rv;
    if (!(flags & NN_BN_TRAIN) && c.ws == NULL) {
        /* eval without relu: workspace-free path */
    }
    nn_batchnorm_backward(be, &dinp, dw, db, &dout, &c.inp, c.w, mean, var, c.ws, flags, 1e-5f);
    const char *mode = (flags & NN_BN_TRAIN) ? "train" : "eval";
    const char *relu = (flags & NN_BN_RELU) ? "+relu" : "";
    snprintf(name, sizeof name, "bn%s %s%s dinp", lay, mode, relu);
    check(name, c.inp.data, dinp.data, numel, bn_loss, &c, bn_skip);
    if (flags & NN_BN_RELU) {
        /* A weight or bias step moves many outputs across the ReLU kink at
         * once, so finite differences are unreliable there: check instead
         * that the fused backward equals the plain BN backward fed with
         * dout * (y > 0) (the plain one is finite-difference checked). */
        bn_loss(&c);
        float *masked = zeros(numel), *dw2 = zeros(ch), *db2 = zeros(ch);
        for (size_t i = 0; i < numel; i++) {
            masked[i] = ((float *)c.out.data)[i] > 0 ? c.r[i] : 0.0f;
        }
        unsigned plain = flags & ~(unsigned)NN_BN_RELU;
        struct nn_tensor d2 = dinp, o2 = dout;
        d2.data = zeros(numel);
        o2.data = masked;
        nn_batchnorm_backward(be, &d2, dw2, db2, &o2, &c.inp, c.w, mean, var, NULL, plain, 1e-5f);
        double err = 0, mx = 0;
        for (int k = 0; k < ch; k++) {
            err = fmax(err, fmax(fabs(dw[k] - dw2[k]), fabs(db[k] - db2[k])));
            mx = fmax(mx, fmax(fabs(dw2[k]), fabs(db2[k])));
        }
        for (size_t i = 0; i < numel; i++) {
            err = fmax(err, fabs(((float *)dinp.data)[i] - ((float *)d2.data)[i]));
        }
        snprintf(name, sizeof name, "bn%s %s%s == bn(dout*mask)", lay, mode, relu);
        int bad = err > 1e-5 * fmax(mx, 1.0);
        printf("%-40s max |err| %.2e %s\n", name, err, bad ? "FAIL" : "ok");
        failures += bad;
        return;
    }
    snprintf(name, sizeof name, "bn%s %s%s dweight", lay, mode, relu);
    check(name, c.w, dw, ch, bn_loss, &c, NULL);
    snprintf(name, sizeof name, "bn%s %s%s dbias", lay, mode, relu);
    check(name, c.b, db, ch, bn_loss, &c, NULL);
}

/* ---- relu / add / pools ----------------------------------------------------------- */

struct ew_case {
    struct nn_tensor a, b, out;
    float *r;
    void *ws;
    int kind; /* 0 relu, 1 add+relu, 2 maxpool, 3 avgpool */
};

static double ew_loss(void *p)
{
    struct ew_case *c = p;
    switch (c->kind) {
    case 0: nn_relu_forward(be, &c->out, &c->a); break;
    case 1: nn_add_forward(be, &c->out, &c->a, &c->b, 1); break;
    case 2: nn_maxpool2d_forward(be, &c->out, &c->a, c->ws, 3, 2, 1); break;
    default: nn_avgpool_forward(be, &c->out, &c->a); break;
    }
    return dot(c->out.data, c->r, nn_tensor_bytes(&c->out) / 4);
}

static int ew_skip(void *p, size_t i)
{
    struct ew_case *c = p;
    float a = ((float *)c->a.data)[i];
    if (c->kind == 0) {
        return fabsf(a) < 2 * EPS;
    }
    if (c->kind == 1) {
        return fabsf(a + ((float *)c->b.data)[i]) < 2 * EPS;
    }
    if (c->kind == 2) { /* near a tie with another value: skip */
        size_t n = nn_tensor_bytes(&c->a) / 4;
        const float *x = c->a.data;
        for (size_t j = 0; j < n; j++) {
            if (j != i && fabsf(x[j] - a) < 2 * EPS) {
                return 1;
            }
        }
    }
    return 0;
}

static void test_ew(int kind, enum nn_layout layout)
{
    char name[128];
    struct ew_case c;
    memset(&c, 0, sizeof c);
    int n = 2, ch = 8, h = 7;
    struct nn_tensor plain = nn_tensor_4d(randn((size_t)n * ch * h * h, 1), NN_LAYOUT_NCHW, n, ch, h, h);
    c.a = nn_tensor_4d(zeros(nn_layout_bytes(layout, n, ch, h, h) / 4), layout, n, ch, h, h);
    nn_tensor_convert(&c.a, &plain);
    c.b = c.a;
    c.b.data = randn(nn_tensor_bytes(&c.a) / 4, 1);
    c.kind = kind;
    if (kind <= 1) {
        c.out = c.a;
        c.out.data = zeros(nn_tensor_bytes(&c.a) / 4);
    } else if (kind == 2) {
        int ho = (h + 2 - 3) / 2 + 1;
        c.out = nn_tensor_4d(zeros(nn_layout_bytes(layout, n, ch, ho, ho) / 4), layout, n, ch, ho, ho);
        c.ws = zeros(nn_maxpool2d_workspace_bytes(be, &c.out, &c.a, 3, 2, 1) / 4 + 1);
    } else {
        c.out = nn_tensor_2d(zeros((size_t)n * ch), n, ch);
    }
    c.r = randn(nn_tensor_bytes(&c.out) / 4, 1);
    ew_loss(&c);
    struct nn_tensor da = c.a, dout = c.out;
    da.data = zeros(nn_tensor_bytes(&c.a) / 4);
    dout.data = c.r;
    const char *lay = layout == NN_LAYOUT_NCHW ? "nchw" : "8c";
    switch (kind) {
    case 0: /* in place, as the model uses it */
        memcpy(da.data, dout.data, nn_tensor_bytes(&dout));
        nn_relu_backward(be, &da, &da, &c.out);
        snprintf(name, sizeof name, "relu %s dinp", lay);
        break;
    case 1: {
        nn_relu_backward(be, &da, &dout, &c.out);
        /* the gradient of both summands is the same */
        snprintf(name, sizeof name, "add+relu %s db", lay);
        check(name, c.b.data, da.data, nn_tensor_bytes(&c.a) / 4, ew_loss, &c, ew_skip);
        struct nn_tensor acc = da;
        acc.data = zeros(nn_tensor_bytes(&c.a) / 4);
        nn_accumulate(be, &acc, &da);
        nn_accumulate(be, &acc, &da);
        double err = 0;
        for (size_t i = 0; i < nn_tensor_bytes(&c.a) / 4; i++) {
            err = fmax(err, fabs(((float *)acc.data)[i] - 2 * ((float *)da.data)[i]));
        }
        printf("%-40s max |err| %.2e %s\n", "accumulate", err, err > 1e-6 ? "FAIL" : "ok");
        failures += err > 1e-6;
        snprintf(name, sizeof name, "add+relu %s da", lay);
        break;
    }
    case 2:
        nn_maxpool2d_backward(be, &da, &dout, c.ws, 3, 2, 1);
        snprintf(name, sizeof name, "maxpool3/2/1 %s dinp", lay);
        break;
    default:
        nn_avgpool_backward(be, &da, &dout);
        snprintf(name, sizeof name, "avgpool %s dinp", lay);
        break;
    }
    check(name, c.a.data, da.data, nn_tensor_bytes(&c.a) / 4, ew_loss, &c, ew_skip);
}

/* ---- linear, row ops, losses ------------------------------------------------------- */

struct row_case {
    struct nn_tensor x, out;
    float *w, *b, *r, *norms, *q, *logp;
    int32_t *labels;
    int kind; /* 0 linear, 1 l2norm, 2 log_softmax, 3 swav loss, 4 soft CE, 5 hard CE */
    struct nn_swav_loss_cfg scfg;
};

static double row_loss(void *p)
{
    struct row_case *c = p;
    switch (c->kind) {
    case 0: nn_linear_forward(be, &c->out, &c->x, c->w, c->b); break;
    case 1: nn_l2_normalize_forward(be, &c->out, &c->x, c->norms); break;
    case 2: nn_log_softmax_forward(be, &c->out, &c->x, 2.5f); break;
    case 3: return nn_swav_loss_forward(be, c->logp, &c->x, c->q, &c->scfg);
    case 4: return nn_cross_entropy_soft_forward(be, c->logp, &c->x, c->q);
    default: return nn_cross_entropy_forward(be, c->logp, &c->x, c->labels);
    }
    return dot(c->out.data, c->r, nn_tensor_numel(&c->out));
}

static float *softmax_rows(int n, int k)
{
    float *q = randn((size_t)n * k, 1);
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < k; j++) {
            q[i * k + j] = expf(q[i * k + j]);
            s += q[i * k + j];
        }
        for (int j = 0; j < k; j++) {
            q[i * k + j] /= (float)s;
        }
    }
    return q;
}

static void test_rows(int kind)
{
    struct row_case c;
    memset(&c, 0, sizeof c);
    c.kind = kind;
    int n = 6, d = 10, o = 7;
    static const int assign[2] = {0, 1};
    if (kind == 3) {
        c.scfg = (struct nn_swav_loss_cfg){.n_crops = 4, .bs = 3, .n_assign = 2,
                                           .crops_for_assign = assign, .temperature = 0.1f};
        n = 12;
        d = 5;
        c.q = softmax_rows(2 * 3, d);
    }
    if (kind == 4) {
        c.q = softmax_rows(n, d);
    }
    if (kind == 5) {
        c.labels = malloc(n * sizeof(int32_t));
        for (int i = 0; i < n; i++) {
            c.labels[i] = (int32_t)swav_rng_below(&rng, (uint32_t)d);
        }
    }
    c.x = nn_tensor_2d(randn((size_t)n * d, kind == 3 ? 0.3f : 1), n, d);
    int od = kind == 0 ? o : d;
    c.out = nn_tensor_2d(zeros((size_t)n * od), n, od);
    c.w = randn((size_t)o * d, 0.5f);
    c.b = randn(o, 0.5f);
    c.r = randn((size_t)n * od, 1);
    c.norms = zeros(n);
    c.logp = zeros((size_t)n * d);
    row_loss(&c);
    struct nn_tensor dx = c.x, dout = c.out;
    dx.data = zeros((size_t)n * d);
    dout.data = c.r;
    float *dw = zeros((size_t)o * d), *db = zeros(o);
    const char *names[] = {"linear", "l2_normalize", "log_softmax(x*2.5)", "swav loss (4 crops, 2 assign)",
                           "cross_entropy soft", "cross_entropy hard"};
    char name[128];
    switch (kind) {
    case 0: nn_linear_backward(be, &dx, dw, db, &dout, &c.x, c.w); break;
    case 1: nn_l2_normalize_backward(be, &dx, &dout, &c.out, c.norms); break;
    case 2: nn_log_softmax_backward(be, &dx, &dout, &c.out, 2.5f); break;
    case 3: nn_swav_loss_backward(be, &dx, c.logp, c.q, &c.scfg); break;
    case 4: nn_cross_entropy_soft_backward(be, &dx, c.logp, c.q); break;
    default: nn_cross_entropy_backward(be, &dx, c.logp, c.labels); break;
    }
    snprintf(name, sizeof name, "%s dinp", names[kind]);
    check(name, c.x.data, dx.data, (size_t)n * d, row_loss, &c, NULL);
    if (kind == 0) {
        check("linear dweight", c.w, dw, (size_t)o * d, row_loss, &c, NULL);
        check("linear dbias", c.b, db, o, row_loss, &c, NULL);
    }
}

int main(void)
{
    be = nn_backend_cpu_new(2);
    swav_rng_init(&rng, 1234, 0, 0, 0);
    const enum nn_layout L[2] = {NN_LAYOUT_NCHW, NN_LAYOUT_NCHW8C};
    for (int l = 0; l < 2; l++) {
        test_conv(L[l], L[l], 2, 8, 16, 9, 3, 1, 1);
        test_conv(L[l], L[l], 2, 16, 8, 9, 3, 2, 1);
        test_conv(L[l], L[l], 2, 8, 16, 8, 1, 2, 0);
        test_conv(L[l], L[l], 2, 16, 8, 8, 1, 1, 0);
    }
    /* shapes of a bottleneck's 1x1 convolutions deep in the net */
    test_conv(NN_LAYOUT_NCHW, NN_LAYOUT_NCHW, 6, 384, 96, 4, 1, 1, 0);
    test_conv(NN_LAYOUT_NCHW8C, NN_LAYOUT_NCHW8C, 6, 384, 96, 4, 1, 1, 0);
    /* 3x3 on tiny maps (the end of the net at 32-64 pixels) */
    test_conv(NN_LAYOUT_NCHW8C, NN_LAYOUT_NCHW8C, 4, 16, 16, 2, 3, 1, 1);
    test_conv(NN_LAYOUT_NCHW8C, NN_LAYOUT_NCHW8C, 4, 16, 24, 1, 3, 1, 1);
    test_conv(NN_LAYOUT_NCHW8C, NN_LAYOUT_NCHW8C, 4, 16, 8, 2, 3, 2, 1);
    /* the stem: plain 3-channel input into the blocked layout */
    test_conv(NN_LAYOUT_NCHW, NN_LAYOUT_NCHW8C, 2, 3, 8, 16, 7, 2, 3);
    test_conv(NN_LAYOUT_NCHW, NN_LAYOUT_NCHW, 2, 3, 5, 11, 7, 2, 3);
    /* a 6x6 output map: the im2col weight gradient from a plain input into
     * a blocked output gradient */
    test_conv(NN_LAYOUT_NCHW, NN_LAYOUT_NCHW8C, 2, 3, 8, 11, 7, 2, 3);
    /* 3x3 on blocked maps larger than 7x7: the direct weight gradient
     * (cpu_dw3_tile) on AVX2 machines; stride 2 from odd and even maps
     * (the right edge's taps inside or not), three output blocks over the
     * two threads, and a 40x40 map in bands of 6 rows */
    test_conv(NN_LAYOUT_NCHW8C, NN_LAYOUT_NCHW8C, 2, 16, 24, 17, 3, 2, 1);
    test_conv(NN_LAYOUT_NCHW8C, NN_LAYOUT_NCHW8C, 2, 16, 8, 18, 3, 2, 1);
    test_conv(NN_LAYOUT_NCHW8C, NN_LAYOUT_NCHW8C, 1, 8, 16, 40, 3, 1, 1);
    for (int l = 0; l < 2; l++) {
        test_bn(L[l], 4, 3, 8, 5, NN_BN_TRAIN);
        test_bn(L[l], 4, 3, 8, 5, NN_BN_TRAIN | NN_BN_RELU);
        test_bn(L[l], 4, 3, 8, 5, 0);
    }
    test_bn(NN_LAYOUT_NCHW, 4, 3, 5, 4, NN_BN_TRAIN);
    test_bn(NN_LAYOUT_NC, 2, 7, 6, 1, NN_BN_TRAIN);
    test_bn(NN_LAYOUT_NC, 2, 7, 6, 1, NN_BN_TRAIN | NN_BN_RELU);
    for (int l = 0; l < 2; l++) {
        for (int k = 0; k < 4; k++) {
            test_ew(k, L[l]);
        }
    }
    for (int k = 0; k < 6; k++) {
        test_rows(k);
    }
    nn_backend_destroy(&be);
    printf("%s: %d failing checks\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
