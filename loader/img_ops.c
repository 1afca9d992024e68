/* Single augmentation operations, written to give PIL 9.4's bytes: the same
 * fixed-point resampling, the same float blends and truncations, the same
 * HSV round trip, the same box-blur approximation of the Gaussian.  Plain
 * loops over packed uint8 RGB that gcc vectorizes where it can. */
#include "loader/img_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"

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

void loader_img_resize(struct loader_img_buf *b, uint8_t *dst, int out_w, int out_h,
                       int win_x, int win_y, int win_w, int win_h, const uint8_t *src,
                       int src_w, int src_h, struct loader_box box)
{
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
        for (int y = 0; y < ymax; y++) {
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

/* ImagingBlend(in1 = degenerate, in2 = image, alpha) for one byte pair. */
static inline uint8_t blend1(int in1, int in2, float alpha)
{
    float t = (float)in1 + alpha * (float)(in2 - in1);
    if (alpha >= 0.0f && alpha <= 1.0f) {
        return (uint8_t)t;
    }
    if (t <= 0.0f) {
        return 0;
    }
    if (t >= 255.0f) {
        return 255;
    }
    return (uint8_t)t;
}

static void apply_lut(uint8_t *restrict rgb, size_t n, const uint8_t *restrict lut)
{
    for (size_t i = 0; i < n; i++) {
        rgb[i] = lut[rgb[i]];
    }
}

void loader_img_brightness(uint8_t *rgb, size_t npix, float factor)
{
    uint8_t lut[256];
    for (int v = 0; v < 256; v++) {
        lut[v] = blend1(0, v, factor);
    }
    apply_lut(rgb, npix * 3, lut);
}

/* PIL's rgb2l: ITU-R 601-2 luma in 16-bit fixed point. */
static inline int luma(const uint8_t *p)
{
    return (p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16;
}

void loader_img_contrast(uint8_t *rgb, size_t npix, float factor)
{
    /* ImageStat mean of convert("L"), rounded as int(mean + 0.5) */
    uint64_t sum = 0;
    for (size_t i = 0; i < npix; i++) {
        sum += (uint64_t)luma(rgb + 3 * i);
    }
    double mean = npix ? (double)sum / (double)npix : 0.0;
    int m = (int)(mean + 0.5);
    uint8_t lut[256];
    for (int v = 0; v < 256; v++) {
        lut[v] = blend1(m, v, factor);
    }
    apply_lut(rgb, npix * 3, lut);
}

void loader_img_saturation(uint8_t *rgb, size_t npix, float factor)
{
    for (size_t i = 0; i < npix; i++) {
        uint8_t *p = rgb + 3 * i;
        int l = luma(p);
        p[0] = blend1(l, p[0], factor);
        p[1] = blend1(l, p[1], factor);
        p[2] = blend1(l, p[2], factor);
    }
}

void loader_img_grayscale(uint8_t *rgb, size_t npix)
{
    for (size_t i = 0; i < npix; i++) {
        uint8_t *p = rgb + 3 * i;
        uint8_t l = (uint8_t)luma(p);
        p[0] = p[1] = p[2] = l;
    }
}

static inline uint8_t clip8i(int v)
{
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

void loader_img_hue(uint8_t *rgb, size_t npix, float hue)
{
    /* np.uint8(hue_factor * 255): truncation toward zero, then modulo 256 */
    int shift = (int)((double)hue * 255.0);
    uint8_t dh = (uint8_t)(shift & 0xFF);
    for (size_t i = 0; i < npix; i++) {
        uint8_t *px = rgb + 3 * i;
        /* PIL rgb2hsv_row */
        uint8_t r = px[0], g = px[1], bl = px[2];
        uint8_t maxc = r > g ? r : g;
        maxc = maxc > bl ? maxc : bl;
        uint8_t minc = r < g ? r : g;
        minc = minc < bl ? minc : bl;
        uint8_t uh, us, uv = maxc;
        if (minc == maxc) {
            uh = 0;
            us = 0;
        } else {
            float h, s, rc, gc, bc, cr;
            cr = (float)(maxc - minc);
            s = cr / (float)maxc;
            rc = ((float)(maxc - r)) / cr;
            gc = ((float)(maxc - g)) / cr;
            bc = ((float)(maxc - bl)) / cr;
            if (r == maxc) {
                h = bc - gc;
            } else if (g == maxc) {
                h = (float)(2.0 + rc - bc);
            } else {
                h = (float)(4.0 + gc - rc);
            }
            h = (float)fmod((h / 6.0 + 1.0), 1.0);
            uh = clip8i((int)(h * 255.0));
            us = clip8i((int)(s * 255.0));
        }
        uh = (uint8_t)(uh + dh);
        /* PIL hsv2rgb */
        if (us == 0) {
            px[0] = px[1] = px[2] = uv;
            continue;
        }
        int ii = (int)floor((float)uh * 6.0 / 255.0);
        float f = (float)((float)uh * 6.0 / 255.0 - (float)ii);
        float fs = (float)(((float)us) / 255.0);
        int p = (int)round((float)uv * (1.0 - fs));
        int q = (int)round((float)uv * (1.0 - fs * f));
        int t = (int)round((float)uv * (1.0 - fs * (1.0 - f)));
        uint8_t up = clip8i(p), uq = clip8i(q), ut = clip8i(t);
        switch (ii % 6) {
        case 0: px[0] = uv; px[1] = ut; px[2] = up; break;
        case 1: px[0] = uq; px[1] = uv; px[2] = up; break;
        case 2: px[0] = up; px[1] = uv; px[2] = ut; break;
        case 3: px[0] = up; px[1] = uq; px[2] = uv; break;
        case 4: px[0] = ut; px[1] = up; px[2] = uv; break;
        default: px[0] = uv; px[1] = up; px[2] = uq; break;
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

/* One extended-box pass over each row of a w x h RGB image, in place (the
 * line buffer holds the row's result). */
static void box_blur_rows(uint8_t *img, int w, int h, float fradius, uint8_t *line)
{
    int radius = (int)fradius;
    uint32_t ww = (uint32_t)((float)(1 << 24) / (fradius * 2 + 1));
    uint32_t fw = ((1 << 24) - (radius * 2 + 1) * ww) / 2;
    int edge_a = radius + 1 < w ? radius + 1 : w;
    int edge_b = w - radius - 1 > 0 ? w - radius - 1 : 0;
    int lastx = w - 1;
    for (int y = 0; y < h; y++) {
        const uint8_t *in = img + (size_t)y * w * 3;
        for (int c = 0; c < 3; c++) {
#define IN(x) ((uint32_t)in[(x) * 3 + c])
#define MOVE_ACC(sub, add) acc += IN(add) - IN(sub)
#define SAVE(x, left, right)                                                   \
    line[(x) * 3 + c] = (uint8_t)(((acc * ww) + (IN(left) + IN(right)) * fw + \
                                   (1u << 23)) >> 24)
            uint32_t acc = IN(0) * (uint32_t)(radius + 1);
            for (int x = 0; x < edge_a - 1; x++) {
                acc += IN(x);
            }
            acc += IN(lastx) * (uint32_t)(radius - edge_a + 1);
            if (edge_a <= edge_b) {
                for (int x = 0; x < edge_a; x++) {
                    MOVE_ACC(0, x + radius);
                    SAVE(x, 0, x + radius + 1);
                }
                for (int x = edge_a; x < edge_b; x++) {
                    MOVE_ACC(x - radius - 1, x + radius);
                    SAVE(x, x - radius - 1, x + radius + 1);
                }
                for (int x = edge_b; x <= lastx; x++) {
                    MOVE_ACC(x - radius - 1, lastx);
                    SAVE(x, x - radius - 1, lastx);
                }
            } else {
                for (int x = 0; x < edge_b; x++) {
                    MOVE_ACC(0, x + radius);
                    SAVE(x, 0, x + radius + 1);
                }
                for (int x = edge_b; x < edge_a; x++) {
                    MOVE_ACC(0, lastx);
                    SAVE(x, 0, lastx);
                }
                for (int x = edge_a; x <= lastx; x++) {
                    MOVE_ACC(x - radius - 1, lastx);
                    SAVE(x, x - radius - 1, lastx);
                }
            }
#undef IN
#undef MOVE_ACC
#undef SAVE
        }
        memcpy(img + (size_t)y * w * 3, line, (size_t)w * 3);
    }
}

static void transpose_rgb(uint8_t *restrict dst, const uint8_t *restrict src, int w, int h)
{
    /* src [h][w][3] -> dst [w][h][3] */
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            const uint8_t *s = src + ((size_t)y * w + x) * 3;
            uint8_t *d = dst + ((size_t)x * h + y) * 3;
            d[0] = s[0];
            d[1] = s[1];
            d[2] = s[2];
        }
    }
}

void loader_img_blur(struct loader_img_buf *b, uint8_t *rgb, int w, int h, float radius)
{
    const int passes = 3;
    float r = gaussian_blur_radius(radius, passes);
    if (r == 0.0f) {
        return;
    }
    size_t n = (size_t)w * h * 3;
    b->tr = grow_bytes(b->tr, &b->tr_cap, n);
    size_t ln = (size_t)(w > h ? w : h) * 3;
    b->line = grow_bytes(b->line, &b->line_cap, ln);
    for (int i = 0; i < passes; i++) {
        box_blur_rows(rgb, w, h, r, b->line);
    }
    transpose_rgb(b->tr, rgb, w, h);
    for (int i = 0; i < passes; i++) {
        box_blur_rows(b->tr, h, w, r, b->line);
    }
    transpose_rgb(rgb, b->tr, h, w);
}
