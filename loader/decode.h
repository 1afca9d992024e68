/* Image decoding for the loader: JPEG (libjpeg-turbo) and PNG (libpng), told
 * apart by their magic bytes, never by the file name (ImageNet's train set has
 * a PNG named .JPEG).  Every image comes out as 8-bit RGB, interleaved, rows
 * packed (stride = 3 * width), the way PIL's Image.open(f).convert("RGB")
 * gives it to the reference:
 *   - YCbCr / RGB JPEG: libjpeg's accurate integer IDCT and fancy upsampling,
 *     as PIL uses them (baseline and progressive);
 *   - grayscale: the luma replicated to three channels;
 *   - CMYK / YCCK JPEG: read as Adobe-inverted CMYK ("CMYK;I", as PIL assumes)
 *     and converted with PIL's cmyk2rgb;
 *   - PNG: any bit depth / palette / gray / alpha, 16-bit to the high byte
 *     (16-bit gray clamped to 255 instead, as PIL's mode "I"), alpha dropped
 *     (PIL's convert("RGB") drops alpha too, with no compositing).
 * EXIF orientation is ignored, as PIL's Image.open + convert does.
 * Untrusted files get a status code and a message naming the problem, never a
 * crash; a header claiming more than LOADER_MAX_PIXELS pixels is refused
 * before anything is allocated (PIL's decompression-bomb limit). */
#ifndef SWAV_LOADER_DECODE_H
#define SWAV_LOADER_DECODE_H

#include <stddef.h>
#include <stdint.h>

/* PIL's Image.MAX_IMAGE_PIXELS. */
#define LOADER_MAX_PIXELS 89478485LL

/* Status of decoding and augmentation (shared by decode.h and augment.h). */
enum loader_status {
    LOADER_OK = 0,
    LOADER_ERR_EMPTY,          /* zero-byte file */
    LOADER_ERR_FORMAT,         /* neither JPEG nor PNG magic bytes */
    LOADER_ERR_TRUNCATED,      /* the data ends before the image does */
    LOADER_ERR_CORRUPT,        /* the decoder rejected the data */
    LOADER_ERR_TOO_LARGE,      /* width*height over LOADER_MAX_PIXELS (bomb guard) */
    LOADER_ERR_UNSUPPORTED,    /* a valid file of a kind we do not decode */
    LOADER_ERR_SPEC,           /* bad crop spec (caller's input, e.g. from a message) */
};
const char *loader_status_str(enum loader_status st);

enum loader_format {
    LOADER_FORMAT_UNKNOWN = 0,
    LOADER_FORMAT_JPEG,
    LOADER_FORMAT_PNG,
};
/* From the first bytes only. */
enum loader_format loader_format_sniff(const uint8_t *data, size_t len);

/* A decoded image.  The buffer belongs to the decoder that filled it and stays
 * valid until that decoder's next decode or its destruction. */
struct loader_image {
    const uint8_t *rgb;   /* [height][width][3] */
    int width, height;
    enum loader_format format;
    int src_components;   /* 1 gray, 3 color, 4 CMYK (JPEG) / channels (PNG) */
};

/* Per-thread decoder: libjpeg-turbo handle and output buffers, grown to the
 * largest image seen and reused. */
struct loader_decoder;
struct loader_decoder *loader_decoder_new(void);
void loader_decoder_destroy(struct loader_decoder **dec);

/* Reads the header only: format and size, with the same checks as a decode
 * (bomb guard included).  For the dataset index. */
enum loader_status loader_image_probe(const uint8_t *data, size_t len, int *width,
                                      int *height, enum loader_format *format, char *err,
                                      size_t errlen);

/* Decodes the whole file to RGB.  On error, *out is untouched and err holds a
 * message (err may be NULL). */
enum loader_status loader_decode(struct loader_decoder *dec, const uint8_t *data,
                                 size_t len, struct loader_image *out, char *err,
                                 size_t errlen);

#endif
