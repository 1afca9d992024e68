/* The NCCL collective (nn/cuda/nccl_collective.cu) as the trainer forms it:
 * bootstrapped over the ZeroMQ ring (trainer/ring.h), on the CUDA backend's
 * stream.
 *
 * One GPU: a communicator of one rank, its operations called directly (the
 * nn_allreduce_sum wrapper skips a world of one): an all-reduce of device
 * memory, of host memory (staged) and a broadcast leave the values as they
 * are (exact).
 * Buckets (the trainer's gradient all-reduce, any world): a device buffer
 * scaled by 2 on the backend's stream, then all-reduced in three pieces
 * started with allreduce_start (the last two with a host all-reduce between
 * them), then wait_all: every piece must see the scale (the communicator's
 * stream waits for the compute queued before each start) and sum exactly,
 * and the host all-reduce must complete.
 * Two GPUs or more: two processes, one GPU each, over an ipc ring:
 * all-reduce of device and host buffers against the exact sums (the values
 * are small integers: any order of float additions is exact), the same bits
 * on both ranks; a broadcast from rank 1; then rank 1 leaves and rank 0's
 * next all-reduce must fail (a timeout, or NCCL's own error if it notices
 * the peer first) with a message within its 2 s deadline, not hang; the
 * aborted communicator then fails every call at once.
 *
 * CUDA is not fork-safe once initialized, so the device count comes from a
 * probe child and the ranks fork before touching CUDA.
 *
 * Exit 77 without a device. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "nn/cuda/backend_cuda.h"
#include "nn/collective.h"
#include "nn/layers.h"
#include "trainer/ring.h"

static int failures;

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("FAIL: " __VA_ARGS__);                                                          \
            printf("\n");                                                                          \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static float value(int rank, size_t i)
{
    return (float)((int)(i % 97) - 40 + 100 * rank);
}

/* host[i] = this rank's value, want[i] = scale x the sum over the ranks'. */
static void fill(int rank, int world, size_t n, float scale, float *host, float *want)
{
    for (size_t i = 0; i < n; i++) {
        host[i] = value(rank, i);
        want[i] = 0;
        for (int r = 0; r < world; r++) {
            want[i] += scale * value(r, i);
        }
    }
}

/* Runs the checks on rank `rank` of `world`; returns the failure count. */
static int run_rank(int rank, int world, const char *const *eps)
{
    nn_backend_t *be = nn_backend_cuda_new(rank);
    if (!be) {
        printf("FAIL: rank %d: nn_backend_cuda_new(%d)\n", rank, rank);
        return 1;
    }
    void *ctx = NULL;
    char err[256];
    struct nn_collective *boot;
    if (world == 1) {
        boot = nn_collective_single_new();
    } else {
        ctx = zmq_ctx_new();
        boot = trainer_ring_new(ctx, rank, world, eps, 0x4cc1, 10000, NULL, err, sizeof err);
        if (!boot) {
            printf("FAIL: rank %d: ring: %s\n", rank, err);
            return 1;
        }
    }
    struct nn_collective *c = nn_collective_nccl_new(be, boot, world == 1 ? 10000 : 2000, err,
                                                     sizeof err);
    if (!c) {
        printf("FAIL: rank %d: nn_collective_nccl_new: %s\n", rank, err);
        return 1;
    }
    EXPECT(c->rank == rank && c->world == world, "rank %d: collective says %d of %d", rank,
           c->rank, c->world);
    static const size_t sizes[] = {1, 1000, 1 << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        float *host = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
        float *dev = nn_backend_alloc(be, n * sizeof(float));
        fill(rank, world, n, 1, host, want);
        nn_backend_copy(be, dev, host, n * sizeof(float));
        int st = c->ops->allreduce_sum(c, dev, n);
        EXPECT(st == 0, "rank %d: device all-reduce of %zu: %d %s", rank, n, st, c->err);
        float *back = malloc(n * sizeof(float));
        nn_backend_copy(be, back, dev, n * sizeof(float));
        EXPECT(!memcmp(back, want, n * sizeof(float)), "rank %d: device all-reduce of %zu: sums",
               rank, n);
        st = c->ops->allreduce_sum(c, host, n); /* host memory: staged */
        EXPECT(st == 0, "rank %d: host all-reduce of %zu: %d %s", rank, n, st, c->err);
        EXPECT(!memcmp(host, want, n * sizeof(float)), "rank %d: host all-reduce of %zu: sums",
               rank, n);
        printf("rank %d: all-reduce of %zu floats (device, host) %s\n", rank, n,
               failures ? "FAILED" : "exact");
        free(back);
        free(host);
        free(want);
        nn_backend_free(be, dev);
    }
    {
        size_t n = 3u << 18, third = n / 3;
        float *host = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
        float *dev = nn_backend_alloc(be, n * sizeof(float));
        fill(rank, world, n, 2, host, want);
        nn_backend_copy(be, dev, host, n * sizeof(float));
        nn_backend_scale(be, dev, n, 2.0f); /* queued: the buckets must come after it */
        int st = c->ops->allreduce_start(c, dev + 2 * third, n - 2 * third);
        EXPECT(st == 0, "rank %d: bucket 1 started: %d %s", rank, st, c->err);
        st = c->ops->allreduce_start(c, dev + third, third);
        EXPECT(st == 0, "rank %d: bucket 2 started: %d %s", rank, st, c->err);
        float x[2] = {1.0f, (float)rank};
        st = c->ops->allreduce_sum(c, x, 2); /* host, between the buckets */
        EXPECT(st == 0 && x[0] == (float)world && x[1] == (float)(world * (world - 1) / 2),
               "rank %d: host all-reduce between buckets: %d %s (%g %g)", rank, st, c->err,
               x[0], x[1]);
        st = c->ops->allreduce_start(c, dev, third);
        EXPECT(st == 0, "rank %d: bucket 3 started: %d %s", rank, st, c->err);
        st = c->ops->wait_all(c);
        EXPECT(st == 0, "rank %d: wait_all: %d %s", rank, st, c->err);
        nn_backend_copy(be, host, dev, n * sizeof(float));
        EXPECT(!memcmp(host, want, n * sizeof(float)), "rank %d: bucketed all-reduce: sums",
               rank);
        printf("rank %d: bucketed all-reduce of %zu floats in 3 %s\n", rank, n,
               failures ? "FAILED" : "exact");
        free(host);
        free(want);
        nn_backend_free(be, dev);
    }
    unsigned char blob[333];
    for (size_t i = 0; i < sizeof blob; i++) {
        blob[i] = (unsigned char)(rank == world - 1 ? i * 7 + 1 : 0xee);
    }
    int st = c->ops->broadcast(c, blob, sizeof blob, world - 1);
    int same = 1;
    for (size_t i = 0; i < sizeof blob; i++) {
        same &= blob[i] == (unsigned char)(i * 7 + 1);
    }
    EXPECT(st == 0 && same, "rank %d: broadcast from rank %d: %d %s", rank, world - 1, st, c->err);
    if (world > 1) {
        if (rank == 0) {
            sleep(1); /* rank 1 is gone (or going) */
            float x[8] = {0};
            double t0 = (double)time(NULL);
            st = c->ops->allreduce_sum(c, x, 8);
            double dt = (double)time(NULL) - t0;
            printf("rank 0 without its peer: status %d (%s) after ~%.0f s\n", st, c->err, dt);
            EXPECT(st != 0 && c->err[0] && dt < 10,
                   "rank 0: an all-reduce without rank 1 returned %d (%s)", st, c->err);
            st = c->ops->allreduce_sum(c, x, 8);
            EXPECT(st != 0, "rank 0: the aborted communicator answered %d", st);
        } else {
            _exit(failures ? 1 : 0); /* leave without a word: a dead peer */
        }
    }
    nn_collective_destroy(&c);
    nn_collective_destroy(&boot);
    if (ctx) {
        zmq_ctx_term(ctx);
    }
    nn_backend_destroy(&be);
    return failures;
}

int main(void)
{
    fflush(stdout);
    pid_t probe = fork();
    if (probe == 0) {
        int k = nn_cuda_device_count();
        if (k == 0) {
            printf("SKIP: no CUDA device (%s)\n", nn_cuda_count_error());
        }
        fflush(stdout);
        _exit(k > 100 ? 100 : k);
    }
    int pst = 0;
    waitpid(probe, &pst, 0);
    int n = WIFEXITED(pst) ? WEXITSTATUS(pst) : 0;
    if (n == 0) {
        return 77;
    }
    if (n == 1) {
        printf("one GPU: a communicator of one rank\n");
        int f = run_rank(0, 1, NULL);
        printf("%s: %d failure(s)\n", f ? "FAIL" : "PASS", f);
        return f ? 1 : 0;
    }
    char dir[] = "/tmp/swav-nccl-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char e0[96], e1[96];
    snprintf(e0, sizeof e0, "ipc://%s/r0", dir);
    snprintf(e1, sizeof e1, "ipc://%s/r1", dir);
    const char *eps[2] = {e0, e1};
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        _exit(run_rank(1, 2, eps) ? 1 : 0);
    }
    int f = run_rank(0, 2, eps);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        printf("FAIL: rank 1 exited with status %d\n", status);
        f++;
    }
    char path[128];
    snprintf(path, sizeof path, "%s/r0", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/r1", dir);
    unlink(path);
    rmdir(dir);
    printf("%s: %d failure(s)\n", f ? "FAIL" : "PASS", f);
    return f ? 1 : 0;
}
