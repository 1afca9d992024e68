/* Dataset index: walk, sort as torchvision does, probe headers in parallel,
 * cache.  See index.h for the rules; this file is the how. */
#include "index.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "common/check.h"
#include "common/fileio.h"
#include "common/log.h"

#define INDEX_MAGIC "SWAVIDX1"
#define INDEX_VERSION 1u
#define PROBE_PREFIX (64u * 1024u)
#define PROBE_MAX_FILE (256ull << 20) /* a header probe reads at most this much */
#define MAX_SIDE 65535u
#define MAX_PIXELS ((uint64_t)LOADER_MAX_PIXELS) /* the decoder's bomb guard */
#define MAX_DEPTH 64 /* folder nesting (followlinks can loop) */

const char *loader_index_status_str(enum loader_index_status st)
{
    switch (st) {
    case LOADER_INDEX_OK: return "ok";
    case LOADER_INDEX_ERR_ROOT: return "root is not a readable folder";
    case LOADER_INDEX_ERR_EMPTY: return "no decodable image";
    case LOADER_INDEX_ERR_IO: return "folder read error";
    case LOADER_INDEX_ERR_TOO_MANY: return "too many images";
    }
    return "unknown status";
}

/* ---- header probes --------------------------------------------------------- */

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint32_t crc32_png(const uint8_t *p, size_t n)
{
    static uint32_t table[256];
    static atomic_int ready;
    if (!atomic_load(&ready)) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        atomic_store(&ready, 1);
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static enum loader_format probe_png(const uint8_t *p, size_t len, uint32_t *w, uint32_t *h,
                                          char *why, size_t whylen)
{
    if (len < 33) {
        snprintf(why, whylen, "PNG truncated before the end of IHDR (%zu bytes)", len);
        return LOADER_FORMAT_UNKNOWN;
    }
    if (be32(p + 8) != 13 || memcmp(p + 12, "IHDR", 4) != 0) {
        snprintf(why, whylen, "PNG without an IHDR chunk first");
        return LOADER_FORMAT_UNKNOWN;
    }
    if (crc32_png(p + 12, 17) != be32(p + 29)) {
        snprintf(why, whylen, "PNG IHDR checksum mismatch");
        return LOADER_FORMAT_UNKNOWN;
    }
    uint32_t ww = be32(p + 16), hh = be32(p + 20);
    uint8_t depth = p[24], ctype = p[25];
    int ok_depth = 0;
    switch (ctype) {
    case 0: ok_depth = depth == 1 || depth == 2 || depth == 4 || depth == 8 || depth == 16; break;
    case 3: ok_depth = depth == 1 || depth == 2 || depth == 4 || depth == 8; break;
    case 2: case 4: case 6: ok_depth = depth == 8 || depth == 16; break;
    default: ok_depth = 0;
    }
    if (!ok_depth) {
        snprintf(why, whylen, "PNG with invalid color type %u / bit depth %u", ctype, depth);
        return LOADER_FORMAT_UNKNOWN;
    }
    if (ww == 0 || hh == 0 || ww > MAX_SIDE || hh > MAX_SIDE ||
        (uint64_t)ww * hh > MAX_PIXELS) {
        snprintf(why, whylen, "PNG size %ux%u out of range", ww, hh);
        return LOADER_FORMAT_UNKNOWN;
    }
    *w = ww;
    *h = hh;
    return LOADER_FORMAT_PNG;
}

static enum loader_format probe_jpeg(tjhandle tj, const uint8_t *p, size_t len, uint32_t *w,
                                           uint32_t *h, char *why, size_t whylen)
{
    int ww = 0, hh = 0, subsamp = 0, cs = 0;
    if (tjDecompressHeader3(tj, p, (unsigned long)len, &ww, &hh, &subsamp, &cs) != 0) {
        snprintf(why, whylen, "JPEG header: %s", tjGetErrorStr2(tj));
        return LOADER_FORMAT_UNKNOWN;
    }
    if (ww <= 0 || hh <= 0 || (unsigned)ww > MAX_SIDE || (unsigned)hh > MAX_SIDE ||
        (uint64_t)ww * (uint64_t)hh > MAX_PIXELS) {
        snprintf(why, whylen, "JPEG size %dx%d out of range", ww, hh);
        return LOADER_FORMAT_UNKNOWN;
    }
    *w = (uint32_t)ww;
    *h = (uint32_t)hh;
    return LOADER_FORMAT_JPEG;
}

static enum loader_format probe_with(tjhandle tj, const void *data, size_t len, uint32_t *w,
                                           uint32_t *h, char *why, size_t whylen)
{
    const uint8_t *p = data;
    if (len == 0) {
        snprintf(why, whylen, "empty file");
        return LOADER_FORMAT_UNKNOWN;
    }
    if (len >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) {
        return probe_jpeg(tj, p, len, w, h, why, whylen);
    }
    if (len >= 8 && !memcmp(p, "\x89PNG\r\n\x1a\n", 8)) {
        return probe_png(p, len, w, h, why, whylen);
    }
    if (len >= 2 && ((p[0] == 'B' && p[1] == 'M') || (p[0] == 'P' && p[1] >= '1' && p[1] <= '7'))) {
        snprintf(why, whylen, "BMP/PNM image: only JPEG and PNG are decoded");
    } else if (len >= 4 && (!memcmp(p, "II*\0", 4) || !memcmp(p, "MM\0*", 4))) {
        snprintf(why, whylen, "TIFF image: only JPEG and PNG are decoded");
    } else if (len >= 12 && !memcmp(p, "RIFF", 4) && !memcmp(p + 8, "WEBP", 4)) {
        snprintf(why, whylen, "WebP image: only JPEG and PNG are decoded");
    } else if (len >= 4 && !memcmp(p, "GIF8", 4)) {
        snprintf(why, whylen, "GIF image: only JPEG and PNG are decoded");
    } else {
        snprintf(why, whylen, "not an image (unknown signature %02x %02x %02x %02x)", p[0],
                 len > 1 ? p[1] : 0, len > 2 ? p[2] : 0, len > 3 ? p[3] : 0);
    }
    return LOADER_FORMAT_UNKNOWN;
}

/* ---- walking ----------------------------------------------------------------- */

struct cand {
    char *rel;       /* relative to the root */
    int32_t label;
    uint64_t size;
    int64_t mtime_ns;
    /* probe results */
    uint32_t w, h;
    uint8_t format;
    char *why;       /* reason when bad (malloc'd) */
};

struct cand_list {
    struct cand *v;
    size_t n, cap;
};

struct str_list {
    char **v;
    size_t n, cap;
};

static void str_push(struct str_list *l, char *s)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->v = swav_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = s;
}

static void str_free(struct str_list *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int has_image_ext(const char *name)
{
    static const char *ext[] = {".jpg", ".jpeg", ".png", ".ppm", ".bmp",
                                ".pgm", ".tif", ".tiff", ".webp"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        size_t k = strlen(ext[i]);
        if (n >= k && !strcasecmp(name + n - k, ext[i])) return 1;
    }
    return 0;
}

static char *join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = swav_xmalloc(la + lb + 2);
    memcpy(s, a, la);
    size_t k = la;
    if (la > 0) s[k++] = '/';
    memcpy(s + k, b, lb + 1);
    return s;
}

/* List one folder: sub-folders (following links) and other entries. */
static int list_dir(const char *path, struct str_list *dirs, struct str_list *files, char *err,
                    size_t errlen)
{
    DIR *d = opendir(path);
    if (!d) {
        snprintf(err, errlen, "cannot open folder %s: %s", path, strerror(errno));
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        int is_dir = 0;
        if (e->d_type == DT_DIR) {
            is_dir = 1;
        } else if (e->d_type == DT_LNK || e->d_type == DT_UNKNOWN) {
            char *full = join(path, e->d_name);
            struct stat st;
            is_dir = stat(full, &st) == 0 && S_ISDIR(st.st_mode);
            free(full);
        }
        str_push(is_dir ? dirs : files, swav_xstrdup(e->d_name));
    }
    closedir(d);
    qsort(dirs->v, dirs->n, sizeof *dirs->v, cmp_str);
    qsort(files->v, files->n, sizeof *files->v, cmp_str);
    return 0;
}

struct walk_dir {
    char *rel;                 /* relative to the root */
    struct str_list files;     /* sorted names */
};

struct walk_state {
    const char *root;
    struct walk_dir *v;
    size_t n, cap;
    uint32_t nignored;
    char *err;
    size_t errlen;
};

/* os.walk(top, followlinks=True), collecting every folder with its files. */
static int walk(struct walk_state *ws, const char *rel, int depth)
{
    if (depth > MAX_DEPTH) {
        LOG_WARN("index: %s/%s is nested deeper than %d folders (a link loop?): not descended",
                 ws->root, rel, MAX_DEPTH);
        return 0;
    }
    char *full = join(ws->root, rel);
    struct str_list dirs = {0}, files = {0};
    int rc = list_dir(full, &dirs, &files, ws->err, ws->errlen);
    free(full);
    if (rc) {
        str_free(&dirs);
        str_free(&files);
        return -1;
    }
    if (ws->n == ws->cap) {
        ws->cap = ws->cap ? 2 * ws->cap : 16;
        ws->v = swav_xrealloc(ws->v, ws->cap * sizeof *ws->v);
    }
    ws->v[ws->n].rel = swav_xstrdup(rel);
    ws->v[ws->n].files = files;
    ws->n++;
    for (size_t i = 0; i < dirs.n && rc == 0; i++) {
        char *sub = join(rel, dirs.v[i]);
        rc = walk(ws, sub, depth + 1);
        free(sub);
    }
    str_free(&dirs);
    return rc;
}

static int cmp_walk_dir(const void *a, const void *b)
{
    return strcmp(((const struct walk_dir *)a)->rel, ((const struct walk_dir *)b)->rel);
}

static void cand_push(struct cand_list *l, struct cand c)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->v = swav_xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = c;
}

/* Add the candidates under rel (a class folder, or "" for a flat root's files
 * only) in torchvision's order. */
static int collect(const char *root, const char *rel, int32_t label, int recursive,
                   struct cand_list *out, uint32_t *nignored, char *err, size_t errlen)
{
    struct walk_state ws = {.root = root, .err = err, .errlen = errlen};
    int rc;
    if (recursive) {
        rc = walk(&ws, rel, 0);
    } else {
        struct str_list dirs = {0}, files = {0};
        char *full = join(root, rel);
        rc = list_dir(full, &dirs, &files, err, errlen);
        free(full);
        str_free(&dirs);
        if (rc == 0) {
            ws.v = swav_xmalloc(sizeof *ws.v);
            ws.v[0].rel = swav_xstrdup(rel);
            ws.v[0].files = files;
            ws.n = 1;
        } else {
            str_free(&files);
        }
    }
    if (rc == 0) {
        /* sorted(os.walk(...)) sorts the (root, dirs, files) tuples by root. */
        qsort(ws.v, ws.n, sizeof *ws.v, cmp_walk_dir);
        for (size_t d = 0; d < ws.n; d++) {
            for (size_t f = 0; f < ws.v[d].files.n; f++) {
                const char *name = ws.v[d].files.v[f];
                if (!has_image_ext(name)) {
                    (*nignored)++;
                    continue;
                }
                struct cand c = {.rel = join(ws.v[d].rel, name), .label = label};
                char *full = join(root, c.rel);
                struct stat st;
                if (stat(full, &st) == 0) {
                    c.size = (uint64_t)st.st_size;
                    c.mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
                } else {
                    c.size = UINT64_MAX; /* broken link: the probe says why */
                    c.mtime_ns = -1;
                }
                free(full);
                cand_push(out, c);
            }
        }
    }
    for (size_t d = 0; d < ws.n; d++) {
        free(ws.v[d].rel);
        str_free(&ws.v[d].files);
    }
    free(ws.v);
    return rc;
}

/* ---- parallel probes ------------------------------------------------------------- */

struct probe_job {
    const char *root;
    struct cand *c;
    size_t n;
    atomic_size_t next;
};

static void probe_one(tjhandle tj, const char *root, struct cand *c, uint8_t **buf, size_t *cap)
{
    char why[256];
    char *full = join(root, c->rel);
    int fd = open(full, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, sizeof why, "cannot open: %s", strerror(errno));
        goto bad;
    }
    size_t want = PROBE_PREFIX, have = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (want > *cap) {
            *buf = swav_xrealloc(*buf, want);
            *cap = want;
        }
        while (have < want) {
            ssize_t r = read(fd, *buf + have, want - have);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                snprintf(why, sizeof why, "read error: %s", strerror(errno));
                close(fd);
                goto bad;
            }
            if (r == 0) break;
            have += (size_t)r;
        }
        uint32_t w = 0, h = 0;
        enum loader_format f = probe_with(tj, *buf, have, &w, &h, why, sizeof why);
        if (f != LOADER_FORMAT_UNKNOWN) {
            close(fd);
            c->format = (uint8_t)f;
            c->w = w;
            c->h = h;
            free(full);
            return;
        }
        /* A JPEG whose header runs past the prefix (big EXIF/ICC segments):
         * once more with the whole file. */
        int jpeg = have >= 3 && (*buf)[0] == 0xFF && (*buf)[1] == 0xD8 && (*buf)[2] == 0xFF;
        if (pass == 0 && jpeg && have == want && c->size > want && c->size <= PROBE_MAX_FILE) {
            want = (size_t)c->size;
            continue;
        }
        break;
    }
    close(fd);
bad:
    c->format = LOADER_FORMAT_UNKNOWN;
    c->why = swav_xstrdup(why);
    free(full);
}

static void *probe_thread(void *arg)
{
    struct probe_job *job = arg;
    tjhandle tj = tjInitDecompress();
    SWAV_ASSERT(tj != NULL);
    uint8_t *buf = NULL;
    size_t cap = 0;
    for (;;) {
        size_t i = atomic_fetch_add(&job->next, 1);
        if (i >= job->n) break;
        probe_one(tj, job->root, &job->c[i], &buf, &cap);
    }
    free(buf);
    tjDestroy(tj);
    return NULL;
}

static void probe_all(const char *root, struct cand *c, size_t n, int threads)
{
    struct probe_job job = {.root = root, .c = c, .n = n};
    atomic_init(&job.next, 0);
    if (threads <= 0) threads = 4;
    if ((size_t)threads > n / 16 + 1) threads = (int)(n / 16 + 1);
    pthread_t *t = swav_xcalloc((size_t)threads, sizeof *t);
    for (int i = 1; i < threads; i++) PTHREAD_CHECK(pthread_create(&t[i], NULL, probe_thread, &job));
    probe_thread(&job);
    for (int i = 1; i < threads; i++) PTHREAD_CHECK(pthread_join(t[i], NULL));
    free(t);
}

/* ---- signature and cache ---------------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const void *data, size_t n)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ull

static uint64_t signature(int flat, const struct str_list *classes, const struct cand_list *cl)
{
    uint64_t h = FNV_INIT;
    uint32_t v = INDEX_VERSION;
    h = fnv1a(h, &v, sizeof v);
    h = fnv1a(h, &flat, sizeof flat);
    for (size_t i = 0; i < classes->n; i++) h = fnv1a(h, classes->v[i], strlen(classes->v[i]) + 1);
    for (size_t i = 0; i < cl->n; i++) {
        const struct cand *c = &cl->v[i];
        h = fnv1a(h, c->rel, strlen(c->rel) + 1);
        h = fnv1a(h, &c->label, sizeof c->label);
        h = fnv1a(h, &c->size, sizeof c->size);
        h = fnv1a(h, &c->mtime_ns, sizeof c->mtime_ns);
    }
    return h;
}

struct cache_header {
    char magic[8];
    uint32_t version;
    uint32_t flat;
    uint64_t signature;
    uint32_t n, nclasses, nbad, nignored;
    uint64_t blob_len;
};

struct cache_entry {
    uint64_t bytes;
    uint64_t path_off;
    uint32_t width, height;
    int32_t label;
    uint32_t format;
};

static void index_free_parts(struct loader_index *ix)
{
    if (!ix) return;
    free(ix->root);
    free(ix->entries);
    free(ix->classes);
    free(ix->blob);
    free(ix);
}

void loader_index_destroy(struct loader_index **ix)
{
    if (!ix || !*ix) return;
    index_free_parts(*ix);
    *ix = NULL;
}

/* Parse a cache file; NULL when it is not valid for `sig` (a stale or
 * damaged cache is rebuilt, never trusted). */
static struct loader_index *cache_load(const char *path, uint64_t sig, const char *root)
{
    void *data = NULL;
    size_t len = 0;
    char err[512];
    if (swav_file_read_all(path, (size_t)1 << 34, &data, &len, err, sizeof err) != 0) return NULL;
    struct loader_index *ix = NULL;
    const uint8_t *p = data;
    struct cache_header h;
    if (len < sizeof h) goto bad;
    memcpy(&h, p, sizeof h);
    if (memcmp(h.magic, INDEX_MAGIC, 8) || h.version != INDEX_VERSION || h.signature != sig)
        goto bad;
    if (h.n == 0 || h.n > LOADER_INDEX_MAX_IMAGES || h.nclasses > LOADER_INDEX_MAX_IMAGES) goto bad;
    size_t need = sizeof h + (size_t)h.n * sizeof(struct cache_entry) +
                  (size_t)h.nclasses * sizeof(uint64_t);
    if (need > len || len - need != h.blob_len || h.blob_len == 0 || p[len - 1] != 0) goto bad;
    ix = swav_xcalloc(1, sizeof *ix);
    ix->root = swav_xstrdup(root);
    ix->n = h.n;
    ix->nclasses = h.nclasses;
    ix->nbad = h.nbad;
    ix->nignored = h.nignored;
    ix->signature = sig;
    ix->blob_len = h.blob_len;
    ix->blob = swav_xmalloc(h.blob_len);
    memcpy(ix->blob, p + need, h.blob_len);
    ix->entries = swav_xcalloc(h.n, sizeof *ix->entries);
    ix->classes = swav_xcalloc(h.nclasses ? h.nclasses : 1, sizeof *ix->classes);
    const uint8_t *q = p + sizeof h;
    for (uint32_t i = 0; i < h.n; i++, q += sizeof(struct cache_entry)) {
        struct cache_entry e;
        memcpy(&e, q, sizeof e);
        if (e.path_off >= h.blob_len) goto bad;
        if ((e.format != LOADER_FORMAT_JPEG && e.format != LOADER_FORMAT_PNG) ||
            e.label < -1 || (e.label >= 0 && (uint32_t)e.label >= h.nclasses))
            goto bad;
        ix->entries[i] = (struct loader_index_entry){
            .path = ix->blob + e.path_off, .label = e.label, .width = e.width,
            .height = e.height, .bytes = e.bytes, .format = (uint8_t)e.format};
    }
    for (uint32_t i = 0; i < h.nclasses; i++, q += sizeof(uint64_t)) {
        uint64_t off;
        memcpy(&off, q, sizeof off);
        if (off >= h.blob_len) goto bad;
        ix->classes[i] = ix->blob + off;
    }
    free(data);
    return ix;
bad:
    LOG_WARN("index cache %s is stale or damaged: rebuilding it", path);
    index_free_parts(ix);
    free(data);
    return NULL;
}

static int cache_store(const char *path, const struct loader_index *ix, int flat)
{
    struct cache_header h = {.version = INDEX_VERSION, .flat = (uint32_t)flat,
                             .signature = ix->signature, .n = ix->n, .nclasses = ix->nclasses,
                             .nbad = ix->nbad, .nignored = ix->nignored,
                             .blob_len = ix->blob_len};
    memcpy(h.magic, INDEX_MAGIC, 8);
    struct cache_entry *e = swav_xcalloc(ix->n, sizeof *e);
    for (uint32_t i = 0; i < ix->n; i++) {
        const struct loader_index_entry *s = &ix->entries[i];
        e[i] = (struct cache_entry){.bytes = s->bytes, .path_off = (uint64_t)(s->path - ix->blob),
                                    .width = s->width, .height = s->height, .label = s->label,
                                    .format = s->format};
    }
    uint64_t *co = swav_xcalloc(ix->nclasses ? ix->nclasses : 1, sizeof *co);
    for (uint32_t i = 0; i < ix->nclasses; i++) co[i] = (uint64_t)(ix->classes[i] - ix->blob);
    struct iovec iov[4] = {
        {&h, sizeof h},
        {e, (size_t)ix->n * sizeof *e},
        {co, (size_t)ix->nclasses * sizeof *co},
        {ix->blob, ix->blob_len},
    };
    char err[512];
    int rc = swav_file_writev_atomic(path, iov, 4, 0644, err, sizeof err);
    if (rc) LOG_WARN("index cache not written: %s", err);
    free(e);
    free(co);
    return rc;
}

static int write_report(const char *path, const char *root, const struct cand_list *cl,
                        uint32_t nbad)
{
    size_t cap = 256 + (size_t)nbad * 64, len = 0;
    for (size_t i = 0; i < cl->n; i++) {
        if (cl->v[i].why) cap += strlen(cl->v[i].rel) + strlen(cl->v[i].why) + 4;
    }
    char *buf = swav_xmalloc(cap);
    len += (size_t)snprintf(buf, cap,
                            "# files left out of the index of %s (not decodable images): %u\n"
                            "# path<TAB>reason\n",
                            root, nbad);
    for (size_t i = 0; i < cl->n; i++) {
        if (!cl->v[i].why) continue;
        len += (size_t)snprintf(buf + len, cap - len, "%s\t%s\n", cl->v[i].rel, cl->v[i].why);
    }
    char err[512];
    int rc = swav_file_write_atomic(path, buf, len, err, sizeof err);
    if (rc) LOG_WARN("index report not written: %s", err);
    free(buf);
    return rc;
}

/* ---- the whole thing ---------------------------------------------------------------- */

static void cand_free(struct cand_list *cl)
{
    for (size_t i = 0; i < cl->n; i++) {
        free(cl->v[i].rel);
        free(cl->v[i].why);
    }
    free(cl->v);
    memset(cl, 0, sizeof *cl);
}

enum loader_index_status loader_index_open(struct loader_index **out, const char *root_in,
                                           const struct loader_index_opts *opts_in, char *err,
                                           size_t errlen)
{
    struct loader_index_opts opts = {0};
    if (opts_in) opts = *opts_in;
    char root[PATH_MAX];
    snprintf(root, sizeof root, "%s", root_in);
    size_t rl = strlen(root);
    while (rl > 1 && root[rl - 1] == '/') root[--rl] = '\0';
    struct stat st;
    if (stat(root, &st) != 0) {
        snprintf(err, errlen, "data path %s: %s", root, strerror(errno));
        return LOADER_INDEX_ERR_ROOT;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "data path %s: not a folder", root);
        return LOADER_INDEX_ERR_ROOT;
    }
    /* Classes: sorted(entry.name for entry in os.scandir(root) if entry.is_dir()). */
    struct str_list classes = {0}, topfiles = {0};
    if (list_dir(root, &classes, &topfiles, err, errlen)) {
        return LOADER_INDEX_ERR_ROOT;
    }
    int flat = classes.n == 0;
    struct cand_list cl = {0};
    uint32_t nignored = 0;
    enum loader_index_status status = LOADER_INDEX_OK;
    if (flat) {
        if (collect(root, "", -1, 0, &cl, &nignored, err, errlen)) status = LOADER_INDEX_ERR_IO;
    } else {
        nignored += (uint32_t)topfiles.n; /* ImageFolder ignores files beside the classes */
        for (size_t c = 0; c < classes.n && status == LOADER_INDEX_OK; c++) {
            size_t before = cl.n;
            if (collect(root, classes.v[c], (int32_t)c, 1, &cl, &nignored, err, errlen)) {
                status = LOADER_INDEX_ERR_IO;
            } else if (cl.n == before) {
                LOG_WARN("index %s: class '%s' (label %zu) has no image file", root,
                         classes.v[c], c);
            }
        }
    }
    str_free(&topfiles);
    if (status == LOADER_INDEX_OK && cl.n > LOADER_INDEX_MAX_IMAGES) {
        snprintf(err, errlen, "data path %s: %zu images, more than %u", root, cl.n,
                 LOADER_INDEX_MAX_IMAGES);
        status = LOADER_INDEX_ERR_TOO_MANY;
    }
    if (status != LOADER_INDEX_OK) {
        str_free(&classes);
        cand_free(&cl);
        return status;
    }

    uint64_t sig = signature(flat, &classes, &cl);
    char real[PATH_MAX];
    if (!realpath(root, real)) snprintf(real, sizeof real, "%s", root);
    uint64_t key = fnv1a(FNV_INIT, real, strlen(real));
    char cache_path[PATH_MAX] = "", report_path[PATH_MAX] = "";
    if (opts.cache_dir && *opts.cache_dir) {
        char merr[512];
        if (swav_mkdirs(opts.cache_dir, merr, sizeof merr) != 0) {
            LOG_WARN("index cache folder: %s (no cache)", merr);
        } else {
            snprintf(cache_path, sizeof cache_path, "%s/index-%016llx.bin", opts.cache_dir,
                     (unsigned long long)key);
            snprintf(report_path, sizeof report_path, "%s/index-%016llx.bad.txt", opts.cache_dir,
                     (unsigned long long)key);
        }
    }
    if (opts.report_path && *opts.report_path) {
        snprintf(report_path, sizeof report_path, "%s", opts.report_path);
    }

    struct loader_index *ix = NULL;
    if (*cache_path) {
        ix = cache_load(cache_path, sig, root);
        /* The report of the bad files must still be there to be reused. */
        if (ix && ix->nbad > 0 && access(report_path, R_OK) != 0) loader_index_destroy(&ix);
        if (ix) ix->from_cache = 1;
    }
    if (!ix) {
        probe_all(root, cl.v, cl.n, opts.threads);
        uint32_t nbad = 0;
        size_t blob = 0;
        for (size_t c = 0; c < classes.n; c++) blob += strlen(classes.v[c]) + 1;
        for (size_t i = 0; i < cl.n; i++) {
            if (cl.v[i].why) {
                nbad++;
            } else {
                blob += strlen(cl.v[i].rel) + 1;
            }
        }
        ix = swav_xcalloc(1, sizeof *ix);
        ix->root = swav_xstrdup(root);
        ix->n = (uint32_t)(cl.n - nbad);
        ix->nclasses = (uint32_t)classes.n;
        ix->nbad = nbad;
        ix->nignored = nignored;
        ix->signature = sig;
        ix->blob_len = blob ? blob : 1;
        ix->blob = swav_xcalloc(1, ix->blob_len);
        ix->entries = swav_xcalloc(ix->n ? ix->n : 1, sizeof *ix->entries);
        ix->classes = swav_xcalloc(classes.n ? classes.n : 1, sizeof *ix->classes);
        size_t off = 0;
        for (size_t c = 0; c < classes.n; c++) {
            size_t l = strlen(classes.v[c]) + 1;
            memcpy(ix->blob + off, classes.v[c], l);
            ix->classes[c] = ix->blob + off;
            off += l;
        }
        uint32_t k = 0;
        for (size_t i = 0; i < cl.n; i++) {
            const struct cand *c = &cl.v[i];
            if (c->why) continue;
            size_t l = strlen(c->rel) + 1;
            memcpy(ix->blob + off, c->rel, l);
            ix->entries[k++] = (struct loader_index_entry){
                .path = ix->blob + off, .label = c->label, .width = c->w, .height = c->h,
                .bytes = c->size, .format = c->format};
            off += l;
        }
        if (nbad > 0) {
            if (*report_path) {
                write_report(report_path, root, &cl, nbad);
            } else {
                /* No place for a report: name them on stderr (never a silent skip). */
                uint32_t shown = 0;
                for (size_t i = 0; i < cl.n && shown < 20; i++) {
                    if (!cl.v[i].why) continue;
                    LOG_WARN("index %s: left out %s: %s", root, cl.v[i].rel, cl.v[i].why);
                    shown++;
                }
            }
        }
        if (ix->n > 0 && *cache_path) cache_store(cache_path, ix, flat);
    }
    str_free(&classes);
    cand_free(&cl);
    snprintf(ix->report_path, sizeof ix->report_path, "%s", ix->nbad ? report_path : "");

    if (ix->nbad > 0) {
        LOG_WARN("index %s: %u file%s left out (not decodable images)%s%s", root, ix->nbad,
                 ix->nbad == 1 ? "" : "s", *ix->report_path ? ", listed in " : "",
                 ix->report_path);
    }
    if (ix->n == 0) {
        snprintf(err, errlen, "data path %s: no decodable image (%u bad, %u other files)", root,
                 ix->nbad, ix->nignored);
        loader_index_destroy(&ix);
        return LOADER_INDEX_ERR_EMPTY;
    }
    if (!opts.quiet) {
        LOG_INFO("index %s: %u images, %u classes%s, %u bad, %u non-image files ignored%s", root,
                 ix->n, ix->nclasses, flat ? " (flat folder, label -1)" : "", ix->nbad,
                 ix->nignored, ix->from_cache ? " (cached)" : "");
    }
    *out = ix;
    return LOADER_INDEX_OK;
}

int loader_index_path(const struct loader_index *ix, uint32_t i, char *buf, size_t len)
{
    if (!ix || i >= ix->n) return -1;
    int n = snprintf(buf, len, "%s/%s", ix->root, ix->entries[i].path);
    if (n < 0 || (size_t)n >= len) return -1;
    return n;
}
