/* Weighted k-nearest-neighbour probe on frozen features (Wu et al. 2018,
 * InstDisc; DINO's eval_knn.py): features are L2-normalized, each
 * validation sample takes its k most cosine-similar training samples, each
 * neighbour votes for its label with weight exp(sim / T), and the class
 * scores are the summed votes.  Top-1 / top-5 over those scores.
 *
 * The similarities come from cblas_sgemm over chunks of validation rows
 * (a chunk's [rows, n_train] block is bounded in memory), followed by a
 * partial top-k selection per row.  Optional worker threads each take
 * chunks with their own buffers (all allocated before the work starts). */
#ifndef SWAV_EVALUATOR_KNN_H
#define SWAV_EVALUATOR_KNN_H

#include <stdint.h>

#include "metrics.h"

#define EVAL_KNN_MAX_K 1024

struct eval_knn_config {
    int k;              /* neighbours, 1..EVAL_KNN_MAX_K (default 20) */
    double temperature; /* T in exp(sim / T) (default 0.07) */
    int threads;        /* worker threads; <= 1: the calling thread only */
    int64_t chunk_rows; /* validation rows per GEMM; <= 0: from a 64 MiB budget */
};

void eval_knn_config_default(struct eval_knn_config *cfg);

enum eval_knn_status {
    EVAL_KNN_OK = 0,
    EVAL_KNN_ERR_ARGS,  /* k, temperature, sizes or class count out of range */
    EVAL_KNN_ERR_LABEL, /* a label outside [0, n_classes) */
};
const char *eval_knn_status_str(enum eval_knn_status st);

/* train: (n_train, dim) row-major, train_labels: (n_train); val likewise.
 * Inputs are not modified (normalized copies are made).  A zero feature row
 * stays zero (similarity 0 to everything).  *acc is written on success. */
enum eval_knn_status eval_knn_run(const float *train, const int32_t *train_labels,
                                  int64_t n_train, const float *val,
                                  const int32_t *val_labels, int64_t n_val, int64_t dim,
                                  int n_classes, const struct eval_knn_config *cfg,
                                  struct eval_acc *acc);

/* Rows of x (n, dim) scaled to unit L2 norm in place (zero rows left zero). */
void eval_l2_normalize_rows(float *x, int64_t n, int64_t dim);

#endif
