/* ZeroMQ send/receive of proto messages: see wire.h. */
#include "wire.h"

#include <errno.h>
#include <string.h>

enum proto_status proto_socket_setup(void *sock, int64_t maxmsgsize, int heartbeat_ivl_ms,
                                     int heartbeat_timeout_ms)
{
    int linger = 0;
    if (zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsgsize, sizeof maxmsgsize) != 0 ||
        zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0) {
        return PROTO_ERR_ZMQ;
    }
    if (heartbeat_ivl_ms > 0) {
        int timeout = heartbeat_timeout_ms > 0 ? heartbeat_timeout_ms : 3 * heartbeat_ivl_ms;
        /* ZMQ_HEARTBEAT_TTL is carried in deciseconds (max 6553599 ms) */
        int ttl = timeout > 6553500 ? 6553500 : timeout;
        if (zmq_setsockopt(sock, ZMQ_HEARTBEAT_IVL, &heartbeat_ivl_ms, sizeof(int)) != 0 ||
            zmq_setsockopt(sock, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof(int)) != 0 ||
            zmq_setsockopt(sock, ZMQ_HEARTBEAT_TTL, &ttl, sizeof(int)) != 0) {
            return PROTO_ERR_ZMQ;
        }
    }
    return PROTO_OK;
}

enum proto_status proto_send(void *sock, const void *identity, size_t idlen,
                             const struct proto_msg *msg, int flags)
{
    if (!msg || msg->nframes == 0 || msg->nframes > PROTO_MAX_FRAMES) {
        return PROTO_ERR_BAD_ARG;
    }
    /* Once the first frame is queued the rest go out whatever the flags: a
     * multipart message is queued atomically by libzmq, so only the first
     * send can report EAGAIN. */
    int first = 1;
    if (identity) {
        if (zmq_send(sock, identity, idlen, ZMQ_SNDMORE | flags) < 0) {
            return zmq_errno() == EAGAIN ? PROTO_ERR_AGAIN : PROTO_ERR_ZMQ;
        }
        first = 0;
    }
    for (size_t i = 0; i < msg->nframes; i++) {
        int more = i + 1 < msg->nframes ? ZMQ_SNDMORE : 0;
        const void *data = msg->frames[i].data ? msg->frames[i].data : "";
        if (zmq_send(sock, data, msg->frames[i].len, more | (first ? flags : 0)) < 0) {
            if (first && zmq_errno() == EAGAIN) {
                return PROTO_ERR_AGAIN;
            }
            return PROTO_ERR_ZMQ;
        }
        first = 0;
    }
    return PROTO_OK;
}

void proto_rx_init(struct proto_rx *rx) { memset(rx, 0, sizeof *rx); }

static void rx_release(struct proto_rx *rx)
{
    for (size_t i = 0; i < rx->nparts; i++) {
        zmq_msg_close(&rx->parts[i]);
    }
    rx->nparts = 0;
    rx->nframes = 0;
    rx->idlen = 0;
}

void proto_rx_free(struct proto_rx *rx) { rx_release(rx); }

static int msg_more(zmq_msg_t *m) { return zmq_msg_more(m); }

/* Receive and discard the rest of a multipart message. */
static void drain(void *sock)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    int more = 1;
    while (more) {
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            break;
        }
        more = msg_more(&m);
    }
    zmq_msg_close(&m);
}

enum proto_status proto_recv(void *sock, struct proto_rx *rx, bool router, int flags)
{
    rx_release(rx);
    zmq_msg_t part;
    int more;
    /* only the first part can block or fail with EAGAIN: libzmq delivers a
     * multipart message whole */
    if (router) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, sock, flags) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&part);
            return e == EAGAIN ? PROTO_ERR_AGAIN : PROTO_ERR_ZMQ;
        }
        flags = 0;
        more = msg_more(&part);
        size_t n = zmq_msg_size(&part);
        if (n > PROTO_MAX_IDENTITY) {
            zmq_msg_close(&part);
            if (more) drain(sock);
            return PROTO_ERR_BAD_ARG;
        }
        memcpy(rx->identity, zmq_msg_data(&part), n);
        rx->idlen = n;
        zmq_msg_close(&part);
        if (!more) {
            return PROTO_ERR_NO_FRAMES;
        }
    }
    more = 1;
    while (more) {
        if (rx->nparts == PROTO_MAX_FRAMES) {
            drain(sock);
            size_t keep = rx->idlen;
            uint8_t id[PROTO_MAX_IDENTITY];
            memcpy(id, rx->identity, keep);
            rx_release(rx);
            memcpy(rx->identity, id, keep);
            rx->idlen = keep;
            return PROTO_ERR_TOO_MANY_FRAMES;
        }
        zmq_msg_t *m = &rx->parts[rx->nparts];
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, flags) < 0) {
            int e = zmq_errno();
            zmq_msg_close(m);
            size_t keep = rx->idlen;
            rx_release(rx);
            rx->idlen = keep;
            return e == EAGAIN ? PROTO_ERR_AGAIN : PROTO_ERR_ZMQ;
        }
        flags = 0;
        rx->nparts++;
        more = msg_more(m);
    }
    for (size_t i = 0; i < rx->nparts; i++) {
        rx->frames[i].data = zmq_msg_data(&rx->parts[i]);
        rx->frames[i].len = zmq_msg_size(&rx->parts[i]);
    }
    rx->nframes = rx->nparts;
    return PROTO_OK;
}
