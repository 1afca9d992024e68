/* Multi-crop augmentation of src/multicropdataset.py (SwAV), and the two
 * transforms of eval_linear.py, on a decoded RGB image, in uint8, matching
 * torchvision 0.14 on PIL 9.4 op by op (see docs/loader.md):
 *
 *   LOADER_MODE_SWAV:       per group g, per crop: RandomResizedCrop(size[g],
 *                           scale=(min_scale[g], max_scale[g])), flip p=0.5,
 *                           ColorJitter(0.8,0.8,0.8,0.2) p=0.8 in a random
 *                           order, RandomGrayscale p=0.2, GaussianBlur p=0.5
 *                           radius U(0.1, 2)
 *   LOADER_MODE_EVAL_TRAIN: RandomResizedCrop(size[0]) (scale min/max from the
 *                           spec, (0.08, 1) in the reference) + flip p=0.5
 *   LOADER_MODE_EVAL_VAL:   Resize(resize) of the shorter side + CenterCrop(size[0])
 *
 * Output is uint8 RGB NHWC; normalization is the trainer's.  Every random draw
 * comes from swav_rng(seed, epoch, image_index, crop number), crop numbers
 * counting across groups (group 0's crops first): the same inputs give the
 * same bytes in any order, on any loader. */
#ifndef SWAV_LOADER_AUGMENT_H
#define SWAV_LOADER_AUGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "loader/decode.h"

#define LOADER_MAX_GROUPS 8
#define LOADER_MAX_CROP_SIZE 1024

enum loader_mode {
    LOADER_MODE_SWAV = 0,
    LOADER_MODE_EVAL_TRAIN,
    LOADER_MODE_EVAL_VAL,
};

struct loader_crop_spec {
    int mode;                           /* enum loader_mode */
    int ngroups;                        /* 1..LOADER_MAX_GROUPS (1 for eval modes) */
    int nmb_crops[LOADER_MAX_GROUPS];   /* crops per group (1 for eval modes) */
    int size_crops[LOADER_MAX_GROUPS];  /* output side S, 1..LOADER_MAX_CROP_SIZE */
    double min_scale[LOADER_MAX_GROUPS], max_scale[LOADER_MAX_GROUPS];
    int resize;                         /* EVAL_VAL: shorter side before the center crop */
};

/* Checks a spec (e.g. one that came in a message).  LOADER_OK or LOADER_ERR_SPEC
 * with a message. */
enum loader_status loader_crop_spec_check(const struct loader_crop_spec *spec, char *err,
                                          size_t errlen);
/* Total crops of an image (sum of nmb_crops). */
int loader_crop_spec_total(const struct loader_crop_spec *spec);

/* Per-thread scratch: the decoder and the intermediate buffers, grown to the
 * largest size needed and reused across images. */
struct loader_scratch;
struct loader_scratch *loader_scratch_new(void);
void loader_scratch_destroy(struct loader_scratch **s);

/* Decodes `file` once and writes all its crops.  Crop k of group g (S =
 * size_crops[g]) goes to out[g] + k * crop_stride[g] as [S][S][3] uint8;
 * crop_stride == NULL means packed (S*S*3).  Returns LOADER_OK, or a status
 * with a message in err (err may be NULL); on error the outputs are
 * unspecified. */
enum loader_status loader_make_crops(struct loader_scratch *s, const uint8_t *file,
                                     size_t len, const struct loader_crop_spec *spec,
                                     uint64_t seed, uint32_t epoch, uint32_t image_index,
                                     uint8_t *const out[], const size_t crop_stride[],
                                     char *err, size_t errlen);

/* The same on an image already decoded (rgb [h][w][3], packed rows). */
enum loader_status loader_augment_image(struct loader_scratch *s, const uint8_t *rgb,
                                        int width, int height,
                                        const struct loader_crop_spec *spec,
                                        uint64_t seed, uint32_t epoch,
                                        uint32_t image_index, uint8_t *const out[],
                                        const size_t crop_stride[], char *err,
                                        size_t errlen);

#endif
