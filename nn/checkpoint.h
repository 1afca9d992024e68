/* Checkpoint files: a model's state in one safetensors file (DESIGN.md
 * "Checkpoints"; format in docs/checkpoints.md).
 *
 *   <name>                            every entry of the parameter table, F32
 *   <name>                            every entry of the buffer table (BatchNorm
 *                                     running stats F32, num_batches_tracked I64)
 *   optimizer.<name>.momentum_buffer  SGD momentum of each parameter (optional)
 *   __metadata__: format "pt", swav_format_version "1", epoch, step, seed,
 *                 config (run flags as JSON), rng (opaque), plus caller pairs
 *
 * Names are the reference's state-dict names, so torch can load the weights
 * (load_state_dict after reading the file) and the reference's eval scripts'
 * semantics apply.  Loading accepts names with the DDP "module." prefix (the
 * published SwAV weights carry it), converts F16/BF16 to float, and either
 * insists on an exact match (strict: any missing, unexpected or mis-shaped
 * name is an error naming it, nothing is written) or behaves like the
 * reference's eval scripts (load_state_dict(strict=False) after dropping
 * mis-shaped entries): unexpected names and mis-shaped tensors are skipped
 * and missing ones keep their values, each with a warning naming it. */
#ifndef SWAV_NN_CHECKPOINT_H
#define SWAV_NN_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn/backend.h"
#include "nn/params.h"

#define NN_CHECKPOINT_FORMAT_VERSION 1

enum nn_checkpoint_status {
    NN_CHECKPOINT_OK = 0,
    NN_CHECKPOINT_ERR_FILE,       /* cannot read, or not a valid safetensors file */
    NN_CHECKPOINT_ERR_MISSING,    /* strict: a table entry absent from the file */
    NN_CHECKPOINT_ERR_UNEXPECTED, /* strict: a file tensor the tables do not have */
    NN_CHECKPOINT_ERR_SHAPE,      /* strict: a tensor of another shape */
    NN_CHECKPOINT_ERR_META,       /* metadata present but malformed (epoch not a number, newer format) */
    NN_CHECKPOINT_ERR_WRITE,      /* save: the file could not be written (full disk, permissions) */
};

const char *nn_checkpoint_status_str(enum nn_checkpoint_status st);

struct nn_checkpoint_meta_pair {
    const char *key, *value;
};

/* What is saved besides the tensors. */
struct nn_checkpoint_meta {
    int64_t epoch;           /* the epoch to resume at (epochs done) */
    int64_t step;            /* global iteration */
    uint64_t seed;           /* run seed (the RNG is counter-based: seed + position is its state) */
    const char *config_json; /* run configuration as JSON text, or NULL */
    const char *rng_state;   /* any other RNG state, as text, or NULL */
    const struct nn_checkpoint_meta_pair *extra; /* more key/value pairs, or NULL */
    int nextra;
};

/* Save params (required), buffers (may be NULL) and momentum (laid out like
 * params, may be NULL) to path atomically.  A buffer entry flagged
 * NN_PARAM_INT64 is stored as I64 (its float value, rounded). */
enum nn_checkpoint_status nn_checkpoint_save(const char *path,
                                             const struct nn_param_table *params,
                                             const float *param_data,
                                             const struct nn_param_table *buffers,
                                             const float *buffer_data, const float *momentum,
                                             const struct nn_checkpoint_meta *meta, char *err,
                                             size_t errlen);

struct nn_checkpoint_load_opts {
    bool strict;       /* true: exact match of names and shapes, as load_state_dict(strict=True) */
    bool quiet;        /* non-strict: no warning lines for skipped/missing names */
};

/* What was read besides the tensors.  Numbers absent from the file are -1 (seed
 * 0); strings are malloc'd or NULL: nn_checkpoint_info_free. */
struct nn_checkpoint_info {
    int format_version; /* 0: not written by us (a converted torch file) */
    int64_t epoch;
    int64_t step;
    uint64_t seed;
    char *config_json;
    char *rng_state;
    char *loss_scale;   /* the caller pair "loss_scale" (fp16's dynamic loss scale,
                         * nn/loss_scale.h's text), or NULL: absent (older files, bf16/fp32) */
    bool has_momentum;  /* the file had optimizer.* entries and they were loaded */
    int nloaded;        /* tensors copied into the tables */
    int nmissing;       /* non-strict: table entries left as they were */
    int nunexpected;    /* non-strict: file tensors ignored */
    int nmismatched;    /* non-strict: file tensors of another shape, ignored */
};

void nn_checkpoint_info_free(struct nn_checkpoint_info *info);

/* The metadata of a checkpoint (format version, epoch, step, seed, config,
 * rng; has_momentum: the file holds optimizer.* tensors) from its header
 * alone, the header validated against the file's size; the tensor counts of
 * info stay 0.  For scanning a folder of checkpoints without reading them. */
enum nn_checkpoint_status nn_checkpoint_peek(const char *path, struct nn_checkpoint_info *info,
                                             char *err, size_t errlen);

/* Load path into the tables.  buffers/buffer_data may be NULL (then buffer
 * names in the file count as unexpected); momentum may be NULL (then
 * optimizer.* entries are ignored), else strict mode requires them.  In
 * strict mode nothing is written unless everything matches.  info may be
 * NULL. */
enum nn_checkpoint_status nn_checkpoint_load(const char *path,
                                             const struct nn_param_table *params,
                                             float *param_data,
                                             const struct nn_param_table *buffers,
                                             float *buffer_data, float *momentum,
                                             const struct nn_checkpoint_load_opts *opts,
                                             struct nn_checkpoint_info *info, char *err,
                                             size_t errlen);

/* The same two on a backend's memory (nn_backend_alloc: a model's
 * param_data and buffer_data, a backend optimizer's momentum), which the
 * host may not touch (the CUDA backend's is device memory): staged through
 * host copies with nn_backend_copy.  A load copies every table back, so
 * entries the file does not fill keep their values. */
enum nn_checkpoint_status nn_checkpoint_save_backend(nn_backend_t *be, const char *path,
                                                     const struct nn_param_table *params,
                                                     const float *param_data,
                                                     const struct nn_param_table *buffers,
                                                     const float *buffer_data,
                                                     const float *momentum,
                                                     const struct nn_checkpoint_meta *meta,
                                                     char *err, size_t errlen);
enum nn_checkpoint_status nn_checkpoint_load_backend(nn_backend_t *be, const char *path,
                                                     const struct nn_param_table *params,
                                                     float *param_data,
                                                     const struct nn_param_table *buffers,
                                                     float *buffer_data, float *momentum,
                                                     const struct nn_checkpoint_load_opts *opts,
                                                     struct nn_checkpoint_info *info, char *err,
                                                     size_t errlen);

#endif
