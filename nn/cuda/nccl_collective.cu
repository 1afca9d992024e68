/* The collective interface (nn/collective.h) over NCCL, on a stream of its
 * own: the trainer's gradient all-reduce (in buckets started during the
 * backward, nn_allreduce_start) and SyncBN with --device cuda and more than
 * one rank.
 *
 * Streams: every NCCL call, and the staging of host buffers, runs on the
 * communicator's stream `cs`, after an event recorded on the backend's
 * compute stream when the call is made: it sees everything queued before
 * it, and a started all-reduce runs beside the compute queued after it (the
 * rest of the backward).  One stream for all of them keeps NCCL's calls in
 * the order every rank makes them.  The compute stream never waits on `cs`:
 * the host does (a synchronous call, or wait_all), before it queues anything
 * that reads or writes a reduced buffer.
 *
 * Bootstrap: rank 0 makes the NCCL unique id and the ranks' existing
 * collective (the trainer's ZeroMQ ring) broadcasts it; every rank then joins
 * the communicator.  The communicator is non-blocking (ncclConfig_t
 * blocking = 0), so that no call can hang: every operation is queued on the
 * stream and then waited for with a deadline, polling the stream and NCCL's
 * asynchronous error; past the deadline, or on an NCCL error, the
 * communicator is aborted and the call returns a status and a message, as
 * the ring does (the trainer then stops, and the supervisor restarts it).
 *
 * Buffers may be device (or managed) memory, used in place, or host memory
 * (SyncBN's statistics, the trainer's loss and stop flag), staged through a
 * device buffer.  Sums are NCCL's: the same bits on every rank (each chunk is
 * reduced once and then broadcast), but not the ring's bits.
 *
 * NEVER RUN ON A GPU when written: see docs/cuda.md. */
#include <nccl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda_internal.h"

extern "C" {
#include "common/timeutil.h"
#include "nn/collective.h"
}

struct nccl_coll {
    struct nn_collective base; /* first: the interface's view */
    struct cuda_backend *b;
    ncclComm_t comm;
    int timeout_ms;
    int broken; /* aborted: every later call fails at once */
    cudaStream_t cs;   /* NCCL's calls and the staging copies */
    cudaEvent_t after; /* recorded on the compute stream before each call */
    int pending;       /* all-reduces started and not waited for */
    void *stage; /* device staging for host buffers */
    size_t stage_bytes;
};

static const char *nccl_why(ncclResult_t st)
{
    return ncclGetErrorString(st);
}

/* Waits for the communicator to leave ncclInProgress (a non-blocking
 * init or enqueue).  0, or a status with a message. */
static int nccl_settle(struct nccl_coll *c, ncclResult_t st, const char *what, double deadline)
{
    while (st == ncclInProgress) {
        if (swav_now_s() > deadline) {
            snprintf(c->base.err, sizeof c->base.err,
                     "NCCL %s did not complete within %d ms (a peer missing?)", what,
                     c->timeout_ms);
            return NN_COLLECTIVE_ERR_TIMEOUT;
        }
        usleep(50);
        ncclResult_t ast = ncclSuccess;
        ncclResult_t qst = ncclCommGetAsyncError(c->comm, &ast);
        st = qst != ncclSuccess ? qst : ast;
    }
    if (st != ncclSuccess) {
        snprintf(c->base.err, sizeof c->base.err, "NCCL %s: %s (%s)", what, nccl_why(st),
                 ncclGetLastError(c->comm));
        return NN_COLLECTIVE_ERR_TRANSPORT;
    }
    return 0;
}

/* Waits for the communicator's stream (the collectives queued there) with
 * the deadline, watching NCCL's asynchronous error. */
static int nccl_wait(struct nccl_coll *c, const char *what, double deadline)
{
    for (unsigned spin = 0;; spin++) {
        cudaError_t q = cudaStreamQuery(c->cs);
        if (q == cudaSuccess) {
            return 0;
        }
        if (q != cudaErrorNotReady) {
            snprintf(c->base.err, sizeof c->base.err, "NCCL %s: CUDA %s", what,
                     cudaGetErrorString(q));
            return NN_COLLECTIVE_ERR_TRANSPORT;
        }
        ncclResult_t ast = ncclSuccess;
        if (ncclCommGetAsyncError(c->comm, &ast) == ncclSuccess && ast != ncclSuccess &&
            ast != ncclInProgress) {
            snprintf(c->base.err, sizeof c->base.err, "NCCL %s: %s (%s)", what, nccl_why(ast),
                     ncclGetLastError(c->comm));
            return NN_COLLECTIVE_ERR_TRANSPORT;
        }
        if (swav_now_s() > deadline) {
            snprintf(c->base.err, sizeof c->base.err,
                     "NCCL %s did not complete within %d ms (a peer missing or stopped?)", what,
                     c->timeout_ms);
            return NN_COLLECTIVE_ERR_TIMEOUT;
        }
        if (spin > 64) {
            usleep(20);
        }
    }
}

/* After a failure the communicator cannot be trusted: abort it (this also
 * frees the stream from a collective that will never complete). */
static int nccl_fail(struct nccl_coll *c, int st)
{
    if (!c->broken) {
        c->broken = 1;
        ncclCommAbort(c->comm);
        c->comm = NULL;
        LOG_ERROR("rank %d: %s; the NCCL communicator is aborted", c->base.rank, c->base.err);
    }
    return st;
}

/* The next call on the communicator's stream comes after everything queued
 * on the compute stream so far. */
static void nccl_after_compute(struct nccl_coll *c)
{
    CUDA_CHECK(cudaEventRecord(c->after, c->b->stream));
    CUDA_CHECK(cudaStreamWaitEvent(c->cs, c->after, 0));
}

/* A device pointer for buf: buf itself, or the staging buffer holding a
 * copy of it (queued on the communicator's stream). */
static void *nccl_device_view(struct nccl_coll *c, void *buf, size_t bytes, int *staged)
{
    *staged = cu_is_host(buf);
    if (!*staged) {
        return buf;
    }
    /* cu_grow may free the old buffer: nothing on cs may still use it
     * (synchronous calls leave cs idle; started ones are device buffers) */
    cu_grow(c->b, &c->stage, &c->stage_bytes, bytes);
    CUDA_CHECK(cudaMemcpyAsync(c->stage, buf, bytes, cudaMemcpyDefault, c->cs));
    return c->stage;
}

/* The collective is waited for (with the deadline) BEFORE a staged result is
 * copied back: a device-to-pageable-host cudaMemcpyAsync returns only once
 * the copy is done, i.e. once the stream has run the collective, so queued
 * first it would block without a deadline on a missing peer. */
static int nccl_finish(struct nccl_coll *c, void *buf, void *dev, size_t bytes, int staged,
                       const char *what, double deadline)
{
    int st = nccl_wait(c, what, deadline);
    if (st) {
        return nccl_fail(c, st);
    }
    c->pending = 0; /* cs is idle: the started ones are done too */
    if (staged) {
        CUDA_CHECK(cudaMemcpyAsync(buf, dev, bytes, cudaMemcpyDefault, c->cs));
        CUDA_CHECK(cudaStreamSynchronize(c->cs)); /* pinned host memory: async */
    }
    return 0;
}

/* One collective on buf (bytes): staged when it is host memory, enqueued by
 * `enqueue(dev)` (the NCCL call on the device view), waited for with the
 * deadline, copied back; a failure aborts the communicator.  start: a
 * device buffer's call is left running (wait_all completes it). */
template <typename Enqueue>
static int nccl_run(struct nccl_coll *c, void *buf, size_t bytes, const char *what, bool start,
                    Enqueue enqueue)
{
    if (c->broken) {
        return NN_COLLECTIVE_ERR_TRANSPORT;
    }
    if (bytes == 0) {
        return 0;
    }
    double deadline = swav_now_s() + c->timeout_ms / 1000.0;
    nccl_after_compute(c);
    int staged;
    void *dev = nccl_device_view(c, buf, bytes, &staged);
    int st = nccl_settle(c, enqueue(dev), what, deadline);
    if (st) {
        return nccl_fail(c, st);
    }
    if (start && !staged) {
        c->pending++;
        return 0;
    }
    return nccl_finish(c, buf, dev, bytes, staged, what, deadline);
}

static int nccl_allreduce_run(struct nn_collective *base, float *buf, size_t n, bool start)
{
    struct nccl_coll *c = (struct nccl_coll *)base;
    return nccl_run(c, buf, n * sizeof(float), "all-reduce", start, [c, n](void *dev) {
        return ncclAllReduce(dev, dev, n, ncclFloat32, ncclSum, c->comm, c->cs);
    });
}

static int nccl_allreduce(struct nn_collective *base, float *buf, size_t n)
{
    return nccl_allreduce_run(base, buf, n, false);
}

static int nccl_broadcast(struct nn_collective *base, void *buf, size_t bytes, int root)
{
    struct nccl_coll *c = (struct nccl_coll *)base;
    return nccl_run(c, buf, bytes, "broadcast", false, [c, bytes, root](void *dev) {
        return ncclBroadcast(dev, dev, bytes, ncclUint8, root, c->comm, c->cs);
    });
}

/* A bucket of gradients: queued on cs after the compute queued so far (the
 * layers that made it), not waited for.  A host buffer (never the
 * gradients) is reduced at once. */
static int nccl_allreduce_start(struct nn_collective *base, float *buf, size_t n)
{
    return nccl_allreduce_run(base, buf, n, true);
}

static int nccl_wait_all(struct nn_collective *base)
{
    struct nccl_coll *c = (struct nccl_coll *)base;
    if (c->broken) {
        return NN_COLLECTIVE_ERR_TRANSPORT;
    }
    if (!c->pending) {
        return 0;
    }
    int st = nccl_wait(c, "all-reduce (buckets)", swav_now_s() + c->timeout_ms / 1000.0);
    if (st) {
        return nccl_fail(c, st);
    }
    c->pending = 0;
    return 0;
}

static void nccl_destroy(struct nn_collective *base)
{
    struct nccl_coll *c = (struct nccl_coll *)base;
    cudaStreamSynchronize(c->b->stream);
    if (c->comm) {
        ncclCommAbort(c->comm); /* aborts pending work: releases at once, never waits for peers */
    }
    cudaStreamSynchronize(c->cs);
    cudaStreamDestroy(c->cs);
    cudaEventDestroy(c->after);
    cudaFree(c->stage);
    free(c);
}

static const struct nn_collective_ops nccl_ops = {
    nccl_allreduce,
    nccl_broadcast,
    nccl_destroy,
    nccl_allreduce_start,
    nccl_wait_all,
};

extern "C" struct nn_collective *nn_collective_nccl_new(nn_backend_t *be,
                                                        struct nn_collective *bootstrap,
                                                        int timeout_ms, char *err, size_t errlen)
{
    struct cuda_backend *b = cu_be(be);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    int no_id = 0;
    if (bootstrap->rank == 0) {
        ncclResult_t st = ncclGetUniqueId(&id);
        if (st != ncclSuccess) {
            snprintf(err, errlen, "ncclGetUniqueId: %s", nccl_why(st));
            /* the others wait in the broadcast: send them the zero id, which
             * fails their init with a message rather than a hang */
            memset(&id, 0, sizeof id);
            no_id = 1;
        }
    }
    if (nn_broadcast(bootstrap, &id, sizeof id, 0) != 0) {
        if (no_id) return NULL; /* the first error is the cause */
        snprintf(err, errlen, "sending the NCCL id over the ring: %s", bootstrap->err);
        return NULL;
    }
    if (no_id) return NULL; /* err says why; not a wait for the init's deadline */
    struct nccl_coll *c = (struct nccl_coll *)swav_xcalloc(1, sizeof *c);
    c->base.ops = &nccl_ops;
    c->base.rank = bootstrap->rank;
    c->base.world = bootstrap->world;
    c->b = b;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 120000;
    CUDA_CHECK(cudaSetDevice(b->device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->cs, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&c->after, cudaEventDisableTiming));
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    double deadline = swav_now_s() + c->timeout_ms / 1000.0;
    ncclResult_t st = ncclCommInitRankConfig(&c->comm, c->base.world, id, c->base.rank, &cfg);
    int rc = c->comm ? nccl_settle(c, st, "communicator init", deadline)
                     : (snprintf(c->base.err, sizeof c->base.err, "ncclCommInitRankConfig: %s",
                                 nccl_why(st)),
                        NN_COLLECTIVE_ERR_TRANSPORT);
    if (rc) {
        snprintf(err, errlen, "%s", c->base.err);
        if (c->comm) {
            ncclCommAbort(c->comm);
        }
        cudaStreamDestroy(c->cs);
        cudaEventDestroy(c->after);
        free(c);
        return NULL;
    }
    int nver = 0;
    ncclGetVersion(&nver);
    LOG_INFO("NCCL %d.%d.%d: rank %d of %d on GPU %d", nver / 10000, nver / 100 % 100, nver % 100,
             c->base.rank, c->base.world, b->device);
    return &c->base;
}
