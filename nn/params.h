/* Named slices of one flat buffer.
 *
 * All parameters of a model live in one float buffer (likewise gradients,
 * momentum), so that the all-reduce and the optimizer each touch a single
 * allocation (llm.c).  The table maps each reference state-dict name
 * ("layer1.0.conv1.weight") to its shape and its offset in that buffer.
 * Buffers that are not trained (BatchNorm running statistics,
 * num_batches_tracked) live in a second table of the same kind. */
#ifndef SWAV_NN_PARAMS_H
#define SWAV_NN_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#define NN_PARAM_NAME_MAX 96
#define NN_PARAM_MAX_DIMS 4

enum nn_param_flag {
    NN_PARAM_PROTOTYPES = 1u << 0, /* prototypes.weight: frozen for freeze_prototypes_niters */
    NN_PARAM_INT64 = 1u << 1,      /* stored as int64 in state dicts (num_batches_tracked) */
};

struct nn_param {
    char name[NN_PARAM_NAME_MAX];
    int ndim;
    int64_t shape[NN_PARAM_MAX_DIMS];
    size_t offset; /* in elements of the flat buffer */
    size_t numel;
    unsigned flags;
};

struct nn_param_table {
    struct nn_param *p;
    int n, cap;
    size_t total; /* elements, sum of numel */
};

void nn_param_table_init(struct nn_param_table *t);
void nn_param_table_free(struct nn_param_table *t);
/* Appends a named tensor; returns its offset.  shape has ndim entries. */
size_t nn_param_table_add(struct nn_param_table *t, const char *name, int ndim,
                          const int64_t *shape, unsigned flags);
/* Index of name, or -1.  A leading "module." (DDP) is ignored on lookup. */
int nn_param_table_find(const struct nn_param_table *t, const char *name);

#endif
