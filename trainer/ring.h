/* The CPU collective: ring all-reduce and broadcast over ZeroMQ between the W
 * trainer ranks of a run (nn/collective.h).  Rank r binds a PULL socket on
 * endpoints[r] and connects a PUSH socket to endpoints[(r+1) % W].
 *
 * All-reduce is the bandwidth-optimal ring (reduce-scatter then all-gather,
 * 2(W-1)/W of the buffer sent per rank); each chunk is summed in one fixed
 * order and then copied to every rank, so all ranks end with identical bits
 * and a run is deterministic.  Every frame carries the run tag, the sender's
 * rank, the call number and the chunk, checked on receipt: a message that is
 * not the expected next chunk from the previous rank (garbage from a
 * stranger that connected to the PULL, another run's frame) is dropped with
 * a rate-limited warning and the wait goes on; a missing peer is reported by
 * rank after timeout_ms.  After a failed call the ring must be rebuilt. */
#ifndef SWAV_TRAINER_RING_H
#define SWAV_TRAINER_RING_H

#include <stdint.h>

#include "nn/collective.h"

/* endpoints: world entries ("ipc:///run/x/ring-0", "tcp://10.0.0.1:6100").
 *
 * curve_keypair: NULL or "": plain ZeroMQ.  Else a keypair file (swav
 * keygen) that every rank of the run shares: each rank's PULL is a CURVE
 * server with it, each PUSH a CURVE client with it (the server key it
 * expects is the same file's public key), and a ZAP handler lets in only
 * that public key; a refused connection is logged (proto_zap_new_logged).
 * The ring then has its own ZeroMQ context (a context has one ZAP handler,
 * and the caller's may hold another link's); zmq_ctx is not used.
 *
 * Returns NULL with a message in err on failure. */
struct nn_collective *trainer_ring_new(void *zmq_ctx, int rank, int world,
                                       const char *const *endpoints, uint64_t run_tag,
                                       int timeout_ms, const char *curve_keypair, char *err,
                                       size_t errlen);

#endif
