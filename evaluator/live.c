/* The live evaluator (live.h). */
#include "evaluator/live.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "common/check.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "evaluator/ckpt_scan.h"
#include "evaluator/report.h"
#include "evaluator/results.h"
#include "loader/client.h"
#include "loader/index.h"
#include "nn/backend.h"
#include "nn/checkpoint.h"
#include "nn/device.h"
#include "nn/resnet.h"
#include "nn/tensor.h"
#include "proto/wire.h"

/* ---- architecture from the tensors ------------------------------------------ */

static int st_find(const struct safetensors_file *f, const char *name)
{
    int i = safetensors_find(f, name);
    if (i >= 0) return i;
    char buf[300];
    snprintf(buf, sizeof buf, "module.%s", name);
    return safetensors_find(f, buf);
}

int eval_arch_from_file(const struct safetensors_file *f, struct eval_arch *a, char *err,
                        size_t errlen)
{
    memset(a, 0, sizeof *a);
    int c1 = st_find(f, "conv1.weight");
    if (c1 < 0) {
        snprintf(err, errlen, "no conv1.weight: not a ResNet backbone");
        return -1;
    }
    const struct safetensors_tensor *t = &f->tensors[c1];
    if (t->ndim != 4 || t->shape[1] != 3 || t->shape[2] != t->shape[3] ||
        (t->shape[2] != 3 && t->shape[2] != 7) || t->shape[0] < 1 || t->shape[0] > 65536) {
        snprintf(err, errlen, "conv1.weight of an unexpected shape");
        return -1;
    }
    a->width = (int)t->shape[0];
    a->small_stem = t->shape[2] == 3;
    bool bottleneck = st_find(f, "layer1.0.conv3.weight") >= 0;
    int n3 = 0;
    for (;; n3++) {
        char nm[64];
        snprintf(nm, sizeof nm, "layer3.%d.conv1.weight", n3);
        if (st_find(f, nm) < 0) break;
    }
    if (n3 == 2 && !bottleneck) a->depth = 18;
    else if (n3 == 6 && !bottleneck) a->depth = 34;
    else if (n3 == 6 && bottleneck) a->depth = 50;
    else if (n3 == 23 && bottleneck) a->depth = 101;
    else {
        snprintf(err, errlen, "layer3 has %d blocks (%s): not resnet18/34/50/101", n3,
                 bottleneck ? "Bottleneck" : "BasicBlock");
        return -1;
    }
    a->seed = 31;
    const char *cfg = safetensors_meta_get(f, "config");
    if (cfg) {
        json_t *j = json_loads(cfg, 0, NULL);
        json_t *s = j ? json_object_get(j, "seed") : NULL;
        if (json_is_integer(s) && json_integer_value(s) >= 0)
            a->seed = (uint64_t)json_integer_value(s);
        json_decref(j);
    }
    if (a->width % 64 == 0 && a->width / 64 <= 5 && a->width / 64 != 3)
        snprintf(a->name, sizeof a->name, "resnet%d%s%.0d", a->depth, a->width > 64 ? "w" : "",
                 a->width > 64 ? a->width / 64 : 0);
    else
        snprintf(a->name, sizeof a->name, "resnet%d width %d", a->depth, a->width);
    if (a->small_stem) {
        size_t l = strlen(a->name);
        snprintf(a->name + l, sizeof a->name - l, " small stem");
    }
    return 0;
}

int64_t eval_subset_even(uint32_t *out, int64_t n, int64_t limit)
{
    if (limit <= 0 || limit >= n) {
        for (int64_t i = 0; i < n; i++) out[i] = (uint32_t)i;
        return n;
    }
    for (int64_t i = 0; i < limit; i++)
        out[i] = (uint32_t)(((2 * i + 1) * n) / (2 * limit));
    return limit;
}

/* ---- records already in eval.jsonl -------------------------------------------- */

struct done_rec {
    int64_t epoch, step;
    char probe[16];
    char checkpoint[EVAL_CKPT_PATH_MAX];
    bool baseline;
};

struct live {
    const struct eval_live_opts *o;
    volatile sig_atomic_t *stop;
    void *zctx;
    struct loader_client *client;
    struct proto_zap *zap;  /* --curve_allow's handler (logs refusals) */
    void *sub;
    void *sub_monitor;      /* --sub: PAIR receiving its connection events */
    int sub_handshake;      /* of --sub's connection: 0 pending, 1 done, -1 failed or closed */
    struct proto_rx rx;
    nn_backend_t *be;
    struct nn_model *model;
    struct eval_arch model_arch;
    float *input; /* (batch, 3, S, S), the backend's memory: the backbone's input */
    uint64_t next_step;
    /* data sets */
    int64_t n_train_all, n_val_all;
    uint32_t *train_idx, *val_idx;
    int64_t n_train, n_val;
    /* eval.jsonl */
    struct done_rec *done;
    int ndone, done_cap;
    /* failed keys (not retried until restart) */
    int64_t failed_epoch[64], failed_step[64];
    int nfailed;
    /* metadata cache of the last scanned file */
    char scan_path[EVAL_CKPT_PATH_MAX];
    int64_t scan_mtime, scan_epoch, scan_step;
    /* files whose header did not read, by path and mtime (warned once) */
    char bad_path[16][EVAL_CKPT_PATH_MAX];
    int64_t bad_mtime[16];
    int nbad_files;
    bool have_arch;
    struct eval_arch run_arch; /* of the latest checkpoint: the baseline's */
    char *run_config;          /* config JSON of the latest checkpoint, or NULL */
    uint64_t bad_announcements;
    /* semisup: the labelled subset of eval_train and the labels of it and of
     * the validation images (learnt once per process) */
    uint32_t *semi_idx;
    int64_t n_semi;
    int semi_ncls;
    char semi_probe[16]; /* "semisup1" / "semisup10" */
};

static void done_add(struct live *L, int64_t epoch, int64_t step, const char *probe,
                     const char *ckpt, bool baseline)
{
    if (L->ndone == L->done_cap) {
        L->done_cap = L->done_cap ? 2 * L->done_cap : 64;
        L->done = swav_xrealloc(L->done, (size_t)L->done_cap * sizeof *L->done);
    }
    struct done_rec *d = &L->done[L->ndone++];
    d->epoch = epoch;
    d->step = step;
    snprintf(d->probe, sizeof d->probe, "%s", probe);
    snprintf(d->checkpoint, sizeof d->checkpoint, "%s", ckpt ? ckpt : "");
    d->baseline = baseline;
}

static void done_load(struct live *L)
{
    char path[EVAL_CKPT_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/eval.jsonl", L->o->dump_path);
    FILE *fp = fopen(path, "r");
    if (!fp) return;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int nbad = 0;
    while ((len = getline(&line, &cap, fp)) > 0) {
        json_t *j = json_loadb(line, (size_t)len, 0, NULL);
        json_t *pr = j ? json_object_get(j, "probe") : NULL;
        if (!json_is_object(j) || !json_is_string(pr)) {
            nbad += len > 1;
            json_decref(j);
            continue;
        }
        json_t *e = json_object_get(j, "epoch"), *s = json_object_get(j, "step");
        json_t *c = json_object_get(j, "checkpoint"), *b = json_object_get(j, "baseline");
        done_add(L, json_is_integer(e) ? json_integer_value(e) : -1,
                 json_is_integer(s) ? json_integer_value(s) : -1, json_string_value(pr),
                 json_is_string(c) ? json_string_value(c) : "", json_is_true(b));
        json_decref(j);
    }
    free(line);
    fclose(fp);
    LOG_INFO("%s: %d records%s", path, L->ndone, nbad ? " (some lines did not parse)" : "");
}

static bool probe_done(const struct live *L, int64_t epoch, int64_t step, const char *ckpt,
                       bool baseline, const char *probe)
{
    for (int i = 0; i < L->ndone; i++) {
        const struct done_rec *d = &L->done[i];
        if (d->baseline != baseline || strcmp(d->probe, probe) != 0) continue;
        if (baseline) return true;
        if (epoch >= 0 ? (d->epoch == epoch && d->step == step)
                       : !strcmp(d->checkpoint, ckpt))
            return true;
    }
    return false;
}

static bool all_done(const struct live *L, int64_t epoch, int64_t step, const char *ckpt,
                     bool baseline)
{
    return (!L->o->knn || probe_done(L, epoch, step, ckpt, baseline, "knn")) &&
           (!L->o->linear || probe_done(L, epoch, step, ckpt, baseline, "linear")) &&
           (!L->o->semisup || probe_done(L, epoch, step, ckpt, baseline, L->semi_probe));
}

/* ---- loaders -------------------------------------------------------------------- */

/* Waiting on loaders: 0 keep waiting, 1 stopped, -1 gave up. */
static int wait_tick(struct live *L, double t_start, double *t_log, const char *what)
{
    if (*L->stop) return 1;
    double now = swav_now_s();
    if (now - *t_log >= 10.0) {
        struct loader_client_stats st;
        loader_client_get_stats(L->client, &st);
        LOG_INFO("waiting for loaders (%s): %u connected, %.0f s", what, st.loaders_alive,
                 now - t_start);
        *t_log = now;
    }
    if ((L->o->once || L->o->pretrained[0]) && L->o->wait_s > 0 && now - t_start > L->o->wait_s)
        return -1;
    return 0;
}

/* Size of data set `tag` as the loaders announce it in their `ready`
 * messages (loader/client.h).  0, 1 stopped, -1 error. */
static int dataset_size(struct live *L, const char *tag, int64_t *n, char *err, size_t errlen)
{
    double t0 = swav_now_s(), tlog = t0;
    for (;;) {
        uint64_t v = 0;
        char why[768];
        enum loader_client_dataset ds = loader_client_dataset_size(L->client, tag, &v, why,
                                                                   sizeof why);
        if (ds == LOADER_CLIENT_DATASET_FOUND) {
            if (v == 0) {
                snprintf(err, errlen, "data set '%s' has no images", tag);
                return -1;
            }
            *n = (int64_t)v;
            return 0;
        }
        if (ds != LOADER_CLIENT_DATASET_WAIT) {
            snprintf(err, errlen, "%s", why);
            return -1;
        }
        loader_client_poll(L->client, 500);
        int w = wait_tick(L, t0, &tlog, tag);
        if (w == 0) continue;
        if (w < 0)
            snprintf(err, errlen, "data set '%s': %s for %lld s", tag, why,
                     (long long)L->o->wait_s);
        return w > 0 ? 1 : -1;
    }
}

/* ---- crop streams ---------------------------------------------------------------- */

/* RandomResizedCrop's default scale range (torchvision; eval_linear.py and
 * eval_semisup.py use RandomResizedCrop(224) with it). */
#define EVAL_RRC_MIN_SCALE 0.08
#define EVAL_RRC_MAX_SCALE 1.0

/* Crops of images idx[0..n) of one data set, in that order, in orders of
 * `chunk` images submitted up to the loader client's window ahead (the
 * loaders decode while the backbone runs).  EVAL_VAL: Resize(resize) +
 * CenterCrop(size); EVAL_TRAIN: RandomResizedCrop(size) + flip drawn from
 * (seed, epoch, image). */
struct crop_stream {
    char tag[PROTO_MAX_ID + 1];
    char what[64];       /* for progress lines */
    enum proto_mode mode;
    int size, resize;
    uint64_t seed;
    uint32_t epoch;
    const uint32_t *idx; /* borrowed, n */
    int64_t n, chunk, submitted, received;
    double t0, tlog, tprog, tlast;
};

static void fill_order(struct proto_order *o, const struct crop_stream *s)
{
    memset(o, 0, sizeof *o);
    o->seed = s->seed;
    o->epoch = s->epoch;
    o->mode = s->mode;
    snprintf(o->dataset, sizeof o->dataset, "%s", s->tag);
    o->ngroups = 1;
    o->nmb_crops[0] = 1;
    o->size_crops[0] = (uint32_t)s->size;
    if (s->mode == PROTO_MODE_EVAL_VAL) {
        o->min_scale_crops[0] = 1.0;
        o->max_scale_crops[0] = 1.0;
        o->resize = (uint32_t)s->resize;
    } else {
        o->min_scale_crops[0] = EVAL_RRC_MIN_SCALE;
        o->max_scale_crops[0] = EVAL_RRC_MAX_SCALE;
    }
}

/* Takes and drops the batches of orders an earlier stream left with the
 * loaders (one cut off by an error), so that a new stream's come first.
 * 0, 1 stopped, -1 gave up (--once / --pretrained without loaders). */
static int drain_leftovers(struct live *L)
{
    double t0 = swav_now_s(), tlog = t0;
    uint32_t left = loader_client_outstanding(L->client);
    if (left) LOG_INFO("dropping the crops of %u orders of an unfinished pass", left);
    while (loader_client_outstanding(L->client) > 0) {
        const struct proto_batch *b;
        if (loader_client_next(L->client, &b, 500) == LOADER_CLIENT_TIMEOUT) {
            int w = wait_tick(L, t0, &tlog, "orders of an unfinished pass");
            if (w) return w;
        }
    }
    return 0;
}

static int stream_start(struct live *L, struct crop_stream *s, const char *tag,
                        enum proto_mode mode, int size, int resize, uint64_t seed, int epoch,
                        const uint32_t *idx, int64_t n, int64_t chunk, const char *what)
{
    memset(s, 0, sizeof *s);
    snprintf(s->tag, sizeof s->tag, "%s", tag);
    snprintf(s->what, sizeof s->what, "%s %s", what, tag);
    s->mode = mode;
    s->size = size;
    s->resize = resize;
    s->seed = seed;
    s->epoch = (uint32_t)(epoch < 0 ? 0 : epoch);
    s->idx = idx;
    s->n = n;
    s->chunk = chunk;
    s->t0 = s->tlog = s->tprog = s->tlast = swav_now_s();
    return drain_leftovers(L);
}

/* The next order's batch: chunk images (the last one fewer), checked
 * against the order.  0 with *out (valid until the next call), 1 stopped,
 * -1 error. */
static int stream_next(struct live *L, struct crop_stream *s, const struct proto_batch **out,
                       char *err, size_t errlen)
{
    SWAV_ASSERT(s->received < s->n);
    for (;;) {
        while (s->submitted < s->n) {
            struct proto_order o;
            fill_order(&o, s);
            int64_t b = s->n - s->submitted < s->chunk ? s->n - s->submitted : s->chunk;
            o.step = L->next_step;
            o.n_images = (uint32_t)b;
            uint64_t dims[1] = {(uint64_t)b};
            proto_tensor_set(&o.indices, PROTO_DTYPE_U32, s->idx + s->submitted, 1, dims);
            enum loader_client_status st = loader_client_submit(L->client, &o, NULL);
            if (st == LOADER_CLIENT_ERR_FULL) break;
            if (st != LOADER_CLIENT_OK) {
                snprintf(err, errlen, "%s: order refused locally: %s", s->tag,
                         loader_client_last_error(L->client));
                return -1;
            }
            L->next_step++;
            s->submitted += b;
        }
        const struct proto_batch *bt;
        enum loader_client_status st = loader_client_next(L->client, &bt, 500);
        if (st == LOADER_CLIENT_TIMEOUT) {
            int w = wait_tick(L, s->tlast, &s->tlog, s->tag);
            if (w == 0) continue;
            if (w < 0)
                snprintf(err, errlen, "%s: no batch for %lld s", s->tag, (long long)L->o->wait_s);
            return w > 0 ? 1 : -1;
        }
        if (st != LOADER_CLIENT_OK) {
            snprintf(err, errlen, "%s: %s", s->tag, loader_client_last_error(L->client));
            return -1;
        }
        int64_t want = s->n - s->received < s->chunk ? s->n - s->received : s->chunk;
        const uint64_t S = (uint64_t)s->size;
        if (bt->n_images != want || bt->size_crops[0] != S ||
            bt->crops[0].nbytes != (uint64_t)want * S * S * 3 ||
            bt->labels.nbytes != (uint64_t)want * 4) {
            snprintf(err, errlen, "%s: a batch of an unexpected size", s->tag);
            return -1;
        }
        s->received += want;
        double now = swav_now_s();
        s->tlast = now;
        if (now - s->tprog >= 5.0 && s->received < s->n) {
            LOG_INFO("%s: %lld/%lld images (%.0f img/s)", s->what, (long long)s->received,
                     (long long)s->n, s->received / (now - s->t0));
            s->tprog = now;
        }
        if (*L->stop) return 1;
        *out = bt;
        return 0;
    }
}

void eval_backbone_features(struct nn_model *m, float *input, const uint8_t *crops, int64_t n,
                            float *feats)
{
    const int64_t D = m->feat_channels, S = m->groups[0].size;
    for (int64_t i0 = 0; i0 < n; i0 += m->batch) {
        int64_t b = n - i0 < m->batch ? n - i0 : m->batch;
        nn_backend_normalize_crops(m->be, input, crops + i0 * S * S * 3, (int)b, 1, (int)S,
                                   (int)S);
        const float *in[1] = {input};
        nn_model_forward(m, in, (int)b, NN_MODEL_EVAL);
        /* to host memory: waits for the forward */
        nn_backend_copy(m->be, feats + i0 * D, m->feats, (size_t)(b * D) * sizeof(float));
    }
}

enum nn_checkpoint_status eval_backbone_load(struct nn_model *m, const char *path,
                                             struct nn_checkpoint_info *info, char *err,
                                             size_t errlen)
{
    struct nn_checkpoint_load_opts lo = {.strict = false, .quiet = true};
    enum nn_checkpoint_status cs =
        nn_checkpoint_load_backend(m->be, path, &m->params, m->param_data, &m->buffers,
                                   m->buffer_data, NULL, &lo, info, err, errlen);
    nn_backend_weights_updated(m->be);
    return cs;
}

/* Backbone features (eval mode) of n u8 NHWC crops into feats (n, D), host
 * memory. */
static void forward_features(struct live *L, const uint8_t *crops, int64_t n, float *feats)
{
    eval_backbone_features(L->model, L->input, crops, n, feats);
}

/* Backbone features of the center crops of images idx[0..n) of `tag` into
 * feats (n, D), labels into labels.  0, 1 stopped, -1 error. */
static int extract(struct live *L, const char *tag, const uint32_t *idx, int64_t n, float *feats,
                   int32_t *labels, char *err, size_t errlen)
{
    const int64_t D = L->model->feat_channels;
    struct crop_stream s;
    int rc = stream_start(L, &s, tag, PROTO_MODE_EVAL_VAL, L->o->size, L->o->resize, 0, 0, idx,
                          n, L->o->batch_size, "features");
    if (rc < 0) snprintf(err, errlen, "%s: no loader for %lld s", tag, (long long)L->o->wait_s);
    while (rc == 0 && s.received < n) {
        const struct proto_batch *bt;
        int64_t at = s.received;
        rc = stream_next(L, &s, &bt, err, errlen);
        if (rc != 0) break;
        forward_features(L, bt->crops[0].data, bt->n_images, feats + at * D);
        memcpy(labels + at, bt->labels.data, (size_t)bt->n_images * sizeof(int32_t));
    }
    if (rc == 0)
        LOG_INFO("features %s: %lld images in %.1f s", tag, (long long)n, swav_now_s() - s.t0);
    return rc;
}

/* ---- model ---------------------------------------------------------------------- */

static int model_for(struct live *L, const struct eval_arch *a, bool fresh, char *err,
                     size_t errlen)
{
    if (L->model && !fresh && L->model_arch.depth == a->depth &&
        L->model_arch.width == a->width && L->model_arch.small_stem == a->small_stem)
        return 0;
    nn_model_destroy(&L->model);
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.depth = a->depth;
    cfg.width = a->width;
    cfg.small_stem = a->small_stem;
    cfg.hidden_mlp = 0;
    cfg.feat_dim = 0;
    cfg.nmb_prototypes = 0;
    cfg.seed = a->seed;
    struct nn_crop_group g = {.n_crops = 1, .size = L->o->size};
    L->model = nn_model_new(L->be, &cfg, &g, 1, L->o->batch_size);
    if (!L->model) {
        snprintf(err, errlen, "cannot build %s for %d-pixel crops", a->name, L->o->size);
        return -1;
    }
    L->model_arch = *a;
    return 0;
}

/* ---- probes --------------------------------------------------------------------- */

struct stop_source {
    struct eval_feature_source fs;
    struct eval_batch_source inner;
    volatile sig_atomic_t *stop;
};

static int stop_fill(void *ctx, int epoch, const uint32_t *idx, int64_t b, float *x, int32_t *y)
{
    struct stop_source *s = ctx;
    if (*s->stop) return 1;
    return s->inner.fill(s->inner.ctx, epoch, idx, b, x, y);
}

/* Full mode of the linear probe: each batch is the RandomResizedCrop(size) +
 * flip crops of its images (new ones every epoch: the epoch is in the crop
 * seed) through the frozen backbone, as eval_linear.py trains. */
struct full_source {
    struct live *L;
    struct crop_stream s;
    uint32_t *order_idx; /* (n) data set indices of the epoch's order */
    uint64_t seed;
    int rc;              /* 1 stopped, -1 error (err) */
    char err[1024];
};

static int full_begin(void *ctx, int epoch, const uint32_t *order, int64_t n, int64_t batch)
{
    struct full_source *f = ctx;
    struct live *L = f->L;
    for (int64_t i = 0; i < n; i++) f->order_idx[i] = L->train_idx[order[i]];
    char what[48];
    snprintf(what, sizeof what, "linear epoch %d", epoch);
    int rc = stream_start(L, &f->s, L->o->eval_train, PROTO_MODE_EVAL_TRAIN, L->o->size, 0,
                          f->seed, epoch, f->order_idx, n, batch, what);
    if (rc < 0) snprintf(f->err, sizeof f->err, "no loader for %lld s", (long long)L->o->wait_s);
    f->rc = rc;
    return rc;
}

static int full_fill(void *ctx, int epoch, const uint32_t *idx, int64_t b, float *x, int32_t *y)
{
    struct full_source *f = ctx;
    const struct proto_batch *bt;
    f->rc = stream_next(f->L, &f->s, &bt, f->err, sizeof f->err);
    if (f->rc != 0) return 1;
    if (bt->n_images != b) {
        snprintf(f->err, sizeof f->err, "full mode: a batch of %u images for %lld",
                 bt->n_images, (long long)b);
        f->rc = -1;
        return 1;
    }
    forward_features(f->L, bt->crops[0].data, b, x);
    memcpy(y, bt->labels.data, (size_t)b * sizeof(int32_t));
    return 0;
}

struct target {
    char path[EVAL_CKPT_PATH_MAX];
    int64_t epoch, step;
    bool baseline;
};

static void record_config(const struct live *L, const char *probe, const struct eval_arch *a,
                          char *buf, size_t len)
{
    const struct eval_live_opts *o = L->o;
    int k;
    if (!strcmp(probe, "knn")) {
        k = snprintf(buf, len, "{\"k\": %d, \"temperature\": %g", o->knn_cfg.k,
                     o->knn_cfg.temperature);
    } else if (!strcmp(probe, L->semi_probe)) {
        k = eval_semisup_config_json(&o->semi_cfg, buf, len); /* "{...}": reopened below */
        if (k < 2 || (size_t)k >= len) return;
        k--;
        k += snprintf(buf + k, len - (size_t)k, ", \"subset\": \"%s\", \"n_classes\": %d",
                      o->semisup_data[0] ? (o->semi_cfg.subset_file && o->semi_cfg.subset_file[0]
                                                ? "list" : "stratified")
                                         : "even", L->semi_ncls);
    } else
        k = snprintf(buf, len,
                     "{\"epochs\": %d, \"batch_size\": %d, \"lr\": %g, \"wd\": %g, "
                     "\"nesterov\": %s, \"scheduler\": \"%s\", \"seed\": %" PRIu64 ", "
                     "\"mode\": \"%s\"",
                     o->lin_cfg.epochs, o->lin_cfg.batch_size, o->lin_cfg.lr, o->lin_cfg.wd,
                     o->lin_cfg.nesterov ? "true" : "false",
                     o->lin_cfg.sched == EVAL_SCHED_STEP ? "step" : "cosine", o->lin_cfg.seed,
                     o->linear_full ? "full" : "fast");
    if (k < 0 || (size_t)k >= len) return;
    snprintf(buf + k, len - (size_t)k,
             ", \"arch\": \"%s\", \"depth\": %d, \"width\": %d, \"small_stem\": %s, "
             "\"init_seed\": %" PRIu64 ", \"eval_train\": \"%s\", \"eval_val\": \"%s\", "
             "\"train_total\": %lld, \"val_total\": %lld, \"size\": %d, \"resize\": %d, "
             "\"flags\": %s}",
             a->name, a->depth, a->width, a->small_stem ? "true" : "false", a->seed,
             o->eval_train, o->eval_val, (long long)L->n_train_all, (long long)L->n_val_all,
             o->size, o->resize, o->flags_json ? o->flags_json : "{}");
}

static void write_report(struct live *L)
{
    char err[1024];
    void *cfg = NULL;
    size_t len;
    if (L->o->config_path[0] &&
        swav_file_read_all(L->o->config_path, 64u << 20, &cfg, &len, err, sizeof err) != 0) {
        LOG_WARN("report config: %s", err);
        cfg = NULL;
    }
    char own[EVAL_CKPT_PATH_MAX + 16];
    snprintf(own, sizeof own, "%s/config.json", L->o->dump_path);
    struct stat sb;
    if (!cfg && L->run_config && stat(own, &sb) != 0) {
        json_t *j = json_loads(L->run_config, 0, NULL);
        if (json_is_object(j)) cfg = strdup(L->run_config); /* the checkpoint's run flags */
        json_decref(j);
    }
    if (eval_report_write(L->o->dump_path, cfg, err, sizeof err) != 0)
        LOG_WARN("report: %s", err);
    free(cfg);
}

static int append_n(struct live *L, const struct target *t, const char *probe, double top1,
                    double top5, double secs, const struct eval_arch *a, int64_t n_train,
                    int64_t n_val)
{
    char cfg[8192], err[1024];
    record_config(L, probe, a, cfg, sizeof cfg);
    struct eval_result r = {
        .epoch = t->epoch, .step = t->step, .checkpoint = t->path, .probe = probe,
        .top1 = top1, .top5 = top5, .n_train = n_train, .n_val = n_val,
        .seconds = secs, .baseline = t->baseline, .config_json = cfg,
    };
    if (eval_result_append(L->o->dump_path, &r, err, sizeof err) != 0) {
        LOG_ERROR("%s", err);
        return -1;
    }
    done_add(L, t->epoch, t->step, probe, t->path, t->baseline);
    char what[EVAL_CKPT_PATH_MAX + 32];
    if (t->baseline)
        snprintf(what, sizeof what, "random init");
    else
        snprintf(what, sizeof what, "%.4000s epoch %lld", t->path, (long long)t->epoch);
    LOG_INFO("%s: %s top1 %.2f top5 %.2f (%lld train, %lld val, %.1f s)", what, probe, top1,
             top5, (long long)n_train, (long long)n_val, secs);
    write_report(L);
    return 0;
}

static int append(struct live *L, const struct target *t, const char *probe, double top1,
                  double top5, double secs, const struct eval_arch *a)
{
    return append_n(L, t, probe, top1, top5, secs, a, L->n_train, L->n_val);
}

static int prepare_datasets(struct live *L, char *err, size_t errlen)
{
    if (L->train_idx) return 0;
    int rc = dataset_size(L, L->o->eval_train, &L->n_train_all, err, errlen);
    if (rc == 0) rc = dataset_size(L, L->o->eval_val, &L->n_val_all, err, errlen);
    if (rc != 0) return rc;
    L->train_idx = swav_xmalloc((size_t)L->n_train_all * sizeof(uint32_t));
    L->val_idx = swav_xmalloc((size_t)L->n_val_all * sizeof(uint32_t));
    L->n_train = eval_subset_even(L->train_idx, L->n_train_all, L->o->train_limit);
    L->n_val = eval_subset_even(L->val_idx, L->n_val_all, L->o->val_limit);
    LOG_INFO("data sets: %s %lld images (probes use %lld), %s %lld images (probes use %lld)",
             L->o->eval_train, (long long)L->n_train_all, (long long)L->n_train, L->o->eval_val,
             (long long)L->n_val_all, (long long)L->n_val);
    return 0;
}

/* ---- semi-supervised fine-tuning ----------------------------------------------- */

/* The labelled subset of eval_train (once per process): with --semisup_data
 * the data set's own index gives names and labels, and eval_subset_prepare
 * reads --subset_file or draws the stratified labels_perc% subset, saved as
 * <dump_path>/semisup-<p>percent.txt; without it, round(N p / 100) evenly
 * spaced images (ImageFolder order: stratified within one image per
 * class).  0 or -1. */
static int semi_subset(struct live *L, char *err, size_t errlen)
{
    if (L->semi_idx) return 0;
    const struct eval_semisup_config *c = &L->o->semi_cfg;
    if (!L->o->semisup_data[0]) {
        int64_t m = (L->n_train_all * c->labels_perc + 50) / 100;
        m = m < 1 ? 1 : m;
        L->semi_idx = swav_xmalloc((size_t)L->n_train_all * sizeof(uint32_t));
        L->n_semi = eval_subset_even(L->semi_idx, L->n_train_all, m);
        LOG_INFO("semisup: %lld of %lld %s images, evenly spaced (%d%%; --semisup_data for a "
                 "stratified draw or a SimCLR list)", (long long)L->n_semi,
                 (long long)L->n_train_all, L->o->eval_train, c->labels_perc);
        return 0;
    }
    struct loader_index *ix = NULL;
    struct loader_index_opts io = {.threads = L->o->threads, .quiet = 1};
    if (loader_index_open(&ix, L->o->semisup_data, &io, err, errlen) != LOADER_INDEX_OK)
        return -1;
    int rc = -1;
    if ((int64_t)ix->n != L->n_train_all || ix->nclasses < 1) {
        snprintf(err, errlen, "--semisup_data %s: %u images in %u classes, but the loaders' "
                 "'%s' has %lld: not the same folder", L->o->semisup_data, ix->n, ix->nclasses,
                 L->o->eval_train, (long long)L->n_train_all);
    } else {
        const char **paths = swav_xmalloc((size_t)ix->n * sizeof(char *));
        int32_t *labels = swav_xmalloc((size_t)ix->n * sizeof(int32_t));
        for (uint32_t i = 0; i < ix->n; i++) {
            paths[i] = ix->entries[i].path;
            labels[i] = ix->entries[i].label;
        }
        if (eval_subset_prepare(c, L->o->dump_path, paths, labels, ix->n, (int)ix->nclasses,
                                &L->semi_idx, &L->n_semi, err, errlen) == EVAL_SUBSET_OK) {
            LOG_INFO("semisup: %lld of %u images (%s; saved as %s/semisup-%dpercent.txt)",
                     (long long)L->n_semi, ix->n,
                     c->subset_file && c->subset_file[0] ? c->subset_file : "stratified draw",
                     L->o->dump_path, c->labels_perc);
            rc = 0;
        }
        free(paths);
        free(labels);
    }
    loader_index_destroy(&ix);
    return rc;
}

/* Labels of images idx[0..n) of `tag` from the loaders (tiny center crops:
 * the decode is the cost).  0, 1 stopped, -1 error. */
static int labels_pass(struct live *L, const char *tag, const uint32_t *idx, int64_t n,
                       int32_t *labels, char *err, size_t errlen)
{
    struct crop_stream s;
    int rc = stream_start(L, &s, tag, PROTO_MODE_EVAL_VAL, 8, 8, 0, 0, idx, n, 256, "labels");
    if (rc < 0) snprintf(err, errlen, "%s: no loader for %lld s", tag, (long long)L->o->wait_s);
    while (rc == 0 && s.received < n) {
        const struct proto_batch *bt;
        int64_t at = s.received;
        rc = stream_next(L, &s, &bt, err, errlen);
        if (rc == 0) memcpy(labels + at, bt->labels.data, (size_t)bt->n_images * sizeof(int32_t));
    }
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        if (labels[i] < 0 || labels[i] >= (1 << 24)) {
            snprintf(err, errlen, "data set %s: image %u without a class label (%d): "
                     "fine-tuning needs an ImageFolder", tag, idx[i], labels[i]);
            rc = -1;
        }
    }
    return rc;
}

/* The image sources of the fine-tuning: the subset in each epoch's order
 * as RandomResizedCrop(size) + flip crops (train), the validation images as
 * Resize + CenterCrop (val), fetched a pass ahead from the loaders. */
struct semi_source {
    struct live *L;
    bool train;
    struct crop_stream s;
    uint32_t *order_idx; /* (n) data set indices in the pass's order */
    int rc;              /* 1 stopped, -1 error (err) */
    char err[1024];
};

static int semi_begin(void *ctx, int epoch, const uint32_t *order, int64_t n, int64_t batch)
{
    struct semi_source *f = ctx;
    struct live *L = f->L;
    const uint32_t *base = f->train ? L->semi_idx : L->val_idx;
    for (int64_t i = 0; i < n; i++) f->order_idx[i] = base[order[i]];
    char what[48];
    snprintf(what, sizeof what, "semisup %s epoch %d", f->train ? "train" : "val", epoch);
    f->rc = stream_start(L, &f->s, f->train ? L->o->eval_train : L->o->eval_val,
                         f->train ? PROTO_MODE_EVAL_TRAIN : PROTO_MODE_EVAL_VAL, L->o->size,
                         f->train ? 0 : L->o->resize, L->o->semi_cfg.seed, epoch, f->order_idx,
                         n, batch, what);
    if (f->rc < 0) snprintf(f->err, sizeof f->err, "no loader for %lld s", (long long)L->o->wait_s);
    return f->rc;
}

/* The loader's uint8 crops as they are: eval_semisup has the backend
 * normalize them into the model's input. */
static int semi_fill(void *ctx, int epoch, const uint32_t *idx, int64_t b, const uint8_t **crops,
                     int32_t *y)
{
    struct semi_source *f = ctx;
    const struct proto_batch *bt;
    f->rc = stream_next(f->L, &f->s, &bt, f->err, sizeof f->err);
    if (f->rc != 0) return 1;
    if (bt->n_images != b) {
        snprintf(f->err, sizeof f->err, "semisup: a batch of %u images for %lld", bt->n_images,
                 (long long)b);
        f->rc = -1;
        return 1;
    }
    *crops = bt->crops[0].data;
    memcpy(y, bt->labels.data, (size_t)b * sizeof(int32_t));
    return 0;
}

/* eval_semisup.py on the backbone in L->model: a new network of the same
 * architecture with a Linear(feat, classes) head (init from the semisup
 * seed), the backbone's weights and BN statistics copied in, fine-tuned on
 * the subset and validated on the validation images every epoch.  0, 1
 * stopped, -1 error. */
static int run_semisup(struct live *L, const struct target *t, const struct eval_arch *a)
{
    char err[1024];
    const struct eval_semisup_config *cfg = &L->o->semi_cfg;
    const char *what = t->baseline ? "random init" : t->path;
    double t0 = swav_now_s();
    if (semi_subset(L, err, sizeof err) != 0) {
        LOG_ERROR("semisup: %s", err);
        return -1;
    }
    if (!L->semi_ncls) {
        int32_t *lab = swav_xmalloc((size_t)(L->n_semi + L->n_val) * sizeof(int32_t));
        int rc = labels_pass(L, L->o->eval_train, L->semi_idx, L->n_semi, lab, err, sizeof err);
        if (rc == 0)
            rc = labels_pass(L, L->o->eval_val, L->val_idx, L->n_val, lab + L->n_semi, err,
                             sizeof err);
        int ncls = 0;
        for (int64_t i = 0; rc == 0 && i < L->n_semi + L->n_val; i++)
            ncls = lab[i] + 1 > ncls ? lab[i] + 1 : ncls;
        free(lab);
        if (rc != 0) {
            if (rc < 0) LOG_ERROR("semisup: %s", err);
            return rc;
        }
        L->semi_ncls = ncls;
        LOG_INFO("semisup: %d classes in the subset and the validation images", ncls);
    }
    struct nn_resnet_cfg rc_cfg = L->model->cfg;
    rc_cfg.hidden_mlp = 0;
    rc_cfg.feat_dim = L->semi_ncls;
    rc_cfg.nmb_prototypes = 0;
    rc_cfg.no_l2norm = 1;
    rc_cfg.seed = cfg->seed;
    struct nn_crop_group g = {.n_crops = 1, .size = L->o->size};
    struct nn_model *m = nn_model_new(L->be, &rc_cfg, &g, 1, cfg->batch_size);
    if (!m) {
        LOG_ERROR("semisup: cannot build %s with a %d-class head for %d-pixel crops", a->name,
                  L->semi_ncls, L->o->size);
        return -1;
    }
    /* the backbone as loaded (or at random init for the baseline), copied on
     * the backend; the head stays at its init: the pretrained projection head
     * is not a classifier */
    eval_semisup_copy_backbone(m, L->model);
    struct eval_semisup fs;
    int rc = eval_semisup_init(&fs, m, cfg, L->o->threads, err, sizeof err);
    if (rc != 0) {
        LOG_ERROR("semisup: %s", err);
        nn_model_destroy(&m);
        return -1;
    }
    struct semi_source ts = {.L = L, .train = true}, vs = {.L = L, .train = false};
    ts.order_idx = swav_xmalloc((size_t)L->n_semi * sizeof(uint32_t));
    vs.order_idx = swav_xmalloc((size_t)L->n_val * sizeof(uint32_t));
    struct eval_image_source train = {.ctx = &ts, .n = L->n_semi, .begin = semi_begin,
                                      .fill_u8 = semi_fill};
    struct eval_image_source val = {.ctx = &vs, .n = L->n_val, .begin = semi_begin,
                                    .fill_u8 = semi_fill};
    LOG_INFO("semisup: fine-tuning %s on %lld images (%d%%), %d classes, %d epochs, validation "
             "on %lld images", what, (long long)L->n_semi, cfg->labels_perc, L->semi_ncls,
             cfg->epochs, (long long)L->n_val);
    struct eval_linear_result res;
    enum eval_semisup_status st = eval_semisup_run(&fs, cfg, &train, &val, NULL, NULL, &res);
    eval_semisup_free(&fs);
    nn_model_destroy(&m);
    free(ts.order_idx);
    free(vs.order_idx);
    if (st == EVAL_SEMISUP_ERR_SOURCE && (ts.rc > 0 || vs.rc > 0)) return 1;
    if (st == EVAL_SEMISUP_ERR_SOURCE) {
        LOG_ERROR("semisup: %s: %s", what, ts.rc < 0 ? ts.err : vs.err);
        return -1;
    }
    if (st != EVAL_SEMISUP_OK) {
        LOG_ERROR("semisup: %s: %s", what, eval_semisup_status_str(st));
        return -1;
    }
    return append_n(L, t, L->semi_probe, res.best_top1, res.best_top5, swav_now_s() - t0, a,
                    L->n_semi, L->n_val);
}

/* Features with the model as it is, then the probes not yet recorded.
 * 0, 1 stopped, -1 error. */
static int run_probes(struct live *L, const struct target *t, const struct eval_arch *a)
{
    char err[1024];
    int rc = prepare_datasets(L, err, sizeof err);
    if (rc != 0) {
        if (rc < 0) LOG_ERROR("%s", err);
        return rc;
    }
    const bool want_knn = L->o->knn && !probe_done(L, t->epoch, t->step, t->path, t->baseline,
                                                   "knn");
    const bool want_lin = L->o->linear && !probe_done(L, t->epoch, t->step, t->path,
                                                      t->baseline, "linear");
    const bool want_semi = L->o->semisup && !probe_done(L, t->epoch, t->step, t->path,
                                                        t->baseline, L->semi_probe);
    if (!want_knn && !want_lin) return want_semi ? run_semisup(L, t, a) : 0;
    const int64_t D = L->model->feat_channels;
    float *xt = swav_xmalloc((size_t)(L->n_train * D) * sizeof(float));
    float *xv = swav_xmalloc((size_t)(L->n_val * D) * sizeof(float));
    int32_t *yt = swav_xmalloc((size_t)L->n_train * sizeof(int32_t));
    int32_t *yv = swav_xmalloc((size_t)L->n_val * sizeof(int32_t));
    double t0 = swav_now_s();
    rc = extract(L, L->o->eval_train, L->train_idx, L->n_train, xt, yt, err, sizeof err);
    if (rc == 0) rc = extract(L, L->o->eval_val, L->val_idx, L->n_val, xv, yv, err, sizeof err);
    if (rc < 0) LOG_ERROR("%s: %s", t->baseline ? "random init" : t->path, err);
    double t_feat = swav_now_s() - t0;
    int ncls = 0;
    for (int64_t i = 0; rc == 0 && i < L->n_train + L->n_val; i++) {
        int32_t y = i < L->n_train ? yt[i] : yv[i - L->n_train];
        if (y < 0 || y >= (1 << 24)) {
            LOG_ERROR("data set %s: image without a class label (%d): the probes need an "
                      "ImageFolder", i < L->n_train ? L->o->eval_train : L->o->eval_val, y);
            rc = -1;
        }
        ncls = y + 1 > ncls ? y + 1 : ncls;
    }
    if (rc == 0 && want_knn) {
        double t1 = swav_now_s();
        struct eval_acc acc;
        enum eval_knn_status st =
            eval_knn_run(xt, yt, L->n_train, xv, yv, L->n_val, D, ncls, &L->o->knn_cfg, &acc);
        if (st != EVAL_KNN_OK) {
            LOG_ERROR("knn probe: %s", eval_knn_status_str(st));
            rc = -1;
        } else {
            rc = append(L, t, "knn", eval_acc_top1(&acc), eval_acc_top5(&acc),
                        t_feat + swav_now_s() - t1, a);
        }
    }
    if (rc == 0 && *L->stop) rc = 1;
    if (rc == 0 && want_lin) {
        double t1 = swav_now_s();
        struct eval_linear lm;
        eval_linear_init(&lm, D, ncls, L->o->lin_cfg.batch_size, L->o->lin_cfg.seed);
        struct stop_source ss = {.fs = {xt, yt, L->n_train, D}, .stop = L->stop};
        ss.inner = eval_linear_source_features(&ss.fs);
        struct eval_batch_source src = {.ctx = &ss, .n = L->n_train, .fill = stop_fill};
        struct full_source fsrc = {.L = L, .seed = L->o->lin_cfg.seed};
        if (L->o->linear_full) {
            fsrc.order_idx = swav_xmalloc((size_t)L->n_train * sizeof(uint32_t));
            src = (struct eval_batch_source){.ctx = &fsrc, .n = L->n_train, .fill = full_fill,
                                             .begin = full_begin};
            LOG_INFO("linear probe, full mode: %d epochs of RandomResizedCrop(%d) + flip crops "
                     "of %lld images through the backbone", L->o->lin_cfg.epochs, L->o->size,
                     (long long)L->n_train);
        }
        struct eval_linear_result res;
        enum eval_linear_status st =
            eval_linear_run(&lm, &L->o->lin_cfg, &src, xv, yv, L->n_val, NULL, NULL, &res);
        eval_linear_free(&lm);
        free(fsrc.order_idx);
        if (st == EVAL_LINEAR_ERR_SOURCE && L->o->linear_full && fsrc.rc < 0) {
            LOG_ERROR("linear probe: %s", fsrc.err);
            rc = -1;
        } else if (st == EVAL_LINEAR_ERR_SOURCE && *L->stop) {
            rc = 1;
        } else if (st != EVAL_LINEAR_OK) {
            LOG_ERROR("linear probe: %s", eval_linear_status_str(st));
            rc = -1;
        } else {
            rc = append(L, t, "linear", res.best_top1, res.best_top5,
                        t_feat + swav_now_s() - t1, a);
        }
    }
    free(xt);
    free(xv);
    free(yt);
    free(yv);
    if (rc == 0 && *L->stop) rc = 1;
    if (rc == 0 && want_semi) rc = run_semisup(L, t, a);
    return rc;
}

/* Evaluate a checkpoint file.  0, 1 stopped, -1 error. */
static int eval_checkpoint(struct live *L, const char *path)
{
    char err[1024], fdpath[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        LOG_ERROR("checkpoint %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        LOG_ERROR("checkpoint %s: not a regular file", path);
        close(fd);
        return -1;
    }
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", fd);
    struct safetensors_file f;
    enum safetensors_status ss = safetensors_read(&f, fdpath, 0, err, sizeof err);
    if (ss != SAFETENSORS_OK) {
        LOG_ERROR("checkpoint %s: %s", path, err);
        close(fd);
        return -1;
    }
    struct eval_arch a;
    int rc = eval_arch_from_file(&f, &a, err, sizeof err);
    safetensors_file_free(&f);
    if (rc != 0 || model_for(L, &a, false, err, sizeof err) != 0) {
        LOG_ERROR("checkpoint %s: %s", path, err);
        close(fd);
        return -1;
    }
    struct nn_checkpoint_info info;
    enum nn_checkpoint_status cs = eval_backbone_load(L->model, fdpath, &info, err, sizeof err);
    close(fd);
    if (cs != NN_CHECKPOINT_OK) {
        LOG_ERROR("checkpoint %s: %s", path, err);
        return -1;
    }
    int nmissing = info.nmissing, nmis = info.nmismatched;
    struct target t = {.epoch = info.epoch, .step = info.step, .baseline = false};
    if (info.config_json) {
        free(L->run_config);
        L->run_config = strdup(info.config_json);
    }
    nn_checkpoint_info_free(&info);
    if (nmissing || nmis) {
        LOG_ERROR("checkpoint %s: %d backbone tensors of %s missing, %d of another shape", path,
                  nmissing, a.name, nmis);
        /* the model holds a mix now: rebuild it next time */
        nn_model_destroy(&L->model);
        return -1;
    }
    snprintf(t.path, sizeof t.path, "%s", path);
    L->run_arch = a;
    L->have_arch = true;
    if (all_done(L, t.epoch, t.step, t.path, false)) {
        LOG_INFO("%s (epoch %lld, step %lld) already evaluated", path, (long long)t.epoch,
                 (long long)t.step);
        return 0;
    }
    LOG_INFO("evaluating %s: %s, epoch %lld, step %lld", path, a.name, (long long)t.epoch,
             (long long)t.step);
    return run_probes(L, &t, &a);
}

static int eval_baseline(struct live *L)
{
    char err[1024];
    if (all_done(L, -1, -1, "", true)) return 0;
    if (model_for(L, &L->run_arch, true, err, sizeof err) != 0) {
        LOG_ERROR("random init: %s", err);
        return -1;
    }
    LOG_INFO("evaluating the random-init %s (seed %" PRIu64 ")", L->run_arch.name,
             L->run_arch.seed);
    struct target t = {.path = "", .epoch = -1, .step = -1, .baseline = true};
    int rc = run_probes(L, &t, &L->run_arch);
    /* the model holds random weights now; a checkpoint load overwrites all */
    return rc;
}

/* ---- watching ------------------------------------------------------------------- */

struct cand {
    char path[EVAL_CKPT_PATH_MAX];
    int64_t epoch, step;
    bool valid;
};

static bool newer(const struct cand *a, const struct cand *b)
{
    if (!b->valid) return a->valid;
    if (!a->valid) return false;
    return a->epoch > b->epoch || (a->epoch == b->epoch && a->step > b->step);
}

static bool failed(const struct live *L, int64_t epoch, int64_t step)
{
    for (int i = 0; i < L->nfailed; i++)
        if (L->failed_epoch[i] == epoch && L->failed_step[i] == step) return true;
    return false;
}

/* Epoch and step of a checkpoint file from its header (nn_checkpoint_peek;
 * cached for the last file by path and mtime).  0 or -1. */
static int file_key(struct live *L, const char *path, int64_t mtime, int64_t *epoch,
                    int64_t *step)
{
    if (!strcmp(L->scan_path, path) && L->scan_mtime == mtime) {
        *epoch = L->scan_epoch;
        *step = L->scan_step;
        return 0;
    }
    for (int i = 0; i < L->nbad_files; i++)
        if (L->bad_mtime[i] == mtime && !strcmp(L->bad_path[i], path)) return -1;
    char err[512];
    struct nn_checkpoint_info info;
    if (nn_checkpoint_peek(path, &info, err, sizeof err) != NN_CHECKPOINT_OK) {
        LOG_WARN("scan: %s: skipped", err);
        int k = L->nbad_files < 16 ? L->nbad_files++ : (int)(mtime & 15);
        snprintf(L->bad_path[k], sizeof L->bad_path[k], "%s", path);
        L->bad_mtime[k] = mtime;
        return -1;
    }
    *epoch = info.epoch;
    *step = info.step;
    nn_checkpoint_info_free(&info);
    snprintf(L->scan_path, sizeof L->scan_path, "%s", path);
    L->scan_mtime = mtime;
    L->scan_epoch = *epoch;
    L->scan_step = *step;
    return 0;
}

static void scan(struct live *L, struct cand *pending)
{
    static struct eval_ckpt list[256];
    char err[512];
    int n = eval_ckpt_scan(L->o->dump_path, list, 256, err, sizeof err);
    if (n < 0) {
        LOG_LIMITED(SWAV_LOG_WARN, "scan: %s", err);
        return;
    }
    /* newest first by mtime; the first one whose metadata reads wins */
    for (int i = n - 1; i >= 0; i--) {
        struct cand c = {.valid = true};
        if (file_key(L, list[i].path, list[i].mtime_ns, &c.epoch, &c.step) != 0) continue;
        snprintf(c.path, sizeof c.path, "%s", list[i].path);
        if (newer(&c, pending)) *pending = c;
        break;
    }
}

static bool set(const char *s) { return s && s[0]; }

/* The CURVE --sub link's handshake events (two frames: u16 event + u32
 * value, then the address): a refusal by the trainer's --pub_allow is logged
 * here, libzmq keeps retrying. */
static void drain_sub_monitor(struct live *L)
{
    if (!L->sub_monitor) return;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, L->sub_monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        uint16_t ev = 0;
        uint32_t val = 0;
        if (zmq_msg_size(&m) >= 2) memcpy(&ev, zmq_msg_data(&m), 2);
        if (zmq_msg_size(&m) >= 6) memcpy(&val, (const char *)zmq_msg_data(&m) + 2, 4);
        int more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        while (more) {
            zmq_msg_init(&m);
            more = zmq_msg_recv(&m, L->sub_monitor, 0) >= 0 && zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        if (ev == ZMQ_EVENT_CONNECTED) {
            L->sub_handshake = 0;
        } else if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            L->sub_handshake = 1;
            LOG_INFO("--sub %s: connected%s", L->o->sub, set(L->o->sub_public) ? " (CURVE)" : "");
        } else if (ev == ZMQ_EVENT_DISCONNECTED) {
            /* A CURVE server may hang up on a plain client before the client
             * has read its greeting: then no HANDSHAKE_FAILED event comes. */
            if (L->sub_handshake == 0) {
                LOG_LIMITED(SWAV_LOG_ERROR, "handshake with --sub %s failed: the connection "
                            "closed before it ended (CURVE on one side only, or the trainer "
                            "stopped or gone?) (retrying)", L->o->sub);
            } else if (L->sub_handshake == 1) {
                LOG_INFO("--sub %s: disconnected (reconnecting)", L->o->sub);
            }
            L->sub_handshake = -1;
        } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
            L->sub_handshake = -1;
            LOG_LIMITED(SWAV_LOG_ERROR, "--sub %s refused this evaluator's CURVE key (status "
                        "%u): is its public key in the trainer's --pub_allow list? (retrying)",
                        L->o->sub, (unsigned)val);
        } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
            L->sub_handshake = -1;
            LOG_LIMITED(SWAV_LOG_ERROR, "handshake with --sub %s failed (ZMTP error %#x): "
                        "CURVE on one side only, or the wrong --sub_public? (retrying)",
                        L->o->sub, (unsigned)val);
        }
    }
}

static void drain_sub(struct live *L, struct cand *pending)
{
    drain_sub_monitor(L);
    if (!L->sub) return;
    for (;;) {
        enum proto_status ps = proto_recv(L->sub, &L->rx, false, ZMQ_DONTWAIT);
        if (ps == PROTO_ERR_AGAIN) return;
        if (ps != PROTO_OK) {
            if (zmq_errno() == EINTR) return;
            L->bad_announcements++;
            LOG_LIMITED(SWAV_LOG_WARN, "announcement not received: %s", proto_status_str(ps));
            continue;
        }
        struct proto_checkpoint m;
        struct proto_diag diag = {0};
        struct proto_decode_opts dopts = {.run = L->o->run, .max_tensor_bytes = 1};
        ps = proto_checkpoint_decode(L->rx.frames, L->rx.nframes, &dopts, &m, &diag);
        if (ps != PROTO_OK) {
            char msg[400];
            proto_diag_format(msg, sizeof msg, PROTO_TYPE_CHECKPOINT, ps, &diag);
            L->bad_announcements++;
            LOG_LIMITED(SWAV_LOG_WARN, "bad announcement ignored: %s", msg);
            continue;
        }
        struct stat sb;
        if (stat(m.path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            L->bad_announcements++;
            LOG_LIMITED(SWAV_LOG_WARN, "announced checkpoint %s (epoch %u) is not a readable "
                        "file: ignored", m.path, m.epoch);
            continue;
        }
        struct cand c = {.epoch = m.epoch, .step = (int64_t)m.step, .valid = true};
        size_t pl = strlen(m.path);
        if (pl >= sizeof c.path) continue; /* stat would have failed (PATH_MAX) */
        memcpy(c.path, m.path, pl + 1);
        LOG_INFO("announced: %s (epoch %u, step %" PRIu64 ")", m.path, m.epoch, m.step);
        if (newer(&c, pending)) *pending = c;
    }
}

static int setup(struct live *L, char *err, size_t errlen)
{
    L->zctx = zmq_ctx_new();
    SWAV_ASSERT(L->zctx);
    /* One refusal fails an order: the evaluator's refusals are deterministic
     * (an index past the data set, an unknown tag, a crop spec), and BUSY
     * ones are re-issued without counting. */
    /* CURVE: the allow-list's ZAP handler is ours, not the loader client's
     * (which would only count refusals, and log them when it next polls):
     * refusals are logged at once, also while no evaluation runs. */
    if (set(L->o->curve_allow)) {
        char what[1100], zerr[512];
        snprintf(what, sizeof what, "--loader_bind %s", L->o->loader_bind);
        L->zap = proto_zap_new_logged(L->zctx, L->o->curve_allow, what, zerr, sizeof zerr);
        if (!L->zap) {
            snprintf(err, errlen, "--curve_allow: %s", zerr);
            return -1;
        }
    }
    struct loader_client_opts co = {.bind = L->o->loader_bind, .run = L->o->run,
                                    .zmq_ctx = L->zctx, .deadline_ms = 600000,
                                    .max_attempts = 1, .curve_secret = L->o->curve_secret};
    if (loader_client_new(&L->client, &co, err, errlen) != 0) return -1;
    LOG_INFO("loaders connect to %s%s", loader_client_endpoint(L->client),
             set(L->o->curve_secret) ? " (CURVE)" : "");
    if (L->o->sub[0]) {
        L->sub = zmq_socket(L->zctx, ZMQ_SUB);
        SWAV_ASSERT(L->sub);
        proto_socket_setup(L->sub, 1 << 16, 1000, 5000);
        zmq_setsockopt(L->sub, ZMQ_SUBSCRIBE, "", 0);
        if (set(L->o->sub_public)) {
            char cerr[512];
            if (proto_socket_curve_client(L->sub, L->o->sub_public,
                                          set(L->o->curve_secret) ? L->o->curve_secret : NULL,
                                          cerr, sizeof cerr) != PROTO_OK) {
                snprintf(err, errlen, "--sub %s: %s", L->o->sub, cerr);
                return -1;
            }
        }
        /* Its connection events, CURVE or not: a failed handshake is logged. */
        static unsigned generation;
        char mon[64];
        snprintf(mon, sizeof mon, "inproc://eval-sub-monitor-%u", ++generation);
        if (zmq_socket_monitor(L->sub, mon,
                               ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED |
                                   ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                                   ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                   ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0 ||
            !(L->sub_monitor = zmq_socket(L->zctx, ZMQ_PAIR)) ||
            zmq_connect(L->sub_monitor, mon) != 0) {
            snprintf(err, errlen, "--sub %s: monitor: %s", L->o->sub,
                     zmq_strerror(zmq_errno()));
            return -1;
        }
        if (zmq_connect(L->sub, L->o->sub) != 0) {
            snprintf(err, errlen, "--sub %s: %s", L->o->sub, zmq_strerror(zmq_errno()));
            return -1;
        }
    }
    proto_rx_init(&L->rx);
    snprintf(L->semi_probe, sizeof L->semi_probe, "semisup%d", L->o->semi_cfg.labels_perc);
    char derr[512];
    L->be = nn_device_open(set(L->o->device) ? L->o->device : "cpu", L->o->threads, derr,
                           sizeof derr);
    if (!L->be) {
        snprintf(err, errlen, "%s", derr);
        return -2;
    }
    LOG_INFO("backbone features and fine-tuning on the %s backend", nn_backend_name(L->be));
    size_t S = (size_t)L->o->size;
    L->input = nn_backend_alloc(L->be, (size_t)L->o->batch_size * 3 * S * S * sizeof(float));
    L->next_step = 1;
    return 0;
}

static void teardown(struct live *L)
{
    nn_model_destroy(&L->model);
    if (L->be) {
        nn_backend_free(L->be, L->input);
        nn_backend_destroy(&L->be);
    }
    free(L->train_idx);
    free(L->val_idx);
    free(L->semi_idx);
    free(L->done);
    free(L->run_config);
    proto_rx_free(&L->rx);
    if (L->sub_monitor) {
        zmq_socket_monitor(L->sub, NULL, 0);
        zmq_close(L->sub_monitor);
    }
    if (L->sub) zmq_close(L->sub);
    loader_client_destroy(&L->client);
    proto_zap_destroy(&L->zap);
    if (L->zctx) zmq_ctx_term(L->zctx);
}

int eval_live_run(const struct eval_live_opts *o, volatile sig_atomic_t *stop)
{
    struct live *L = swav_xcalloc(1, sizeof *L);
    L->o = o;
    L->stop = stop;
    char err[1024];
    int ret = 0;
    int src = setup(L, err, sizeof err);
    if (src != 0) {
        LOG_ERROR("%s", err);
        ret = src == -2 ? 2 : 1; /* -2: --device could not be opened */
        goto out;
    }
    if (o->pretrained[0]) {
        int rc = eval_checkpoint(L, o->pretrained);
        ret = rc < 0 ? 1 : 0;
        goto out;
    }
    done_load(L);
    struct cand pending = {.valid = false};
    struct cand last = {.valid = false};
    double next_scan = 0;
    bool any_failed = false;
    while (!*stop) {
        drain_sub(L, &pending);
        if (swav_now_s() >= next_scan) {
            scan(L, &pending);
            next_scan = swav_now_s() + (double)o->rescan_s;
        }
        if (pending.valid && !failed(L, pending.epoch, pending.step) &&
            (!last.valid || newer(&pending, &last) || pending.epoch < 0)) {
            struct cand c = pending;
            pending.valid = false;
            if (!all_done(L, c.epoch, c.step, c.path, false) || !L->have_arch) {
                int rc = eval_checkpoint(L, c.path);
                if (rc > 0) break;
                if (rc < 0) {
                    any_failed = true;
                    if (L->nfailed < 64) {
                        L->failed_epoch[L->nfailed] = c.epoch;
                        L->failed_step[L->nfailed++] = c.step;
                    }
                }
            }
            last = c;
            /* anything newer that came meanwhile first; then the baseline */
            drain_sub(L, &pending);
            scan(L, &pending);
            if (pending.valid && newer(&pending, &last)) continue;
        }
        if (o->baseline && L->have_arch && !all_done(L, -1, -1, "", true)) {
            int rc = eval_baseline(L);
            if (rc > 0) break;
            if (rc < 0) {
                any_failed = true;
                LOG_ERROR("random-init baseline failed; not retried");
                L->have_arch = false;
            }
            continue;
        }
        if (o->once) break;
        loader_client_poll(L->client, 500);
    }
    if (*stop) LOG_INFO("stopping");
    else if (o->once && any_failed) ret = 1;
out:
    teardown(L);
    free(L);
    return ret;
}
