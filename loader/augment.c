/* Multi-crop augmentation: see augment.h.  One decode per image; each crop
 * is resampled straight into its output slot and the color operations run
 * in place there, in uint8, with PIL's arithmetic (img_ops.c). */
#include "loader/augment.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"
#include "loader/img_ops.h"

struct loader_scratch {
    struct loader_decoder *dec;
    struct loader_img_buf buf;
};

static enum loader_status spec_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum loader_status spec_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        int n = snprintf(err, errlen, "bad crop spec: ");
        if (n >= 0 && (size_t)n < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return LOADER_ERR_SPEC;
}

int loader_crop_spec_total(const struct loader_crop_spec *spec)
{
    int n = 0;
    for (int g = 0; g < spec->ngroups && g < LOADER_MAX_GROUPS; g++) {
        n += spec->nmb_crops[g];
    }
    return n;
}

enum loader_status loader_crop_spec_check(const struct loader_crop_spec *spec, char *err,
                                          size_t errlen)
{
    if (spec->mode < LOADER_MODE_SWAV || spec->mode > LOADER_MODE_EVAL_VAL) {
        return spec_fail(err, errlen, "mode %d", spec->mode);
    }
    if (spec->ngroups < 1 || spec->ngroups > LOADER_MAX_GROUPS) {
        return spec_fail(err, errlen, "%d groups (1..%d)", spec->ngroups, LOADER_MAX_GROUPS);
    }
    if (spec->mode != LOADER_MODE_SWAV && (spec->ngroups != 1 || spec->nmb_crops[0] != 1)) {
        return spec_fail(err, errlen, "evaluation modes take one group of one crop");
    }
    for (int g = 0; g < spec->ngroups; g++) {
        if (spec->nmb_crops[g] < 1 || spec->nmb_crops[g] > 64) {
            return spec_fail(err, errlen, "group %d: %d crops (1..64)", g, spec->nmb_crops[g]);
        }
        if (spec->size_crops[g] < 1 || spec->size_crops[g] > LOADER_MAX_CROP_SIZE) {
            return spec_fail(err, errlen, "group %d: crop size %d (1..%d)", g,
                             spec->size_crops[g], LOADER_MAX_CROP_SIZE);
        }
        if (spec->mode != LOADER_MODE_EVAL_VAL) {
            double a = spec->min_scale[g], b = spec->max_scale[g];
            if (!(a > 0.0 && a <= b && b <= 1.0)) {
                return spec_fail(err, errlen, "group %d: scale (%g, %g) not in 0 < min <= max <= 1",
                                 g, a, b);
            }
        }
    }
    if (spec->mode == LOADER_MODE_EVAL_VAL &&
        (spec->resize < 1 || spec->resize > 4 * LOADER_MAX_CROP_SIZE)) {
        return spec_fail(err, errlen, "resize %d (1..%d)", spec->resize, 4 * LOADER_MAX_CROP_SIZE);
    }
    return LOADER_OK;
}

struct loader_scratch *loader_scratch_new(void)
{
    struct loader_scratch *s = swav_xcalloc(1, sizeof(*s));
    s->dec = loader_decoder_new();
    return s;
}

void loader_scratch_destroy(struct loader_scratch **s)
{
    if (!s || !*s) {
        return;
    }
    loader_decoder_destroy(&(*s)->dec);
    loader_img_buf_free(&(*s)->buf);
    free(*s);
    *s = NULL;
}

/* torch.empty(1).uniform_(a, b) in float32 */
static float uniform_f32(struct swav_rng *r, float a, float b)
{
    return a + (b - a) * (float)swav_rng_uniform(r);
}

/* get_color_distortion(1.0) then PILRandomGaussianBlur, on one S x S crop. */
static void color_and_blur(struct loader_scratch *s, struct swav_rng *r, uint8_t *px, int S)
{
    size_t n = (size_t)S * S;
    /* RandomApply([ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8): applied unless
     * p < rand */
    if (!(0.8 < swav_rng_uniform(r))) {
        uint32_t perm[4] = {0, 1, 2, 3};
        swav_rng_shuffle_u32(r, perm, 4);
        float bf = uniform_f32(r, 0.2f, 1.8f);
        float cf = uniform_f32(r, 0.2f, 1.8f);
        float sf = uniform_f32(r, 0.2f, 1.8f);
        float hf = uniform_f32(r, -0.2f, 0.2f);
        for (int k = 0; k < 4; k++) {
            switch (perm[k]) {
            case 0: loader_img_brightness(px, n, bf); break;
            case 1: loader_img_contrast(px, n, cf); break;
            case 2: loader_img_saturation(px, n, sf); break;
            default: loader_img_hue(px, n, hf); break;
            }
        }
    }
    /* RandomGrayscale(p=0.2) */
    if (swav_rng_uniform(r) < 0.2) {
        loader_img_grayscale(px, n);
    }
    /* PILRandomGaussianBlur: np.random.rand() <= 0.5, radius U(0.1, 2.0) */
    if (swav_rng_uniform(r) <= 0.5) {
        float radius = (float)swav_rng_range(r, 0.1, 2.0);
        loader_img_blur(&s->buf, px, S, S, radius);
    }
}

enum loader_status loader_augment_image(struct loader_scratch *s, const uint8_t *rgb,
                                        int width, int height,
                                        const struct loader_crop_spec *spec,
                                        uint64_t seed, uint32_t epoch,
                                        uint32_t image_index, uint8_t *const out[],
                                        const size_t crop_stride[], char *err,
                                        size_t errlen)
{
    SWAV_ASSERT(s != NULL && rgb != NULL && spec != NULL && out != NULL);
    enum loader_status st = loader_crop_spec_check(spec, err, errlen);
    if (st != LOADER_OK) {
        return st;
    }
    if (width < 1 || height < 1) {
        return spec_fail(err, errlen, "image size %dx%d", width, height);
    }
    uint32_t crop_no = 0;
    for (int g = 0; g < spec->ngroups; g++) {
        const int S = spec->size_crops[g];
        const size_t cs = (size_t)S * S * 3;
        const size_t stride = crop_stride ? crop_stride[g] : cs;
        for (int k = 0; k < spec->nmb_crops[g]; k++, crop_no++) {
            uint8_t *px = out[g] + (size_t)k * stride;
            struct swav_rng r;
            swav_rng_init(&r, seed, epoch, image_index, crop_no);
            if (spec->mode == LOADER_MODE_EVAL_VAL) {
                /* Resize(resize): shorter side to `resize`, the longer one
                 * int(resize * long / short); then CenterCrop(S), zero
                 * padding where S exceeds the resized image. */
                int rw, rh;
                if (width <= height) {
                    rw = spec->resize;
                    rh = (int)((double)spec->resize * height / width);
                } else {
                    rh = spec->resize;
                    rw = (int)((double)spec->resize * width / height);
                }
                if (rw < 1) rw = 1;
                if (rh < 1) rh = 1;
                /* torchvision: int(round((H - S) / 2)) (half to even); when S
                 * is larger it first pads (S - H) // 2 on the top/left */
                int top = rh >= S ? (int)nearbyint((rh - S) / 2.0) : -((S - rh) / 2);
                int left = rw >= S ? (int)nearbyint((rw - S) / 2.0) : -((S - rw) / 2);
                int y0 = top < 0 ? 0 : top, x0 = left < 0 ? 0 : left;
                int y1 = top + S > rh ? rh : top + S, x1 = left + S > rw ? rw : left + S;
                struct loader_box full = {0, 0, height, width};
                if (y0 == top && x0 == left && y1 == top + S && x1 == left + S) {
                    loader_img_resize(&s->buf, px, rw, rh, x0, y0, S, S, rgb, width, height,
                                      full);
                } else {
                    memset(px, 0, cs);
                    /* resize the visible part into place, row by row offsets */
                    size_t need = (size_t)(x1 - x0) * (size_t)(y1 - y0) * 3;
                    uint8_t *tmp = swav_xmalloc(need ? need : 1); /* rare path */
                    loader_img_resize(&s->buf, tmp, rw, rh, x0, y0, x1 - x0, y1 - y0, rgb,
                                      width, height, full);
                    for (int y = y0; y < y1; y++) {
                        memcpy(px + ((size_t)(y - top) * S + (size_t)(x0 - left)) * 3,
                               tmp + (size_t)(y - y0) * (x1 - x0) * 3, (size_t)(x1 - x0) * 3);
                    }
                    free(tmp);
                }
                continue;
            }
            struct loader_box box;
            loader_rrc_params(&r, width, height, spec->min_scale[g], spec->max_scale[g], &box);
            /* RandomHorizontalFlip: flips when rand < 0.5 (drawn after the
             * box, as the reference; applied inside the resampling) */
            int flip = swav_rng_uniform(&r) < 0.5;
            loader_img_resize_flip(&s->buf, px, S, S, 0, 0, S, S, rgb, width, height, box, flip);
            if (spec->mode == LOADER_MODE_SWAV) {
                color_and_blur(s, &r, px, S);
            }
        }
    }
    return LOADER_OK;
}

enum loader_status loader_make_crops(struct loader_scratch *s, const uint8_t *file,
                                     size_t len, const struct loader_crop_spec *spec,
                                     uint64_t seed, uint32_t epoch, uint32_t image_index,
                                     uint8_t *const out[], const size_t crop_stride[],
                                     char *err, size_t errlen)
{
    SWAV_ASSERT(s != NULL && spec != NULL);
    enum loader_status st = loader_crop_spec_check(spec, err, errlen);
    if (st != LOADER_OK) {
        return st;
    }
    struct loader_image im;
    st = loader_decode(s->dec, file, len, &im, err, errlen);
    if (st != LOADER_OK) {
        return st;
    }
    return loader_augment_image(s, im.rgb, im.width, im.height, spec, seed, epoch,
                                image_index, out, crop_stride, err, errlen);
}
