/* bytes <-> frames for the fuzz targets: see fuzz_frames.h. */
#include "fuzz_frames.h"

#include <stdlib.h>
#include <string.h>

size_t fuzz_frames_parse(const uint8_t *data, size_t size, struct proto_frame *f)
{
    if (size == 0) return 0;
    size_t n = data[0] % (FUZZ_MAX_FRAMES + 1);
    size_t pos = 1;
    for (size_t i = 0; i < n; i++) {
        uint32_t len = 0;
        for (int b = 0; b < 4; b++) {
            len |= (uint32_t)(pos < size ? data[pos] : 0) << (8 * b);
            pos++;
        }
        size_t left = pos < size ? size - pos : 0;
        size_t l = len < left ? len : left;
        /* malloc(0) may return NULL: keep a valid pointer for empty frames */
        void *buf = malloc(l ? l : 1);
        if (l) memcpy(buf, data + pos, l);
        f[i].data = buf;
        f[i].len = l;
        pos += l;
    }
    return n;
}

void fuzz_frames_free(struct proto_frame *f, size_t n)
{
    for (size_t i = 0; i < n; i++) free((void *)f[i].data);
}

size_t fuzz_frames_serialize(const struct proto_frame *f, size_t n, uint8_t *out, size_t cap)
{
    size_t pos = 0;
#define PUT(byte) do { if (pos < cap) out[pos] = (uint8_t)(byte); pos++; } while (0)
    PUT(n);
    for (size_t i = 0; i < n; i++) {
        for (int b = 0; b < 4; b++) PUT((uint32_t)f[i].len >> (8 * b));
        for (size_t k = 0; k < f[i].len; k++) PUT(((const uint8_t *)f[i].data)[k]);
    }
#undef PUT
    return pos;
}
