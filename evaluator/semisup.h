/* Semi-supervised evaluation (eval_semisup.py): fine-tune the whole network
 * on 1% or 10% of the training labels.  Here: the labeled subset, the
 * optimizer schedule and the defaults, and the fine-tuning loop on an
 * nn_model (nn/resnet.h) whose head is one Linear(feat, n_classes)
 * ("projection_head", resnet50(output_dim=n_classes) of the reference),
 * trained in train mode (batch statistics) with nn/optim.h's SGD in two
 * parameter groups: the names containing "head" (lr_last_layer) and the
 * trunk (lr), momentum 0.9, weight decay (0 in the reference), MultiStepLR
 * per epoch; cross-entropy; validation in eval mode after every epoch, the
 * best top-1 kept with the top-5 of its epoch.  Images come from a source
 * (the live evaluator's: RandomResizedCrop + flip crops from swav-loader for
 * training, Resize + CenterCrop for validation).
 *
 * Subsets use SimCLR's list format (google-research/simclr
 * imagenet_subsets/{1,10}percent.txt): one file name per line, no folder
 * ("n01440764_10026.JPEG"), matched against the base names of the data set's
 * files.  Without a list, a stratified subset is drawn: in every class
 * round(fraction * n_class) files (at least 1), chosen by a shuffle drawn
 * from (seed, class) with common/rng.h, so the same seed picks the same
 * files whatever the machine. */
#ifndef SWAV_EVALUATOR_SEMISUP_H
#define SWAV_EVALUATOR_SEMISUP_H

#include <stddef.h>
#include <stdint.h>

#include "linear.h"

struct eval_semisup_config {
    int labels_perc;      /* 1 or 10 */
    int epochs;           /* 20 */
    int batch_size;       /* 32 */
    double lr;            /* 0.01: trunk */
    double lr_last_layer; /* 0.2: head ("head" in the parameter name) */
    double momentum;      /* 0.9 */
    double wd;            /* 0 */
    int n_decay;          /* 2 */
    int decay_epochs[EVAL_MAX_MILESTONES]; /* 12 16 */
    double gamma;         /* 0.2 */
    uint64_t seed;        /* 31 */
    const char *subset_file; /* SimCLR list; NULL or "": draw a stratified subset */
};

void eval_semisup_config_default(struct eval_semisup_config *cfg);
/* MultiStepLR per parameter group, stepped per epoch. */
void eval_semisup_lr(const struct eval_semisup_config *cfg, int epoch, double *lr_trunk,
                     double *lr_head);

#define EVAL_RNG_SUBSET 0x53554253u /* "SUBS" */
#define EVAL_SUBSET_MAX_LINE 4096

enum eval_subset_status {
    EVAL_SUBSET_OK = 0,
    EVAL_SUBSET_ERR_ARGS,      /* fraction not in (0, 1], no images, bad labels */
    EVAL_SUBSET_ERR_IO,        /* the list file cannot be read or written */
    EVAL_SUBSET_ERR_FORMAT,    /* an empty or over-long line, a line with a '/' */
    EVAL_SUBSET_ERR_UNKNOWN,   /* a listed name matches no file of the data set */
    EVAL_SUBSET_ERR_AMBIGUOUS, /* a listed name matches two files of the data set */
    EVAL_SUBSET_ERR_DUPLICATE, /* a name listed twice */
};
const char *eval_subset_status_str(enum eval_subset_status st);

/* Stratified draw: labels (n) in [0, n_classes); writes a malloc'd, sorted
 * list of image indices to *idx and its length to *n_out. */
enum eval_subset_status eval_subset_stratified(const int32_t *labels, int64_t n, int n_classes,
                                               double fraction, uint64_t seed, uint32_t **idx,
                                               int64_t *n_out);

/* Reads a SimCLR list and matches each line against the base names of
 * paths[0..n) (relative paths as in the data set index, "cls/a.JPEG");
 * blank trailing lines and '\r' are tolerated.  Sorted indices on success;
 * on failure a message naming the file and line in err. */
enum eval_subset_status eval_subset_read(const char *list_path, const char *const *paths,
                                         int64_t n, uint32_t **idx, int64_t *n_out, char *err,
                                         size_t errlen);

/* Writes the base names of paths[idx[i]] one per line (atomically). */
enum eval_subset_status eval_subset_write(const char *list_path, const char *const *paths,
                                          const uint32_t *idx, int64_t n, char *err,
                                          size_t errlen);

/* The subset of a run: read cfg->subset_file when set, else draw the
 * stratified labels_perc% subset from cfg->seed; either way save it as
 * <dump_path>/semisup-<labels_perc>percent.txt (SimCLR format) beside the
 * results.  Sorted indices on success, a message in err otherwise. */
enum eval_subset_status eval_subset_prepare(const struct eval_semisup_config *cfg,
                                            const char *dump_path, const char *const *paths,
                                            const int32_t *labels, int64_t n, int n_classes,
                                            uint32_t **idx, int64_t *n_out, char *err,
                                            size_t errlen);

/* The config as a JSON object (the "config" of its eval.jsonl record, probe
 * "semisup1" / "semisup10"); returns the length as snprintf does. */
int eval_semisup_config_json(const struct eval_semisup_config *cfg, char *buf, size_t len);

/* Base name of a relative path (after the last '/'). */
const char *eval_basename(const char *path);

/* ---- fine-tuning ------------------------------------------------------------ */

/* Images of one pass: either uint8 crops the model's backend normalizes
 * (fill_u8: a loader's batch, as the live evaluator gets them) or
 * normalized float NCHW crops (fill: generated or PyTorch's images), in host
 * memory either way; eval_semisup copies them into the backend's memory. */
struct eval_image_source {
    void *ctx;
    int64_t n; /* examples per pass */
    /* Called before the fills of a pass with every example in the order the
     * fills will ask for them, in batches of `batch` (the last one short),
     * so that a source can fetch ahead.  May be NULL.  0, or nonzero to
     * abort the run (the source has logged why). */
    int (*begin)(void *ctx, int epoch, const uint32_t *order, int64_t n, int64_t batch);
    /* x (b, 3, S, S) and labels y (b) of examples idx[0..b) in `epoch`
     * (used when fill_u8 is NULL). */
    int (*fill)(void *ctx, int epoch, const uint32_t *idx, int64_t b, float *x, int32_t *y);
    /* Or: *crops (b, S, S, 3) uint8 RGB, host memory valid until the next
     * call, normalized as nn_normalize_u8 by the backend
     * (nn_backend_normalize_crops), and labels y (b).  May be NULL. */
    int (*fill_u8)(void *ctx, int epoch, const uint32_t *idx, int64_t b, const uint8_t **crops,
                   int32_t *y);
};

struct nn_model;

/* Memory: the model's input, the logits' gradient and the optimizer's
 * momentum are the model's backend's (the GPU's with --device cuda); the
 * labels, the logits read back and a float source's crops are host memory. */
struct eval_semisup {
    struct nn_model *m;       /* borrowed */
    int64_t n_classes, batch, size;
    struct nn_optim optim;    /* on the model's backend; group 0 trunk, group 1 "head" names */
    float *input;             /* (batch, 3, S, S) backend: the forward's input */
    float *x;                 /* (batch, 3, S, S) host: a float source's crops (allocated
                                 at its first fill) */
    int32_t *y;               /* (batch) host */
    float *logits;            /* (batch, n_classes) host: logits read back, turned into
                                 their gradient by the cross-entropy */
    float *dlogits;           /* (batch, n_classes) backend: that gradient, for the backward */
    uint32_t *perm;           /* (max examples of a pass) */
    int64_t perm_cap;
};

/* Takes a model built with feat_dim = n_classes, hidden_mlp = 0,
 * no_l2norm = 1, no prototypes, one crop group of `size` pixels, batch >=
 * cfg->batch_size; sets up the optimizer (momentum cfg->momentum, weight
 * decay cfg->wd, `threads` workers) and buffers.  0, or -1 with a message. */
int eval_semisup_init(struct eval_semisup *s, struct nn_model *m,
                      const struct eval_semisup_config *cfg, int threads, char *err,
                      size_t errlen);
void eval_semisup_free(struct eval_semisup *s);

/* One step on b <= batch examples x (b, 3, S, S) in the model's backend's
 * memory (s->input, or any nn_backend_alloc'd buffer), labels y in [0, C)
 * in host memory (checked by the caller): zero grads, train-mode forward,
 * the logits copied to the host, mean cross-entropy there (double, as
 * eval_ce_row_backward), its gradient copied back, backward, SGD with
 * lr_trunk / lr_head on the backend.  Returns the loss before the step. */
float eval_semisup_step(struct eval_semisup *s, const float *x, const int32_t *y, int64_t b,
                        double lr_trunk, double lr_head);

/* The fine-tuning network's start (eval_semisup.py loads the pretrained
 * trunk into a fresh network): every parameter and buffer (BN statistics,
 * num_batches_tracked) of src copied by name into dst, with
 * nn_backend_copy on their backend (both models on the same one), ordered
 * with its queued work; the rest of dst (the head) stays as it is.  Every
 * tensor of src must exist in dst with the same size. */
void eval_semisup_copy_backbone(struct nn_model *dst, const struct nn_model *src);

enum eval_semisup_status {
    EVAL_SEMISUP_OK = 0,
    EVAL_SEMISUP_ERR_ARGS,   /* config or sizes out of range */
    EVAL_SEMISUP_ERR_LABEL,  /* a label outside [0, n_classes) */
    EVAL_SEMISUP_ERR_SOURCE, /* a source failed (or was stopped) */
};
const char *eval_semisup_status_str(enum eval_semisup_status st);

/* Eval-mode accuracy and mean loss over a source (in batches of s->batch,
 * in source order); `epoch` is passed to the source. */
enum eval_semisup_status eval_semisup_evaluate(struct eval_semisup *s,
                                               const struct eval_image_source *src, int epoch,
                                               struct eval_acc *acc, double *mean_loss);

typedef void (*eval_semisup_step_fn)(void *ctx, int epoch, int64_t step, float loss,
                                     double lr_trunk, double lr_head);

/* cfg->epochs epochs over `train`, each in the order of
 * eval_linear_epoch_order(cfg->seed, epoch) in batches of cfg->batch_size
 * (the last one short), validation on `val` after each; best top-1 (and
 * its top-5) in res.  on_step may be NULL. */
enum eval_semisup_status eval_semisup_run(struct eval_semisup *s,
                                          const struct eval_semisup_config *cfg,
                                          const struct eval_image_source *train,
                                          const struct eval_image_source *val,
                                          eval_semisup_step_fn on_step, void *step_ctx,
                                          struct eval_linear_result *res);

#endif
