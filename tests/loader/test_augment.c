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
