/* Global queue, FIFO and persistence: see queue.h. */
#include "queue.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/fileio.h"

#define QUEUE_MAGIC "SWAVQUE1"
#define QUEUE_VERSION 1u
#define QUEUE_HEADER_BYTES 48

void assigner_queue_init(struct assigner_queue *q, int ncrops, int world, int rows_per_rank,
                         int d, int batch)
{
    SWAV_ASSERT(ncrops > 0 && world > 0 && rows_per_rank >= 0 && d > 0 && batch > 0);
    memset(q, 0, sizeof *q);
    q->ncrops = ncrops;
    q->world = world;
    q->rows_per_rank = rows_per_rank;
    q->d = d;
    q->batch = batch;
    q->stride = ((size_t)world * (size_t)rows_per_rank + (size_t)world * (size_t)batch) *
                (size_t)d;
    /* calloc: the queue part starts as the reference's zeros */
    q->buf = swav_xcalloc((size_t)ncrops * q->stride, sizeof(float));
}

void assigner_queue_free(struct assigner_queue *q)
{
    free(q->buf);
    memset(q, 0, sizeof *q);
}

void assigner_queue_create(struct assigner_queue *q)
{
    for (int i = 0; i < q->ncrops; i++) {
        memset(assigner_queue_block(q, i), 0,
               (size_t)assigner_queue_rows(q) * (size_t)q->d * sizeof(float));
    }
    q->present = q->rows_per_rank > 0;
}

bool assigner_queue_last_row_nonzero(const struct assigner_queue *q, int crop)
{
    if (!q->present || q->rows_per_rank == 0) {
        return false;
    }
    for (int r = 0; r < q->world; r++) {
        const float *last = assigner_queue_block(q, crop) +
                            ((size_t)r * q->rows_per_rank + q->rows_per_rank - 1) * q->d;
        bool nz = false;
        for (int t = 0; t < q->d; t++) {
            if (last[t] != 0.0f) {
                nz = true;
                break;
            }
        }
        if (!nz) {
            return false;
        }
    }
    return true;
}

void assigner_queue_push(struct assigner_queue *q, int crop)
{
    if (!q->present) {
        return;
    }
    const size_t d = (size_t)q->d, lr = (size_t)q->rows_per_rank, bs = (size_t)q->batch;
    for (int r = 0; r < q->world; r++) {
        float *seg = assigner_queue_block(q, crop) + (size_t)r * lr * d;
        const float *src = assigner_queue_batch(q, crop, r);
        /* lr is a multiple of bs (reference: rounded to the global batch) */
        size_t take = bs < lr ? bs : lr;
        if (lr > take) {
            memmove(seg + take * d, seg, (lr - take) * d * sizeof(float));
        }
        memcpy(seg, src, take * d * sizeof(float));
    }
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_i64(unsigned char *p, int64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)((uint64_t)v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static int64_t get_i64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return (int64_t)v;
}

int assigner_queue_save(const struct assigner_queue *q, const char *path, int64_t epoch,
                        int64_t step, char *err, size_t errlen)
{
    unsigned char h[QUEUE_HEADER_BYTES] = {0};
    memcpy(h, QUEUE_MAGIC, 8);
    put_u32(h + 8, QUEUE_VERSION);
    put_u32(h + 12, (uint32_t)q->ncrops);
    put_u32(h + 16, (uint32_t)q->world);
    put_u32(h + 20, (uint32_t)q->rows_per_rank);
    put_u32(h + 24, (uint32_t)q->d);
    put_u32(h + 28, q->present ? 1u : 0u);
    put_i64(h + 32, epoch);
    put_i64(h + 40, step);
    struct iovec iov[1 + 64];
    int n = 0;
    iov[n].iov_base = h;
    iov[n].iov_len = sizeof h;
    n++;
    if (q->present) {
        SWAV_ASSERT(q->ncrops <= 64);
        for (int i = 0; i < q->ncrops; i++) {
            iov[n].iov_base = assigner_queue_block(q, i);
            iov[n].iov_len = (size_t)assigner_queue_rows(q) * (size_t)q->d * sizeof(float);
            n++;
        }
    }
    return swav_file_writev_atomic(path, iov, n, 0644, err, errlen);
}

int assigner_queue_load(struct assigner_queue *q, const char *path, int64_t *epoch,
                        int64_t *step, char *err, size_t errlen)
{
    size_t want = (size_t)q->ncrops * (size_t)assigner_queue_rows(q) * (size_t)q->d *
                  sizeof(float);
    void *data = NULL;
    size_t len = 0;
    int rc = swav_file_read_all(path, QUEUE_HEADER_BYTES + want, &data, &len, err, errlen);
    if (rc < 0) {
        return rc;
    }
    const unsigned char *h = data;
    rc = -EINVAL;
    if (len < QUEUE_HEADER_BYTES || memcmp(h, QUEUE_MAGIC, 8) != 0) {
        snprintf(err, errlen, "%s: not a queue file (magic)", path);
        goto out;
    }
    if (get_u32(h + 8) != QUEUE_VERSION) {
        snprintf(err, errlen, "%s: version %u, expected %u", path, get_u32(h + 8), QUEUE_VERSION);
        goto out;
    }
    static const char *names[] = {"ncrops", "world_size", "rows_per_rank", "feat_dim"};
    const int expect[] = {q->ncrops, q->world, q->rows_per_rank, q->d};
    for (int i = 0; i < 4; i++) {
        uint32_t v = get_u32(h + 12 + 4 * i);
        if (v != (uint32_t)expect[i]) {
            snprintf(err, errlen, "%s: %s is %u, this run has %d", path, names[i], v, expect[i]);
            goto out;
        }
    }
    uint32_t present = get_u32(h + 28);
    if (present > 1 || (present && len != QUEUE_HEADER_BYTES + want) ||
        (!present && len != QUEUE_HEADER_BYTES)) {
        snprintf(err, errlen, "%s: %zu bytes, header says %zu", path, len,
                 QUEUE_HEADER_BYTES + (present ? want : 0));
        goto out;
    }
    const float *src = (const float *)(h + QUEUE_HEADER_BYTES);
    size_t per = (size_t)assigner_queue_rows(q) * (size_t)q->d;
    for (int i = 0; present && i < q->ncrops; i++) {
        memcpy(assigner_queue_block(q, i), src + (size_t)i * per, per * sizeof(float));
    }
    q->present = present != 0;
    *epoch = get_i64(h + 32);
    *step = get_i64(h + 40);
    rc = 0;
out:
    free(data);
    return rc;
}
