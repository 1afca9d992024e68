/* Aligned copies of misaligned tensor frames: see frames.h. */
#include "frames.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"

void assigner_frames_align(struct assigner_frame_align *a, struct proto_rx *rx)
{
    for (size_t i = 1; i < rx->nframes && i < PROTO_MAX_FRAMES; i++) {
        struct proto_frame *f = &rx->frames[i];
        if (f->len == 0 || ((uintptr_t)f->data & 15u) == 0) {
            continue;
        }
        if (a->cap[i] < f->len) {
            free(a->buf[i]);
            a->buf[i] = aligned_alloc(64, (f->len + 63) & ~(size_t)63);
            SWAV_ASSERT(a->buf[i] != NULL);
            a->cap[i] = f->len;
        }
        memcpy(a->buf[i], f->data, f->len);
        f->data = a->buf[i];
    }
}

void assigner_frames_align_free(struct assigner_frame_align *a)
{
    for (size_t i = 0; i < PROTO_MAX_FRAMES; i++) {
        free(a->buf[i]);
        a->buf[i] = NULL;
        a->cap[i] = 0;
    }
}
