/* Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/):
 * for each message type its valid sample, the sample with a cut header, with
 * its tensor frames missing, with one extra frame, and another type's
 * message; the peek target gets every valid sample.  Run by scripts/fuzz
 * --corpus; the output is committed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_frames.h"
#include "samples.h"

static void write_input(const char *dir, const char *name, const struct proto_frame *f, size_t n)
{
    size_t len = fuzz_frames_serialize(f, n, NULL, 0);
    uint8_t *buf = malloc(len);
    fuzz_frames_serialize(f, n, buf, len);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(buf, 1, len, fp) != len || fclose(fp) != 0) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    free(buf);
}

static void mkdir_or_die(const char *path)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "cannot create %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    mkdir_or_die(argv[1]);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/peek", argv[1]);
    mkdir_or_die(dir);
    for (int t = 1; t < PROTO_TYPE_COUNT; t++) {
        struct proto_msg m, other;
        proto_msg_init(&m);
        proto_msg_init(&other);
        if (sample_encode((enum proto_type)t, &m) != PROTO_OK) {
            fprintf(stderr, "sample %s does not encode\n", proto_type_name((enum proto_type)t));
            return 1;
        }
        sample_encode((enum proto_type)(t % (PROTO_TYPE_COUNT - 1) + 1), &other);
        const char *name = proto_type_name((enum proto_type)t);
        {
            char d2[4096];
            snprintf(d2, sizeof d2, "%s/peek", argv[1]);
            write_input(d2, name, m.frames, m.nframes);
        }
        snprintf(dir, sizeof dir, "%s/%s", argv[1], name);
        mkdir_or_die(dir);
        write_input(dir, "valid", m.frames, m.nframes);
        write_input(dir, "other_type", other.frames, other.nframes);
        struct proto_frame f[FUZZ_MAX_FRAMES];
        memcpy(f, m.frames, m.nframes * sizeof f[0]);
        f[0].len = m.hdr_len / 2;
        write_input(dir, "cut_header", f, m.nframes);
        f[0].len = m.hdr_len;
        if (m.nframes > 1) write_input(dir, "header_only", f, 1);
        f[m.nframes] = f[0];
        write_input(dir, "extra_frame", f, m.nframes + 1);
        proto_msg_free(&m);
        proto_msg_free(&other);
    }
    return 0;
}
