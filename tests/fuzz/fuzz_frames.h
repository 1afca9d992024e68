/* The fuzz input format: bytes -> frames.
 *
 *     u8 count            number of frames = count % (PROTO_MAX_FRAMES + 2),
 *                         so 0 .. 17 (17 exercises the too-many-frames path)
 *     then per frame:     u32 little-endian length (clamped to the bytes
 *                         left), then that many bytes
 *
 * Missing bytes make short (or empty) frames.  Each frame is copied into its
 * own malloc'd buffer of exactly its length, so AddressSanitizer catches a
 * read past a frame's end. */
#ifndef SWAV_TESTS_FUZZ_FRAMES_H
#define SWAV_TESTS_FUZZ_FRAMES_H

#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"

#define FUZZ_MAX_FRAMES (PROTO_MAX_FRAMES + 1)

/* Returns the number of frames filled into f (owned: fuzz_frames_free). */
size_t fuzz_frames_parse(const uint8_t *data, size_t size, struct proto_frame *f);
void fuzz_frames_free(struct proto_frame *f, size_t n);
/* The inverse, for corpus generation: writes at most cap bytes, returns the
 * length needed. */
size_t fuzz_frames_serialize(const struct proto_frame *f, size_t n, uint8_t *out, size_t cap);

#endif
