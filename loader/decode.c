/* JPEG and PNG decoding to packed RGB: see decode.h.  The handle and the
 * buffers live in the decoder and are grown, never shrunk, so that a worker
 * thread decoding image after image stops allocating after the first few. */
#include "loader/decode.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>
#include <turbojpeg.h>

#include "common/check.h"

struct loader_decoder {
    tjhandle tj;
    uint8_t *buf;          /* RGB output */
    size_t cap;
    uint8_t *aux;          /* CMYK staging */
    size_t aux_cap;
    png_bytep *rows;       /* PNG row pointers */
    size_t rows_cap;
};

const char *loader_status_str(enum loader_status st)
{
    switch (st) {
    case LOADER_OK: return "ok";
    case LOADER_ERR_EMPTY: return "empty file";
    case LOADER_ERR_FORMAT: return "not a JPEG or PNG file";
    case LOADER_ERR_TRUNCATED: return "truncated image";
    case LOADER_ERR_CORRUPT: return "corrupt image";
    case LOADER_ERR_TOO_LARGE: return "image too large (decompression bomb guard)";
    case LOADER_ERR_UNSUPPORTED: return "unsupported image";
    case LOADER_ERR_SPEC: return "bad crop spec";
    }
    return "unknown status";
}

static enum loader_status fail(enum loader_status st, char *err, size_t errlen,
                               const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static enum loader_status fail(enum loader_status st, char *err, size_t errlen,
                               const char *fmt, ...)
{
    if (err && errlen) {
        int n = snprintf(err, errlen, "%s: ", loader_status_str(st));
        if (n >= 0 && (size_t)n < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return st;
}

enum loader_format loader_format_sniff(const uint8_t *data, size_t len)
{
    if (len >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
        return LOADER_FORMAT_JPEG;
    }
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (len >= 8 && memcmp(data, png_sig, 8) == 0) {
        return LOADER_FORMAT_PNG;
    }
    return LOADER_FORMAT_UNKNOWN;
}

struct loader_decoder *loader_decoder_new(void)
{
    struct loader_decoder *d = swav_xcalloc(1, sizeof(*d));
    d->tj = tjInitDecompress();
    SWAV_ASSERT(d->tj != NULL);
    return d;
}

void loader_decoder_destroy(struct loader_decoder **dec)
{
    if (!dec || !*dec) {
        return;
    }
    struct loader_decoder *d = *dec;
    tjDestroy(d->tj);
    free(d->buf);
    free(d->aux);
    free(d->rows);
    free(d);
    *dec = NULL;
}

static uint8_t *grow(uint8_t **p, size_t *cap, size_t n)
{
    /* one huge image must not pin hundreds of MiB in every worker for good */
    if (*cap < n || (*cap > ((size_t)64 << 20) && n < *cap / 4)) {
        free(*p);
        /* round up to 1 MiB steps so near sizes reuse the buffer */
        size_t c = (n + (1u << 20) - 1) & ~(size_t)((1u << 20) - 1);
        *p = swav_xmalloc(c);
        *cap = c;
    }
    return *p;
}

/* ---- JPEG ---------------------------------------------------------------- */

/* Walks the markers up to the frame header (SOFn) ourselves: turbojpeg 2.1's
 * tjDecompressHeader3 can report success with garbage sizes on a file cut
 * inside its header, and the size must be trusted before any allocation. */
static enum loader_status jpeg_frame_size(const uint8_t *d, size_t len, int *w, int *h,
                                          char *err, size_t errlen)
{
    size_t pos = 2; /* after SOI */
    for (;;) {
        if (pos >= len) {
            return fail(LOADER_ERR_TRUNCATED, err, errlen, "JPEG ends before its frame header");
        }
        if (d[pos] != 0xFF) {
            return fail(LOADER_ERR_CORRUPT, err, errlen, "JPEG: no marker at byte %zu", pos);
        }
        while (pos < len && d[pos] == 0xFF) {
            pos++;
        }
        if (pos >= len) {
            return fail(LOADER_ERR_TRUNCATED, err, errlen, "JPEG ends before its frame header");
        }
        uint8_t m = d[pos++];
        if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) {
            continue; /* standalone markers */
        }
        if (m == 0xD9 || m == 0xDA || m == 0xD8) {
            return fail(LOADER_ERR_CORRUPT, err, errlen, "JPEG: marker 0x%02X before the frame header", m);
        }
        if (pos + 2 > len) {
            return fail(LOADER_ERR_TRUNCATED, err, errlen, "JPEG ends inside a marker segment");
        }
        size_t seg = ((size_t)d[pos] << 8) | d[pos + 1];
        if (seg < 2) {
            return fail(LOADER_ERR_CORRUPT, err, errlen, "JPEG: segment length %zu", seg);
        }
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            if (pos + 8 > len) {
                return fail(LOADER_ERR_TRUNCATED, err, errlen, "JPEG ends inside its frame header");
            }
            *h = (d[pos + 3] << 8) | d[pos + 4];
            *w = (d[pos + 5] << 8) | d[pos + 6];
            if (*w == 0 || *h == 0) {
                return fail(LOADER_ERR_CORRUPT, err, errlen, "JPEG frame size %dx%d", *w, *h);
            }
            return LOADER_OK;
        }
        pos += seg;
    }
}

static enum loader_status jpeg_header(tjhandle tj, const uint8_t *data, size_t len,
                                      int *w, int *h, int *cs, char *err, size_t errlen)
{
    int subsamp = 0;
    if (len > 0xFFFFFFFFul) {
        return fail(LOADER_ERR_TOO_LARGE, err, errlen, "JPEG file of %zu bytes", len);
    }
    int fw = 0, fh = 0;
    enum loader_status st = jpeg_frame_size(data, len, &fw, &fh, err, errlen);
    if (st != LOADER_OK) {
        return st;
    }
    if ((long long)fw * fh > LOADER_MAX_PIXELS) {
        return fail(LOADER_ERR_TOO_LARGE, err, errlen,
                    "JPEG claims %dx%d = %lld pixels, over the limit of %lld", fw, fh,
                    (long long)fw * fh, (long long)LOADER_MAX_PIXELS);
    }
    if (tjDecompressHeader3(tj, data, (unsigned long)len, w, h, &subsamp, cs) != 0) {
        const char *m = tjGetErrorStr2(tj);
        st = LOADER_ERR_CORRUPT;
        if (strstr(m, "Premature end") || strstr(m, "premature end")) {
            st = LOADER_ERR_TRUNCATED;
        }
        return fail(st, err, errlen, "JPEG header: %s", m);
    }
    if (*w != fw || *h != fh) {
        return fail(LOADER_ERR_CORRUPT, err, errlen, "JPEG header: size %dx%d, frame says %dx%d",
                    *w, *h, fw, fh);
    }
    return LOADER_OK;
}

/* PIL's cmyk2rgb on Adobe-inverted data (PIL reads CMYK JPEGs as "CMYK;I"). */
static void cmyk_inverted_to_rgb(uint8_t *restrict rgb, const uint8_t *restrict cmyk,
                                 size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int c = 255 - cmyk[4 * i], m = 255 - cmyk[4 * i + 1], y = 255 - cmyk[4 * i + 2];
        int nk = cmyk[4 * i + 3]; /* 255 - (255 - k) */
        int t;
        t = c * nk + 128;
        int r = nk - (((t >> 8) + t) >> 8);
        t = m * nk + 128;
        int g = nk - (((t >> 8) + t) >> 8);
        t = y * nk + 128;
        int b = nk - (((t >> 8) + t) >> 8);
        rgb[3 * i] = (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
        rgb[3 * i + 1] = (uint8_t)(g < 0 ? 0 : g > 255 ? 255 : g);
        rgb[3 * i + 2] = (uint8_t)(b < 0 ? 0 : b > 255 ? 255 : b);
    }
}

static enum loader_status jpeg_decode(struct loader_decoder *d, const uint8_t *data,
                                      size_t len, struct loader_image *out, char *err,
                                      size_t errlen)
{
    int w, h, cs;
    enum loader_status st = jpeg_header(d->tj, data, len, &w, &h, &cs, err, errlen);
    if (st != LOADER_OK) {
        return st;
    }
    size_t npix = (size_t)w * (size_t)h;
    uint8_t *rgb = grow(&d->buf, &d->cap, npix * 3);
    int cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
    uint8_t *dst = cmyk ? grow(&d->aux, &d->aux_cap, npix * 4) : rgb;
    int rc = tjDecompress2(d->tj, data, (unsigned long)len, dst, w, 0, h,
                           cmyk ? TJPF_CMYK : TJPF_RGB, 0);
    if (rc != 0) {
        const char *m = tjGetErrorStr2(d->tj);
        int warning = tjGetErrorCode(d->tj) == TJERR_WARNING;
        if (strstr(m, "Premature end")) {
            /* PIL: "image file is truncated" */
            return fail(LOADER_ERR_TRUNCATED, err, errlen, "JPEG data: %s", m);
        }
        if (!warning) {
            return fail(LOADER_ERR_CORRUPT, err, errlen, "JPEG data: %s", m);
        }
        /* Other warnings (extraneous bytes, ...): PIL decodes these too. */
    }
    if (cmyk) {
        cmyk_inverted_to_rgb(rgb, dst, npix);
    }
    out->rgb = rgb;
    out->width = w;
    out->height = h;
    out->format = LOADER_FORMAT_JPEG;
    out->src_components = cmyk ? 4 : cs == TJCS_GRAY ? 1 : 3;
    return LOADER_OK;
}

/* ---- PNG ----------------------------------------------------------------- */

struct png_src {
    const uint8_t *data;
    size_t len, pos;
    int truncated;
    char msg[160];
};

static void png_read_mem(png_structp p, png_bytep out, png_size_t n)
{
    struct png_src *s = png_get_io_ptr(p);
    if (n > s->len - s->pos) {
        s->truncated = 1;
        png_error(p, "file ends early");
    }
    memcpy(out, s->data + s->pos, n);
    s->pos += n;
}

static void png_on_error(png_structp p, png_const_charp msg)
{
    struct png_src *s = png_get_error_ptr(p);
    snprintf(s->msg, sizeof(s->msg), "%s", msg);
    png_longjmp(p, 1);
}

static void png_on_warning(png_structp p, png_const_charp msg)
{
    (void)p;
    (void)msg;
}

/* header_only: fills w/h and stops. */
static enum loader_status png_run(struct loader_decoder *d, const uint8_t *data,
                                  size_t len, int header_only, int *pw, int *ph,
                                  int *pchannels, char *err, size_t errlen)
{
    struct png_src src = {.data = data, .len = len};
    png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error,
                                           png_on_warning);
    SWAV_ASSERT(p != NULL);
    png_infop info = png_create_info_struct(p);
    SWAV_ASSERT(info != NULL);
    volatile enum loader_status st = LOADER_OK;
    if (setjmp(png_jmpbuf(p))) {
        enum loader_status e = src.truncated || strstr(src.msg, "Not enough image data") ||
                                       strstr(src.msg, "Read Error")
                                   ? LOADER_ERR_TRUNCATED
                                   : LOADER_ERR_CORRUPT;
        png_destroy_read_struct(&p, &info, NULL);
        return fail(e, err, errlen, "PNG: %s", src.msg);
    }
    png_set_user_limits(p, 1000000, 1000000);
    png_set_read_fn(p, &src, png_read_mem);
    png_read_info(p, info);
    png_uint_32 w = 0, h = 0;
    int depth, color, interlace;
    png_get_IHDR(p, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    if ((long long)w * h > LOADER_MAX_PIXELS) {
        png_destroy_read_struct(&p, &info, NULL);
        return fail(LOADER_ERR_TOO_LARGE, err, errlen,
                    "PNG claims %ux%u = %lld pixels, over the limit of %lld", (unsigned)w,
                    (unsigned)h, (long long)w * h, (long long)LOADER_MAX_PIXELS);
    }
    *pw = (int)w;
    *ph = (int)h;
    *pchannels = png_get_channels(p, info);
    if (header_only) {
        png_destroy_read_struct(&p, &info, NULL);
        return st;
    }
    if (depth == 16 && color == PNG_COLOR_TYPE_GRAY) {
        /* PIL opens 16-bit gray as mode "I" and convert("RGB") clamps each
         * value to 255 (i2rgb), it does not scale: do the same. */
        png_set_interlace_handling(p);
        png_read_update_info(p, info);
        if (png_get_rowbytes(p, info) != (size_t)w * 2) {
            png_destroy_read_struct(&p, &info, NULL);
            return fail(LOADER_ERR_UNSUPPORTED, err, errlen, "PNG layout (16-bit gray)");
        }
        uint8_t *g16 = grow(&d->aux, &d->aux_cap, (size_t)w * h * 2);
        uint8_t *rgb = grow(&d->buf, &d->cap, (size_t)w * h * 3);
        if (d->rows_cap < h) {
            free(d->rows);
            d->rows = swav_xmalloc(sizeof(png_bytep) * h);
            d->rows_cap = h;
        }
        for (png_uint_32 y = 0; y < h; y++) {
            d->rows[y] = g16 + (size_t)y * w * 2;
        }
        png_read_image(p, d->rows);
        png_destroy_read_struct(&p, &info, NULL);
        for (size_t i = 0; i < (size_t)w * h; i++) {
            unsigned v = ((unsigned)g16[2 * i] << 8) | g16[2 * i + 1];
            uint8_t c = (uint8_t)(v > 255 ? 255 : v);
            rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = c;
        }
        return st;
    }
    /* To 8-bit RGB: palette and low-depth gray expanded, 16 bits to their high
     * byte (as PIL's "RGB;16B" unpacker), alpha dropped (as convert("RGB")). */
    png_set_expand(p);
    png_set_strip_16(p);
    png_set_strip_alpha(p);
    png_set_gray_to_rgb(p);
    png_set_interlace_handling(p);
    png_read_update_info(p, info);
    if (png_get_rowbytes(p, info) != (size_t)w * 3) {
        png_destroy_read_struct(&p, &info, NULL);
        return fail(LOADER_ERR_UNSUPPORTED, err, errlen, "PNG layout (color type %d, depth %d)",
                    color, depth);
    }
    uint8_t *rgb = grow(&d->buf, &d->cap, (size_t)w * h * 3);
    if (d->rows_cap < h) {
        free(d->rows);
        d->rows = swav_xmalloc(sizeof(png_bytep) * h);
        d->rows_cap = h;
    }
    for (png_uint_32 y = 0; y < h; y++) {
        d->rows[y] = rgb + (size_t)y * w * 3;
    }
    png_read_image(p, d->rows);
    png_destroy_read_struct(&p, &info, NULL);
    return st;
}

/* ---- public -------------------------------------------------------------- */

enum loader_status loader_image_probe(const uint8_t *data, size_t len, int *width,
                                      int *height, enum loader_format *format, char *err,
                                      size_t errlen)
{
    if (len == 0) {
        return fail(LOADER_ERR_EMPTY, err, errlen, "0 bytes");
    }
    enum loader_format f = loader_format_sniff(data, len);
    int w = 0, h = 0;
    enum loader_status st;
    if (f == LOADER_FORMAT_JPEG) {
        tjhandle tj = tjInitDecompress();
        SWAV_ASSERT(tj != NULL);
        int cs;
        st = jpeg_header(tj, data, len, &w, &h, &cs, err, errlen);
        tjDestroy(tj);
    } else if (f == LOADER_FORMAT_PNG) {
        int ch;
        st = png_run(NULL, data, len, 1, &w, &h, &ch, err, errlen);
    } else {
        return fail(LOADER_ERR_FORMAT, err, errlen, "first bytes %02x %02x %02x %02x",
                    data[0], len > 1 ? data[1] : 0, len > 2 ? data[2] : 0,
                    len > 3 ? data[3] : 0);
    }
    if (st == LOADER_OK) {
        if (width) *width = w;
        if (height) *height = h;
        if (format) *format = f;
    }
    return st;
}

enum loader_status loader_decode(struct loader_decoder *dec, const uint8_t *data,
                                 size_t len, struct loader_image *out, char *err,
                                 size_t errlen)
{
    SWAV_ASSERT(dec != NULL && out != NULL);
    if (len == 0 || data == NULL) {
        return fail(LOADER_ERR_EMPTY, err, errlen, "0 bytes");
    }
    enum loader_format f = loader_format_sniff(data, len);
    if (f == LOADER_FORMAT_JPEG) {
        return jpeg_decode(dec, data, len, out, err, errlen);
    }
    if (f == LOADER_FORMAT_PNG) {
        int w, h, ch;
        enum loader_status st = png_run(dec, data, len, 0, &w, &h, &ch, err, errlen);
        if (st == LOADER_OK) {
            out->rgb = dec->buf;
            out->width = w;
            out->height = h;
            out->format = LOADER_FORMAT_PNG;
            out->src_components = ch;
        }
        return st;
    }
    return fail(LOADER_ERR_FORMAT, err, errlen, "first bytes %02x %02x %02x %02x", data[0],
                len > 1 ? data[1] : 0, len > 2 ? data[2] : 0, len > 3 ? data[3] : 0);
}
