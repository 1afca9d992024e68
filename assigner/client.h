/* The trainer's side of the assigner link: one DEALER socket per rank.
 *
 *   hello (config, optional NCCL id and resume checkpoint) -> welcome
 *   embed (embeddings of the assign crops; rank 0 adds the prototypes),
 *   then wait for codes with a deadline (do the other crops' forward meanwhile)
 *   save (queue beside a checkpoint) -> saved
 *
 * Every wait has a deadline: a dead or restarted assigner gives
 * ASSIGNER_CLIENT_ERR_TIMEOUT, never a hang; an `error` reply gives
 * ASSIGNER_CLIENT_ERR_REFUSED with the reply kept (assigner_client_last_error).
 * Replies that belong to an earlier request (a late codes after a timeout)
 * are skipped.  After an assigner restart, say hello again (with the
 * checkpoint being resumed) before the next embed. */
#ifndef SWAV_ASSIGNER_CLIENT_H
#define SWAV_ASSIGNER_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"

enum assigner_client_status {
    ASSIGNER_CLIENT_OK = 0,
    ASSIGNER_CLIENT_ERR_TIMEOUT,  /* no reply before the deadline */
    ASSIGNER_CLIENT_ERR_REFUSED,  /* the assigner answered `error` (see last_error) */
    ASSIGNER_CLIENT_ERR_PROTOCOL, /* a reply that did not decode or fit the request */
    ASSIGNER_CLIENT_ERR_ZMQ,      /* a socket call failed */
};
const char *assigner_client_status_str(enum assigner_client_status st);

struct assigner_client_config {
    const char *endpoint;       /* the assigner's address, e.g. tcp://127.0.0.1:5570 */
    const char *run;            /* run id, 1 .. PROTO_MAX_ID bytes */
    uint32_t rank, world_size;
    uint32_t nmb_prototypes, feat_dim;
    double epsilon;
    uint32_t sinkhorn_iterations;
    uint32_t queue_length, epoch_queue_starts;
    uint32_t n_crops_for_assign;
    uint32_t crops_for_assign[PROTO_MAX_LIST];
    uint32_t batch_size;        /* per rank */
    int heartbeat_ms;           /* ZMTP heartbeats (0: off) */
    const char *curve_server_public; /* the assigner's public key file: CURVE (NULL/"": off) */
    const char *curve_secret;        /* this client's keypair file (NULL/"": a fresh one) */
};

typedef struct assigner_client assigner_client_t;

/* zmq_ctx: a ZeroMQ context to share, or NULL for the client's own.
 * Connects (ZeroMQ connects lazily: no assigner needed yet). */
assigner_client_t *assigner_client_new(void *zmq_ctx, const struct assigner_client_config *cfg,
                                       char *err, size_t errlen);
void assigner_client_destroy(assigner_client_t **c);

/* hello -> welcome.  nccl_id: rank 0's 128 bytes, or NULL; resume_path: the
 * checkpoint being resumed (its queue is restored), or NULL/"".  Waits until
 * every rank has said hello (the welcome comes then), at most timeout_ms. */
enum assigner_client_status assigner_client_hello(assigner_client_t *c,
                                                  const uint8_t *nccl_id,
                                                  const char *resume_path,
                                                  uint32_t resume_epoch, int timeout_ms,
                                                  struct proto_welcome *welcome);

/* Send this step's embeddings (n_crops_for_assign, batch_size, feat_dim) and,
 * from rank 0, the current prototypes (nmb_prototypes, feat_dim); NULL from
 * the other ranks.  Does not wait. */
enum assigner_client_status assigner_client_embed(assigner_client_t *c, uint32_t epoch,
                                                  uint64_t step, const float *embeddings,
                                                  const float *prototypes);

/* Wait for the codes of `step`: q (n_crops_for_assign, batch_size,
 * nmb_prototypes) copied into `codes`; stats may be NULL. */
enum assigner_client_status assigner_client_wait_codes(assigner_client_t *c, uint64_t step,
                                                       int timeout_ms, float *codes,
                                                       struct proto_codes_stats *stats);

/* Ask the assigner to write the queue beside checkpoint_path (as
 * <checkpoint_path>.queue) and wait for `saved`.  A saved reply with ok =
 * false gives ASSIGNER_CLIENT_ERR_REFUSED with its message in last_error. */
enum assigner_client_status assigner_client_save(assigner_client_t *c, uint32_t epoch,
                                                 uint64_t step, const char *checkpoint_path,
                                                 int timeout_ms, struct proto_saved *saved);

/* The last `error` reply (code, field, message), or a description of the
 * last failure (code PROTO_ERRC_TIMEOUT / PROTO_ERRC_BAD_MESSAGE). */
const struct proto_error *assigner_client_last_error(const assigner_client_t *c);

/* The DEALER socket (for a caller's own zmq_poll). */
void *assigner_client_socket(assigner_client_t *c);

#endif
