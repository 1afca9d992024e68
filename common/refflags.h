/* The reference's command-line flags, as flag tables (common/flags.h) over
 * config structs: every flag of main_swav.py, eval_linear.py and
 * eval_semisup.py with the reference's name, type and default, so that the
 * reference's scripts translate line by line.  Ranges are ours (the
 * reference checks none): they refuse values the reference would crash on or
 * silently misuse (epsilon <= 0, zero Sinkhorn iterations, a checkpoint
 * frequency of 0, list lengths that disagree).
 *
 * Types follow the reference: argparse int -> int64_t, float -> double,
 * str -> const char *, bool_flag -> bool, nargs="+" -> a list.  `--sync_bn`
 * stays a string ("pytorch" by default; the reference also knows "apex" and
 * treats anything else as no SyncBN) and `--use_fp16` a bool_flag.
 *
 * A role adds its own flags in a second struct swav_flag_set next to these
 * (swav_flags_parse takes several sets). */
#ifndef SWAV_COMMON_REFFLAGS_H
#define SWAV_COMMON_REFFLAGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flags.h"

/* main_swav.py */
struct swav_main_args {
    /* data */
    const char *data_path;
    struct swav_int_list nmb_crops;         /* [2] */
    struct swav_int_list size_crops;        /* [224] */
    struct swav_float_list min_scale_crops; /* [0.14] */
    struct swav_float_list max_scale_crops; /* [1] */
    /* swav */
    struct swav_int_list crops_for_assign;  /* [0, 1] */
    double temperature;
    double epsilon;
    int64_t sinkhorn_iterations;
    int64_t feat_dim;
    int64_t nmb_prototypes;
    int64_t queue_length;
    int64_t epoch_queue_starts;
    /* optim */
    int64_t epochs;
    int64_t batch_size;
    double base_lr;
    double final_lr;
    int64_t freeze_prototypes_niters;
    double wd;
    int64_t warmup_epochs;
    double start_warmup;
    /* dist */
    const char *dist_url;
    int64_t world_size;
    int64_t rank;
    int64_t local_rank;
    /* other */
    const char *arch;
    int64_t hidden_mlp;
    int64_t workers;
    int64_t checkpoint_freq;
    bool use_fp16;
    const char *sync_bn;
    int64_t syncbn_process_group_size;
    const char *dump_path;
    int64_t seed;
};

/* eval_linear.py */
struct swav_eval_linear_args {
    const char *dump_path;
    int64_t seed;
    const char *data_path;
    int64_t workers;
    const char *arch;
    const char *pretrained;
    bool global_pooling;
    bool use_bn;
    int64_t epochs;
    int64_t batch_size;
    double lr;
    double wd;
    bool nesterov;
    const char *scheduler_type; /* "step" | "cosine" */
    struct swav_int_list decay_epochs; /* [60, 80] */
    double gamma;
    double final_lr;
    const char *dist_url;
    int64_t world_size;
    int64_t rank;
    int64_t local_rank;
};

/* eval_semisup.py */
struct swav_eval_semisup_args {
    const char *labels_perc; /* "1" | "10" */
    const char *dump_path;
    int64_t seed;
    const char *data_path;
    int64_t workers;
    const char *arch;
    const char *pretrained;
    int64_t epochs;
    int64_t batch_size;
    double lr;
    double lr_last_layer;
    struct swav_int_list decay_epochs; /* [12, 16] */
    double gamma;
    const char *dist_url;
    int64_t world_size;
    int64_t rank;
    int64_t local_rank;
};

extern const struct swav_flag swav_main_flags[];
extern const size_t swav_main_nflags;
extern const struct swav_flag swav_eval_linear_flags[];
extern const size_t swav_eval_linear_nflags;
extern const struct swav_flag swav_eval_semisup_flags[];
extern const size_t swav_eval_semisup_nflags;

/* A set over the given struct, for swav_flags_parse. */
struct swav_flag_set swav_main_flag_set(struct swav_main_args *a);
struct swav_flag_set swav_eval_linear_flag_set(struct swav_eval_linear_args *a);
struct swav_flag_set swav_eval_semisup_flag_set(struct swav_eval_semisup_args *a);

/* Checks between flags, after parsing (0, or -1 with a message naming the
 * flag): nmb_crops, size_crops, min_scale_crops and max_scale_crops have the
 * same length; min_scale <= max_scale per group; every crops_for_assign
 * entry is a crop id < sum(nmb_crops); rank < world_size when world_size is
 * set (>= 1). */
int swav_main_args_check(const struct swav_main_args *a, char *err, size_t errlen);
int swav_eval_linear_args_check(const struct swav_eval_linear_args *a, char *err, size_t errlen);
int swav_eval_semisup_args_check(const struct swav_eval_semisup_args *a, char *err,
                                 size_t errlen);

#endif
