/* Dataset index: the list of images a data set holds, in torchvision's
 * ImageFolder order, with labels, byte sizes and image sizes.
 *
 * Layout (DESIGN.md "Data sets"):
 *   - ImageFolder: root/<class>/[sub/...]<file>.  Classes are the root's
 *     sub-folders sorted by name (byte order, as Python sorts str); within a
 *     class, torchvision's sorted(os.walk(class_dir, followlinks=True)) order:
 *     folders sorted by full path, files sorted within each folder.  Label =
 *     class number.
 *   - flat: a root with no sub-folder at all; its files, sorted; label -1.
 * Files are kept when their name ends (case-insensitively) in one of
 * torchvision's IMG_EXTENSIONS (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff
 * .webp).  Each kept file's header is probed (JPEG: tjDecompressHeader3,
 * PNG: IHDR with its CRC; the format is sniffed from the bytes, not the
 * name; the size limits are decode.h's LOADER_MAX_PIXELS): a file that
 * is not a decodable JPEG/PNG (zero bytes, truncated header, random bytes,
 * another format) is left out, listed in the report file with the reason, and
 * counted on stderr.  Files with other extensions are ignored as torchvision
 * ignores them, and counted too.
 *
 * An image's index number is its position in this list (torchvision's order
 * with the bad files left out): that number is what orders carry.
 *
 * Cache: with a cache folder, the index is written there as
 * index-<hash of the root's real path>.bin (atomically) and reused while the
 * folder is unchanged: the signature is a hash of every candidate file's
 * relative path, size and mtime (the folders are walked and stat'ed each
 * time; only the header probes are saved).  The bad-file report is
 * index-<hash>.bad.txt beside it. */
#ifndef SWAV_LOADER_INDEX_H
#define SWAV_LOADER_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "loader/decode.h"

struct loader_index_entry {
    const char *path; /* relative to the root ("cls/a.jpg"); in the index's string blob */
    int32_t label;    /* class number, -1 for a flat folder */
    uint32_t width, height;
    uint64_t bytes;   /* file size at indexing */
    uint8_t format;   /* enum loader_format (decode.h): JPEG or PNG */
};

struct loader_index {
    char *root;            /* as given (no trailing '/') */
    uint32_t n;            /* images */
    struct loader_index_entry *entries;
    uint32_t nclasses;     /* 0 for a flat folder */
    const char **classes;  /* class names, sorted; point into the blob */
    uint32_t nbad;         /* candidate files left out (undecodable) */
    uint32_t nignored;     /* files without an image extension */
    uint64_t signature;    /* of the folder contents */
    int from_cache;        /* 1 when the cache file was reused */
    char report_path[4096]; /* "" when there was no cache folder and no report */
    char *blob;            /* strings */
    size_t blob_len;
};

enum loader_index_status {
    LOADER_INDEX_OK = 0,
    LOADER_INDEX_ERR_ROOT,   /* root missing or not a folder */
    LOADER_INDEX_ERR_EMPTY,  /* no decodable image at all */
    LOADER_INDEX_ERR_IO,     /* a folder could not be read */
    LOADER_INDEX_ERR_TOO_MANY, /* more than LOADER_INDEX_MAX_IMAGES */
};
const char *loader_index_status_str(enum loader_index_status st);

#define LOADER_INDEX_MAX_IMAGES (1u << 30)

struct loader_index_opts {
    const char *cache_dir;   /* NULL or "": no cache file (the report goes to report_path) */
    const char *report_path; /* NULL: <cache_dir>/index-<hash>.bad.txt (or none) */
    int threads;             /* header probes in parallel; <= 0: 4 */
    int quiet;               /* 1: no info line on stderr (warnings still printed) */
};

/* Build (or reuse from the cache) the index of `root`.  On success *out is a
 * new index; on failure a status and a message in err naming the path. */
enum loader_index_status loader_index_open(struct loader_index **out, const char *root,
                                           const struct loader_index_opts *opts, char *err,
                                           size_t errlen);
void loader_index_destroy(struct loader_index **ix);

/* The full path of image i (root + '/' + entry path) into buf; returns the
 * length, or -1 when it does not fit or i is out of range. */
int loader_index_path(const struct loader_index *ix, uint32_t i, char *buf, size_t len);

#endif
