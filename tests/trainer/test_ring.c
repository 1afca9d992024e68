/* Ring collective over real ZeroMQ sockets between real processes:
 * - all-reduce of W = 2, 3, 4 ranks equals the sum (|err| <= 1e-6 relative;
 *   the order of additions differs from a plain loop) with identical bits on
 *   every rank, for sizes smaller than, equal to and not divisible by W;
 * - broadcast from every root;
 * - a rank that never joins: the others get a timeout naming it, no hang. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "common/fileio.h"
#include "trainer/ring.h"

#define MAXW 4

static char eps[MAXW][128];
/* the ranks' ipc endpoints: ZeroMQ leaves a bound ipc socket's file behind
 * (zmq_close does not unlink it), so they live in a private folder,
 * removed at the end */
static char g_dir[64];

static float value(int rank, size_t i)
{
    return (float)((rank + 1) * 0.1 + sin((double)i * 0.37) * (rank + 2) * 1.3e-3 + 1.0 / (i + 1));
}

static uint64_t fnv(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* trainer/ring.c's frame header, for the garbage a stranger sends */
struct ring_hdr {
    uint32_t magic, kind;
    uint64_t run_tag, call;
    uint32_t chunk, from;
    uint64_t bytes;
};

static int with_garbage; /* run_world: a stranger pushes garbage to every rank */

/* A stranger's PUSH per endpoint: random bytes, a three-frame message, a
 * header of another run, headers of this run's tag (0xabcdef) for the first
 * call's chunks as if from the wrong rank, of the wrong size, of a later
 * call.  Every rank must drop them all and still sum right. */
static void send_garbage(void *ctx, int world, void **socks)
{
    static unsigned char junk[4096];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)(i * 131 + 7);
    for (int r = 0; r < world; r++) {
        void *s = socks[r] = zmq_socket(ctx, ZMQ_PUSH);
        int linger = 5000;
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
        zmq_connect(s, eps[r]);
        zmq_send(s, junk, 200, 0);
        zmq_send(s, junk, 48, ZMQ_SNDMORE);
        zmq_send(s, junk, 4, ZMQ_SNDMORE);
        zmq_send(s, junk, 4, 0);
        struct ring_hdr h = {0x52494e47u, 1, 0x1234, 1, 0, 0, 4};
        zmq_send(s, &h, sizeof h, ZMQ_SNDMORE);
        zmq_send(s, junk, 4, 0);
        h.run_tag = 0xabcdef;
        for (uint32_t c = 0; c < (uint32_t)world; c++) { /* call 1 is n = 1: chunk sizes 0/1 */
            h.chunk = c;
            h.from = (uint32_t)r; /* never the previous rank (from it, they would be a
                                     forgery that only CURVE keeps out) */
            h.bytes = c + 1 == (uint32_t)world ? 4 : 0;
            zmq_send(s, &h, sizeof h, ZMQ_SNDMORE);
            zmq_send(s, junk, h.bytes, 0);
        }
        h.from = (uint32_t)((r + world - 1) % world);
        h.chunk = 0;
        h.bytes = 4096; /* the right sender, the wrong size */
        zmq_send(s, &h, sizeof h, ZMQ_SNDMORE);
        zmq_send(s, junk, 4096, 0);
        h.call = 99;
        h.bytes = 4;
        zmq_send(s, &h, sizeof h, ZMQ_SNDMORE);
        zmq_send(s, junk, 4, 0);
    }
}

/* Child body: returns 0 on success; writes the result hash to fd. */
static int child(int rank, int world, int fd, int timeout_ms)
{
    void *ctx = zmq_ctx_new();
    const char *e[MAXW];
    for (int r = 0; r < world; r++) e[r] = eps[r];
    char err[256];
    struct nn_collective *c = trainer_ring_new(ctx, rank, world, e, 0xabcdef, timeout_ms, NULL, err, sizeof err);
    if (!c) {
        fprintf(stderr, "rank %d: %s\n", rank, err);
        return 1;
    }
    static const size_t sizes[] = {1, 3, 4, 1000, 100003};
    if (with_garbage) usleep(500 * 1000); /* the stranger's frames come first */
    uint64_t h = 0;
    int bad = 0;
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        float *buf = malloc(n * sizeof *buf);
        for (size_t i = 0; i < n; i++) buf[i] = value(rank, i);
        if (nn_allreduce_sum(c, buf, n) != 0) {
            fprintf(stderr, "rank %d: allreduce n=%zu: %s\n", rank, n, c->err);
            return 1;
        }
        for (size_t i = 0; i < n; i++) {
            double want = 0;
            for (int r = 0; r < world; r++) want += value(r, i);
            if (fabs(buf[i] - want) > 1e-6 * fabs(want) + 1e-7) {
                if (bad++ < 3) fprintf(stderr, "rank %d n=%zu [%zu]: %.9g want %.9g\n", rank, n, i, buf[i], want);
            }
        }
        h ^= fnv(buf, n * sizeof *buf) + k;
        free(buf);
    }
    for (int root = 0; root < world; root++) {
        char msg[64];
        snprintf(msg, sizeof msg, "root %d says hello", root);
        char got[64] = "";
        if (rank == root) memcpy(got, msg, sizeof msg);
        if (nn_broadcast(c, got, sizeof got, root) != 0) {
            fprintf(stderr, "rank %d: broadcast: %s\n", rank, c->err);
            return 1;
        }
        if (strcmp(got, msg)) {
            fprintf(stderr, "rank %d: broadcast from %d gave '%s'\n", rank, root, got);
            bad++;
        }
    }
    if (write(fd, &h, sizeof h) != sizeof h) bad++;
    nn_collective_destroy(&c);
    zmq_ctx_term(ctx);
    return bad ? 1 : 0;
}

static int run_world(int world)
{
    for (int r = 0; r < world; r++) snprintf(eps[r], sizeof eps[r], "ipc://%s/%d-%d", g_dir, world, r);
    int pfd[2];
    if (pipe(pfd)) return 1;
    pid_t pids[MAXW];
    for (int r = 0; r < world; r++) {
        pids[r] = fork();
        if (pids[r] == 0) {
            close(pfd[0]);
            _exit(child(r, world, pfd[1], 20000));
        }
    }
    close(pfd[1]);
    void *gctx = NULL, *gsocks[MAXW];
    if (with_garbage) {
        gctx = zmq_ctx_new();
        send_garbage(gctx, world, gsocks);
    }
    int fails = 0;
    for (int r = 0; r < world; r++) {
        int st;
        waitpid(pids[r], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) fails++;
    }
    uint64_t h[MAXW];
    int got = 0;
    while (got < world && read(pfd[0], &h[got], sizeof h[0]) == sizeof h[0]) got++;
    close(pfd[0]);
    if (gctx) {
        for (int r = 0; r < world; r++) zmq_close(gsocks[r]);
        zmq_ctx_term(gctx);
    }
    if (got != world) fails++;
    for (int r = 1; r < got; r++) {
        if (h[r] != h[0]) {
            fprintf(stderr, "world %d: rank results differ in bits\n", world);
            fails++;
        }
    }
    printf("world %d%s: %s\n", world, with_garbage ? " with a stranger's garbage" : "",
           fails ? "FAIL" : "ok (sums match, identical bits on all ranks)");
    return fails;
}

/* Rank 2 of 3 never starts: ranks 0 and 1 must fail with a timeout that
 * names a missing rank, within the deadline. */
static int run_missing_peer(void)
{
    for (int r = 0; r < 3; r++) snprintf(eps[r], sizeof eps[r], "ipc://%s/miss-%d", g_dir, r);
    int fails = 0;
    pid_t pids[2];
    for (int r = 0; r < 2; r++) {
        pids[r] = fork();
        if (pids[r] == 0) {
            void *ctx = zmq_ctx_new();
            const char *e[3] = {eps[0], eps[1], eps[2]};
            char err[256];
            struct nn_collective *c = trainer_ring_new(ctx, r, 3, e, 1, 500, NULL, err, sizeof err);
            float buf[10] = {0};
            int rc = nn_allreduce_sum(c, buf, 10);
            int ok = rc == NN_COLLECTIVE_ERR_TIMEOUT && strstr(c->err, "rank ") != NULL;
            fprintf(stderr, "rank %d saw: %s\n", r, c->err);
            nn_collective_destroy(&c);
            zmq_ctx_term(ctx);
            _exit(ok ? 0 : 1);
        }
    }
    for (int r = 0; r < 2; r++) {
        int st;
        waitpid(pids[r], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) fails++;
    }
    printf("missing peer: %s\n", fails ? "FAIL" : "ok (timeouts name the rank)");
    return fails;
}

int main(void)
{
    alarm(120); /* a hang is a failure, not a stuck CI */
    snprintf(g_dir, sizeof g_dir, "/tmp/swav-ring-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    int fails = 0;
    for (int w = 2; w <= MAXW; w++) fails += run_world(w);
    with_garbage = 1;
    fails += run_world(2);
    fails += run_world(3);
    with_garbage = 0;
    fails += run_missing_peer();
    char err[256];
    if (swav_rm_tree(g_dir, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        fails++;
    }
    return fails ? 1 : 0;
}
