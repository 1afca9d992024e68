/* Unit tests of loader_make_crops: crops depend only on (seed, epoch, image,
 * crop) -- the same bytes whatever the order of calls, the scratch reused or
 * fresh, packed or strided output; a different seed, epoch or image gives
 * different crops; bad specs get LOADER_ERR_SPEC; bad files their status. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <turbojpeg.h>

#include "loader/augment.h"
#include "loader/decode.h"

static int failures;
#define EXPECT(c)                                                            \
    do {                                                                     \
        if (!(c)) {                                                          \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #c); \
            failures++;                                                      \
        }                                                                    \
    } while (0)

static unsigned char *make_jpeg(int w, int h, unsigned long *len)
{
    unsigned char *rgb = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned char *p = rgb + ((size_t)y * w + x) * 3;
            p[0] = (unsigned char)(x * 255 / w);
            p[1] = (unsigned char)(y * 255 / h);
            p[2] = (unsigned char)((x * 7 + y * 13) & 255);
        }
    tjhandle tj = tjInitCompress();
    unsigned char *jpg = NULL;
    *len = 0;
    if (tjCompress2(tj, rgb, w, 0, h, TJPF_RGB, &jpg, len, TJSAMP_420, 90, 0) != 0) {
        fprintf(stderr, "tjCompress2: %s\n", tjGetErrorStr2(tj));
        exit(1);
    }
    tjDestroy(tj);
    free(rgb);
    return jpg;
}

static struct loader_crop_spec swav_spec(void)
{
    struct loader_crop_spec s = {0};
    s.mode = LOADER_MODE_SWAV;
    s.ngroups = 2;
    s.nmb_crops[0] = 2;
    s.size_crops[0] = 64;
    s.min_scale[0] = 0.14;
    s.max_scale[0] = 1.0;
    s.nmb_crops[1] = 4;
    s.size_crops[1] = 24;
    s.min_scale[1] = 0.05;
    s.max_scale[1] = 0.14;
    return s;
}

static size_t group_bytes(const struct loader_crop_spec *s, int g)
{
    return (size_t)s->nmb_crops[g] * s->size_crops[g] * s->size_crops[g] * 3;
}

static void crops(struct loader_scratch *sc, const unsigned char *jpg, unsigned long len,
                  const struct loader_crop_spec *s, uint64_t seed, uint32_t epoch,
                  uint32_t image, uint8_t *g0, uint8_t *g1)
{
    uint8_t *out[2] = {g0, g1};
    char err[200];
    enum loader_status st = loader_make_crops(sc, jpg, len, s, seed, epoch, image, out, NULL,
                                              err, sizeof(err));
    if (st != LOADER_OK) fprintf(stderr, "%s\n", err);
    EXPECT(st == LOADER_OK);
}

int main(void)
{
    unsigned long la, lb;
    unsigned char *ja = make_jpeg(160, 120, &la), *jb = make_jpeg(90, 140, &lb);
    struct loader_crop_spec s = swav_spec();
    size_t n0 = group_bytes(&s, 0), n1 = group_bytes(&s, 1);
    uint8_t *a0 = malloc(n0), *a1 = malloc(n1), *b0 = malloc(n0), *b1 = malloc(n1);
    struct loader_scratch *sc = loader_scratch_new();
    EXPECT(loader_crop_spec_total(&s) == 6);

    /* reference bytes from a fresh scratch */
    crops(sc, ja, la, &s, 42, 3, 7, a0, a1);
    /* other images in between, then again: same bytes */
    crops(sc, jb, lb, &s, 42, 3, 8, b0, b1);
    crops(sc, ja, la, &s, 42, 3, 9, b0, b1);
    crops(sc, ja, la, &s, 42, 3, 7, b0, b1);
    EXPECT(memcmp(a0, b0, n0) == 0 && memcmp(a1, b1, n1) == 0);
    /* a new scratch: same bytes */
    struct loader_scratch *sc2 = loader_scratch_new();
    memset(b0, 0, n0);
    crops(sc2, ja, la, &s, 42, 3, 7, b0, b1);
    EXPECT(memcmp(a0, b0, n0) == 0 && memcmp(a1, b1, n1) == 0);
    loader_scratch_destroy(&sc2);
    EXPECT(sc2 == NULL);
    /* another epoch / seed / image index: different crops */
    crops(sc, ja, la, &s, 42, 4, 7, b0, b1);
    EXPECT(memcmp(a0, b0, n0) != 0);
    crops(sc, ja, la, &s, 43, 3, 7, b0, b1);
    EXPECT(memcmp(a0, b0, n0) != 0);
    /* the crops of one image differ from each other */
    EXPECT(memcmp(a0, a0 + n0 / 2, n0 / 2) != 0);

    /* strided output (crop-major batches): crop k at out + k * stride */
    size_t c0 = n0 / 2, c1 = n1 / 4;
    uint8_t *w0 = calloc(3 * c0 * 2, 1), *w1 = calloc(3 * c1 * 4, 1);
    uint8_t *outs[2] = {w0 + c0, w1 + c1};
    size_t strides[2] = {3 * c0, 3 * c1};
    EXPECT(loader_make_crops(sc, ja, la, &s, 42, 3, 7, outs, strides, NULL, 0) == LOADER_OK);
    for (int k = 0; k < 2; k++) EXPECT(memcmp(w0 + c0 + k * 3 * c0, a0 + k * c0, c0) == 0);
    for (int k = 0; k < 4; k++) EXPECT(memcmp(w1 + c1 + k * 3 * c1, a1 + k * c1, c1) == 0);
    EXPECT(w0[0] == 0 && w0[c0 - 1] == 0 && w0[2 * c0] == 0); /* gaps untouched */

    /* eval modes */
    struct loader_crop_spec e = {0};
    e.mode = LOADER_MODE_EVAL_VAL;
    e.ngroups = 1;
    e.nmb_crops[0] = 1;
    e.size_crops[0] = 56;
    e.resize = 64;
    uint8_t *v = malloc(56 * 56 * 3), *v2 = malloc(56 * 56 * 3);
    uint8_t *vo[1] = {v}, *vo2[1] = {v2};
    EXPECT(loader_make_crops(sc, ja, la, &e, 1, 0, 0, vo, NULL, NULL, 0) == LOADER_OK);
    EXPECT(loader_make_crops(sc, ja, la, &e, 99, 5, 3, vo2, NULL, NULL, 0) == LOADER_OK);
    EXPECT(memcmp(v, v2, 56 * 56 * 3) == 0); /* deterministic: no randomness */
    e.resize = 40; /* center crop larger than the resized image: zero padding */
    EXPECT(loader_make_crops(sc, ja, la, &e, 1, 0, 0, vo, NULL, NULL, 0) == LOADER_OK);
    EXPECT(v[0] == 0 && v[1] == 0 && v[2] == 0);
    e.mode = LOADER_MODE_EVAL_TRAIN;
    e.min_scale[0] = 0.08;
    e.max_scale[0] = 1.0;
    EXPECT(loader_make_crops(sc, ja, la, &e, 1, 0, 0, vo, NULL, NULL, 0) == LOADER_OK);

    /* bad specs */
    char err[200];
    struct loader_crop_spec bad = s;
    bad.ngroups = 0;
    EXPECT(loader_crop_spec_check(&bad, err, sizeof(err)) == LOADER_ERR_SPEC);
    bad = s;
    bad.size_crops[1] = 0;
    EXPECT(loader_crop_spec_check(&bad, err, sizeof(err)) == LOADER_ERR_SPEC);
    bad = s;
    bad.min_scale[0] = 0.5;
    bad.max_scale[0] = 0.4;
    EXPECT(loader_crop_spec_check(&bad, err, sizeof(err)) == LOADER_ERR_SPEC);
    bad = s;
    bad.mode = 7;
    EXPECT(loader_make_crops(sc, ja, la, &bad, 1, 0, 0, outs, NULL, err, sizeof(err)) ==
           LOADER_ERR_SPEC);
    EXPECT(strstr(err, "mode") != NULL);
    /* bad files */
    EXPECT(loader_make_crops(sc, ja, 0, &s, 1, 0, 0, outs, NULL, err, sizeof(err)) ==
           LOADER_ERR_EMPTY);
    EXPECT(loader_make_crops(sc, (const uint8_t *)"hello world", 11, &s, 1, 0, 0, outs, NULL,
                             err, sizeof(err)) == LOADER_ERR_FORMAT);
    EXPECT(loader_make_crops(sc, ja, la / 3, &s, 1, 0, 0, outs, NULL, err, sizeof(err)) ==
           LOADER_ERR_TRUNCATED);
    for (int st = LOADER_OK; st <= LOADER_ERR_SPEC; st++)
        EXPECT(strlen(loader_status_str((enum loader_status)st)) > 0);

    /* Gate rates of the pipeline.  RandomGrayscale(0.2): on a colorful image
     * (jitter's saturation factor is >= 0.2, never gray) the share of crops
     * with R == G == B everywhere is 0.2; 6 x 400 crops, 4.5 sigma bounds. */
    {
        struct loader_crop_spec g = s; /* 2 x 64 + 4 x 24 */
        int gray = 0, total = 0;
        for (uint32_t im = 0; im < 400; im++) {
            uint8_t *o2[2] = {b0, b1};
            EXPECT(loader_make_crops(sc, ja, la, &g, 5, 1, im, o2, NULL, NULL, 0) == LOADER_OK);
            for (int k = 0; k < 6; k++) {
                const uint8_t *c = k < 2 ? b0 + (size_t)k * 64 * 64 * 3
                                         : b1 + (size_t)(k - 2) * 24 * 24 * 3;
                size_t np = k < 2 ? 64 * 64 : 24 * 24;
                int is_gray = 1;
                for (size_t i = 0; i < np && is_gray; i++)
                    is_gray = c[3 * i] == c[3 * i + 1] && c[3 * i + 1] == c[3 * i + 2];
                gray += is_gray;
                total++;
            }
        }
        double rate = (double)gray / total;
        printf("grayscale rate %.4f over %d crops (expected 0.2)\n", rate, total);
        EXPECT(rate > 0.2 - 0.037 && rate < 0.2 + 0.037);
    }
    /* RandomHorizontalFlip(0.5): a square image, crop size = image size, scale
     * (1, 1): the box is the whole image (or a row short, skipped), so each
     * crop is the image or its mirror; the mirrored share is 0.5. */
    {
        unsigned long lq;
        unsigned char *jq = make_jpeg(48, 48, &lq);
        struct loader_decoder *d = loader_decoder_new();
        struct loader_image im;
        EXPECT(loader_decode(d, jq, lq, &im, NULL, 0) == LOADER_OK);
        uint8_t *mir = malloc(48 * 48 * 3), *o = malloc(48 * 48 * 3);
        for (int y = 0; y < 48; y++)
            for (int x = 0; x < 48; x++)
                memcpy(mir + (y * 48 + x) * 3, im.rgb + (y * 48 + 47 - x) * 3, 3);
        struct loader_crop_spec f = {0};
        f.mode = LOADER_MODE_EVAL_TRAIN;
        f.ngroups = 1;
        f.nmb_crops[0] = 1;
        f.size_crops[0] = 48;
        f.min_scale[0] = 1.0;
        f.max_scale[0] = 1.0;
        int flipped = 0, straight = 0;
        for (uint32_t k = 0; k < 1000; k++) {
            uint8_t *oo[1] = {o};
            EXPECT(loader_augment_image(sc, im.rgb, 48, 48, &f, 9, 0, k, oo, NULL, NULL, 0) ==
                   LOADER_OK);
            if (memcmp(o, im.rgb, 48 * 48 * 3) == 0) straight++;
            else if (memcmp(o, mir, 48 * 48 * 3) == 0) flipped++;
        }
        double rate = (double)flipped / (flipped + straight);
        printf("flip rate %.4f over %d whole-image crops (expected 0.5)\n", rate,
               flipped + straight);
        EXPECT(flipped + straight > 300);
        EXPECT(rate > 0.5 - 4.5 * 0.5 / 17.3 && rate < 0.5 + 4.5 * 0.5 / 17.3);
        free(mir);
        free(o);
        loader_decoder_destroy(&d);
        tjFree(jq);
    }

    loader_scratch_destroy(&sc);
    free(a0); free(a1); free(b0); free(b1); free(w0); free(w1); free(v); free(v2);
    tjFree(ja);
    tjFree(jb);
    if (failures) {
        fprintf(stderr, "test_augment: %d failures\n", failures);
        return 1;
    }
    printf("test_augment: ok\n");
    return 0;
}
