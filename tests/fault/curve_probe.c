/* curve_probe: connect one ZeroMQ socket to an endpoint and report how the
 * handshake ended, for the CURVE fault tests (tests/fault/test_curve_train.py):
 * an intruder's key must be refused by every link's ZAP handler, a client
 * without CURVE must fail the handshake, a client with the right keys must
 * get in.  Nothing is sent.
 *
 *   curve_probe TYPE ENDPOINT SERVER_PUBLIC CLIENT_KEYPAIR SECONDS
 *
 * TYPE: push, sub or dealer.  SERVER_PUBLIC: the server's public key file,
 * or "-" for a plain (non-CURVE) client.  CLIENT_KEYPAIR: this client's
 * keypair file, or "-" for a fresh one.  Prints one line and exits 0:
 *   ok                    the handshake succeeded
 *   refused STATUS        the server's ZAP handler refused the key (400)
 *   protocol-error CODE   the handshake failed (CURVE on one side only, ...)
 *   closed                the server closed the connection before the handshake
 *                         ended (a CURVE server may hang up on a plain client
 *                         before the client has read its greeting)
 *   none                  no handshake within SECONDS (nothing listening)
 * Exit 2: bad arguments or a key file that does not read. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/timeutil.h"
#include "proto/wire.h"

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: curve_probe push|sub|dealer ENDPOINT SERVER_PUBLIC|- "
                        "CLIENT_KEYPAIR|- SECONDS\n");
        return 2;
    }
    int type = !strcmp(argv[1], "push")     ? ZMQ_PUSH
               : !strcmp(argv[1], "sub")    ? ZMQ_SUB
               : !strcmp(argv[1], "dealer") ? ZMQ_DEALER
                                            : -1;
    if (type < 0) {
        fprintf(stderr, "curve_probe: unknown socket type %s\n", argv[1]);
        return 2;
    }
    const char *ep = argv[2], *server_pub = argv[3], *client_kp = argv[4];
    double seconds = atof(argv[5]);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, type);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (type == ZMQ_SUB) zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0);
    if (strcmp(server_pub, "-") != 0) {
        char err[512];
        if (proto_socket_curve_client(s, server_pub, strcmp(client_kp, "-") ? client_kp : NULL,
                                      err, sizeof err) != PROTO_OK) {
            fprintf(stderr, "curve_probe: %s\n", err);
            return 2;
        }
    }
    if (zmq_socket_monitor(s, "inproc://probe-monitor",
                           ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0) {
        fprintf(stderr, "curve_probe: monitor: %s\n", zmq_strerror(zmq_errno()));
        return 2;
    }
    void *mon = zmq_socket(ctx, ZMQ_PAIR);
    zmq_connect(mon, "inproc://probe-monitor");
    if (zmq_connect(s, ep) != 0) {
        fprintf(stderr, "curve_probe: connect %s: %s\n", ep, zmq_strerror(zmq_errno()));
        return 2;
    }
    const char *result = "none";
    char line[64];
    int64_t until = swav_now_ms() + (int64_t)(seconds * 1000);
    while (swav_now_ms() < until) {
        zmq_pollitem_t item = {mon, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 100) <= 0) continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, mon, 0) < 0) {
            zmq_msg_close(&m);
            continue;
        }
        uint16_t ev = 0;
        uint32_t val = 0;
        if (zmq_msg_size(&m) >= 6) {
            memcpy(&ev, zmq_msg_data(&m), 2);
            memcpy(&val, (const char *)zmq_msg_data(&m) + 2, 4);
        }
        int more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        while (more) { /* the address frame */
            zmq_msg_init(&m);
            more = zmq_msg_recv(&m, mon, 0) >= 0 && zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            result = "ok";
        } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
            snprintf(line, sizeof line, "refused %u", (unsigned)val);
            result = line;
        } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
            snprintf(line, sizeof line, "protocol-error %#x", (unsigned)val);
            result = line;
        } else if (ev == ZMQ_EVENT_DISCONNECTED) {
            result = "closed";
        } else {
            continue;
        }
        break;
    }
    printf("%s\n", result);
    zmq_socket_monitor(s, NULL, 0);
    zmq_close(mon);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return 0;
}
