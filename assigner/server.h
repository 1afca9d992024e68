/* swav-assigner's service loop: a ROUTER socket, the session of W trainer
 * ranks (hello/welcome, config agreement, rank 0's NCCL id), the per-step
 * gather of embeddings with a deadline, the core step, codes replies with
 * statistics, save/saved, and an `error` reply for every refused message.
 * A refused message never changes the session, the gather or the queue.
 *
 * Runs in the calling thread until assigner_server_stop (async-signal-safe)
 * or an unrecoverable socket error.  Tests may run it in a thread. */
#ifndef SWAV_ASSIGNER_SERVER_H
#define SWAV_ASSIGNER_SERVER_H

#include <stddef.h>
#include <stdint.h>

struct assigner_server_opts {
    const char *endpoint;      /* bind address */
    const char *run;           /* expected run id; "" adopts the first hello's */
    const char *resume;        /* checkpoint whose queue (<resume>.queue) to load; "" none */
    int threads;               /* Sinkhorn threads */
    const char *device;        /* "cpu" (NULL/"": cpu), "cuda" or "cuda:N" (built with CUDA) */
    int embed_timeout_ms;      /* the other ranks get `error` when one is this late */
    int hello_timeout_ms;      /* likewise for the hello of all ranks */
    int stale_peer_ms;         /* a rank silent this long may be re-registered by a new peer */
    int heartbeat_ms;          /* ZMTP heartbeat interval (0: off) */
    int64_t max_msg_bytes;     /* ZMQ_MAXMSGSIZE */
    double collapse_entropy_frac;
    int collapse_min_used;
    int log_every;             /* a statistics line every N steps */
    const char *curve_secret;  /* CURVE keypair file (NULL/"": plain ZMTP) */
    const char *curve_allow;   /* allowed trainer public keys (NULL/"": any) */
};

typedef struct assigner_server assigner_server_t;

/* Binds; NULL with a message on failure. */
assigner_server_t *assigner_server_new(const struct assigner_server_opts *opts, char *err,
                                       size_t errlen);
/* Serves until stopped.  Returns 0 when stopped, -1 on a fatal socket error. */
int assigner_server_run(assigner_server_t *s);
void assigner_server_stop(assigner_server_t *s);
void assigner_server_destroy(assigner_server_t **s);

#endif
