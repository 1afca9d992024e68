/* ZeroMQ hands over received frames at any address (a large frame is often a
 * slice of the receive buffer at an odd offset), while proto's decoders want
 * tensor frames aligned to their element size.  Frames 1.. that are not
 * 16-byte aligned are copied into reusable aligned buffers and the frame
 * pointers redirected; buffers grow to the largest frame seen and are kept. */
#ifndef SWAV_ASSIGNER_FRAMES_H
#define SWAV_ASSIGNER_FRAMES_H

#include <stddef.h>

#include "proto/wire.h"

struct assigner_frame_align {
    void *buf[PROTO_MAX_FRAMES];
    size_t cap[PROTO_MAX_FRAMES];
};

void assigner_frames_align(struct assigner_frame_align *a, struct proto_rx *rx);
void assigner_frames_align_free(struct assigner_frame_align *a);

#endif
