/* Semi-supervised evaluation (eval_semisup.py): fine-tune the whole network
 * on 1% or 10% of the training labels.  What lives here now is what does not
 * need the backbone: the labeled subset, the optimizer schedule and the
 * defaults.  The fine-tuning loop itself plugs in with the trainer's model.
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

#endif
