/* The consumer side of the loader link, for trainers and the evaluator.
 *
 * The consumer binds a ROUTER; swav-loader processes connect DEALERs to it
 * (one DEALER per consumer in each loader) and come and go at any time.  The
 * client keeps a window of outstanding orders, in submission order:
 *
 *   submit(order) -> queued -> sent to a loader with free credit -> batch
 *   arrives -> handed out by next() strictly in submission order (which is
 *   step order when the caller submits steps in sequence).
 *
 * Credit: a loader's `ready` message says how many orders it will hold for
 * this consumer at once (its capacity; loaders repeat it every --beat_ms as
 * a keepalive); the client sends a loader at most credit - outstanding
 * orders.  Liveness: a loader that has said nothing for silence_ms is dead:
 * its orders go back to the queue and are sent to another loader; an order
 * unanswered after deadline_ms is re-issued too.  Orders are idempotent
 * (the crops depend only on seed, epoch, image, crop), so a late batch of a
 * re-issued order is simply a duplicate: the first batch wins, later ones are
 * dropped and counted.  A loader that refuses an order (an `error` naming the
 * order's step) gets it taken back; after max_attempts refusals the order
 * fails and next() says so.  A BUSY refusal (a loader that is stopping) is
 * not the order's fault: the order is re-issued and the loader's credit set
 * to 0 until its next `ready`.
 *
 * Zero copy: the batch handed out by next() points into the received ZeroMQ
 * frames (batch->crops[g].data, batch->labels.data); it stays valid until the
 * next call to loader_client_next() or loader_client_destroy(). */
#ifndef SWAV_LOADER_CLIENT_H
#define SWAV_LOADER_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"

enum loader_client_status {
    LOADER_CLIENT_OK = 0,
    LOADER_CLIENT_TIMEOUT,    /* next(): the next batch did not come in time */
    LOADER_CLIENT_ERR_FULL,   /* submit(): the window is full; call next() first */
    LOADER_CLIENT_ERR_EMPTY,  /* next(): nothing was submitted */
    LOADER_CLIENT_ERR_ORDER,  /* submit(): the order does not encode (see last_error) */
    LOADER_CLIENT_ERR_FAILED, /* next(): loaders refused the next order max_attempts
                                 times; it is dropped from the window (see last_error) */
};
const char *loader_client_status_str(enum loader_client_status st);

struct loader_client_opts {
    const char *bind;          /* endpoint to bind: "ipc:///run/x.sock", "tcp://127.0.0.1:5555" */
    const char *run;           /* run id of the messages; NULL or "": "swav" */
    uint32_t window;           /* max orders submitted and not yet handed out; 0: 8 */
    int silence_ms;            /* a loader silent this long is dead; 0: 5000 */
    int deadline_ms;           /* an order unanswered this long is re-issued; 0: 120000 */
    int heartbeat_ivl_ms;      /* ZMTP heartbeats; 0: 1000, < 0: off */
    int heartbeat_timeout_ms;  /* 0: 5000 */
    uint64_t max_batch_bytes;  /* ZMQ_MAXMSGSIZE of the ROUTER; 0: 1 GiB */
    uint32_t max_attempts;     /* refusals before an order fails; 0: 3 */
    void *zmq_ctx;             /* NULL: the client makes (and ends) its own context */
    /* CURVE (docs/security.md): the keypair file that makes the ROUTER a
     * CURVE server, and the file of loader public keys allowed in (a ZAP
     * handler on zmq_ctx, owned by this client: none may exist there yet).
     * NULL or "": plain ZMTP / any client that knows the server key. */
    const char *curve_secret;
    const char *curve_allow;
};

struct loader_client_stats {
    uint64_t submitted;    /* orders submitted */
    uint64_t delivered;    /* batches handed out */
    uint64_t sent;         /* order messages sent (re-issues included) */
    uint64_t reissued;     /* orders taken back from a silent / late loader */
    uint64_t duplicates;   /* late batches of orders already answered, dropped */
    uint64_t stale;        /* batches of orders this client does not know, dropped */
    uint64_t refusals;     /* `error` answers to orders */
    uint64_t bad_messages; /* messages that did not decode or did not match their order */
    uint64_t substituted;  /* images replaced by a loader (notes in the delivered batches) */
    uint32_t loaders_alive;
    uint32_t outstanding;  /* orders submitted and not yet handed out */
};

struct loader_client;

/* Bind and start.  0 on success; -1 with a message in err (bad endpoint,
 * address in use). */
int loader_client_new(struct loader_client **out, const struct loader_client_opts *opts,
                      char *err, size_t errlen);
/* Closes the socket (and the context when the client made it); *c = NULL. */
void loader_client_destroy(struct loader_client **c);

/* The bound endpoint as ZeroMQ resolved it (tcp://127.0.0.1:0 gets its port). */
const char *loader_client_endpoint(const struct loader_client *c);

/* Queue an order (copied, indices included; order->order_id is ignored: the
 * client numbers its orders and writes the number to *order_id when not
 * NULL) and send what credit allows.  LOADER_CLIENT_OK, ERR_FULL or
 * ERR_ORDER. */
enum loader_client_status loader_client_submit(struct loader_client *c,
                                               const struct proto_order *order,
                                               uint64_t *order_id);

/* Wait up to timeout_ms (< 0: forever) for the batch of the oldest
 * submitted order that was not handed out yet.  On LOADER_CLIENT_OK *batch
 * points to it (valid until the next call).  The batch's order_id, epoch,
 * step, rank, n_images and crop geometry have been checked against the
 * order.  A signal (EINTR) ends the wait early with LOADER_CLIENT_TIMEOUT so
 * that the caller can look at its stop flag. */
enum loader_client_status loader_client_next(struct loader_client *c,
                                             const struct proto_batch **batch,
                                             int timeout_ms);

/* Handle incoming messages (ready, batches, errors), liveness and sending
 * for up to timeout_ms (0: what is waiting now), without handing anything
 * out: e.g. to wait until loaders have connected. */
void loader_client_poll(struct loader_client *c, int timeout_ms);

/* Orders submitted and not yet handed out. */
uint32_t loader_client_outstanding(const struct loader_client *c);
void loader_client_get_stats(const struct loader_client *c, struct loader_client_stats *out);
/* The message of the last ERR_ORDER / ERR_FAILED. */
const char *loader_client_last_error(const struct loader_client *c);

/* The size of data set `tag` from the `datasets` of the live loaders' last
 * `ready` (a loader repeats it every beat): FOUND with *images when every
 * live loader that lists the tag gives the same count; WAIT when no live
 * loader has announced its data sets (none connected yet, or only loaders
 * older than the field); ABSENT when live loaders announced theirs and none
 * lists the tag; CONFLICT when they disagree (*images: the smallest).  why
 * gets a sentence for everything but FOUND. */
enum loader_client_dataset {
    LOADER_CLIENT_DATASET_FOUND = 0,
    LOADER_CLIENT_DATASET_WAIT,
    LOADER_CLIENT_DATASET_ABSENT,
    LOADER_CLIENT_DATASET_CONFLICT,
};
enum loader_client_dataset loader_client_dataset_size(const struct loader_client *c,
                                                      const char *tag, uint64_t *images,
                                                      char *why, size_t whylen);

#endif
