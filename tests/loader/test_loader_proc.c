/* swav-loader as a process against bad input (suite 'fault'): this test is
 * the consumer (a ROUTER over ipc://) and sends the loader garbage, too many
 * frames, the wrong message type, another run's order, orders for images or
 * data sets it does not have, an oversized message, and a flood of garbage.
 * The loader must answer with `error` messages (naming the order's step where
 * there is one), keep its stderr rate-limited, still serve a valid order with
 * the right geometry and labels, and exit 0 on SIGTERM.
 * The image folder (2 classes x 3 JPEGs, 40x40) is made here with turbojpeg.
 * usage: test_loader_proc SWAV_LOADER */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zmq.h>

#include "common/check.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "proto/wire.h"

extern char **environ;

#define RUN "procrun"

#define EXPECT(cond, ...)                                                        \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                        \
            fprintf(stderr, "\n");                                               \
            cleanup();                                                           \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

static pid_t g_pid;
static char g_tmp[256];

static void cleanup(void)
{
    if (g_pid > 0) {
        kill(g_pid, SIGKILL);
        waitpid(g_pid, NULL, 0);
        g_pid = 0;
    }
    if (g_tmp[0] && getenv("KEEP_TMP")) {
        fprintf(stderr, "kept %s\n", g_tmp);
    } else if (g_tmp[0]) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    }
}

static void write_jpeg(const char *path, int seed)
{
    enum { W = 40, H = 40 };
    static uint8_t px[W * H * 3];
    for (int i = 0; i < W * H * 3; i++) px[i] = (uint8_t)(i * 7 + seed * 31 + (i / 120) * 3);
    tjhandle tj = tjInitCompress();
    unsigned char *jpg = NULL;
    unsigned long len = 0;
    SWAV_ASSERT(tjCompress2(tj, px, W, 0, H, TJPF_RGB, &jpg, &len, TJSAMP_420, 90, 0) == 0);
    FILE *f = fopen(path, "wb");
    SWAV_ASSERT(f && fwrite(jpg, 1, len, f) == len);
    fclose(f);
    tjFree(jpg);
    tjDestroy(tj);
}

static void *g_router;
static struct proto_rx g_rx;
static uint8_t g_id[PROTO_MAX_IDENTITY];
static size_t g_idlen;

/* Next message of type `want` within ms (ready messages update the loader's
 * identity and are skipped unless wanted); PROTO_TYPE_NONE on timeout. */
static enum proto_type recv_type(enum proto_type want, int ms)
{
    int64_t until = swav_now_ms() + ms;
    while (swav_now_ms() < until) {
        zmq_pollitem_t it = {.socket = g_router, .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 50);
        if (proto_recv(g_router, &g_rx, true, ZMQ_DONTWAIT) != PROTO_OK) continue;
        struct proto_header h;
        if (proto_peek_type(g_rx.frames, g_rx.nframes, NULL, &h, NULL) != PROTO_OK) continue;
        if (h.type == PROTO_TYPE_READY) {
            memcpy(g_id, g_rx.identity, g_rx.idlen);
            g_idlen = g_rx.idlen;
        }
        if (h.type == want) return h.type;
    }
    return PROTO_TYPE_NONE;
}

static void send_raw(const void *const *frames, const size_t *lens, int n)
{
    zmq_send(g_router, g_id, g_idlen, ZMQ_SNDMORE);
    for (int i = 0; i < n; i++) zmq_send(g_router, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0);
}

static struct proto_msg g_msg;
static uint32_t g_idx[4];

static void send_order(const char *run, uint64_t step, uint32_t first_index, const char *dataset)
{
    struct proto_order o = {.order_id = 1000 + step, .epoch = 0, .step = step, .seed = 5,
                            .mode = PROTO_MODE_SWAV, .ngroups = 2, .n_images = 4};
    o.nmb_crops[0] = 2;
    o.size_crops[0] = 32;
    o.min_scale_crops[0] = 0.14;
    o.max_scale_crops[0] = 1;
    o.nmb_crops[1] = 2;
    o.size_crops[1] = 16;
    o.min_scale_crops[1] = 0.05;
    o.max_scale_crops[1] = 0.14;
    snprintf(o.dataset, sizeof o.dataset, "%s", dataset);
    for (int i = 0; i < 4; i++) g_idx[i] = first_index + (uint32_t)i;
    uint64_t d = 4;
    proto_tensor_set(&o.indices, PROTO_DTYPE_U32, g_idx, 1, &d);
    SWAV_ASSERT(proto_order_encode(&g_msg, run, &o) == PROTO_OK);
    SWAV_ASSERT(proto_send(g_router, g_id, g_idlen, &g_msg, 0) == PROTO_OK);
}

static struct proto_error g_err;

static void expect_error(const char *what, enum proto_errcode code, uint64_t step)
{
    enum proto_type t = recv_type(PROTO_TYPE_ERROR, 5000);
    EXPECT(t == PROTO_TYPE_ERROR, "%s: no error answer", what);
    EXPECT(proto_error_decode(g_rx.frames, g_rx.nframes, NULL, &g_err, NULL) == PROTO_OK,
           "%s: error decodes", what);
    EXPECT(g_err.code == code && g_err.step == step, "%s: error code %d step %" PRIu64
           " (want %d, %" PRIu64 "): %s", what, g_err.code, g_err.step, code, step, g_err.message);
    printf("ok: %s -> %s\n", what, g_err.message);
}

static int alive(void)
{
    int status;
    return waitpid(g_pid, &status, WNOHANG) == 0;
}

int main(int argc, char **argv)
{
    swav_log_init("test_loader_proc", -1);
    if (argc < 2) {
        fprintf(stderr, "usage: test_loader_proc SWAV_LOADER\n");
        return 2;
    }
    snprintf(g_tmp, sizeof g_tmp, "/tmp/swav-loader-proc-XXXXXX");
    SWAV_ASSERT(mkdtemp(g_tmp) != NULL);
    char path[600], ep[600], data[512], logp[600];
    snprintf(data, sizeof data, "%s/data", g_tmp);
    mkdir(data, 0755);
    for (int c = 0; c < 2; c++) {
        snprintf(path, sizeof path, "%s/class%d", data, c);
        mkdir(path, 0755);
        for (int i = 0; i < 3; i++) {
            snprintf(path, sizeof path, "%s/class%d/%d.jpg", data, c, i);
            write_jpeg(path, c * 3 + i);
        }
    }
    snprintf(ep, sizeof ep, "ipc://%s/s.sock", g_tmp);
    snprintf(logp, sizeof logp, "%s/loader.log", g_tmp);

    void *ctx = zmq_ctx_new();
    g_router = zmq_socket(ctx, ZMQ_ROUTER);
    proto_socket_setup(g_router, -1, 0, 0);
    ZMQ_CHECK(zmq_bind(g_router, ep));
    proto_rx_init(&g_rx);
    proto_msg_init(&g_msg);

    char *args[] = {argv[1], "--connect", ep, "--data_path", data, "--run", RUN,
                    "--workers", "2", "--beat_ms", "100", "--max_order_bytes", "65536",
                    "--report_s", "0", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, logp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    EXPECT(posix_spawn(&g_pid, argv[1], &fa, NULL, args, environ) == 0, "spawn %s", argv[1]);
    EXPECT(recv_type(PROTO_TYPE_READY, 10000) == PROTO_TYPE_READY, "loader says ready");

    /* 1. garbage */
    const void *f1[] = {"garbage"};
    size_t l1[] = {7};
    send_raw(f1, l1, 1);
    expect_error("garbage frame", PROTO_ERRC_BAD_MESSAGE, 0);
    /* 2. too many frames */
    const void *f2[20];
    size_t l2[20];
    for (int i = 0; i < 20; i++) {
        f2[i] = "x";
        l2[i] = 1;
    }
    send_raw(f2, l2, 20);
    expect_error("20 frames", PROTO_ERRC_BAD_MESSAGE, 0);
    /* 3. a message type a loader does not take */
    struct proto_ready r = {.credit = 1};
    snprintf(r.loader_id, sizeof r.loader_id, "me");
    SWAV_ASSERT(proto_ready_encode(&g_msg, RUN, &r) == PROTO_OK);
    SWAV_ASSERT(proto_send(g_router, g_id, g_idlen, &g_msg, 0) == PROTO_OK);
    expect_error("ready sent to a loader", PROTO_ERRC_BAD_MESSAGE, 0);
    /* 4. another run */
    send_order("otherrun", 3, 0, "");
    expect_error("another run's order", PROTO_ERRC_WRONG_RUN, 0);
    /* 5. images it does not have */
    send_order(RUN, 4, 4, "");
    expect_error("index out of range", PROTO_ERRC_BAD_MESSAGE, 4);
    /* 6. a data set it does not serve */
    send_order(RUN, 5, 0, "val");
    expect_error("unknown data set", PROTO_ERRC_BAD_MESSAGE, 5);
    /* 7. oversized (ZMQ_MAXMSGSIZE 64 KiB): libzmq drops the connection,
     * the loader reconnects and says ready again. */
    static char big[100000];
    const void *f7[] = {big};
    size_t l7[] = {sizeof big};
    send_raw(f7, l7, 1);
    g_idlen = 0;
    EXPECT(recv_type(PROTO_TYPE_READY, 10000) == PROTO_TYPE_READY && g_idlen > 0,
           "loader back after an oversized message");
    EXPECT(alive(), "loader alive after an oversized message");
    /* 8. a flood of garbage: still alive, log rate-limited */
    for (int i = 0; i < 2000; i++) send_raw(f1, l1, 1);
    int errors = 0;
    while (errors < 2000 && recv_type(PROTO_TYPE_ERROR, 3000) == PROTO_TYPE_ERROR) errors++;
    EXPECT(alive(), "loader alive after a flood");
    printf("ok: flood of 2000 garbage messages, %d error answers\n", errors);
    /* 9. a valid order is served */
    send_order(RUN, 9, 2, "");
    EXPECT(recv_type(PROTO_TYPE_BATCH, 10000) == PROTO_TYPE_BATCH, "batch for a valid order");
    static struct proto_batch b;
    EXPECT(proto_batch_decode(g_rx.frames, g_rx.nframes, NULL, &b, NULL) == PROTO_OK, "batch decodes");
    EXPECT(b.step == 9 && b.order_id == 1009 && b.n_images == 4 && b.ngroups == 2 &&
           b.crops[0].shape[0] == 8 && b.crops[0].shape[1] == 32 && b.crops[1].shape[1] == 16,
           "batch geometry");
    const int32_t *lab = b.labels.data;
    EXPECT(lab[0] == 0 && lab[1] == 1 && lab[2] == 1 && lab[3] == 1, "labels %d %d %d %d",
           lab[0], lab[1], lab[2], lab[3]);
    EXPECT(b.n_notes == 0, "no notes");
    printf("ok: valid order served\n");
    /* 10. SIGTERM: exit 0 */
    kill(g_pid, SIGTERM);
    int status = 0;
    int64_t until = swav_now_ms() + 10000;
    pid_t w = 0;
    while ((w = waitpid(g_pid, &status, WNOHANG)) == 0 && swav_now_ms() < until) swav_sleep_ms(20);
    EXPECT(w == g_pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "exit 0 on SIGTERM (status %d)", status);
    g_pid = 0;
    /* The log: every line rate-limited, so far fewer than the 2000+ faults. */
    FILE *lf = fopen(logp, "r");
    int lines = 0;
    char line[2048];
    while (lf && fgets(line, sizeof line, lf)) lines++;
    if (lf) fclose(lf);
    EXPECT(lines > 3 && lines < 100, "loader log has %d lines (rate limited)", lines);
    printf("ok: loader log %d lines\n", lines);
    proto_rx_free(&g_rx);
    proto_msg_free(&g_msg);
    zmq_close(g_router);
    zmq_ctx_term(ctx);
    cleanup();
    printf("test_loader_proc: ok\n");
    return 0;
}
