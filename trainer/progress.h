/* Training progress: one JSON line per step in dump_path/train.jsonl, a
 * progress line on stderr every few seconds, and the two warnings the
 * reference's users wish they had had early:
 *  - collapse: the loss stays at ln(K) (every sample gets the uniform code);
 *  - queue trouble: the loss goes up after the queue starts and stays up.
 * Each warning names the reference's remedies (its README's FAQ). */
#ifndef SWAV_TRAINER_PROGRESS_H
#define SWAV_TRAINER_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct trainer_step_record {
    uint32_t epoch;
    uint64_t step;        /* global iteration */
    uint32_t step_in_epoch, steps_per_epoch;
    double loss, lr;
    double images_per_s;  /* this rank x world: the run's rate */
    double wait_data_s;   /* this step: waiting for loader batches */
    double wait_codes_s;  /* waiting for the assigner's codes */
    double compute_s;     /* forward + backward + all-reduce + step */
    bool queue_used;
    double entropy;       /* assignment statistics from the assigner */
    uint32_t prototypes_used;
    double loss_scale;    /* fp16's dynamic loss scale this step used; 0: none (bf16, fp32) */
    bool skipped;         /* fp16: the gradients overflowed, no optimizer step */
};

struct trainer_progress {
    int fd;               /* train.jsonl, O_APPEND; -1: none */
    double ln_k;
    uint64_t grace_steps; /* no collapse verdict before this step */
    double loss_ema;
    uint64_t steps_seen;
    uint64_t near_lnk_run; /* consecutive steps with the EMA at ln K */
    bool collapse_warned;
    uint32_t collapse_warnings;
    /* queue watch */
    bool queue_seen;
    double loss_before_queue; /* EMA when the queue started */
    uint64_t queue_start_step;
    bool queue_warned;
    uint32_t queue_warnings;
    /* stderr line */
    double last_print_s;
    double print_every_s;
};

/* path may be NULL (no file).  Returns 0, or -1 with err. */
int trainer_progress_open(struct trainer_progress *p, const char *path, uint32_t nmb_prototypes,
                          uint64_t grace_steps, char *err, size_t errlen);
void trainer_progress_close(struct trainer_progress *p);
/* Records one step: the JSON line, the warnings, the stderr line when due. */
void trainer_progress_step(struct trainer_progress *p, const struct trainer_step_record *r);

#endif
