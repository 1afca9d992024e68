/* Checkpoint files over safetensors: see checkpoint.h.
 *
 * Loading matches every file tensor to a table entry first (names, shapes,
 * dtypes) and copies only after the whole file has been judged, so a strict
 * load either fills everything or nothing. */
#include "checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/log.h"
#include "proto/safetensors.h"

#define OPT_PREFIX "optimizer."
#define MOM_SUFFIX ".momentum_buffer"
#define NAMES_IN_MESSAGE 5

const char *nn_checkpoint_status_str(enum nn_checkpoint_status st)
{
    switch (st) {
    case NN_CHECKPOINT_OK: return "ok";
    case NN_CHECKPOINT_ERR_FILE: return "unreadable checkpoint file";
    case NN_CHECKPOINT_ERR_WRITE: return "checkpoint write failed";
    case NN_CHECKPOINT_ERR_MISSING: return "missing tensors";
    case NN_CHECKPOINT_ERR_UNEXPECTED: return "unexpected tensors";
    case NN_CHECKPOINT_ERR_SHAPE: return "tensors of the wrong shape";
    case NN_CHECKPOINT_ERR_META: return "malformed metadata";
    }
    return "unknown status";
}

/* Appends to err (truncating quietly). */
static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) {
        return;
    }
    size_t used = strnlen(err, errlen);
    if (used + 1 >= errlen) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + used, errlen - used, fmt, ap);
    va_end(ap);
}

void nn_checkpoint_info_free(struct nn_checkpoint_info *info)
{
    if (!info) {
        return;
    }
    free(info->config_json);
    free(info->rng_state);
    free(info->loss_scale);
    memset(info, 0, sizeof *info);
}

/* ---- save ------------------------------------------------------------------ */

enum nn_checkpoint_status nn_checkpoint_save(const char *path,
                                             const struct nn_param_table *params,
                                             const float *param_data,
                                             const struct nn_param_table *buffers,
                                             const float *buffer_data, const float *momentum,
                                             const struct nn_checkpoint_meta *meta, char *err,
                                             size_t errlen)
{
    SWAV_ASSERT(params && param_data);
    SWAV_ASSERT(!buffers || buffer_data);
    if (err && errlen) {
        err[0] = '\0';
    }
    struct safetensors_writer w;
    safetensors_writer_init(&w);
    enum nn_checkpoint_status rc = NN_CHECKPOINT_OK;

    /* integer buffers need an int64 copy */
    size_t nint = 0;
    for (int i = 0; buffers && i < buffers->n; i++) {
        if (buffers->p[i].flags & NN_PARAM_INT64) {
            nint += buffers->p[i].numel;
        }
    }
    int64_t *ints = swav_xmalloc((nint ? nint : 1) * sizeof *ints);
    char (*names)[NN_PARAM_NAME_MAX + 32] =
        swav_xmalloc(((size_t)params->n + 1) * sizeof *names);

    for (int i = 0; i < params->n; i++) {
        const struct nn_param *p = &params->p[i];
        enum safetensors_status st = safetensors_writer_add(
            &w, p->name, SAFETENSORS_F32, p->ndim, p->shape, param_data + p->offset);
        SWAV_ASSERT(st == SAFETENSORS_OK); /* table names are unique and short */
    }
    size_t ni = 0;
    for (int i = 0; buffers && i < buffers->n; i++) {
        const struct nn_param *p = &buffers->p[i];
        enum safetensors_status st;
        if (p->flags & NN_PARAM_INT64) {
            int64_t *dst = ints + ni;
            for (size_t k = 0; k < p->numel; k++) {
                dst[k] = (int64_t)llround(buffer_data[p->offset + k]);
            }
            ni += p->numel;
            st = safetensors_writer_add(&w, p->name, SAFETENSORS_I64, p->ndim, p->shape, dst);
        } else {
            st = safetensors_writer_add(&w, p->name, SAFETENSORS_F32, p->ndim, p->shape,
                                        buffer_data + p->offset);
        }
        if (st != SAFETENSORS_OK) {
            errf(err, errlen, "%s: buffer \"%s\": %s (a parameter of the same name?)", path,
                 p->name, safetensors_status_str(st));
            rc = NN_CHECKPOINT_ERR_UNEXPECTED;
            goto out;
        }
    }
    for (int i = 0; momentum && i < params->n; i++) {
        const struct nn_param *p = &params->p[i];
        snprintf(names[i], sizeof names[i], OPT_PREFIX "%s" MOM_SUFFIX, p->name);
        enum safetensors_status st = safetensors_writer_add(
            &w, names[i], SAFETENSORS_F32, p->ndim, p->shape, momentum + p->offset);
        SWAV_ASSERT(st == SAFETENSORS_OK);
    }

    char num[32];
    safetensors_writer_set_meta(&w, "format", "pt");
    snprintf(num, sizeof num, "%d", NN_CHECKPOINT_FORMAT_VERSION);
    safetensors_writer_set_meta(&w, "swav_format_version", num);
    if (meta) {
        snprintf(num, sizeof num, "%" PRId64, meta->epoch);
        safetensors_writer_set_meta(&w, "epoch", num);
        snprintf(num, sizeof num, "%" PRId64, meta->step);
        safetensors_writer_set_meta(&w, "step", num);
        snprintf(num, sizeof num, "%" PRIu64, meta->seed);
        safetensors_writer_set_meta(&w, "seed", num);
        if (meta->config_json &&
            safetensors_writer_set_meta(&w, "config", meta->config_json) != SAFETENSORS_OK) {
            errf(err, errlen, "%s: config metadata too long or not UTF-8", path);
            rc = NN_CHECKPOINT_ERR_META;
            goto out;
        }
        if (meta->rng_state &&
            safetensors_writer_set_meta(&w, "rng", meta->rng_state) != SAFETENSORS_OK) {
            errf(err, errlen, "%s: rng metadata too long or not UTF-8", path);
            rc = NN_CHECKPOINT_ERR_META;
            goto out;
        }
        for (int i = 0; i < meta->nextra; i++) {
            if (safetensors_writer_set_meta(&w, meta->extra[i].key, meta->extra[i].value) !=
                SAFETENSORS_OK) {
                errf(err, errlen, "%s: metadata \"%s\" empty, too long or not UTF-8", path,
                     meta->extra[i].key);
                rc = NN_CHECKPOINT_ERR_META;
                goto out;
            }
        }
    }
    char werr[512] = "";
    if (safetensors_writer_write(&w, path, werr, sizeof werr) != SAFETENSORS_OK) {
        errf(err, errlen, "%s", werr);
        rc = NN_CHECKPOINT_ERR_WRITE;
    }
out:
    safetensors_writer_free(&w);
    free(ints);
    free(names);
    return rc;
}

/* ---- load ------------------------------------------------------------------ */

static bool same_shape(const struct nn_param *p, const struct safetensors_tensor *t)
{
    if (p->ndim != t->ndim) {
        return false;
    }
    for (int d = 0; d < p->ndim; d++) {
        if (p->shape[d] != t->shape[d]) {
            return false;
        }
    }
    return true;
}

static void shape_str(char *s, size_t n, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(s, n, "[");
    for (int d = 0; d < ndim && used < n; d++) {
        used += (size_t)snprintf(s + used, n - used, d ? ", %" PRId64 : "%" PRId64, shape[d]);
    }
    if (used < n) {
        snprintf(s + used, n - used, "]");
    }
}

/* A "name=number" metadata entry into *out; absent leaves *out. */
static bool meta_i64(const struct safetensors_file *f, const char *key, int64_t *out)
{
    const char *v = safetensors_meta_get(f, key);
    if (!v) {
        return true;
    }
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end) {
        return false;
    }
    *out = x;
    return true;
}

static bool meta_u64(const struct safetensors_file *f, const char *key, uint64_t *out)
{
    const char *v = safetensors_meta_get(f, key);
    if (!v) {
        return true;
    }
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-') {
        return false;
    }
    *out = x;
    return true;
}

/* Numbers of the metadata into info (strings not copied); false if malformed. */
static bool read_meta(const struct safetensors_file *f, struct nn_checkpoint_info *inf)
{
    memset(inf, 0, sizeof *inf);
    inf->epoch = -1;
    inf->step = -1;
    int64_t ver = 0;
    if (!meta_i64(f, "swav_format_version", &ver) || ver < 0 ||
        ver > NN_CHECKPOINT_FORMAT_VERSION || !meta_i64(f, "epoch", &inf->epoch) ||
        !meta_i64(f, "step", &inf->step) || !meta_u64(f, "seed", &inf->seed)) {
        return false;
    }
    inf->format_version = (int)ver;
    return true;
}

static void copy_meta_strings(const struct safetensors_file *f, struct nn_checkpoint_info *inf)
{
    const char *c = safetensors_meta_get(f, "config");
    const char *r = safetensors_meta_get(f, "rng");
    const char *ls = safetensors_meta_get(f, "loss_scale");
    inf->config_json = c ? swav_xstrdup(c) : NULL;
    inf->rng_state = r ? swav_xstrdup(r) : NULL;
    inf->loss_scale = ls ? swav_xstrdup(ls) : NULL;
}

enum nn_checkpoint_status nn_checkpoint_peek(const char *path, struct nn_checkpoint_info *info,
                                             char *err, size_t errlen)
{
    struct safetensors_file f;
    char ferr[512];
    if (err && errlen) {
        err[0] = '\0';
    }
    if (safetensors_read_header(&f, path, ferr, sizeof ferr) != SAFETENSORS_OK) {
        errf(err, errlen, "%s", ferr);
        return NN_CHECKPOINT_ERR_FILE;
    }
    struct nn_checkpoint_info inf;
    if (!read_meta(&f, &inf)) {
        errf(err, errlen, "%s: metadata swav_format_version/epoch/step/seed malformed", path);
        safetensors_file_free(&f);
        return NN_CHECKPOINT_ERR_META;
    }
    for (int i = 0; i < f.ntensors; i++) {
        const char *n = f.tensors[i].name;
        while (!strncmp(n, "module.", 7)) {
            n += 7;
        }
        if (!strncmp(n, OPT_PREFIX, strlen(OPT_PREFIX))) {
            inf.has_momentum = true;
        }
    }
    copy_meta_strings(&f, &inf);
    *info = inf;
    safetensors_file_free(&f);
    return NN_CHECKPOINT_OK;
}


/* One problem list per kind, for the message. */
struct problems {
    int n;
    char text[1024];
};

static void problem(struct problems *pr, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(struct problems *pr, const char *fmt, ...)
{
    if (pr->n < NAMES_IN_MESSAGE) {
        size_t used = strlen(pr->text);
        if (used + 2 < sizeof pr->text) {
            if (used) {
                used += (size_t)snprintf(pr->text + used, sizeof pr->text - used, ", ");
            }
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(pr->text + used, sizeof pr->text - used, fmt, ap);
            va_end(ap);
        }
    }
    pr->n++;
}

static void copy_tensor(const struct safetensors_tensor *t, const struct nn_param *p, float *dst)
{
    bool int_target = p->flags & NN_PARAM_INT64;
    bool int_source = t->dtype == SAFETENSORS_I64 || t->dtype == SAFETENSORS_I32 ||
                      t->dtype == SAFETENSORS_U8;
    if (int_target && int_source) {
        /* small integers: widen through int64, one element at a time */
        for (uint64_t k = 0; k < t->numel; k++) {
            struct safetensors_tensor one = *t;
            one.numel = 1;
            one.data = t->data + k * safetensors_dtype_size(t->dtype);
            int64_t v;
            SWAV_ASSERT(safetensors_tensor_to_i64(&one, &v) == SAFETENSORS_OK);
            dst[k] = (float)v;
        }
        return;
    }
    SWAV_ASSERT(safetensors_tensor_to_f32(t, dst) == SAFETENSORS_OK);
}

enum nn_checkpoint_status nn_checkpoint_load(const char *path,
                                             const struct nn_param_table *params,
                                             float *param_data,
                                             const struct nn_param_table *buffers,
                                             float *buffer_data, float *momentum,
                                             const struct nn_checkpoint_load_opts *opts,
                                             struct nn_checkpoint_info *info, char *err,
                                             size_t errlen)
{
    SWAV_ASSERT(params && param_data);
    SWAV_ASSERT(!buffers || buffer_data);
    const bool strict = opts && opts->strict;
    const bool quiet = opts && opts->quiet;
    if (err && errlen) {
        err[0] = '\0';
    }
    struct safetensors_file f;
    char ferr[512];
    if (safetensors_read(&f, path, 0, ferr, sizeof ferr) != SAFETENSORS_OK) {
        errf(err, errlen, "%s", ferr);
        return NN_CHECKPOINT_ERR_FILE;
    }

    struct nn_checkpoint_info inf;
    if (!read_meta(&f, &inf)) {
        errf(err, errlen,
             "%s: metadata swav_format_version/epoch/step/seed malformed (or a format newer "
             "than %d)",
             path, NN_CHECKPOINT_FORMAT_VERSION);
        safetensors_file_free(&f);
        return NN_CHECKPOINT_ERR_META;
    }

    int np = params->n, nb = buffers ? buffers->n : 0;
    /* file tensor index per slot, -1: none */
    int *src = swav_xmalloc(((size_t)2 * np + nb + 1) * sizeof *src);
    int *src_p = src, *src_m = src + np, *src_b = src + 2 * np;
    for (int i = 0; i < 2 * np + nb; i++) {
        src[i] = -1;
    }
    struct problems unexpected = {0}, mismatched = {0}, missing = {0};
    char s1[96], s2[96];

    for (int ti = 0; ti < f.ntensors; ti++) {
        const struct safetensors_tensor *t = &f.tensors[ti];
        const char *name = t->name;
        while (!strncmp(name, "module.", 7)) {
            name += 7;
        }
        const struct nn_param *p = NULL;
        int *slot = NULL;
        if (!strncmp(name, OPT_PREFIX, strlen(OPT_PREFIX))) {
            if (!momentum) {
                continue; /* optimizer state not wanted */
            }
            const char *base = name + strlen(OPT_PREFIX);
            size_t bl = strlen(base), sl = strlen(MOM_SUFFIX);
            char pname[NN_PARAM_NAME_MAX];
            int idx = -1;
            if (bl > sl && bl - sl < sizeof pname && !strcmp(base + bl - sl, MOM_SUFFIX)) {
                memcpy(pname, base, bl - sl);
                pname[bl - sl] = '\0';
                idx = nn_param_table_find(params, pname);
            }
            if (idx >= 0) {
                p = &params->p[idx];
                slot = &src_m[idx];
            }
        } else {
            int idx = strlen(name) < NN_PARAM_NAME_MAX ? nn_param_table_find(params, name) : -1;
            if (idx >= 0) {
                p = &params->p[idx];
                slot = &src_p[idx];
            } else if (buffers && strlen(name) < NN_PARAM_NAME_MAX &&
                       (idx = nn_param_table_find(buffers, name)) >= 0) {
                p = &buffers->p[idx];
                slot = &src_b[idx];
            }
        }
        if (!p || *slot != -1) { /* unknown, or a second copy (with and without module.) */
            problem(&unexpected, "\"%.120s\"", t->name);
            continue;
        }
        if (!same_shape(p, t)) {
            shape_str(s1, sizeof s1, t->ndim, t->shape);
            shape_str(s2, sizeof s2, p->ndim, p->shape);
            problem(&mismatched, "\"%.120s\" is %s, expected %s", t->name, s1, s2);
            *slot = -2; /* present but unusable: not also "missing" */
            continue;
        }
        *slot = ti;
    }
    for (int i = 0; i < np; i++) {
        if (src_p[i] == -1) {
            problem(&missing, "\"%s\"", params->p[i].name);
        }
    }
    for (int i = 0; i < nb; i++) {
        if (src_b[i] == -1) {
            problem(&missing, "\"%s\"", buffers->p[i].name);
        }
    }
    int mom_missing = 0;
    for (int i = 0; momentum && i < np; i++) {
        if (src_m[i] == -1) {
            mom_missing++;
            if (strict) {
                problem(&missing, "\"" OPT_PREFIX "%s" MOM_SUFFIX "\"", params->p[i].name);
            }
        }
    }

    enum nn_checkpoint_status rc = NN_CHECKPOINT_OK;
    if (strict && (missing.n || unexpected.n || mismatched.n)) {
        rc = mismatched.n ? NN_CHECKPOINT_ERR_SHAPE
             : missing.n  ? NN_CHECKPOINT_ERR_MISSING
                          : NN_CHECKPOINT_ERR_UNEXPECTED;
        errf(err, errlen, "%s:", path);
        if (mismatched.n) {
            errf(err, errlen, " %d of the wrong shape (%s%s);", mismatched.n, mismatched.text,
                 mismatched.n > NAMES_IN_MESSAGE ? ", ..." : "");
        }
        if (missing.n) {
            errf(err, errlen, " %d missing (%s%s);", missing.n, missing.text,
                 missing.n > NAMES_IN_MESSAGE ? ", ..." : "");
        }
        if (unexpected.n) {
            errf(err, errlen, " %d unexpected (%s%s);", unexpected.n, unexpected.text,
                 unexpected.n > NAMES_IN_MESSAGE ? ", ..." : "");
        }
        goto out;
    }
    if (!quiet) {
        if (mismatched.n) {
            LOG_WARN("%s: %d tensors of another shape kept at their values: %s%s", path,
                     mismatched.n, mismatched.text, mismatched.n > NAMES_IN_MESSAGE ? ", ..." : "");
        }
        if (missing.n) {
            LOG_WARN("%s: %d names not in the file kept at their values: %s%s", path, missing.n,
                     missing.text, missing.n > NAMES_IN_MESSAGE ? ", ..." : "");
        }
        if (unexpected.n) {
            LOG_WARN("%s: %d tensors ignored (no such name): %s%s", path, unexpected.n,
                     unexpected.text, unexpected.n > NAMES_IN_MESSAGE ? ", ..." : "");
        }
        if (momentum && mom_missing && mom_missing < np) {
            LOG_WARN("%s: momentum of %d of %d parameters not in the file, kept", path,
                     mom_missing, np);
        }
    }

    for (int i = 0; i < np; i++) {
        if (src_p[i] >= 0) {
            copy_tensor(&f.tensors[src_p[i]], &params->p[i], param_data + params->p[i].offset);
            inf.nloaded++;
        }
        if (momentum && src_m[i] >= 0) {
            copy_tensor(&f.tensors[src_m[i]], &params->p[i], momentum + params->p[i].offset);
            inf.nloaded++;
            inf.has_momentum = true;
        }
    }
    for (int i = 0; i < nb; i++) {
        if (src_b[i] >= 0) {
            copy_tensor(&f.tensors[src_b[i]], &buffers->p[i], buffer_data + buffers->p[i].offset);
            inf.nloaded++;
        }
    }
    inf.nmissing = missing.n;
    inf.nunexpected = unexpected.n;
    inf.nmismatched = mismatched.n;
    if (info) {
        copy_meta_strings(&f, &inf);
        *info = inf;
    }
out:
    free(src);
    safetensors_file_free(&f);
    return rc;
}

/* ---- on a backend's memory: staged through host copies ----------------------------- */

enum nn_checkpoint_status nn_checkpoint_save_backend(nn_backend_t *be, const char *path,
                                                     const struct nn_param_table *params,
                                                     const float *param_data,
                                                     const struct nn_param_table *buffers,
                                                     const float *buffer_data,
                                                     const float *momentum,
                                                     const struct nn_checkpoint_meta *meta,
                                                     char *err, size_t errlen)
{
    size_t np = params->total, nb = buffers ? buffers->total : 0;
    float *hp = nn_backend_to_host(be, param_data, np);
    float *hb = buffers ? nn_backend_to_host(be, buffer_data, nb) : NULL;
    float *hm = nn_backend_to_host(be, momentum, np);
    enum nn_checkpoint_status st =
        nn_checkpoint_save(path, params, hp, buffers, hb, hm, meta, err, errlen);
    free(hp);
    free(hb);
    free(hm);
    return st;
}

enum nn_checkpoint_status nn_checkpoint_load_backend(nn_backend_t *be, const char *path,
                                                     const struct nn_param_table *params,
                                                     float *param_data,
                                                     const struct nn_param_table *buffers,
                                                     float *buffer_data, float *momentum,
                                                     const struct nn_checkpoint_load_opts *opts,
                                                     struct nn_checkpoint_info *info, char *err,
                                                     size_t errlen)
{
    size_t np = params->total, nb = buffers ? buffers->total : 0;
    float *hp = nn_backend_to_host(be, param_data, np);
    float *hb = buffers ? nn_backend_to_host(be, buffer_data, nb) : NULL;
    float *hm = nn_backend_to_host(be, momentum, np);
    enum nn_checkpoint_status st = nn_checkpoint_load(path, params, hp, buffers, hb, hm, opts,
                                                      info, err, errlen);
    nn_backend_copy(be, param_data, hp, np * sizeof(float));
    if (hb) {
        nn_backend_copy(be, buffer_data, hb, nb * sizeof(float));
    }
    if (hm) {
        nn_backend_copy(be, momentum, hm, np * sizeof(float));
    }
    free(hp);
    free(hb);
    free(hm);
    return st;
}
