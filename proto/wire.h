/* Sending and receiving proto messages over ZeroMQ sockets: a thin layer over
 * zmq_msg_send / zmq_msg_recv with ZMQ_SNDMORE / ZMQ_RCVMORE.
 *
 * A ROUTER socket prefixes each message with the peer's identity frame; the
 * caller says whether a socket is a ROUTER (proto_recv's `router`,
 * proto_send's identity).  DEALER peers send no empty delimiter frame.
 *
 * Received frames stay in the zmq_msg_t parts of a struct proto_rx, so that
 * decoded tensors can point into them without a copy; they are valid until
 * the next proto_recv on the same proto_rx or proto_rx_free. */
#ifndef SWAV_PROTO_WIRE_H
#define SWAV_PROTO_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "proto.h"

#define PROTO_MAX_IDENTITY 255

/* Socket options every role sets: ZMQ_MAXMSGSIZE (bytes of one frame; -1:
 * no limit), ZMTP heartbeats (ZMQ_HEARTBEAT_IVL, ZMQ_HEARTBEAT_TIMEOUT and
 * ZMQ_HEARTBEAT_TTL = timeout; 0 ms disables), ZMQ_LINGER 0 (a role that
 * stops does not hang on unsent messages).  Returns PROTO_OK or
 * PROTO_ERR_ZMQ. */
enum proto_status proto_socket_setup(void *sock, int64_t maxmsgsize, int heartbeat_ivl_ms,
                                     int heartbeat_timeout_ms);

/* Send msg's frames; when identity is non-NULL (ROUTER), first an identity
 * frame of idlen bytes.  flags: 0 or ZMQ_DONTWAIT (PROTO_ERR_AGAIN when the
 * message cannot be queued now: nothing was sent).  PROTO_ERR_ZMQ otherwise
 * on failure (zmq_errno tells; EHOSTUNREACH with ZMQ_ROUTER_MANDATORY). */
enum proto_status proto_send(void *sock, const void *identity, size_t idlen,
                             const struct proto_msg *msg, int flags);

/* A received message. */
struct proto_rx {
    zmq_msg_t parts[PROTO_MAX_FRAMES];
    size_t nparts;                                 /* initialised zmq_msg_t's */
    struct proto_frame frames[PROTO_MAX_FRAMES];   /* without the identity */
    size_t nframes;
    uint8_t identity[PROTO_MAX_IDENTITY];
    size_t idlen; /* 0 unless received with router = true */
};
void proto_rx_init(struct proto_rx *rx);
void proto_rx_free(struct proto_rx *rx);

/* Receive one whole multipart message into rx (releasing what rx held).
 * router: the first frame is the sender's identity (kept in rx->identity).
 * flags: 0 or ZMQ_DONTWAIT (PROTO_ERR_AGAIN when nothing is waiting; with a
 * ZMQ_RCVTIMEO, PROTO_ERR_AGAIN on timeout too).  A message of more than
 * PROTO_MAX_FRAMES frames (plus identity) is drained and answered with
 * PROTO_ERR_TOO_MANY_FRAMES; a ROUTER message with no frame after the
 * identity, or an identity over PROTO_MAX_IDENTITY bytes, with
 * PROTO_ERR_NO_FRAMES / PROTO_ERR_BAD_ARG.  The identity is still filled in
 * when it could be read, so the caller can answer with an error. */
enum proto_status proto_recv(void *sock, struct proto_rx *rx, bool router, int flags);

#endif
