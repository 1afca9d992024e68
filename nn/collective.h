/* Collectives across trainer ranks, behind one interface: a ring over ZeroMQ
 * on CPU (trainer/ring.c), NCCL on GPU (a later backend).  nn/ only sees this
 * table; it knows nothing of sockets.
 *
 * Every call is collective: all ranks call it in the same order with the same
 * sizes.  A call returns 0, or a negative status with a message naming the
 * peer when a peer is missing (dead, stopped, or too slow past the deadline):
 * callers decide to retry or stop, never hang. */
#ifndef SWAV_NN_COLLECTIVE_H
#define SWAV_NN_COLLECTIVE_H

#include <stddef.h>

#include "nn/guard.h"

enum nn_collective_status {
    NN_COLLECTIVE_OK = 0,
    NN_COLLECTIVE_ERR_TIMEOUT = -1,  /* a peer did not answer in time */
    NN_COLLECTIVE_ERR_PROTOCOL = -2, /* a peer sent something out of sequence */
    NN_COLLECTIVE_ERR_TRANSPORT = -3,
};

struct nn_collective;

struct nn_collective_ops {
    /* buf[0..n) = sum over ranks of buf[0..n), in place; identical bits on
     * every rank. */
    int (*allreduce_sum)(struct nn_collective *c, float *buf, size_t n);
    /* buf[0..bytes) of `root` copied to every rank. */
    int (*broadcast)(struct nn_collective *c, void *buf, size_t bytes, int root);
    void (*destroy)(struct nn_collective *c);
    /* Optional (NULL: allreduce_sum at once).  Starts allreduce_sum on
     * buf[0..n) and returns without waiting for it: buf belongs to the
     * collective until wait_all.  Started calls complete in the order they
     * were started, and before any later allreduce_sum or broadcast. */
    int (*allreduce_start)(struct nn_collective *c, float *buf, size_t n);
    /* Optional: completes every started call (with the deadline, as the
     * others); a backend with allreduce_start has it. */
    int (*wait_all)(struct nn_collective *c);
};

struct nn_collective {
    const struct nn_collective_ops *ops;
    int rank, world;
    char err[256]; /* the last failure, in words */
};

/* World of one: every collective is the identity. */
struct nn_collective *nn_collective_single_new(void);

static inline int nn_allreduce_sum(struct nn_collective *c, float *buf, size_t n)
{
    if (c->world == 1) {
        return 0;
    }
    nn_guard_enter(); /* buf may be backend memory (guard.h) */
    int st = c->ops->allreduce_sum(c, buf, n);
    nn_guard_leave();
    return st;
}

static inline int nn_broadcast(struct nn_collective *c, void *buf, size_t bytes, int root)
{
    if (c->world == 1) {
        return 0;
    }
    nn_guard_enter();
    int st = c->ops->broadcast(c, buf, bytes, root);
    nn_guard_leave();
    return st;
}

/* The gradient all-reduce in buckets during the backward (DDP's buckets):
 * start each bucket as soon as its gradients are final, so that the
 * transfer overlaps the rest of the backward where the backend can (NCCL on
 * its own stream); then wait for all. */
static inline int nn_allreduce_start(struct nn_collective *c, float *buf, size_t n)
{
    if (c->world == 1) {
        return 0;
    }
    nn_guard_enter();
    int st = c->ops->allreduce_start ? c->ops->allreduce_start(c, buf, n)
                                     : c->ops->allreduce_sum(c, buf, n);
    nn_guard_leave();
    return st;
}

static inline int nn_collective_wait_all(struct nn_collective *c)
{
    if (c->world == 1 || !c->ops->wait_all) {
        return 0;
    }
    nn_guard_enter();
    int st = c->ops->wait_all(c);
    nn_guard_leave();
    return st;
}

void nn_collective_destroy(struct nn_collective **c);

#endif
