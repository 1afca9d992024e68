/* loader-img-bench: images/s of decode + multi-crop on one thread (one
 * core), for scripts/bench-loader.  Reads each file from disk per image, as
 * the reference's ImageFolder loader does, and splits the time into read,
 * decode and augmentation.
 *
 *   loader-img-bench LIST SECONDS [N S MIN MAX]...   (default 2 224 0.14 1 6 96 0.05 0.14)
 * LIST: a file with one image path per line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loader/augment.h"
#include "loader/decode.h"

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 3 || (argc - 3) % 4 != 0) {
        fprintf(stderr, "usage: loader-img-bench LIST SECONDS [N S MIN MAX]...\n");
        return 2;
    }
    FILE *lf = fopen(argv[1], "r");
    if (!lf) {
        perror(argv[1]);
        return 2;
    }
    char **paths = NULL;
    size_t np = 0, cap = 0;
    char line[4096];
    while (fgets(line, sizeof(line), lf)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0]) continue;
        if (np == cap) {
            cap = cap ? 2 * cap : 256;
            paths = realloc(paths, cap * sizeof(*paths));
        }
        paths[np++] = strdup(line);
    }
    fclose(lf);
    if (np == 0) {
        fprintf(stderr, "loader-img-bench: no files in %s\n", argv[1]);
        return 2;
    }
    double seconds = atof(argv[2]);
    struct loader_crop_spec spec = {0};
    spec.mode = LOADER_MODE_SWAV;
    if (argc > 3) {
        spec.ngroups = (argc - 3) / 4;
        for (int g = 0; g < spec.ngroups && g < LOADER_MAX_GROUPS; g++) {
            spec.nmb_crops[g] = atoi(argv[3 + 4 * g]);
            spec.size_crops[g] = atoi(argv[4 + 4 * g]);
            spec.min_scale[g] = atof(argv[5 + 4 * g]);
            spec.max_scale[g] = atof(argv[6 + 4 * g]);
        }
    } else {
        spec = (struct loader_crop_spec){.mode = LOADER_MODE_SWAV, .ngroups = 2,
                                         .nmb_crops = {2, 6}, .size_crops = {224, 96},
                                         .min_scale = {0.14, 0.05}, .max_scale = {1.0, 0.14}};
    }
    char err[256];
    if (loader_crop_spec_check(&spec, err, sizeof(err)) != LOADER_OK) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    uint8_t *out[LOADER_MAX_GROUPS];
    for (int g = 0; g < spec.ngroups; g++) {
        out[g] = malloc((size_t)spec.nmb_crops[g] * spec.size_crops[g] * spec.size_crops[g] * 3);
    }
    struct loader_scratch *s = loader_scratch_new();
    struct loader_decoder *dec = loader_decoder_new();
    size_t fcap = 1 << 20;
    uint8_t *fbuf = malloc(fcap);
    double t_read = 0, t_dec = 0, t_aug = 0;
    long images = 0, bad = 0;
    unsigned checksum = 0;
    double t0 = now_s(), c0 = cpu_s();
    while (now_s() - t0 < seconds || images < (long)np) {
        const char *p = paths[images % (long)np];
        double ta = now_s();
        FILE *f = fopen(p, "rb");
        size_t len = 0;
        if (f) {
            fseek(f, 0, SEEK_END);
            long n = ftell(f);
            fseek(f, 0, SEEK_SET);
            if (n > 0 && (size_t)n > fcap) {
                free(fbuf);
                fcap = (size_t)n;
                fbuf = malloc(fcap);
            }
            len = n > 0 ? fread(fbuf, 1, (size_t)n, f) : 0;
            fclose(f);
        }
        double tb = now_s();
        struct loader_image im;
        enum loader_status st = loader_decode(dec, fbuf, len, &im, err, sizeof(err));
        double tc = now_s();
        if (st == LOADER_OK) {
            st = loader_augment_image(s, im.rgb, im.width, im.height, &spec, 1, 0,
                                      (uint32_t)images, out, NULL, err, sizeof(err));
            checksum += out[0][images % 1000];
        }
        if (st != LOADER_OK) bad++;
        double td = now_s();
        t_read += tb - ta;
        t_dec += tc - tb;
        t_aug += td - tc;
        images++;
    }
    double total = now_s() - t0, cpu = cpu_s() - c0;
    printf("images %ld bad %ld seconds %.3f images_per_s %.2f cpu_seconds %.3f "
           "images_per_cpu_s %.2f read_ms %.3f decode_ms %.3f "
           "augment_ms %.3f checksum %u\n",
           images, bad, total, images / total, cpu, images / cpu, 1e3 * t_read / images, 1e3 * t_dec / images,
           1e3 * t_aug / images, checksum);
    loader_scratch_destroy(&s);
    loader_decoder_destroy(&dec);
    return 0;
}
