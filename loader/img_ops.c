/* Single augmentation operations, written to give PIL 9.4's bytes: the same
 * fixed-point resampling, the same float blends and truncations, the same
 * HSV round trip, the same box-blur approximation of the Gaussian.  Plain
 * loops over packed uint8 RGB that gcc vectorizes where it can. */
#include "loader/img_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"

/* The hot loops are built twice, for AVX2 and for the baseline, and picked
 * at load time (gcc's target_clones; one binary for every x86-64). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define HOT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define HOT_CLONES
#endif

static void *grow_bytes(void *p, size_t *cap, size_t need)
{
    if (*cap >= need) {
        return p;
    }
    free(p);
    size_t c = need + need / 2 + 64;
    *cap = c;
    return swav_xmalloc(c);
}

void loader_img_buf_free(struct loader_img_buf *b)
{
    free(b->coef_d);
    free(b->kx);
    free(b->ky);
    free(b->bx);
    free(b->by);
    free(b->tmp);
    free(b->tr);
    free(b->line);
    free(b->kp);
    free(b->x0);
    memset(b, 0, sizeof(*b));
}

/* ---- RandomResizedCrop.get_params ------------------------------------------ */

void loader_rrc_params(struct swav_rng *rng, int width, int height, double min_scale,
                       double max_scale, struct loader_box *box)
{
    double area = (double)height * (double)width;
    /* torch draws in float32: uniform_(a, b) = a + (b - a) * u, log and exp of
     * a float32 tensor. */
    const float lr0 = logf(3.0f / 4.0f), lr1 = logf(4.0f / 3.0f);
    const float s0 = (float)min_scale, s1 = (float)max_scale;
    for (int t = 0; t < 10; t++) {
        float u = (float)swav_rng_uniform(rng);
        float sc = s0 + (s1 - s0) * u;
        double target_area = area * (double)sc;
        float v = (float)swav_rng_uniform(rng);
        double aspect = (double)expf(lr0 + (lr1 - lr0) * v);
        /* Python's round(): half to even, as nearbyint in the default mode. */
        int w = (int)nearbyint(sqrt(target_area * aspect));
        int h = (int)nearbyint(sqrt(target_area / aspect));
        if (w > 0 && w <= width && h > 0 && h <= height) {
            box->top = (int)swav_rng_below(rng, (uint32_t)(height - h + 1));
            box->left = (int)swav_rng_below(rng, (uint32_t)(width - w + 1));
            box->height = h;
            box->width = w;
            return;
        }
    }
    double in_ratio = (double)width / (double)height;
    int w, h;
    if (in_ratio < 3.0 / 4.0) {
        w = width;
        h = (int)nearbyint(w / (3.0 / 4.0));
    } else if (in_ratio > 4.0 / 3.0) {
        h = height;
        w = (int)nearbyint(h * (4.0 / 3.0));
    } else {
        w = width;
        h = height;
    }
    box->top = (height - h) / 2;
    box->left = (width - w) / 2;
    box->height = h;
    box->width = w;
}

/* ---- resampling (PIL Resample.c semantics) ---------------------------------- */

#define PRECISION_BITS (32 - 8 - 2)

static double bilinear_filter(double x)
{
    if (x < 0.0) {
        x = -x;
    }
    if (x < 1.0) {
        return 1.0 - x;
    }
    return 0.0;
}

/* Coefficients for output positions [0, out_size) over input [in0, in1) of an
 * axis of in_size pixels; returns ksize.  Bounds are relative to 0. */
static int precompute_coeffs(struct loader_img_buf *b, int in_size, double in0, double in1,
                             int out_size, int32_t **kk_out, size_t *kk_cap, int **bounds,
                             size_t *bounds_cap)
{
    const double support_base = 1.0;
    double scale = (in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = support_base * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    size_t n = (size_t)out_size * (size_t)ksize;
    b->coef_d = grow_bytes(b->coef_d, &b->coef_cap, n * sizeof(double));
    *kk_out = grow_bytes(*kk_out, kk_cap, n * sizeof(int32_t));
    *bounds = grow_bytes(*bounds, bounds_cap, (size_t)out_size * 2 * sizeof(int));
    double *kd = b->coef_d;
    int32_t *kk = *kk_out;
    int *bd = *bounds;
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0;
        double ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) {
            xmin = 0;
        }
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) {
            xmax = in_size;
        }
        xmax -= xmin;
        double *k = &kd[(size_t)xx * ksize];
        int x;
        for (x = 0; x < xmax; x++) {
            double w = bilinear_filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++) {
            if (ww != 0.0) {
                k[x] /= ww;
            }
        }
        for (; x < ksize; x++) {
            k[x] = 0;
        }
        bd[xx * 2] = xmin;
        bd[xx * 2 + 1] = xmax;
    }
    for (size_t i = 0; i < n; i++) {
        double v = kd[i];
        kk[i] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                      : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
    }
    return ksize;
}

static inline uint8_t clip8(int32_t in)
{
    if (in >= (1 << PRECISION_BITS << 8)) {
        return 255;
    }
    if (in <= 0) {
        return 0;
    }
    return (uint8_t)(in >> PRECISION_BITS);
}

typedef int32_t v4si __attribute__((vector_size(16)));

static inline __attribute__((always_inline)) void hrow_scalar(uint8_t *restrict o,
                                                              const uint8_t *restrict in,
                                                              const int32_t *restrict kp,
                                                              const int *restrict x0s,
                                                              int from, int to, const int K)
{
    for (int xx = from; xx < to; xx++) {
        const int32_t *k = kp + (size_t)xx * K;
        const uint8_t *p = in + (size_t)x0s[xx] * 3;
        int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < K; x++) {
            s0 += p[3 * x] * k[x];
            s1 += p[3 * x + 1] * k[x];
            s2 += p[3 * x + 2] * k[x];
        }
        o[xx * 3] = clip8(s0);
        o[xx * 3 + 1] = clip8(s1);
        o[xx * 3 + 2] = clip8(s2);
    }
}

/* One row of the horizontal pass with K taps per output pixel (K constant
 * at the call sites, so the loop unrolls).  A pixel's three channels go
 * through one 4-lane vector; the fourth lane reads the next pixel's first
 * byte and is dropped, so the vector path is taken only where that byte
 * exists in the row (outputs [v_lo, v_hi)), the rest in scalar code. */
static inline __attribute__((always_inline)) void hrow_fixed(uint8_t *restrict o,
                                                             const uint8_t *restrict in,
                                                             const int32_t *restrict kp,
                                                             const int *restrict x0s, int n,
                                                             int v_lo, int v_hi, const int K)
{
    hrow_scalar(o, in, kp, x0s, 0, v_lo, K);
    for (int xx = v_lo; xx < v_hi; xx++) {
        const int32_t *k = kp + (size_t)xx * K;
        const uint8_t *p = in + (size_t)x0s[xx] * 3;
        v4si acc = {1 << (PRECISION_BITS - 1), 1 << (PRECISION_BITS - 1),
                    1 << (PRECISION_BITS - 1), 0};
        for (int x = 0; x < K; x++) {
            const uint8_t *q = p + 3 * x;
            v4si px = {q[0], q[1], q[2], q[3]};
            acc += px * k[x];
        }
        /* clip8 on all lanes: clamp(acc >> 22, 0, 255) is the same function */
        v4si sh = acc >> PRECISION_BITS;
        sh &= ~(sh < 0);
        v4si big = sh > 255;
        sh = (sh & ~big) | (255 & big);
        o[xx * 3] = (uint8_t)sh[0];
        o[xx * 3 + 1] = (uint8_t)sh[1];
        o[xx * 3 + 2] = (uint8_t)sh[2];
    }
    hrow_scalar(o, in, kp, x0s, v_hi, n, K);
}

HOT_CLONES
void loader_img_resize_flip(struct loader_img_buf *b, uint8_t *dst, int out_w, int out_h,
                            int win_x, int win_y, int win_w, int win_h, const uint8_t *src,
                            int src_w, int src_h, struct loader_box box, int hflip)
{
    SWAV_ASSERT(!hflip || (win_x == 0 && win_w == out_w));
    SWAV_ASSERT(box.left >= 0 && box.top >= 0 && box.width > 0 && box.height > 0 &&
                box.left + box.width <= src_w && box.top + box.height <= src_h);
    SWAV_ASSERT(win_x >= 0 && win_y >= 0 && win_x + win_w <= out_w && win_y + win_h <= out_h);
    const size_t sstride = (size_t)src_w * 3;
    /* The crop is its own image: coordinates relative to the box, clamped to it. */
    const uint8_t *base = src + (size_t)box.top * sstride + (size_t)box.left * 3;
    int ksx = precompute_coeffs(b, box.width, 0.0, box.width, out_w, &b->kx, &b->kx_cap,
                                &b->bx, &b->bx_cap);
    int ksy = precompute_coeffs(b, box.height, 0.0, box.height, out_h, &b->ky, &b->ky_cap,
                                &b->by, &b->by_cap);
    int need_h = out_w != box.width;
    int need_v = out_h != box.height;
    /* source rows used by the output window */
    int y_first = b->by[win_y * 2];
    int y_last = b->by[(win_y + win_h - 1) * 2] + b->by[(win_y + win_h - 1) * 2 + 1];
    if (!need_v) {
        y_first = win_y;
        y_last = win_y + win_h;
    }
    const uint8_t *rows; /* [y_last - y_first][win_w][3], relative to y_first */
    size_t rstride;
    if (need_h) {
        size_t n = (size_t)(y_last - y_first) * (size_t)win_w * 3;
        b->tmp = grow_bytes(b->tmp, &b->tmp_cap, n);
        uint8_t *t = b->tmp;
        /* Zero-padded taps of a fixed count kt from x0, so that the inner loop
         * has a constant trip count: kt is the widest run of nonzero
         * coefficients (PIL's zero taps add nothing, its sums are the same). */
        int kt = 1;
        for (int xx = win_x; xx < win_x + win_w; xx++) {
            const int32_t *k = &b->kx[(size_t)xx * ksx];
            int xmax = b->bx[xx * 2 + 1], f = 0, l = xmax - 1;
            while (f < xmax && k[f] == 0) f++;
            while (l >= f && k[l] == 0) l--;
            if (l - f + 1 > kt) kt = l - f + 1;
        }
        if (box.width >= kt) {
            const int ksx_pad = kt;
            b->kp = grow_bytes(b->kp, &b->kp_cap, (size_t)win_w * ksx_pad * sizeof(int32_t));
            b->x0 = grow_bytes(b->x0, &b->x0_cap, (size_t)win_w * sizeof(int));
            for (int xx = win_x; xx < win_x + win_w; xx++) {
                int xmin = b->bx[xx * 2], xmax = b->bx[xx * 2 + 1];
                const int32_t *k = &b->kx[(size_t)xx * ksx];
                int f = 0;
                while (f < xmax && k[f] == 0) f++;
                int start = xmin + f;
                int x0 = start + ksx_pad > box.width ? box.width - ksx_pad : start;
                /* a mirrored output takes its taps in reverse order: the
                 * rows come out flipped at no cost */
                int slot = hflip ? win_w - 1 - (xx - win_x) : xx - win_x;
                int32_t *kp = &b->kp[(size_t)slot * ksx_pad];
                for (int j = 0; j < ksx_pad; j++) {
                    int src_j = x0 + j - xmin; /* index into k */
                    kp[j] = src_j >= 0 && src_j < xmax ? k[src_j] : 0;
                }
                b->x0[slot] = x0;
            }
            /* outputs whose last tap is not the row's last pixel: a prefix
             * of them, or a suffix when mirrored */
            int v_lo = 0, v_hi = win_w;
            if (!hflip) {
                v_hi = 0;
                while (v_hi < win_w && box.left + b->x0[v_hi] + ksx_pad < src_w) v_hi++;
            } else {
                while (v_lo < win_w && box.left + b->x0[v_lo] + ksx_pad >= src_w) v_lo++;
            }
            hflip = 0; /* done */
            for (int y = y_first; y < y_last; y++) {
                const uint8_t *in = base + (size_t)y * sstride;
                uint8_t *o = t + (size_t)(y - y_first) * win_w * 3;
                switch (ksx_pad) {
                case 1: hrow_fixed(o, in, b->kp, b->x0, win_w, v_lo, v_hi, 1); break;
                case 2: hrow_fixed(o, in, b->kp, b->x0, win_w, v_lo, v_hi, 2); break;
                case 3: hrow_fixed(o, in, b->kp, b->x0, win_w, v_lo, v_hi, 3); break;
                case 4: hrow_fixed(o, in, b->kp, b->x0, win_w, v_lo, v_hi, 4); break;
                case 5: hrow_fixed(o, in, b->kp, b->x0, win_w, v_lo, v_hi, 5); break;
                case 6: hrow_fixed(o, in, b->kp, b->x0, win_w, v_lo, v_hi, 6); break;
                default: hrow_fixed(o, in, b->kp, b->x0, win_w, v_lo, v_hi, ksx_pad); break;
                }
            }
        } else {
            for (int y = y_first; y < y_last; y++) {
                const uint8_t *in = base + (size_t)y * sstride;
                uint8_t *o = t + (size_t)(y - y_first) * win_w * 3;
                for (int xx = win_x; xx < win_x + win_w; xx++) {
                    int xmin = b->bx[xx * 2], xmax = b->bx[xx * 2 + 1];
                    const int32_t *k = &b->kx[(size_t)xx * ksx];
                    int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                    const uint8_t *p = in + (size_t)xmin * 3;
                    for (int x = 0; x < xmax; x++) {
                        s0 += p[3 * x] * k[x];
                        s1 += p[3 * x + 1] * k[x];
                        s2 += p[3 * x + 2] * k[x];
                    }
                    o[(xx - win_x) * 3] = clip8(s0);
                    o[(xx - win_x) * 3 + 1] = clip8(s1);
                    o[(xx - win_x) * 3 + 2] = clip8(s2);
                }
            }
        }
        rows = t;
        rstride = (size_t)win_w * 3;
    } else {
        rows = base + (size_t)y_first * sstride + (size_t)win_x * 3;
        rstride = sstride;
    }
    const size_t dstride = (size_t)win_w * 3;
    if (!need_v) {
        for (int y = 0; y < win_h; y++) {
            memcpy(dst + (size_t)y * dstride, rows + (size_t)y * rstride, dstride);
        }
        if (hflip) loader_img_flip(dst, win_w, win_h);
        return;
    }
    const int wn = win_w * 3;
    b->line = grow_bytes(b->line, &b->line_cap, (size_t)wn * sizeof(int32_t));
    int32_t *acc_buf = (int32_t *)(void *)b->line;
    for (int yy = win_y; yy < win_y + win_h; yy++) {
        int ymin = b->by[yy * 2] - y_first, ymax = b->by[yy * 2 + 1];
        const int32_t *k = &b->ky[(size_t)yy * ksy];
        uint8_t *restrict o = dst + (size_t)(yy - win_y) * dstride;
        /* column sums, vectorized over the row */
        int32_t *restrict acc = acc_buf;
        for (int x = 0; x < wn; x++) {
            acc[x] = 1 << (PRECISION_BITS - 1);
        }
        /* zero taps add nothing: skip the rows they would weigh */
        int y0 = 0, y1 = ymax;
        while (y0 < y1 && k[y0] == 0) y0++;
        while (y1 > y0 && k[y1 - 1] == 0) y1--;
        for (int y = y0; y < y1; y++) {
            const uint8_t *restrict r = rows + (size_t)(ymin + y) * rstride;
            int32_t kv = k[y];
            for (int x = 0; x < wn; x++) {
                acc[x] += r[x] * kv;
            }
        }
        for (int x = 0; x < wn; x++) {
            o[x] = clip8(acc[x]);
        }
    }
    if (hflip) loader_img_flip(dst, win_w, win_h);
}

void loader_img_resize(struct loader_img_buf *b, uint8_t *dst, int out_w, int out_h,
                       int win_x, int win_y, int win_w, int win_h, const uint8_t *src,
                       int src_w, int src_h, struct loader_box box)
{
    loader_img_resize_flip(b, dst, out_w, out_h, win_x, win_y, win_w, win_h, src, src_w, src_h,
                           box, 0);
}

/* ---- flip and color --------------------------------------------------------- */

void loader_img_flip(uint8_t *rgb, int w, int h)
{
    for (int y = 0; y < h; y++) {
        uint8_t *r = rgb + (size_t)y * w * 3;
        for (int a = 0, z = w - 1; a < z; a++, z--) {
            uint8_t t0 = r[3 * a], t1 = r[3 * a + 1], t2 = r[3 * a + 2];
            r[3 * a] = r[3 * z];
            r[3 * a + 1] = r[3 * z + 1];
            r[3 * a + 2] = r[3 * z + 2];
            r[3 * z] = t0;
            r[3 * z + 1] = t1;
            r[3 * z + 2] = t2;
        }
    }
}

/* ImagingBlend(in1 = degenerate, in2 = image, alpha) for one byte pair.  PIL
 * truncates directly when 0 <= alpha <= 1 and clamps first otherwise; since
 * the float result then always lies in [0, 255], clamping in both cases gives
 * the same bytes and lets the loops vectorize. */
static inline uint8_t blend1(int in1, int in2, float alpha)
{
    float t = (float)in1 + alpha * (float)(in2 - in1);
    t = t < 0.0f ? 0.0f : t;
    t = t > 255.0f ? 255.0f : t;
    return (uint8_t)(int)t;
}

/* Image.blend with a constant degenerate image: every byte c becomes
 * blend1(in1, c, alpha), computed (vectorized) rather than looked up, since
 * AVX2 has no byte gather. */
static inline __attribute__((always_inline)) void blend_const(uint8_t *restrict p, size_t n,
                                                              int in1, float alpha)
{
    const float d = (float)in1;
    for (size_t i = 0; i < n; i++) {
        float t = d + alpha * ((float)p[i] - d);
        t = t < 0.0f ? 0.0f : t;
        t = t > 255.0f ? 255.0f : t;
        p[i] = (uint8_t)(int)t;
    }
}

HOT_CLONES
void loader_img_brightness(uint8_t *rgb, size_t npix, float factor)
{
    blend_const(rgb, npix * 3, 0, factor);
}

/* Color ops run over chunks of pixels split into channel arrays, so that
 * each step is a plain loop gcc vectorizes. */
#define COLOR_CHUNK 64

static inline __attribute__((always_inline)) void deinterleave(int32_t *restrict r,
                                                               int32_t *restrict g,
                                                               int32_t *restrict b,
                                                               const uint8_t *restrict px, int n)
{
    for (int i = 0; i < n; i++) {
        r[i] = px[3 * i];
        g[i] = px[3 * i + 1];
        b[i] = px[3 * i + 2];
    }
}

static inline __attribute__((always_inline)) void interleave(uint8_t *restrict px,
                                                             const int32_t *restrict r,
                                                             const int32_t *restrict g,
                                                             const int32_t *restrict b, int n)
{
    for (int i = 0; i < n; i++) {
        px[3 * i] = (uint8_t)r[i];
        px[3 * i + 1] = (uint8_t)g[i];
        px[3 * i + 2] = (uint8_t)b[i];
    }
}

/* PIL's rgb2l: ITU-R 601-2 luma in 16-bit fixed point. */
static inline int luma(const uint8_t *p)
{
    return (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16;
}

HOT_CLONES
void loader_img_contrast(uint8_t *rgb, size_t npix, float factor)
{
    /* ImageStat mean of convert("L"), rounded as int(mean + 0.5) */
    uint64_t sum = 0;
    for (size_t c0 = 0; c0 < npix; c0 += COLOR_CHUNK) {
        const int n = npix - c0 < COLOR_CHUNK ? (int)(npix - c0) : COLOR_CHUNK;
        const uint8_t *px = rgb + 3 * c0;
        int32_t R[COLOR_CHUNK], G[COLOR_CHUNK], B[COLOR_CHUNK];
        deinterleave(R, G, B, px, n);
        uint32_t part = 0;
        for (int i = 0; i < n; i++) {
            part += (uint32_t)((R[i] * 19595 + G[i] * 38470 + B[i] * 7471 + 0x8000) >> 16);
        }
        sum += part;
    }
    double mean = npix ? (double)sum / (double)npix : 0.0;
    int m = (int)(mean + 0.5);
    blend_const(rgb, npix * 3, m, factor);
}

HOT_CLONES
void loader_img_saturation(uint8_t *rgb, size_t npix, float factor)
{
    /* blend with convert("L").convert("RGB"): each channel against the
     * pixel's own luma */
    for (size_t c0 = 0; c0 < npix; c0 += COLOR_CHUNK) {
        const int n = npix - c0 < COLOR_CHUNK ? (int)(npix - c0) : COLOR_CHUNK;
        uint8_t *px = rgb + 3 * c0;
        int32_t R[COLOR_CHUNK], G[COLOR_CHUNK], B[COLOR_CHUNK];
        deinterleave(R, G, B, px, n);
        for (int i = 0; i < n; i++) {
            int l = (R[i] * 19595 + G[i] * 38470 + B[i] * 7471 + 0x8000) >> 16;
            float lf = (float)l;
            float tr = lf + factor * (float)(R[i] - l);
            float tg = lf + factor * (float)(G[i] - l);
            float tb = lf + factor * (float)(B[i] - l);
            tr = tr < 0.0f ? 0.0f : (tr > 255.0f ? 255.0f : tr);
            tg = tg < 0.0f ? 0.0f : (tg > 255.0f ? 255.0f : tg);
            tb = tb < 0.0f ? 0.0f : (tb > 255.0f ? 255.0f : tb);
            R[i] = (int)tr;
            G[i] = (int)tg;
            B[i] = (int)tb;
        }
        interleave(px, R, G, B, n);
    }
}

HOT_CLONES
void loader_img_grayscale(uint8_t *rgb, size_t npix)
{
    for (size_t i = 0; i < npix; i++) {
        uint8_t *p = rgb + 3 * i;
        uint8_t l = (uint8_t)luma(p);
        p[0] = p[1] = p[2] = l;
    }
}

/* The HSV round trip in chunks of pixels, each step a plain loop over
 * arrays so that gcc vectorizes it (divisions included: IEEE division gives
 * the same quotient in a vector lane as in scalar code).  Every float/double
 * step is PIL's, in PIL's precision. */
#define HUE_CHUNK 64

HOT_CLONES
void loader_img_hue(uint8_t *rgb, size_t npix, float hue)
{
    /* np.uint8(hue_factor * 255): truncation toward zero, then modulo 256 */
    int shift = (int)((double)hue * 255.0);
    const int dh = shift & 0xFF;
    for (size_t c0 = 0; c0 < npix; c0 += HUE_CHUNK) {
        const int n = npix - c0 < HUE_CHUNK ? (int)(npix - c0) : HUE_CHUNK;
        uint8_t *px = rgb + 3 * c0;
        int32_t R[HUE_CHUNK], G[HUE_CHUNK], B[HUE_CHUNK], V[HUE_CHUNK], UH[HUE_CHUNK],
            US[HUE_CHUNK], QT[HUE_CHUNK];
        for (int i = 0; i < n; i++) {
            R[i] = px[3 * i];
            G[i] = px[3 * i + 1];
            B[i] = px[3 * i + 2];
        }
        /* rgb2hsv_row */
        for (int i = 0; i < n; i++) {
            int r = R[i], g = G[i], b = B[i];
            int maxc = r > g ? r : g;
            maxc = maxc > b ? maxc : b;
            int minc = r < g ? r : g;
            minc = minc < b ? minc : b;
            int cri = maxc - minc;
            float cr = (float)(cri == 0 ? 1 : cri);
            float mx = (float)(maxc == 0 ? 1 : maxc);
            float sv = (float)cri / mx;
            float rc = (float)(maxc - r) / cr;
            float gc = (float)(maxc - g) / cr;
            float bc = (float)(maxc - b) / cr;
            float hr = bc - gc;
            float hg = (float)(2.0 + (double)rc - (double)bc);
            float hb = (float)(4.0 + (double)gc - (double)rc);
            float h = r == maxc ? hr : (g == maxc ? hg : hb);
            double x = (double)h / 6.0 + 1.0;
            float hf = (float)(x >= 1.0 ? x - 1.0 : x);
            int ih = (int)((double)hf * 255.0);
            int is = (int)((double)sv * 255.0);
            ih = ih > 255 ? 255 : ih;
            is = is > 255 ? 255 : is;
            /* gray pixels: h = s = 0 */
            UH[i] = cri == 0 ? dh : ((ih + dh) & 0xFF);
            US[i] = cri == 0 ? 0 : is;
            V[i] = maxc;
        }
        /* hsv2rgb: p and the q-or-t value, and which goes where */
        int32_t P[HUE_CHUNK], SEC[HUE_CHUNK];
        for (int i = 0; i < n; i++) {
            int uh = UH[i];
            float fs = (float)((float)US[i] / 255.0);
            int ii = (int)((float)uh * 6.0 / 255.0); /* floor: the value is >= 0 */
            float f = (float)((float)uh * 6.0 / 255.0 - (float)ii);
            /* q: v(1 - fs*f) with a float product; t: v(1 - fs*(1 - f)) in double */
            double m = (ii & 1) ? (double)(float)(fs * f) : (double)fs * (1.0 - f);
            double vv = (double)(float)V[i];
            double y = vv * (1.0 - m);
            int t = (int)y;
            t = (y - (double)t) >= 0.5 ? t + 1 : t;
            QT[i] = t < 0 ? 0 : (t > 255 ? 255 : t);
            double yp = vv * (1.0 - (double)fs);
            int pp = (int)yp;
            pp = (yp - (double)pp) >= 0.5 ? pp + 1 : pp;
            P[i] = pp < 0 ? 0 : (pp > 255 ? 255 : pp);
            SEC[i] = ii >= 6 ? ii - 6 : ii;
        }
        /* sector -> (r, g, b): 0 (v,t,p) 1 (q,v,p) 2 (p,v,t) 3 (p,q,v) 4 (t,p,v)
         * 5 (v,p,q); s == 0 -> (v,v,v) */
        for (int i = 0; i < n; i++) {
            int sec = SEC[i], v = V[i], pv = P[i], qt = QT[i];
            int gray = US[i] == 0;
            /* bit k of each mask: sector k takes v / p there (else q-or-t) */
            int vm0 = (0x21 >> sec) & 1, pm0 = (0x0C >> sec) & 1;
            int vm1 = (0x06 >> sec) & 1, pm1 = (0x30 >> sec) & 1;
            int vm2 = (0x18 >> sec) & 1, pm2 = (0x03 >> sec) & 1;
            int k0 = vm0 ? v : (pm0 ? pv : qt);
            int k1 = vm1 ? v : (pm1 ? pv : qt);
            int k2 = vm2 ? v : (pm2 ? pv : qt);
            R[i] = gray ? v : k0;
            G[i] = gray ? v : k1;
            B[i] = gray ? v : k2;
        }
        for (int i = 0; i < n; i++) {
            px[3 * i] = (uint8_t)R[i];
            px[3 * i + 1] = (uint8_t)G[i];
            px[3 * i + 2] = (uint8_t)B[i];
        }
    }
}

/* ---- Gaussian blur (PIL BoxBlur.c) ------------------------------------------ */

static float gaussian_blur_radius(float radius, int passes)
{
    float sigma2, L, l, a;
    sigma2 = radius * radius / passes;
    L = (float)sqrt(12.0 * sigma2 + 1.0);
    l = (float)floor((L - 1.0) / 2.0);
    a = (2 * l + 1) * (l * (l + 1) - 3 * sigma2);
    a /= 6 * (sigma2 - (l + 1) * (l + 1));
    return l + a;
}

/* PIL's box weights for a fractional radius: ww for the 2r+1 inner taps, fw
 * for the two outer ones, 24-bit fixed point. */
struct box_weights {
    int radius;
    uint32_t ww, fw;
};

static struct box_weights box_weights_of(float fradius)
{
    struct box_weights bw;
    bw.radius = (int)fradius;
    bw.ww = (uint32_t)((float)(1 << 24) / (fradius * 2 + 1));
    bw.fw = ((1 << 24) - (bw.radius * 2 + 1) * bw.ww) / 2;
    return bw;
}

/* One extended-box pass (PIL's ImagingLineBoxBlur) along every column of a
 * w x h RGB image, computed a whole row at a time so that the loops run over
 * contiguous bytes; per column the arithmetic is PIL's.  src and dst are
 * distinct. */
static inline __attribute__((always_inline)) void box_blur_cols(uint8_t *restrict dst, const uint8_t *restrict src, int w, int h,
                          struct box_weights bw, uint32_t *restrict acc)
{
    const int radius = bw.radius;
    const uint32_t ww = bw.ww, fw = bw.fw;
    const int n = w * 3;
    const int lasty = h - 1;
    int edge_a = radius + 1 < h ? radius + 1 : h;
#define ROW(y) (src + (size_t)(y) * n)
    {
        const uint8_t *r0 = ROW(0), *rl = ROW(lasty);
        for (int x = 0; x < n; x++) {
            acc[x] = (uint32_t)r0[x] * (uint32_t)(radius + 1) +
                     (uint32_t)rl[x] * (uint32_t)(radius - edge_a + 1);
        }
        for (int y = 0; y < edge_a - 1; y++) {
            const uint8_t *r = ROW(y);
            for (int x = 0; x < n; x++) acc[x] += r[x];
        }
    }
    for (int y = 0; y < h; y++) {
        /* the rows PIL's three loops subtract / add / weigh at the far ends */
        int sub = y - radius - 1 < 0 ? 0 : y - radius - 1;
        int add = y + radius > lasty ? lasty : y + radius;
        int right = y + radius + 1 > lasty ? lasty : y + radius + 1;
        const uint8_t *restrict rs = ROW(sub), *restrict ra = ROW(add), *restrict rr = ROW(right);
        uint8_t *restrict o = dst + (size_t)y * n;
        for (int x = 0; x < n; x++) {
            uint32_t a = acc[x] + (uint32_t)ra[x] - (uint32_t)rs[x];
            acc[x] = a;
            o[x] = (uint8_t)((a * ww + ((uint32_t)rs[x] + (uint32_t)rr[x]) * fw + (1u << 23)) >> 24);
        }
    }
#undef ROW
}

static void transpose_rgb(uint8_t *restrict dst, const uint8_t *restrict src, int w, int h)
{
    /* src [h][w][3] -> dst [w][h][3], in tiles for the caches */
    enum { T = 16 };
    for (int y0 = 0; y0 < h; y0 += T) {
        int y1 = y0 + T < h ? y0 + T : h;
        for (int x0 = 0; x0 < w; x0 += T) {
            int x1 = x0 + T < w ? x0 + T : w;
            for (int y = y0; y < y1; y++) {
                for (int x = x0; x < x1; x++) {
                    const uint8_t *sp = src + ((size_t)y * w + x) * 3;
                    uint8_t *d = dst + ((size_t)x * h + y) * 3;
                    d[0] = sp[0];
                    d[1] = sp[1];
                    d[2] = sp[2];
                }
            }
        }
    }
}

/* Three box passes along the rows, then three along the columns, as PIL
 * (which transposes for the second direction).  Here every pass runs down
 * the columns, a whole row of bytes at a time, so it vectorizes: the rows
 * are blurred as the columns of the transposed image. */
HOT_CLONES
void loader_img_blur(struct loader_img_buf *b, uint8_t *rgb, int w, int h, float radius)
{
    const int passes = 3;
    float r = gaussian_blur_radius(radius, passes);
    if (r == 0.0f) {
        return;
    }
    struct box_weights bw = box_weights_of(r);
    size_t n = (size_t)w * h * 3;
    b->tr = grow_bytes(b->tr, &b->tr_cap, 2 * n);
    uint8_t *t1 = b->tr, *t2 = b->tr + n;
    size_t ln = (size_t)(w > h ? w : h) * 3 * sizeof(uint32_t);
    b->line = grow_bytes(b->line, &b->line_cap, ln);
    uint32_t *acc = (uint32_t *)(void *)b->line;
    /* rows: the transposed image is h wide and w tall */
    transpose_rgb(t1, rgb, w, h);
    box_blur_cols(t2, t1, h, w, bw, acc);
    box_blur_cols(t1, t2, h, w, bw, acc);
    box_blur_cols(t2, t1, h, w, bw, acc);
    transpose_rgb(t1, t2, h, w);
    /* columns */
    box_blur_cols(rgb, t1, w, h, bw, acc);
    box_blur_cols(t1, rgb, w, h, bw, acc);
    box_blur_cols(rgb, t1, w, h, bw, acc);
}
