/* The global queue: the reference keeps one queue per rank, (ncrops,
 * queue_length / world, feat_dim), newest rows first; this holds all of
 * them, rank after rank, as (ncrops, world, rows_per_rank, feat_dim).  Each
 * crop's block is the front of a larger buffer whose tail receives the
 * step's batch rows of all ranks, so [queue ; batch] -- the rows Sinkhorn
 * assigns -- is one contiguous matrix and needs no copy.
 *
 * File format (little-endian), written atomically:
 *   char magic[8] = "SWAVQUE1"; uint32 version = 1; uint32 ncrops, world,
 *   rows_per_rank, feat_dim; uint32 present (0: no queue yet); int64 epoch,
 *   step; then ncrops*world*rows_per_rank*feat_dim float32 when present. */
#ifndef SWAV_ASSIGNER_QUEUE_H
#define SWAV_ASSIGNER_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct assigner_queue {
    int ncrops, world, rows_per_rank, d, batch; /* batch: rows per rank per step */
    bool present;       /* created (reference: queue is not None) */
    size_t stride;      /* floats between crop blocks of buf */
    float *buf;         /* per crop: [queue (world*rows_per_rank, d) ; batch (world*batch, d)] */
};

/* rows_per_rank may be 0 (no queue). */
void assigner_queue_init(struct assigner_queue *q, int ncrops, int world, int rows_per_rank,
                         int d, int batch);
void assigner_queue_free(struct assigner_queue *q);

/* Rows of the queue part for all ranks. */
static inline int assigner_queue_rows(const struct assigner_queue *q)
{
    return q->world * q->rows_per_rank;
}
/* The start of crop i's [queue ; batch] matrix. */
static inline float *assigner_queue_block(const struct assigner_queue *q, int crop)
{
    return q->buf + (size_t)crop * q->stride;
}
/* Where rank r's batch rows of crop i go. */
static inline float *assigner_queue_batch(const struct assigner_queue *q, int crop, int rank)
{
    return assigner_queue_block(q, crop) +
           ((size_t)assigner_queue_rows(q) + (size_t)rank * (size_t)q->batch) * (size_t)q->d;
}

/* Reference: torch.zeros(...) at epoch_queue_starts. */
void assigner_queue_create(struct assigner_queue *q);
/* Reference: not torch.all(queue[i, -1, :] == 0), checked on every rank's
 * own queue (they fill in lockstep; all must be non-zero). */
bool assigner_queue_last_row_nonzero(const struct assigner_queue *q, int crop);
/* Reference FIFO for crop i: queue[i, bs:] = queue[i, :-bs]; queue[i, :bs] =
 * this step's rows, on every rank's part, from the batch tail. */
void assigner_queue_push(struct assigner_queue *q, int crop);

int assigner_queue_save(const struct assigner_queue *q, const char *path, int64_t epoch,
                        int64_t step, char *err, size_t errlen);
/* Loads a file written by assigner_queue_save into q (whose geometry must
 * match).  Returns 0, -ENOENT when there is no file, or another negative
 * value with a message naming the path and the field. */
int assigner_queue_load(struct assigner_queue *q, const char *path, int64_t *epoch,
                        int64_t *step, char *err, size_t errlen);

#endif
