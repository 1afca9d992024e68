/* Weighted cosine kNN (see knn.h).  One pass over the validation set in
 * chunks: S = V_chunk · T^T with cblas_sgemm, then per row a bounded
 * insertion top-k (k is small, so a sorted array with an early threshold
 * test beats a heap), then the exp(sim/T) votes. */
#include "knn.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "common/check.h"

void eval_knn_config_default(struct eval_knn_config *cfg)
{
    cfg->k = 20;
    cfg->temperature = 0.07;
    cfg->threads = 1;
    cfg->chunk_rows = 0;
}

const char *eval_knn_status_str(enum eval_knn_status st)
{
    switch (st) {
    case EVAL_KNN_OK: return "ok";
    case EVAL_KNN_ERR_ARGS: return "k, temperature, sizes or class count out of range";
    case EVAL_KNN_ERR_LABEL: return "a label outside [0, n_classes)";
    }
    return "unknown knn status";
}

void eval_l2_normalize_rows(float *x, int64_t n, int64_t dim)
{
    for (int64_t i = 0; i < n; i++) {
        float *r = x + i * dim;
        double ss = 0.0;
        for (int64_t j = 0; j < dim; j++)
            ss += (double)r[j] * r[j];
        /* F.normalize: x / max(||x||, eps) */
        double nrm = sqrt(ss);
        float inv = (float)(1.0 / (nrm > 1e-12 ? nrm : 1e-12));
        for (int64_t j = 0; j < dim; j++)
            r[j] *= inv;
    }
}

struct knn_shared {
    const float *train; /* normalized copy */
    const int32_t *train_labels;
    int64_t n_train;
    const float *val;
    const int32_t *val_labels;
    int64_t n_val, dim, chunk_rows;
    int n_classes, k;
    float inv_t;
    atomic_llong next_chunk;
};

struct knn_worker {
    struct knn_shared *sh;
    pthread_t tid;
    float *vbuf;   /* (chunk_rows, dim) normalized validation rows */
    float *sim;    /* (chunk_rows, n_train) */
    float *top_s;  /* (k) */
    int32_t *top_i;
    float *votes;  /* (n_classes) */
    struct eval_acc acc;
};

static void knn_row(struct knn_worker *w, const float *srow, int32_t label)
{
    struct knn_shared *sh = w->sh;
    int k = sh->k, have = 0;
    float *ts = w->top_s;
    int32_t *ti = w->top_i;
    for (int64_t j = 0; j < sh->n_train; j++) {
        float s = srow[j];
        if (have == k && s <= ts[k - 1])
            continue;
        int pos = have < k ? have++ : k - 1;
        while (pos > 0 && ts[pos - 1] < s) {
            ts[pos] = ts[pos - 1];
            ti[pos] = ti[pos - 1];
            pos--;
        }
        ts[pos] = s;
        ti[pos] = (int32_t)j;
    }
    memset(w->votes, 0, sizeof(float) * (size_t)sh->n_classes);
    for (int i = 0; i < have; i++)
        w->votes[sh->train_labels[ti[i]]] += expf(ts[i] * sh->inv_t);
    eval_acc_add(&w->acc, eval_label_rank(w->votes, sh->n_classes, label));
}

static void *knn_work(void *arg)
{
    struct knn_worker *w = arg;
    struct knn_shared *sh = w->sh;
    int64_t nchunks = (sh->n_val + sh->chunk_rows - 1) / sh->chunk_rows;
    for (;;) {
        int64_t c = atomic_fetch_add(&sh->next_chunk, 1);
        if (c >= nchunks)
            break;
        int64_t r0 = c * sh->chunk_rows;
        int64_t rows = sh->n_val - r0 < sh->chunk_rows ? sh->n_val - r0 : sh->chunk_rows;
        memcpy(w->vbuf, sh->val + r0 * sh->dim, sizeof(float) * (size_t)(rows * sh->dim));
        eval_l2_normalize_rows(w->vbuf, rows, sh->dim);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)sh->n_train,
                    (int)sh->dim, 1.0f, w->vbuf, (int)sh->dim, sh->train, (int)sh->dim, 0.0f,
                    w->sim, (int)sh->n_train);
        for (int64_t r = 0; r < rows; r++)
            knn_row(w, w->sim + r * sh->n_train, sh->val_labels[r0 + r]);
    }
    return NULL;
}

enum eval_knn_status eval_knn_run(const float *train, const int32_t *train_labels,
                                  int64_t n_train, const float *val,
                                  const int32_t *val_labels, int64_t n_val, int64_t dim,
                                  int n_classes, const struct eval_knn_config *cfg,
                                  struct eval_acc *acc)
{
    if (cfg->k < 1 || cfg->k > EVAL_KNN_MAX_K || !(cfg->temperature > 0.0) || n_train < 1 ||
        n_val < 1 || dim < 1 || n_classes < 1 || n_train > INT32_MAX || dim > INT32_MAX)
        return EVAL_KNN_ERR_ARGS;
    for (int64_t i = 0; i < n_train; i++)
        if (train_labels[i] < 0 || train_labels[i] >= n_classes)
            return EVAL_KNN_ERR_LABEL;
    for (int64_t i = 0; i < n_val; i++)
        if (val_labels[i] < 0 || val_labels[i] >= n_classes)
            return EVAL_KNN_ERR_LABEL;

    struct knn_shared sh = {
        .train_labels = train_labels, .n_train = n_train, .val = val,
        .val_labels = val_labels, .n_val = n_val, .dim = dim, .n_classes = n_classes,
        .k = cfg->k < n_train ? cfg->k : (int)n_train,
        .inv_t = (float)(1.0 / cfg->temperature),
    };
    atomic_init(&sh.next_chunk, 0);
    int64_t rows = cfg->chunk_rows;
    if (rows <= 0) {
        rows = ((int64_t)16 << 20) / n_train; /* 64 MiB of similarities */
        if (rows < 1)
            rows = 1;
        if (rows > 1024)
            rows = 1024;
    }
    if (rows > n_val)
        rows = n_val;
    sh.chunk_rows = rows;

    float *tn = swav_xmalloc(sizeof(float) * (size_t)(n_train * dim));
    memcpy(tn, train, sizeof(float) * (size_t)(n_train * dim));
    eval_l2_normalize_rows(tn, n_train, dim);
    sh.train = tn;

    int nw = cfg->threads > 1 ? cfg->threads : 1;
    int64_t nchunks = (n_val + rows - 1) / rows;
    if (nw > nchunks)
        nw = (int)nchunks;
    struct knn_worker *ws = swav_xcalloc((size_t)nw, sizeof(*ws));
    for (int i = 0; i < nw; i++) {
        ws[i].sh = &sh;
        ws[i].vbuf = swav_xmalloc(sizeof(float) * (size_t)(rows * dim));
        ws[i].sim = swav_xmalloc(sizeof(float) * (size_t)(rows * n_train));
        ws[i].top_s = swav_xmalloc(sizeof(float) * (size_t)sh.k);
        ws[i].top_i = swav_xmalloc(sizeof(int32_t) * (size_t)sh.k);
        ws[i].votes = swav_xmalloc(sizeof(float) * (size_t)n_classes);
    }
    if (nw == 1) {
        knn_work(&ws[0]);
    } else {
        for (int i = 0; i < nw; i++)
            PTHREAD_CHECK(pthread_create(&ws[i].tid, NULL, knn_work, &ws[i]));
        for (int i = 0; i < nw; i++)
            PTHREAD_CHECK(pthread_join(ws[i].tid, NULL));
    }
    struct eval_acc total = {0};
    for (int i = 0; i < nw; i++) {
        total.n += ws[i].acc.n;
        total.correct1 += ws[i].acc.correct1;
        total.correct5 += ws[i].acc.correct5;
        free(ws[i].vbuf);
        free(ws[i].sim);
        free(ws[i].top_s);
        free(ws[i].top_i);
        free(ws[i].votes);
    }
    free(ws);
    free(tn);
    SWAV_ASSERT(total.n == n_val);
    *acc = total;
    return EVAL_KNN_OK;
}
