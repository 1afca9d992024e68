/* loader-ops: a test-only front end to the single operations of
 * loader/img_ops.h and to decoding, so that python parity tests can apply
 * one named op with given parameters to a raw RGB file and compare the bytes
 * with torchvision/PIL.
 *
 *   loader-ops decode FILE OUT.rgb          prints "status NAME W H" (OUT only on ok)
 *   loader-ops probe FILE                   prints "status NAME W H"
 *   loader-ops rrc W H MIN MAX N SEED       prints N lines "top left height width"
 *   loader-ops OP W H IN.rgb OUT.rgb ARGS   OP: resize TOP LEFT CH CW OW OH [FLIP] |
 *       flip | brightness F | contrast F | saturation F | hue F | gray | blur R
 *   loader-ops crops FILE MODE SEED EPOCH IMAGE OUT.rgb G [N S MIN MAX]*G [RESIZE]
 *       writes all crops of one image, groups in order, packed */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "loader/augment.h"
#include "loader/decode.h"
#include "loader/img_ops.h"

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "loader-ops: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (!b || (n > 0 && fread(b, 1, (size_t)n, f) != (size_t)n)) {
        fprintf(stderr, "loader-ops: cannot read %s\n", path);
        exit(2);
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void write_file(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "loader-ops: cannot write %s\n", path);
        exit(2);
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: see the comment at the top of test_augment_ops.c\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        return usage();
    }
    const char *op = argv[1];
    char err[256] = "";
    if ((strcmp(op, "decode") == 0 && argc == 4) || (strcmp(op, "probe") == 0 && argc == 3)) {
        size_t len;
        uint8_t *data = read_file(argv[2], &len);
        int w = 0, h = 0;
        enum loader_status st;
        if (op[0] == 'p') {
            st = loader_image_probe(data, len, &w, &h, NULL, err, sizeof(err));
        } else {
            struct loader_decoder *d = loader_decoder_new();
            struct loader_image im;
            st = loader_decode(d, data, len, &im, err, sizeof(err));
            if (st == LOADER_OK) {
                w = im.width;
                h = im.height;
                write_file(argv[3], im.rgb, (size_t)w * h * 3);
            }
            loader_decoder_destroy(&d);
        }
        static const char *names[] = {"ok", "empty", "format", "truncated", "corrupt",
                                      "too_large", "unsupported", "spec"};
        printf("%d %s %d %d\n", (int)st, names[st], w, h);
        if (st != LOADER_OK) {
            fprintf(stderr, "%s\n", err);
        }
        free(data);
        return 0;
    }
    if (strcmp(op, "rrc") == 0 && argc == 8) {
        int w = atoi(argv[2]), h = atoi(argv[3]);
        double a = atof(argv[4]), b = atof(argv[5]);
        long n = atol(argv[6]);
        uint64_t seed = strtoull(argv[7], NULL, 10);
        for (long i = 0; i < n; i++) {
            struct swav_rng r;
            swav_rng_init(&r, seed, 0, (uint32_t)i, 0);
            struct loader_box box;
            loader_rrc_params(&r, w, h, a, b, &box);
            printf("%d %d %d %d\n", box.top, box.left, box.height, box.width);
        }
        return 0;
    }
    if (strcmp(op, "crops") == 0 && argc >= 10) {
        size_t len;
        uint8_t *data = read_file(argv[2], &len);
        struct loader_crop_spec spec = {0};
        spec.mode = atoi(argv[3]);
        uint64_t seed = strtoull(argv[4], NULL, 10);
        uint32_t epoch = (uint32_t)atol(argv[5]), image = (uint32_t)atol(argv[6]);
        const char *outp = argv[7];
        spec.ngroups = atoi(argv[8]);
        if (spec.ngroups < 1 || spec.ngroups > LOADER_MAX_GROUPS ||
            argc < 9 + 4 * spec.ngroups) {
            return usage();
        }
        size_t total = 0, off[LOADER_MAX_GROUPS];
        for (int g = 0; g < spec.ngroups; g++) {
            spec.nmb_crops[g] = atoi(argv[9 + 4 * g]);
            spec.size_crops[g] = atoi(argv[10 + 4 * g]);
            spec.min_scale[g] = atof(argv[11 + 4 * g]);
            spec.max_scale[g] = atof(argv[12 + 4 * g]);
            off[g] = total;
            if (spec.nmb_crops[g] > 0 && spec.size_crops[g] > 0) {
                total += (size_t)spec.nmb_crops[g] * spec.size_crops[g] * spec.size_crops[g] * 3;
            }
        }
        if (argc > 9 + 4 * spec.ngroups) {
            spec.resize = atoi(argv[9 + 4 * spec.ngroups]);
        }
        uint8_t *buf = calloc(total ? total : 1, 1);
        uint8_t *outs[LOADER_MAX_GROUPS];
        for (int g = 0; g < spec.ngroups; g++) outs[g] = buf + off[g];
        struct loader_scratch *s = loader_scratch_new();
        enum loader_status st = loader_make_crops(s, data, len, &spec, seed, epoch, image,
                                                  outs, NULL, err, sizeof(err));
        loader_scratch_destroy(&s);
        if (st != LOADER_OK) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        write_file(outp, buf, total);
        free(buf);
        free(data);
        return 0;
    }
    if (argc < 6) {
        return usage();
    }
    int w = atoi(argv[2]), h = atoi(argv[3]);
    size_t len;
    uint8_t *in = read_file(argv[4], &len);
    if (w < 1 || h < 1 || len != (size_t)w * h * 3) {
        fprintf(stderr, "loader-ops: %s has %zu bytes, not %dx%dx3\n", argv[4], len, w, h);
        return 2;
    }
    const char *outp = argv[5];
    size_t npix = (size_t)w * h;
    struct loader_img_buf b = {0};
    if (strcmp(op, "resize") == 0 && (argc == 12 || argc == 13)) {
        struct loader_box box = {atoi(argv[6]), atoi(argv[7]), atoi(argv[8]), atoi(argv[9])};
        int ow = atoi(argv[10]), oh = atoi(argv[11]);
        uint8_t *o = malloc((size_t)ow * oh * 3);
        if (argc == 13) {
            loader_img_resize_flip(&b, o, ow, oh, 0, 0, ow, oh, in, w, h, box, atoi(argv[12]));
        } else {
            loader_img_resize(&b, o, ow, oh, 0, 0, ow, oh, in, w, h, box);
        }
        write_file(outp, o, (size_t)ow * oh * 3);
        free(o);
    } else if (strcmp(op, "flip") == 0 && argc == 6) {
        loader_img_flip(in, w, h);
        write_file(outp, in, len);
    } else if (strcmp(op, "gray") == 0 && argc == 6) {
        loader_img_grayscale(in, npix);
        write_file(outp, in, len);
    } else if (argc == 7) {
        float f = strtof(argv[6], NULL);
        if (strcmp(op, "brightness") == 0) loader_img_brightness(in, npix, f);
        else if (strcmp(op, "contrast") == 0) loader_img_contrast(in, npix, f);
        else if (strcmp(op, "saturation") == 0) loader_img_saturation(in, npix, f);
        else if (strcmp(op, "hue") == 0) loader_img_hue(in, npix, f);
        else if (strcmp(op, "blur") == 0) loader_img_blur(&b, in, w, h, f);
        else return usage();
        write_file(outp, in, len);
    } else {
        return usage();
    }
    loader_img_buf_free(&b);
    free(in);
    return 0;
}
