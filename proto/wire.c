/* ZeroMQ send/receive of proto messages: see wire.h. */
#include "wire.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "common/check.h"
#include "common/fileio.h"
#include "common/log.h"

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

void proto_rx_free(struct proto_rx *rx)
{
    rx_release(rx);
    free(rx->align_buf);
    rx->align_buf = NULL;
    rx->align_cap = 0;
}

#define RX_ALIGN 16

/* Points frames 1.. (tensors) that are not RX_ALIGN-aligned at aligned
 * copies in rx->align_buf (out of memory aborts, as every allocation does). */
static void rx_align_frames(struct proto_rx *rx)
{
    size_t need = 0;
    for (size_t i = 1; i < rx->nframes; i++) {
        if ((uintptr_t)rx->frames[i].data % RX_ALIGN) {
            need += (rx->frames[i].len + RX_ALIGN - 1) / RX_ALIGN * RX_ALIGN;
        }
    }
    if (need == 0) {
        return;
    }
    if (need > rx->align_cap) {
        free(rx->align_buf);
        rx->align_buf = aligned_alloc(RX_ALIGN, need);
        if (!rx->align_buf) {
            fprintf(stderr, "out of memory aligning %zu bytes of received frames\n", need);
            abort();
        }
        rx->align_cap = need;
    }
    size_t off = 0;
    for (size_t i = 1; i < rx->nframes; i++) {
        if ((uintptr_t)rx->frames[i].data % RX_ALIGN) {
            memcpy(rx->align_buf + off, rx->frames[i].data, rx->frames[i].len);
            rx->frames[i].data = rx->align_buf + off;
            off += (rx->frames[i].len + RX_ALIGN - 1) / RX_ALIGN * RX_ALIGN;
        }
    }
}

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
    rx_align_frames(rx);
    return PROTO_OK;
}

/* ---- CURVE ------------------------------------------------------------------ */

#define KEYFILE_MAX (1 << 20)
#define ZAP_MAX_KEYS 4096

/* One "public|secret <z85>" line: returns 1 and fills kind/key, 0 for a blank
 * or comment line, -1 for anything else. */
static int parse_key_line(char *line, char *kind, char key[PROTO_Z85_KEY_LEN + 1])
{
    /* '#' is a Z85 digit: only a line that starts with it is a comment */
    const char *first = line + strspn(line, " \t\r");
    if (*first == '#') return 0;
    char word[16], val[64], extra[2];
    int n = sscanf(line, "%15s %63s %1s", word, val, extra);
    if (n <= 0) return 0;
    if (n != 2 || strlen(val) != PROTO_Z85_KEY_LEN) return -1;
    if (!strcmp(word, "public")) *kind = 'p';
    else if (!strcmp(word, "secret")) *kind = 's';
    else return -1;
    uint8_t bin[32];
    if (!zmq_z85_decode(bin, val)) return -1;
    memcpy(key, val, PROTO_Z85_KEY_LEN + 1);
    return 1;
}

/* Calls fn for every key line of the file. */
static enum proto_status for_each_key(const char *path,
                                      int (*fn)(void *arg, char kind, const char *key),
                                      void *arg, char *err, size_t errlen)
{
    void *data = NULL;
    size_t len = 0;
    if (swav_file_read_all(path, KEYFILE_MAX, &data, &len, err, errlen) != 0) {
        return PROTO_ERR_BAD_ARG;
    }
    enum proto_status st = PROTO_OK;
    char *save = NULL;
    int lineno = 0;
    for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char kind = 0;
        char key[PROTO_Z85_KEY_LEN + 1];
        int r = parse_key_line(line, &kind, key);
        if (r < 0) {
            snprintf(err, errlen, "%s:%d: expected 'public <z85 key>' or 'secret <z85 key>'",
                     path, lineno);
            st = PROTO_ERR_BAD_ARG;
            break;
        }
        if (r > 0 && fn(arg, kind, key) != 0) {
            snprintf(err, errlen, "%s:%d: too many keys", path, lineno);
            st = PROTO_ERR_BAD_ARG;
            break;
        }
    }
    free(data);
    return st;
}

struct keypair {
    char pub[PROTO_Z85_KEY_LEN + 1], sec[PROTO_Z85_KEY_LEN + 1];
};

static int take_pair(void *arg, char kind, const char *key)
{
    struct keypair *kp = arg;
    memcpy(kind == 'p' ? kp->pub : kp->sec, key, PROTO_Z85_KEY_LEN + 1);
    return 0;
}

enum proto_status proto_curve_load(const char *path, char public_key[PROTO_Z85_KEY_LEN + 1],
                                   char secret_key[PROTO_Z85_KEY_LEN + 1], char *err,
                                   size_t errlen)
{
    struct keypair kp = {"", ""};
    enum proto_status st = for_each_key(path, take_pair, &kp, err, errlen);
    if (st) return st;
    if (!kp.pub[0] || (secret_key && !kp.sec[0])) {
        snprintf(err, errlen, "%s: no %s key", path, kp.pub[0] ? "secret" : "public");
        return PROTO_ERR_BAD_ARG;
    }
    memcpy(public_key, kp.pub, sizeof kp.pub);
    if (secret_key) memcpy(secret_key, kp.sec, sizeof kp.sec);
    return PROTO_OK;
}

enum proto_status proto_curve_keygen(const char *keypair_path, const char *public_path,
                                     char *err, size_t errlen)
{
    char pub[PROTO_Z85_KEY_LEN + 1], sec[PROTO_Z85_KEY_LEN + 1];
    if (zmq_curve_keypair(pub, sec) != 0) {
        snprintf(err, errlen, "zmq_curve_keypair: %s (libzmq without CURVE?)",
                 zmq_strerror(zmq_errno()));
        return PROTO_ERR_ZMQ;
    }
    char both[128], one[64];
    int n2 = snprintf(both, sizeof both, "public %s\nsecret %s\n", pub, sec);
    int n1 = snprintf(one, sizeof one, "public %s\n", pub);
    struct iovec v2 = {both, (size_t)n2}, v1 = {one, (size_t)n1};
    if (swav_file_writev_atomic(keypair_path, &v2, 1, 0600, err, errlen) != 0 ||
        swav_file_writev_atomic(public_path, &v1, 1, 0644, err, errlen) != 0) {
        return PROTO_ERR_BAD_ARG;
    }
    return PROTO_OK;
}

enum proto_status proto_socket_curve_server(void *sock, const char *keypair_path, char *err,
                                            size_t errlen)
{
    struct keypair kp;
    enum proto_status st = proto_curve_load(keypair_path, kp.pub, kp.sec, err, errlen);
    if (st) return st;
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, kp.sec, PROTO_Z85_KEY_LEN + 1) != 0) {
        snprintf(err, errlen, "CURVE server options: %s", zmq_strerror(zmq_errno()));
        return PROTO_ERR_ZMQ;
    }
    return PROTO_OK;
}

enum proto_status proto_socket_curve_client(void *sock, const char *server_public_path,
                                            const char *client_keypair_path, char *err,
                                            size_t errlen)
{
    char server_pub[PROTO_Z85_KEY_LEN + 1];
    enum proto_status st = proto_curve_load(server_public_path, server_pub, NULL, err, errlen);
    if (st) return st;
    struct keypair kp;
    if (client_keypair_path) {
        st = proto_curve_load(client_keypair_path, kp.pub, kp.sec, err, errlen);
        if (st) return st;
    } else if (zmq_curve_keypair(kp.pub, kp.sec) != 0) {
        snprintf(err, errlen, "zmq_curve_keypair: %s", zmq_strerror(zmq_errno()));
        return PROTO_ERR_ZMQ;
    }
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_pub, PROTO_Z85_KEY_LEN + 1) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, kp.pub, PROTO_Z85_KEY_LEN + 1) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, kp.sec, PROTO_Z85_KEY_LEN + 1) != 0) {
        snprintf(err, errlen, "CURVE client options: %s", zmq_strerror(zmq_errno()));
        return PROTO_ERR_ZMQ;
    }
    return PROTO_OK;
}

/* ---- ZAP handler ------------------------------------------------------------ */

struct proto_zap {
    void *sock; /* REP on inproc://zeromq.zap.01, used by the thread only */
    pthread_t thread;
    char *what;       /* proto_zap_new_logged's link name, or NULL: refusals not logged */
    char *allow_path; /* likewise, for the log line */
    atomic_int stop;
    atomic_uint_least64_t accepted, refused;
    size_t nkeys;
    uint8_t keys[][32]; /* allowed client public keys, binary */
};

struct allow_list {
    uint8_t (*keys)[32];
    size_t n, cap;
};

static int take_allowed(void *arg, char kind, const char *key)
{
    struct allow_list *al = arg;
    if (kind != 'p') return 0; /* a keypair file may be listed too: its public key */
    if (al->n == al->cap) return -1;
    zmq_z85_decode(al->keys[al->n++], key);
    return 0;
}

static void zap_send(void *sock, const char *text, size_t len, int more)
{
    zmq_send(sock, text, len, more ? ZMQ_SNDMORE : 0);
}

/* One warning for a refused ZAP request: the peer's address (frame 3; empty
 * for ipc://) and, for CURVE, its public key. */
static void zap_log_refusal(const struct proto_zap *z, zmq_msg_t *part, int nparts)
{
    char addr[128] = "", key[PROTO_Z85_KEY_LEN + 1] = "";
    if (nparts >= 4) {
        size_t n = zmq_msg_size(&part[3]);
        if (n >= sizeof addr) n = sizeof addr - 1;
        memcpy(addr, zmq_msg_data(&part[3]), n);
        addr[n] = '\0';
        for (size_t i = 0; i < n; i++) {
            if (addr[i] < 0x20 || addr[i] > 0x7e) addr[i] = '?';
        }
    }
    bool curve = nparts >= 7 && zmq_msg_size(&part[5]) == 5 &&
                 !memcmp(zmq_msg_data(&part[5]), "CURVE", 5) && zmq_msg_size(&part[6]) == 32;
    if (curve) zmq_z85_encode(key, zmq_msg_data(&part[6]), 32);
    if (curve) {
        LOG_LIMITED(SWAV_LOG_WARN, "%s: refused a connection from %s: CURVE key %s is not in %s",
                    z->what, addr[0] ? addr : "a local peer", key, z->allow_path);
    } else {
        LOG_LIMITED(SWAV_LOG_WARN, "%s: refused a connection from %s: not a CURVE client",
                    z->what, addr[0] ? addr : "a local peer");
    }
}

static void *zap_main(void *arg)
{
    struct proto_zap *z = arg;
    while (!atomic_load(&z->stop)) {
        /* request: version, request id, domain, address, identity, mechanism, credentials... */
        zmq_msg_t part[8];
        int nparts = 0, more = 1, bad = 0;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, z->sock, 0) < 0) {
                zmq_msg_close(&m);
                bad = -1;
                break;
            }
            more = zmq_msg_more(&m);
            if (nparts < 8) {
                part[nparts++] = m;
            } else {
                zmq_msg_close(&m);
                bad = 1;
            }
        }
        if (bad < 0) { /* timeout (stop flag polled) or context ending */
            for (int i = 0; i < nparts; i++) zmq_msg_close(&part[i]);
            if (zmq_errno() == ETERM) break;
            continue;
        }
        int ok = 0;
        if (!bad && nparts >= 7 && zmq_msg_size(&part[5]) == 5 &&
            !memcmp(zmq_msg_data(&part[5]), "CURVE", 5) && zmq_msg_size(&part[6]) == 32) {
            for (size_t k = 0; k < z->nkeys && !ok; k++) {
                ok = !memcmp(z->keys[k], zmq_msg_data(&part[6]), 32);
            }
        }
        atomic_fetch_add(ok ? &z->accepted : &z->refused, 1);
        if (!ok && z->what) zap_log_refusal(z, part, nparts);
        zap_send(z->sock, "1.0", 3, 1);
        if (nparts >= 2) {
            zmq_send(z->sock, zmq_msg_data(&part[1]), zmq_msg_size(&part[1]), ZMQ_SNDMORE);
        } else {
            zap_send(z->sock, "", 0, 1);
        }
        zap_send(z->sock, ok ? "200" : "400", 3, 1);
        zap_send(z->sock, ok ? "OK" : "client key not allowed", ok ? 2 : 22, 1);
        zap_send(z->sock, "", 0, 1); /* user id */
        zap_send(z->sock, "", 0, 0); /* metadata */
        for (int i = 0; i < nparts; i++) zmq_msg_close(&part[i]);
    }
    return NULL;
}

struct proto_zap *proto_zap_new_logged(void *zmq_ctx, const char *allow_list_path,
                                       const char *what, char *err, size_t errlen)
{
    struct proto_zap *z = swav_xcalloc(1, sizeof *z + ZAP_MAX_KEYS * 32);
    struct allow_list al = {z->keys, 0, ZAP_MAX_KEYS};
    if (for_each_key(allow_list_path, take_allowed, &al, err, errlen) != PROTO_OK) {
        free(z);
        return NULL;
    }
    z->nkeys = al.n;
    if (what) {
        z->what = swav_xstrdup(what);
        z->allow_path = swav_xstrdup(allow_list_path);
    }
    z->sock = zmq_socket(zmq_ctx, ZMQ_REP);
    int timeo = 100, linger = 0;
    if (!z->sock || zmq_setsockopt(z->sock, ZMQ_RCVTIMEO, &timeo, sizeof timeo) != 0 ||
        zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(z->sock, "inproc://zeromq.zap.01") != 0) {
        snprintf(err, errlen, "ZAP handler: %s (one per context)", zmq_strerror(zmq_errno()));
        if (z->sock) zmq_close(z->sock);
        free(z->what);
        free(z->allow_path);
        free(z);
        return NULL;
    }
    PTHREAD_CHECK(pthread_create(&z->thread, NULL, zap_main, z));
    return z;
}

struct proto_zap *proto_zap_new(void *zmq_ctx, const char *allow_list_path, char *err,
                                size_t errlen)
{
    return proto_zap_new_logged(zmq_ctx, allow_list_path, NULL, err, errlen);
}

void proto_zap_counts(const struct proto_zap *zap, uint64_t *accepted, uint64_t *refused)
{
    *accepted = atomic_load(&((struct proto_zap *)zap)->accepted);
    *refused = atomic_load(&((struct proto_zap *)zap)->refused);
}

void proto_zap_destroy(struct proto_zap **zap)
{
    if (!zap || !*zap) return;
    struct proto_zap *z = *zap;
    atomic_store(&z->stop, 1);
    PTHREAD_CHECK(pthread_join(z->thread, NULL));
    zmq_close(z->sock);
    free(z->what);
    free(z->allow_path);
    free(z);
    *zap = NULL;
}
