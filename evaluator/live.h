/* The live evaluator: the backbone of a checkpoint, crops from swav-loader
 * processes, features, probes, records.
 *
 *   checkpoint file --(nn/checkpoint.h, non-strict like eval_linear.py)-->
 *   backbone (nn/resnet.h, no head) <--(loader/client.h, EVAL_VAL center
 *   crops of data sets "eval_train" / "eval_val")-- swav-loader
 *   --> (N, D) features + labels --> knn.h / linear.h (fast: cached
 *   center-crop features; full: EVAL_TRAIN RandomResizedCrop + flip crops
 *   through the backbone every epoch) --> results.h (eval.jsonl) +
 *   report.h.
 *
 * Watch mode (eval_live_run without opts.pretrained) scans the run folder
 * (ckpt_scan.h) at start and every rescan_s, listens to the trainer's
 * `checkpoint` announcements (SUB), and evaluates the newest checkpoint that
 * eval.jsonl does not already hold, skipping the ones in between.  The
 * random-init network of the run's architecture is evaluated once per run
 * folder (baseline: true).  A checkpoint is read through one open
 * descriptor (/proc/self/fd/N), so a trainer replacing the file (atomic
 * rename) during the read does not mix two files; no lock is taken, nothing
 * in the folder is written but eval.jsonl and report.html.
 *
 * The architecture comes from the tensors (conv1's width and kernel, block
 * counts of layer3, Bottleneck or not: works for the published SwAV weights
 * converted by scripts/torch-to-safetensors) and the init seed from the
 * config JSON in the metadata ("seed"; 31 without one).
 *
 * Device (opts.device, nn/device.h): the backbone's features and the
 * semi-supervised fine-tuning run on that backend (the GPU's with cuda):
 * the loaders' uint8 crops normalized by the backend into its memory,
 * features and logits read back with nn_backend_copy, checkpoints loaded
 * through host copies (nn_checkpoint_load_backend).  kNN and the linear probe run on the host, on the
 * extracted features (knn.h, linear.h: BLAS on their own buffers).
 *
 * The data set's size is learnt from the loaders (the `datasets` map of
 * their `ready` messages), so the evaluator needs only the tags.  The training subset (eval_train_limit) is N evenly spaced
 * indices, which over ImageFolder order (classes contiguous, in class
 * order) is a stratified subset: each class gets round(limit * n_class / N)
 * images, +-1. */
#ifndef SWAV_EVALUATOR_LIVE_H
#define SWAV_EVALUATOR_LIVE_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "evaluator/knn.h"
#include "evaluator/linear.h"
#include "evaluator/semisup.h"
#include "nn/checkpoint.h"
#include "proto/safetensors.h"

struct eval_arch {
    int depth;      /* 18, 34, 50, 101 */
    int width;      /* conv1 output channels (64 x widen, or any multiple of 8) */
    int small_stem; /* conv1 3x3, no maxpool */
    uint64_t seed;  /* init seed of the run (config "seed"), 31 without one */
    char name[48];  /* "resnet50", "resnet50w2", "resnet18 width 8" */
};

/* Architecture of a checkpoint's backbone from its tensors (names with or
 * without "module.") and seed from its config metadata.  0, or -1 with a
 * message naming what is missing. */
int eval_arch_from_file(const struct safetensors_file *f, struct eval_arch *a, char *err,
                        size_t errlen);

/* Evenly spaced subset of [0, n): limit indices floor((i + 0.5) n / limit),
 * i < limit (all of [0, n) when limit <= 0 or >= n).  Returns the count. */
int64_t eval_subset_even(uint32_t *out, int64_t n, int64_t limit);

struct nn_model;
/* Backbone features, eval mode, of n crops (n, S, S, 3) uint8 RGB in host
 * memory (a loader's batch; S = the model's crop size) into feats (n,
 * m->feat_channels), host memory, in forwards of at most m->batch rows:
 * each batch normalized by the model's backend into `input` ((m->batch, 3,
 * S, S) floats of that backend's memory: nn_backend_alloc), the features
 * copied out with nn_backend_copy (in feats when this returns). */
void eval_backbone_features(struct nn_model *m, float *input, const uint8_t *crops, int64_t n,
                            float *feats);
/* A checkpoint file into the model, as eval_linear.py loads pretrained
 * weights (nn_checkpoint_load, strict = false, quiet: head and prototypes
 * ignored, missing tensors counted in info), after waiting for the
 * backend's queued work (the host writes the model's memory). */
enum nn_checkpoint_status eval_backbone_load(struct nn_model *m, const char *path,
                                             struct nn_checkpoint_info *info, char *err,
                                             size_t errlen);

struct eval_live_opts {
    const char *dump_path;   /* run folder: checkpoints, eval.jsonl, report.html */
    const char *sub;         /* trainer's PUB endpoint; "" none */
    const char *loader_bind; /* ROUTER the loaders connect to */
    /* CURVE (docs/security.md), each NULL or "" for none: the keypair file
     * that makes loader_bind a CURVE server and is this evaluator's client
     * key on sub; the loader public keys let in on loader_bind (a ZAP handler
     * that logs each refusal); the trainer's public key, making sub a CURVE
     * client. */
    const char *curve_secret, *curve_allow, *sub_public;
    const char *run;         /* run id of messages */
    const char *device;      /* backend of the backbone and the fine-tuning (nn/device.h:
                                "cpu", "cuda", "cuda:N"); NULL or "": cpu */
    const char *eval_train, *eval_val; /* data set tags */
    int64_t train_limit, val_limit;    /* <= 0: all */
    int size, resize;
    int threads;
    int batch_size;          /* images per loader order and per forward (the model's batch) */
    bool knn, linear;
    bool linear_full;        /* linear probe in full mode: RandomResizedCrop(size) + flip
                                crops through the frozen backbone, new ones every epoch */
    bool semisup;            /* fine-tuning on labels_perc% of eval_train (expensive: off
                                unless asked for) */
    const char *semisup_data; /* eval_train's folder as the loaders see it: the subset is
                                 then semi_cfg.subset_file or a stratified draw, saved as
                                 <dump_path>/semisup-<p>percent.txt; "": evenly spaced */
    bool once;
    bool baseline;           /* evaluate the random-init network once per run */
    const char *pretrained;  /* standalone: this file only, then exit ("" none) */
    const char *config_path; /* run configuration for the report; "": dump_path/config.json,
                                or without one the config metadata of the latest checkpoint */
    int64_t wait_s;          /* --once / --pretrained: give up on silent loaders after this */
    int64_t rescan_s;        /* watch: folder scan period */
    struct eval_knn_config knn_cfg;
    struct eval_linear_config lin_cfg;
    struct eval_semisup_config semi_cfg;
    const char *flags_json;  /* all flags as JSON, recorded in each result's config */
};

/* Runs watch or standalone mode until done (--once, --pretrained) or *stop.
 * 0: done or stopped; 1: a failure (standalone: the evaluation; --once: an
 * evaluation; always: setup, e.g. the endpoint could not be bound); 2: the
 * device could not be opened (no CUDA in this build, no usable GPU).  A
 * watching process logs a failed evaluation and goes on (that checkpoint is
 * not retried until a restart). */
int eval_live_run(const struct eval_live_opts *o, volatile sig_atomic_t *stop);

#endif
