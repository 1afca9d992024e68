/* Multi-crop augmentation: see augment.h.  (Implementation in progress.) */
#include "loader/augment.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/check.h"

struct loader_scratch {
    struct loader_decoder *dec;
};

int loader_crop_spec_total(const struct loader_crop_spec *spec)
{
    int n = 0;
    for (int g = 0; g < spec->ngroups && g < LOADER_MAX_GROUPS; g++) n += spec->nmb_crops[g];
    return n;
}

enum loader_status loader_crop_spec_check(const struct loader_crop_spec *spec, char *err,
                                          size_t errlen)
{
    (void)spec;
    (void)err;
    (void)errlen;
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
    if (!s || !*s) return;
    loader_decoder_destroy(&(*s)->dec);
    free(*s);
    *s = NULL;
}

enum loader_status loader_augment_image(struct loader_scratch *s, const uint8_t *rgb,
                                        int width, int height,
                                        const struct loader_crop_spec *spec,
                                        uint64_t seed, uint32_t epoch,
                                        uint32_t image_index, uint8_t *const out[],
                                        const size_t crop_stride[], char *err,
                                        size_t errlen)
{
    if (err && errlen) snprintf(err, errlen, "not implemented yet");
    return LOADER_ERR_UNSUPPORTED;
}

enum loader_status loader_make_crops(struct loader_scratch *s, const uint8_t *file,
                                     size_t len, const struct loader_crop_spec *spec,
                                     uint64_t seed, uint32_t epoch, uint32_t image_index,
                                     uint8_t *const out[], const size_t crop_stride[],
                                     char *err, size_t errlen)
{
    struct loader_image im;
    enum loader_status st = loader_decode(s->dec, file, len, &im, err, errlen);
    if (st != LOADER_OK) return st;
    return loader_augment_image(s, im.rgb, im.width, im.height, spec, seed, epoch,
                                image_index, out, crop_stride, err, errlen);
}
