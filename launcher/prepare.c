/* `swav prepare fashion-mnist OUT`: converts Debian's dataset-fashion-mnist
 * (IDX files, gzip) into OUT/train/<class>/<n>.jpg and OUT/test/<class>/<n>.jpg,
 * the ImageFolder layout the reference reads, so the main job runs on a fresh
 * machine with no download.  Class folders carry their label number first
 * ("0_t-shirt_top") so torchvision's sorted order keeps Fashion-MNIST's labels.
 * Images stay 28x28 grayscale JPEGs (the loader converts to RGB as PIL does).
 * Files are written to a temporary folder and renamed into place, so an
 * interrupted run never leaves a half-made data set behind. */
#include "prepare.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>

#include "common/check.h"
#include "common/fileio.h"
#include "common/flags.h"

#define FMNIST_DEFAULT_SOURCE "/usr/share/datasets/fashion-mnist"
#define FMNIST_SIDE 28
#define FMNIST_MAX_IMAGES 100000

static const char *const fmnist_classes[10] = {
    "0_t-shirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat",
    "5_sandal",      "6_shirt",   "7_sneaker",  "8_bag",   "9_ankle_boot",
};

struct prepare_args {
    const char *source;
    int64_t quality;
    int64_t limit;
};

static const struct swav_flag prepare_flags[] = {
    {"source", SWAV_FLAG_STR, offsetof(struct prepare_args, source), 0, 0, FMNIST_DEFAULT_SOURCE,
     "folder with the IDX .gz files of dataset-fashion-mnist"},
    {"quality", SWAV_FLAG_INT, offsetof(struct prepare_args, quality), 1, 100, "95",
     "JPEG quality"},
    {"limit", SWAV_FLAG_INT, offsetof(struct prepare_args, limit), 0, FMNIST_MAX_IMAGES, "0",
     "keep only the first N images of each split (0: all)"},
};

/* Reads a whole gzip file (bounded) into memory. */
static int gz_read_all(const char *path, size_t max_len, uint8_t **out, size_t *out_len)
{
    gzFile gz = gzopen(path, "rb");
    if (!gz) {
        fprintf(stderr, "swav prepare: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 20, len = 0;
    uint8_t *buf = swav_xmalloc(cap);
    for (;;) {
        if (len == cap) {
            if (cap >= max_len) {
                fprintf(stderr, "swav prepare: %s is larger than %zu bytes unpacked\n", path,
                        max_len);
                free(buf);
                gzclose(gz);
                return -1;
            }
            cap *= 2;
            buf = swav_xrealloc(buf, cap);
        }
        int r = gzread(gz, buf + len, (unsigned)(cap - len));
        if (r < 0) {
            int e;
            fprintf(stderr, "swav prepare: %s is not a readable gzip file: %s\n", path,
                    gzerror(gz, &e));
            free(buf);
            gzclose(gz);
            return -1;
        }
        if (r == 0) {
            break;
        }
        len += (size_t)r;
    }
    gzclose(gz);
    *out = buf;
    *out_len = len;
    return 0;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Checks an IDX header: magic 0x00000803 (images) or 0x00000801 (labels). */
static int idx_check(const char *path, const uint8_t *d, size_t len, int images, uint32_t *count)
{
    size_t hdr = images ? 16 : 8;
    if (len < hdr || be32(d) != (images ? 0x803u : 0x801u)) {
        fprintf(stderr, "swav prepare: %s is not an IDX %s file\n", path,
                images ? "image" : "label");
        return -1;
    }
    uint32_t n = be32(d + 4);
    if (n > FMNIST_MAX_IMAGES) {
        fprintf(stderr, "swav prepare: %s claims %u items, more than %d\n", path, n,
                FMNIST_MAX_IMAGES);
        return -1;
    }
    size_t item = 1;
    if (images) {
        if (be32(d + 8) != FMNIST_SIDE || be32(d + 12) != FMNIST_SIDE) {
            fprintf(stderr, "swav prepare: %s holds %ux%u images, expected %dx%d\n", path,
                    be32(d + 8), be32(d + 12), FMNIST_SIDE, FMNIST_SIDE);
            return -1;
        }
        item = FMNIST_SIDE * FMNIST_SIDE;
    }
    if (len != hdr + (size_t)n * item) {
        fprintf(stderr, "swav prepare: %s is %zu bytes, expected %zu for %u items\n", path, len,
                hdr + (size_t)n * item, n);
        return -1;
    }
    *count = n;
    return 0;
}

static int write_split(const char *src, const char *out, const char *split, const char *prefix,
                       const struct prepare_args *a, tjhandle tj)
{
    char ipath[PATH_MAX], lpath[PATH_MAX], err[512];
    snprintf(ipath, sizeof ipath, "%s/%s-images-idx3-ubyte.gz", src, prefix);
    snprintf(lpath, sizeof lpath, "%s/%s-labels-idx1-ubyte.gz", src, prefix);
    uint8_t *img = NULL, *lab = NULL;
    size_t ilen = 0, llen = 0;
    uint32_t ni = 0, nl = 0;
    int rc = -1;
    if (gz_read_all(ipath, 64u << 20, &img, &ilen) || gz_read_all(lpath, 1u << 20, &lab, &llen) ||
        idx_check(ipath, img, ilen, 1, &ni) || idx_check(lpath, lab, llen, 0, &nl)) {
        goto out;
    }
    if (ni != nl) {
        fprintf(stderr, "swav prepare: %s has %u images but %s has %u labels\n", ipath, ni, lpath,
                nl);
        goto out;
    }
    uint32_t n = a->limit > 0 && (uint32_t)a->limit < ni ? (uint32_t)a->limit : ni;
    char dir[PATH_MAX];
    for (int c = 0; c < 10; c++) {
        snprintf(dir, sizeof dir, "%s/%s/%s", out, split, fmnist_classes[c]);
        if (swav_mkdirs(dir, err, sizeof err)) {
            fprintf(stderr, "swav prepare: %s\n", err);
            goto out;
        }
    }
    for (uint32_t k = 0; k < n; k++) {
        uint8_t label = lab[8 + k];
        if (label > 9) {
            fprintf(stderr, "swav prepare: %s: label %u of item %u is not 0..9\n", lpath, label, k);
            goto out;
        }
        unsigned char *jpeg = NULL;
        unsigned long jlen = 0;
        if (tjCompress2(tj, img + 16 + (size_t)k * FMNIST_SIDE * FMNIST_SIDE, FMNIST_SIDE, 0,
                        FMNIST_SIDE, TJPF_GRAY, &jpeg, &jlen, TJSAMP_GRAY, (int)a->quality,
                        TJFLAG_ACCURATEDCT) != 0) {
            fprintf(stderr, "swav prepare: JPEG encoding failed: %s\n", tjGetErrorStr2(tj));
            goto out;
        }
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s/%s/%05u.jpg", out, split, fmnist_classes[label], k);
        FILE *f = fopen(path, "wb");
        int ok = f && fwrite(jpeg, 1, jlen, f) == jlen;
        if (f && fclose(f) != 0) {
            ok = 0;
        }
        tjFree(jpeg);
        if (!ok) {
            fprintf(stderr, "swav prepare: cannot write %s: %s\n", path, strerror(errno));
            goto out;
        }
    }
    fprintf(stderr, "swav prepare: %s: %u images in 10 classes\n", split, n);
    rc = 0;
out:
    free(img);
    free(lab);
    return rc;
}

int swav_prepare_main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[0], "fashion-mnist") != 0) {
        fprintf(stderr,
                "usage: swav prepare fashion-mnist OUT [--source DIR] [--quality Q] [--limit N]\n"
                "  converts Debian's dataset-fashion-mnist into OUT/train and OUT/test\n"
                "  ImageFolder JPEG folders\n");
        return 2;
    }
    const char *out = argv[1];
    struct prepare_args a;
    struct swav_flag_set set = {prepare_flags, sizeof prepare_flags / sizeof *prepare_flags, &a};
    char err[512];
    int pr = swav_flags_parse(&set, 1, argc - 2, argv + 2, err, sizeof err);
    if (pr != 0) {
        if (pr < 0) fprintf(stderr, "swav prepare: %s\n", err);
        swav_flags_usage(stderr, "swav prepare fashion-mnist OUT", &set, 1);
        return pr < 0 ? 2 : 0;
    }
    char done[PATH_MAX];
    snprintf(done, sizeof done, "%s/.prepared", out);
    if (access(done, F_OK) == 0) {
        fprintf(stderr, "swav prepare: %s is already prepared (remove it to redo)\n", out);
        return 0;
    }
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid());
    tjhandle tj = tjInitCompress();
    if (!tj) {
        fprintf(stderr, "swav prepare: cannot start the JPEG encoder: %s\n", tjGetErrorStr2(NULL));
        return 1;
    }
    int rc = 1;
    if (write_split(a.source, tmp, "train", "train", &a, tj) == 0 &&
        write_split(a.source, tmp, "test", "t10k", &a, tj) == 0) {
        char marker[PATH_MAX + 16];
        snprintf(marker, sizeof marker, "%s/.prepared", tmp);
        const char *text = "fashion-mnist\n";
        if (swav_file_write_atomic(marker, text, strlen(text), err, sizeof err) != 0) {
            fprintf(stderr, "swav prepare: %s\n", err);
        } else if (rmdir(out) != 0 && errno != ENOENT) {
            fprintf(stderr, "swav prepare: %s exists and is not an empty folder\n", out);
        } else if (rename(tmp, out) != 0) {
            fprintf(stderr, "swav prepare: cannot rename %s to %s: %s\n", tmp, out,
                    strerror(errno));
        } else {
            fprintf(stderr, "swav prepare: wrote %s (train/ and test/)\n", out);
            rc = 0;
        }
    }
    tjDestroy(tj);
    if (rc != 0 && swav_rm_tree(tmp, err, sizeof err) != 0) {
        fprintf(stderr, "swav prepare: %s\n", err);
    }
    return rc;
}
