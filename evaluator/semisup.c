/* Semi-supervised evaluation: subset selection, schedule and the
 * fine-tuning loop (see semisup.h). */
#include "semisup.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/rng.h"
#include "nn/backend.h"
#include "nn/resnet.h"
#include "nn/schedule.h"

void eval_semisup_config_default(struct eval_semisup_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->labels_perc = 10;
    cfg->epochs = 20;
    cfg->batch_size = 32;
    cfg->lr = 0.01;
    cfg->lr_last_layer = 0.2;
    cfg->momentum = 0.9;
    cfg->wd = 0.0;
    cfg->n_decay = 2;
    cfg->decay_epochs[0] = 12;
    cfg->decay_epochs[1] = 16;
    cfg->gamma = 0.2;
    cfg->seed = 31;
}

void eval_semisup_lr(const struct eval_semisup_config *cfg, int epoch, double *lr_trunk,
                     double *lr_head)
{
    int64_t ms[EVAL_MAX_MILESTONES];
    int n = cfg->n_decay < EVAL_MAX_MILESTONES ? cfg->n_decay : EVAL_MAX_MILESTONES;
    for (int i = 0; i < n; i++)
        ms[i] = cfg->decay_epochs[i];
    *lr_trunk = nn_sched_multistep(cfg->lr, ms, n, cfg->gamma, epoch);
    *lr_head = nn_sched_multistep(cfg->lr_last_layer, ms, n, cfg->gamma, epoch);
}

const char *eval_subset_status_str(enum eval_subset_status st)
{
    switch (st) {
    case EVAL_SUBSET_OK: return "ok";
    case EVAL_SUBSET_ERR_ARGS: return "bad subset arguments";
    case EVAL_SUBSET_ERR_IO: return "subset list I/O error";
    case EVAL_SUBSET_ERR_FORMAT: return "malformed subset list";
    case EVAL_SUBSET_ERR_UNKNOWN: return "subset list names a file the data set lacks";
    case EVAL_SUBSET_ERR_AMBIGUOUS: return "subset list name matches several files";
    case EVAL_SUBSET_ERR_DUPLICATE: return "subset list names a file twice";
    }
    return "unknown subset status";
}

const char *eval_basename(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

enum eval_subset_status eval_subset_stratified(const int32_t *labels, int64_t n, int n_classes,
                                               double fraction, uint64_t seed, uint32_t **idx,
                                               int64_t *n_out)
{
    if (n < 1 || n > UINT32_MAX || n_classes < 1 || !(fraction > 0.0 && fraction <= 1.0))
        return EVAL_SUBSET_ERR_ARGS;
    int64_t *count = swav_xcalloc((size_t)n_classes + 1, sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) {
        if (labels[i] < 0 || labels[i] >= n_classes) {
            free(count);
            return EVAL_SUBSET_ERR_ARGS;
        }
        count[labels[i] + 1]++;
    }
    /* members of class c: byclass[start[c] .. start[c+1]), in index order */
    for (int c = 0; c < n_classes; c++)
        count[c + 1] += count[c];
    uint32_t *byclass = swav_xmalloc(sizeof(uint32_t) * (size_t)n);
    int64_t *fill = swav_xmalloc(sizeof(int64_t) * (size_t)n_classes);
    memcpy(fill, count, sizeof(int64_t) * (size_t)n_classes);
    for (int64_t i = 0; i < n; i++)
        byclass[fill[labels[i]]++] = (uint32_t)i;
    uint32_t *out = swav_xmalloc(sizeof(uint32_t) * (size_t)n);
    int64_t m = 0;
    for (int c = 0; c < n_classes; c++) {
        int64_t nc = count[c + 1] - count[c];
        if (nc == 0)
            continue;
        int64_t k = (int64_t)floor(fraction * (double)nc + 0.5);
        k = k < 1 ? 1 : k > nc ? nc : k;
        struct swav_rng r;
        swav_rng_init(&r, seed, 0, (uint32_t)c, EVAL_RNG_SUBSET);
        swav_rng_shuffle_u32(&r, byclass + count[c], (uint32_t)nc);
        memcpy(out + m, byclass + count[c], sizeof(uint32_t) * (size_t)k);
        m += k;
    }
    qsort(out, (size_t)m, sizeof(uint32_t), cmp_u32);
    free(count);
    free(byclass);
    free(fill);
    *idx = out;
    *n_out = m;
    return EVAL_SUBSET_OK;
}

struct name_ref {
    const char *name;
    uint32_t index;
};

static int cmp_name(const void *a, const void *b)
{
    const struct name_ref *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->index > y->index) - (x->index < y->index);
}

enum eval_subset_status eval_subset_read(const char *list_path, const char *const *paths,
                                         int64_t n, uint32_t **idx, int64_t *n_out, char *err,
                                         size_t errlen)
{
    if (n < 1 || n > UINT32_MAX) {
        snprintf(err, errlen, "%s: the data set has no images", list_path);
        return EVAL_SUBSET_ERR_ARGS;
    }
    void *data;
    size_t len;
    char ferr[512];
    if (swav_file_read_all(list_path, (size_t)1 << 30, &data, &len, ferr, sizeof(ferr)) != 0) {
        snprintf(err, errlen, "%s", ferr);
        return EVAL_SUBSET_ERR_IO;
    }
    struct name_ref *refs = swav_xmalloc(sizeof(*refs) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        refs[i] = (struct name_ref){eval_basename(paths[i]), (uint32_t)i};
    qsort(refs, (size_t)n, sizeof(*refs), cmp_name);

    enum eval_subset_status st = EVAL_SUBSET_OK;
    size_t cap = 1024;
    int64_t m = 0;
    uint32_t *out = swav_xmalloc(sizeof(uint32_t) * cap);
    char *p = data, *end = p + len;
    long line = 0;
    bool blank_seen = false;
    while (p < end && st == EVAL_SUBSET_OK) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *e = nl ? nl : end;
        line++;
        size_t l = (size_t)(e - p);
        if (l > 0 && p[l - 1] == '\r')
            l--;
        if (l == 0) {
            blank_seen = true;
        } else if (blank_seen) {
            snprintf(err, errlen, "%s:%ld: a name after a blank line", list_path, line);
            st = EVAL_SUBSET_ERR_FORMAT;
        } else if (l >= EVAL_SUBSET_MAX_LINE || memchr(p, '/', l) || memchr(p, '\0', l)) {
            snprintf(err, errlen, "%s:%ld: not a file name (over-long, a '/' or a NUL)",
                     list_path, line);
            st = EVAL_SUBSET_ERR_FORMAT;
        } else {
            char name[EVAL_SUBSET_MAX_LINE];
            memcpy(name, p, l);
            name[l] = '\0';
            /* first match by binary search */
            int64_t lo = 0, hi = n;
            while (lo < hi) {
                int64_t mid = lo + (hi - lo) / 2;
                if (strcmp(refs[mid].name, name) < 0)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            if (lo == n || strcmp(refs[lo].name, name) != 0) {
                snprintf(err, errlen, "%s:%ld: '%s' is not a file of the data set", list_path,
                         line, name);
                st = EVAL_SUBSET_ERR_UNKNOWN;
            } else if (lo + 1 < n && strcmp(refs[lo + 1].name, name) == 0) {
                snprintf(err, errlen, "%s:%ld: '%s' matches several files of the data set",
                         list_path, line, name);
                st = EVAL_SUBSET_ERR_AMBIGUOUS;
            } else {
                if ((size_t)m == cap) {
                    cap *= 2;
                    out = swav_xrealloc(out, sizeof(uint32_t) * cap);
                }
                out[m++] = refs[lo].index;
            }
        }
        p = nl ? nl + 1 : end;
    }
    if (st == EVAL_SUBSET_OK && m == 0) {
        snprintf(err, errlen, "%s: no file names", list_path);
        st = EVAL_SUBSET_ERR_FORMAT;
    }
    if (st == EVAL_SUBSET_OK) {
        qsort(out, (size_t)m, sizeof(uint32_t), cmp_u32);
        for (int64_t i = 1; i < m; i++)
            if (out[i] == out[i - 1]) {
                snprintf(err, errlen, "%s: '%s' is listed twice", list_path,
                         eval_basename(paths[out[i]]));
                st = EVAL_SUBSET_ERR_DUPLICATE;
                break;
            }
    }
    free(refs);
    free(data);
    if (st != EVAL_SUBSET_OK) {
        free(out);
        return st;
    }
    *idx = out;
    *n_out = m;
    return EVAL_SUBSET_OK;
}

enum eval_subset_status eval_subset_write(const char *list_path, const char *const *paths,
                                          const uint32_t *idx, int64_t n, char *err,
                                          size_t errlen)
{
    size_t len = 0;
    for (int64_t i = 0; i < n; i++)
        len += strlen(eval_basename(paths[idx[i]])) + 1;
    char *buf = swav_xmalloc(len + 1);
    size_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *b = eval_basename(paths[idx[i]]);
        size_t l = strlen(b);
        memcpy(buf + off, b, l);
        off += l;
        buf[off++] = '\n';
    }
    int rc = swav_file_write_atomic(list_path, buf, off, err, errlen);
    free(buf);
    return rc == 0 ? EVAL_SUBSET_OK : EVAL_SUBSET_ERR_IO;
}

enum eval_subset_status eval_subset_prepare(const struct eval_semisup_config *cfg,
                                            const char *dump_path, const char *const *paths,
                                            const int32_t *labels, int64_t n, int n_classes,
                                            uint32_t **idx, int64_t *n_out, char *err,
                                            size_t errlen)
{
    if (cfg->labels_perc != 1 && cfg->labels_perc != 10) {
        snprintf(err, errlen, "labels_perc %d is not 1 or 10", cfg->labels_perc);
        return EVAL_SUBSET_ERR_ARGS;
    }
    enum eval_subset_status st;
    if (cfg->subset_file && cfg->subset_file[0]) {
        st = eval_subset_read(cfg->subset_file, paths, n, idx, n_out, err, errlen);
    } else {
        st = eval_subset_stratified(labels, n, n_classes, cfg->labels_perc / 100.0, cfg->seed,
                                    idx, n_out);
        if (st != EVAL_SUBSET_OK)
            snprintf(err, errlen, "cannot draw a %d%% subset of %lld images: %s",
                     cfg->labels_perc, (long long)n, eval_subset_status_str(st));
    }
    if (st != EVAL_SUBSET_OK)
        return st;
    if (errlen)
        err[0] = '\0';
    char path[4096];
    if ((size_t)snprintf(path, sizeof(path), "%s/semisup-%dpercent.txt", dump_path,
                         cfg->labels_perc) >= sizeof(path) ||
        swav_mkdirs(dump_path, err, errlen) != 0 ||
        eval_subset_write(path, paths, *idx, *n_out, err, errlen) != EVAL_SUBSET_OK) {
        if (!err[0])
            snprintf(err, errlen, "dump_path too long");
        free(*idx);
        *idx = NULL;
        return EVAL_SUBSET_ERR_IO;
    }
    return EVAL_SUBSET_OK;
}

int eval_semisup_config_json(const struct eval_semisup_config *cfg, char *buf, size_t len)
{
    char ms[16 * EVAL_MAX_MILESTONES] = "";
    size_t o = 0;
    for (int i = 0; i < cfg->n_decay && i < EVAL_MAX_MILESTONES; i++)
        o += (size_t)snprintf(ms + o, sizeof(ms) - o, "%s%d", i ? "," : "", cfg->decay_epochs[i]);
    json_t *sf = json_string(cfg->subset_file ? cfg->subset_file : "");
    char *sfs = json_dumps(sf, JSON_ENCODE_ANY);
    json_decref(sf);
    int n = snprintf(buf, len,
                     "{\"labels_perc\":%d,\"epochs\":%d,\"batch_size\":%d,\"lr\":%.10g,"
                     "\"lr_last_layer\":%.10g,\"momentum\":%.10g,\"wd\":%.10g,"
                     "\"scheduler_type\":\"step\",\"decay_epochs\":[%s],\"gamma\":%.10g,"
                     "\"seed\":%llu,\"subset_file\":%s}",
                     cfg->labels_perc, cfg->epochs, cfg->batch_size, cfg->lr, cfg->lr_last_layer,
                     cfg->momentum, cfg->wd, ms, cfg->gamma, (unsigned long long)cfg->seed,
                     sfs ? sfs : "\"\"");
    free(sfs);
    return n;
}

/* ---- fine-tuning ------------------------------------------------------------ */

const char *eval_semisup_status_str(enum eval_semisup_status st)
{
    switch (st) {
    case EVAL_SEMISUP_OK: return "ok";
    case EVAL_SEMISUP_ERR_ARGS: return "fine-tuning config or sizes out of range";
    case EVAL_SEMISUP_ERR_LABEL: return "a label outside [0, n_classes)";
    case EVAL_SEMISUP_ERR_SOURCE: return "an image source failed";
    }
    return "unknown semisup status";
}

int eval_semisup_init(struct eval_semisup *s, struct nn_model *m,
                      const struct eval_semisup_config *cfg, int threads, char *err,
                      size_t errlen)
{
    memset(s, 0, sizeof *s);
    if (m->cfg.feat_dim < 1 || m->cfg.hidden_mlp != 0 || !m->cfg.no_l2norm ||
        m->cfg.nmb_prototypes != 0 || m->n_groups != 1 || m->groups[0].n_crops != 1 ||
        m->out_dim != m->cfg.feat_dim) {
        snprintf(err, errlen, "fine-tuning needs a model with one linear head to the classes "
                              "(feat_dim = classes, hidden_mlp 0, no L2 norm, no prototypes) "
                              "and one group of one crop");
        return -1;
    }
    if (cfg->batch_size < 1 || cfg->batch_size > m->batch) {
        snprintf(err, errlen, "batch size %d: the model was built for %d", cfg->batch_size,
                 m->batch);
        return -1;
    }
    s->m = m;
    s->n_classes = m->cfg.feat_dim;
    s->batch = m->batch;
    s->size = m->groups[0].size;
    struct nn_optim_config oc = {.momentum = cfg->momentum, .weight_decay = cfg->wd,
                                 .nthreads = threads > 0 ? threads : 1};
    /* the CUDA backend's own optimizer where there is one (parameters,
     * gradients and momentum in its memory); nn_optim_init elsewhere */
    nn_optim_init_on(&s->optim, m->be, &m->params, &oc);
    int nhead = 0;
    for (int i = 0; i < m->params.n; i++) {
        if (strstr(m->params.p[i].name, "head")) { /* eval_semisup.py: 'head' in name */
            nn_optim_set_group(&s->optim, i, 1);
            nhead++;
        }
    }
    SWAV_ASSERT(nhead > 0);
    size_t S = (size_t)s->size;
    s->input = nn_backend_alloc(m->be, (size_t)s->batch * 3 * S * S * sizeof(float));
    s->y = swav_xmalloc((size_t)s->batch * sizeof(int32_t));
    s->logits = swav_xmalloc((size_t)(s->batch * s->n_classes) * sizeof(float));
    s->dlogits = nn_backend_alloc(m->be, (size_t)(s->batch * s->n_classes) * sizeof(float));
    return 0;
}

void eval_semisup_free(struct eval_semisup *s)
{
    if (s->m) {
        nn_optim_free(&s->optim);
        nn_backend_free(s->m->be, s->input);
        nn_backend_free(s->m->be, s->dlogits);
    }
    free(s->x);
    free(s->y);
    free(s->logits);
    free(s->perm);
    memset(s, 0, sizeof *s);
}

void eval_semisup_copy_backbone(struct nn_model *dst, const struct nn_model *src)
{
    SWAV_ASSERT(dst->be == src->be);
    for (int i = 0; i < src->params.n; i++) {
        const struct nn_param *p = &src->params.p[i];
        int j = nn_param_table_find(&dst->params, p->name);
        SWAV_ASSERT(j >= 0 && dst->params.p[j].numel == p->numel);
        nn_backend_copy(dst->be, dst->param_data + dst->params.p[j].offset,
                        src->param_data + p->offset, p->numel * sizeof(float));
    }
    for (int i = 0; i < src->buffers.n; i++) {
        const struct nn_param *p = &src->buffers.p[i];
        int j = nn_param_table_find(&dst->buffers, p->name);
        SWAV_ASSERT(j >= 0 && dst->buffers.p[j].numel == p->numel);
        nn_backend_copy(dst->be, dst->buffer_data + dst->buffers.p[j].offset,
                        src->buffer_data + p->offset, p->numel * sizeof(float));
    }
    nn_backend_weights_updated(dst->be);
}

/* The model's logits of the last forward (b rows) into s->logits (host):
 * nn_backend_copy to host memory waits for the forward. */
static void read_logits(struct eval_semisup *s, int64_t b)
{
    nn_backend_copy(s->m->be, s->logits, s->m->out,
                    (size_t)(b * s->n_classes) * sizeof(float));
}

float eval_semisup_step(struct eval_semisup *s, const float *x, const int32_t *y, int64_t b,
                        double lr_trunk, double lr_head)
{
    SWAV_ASSERT(b > 0 && b <= s->batch);
    struct nn_model *m = s->m;
    const int C = (int)s->n_classes;
    nn_model_zero_grad(m);
    const float *in[1] = {x};
    nn_model_forward(m, in, (int)b, NN_MODEL_TRAIN);
    read_logits(s, b);
    double loss = 0.0;
    float scale = 1.0f / (float)b; /* nn.CrossEntropyLoss: mean over the batch */
    for (int64_t i = 0; i < b; i++)
        loss += eval_ce_row_backward(s->logits + i * C, C, y[i], scale);
    nn_backend_copy(m->be, s->dlogits, s->logits, (size_t)(b * C) * sizeof(float));
    nn_model_backward(m, s->dlogits);
    /* every group's rate: the CUDA optimizer reads all NN_OPTIM_MAX_GROUPS */
    double lrs[NN_OPTIM_MAX_GROUPS] = {lr_trunk, lr_head};
    nn_optim_step_groups(&s->optim, m->param_data, m->grad_data, lrs, 0);
    return (float)(loss / (double)b);
}

/* Batch idx[0..b) of a source into the model's input (s->input, backend
 * memory) and s->y (host).  0, or nonzero when the source failed. */
static int load_batch(struct eval_semisup *s, const struct eval_image_source *src, int epoch,
                      const uint32_t *idx, int64_t b)
{
    nn_backend_t *be = s->m->be;
    const int S = (int)s->size;
    if (src->fill_u8) {
        const uint8_t *crops = NULL;
        if (src->fill_u8(src->ctx, epoch, idx, b, &crops, s->y) != 0) return 1;
        nn_backend_normalize_crops(be, s->input, crops, (int)b, 1, S, S);
        return 0;
    }
    const size_t bytes = (size_t)b * 3 * (size_t)S * (size_t)S * sizeof(float);
    if (!s->x) s->x = swav_xmalloc((size_t)s->batch * 3 * (size_t)S * (size_t)S * sizeof(float));
    if (src->fill(src->ctx, epoch, idx, b, s->x, s->y) != 0) return 1;
    nn_backend_copy(be, s->input, s->x, bytes);
    return 0;
}

static bool grow_perm(struct eval_semisup *s, int64_t n)
{
    if (n < 1 || n > UINT32_MAX) return false;
    if (s->perm_cap < n) {
        free(s->perm);
        s->perm = swav_xmalloc((size_t)n * sizeof(uint32_t));
        s->perm_cap = n;
    }
    return true;
}

enum eval_semisup_status eval_semisup_evaluate(struct eval_semisup *s,
                                               const struct eval_image_source *src, int epoch,
                                               struct eval_acc *acc, double *mean_loss)
{
    if (!grow_perm(s, src->n)) return EVAL_SEMISUP_ERR_ARGS;
    const int C = (int)s->n_classes;
    for (int64_t i = 0; i < src->n; i++) s->perm[i] = (uint32_t)i;
    if (src->begin && src->begin(src->ctx, epoch, s->perm, src->n, s->batch) != 0)
        return EVAL_SEMISUP_ERR_SOURCE;
    struct eval_acc a = {0};
    double loss = 0.0;
    for (int64_t i0 = 0; i0 < src->n; i0 += s->batch) {
        int64_t b = src->n - i0 < s->batch ? src->n - i0 : s->batch;
        if (load_batch(s, src, epoch, s->perm + i0, b) != 0) return EVAL_SEMISUP_ERR_SOURCE;
        for (int64_t i = 0; i < b; i++)
            if (s->y[i] < 0 || s->y[i] >= C) return EVAL_SEMISUP_ERR_LABEL;
        const float *in[1] = {s->input};
        nn_model_forward(s->m, in, (int)b, NN_MODEL_EVAL);
        read_logits(s, b);
        for (int64_t i = 0; i < b; i++) {
            float *z = s->logits + i * C;
            eval_acc_add(&a, eval_label_rank(z, C, s->y[i]));
            loss += eval_ce_row_backward(z, C, s->y[i], 1.0f);
        }
    }
    *acc = a;
    if (mean_loss) *mean_loss = src->n ? loss / (double)src->n : 0.0;
    return EVAL_SEMISUP_OK;
}

enum eval_semisup_status eval_semisup_run(struct eval_semisup *s,
                                          const struct eval_semisup_config *cfg,
                                          const struct eval_image_source *train,
                                          const struct eval_image_source *val,
                                          eval_semisup_step_fn on_step, void *step_ctx,
                                          struct eval_linear_result *res)
{
    if (cfg->epochs < 1 || cfg->batch_size < 1 || cfg->batch_size > s->batch ||
        train->n < 1 || train->n > UINT32_MAX || val->n < 1 || !(cfg->lr >= 0.0) ||
        !(cfg->lr_last_layer >= 0.0) || cfg->n_decay < 0 || cfg->n_decay > EVAL_MAX_MILESTONES)
        return EVAL_SEMISUP_ERR_ARGS;
    uint32_t *order = swav_xmalloc((size_t)train->n * sizeof(uint32_t));
    struct eval_linear_result r = {.best_top1 = -1.0, .best_epoch = -1};
    enum eval_semisup_status st = EVAL_SEMISUP_OK;
    const int C = (int)s->n_classes;
    int64_t step = 0;
    for (int epoch = 0; epoch < cfg->epochs && st == EVAL_SEMISUP_OK; epoch++) {
        double lr_trunk, lr_head;
        eval_semisup_lr(cfg, epoch, &lr_trunk, &lr_head);
        eval_linear_epoch_order(cfg->seed, epoch, order, train->n);
        if (train->begin &&
            train->begin(train->ctx, epoch, order, train->n, cfg->batch_size) != 0) {
            st = EVAL_SEMISUP_ERR_SOURCE;
            break;
        }
        double sum = 0.0;
        int64_t nb = 0;
        for (int64_t i0 = 0; i0 < train->n; i0 += cfg->batch_size) {
            int64_t b = train->n - i0 < cfg->batch_size ? train->n - i0 : cfg->batch_size;
            if (load_batch(s, train, epoch, order + i0, b) != 0) {
                st = EVAL_SEMISUP_ERR_SOURCE;
                break;
            }
            for (int64_t i = 0; i < b; i++)
                if (s->y[i] < 0 || s->y[i] >= C) st = EVAL_SEMISUP_ERR_LABEL;
            if (st != EVAL_SEMISUP_OK) break;
            float loss = eval_semisup_step(s, s->input, s->y, b, lr_trunk, lr_head);
            sum += loss;
            nb++;
            if (on_step) on_step(step_ctx, epoch, step, loss, lr_trunk, lr_head);
            step++;
        }
        if (st != EVAL_SEMISUP_OK) break;
        struct eval_acc acc;
        double vloss;
        st = eval_semisup_evaluate(s, val, epoch, &acc, &vloss);
        if (st != EVAL_SEMISUP_OK) break;
        eval_linear_result_epoch(&r, epoch, &acc, vloss, sum, nb);
        LOG_INFO("semisup epoch %d: lr %.5g / %.5g, train loss %.4f, val loss %.4f, top1 %.2f "
                 "top5 %.2f (best %.2f)", epoch, lr_trunk, lr_head, r.last_train_loss, vloss,
                 r.last_top1, r.last_top5, r.best_top1);
    }
    free(order);
    r.steps = step;
    if (st == EVAL_SEMISUP_OK) *res = r;
    return st;
}
