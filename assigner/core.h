/* The assigner's state machine, without any transport: configuration, the
 * global queue, one step (all ranks' embeddings in, every rank's codes out)
 * with the reference's queue semantics, statistics and the collapse monitor.
 * swav-assigner wraps it in ZeroMQ; the parity tests drive it directly.
 *
 * Reference semantics (main_swav.py, train and main), emulating W ranks:
 *  - queue_length -= queue_length % (batch_size * world_size); a queue of
 *    queue_length / world rows per rank and assign crop is created (zeros) at
 *    the first step of an epoch >= epoch_queue_starts, if queue_length > 0;
 *  - crop i uses the queue once a step of this epoch used it, or once its last
 *    row is non-zero (use_the_queue resets at each new epoch, as train()
 *    starts with use_the_queue = False);
 *  - scores of [queue ; batch] with the current prototypes, Sinkhorn over all
 *    ranks' rows (B counts queue rows), each rank keeps its batch rows;
 *  - then the FIFO push of this step's rows.
 * A failed step changes nothing. */
#ifndef SWAV_ASSIGNER_CORE_H
#define SWAV_ASSIGNER_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue.h"
#include "sinkhorn.h"

struct assigner_config {
    int world_size;
    int batch_size;          /* per rank, the reference's --batch_size */
    int nmb_prototypes;      /* K */
    int feat_dim;            /* D */
    int ncrops_assign;       /* len(crops_for_assign) */
    float epsilon;
    int sinkhorn_iterations;
    int queue_length;        /* as given; rounded down inside */
    int epoch_queue_starts;
    /* collapse monitor */
    double collapse_entropy_frac; /* warn when mean entropy > frac * ln K */
    int collapse_min_used;        /* warn when fewer prototypes get an argmax (0: auto) */
};

struct assigner_stats {
    int64_t step;
    double entropy_mean;     /* mean per-row entropy over all ranks' batch rows and
                                crops, nats (estimated from <= 512 evenly spaced
                                rows per crop) */
    double entropy_uniform;  /* ln K */
    int prototypes_used;     /* distinct argmax over the step's rows */
    double ms_scores;        /* scores and exp (fused) */
    double ms_sinkhorn;      /* the iterations and writing the codes */
    double ms_copy;          /* GPU backend: copies to and from the device (0 on the CPU) */
    bool queue_used;
    bool collapse_uniform;   /* entropy near ln K */
    bool collapse_few;       /* prototypes used collapsed */
    uint64_t collapse_warnings; /* steps flagged so far */
};

typedef struct assigner_core assigner_core_t;

/* Returns NULL with a message when the configuration is invalid.  The
 * backend is borrowed. */
assigner_core_t *assigner_core_new(const struct assigner_config *cfg,
                                   struct sinkhorn_backend *backend, char *err, size_t errlen);
void assigner_core_destroy(assigner_core_t **c);

const struct assigner_config *assigner_core_config(const assigner_core_t *c);
/* queue_length after rounding (0: no queue). */
int assigner_core_queue_length(const assigner_core_t *c);
struct assigner_queue *assigner_core_queue(assigner_core_t *c);

/* Where rank r's embeddings of assign crop i (batch_size, feat_dim) go
 * before a step; they are copied there by the caller. */
float *assigner_core_embed_slot(assigner_core_t *c, int crop, int rank);

/* One step.  The embed slots are filled; protos (K, D).  Checks every value
 * is finite first.  On success codes are at assigner_core_codes.  Returns 0,
 * or -1 with a message (state unchanged). */
int assigner_core_step(assigner_core_t *c, int64_t epoch, int64_t step, const float *protos,
                       struct assigner_stats *st, char *err, size_t errlen);
/* Rank r's codes of assign crop i after a step: (batch_size, K). */
const float *assigner_core_codes(const assigner_core_t *c, int crop, int rank);
/* Rank r's codes of all assign crops: (ncrops_assign, batch_size, K), the
 * layout of the codes message. */
const float *assigner_core_rank_codes(const assigner_core_t *c, int rank);

/* Queue persistence (format in queue.h).  load: 0, -ENOENT, or -errno/-EINVAL. */
int assigner_core_save(assigner_core_t *c, const char *path, char *err, size_t errlen);
int assigner_core_load(assigner_core_t *c, const char *path, char *err, size_t errlen);

/* Forget the queue (a resume from a checkpoint that had none). */
void assigner_core_reset_queue(assigner_core_t *c);
/* Rows of the global queue holding an embedding (0 .. queue_length). */
int64_t assigner_core_queue_fill(const assigner_core_t *c);

/* Last completed step and epoch (-1 before the first). */
int64_t assigner_core_last_step(const assigner_core_t *c);
int64_t assigner_core_last_epoch(const assigner_core_t *c);

#endif
