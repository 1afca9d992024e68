/* proto/wire tests over real ZeroMQ sockets (inproc and loopback TCP): a
 * message goes DEALER -> ROUTER and back with the identity, tensor frames
 * arrive intact; a message of too many frames is drained and reported; a
 * non-blocking receive with nothing waiting says PROTO_ERR_AGAIN; a frame
 * over ZMQ_MAXMSGSIZE never reaches the receiver; CURVE with a ZAP allow-list
 * lets the listed client in and keeps an unlisted one and a plain one out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "proto/wire.h"
#include "samples.h"
#include "tests/expect.h"


int main(void)
{
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    EXPECT(proto_socket_setup(router, 1 << 20, 1000, 3000) == PROTO_OK, "setup router");
    EXPECT(proto_socket_setup(dealer, 1 << 20, 0, 0) == PROTO_OK, "setup dealer");
    int64_t mm = 0;
    size_t sz = sizeof mm;
    zmq_getsockopt(router, ZMQ_MAXMSGSIZE, &mm, &sz);
    EXPECT(mm == 1 << 20, "ZMQ_MAXMSGSIZE %lld", (long long)mm);
    int ivl = 0;
    sz = sizeof ivl;
    zmq_getsockopt(router, ZMQ_HEARTBEAT_IVL, &ivl, &sz);
    EXPECT(ivl == 1000, "ZMQ_HEARTBEAT_IVL %d", ivl);
    int timeo = 2000;
    zmq_setsockopt(router, ZMQ_RCVTIMEO, &timeo, sizeof timeo);
    zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeo, sizeof timeo);
    EXPECT(zmq_bind(router, "inproc://wire-test") == 0, "bind");
    EXPECT(zmq_connect(dealer, "inproc://wire-test") == 0, "connect");

    struct proto_msg m;
    proto_msg_init(&m);
    struct proto_rx rx;
    proto_rx_init(&rx);
    EXPECT(proto_recv(router, &rx, true, ZMQ_DONTWAIT) == PROTO_ERR_AGAIN, "nothing waiting");

    /* dealer -> router: a batch */
    EXPECT(sample_encode(PROTO_TYPE_BATCH, &m) == PROTO_OK, "encode batch");
    EXPECT(proto_send(dealer, NULL, 0, &m, 0) == PROTO_OK, "send batch");
    enum proto_status st = proto_recv(router, &rx, true, 0);
    EXPECT(st == PROTO_OK, "recv batch: %s", proto_status_str(st));
    EXPECT(rx.idlen > 0 && rx.nframes == m.nframes, "identity %zu, %zu frames", rx.idlen, rx.nframes);
    struct proto_batch b;
    struct proto_diag d;
    st = proto_batch_decode(rx.frames, rx.nframes, &(struct proto_decode_opts){.run = SAMPLE_RUN}, &b, &d);
    EXPECT(st == PROTO_OK, "decode received batch: %s %s", proto_status_str(st), d.detail);
    const struct proto_batch *sb = sample_struct(PROTO_TYPE_BATCH);
    EXPECT(st == PROTO_OK && !memcmp(b.crops[0].data, sb->crops[0].data, sb->crops[0].nbytes) &&
               !memcmp(b.labels.data, sb->labels.data, sb->labels.nbytes),
           "tensor frames intact");

    /* router -> dealer: an order, addressed by identity */
    uint8_t id[PROTO_MAX_IDENTITY];
    size_t idlen = rx.idlen;
    memcpy(id, rx.identity, idlen);
    EXPECT(sample_encode(PROTO_TYPE_ORDER, &m) == PROTO_OK, "encode order");
    EXPECT(proto_send(router, id, idlen, &m, 0) == PROTO_OK, "send order");
    st = proto_recv(dealer, &rx, false, 0);
    EXPECT(st == PROTO_OK && rx.idlen == 0 && rx.nframes == 2, "recv order: %s", proto_status_str(st));
    struct proto_order o;
    EXPECT(proto_order_decode(rx.frames, rx.nframes, NULL, &o, NULL) == PROTO_OK && o.n_images == 5 &&
               ((const uint32_t *)o.indices.data)[3] == 99999,
           "decode received order");

    /* too many frames: drained, reported with the identity, next one fine */
    for (int i = 0; i < PROTO_MAX_FRAMES + 3; i++) {
        zmq_send(dealer, "x", 1, i + 1 < PROTO_MAX_FRAMES + 3 ? ZMQ_SNDMORE : 0);
    }
    EXPECT(sample_encode(PROTO_TYPE_READY, &m) == PROTO_OK, "encode ready");
    EXPECT(proto_send(dealer, NULL, 0, &m, 0) == PROTO_OK, "send ready");
    st = proto_recv(router, &rx, true, 0);
    EXPECT(st == PROTO_ERR_TOO_MANY_FRAMES && rx.idlen == idlen, "19 frames: %s", proto_status_str(st));
    st = proto_recv(router, &rx, true, 0);
    struct proto_ready r;
    EXPECT(st == PROTO_OK && proto_ready_decode(rx.frames, rx.nframes, NULL, &r, NULL) == PROTO_OK &&
               r.credit == 4,
           "message after the drained one: %s", proto_status_str(st));

    /* identity only (an empty ROUTER message) */
    zmq_send(dealer, "", 0, 0);
    st = proto_recv(router, &rx, true, 0);
    EXPECT(st == PROTO_OK && rx.nframes == 1 && rx.frames[0].len == 0, "one empty frame: %s", proto_status_str(st));
    EXPECT(proto_ready_decode(rx.frames, rx.nframes, NULL, &r, NULL) == PROTO_ERR_NO_FRAMES, "empty header");

    /* TCP: a frame over ZMQ_MAXMSGSIZE is refused by the receiver */
    void *rt = zmq_socket(ctx, ZMQ_ROUTER);
    void *dt = zmq_socket(ctx, ZMQ_DEALER);
    proto_socket_setup(rt, 4096, 0, 0);
    proto_socket_setup(dt, -1, 0, 0);
    int shortto = 500;
    zmq_setsockopt(rt, ZMQ_RCVTIMEO, &shortto, sizeof shortto);
    EXPECT(zmq_bind(rt, "tcp://127.0.0.1:*") == 0, "bind tcp");
    char ep[256];
    sz = sizeof ep;
    zmq_getsockopt(rt, ZMQ_LAST_ENDPOINT, ep, &sz);
    EXPECT(zmq_connect(dt, ep) == 0, "connect tcp");
    static char big[8192];
    struct proto_msg bigm = {.frames = {{big, sizeof big}}, .nframes = 1};
    EXPECT(proto_send(dt, NULL, 0, &bigm, 0) == PROTO_OK, "send big");
    st = proto_recv(rt, &rx, true, 0);
    EXPECT(st == PROTO_ERR_AGAIN, "oversized frame dropped: %s", proto_status_str(st));

    zmq_close(rt);
    zmq_close(dt);

    /* CURVE: a server keypair, an allowed client, an unknown client, a plain one */
    if (!zmq_has("curve")) {
        printf("libzmq without CURVE: CURVE part skipped\n");
    } else {
        char dir[] = "/tmp/swav-test-curve-XXXXXX";
        EXPECT(mkdtemp(dir) != NULL, "mkdtemp");
        char skey[256], spub[256], ckey[256], cpub[256], bad[256];
        snprintf(skey, sizeof skey, "%s/server.key", dir);
        snprintf(spub, sizeof spub, "%s/server.pub", dir);
        snprintf(ckey, sizeof ckey, "%s/client.key", dir);
        snprintf(cpub, sizeof cpub, "%s/client.pub", dir);
        snprintf(bad, sizeof bad, "%s/bad.pub", dir);
        char err[512] = "";
        EXPECT(proto_curve_keygen(skey, spub, err, sizeof err) == PROTO_OK, "keygen: %s", err);
        EXPECT(proto_curve_keygen(ckey, cpub, err, sizeof err) == PROTO_OK, "keygen: %s", err);
        struct stat kst;
        EXPECT(stat(skey, &kst) == 0 && (kst.st_mode & 0777) == 0600, "secret key file mode");
        char pub[PROTO_Z85_KEY_LEN + 1], sec[PROTO_Z85_KEY_LEN + 1];
        EXPECT(proto_curve_load(ckey, pub, sec, err, sizeof err) == PROTO_OK && strlen(sec) == 40, "load");
        EXPECT(proto_curve_load(spub, pub, sec, err, sizeof err) == PROTO_ERR_BAD_ARG &&
                   strstr(err, "server.pub"),
               "a public-key file has no secret: %s", err);
        FILE *fp = fopen(bad, "w");
        fprintf(fp, "# comment\npublic not-a-key\n");
        fclose(fp);
        EXPECT(proto_curve_load(bad, pub, NULL, err, sizeof err) == PROTO_ERR_BAD_ARG &&
                   strstr(err, "bad.pub:2"),
               "bad key line named: %s", err);

        void *cctx = zmq_ctx_new();
        struct proto_zap *zap = proto_zap_new(cctx, cpub, err, sizeof err);
        EXPECT(zap != NULL, "ZAP handler: %s", err);
        void *srv = zmq_socket(cctx, ZMQ_ROUTER);
        proto_socket_setup(srv, 1 << 20, 0, 0);
        zmq_setsockopt(srv, ZMQ_RCVTIMEO, &shortto, sizeof shortto);
        EXPECT(proto_socket_curve_server(srv, skey, err, sizeof err) == PROTO_OK, "server: %s", err);
        EXPECT(zmq_bind(srv, "tcp://127.0.0.1:*") == 0, "bind curve");
        sz = sizeof ep;
        zmq_getsockopt(srv, ZMQ_LAST_ENDPOINT, ep, &sz);
        void *good = zmq_socket(cctx, ZMQ_DEALER);
        void *stranger = zmq_socket(cctx, ZMQ_DEALER);
        void *plain = zmq_socket(cctx, ZMQ_DEALER);
        proto_socket_setup(good, -1, 0, 0);
        proto_socket_setup(stranger, -1, 0, 0);
        proto_socket_setup(plain, -1, 0, 0);
        EXPECT(proto_socket_curve_client(good, spub, ckey, err, sizeof err) == PROTO_OK, "client: %s", err);
        EXPECT(proto_socket_curve_client(stranger, spub, NULL, err, sizeof err) == PROTO_OK, "stranger: %s", err);
        zmq_connect(stranger, ep);
        zmq_connect(plain, ep);
        EXPECT(sample_encode(PROTO_TYPE_READY, &m) == PROTO_OK, "encode ready");
        proto_send(stranger, NULL, 0, &m, ZMQ_DONTWAIT);
        proto_send(plain, NULL, 0, &m, ZMQ_DONTWAIT);
        st = proto_recv(srv, &rx, true, 0);
        EXPECT(st == PROTO_ERR_AGAIN, "unlisted and plain clients kept out: %s", proto_status_str(st));
        zmq_connect(good, ep);
        EXPECT(proto_send(good, NULL, 0, &m, 0) == PROTO_OK, "allowed client sends");
        int longto = 10000; /* handshake + ZAP on a loaded machine */
        zmq_setsockopt(srv, ZMQ_RCVTIMEO, &longto, sizeof longto);
        st = proto_recv(srv, &rx, true, 0);
        EXPECT(st == PROTO_OK && proto_ready_decode(rx.frames, rx.nframes, NULL, &r, NULL) == PROTO_OK,
               "allowed client's message arrives: %s", proto_status_str(st));
        uint64_t acc = 0, ref = 0;
        proto_zap_counts(zap, &acc, &ref);
        EXPECT(acc >= 1 && ref >= 1, "ZAP accepted %llu, refused %llu", (unsigned long long)acc,
               (unsigned long long)ref);
        zmq_close(good);
        zmq_close(stranger);
        zmq_close(plain);
        zmq_close(srv);
        proto_zap_destroy(&zap);
        EXPECT(zap == NULL, "destroy clears the pointer");
        zmq_ctx_term(cctx);
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    }

    proto_rx_free(&rx);
    proto_msg_free(&m);
    zmq_close(router);
    zmq_close(dealer);
    zmq_ctx_term(ctx);
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
