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
    return c->world == 1 ? 0 : c->ops->allreduce_sum(c, buf, n);
}

static inline int nn_broadcast(struct nn_collective *c, void *buf, size_t bytes, int root)
{
    return c->world == 1 ? 0 : c->ops->broadcast(c, buf, bytes, root);
}

void nn_collective_destroy(struct nn_collective **c);

#endif
