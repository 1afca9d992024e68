/* Fuzzing the image decoder and the crop pipeline on untrusted bytes.
 *
 * Built two ways from this one file:
 *  - with clang -fsanitize=fuzzer (define FUZZ_LIBFUZZER): a libFuzzer target,
 *    see docs/loader.md for the command line;
 *  - as a plain test (meson: loader_decode_fuzz, suite fuzz): a deterministic
 *    mutation run, seeded with a baseline JPEG, a progressive one, a CMYK and a
 *    grayscale one (made here with TurboJPEG) and a PNG (made here with libpng),
 *    each mutated N times (bit flips, byte sets, truncations, inserted and
 *    repeated chunks, header size fields overwritten) and pushed through
 *    loader_image_probe and loader_make_crops.
 * Checks beyond "no crash, no sanitizer report": the status is a known value,
 * a failure comes with a message, and an image that probes bigger than the
 * pixel cap never decodes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>
#include <turbojpeg.h>

#include "common/rng.h"
#include "loader/augment.h"
#include "loader/decode.h"

static struct loader_scratch *g_scratch;
static uint8_t g_out0[2 * 32 * 32 * 3], g_out1[2 * 16 * 16 * 3];

static int check_one(const uint8_t *data, size_t size)
{
    if (!g_scratch) g_scratch = loader_scratch_new();
    char err[256];
    int w = 0, h = 0;
    enum loader_status ps = loader_image_probe(data, size, &w, &h, NULL, err, sizeof(err));
    if ((int)ps < LOADER_OK || ps > LOADER_ERR_SPEC) {
        fprintf(stderr, "probe: unknown status %d\n", (int)ps);
        return 1;
    }
    struct loader_crop_spec spec = {.mode = LOADER_MODE_SWAV, .ngroups = 2,
                                    .nmb_crops = {2, 2}, .size_crops = {32, 16},
                                    .min_scale = {0.14, 0.05}, .max_scale = {1.0, 0.14}};
    uint8_t *out[2] = {g_out0, g_out1};
    err[0] = 0;
    enum loader_status st = loader_make_crops(g_scratch, data, size, &spec, 1, 2, 3, out, NULL,
                                              err, sizeof(err));
    if ((int)st < LOADER_OK || st > LOADER_ERR_SPEC || st == LOADER_ERR_SPEC) {
        fprintf(stderr, "make_crops: unexpected status %d\n", (int)st);
        return 1;
    }
    if (st != LOADER_OK && err[0] == 0) {
        fprintf(stderr, "make_crops: status %s without a message\n", loader_status_str(st));
        return 1;
    }
    if (st == LOADER_OK && ps == LOADER_ERR_TOO_LARGE) {
        fprintf(stderr, "decoded an image the probe found too large\n");
        return 1;
    }
    return 0;
}

#ifdef FUZZ_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (check_one(data, size) != 0) abort();
    return 0;
}
#else

static unsigned char *make_jpeg(int w, int h, int pf, int samp, int flags, unsigned long *len)
{
    int ps = tjPixelSize[pf];
    unsigned char *px = malloc((size_t)w * h * ps);
    for (int i = 0; i < w * h * ps; i++) px[i] = (unsigned char)((i * 37) ^ (i >> 5));
    tjhandle tj = tjInitCompress();
    unsigned char *jpg = NULL;
    *len = 0;
    if (tjCompress2(tj, px, w, 0, h, pf, &jpg, len, samp, 85, flags) != 0) {
        fprintf(stderr, "tjCompress2: %s\n", tjGetErrorStr2(tj));
        exit(1);
    }
    tjDestroy(tj);
    free(px);
    return jpg;
}

struct membuf {
    unsigned char *p;
    size_t n, cap;
};
static void png_write_mem(png_structp png, png_bytep data, png_size_t n)
{
    struct membuf *m = png_get_io_ptr(png);
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2;
        m->p = realloc(m->p, m->cap);
    }
    memcpy(m->p + m->n, data, n);
    m->n += n;
}
static void png_flush_mem(png_structp png) { (void)png; }

static unsigned char *make_png(int w, int h, int color, int interlace, size_t *len)
{
    struct membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) exit(1);
    png_set_write_fn(png, &m, png_write_mem, png_flush_mem);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, color, interlace,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    int ch = color == PNG_COLOR_TYPE_RGB ? 3 : color == PNG_COLOR_TYPE_RGBA ? 4 : 1;
    unsigned char *row = malloc((size_t)w * ch);
    int passes = png_set_interlace_handling(png);
    for (int p = 0; p < passes; p++)
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w * ch; x++) row[x] = (unsigned char)(x * 3 + y * 7);
            png_write_row(png, row);
        }
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(row);
    *len = m.n;
    return m.p;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 3000;
    struct { unsigned char *p; size_t n; } seeds[7];
    unsigned long l;
    seeds[0].p = make_jpeg(67, 45, TJPF_RGB, TJSAMP_420, 0, &l); seeds[0].n = l;
    seeds[1].p = make_jpeg(40, 33, TJPF_RGB, TJSAMP_444, TJFLAG_PROGRESSIVE, &l); seeds[1].n = l;
    seeds[2].p = make_jpeg(24, 24, TJPF_CMYK, TJSAMP_420, 0, &l); seeds[2].n = l;
    seeds[3].p = make_jpeg(30, 20, TJPF_GRAY, TJSAMP_GRAY, 0, &l); seeds[3].n = l;
    seeds[4].p = make_png(37, 29, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, &seeds[4].n);
    seeds[5].p = make_png(21, 17, PNG_COLOR_TYPE_RGBA, PNG_INTERLACE_ADAM7, &seeds[5].n);
    seeds[6].p = make_png(19, 23, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, &seeds[6].n);
    int failures = 0;
    long ok = 0, total = 0;
    for (int sd = 0; sd < 7; sd++) {
        if (check_one(seeds[sd].p, seeds[sd].n) != 0) failures++;
        for (long it = 0; it < iters; it++) {
            struct swav_rng r;
            swav_rng_init(&r, 0xF022u, (uint32_t)sd, (uint32_t)it, 0);
            size_t n = seeds[sd].n;
            size_t cap = 2 * n + 64;
            uint8_t *b = malloc(cap);
            memcpy(b, seeds[sd].p, n);
            int muts = 1 + (int)swav_rng_below(&r, 4);
            for (int m = 0; m < muts && n > 0; m++) {
                size_t at = swav_rng_below(&r, (uint32_t)n);
                switch (swav_rng_below(&r, 6)) {
                case 0: b[at] ^= (uint8_t)(1u << swav_rng_below(&r, 8)); break;
                case 1: b[at] = (uint8_t)swav_rng_u32(&r); break;
                case 2: n = at; break; /* truncate */
                case 3: { /* insert a few random bytes */
                    size_t k = 1 + swav_rng_below(&r, 8);
                    if (n + k <= cap) {
                        memmove(b + at + k, b + at, n - at);
                        for (size_t j = 0; j < k; j++) b[at + j] = (uint8_t)swav_rng_u32(&r);
                        n += k;
                    }
                    break;
                }
                case 4: { /* repeat a chunk */
                    size_t k = 1 + swav_rng_below(&r, 32);
                    if (at + k <= n && n + k <= cap) {
                        memmove(b + at + k, b + at, n - at);
                        n += k;
                    }
                    break;
                }
                default: /* big values in the first 40 bytes (sizes, lengths) */
                    if (n > 4) {
                        size_t p = swav_rng_below(&r, (uint32_t)(n < 40 ? n - 1 : 39));
                        b[p] = 0xFF;
                        b[p + 1] = (uint8_t)swav_rng_u32(&r);
                    }
                    break;
                }
            }
            /* exactly n bytes in their own allocation: ASan sees any overread */
            uint8_t *exact = malloc(n ? n : 1);
            memcpy(exact, b, n);
            if (check_one(exact, n) != 0) {
                fprintf(stderr, "seed %d iteration %ld failed\n", sd, it);
                failures++;
            }
            char err[64];
            struct loader_image im;
            struct loader_decoder *d = loader_decoder_new();
            if (loader_decode(d, exact, n, &im, err, sizeof(err)) == LOADER_OK) ok++;
            loader_decoder_destroy(&d);
            total++;
            free(exact);
            free(b);
        }
    }
    for (int sd = 0; sd < 7; sd++) {
        if (sd < 4) tjFree(seeds[sd].p);
        else free(seeds[sd].p);
    }
    loader_scratch_destroy(&g_scratch);
    printf("test_decode_fuzz: %ld mutated files, %ld still decodable, %d failures\n", total, ok,
           failures);
    return failures ? 1 : 0;
}
#endif
