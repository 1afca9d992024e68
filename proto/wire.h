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
    /* ZeroMQ gives no alignment guarantee for received frames (small
     * messages are sliced out of its receive buffer at any offset): tensor
     * frames that are not 16-byte aligned are copied here, so decoders and
     * consumers can read them as arrays of their dtype. */
    unsigned char *align_buf;
    size_t align_cap;
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

/* ---- CURVE (TCP endpoints that must not be open to anyone) -----------------
 *
 * Keys are Z85 text (40 characters) in files: a keypair file holds the two
 * lines "public <z85>" and "secret <z85>" (mode 0600); a public-key file
 * holds "public <z85>", and an allow-list file holds one such line per
 * authorised client (a line starting with '#' is a comment).  Loopback and ipc:// endpoints
 * need none of this.  All return PROTO_OK, or PROTO_ERR_BAD_ARG / _ZMQ with
 * a message in err naming the file. */
#define PROTO_Z85_KEY_LEN 40

/* Write a fresh keypair: keypair_path (0600) and public_path (0644). */
enum proto_status proto_curve_keygen(const char *keypair_path, const char *public_path,
                                     char *err, size_t errlen);
/* Read a key file; secret may be NULL (a public-key file has none). */
enum proto_status proto_curve_load(const char *path, char public_key[PROTO_Z85_KEY_LEN + 1],
                                   char secret_key[PROTO_Z85_KEY_LEN + 1], char *err,
                                   size_t errlen);
/* Before bind: this socket is a CURVE server with the keypair of the file. */
enum proto_status proto_socket_curve_server(void *sock, const char *keypair_path, char *err,
                                            size_t errlen);
/* Before connect: a CURVE client of the server whose public key is in
 * server_public_path, with the keypair of client_keypair_path (NULL: a fresh
 * keypair, for servers that authorise any client). */
enum proto_status proto_socket_curve_client(void *sock, const char *server_public_path,
                                            const char *client_keypair_path, char *err,
                                            size_t errlen);

/* A ZAP handler (ZeroMQ RFC 27) for one context: CURVE clients whose public
 * key is in the allow-list are accepted, all others refused.  Without a ZAP
 * handler a CURVE server accepts any client that knows its public key.
 * Start it before binding; it runs in its own thread. */
struct proto_zap;
struct proto_zap *proto_zap_new(void *zmq_ctx, const char *allow_list_path, char *err,
                                size_t errlen);
/* The same, and the handler's thread logs every refusal at once (a warning,
 * rate-limited): "WHAT: refused a connection from ADDRESS: CURVE key <z85>
 * is not in ALLOW_LIST_PATH", so a link nobody polls still names its
 * intruders.  what: the link, e.g. "--pub tcp://10.0.0.1:5580" (copied). */
struct proto_zap *proto_zap_new_logged(void *zmq_ctx, const char *allow_list_path,
                                       const char *what, char *err, size_t errlen);
/* Requests answered so far: accepted, refused. */
void proto_zap_counts(const struct proto_zap *zap, uint64_t *accepted, uint64_t *refused);
void proto_zap_destroy(struct proto_zap **zap);

#endif
