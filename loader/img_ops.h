/* The single operations of the augmentation, each matching its PIL 9.4 /
 * torchvision 0.14 counterpart bit for bit where the arithmetic allows (see
 * docs/loader.md).  augment.c chains them; tests drive them one by one through
 * the loader-ops tool.  Images are packed RGB, [h][w][3] uint8. */
#ifndef SWAV_LOADER_IMG_OPS_H
#define SWAV_LOADER_IMG_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "common/rng.h"

/* A crop window of the source image, in pixels. */
struct loader_box {
    int top, left, height, width;
};

/* torchvision 0.14 RandomResizedCrop.get_params(ratio=(3/4, 4/3)), with the
 * draws taken from rng. */
void loader_rrc_params(struct swav_rng *rng, int width, int height, double min_scale,
                       double max_scale, struct loader_box *box);

/* Growable work buffers of one thread. */
struct loader_img_buf {
    double *coef_d;
    int32_t *kx, *ky;
    int *bx, *by;
    size_t coef_cap, kx_cap, ky_cap, bx_cap, by_cap;
    uint8_t *tmp;
    size_t tmp_cap;
    uint8_t *tr;       /* transposed image for the vertical blur */
    size_t tr_cap;
    uint8_t *line;
    size_t line_cap;
    int32_t *kp;       /* zero-padded horizontal taps */
    int *x0;
    size_t kp_cap, x0_cap;
};
void loader_img_buf_free(struct loader_img_buf *b);

/* PIL Image.crop(box).resize((out_w, out_h), BILINEAR): the box is resampled
 * with PIL's convolution (support scaled by the downscale factor, 22-bit fixed
 * point, horizontal pass then vertical, 8-bit in between), clamping at the
 * box's edges.  Only the output window [win_x, win_x+win_w) x [win_y,
 * win_y+win_h) is written, to dst with rows of win_w pixels (a center crop of
 * the resized image costs only its pixels). */
void loader_img_resize(struct loader_img_buf *b, uint8_t *dst, int out_w, int out_h,
                       int win_x, int win_y, int win_w, int win_h, const uint8_t *src,
                       int src_w, int src_h, struct loader_box box);

/* The same followed by a horizontal flip (the window must span the output's
 * width): the mirror comes free with the horizontal pass. */
void loader_img_resize_flip(struct loader_img_buf *b, uint8_t *dst, int out_w, int out_h,
                            int win_x, int win_y, int win_w, int win_h, const uint8_t *src,
                            int src_w, int src_h, struct loader_box box, int hflip);

void loader_img_flip(uint8_t *rgb, int w, int h);
/* ImageEnhance.Brightness / Contrast / Color (saturation): Image.blend with
 * the float factor, PIL's truncation and clipping. */
void loader_img_brightness(uint8_t *rgb, size_t npix, float factor);
void loader_img_contrast(uint8_t *rgb, size_t npix, float factor);
void loader_img_saturation(uint8_t *rgb, size_t npix, float factor);
/* torchvision F_pil.adjust_hue: uint8 HSV (PIL's conversions), hue byte +=
 * uint8(hue * 255) modulo 256. */
void loader_img_hue(uint8_t *rgb, size_t npix, float hue);
/* convert("L") replicated to three channels (ITU-R 601, PIL's L24). */
void loader_img_grayscale(uint8_t *rgb, size_t npix);
/* ImageFilter.GaussianBlur(radius): three extended box blurs per axis. */
void loader_img_blur(struct loader_img_buf *b, uint8_t *rgb, int w, int h, float radius);

#endif
