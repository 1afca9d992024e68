/* The host-access guard (nn/guard.h) itself, so that the guard suite cannot
 * pass because the guard stopped guarding.  Each case runs in a child
 * process with SWAV_NN_GUARD=1 and its stderr captured:
 * - a read of nn_backend_alloc memory after a backend operation on it (the
 *   guard opens the memory for the operation and must close it again) dies
 *   by SIGSEGV with the guard's report naming the allocation;
 * - so does a write, and a read of the host optimizer's momentum after a
 *   step;
 * - nn_backend_copy, nn_backend_zero, a layer and the host optimizer's step
 *   on that memory work, and the values come back (exit 0);
 * - a layer handed host memory for its input aborts, naming the layer and
 *   the argument;
 * - with SWAV_NN_GUARD=0 the same stray read is allowed (exit 0): the guard
 *   is what stops it. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nn/backend.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "nn/params.h"

#define EXPECT_SHOW_COND 1
#include "tests/expect.h"

enum which { STRAY_READ, STRAY_WRITE, MOMENTUM_READ, PROPER_USE, HOST_INPUT };

static int child(enum which w)
{
    nn_backend_t *be = nn_backend_cpu_new(1);
    float *p = nn_backend_alloc(be, 64 * sizeof(float));
    float host[64];
    for (int i = 0; i < 64; i++) {
        host[i] = (float)i;
    }
    if (w == STRAY_READ || w == STRAY_WRITE) {
        nn_backend_copy(be, p, host, sizeof host); /* opened and closed again */
    }
    switch (w) {
    case STRAY_READ: {
        volatile float *v = p;
        printf("read %g\n", (double)v[3]);
        return 0;
    }
    case STRAY_WRITE:
        ((volatile float *)p)[5] = 1.0f;
        return 0;
    case MOMENTUM_READ: {
        struct nn_param_table t;
        nn_param_table_init(&t);
        int64_t shape[1] = {64};
        nn_param_table_add(&t, "w", 1, shape, 0);
        struct nn_optim_config oc = nn_optim_config_swav(0.0, 0);
        struct nn_optim o;
        nn_optim_init_on(&o, be, &t, &oc);
        float *g = nn_backend_alloc(be, 64 * sizeof(float));
        nn_backend_copy(be, g, host, sizeof host);
        nn_optim_step(&o, p, g, 0.1, 0);
        printf("momentum %g\n", (double)((volatile float *)o.momentum)[0]);
        return 0;
    }
    case PROPER_USE: {
        nn_backend_copy(be, p, host, sizeof host);
        float *q = nn_backend_alloc(be, 64 * sizeof(float));
        nn_backend_zero(be, q, 64 * sizeof(float));
        struct nn_tensor y = nn_tensor_2d(q, 8, 8), x = nn_tensor_2d(p, 8, 8);
        nn_accumulate(be, &y, &x); /* q = 0 + p */
        nn_accumulate(be, &y, &x); /* q = 2 p */
        float back[64];
        nn_backend_copy(be, back, q, sizeof back);
        for (int i = 0; i < 64; i++) {
            if (back[i] != 2.0f * (float)i) {
                printf("value %d: %g, want %g\n", i, (double)back[i], 2.0 * i);
                return 3;
            }
        }
        return 0;
    }
    case HOST_INPUT: {
        float *q = nn_backend_alloc(be, 64 * sizeof(float));
        struct nn_tensor y = nn_tensor_2d(q, 8, 8), x = nn_tensor_2d(host, 8, 8);
        nn_accumulate(be, &y, &x);
        return 0;
    }
    }
    return 4;
}

/* Runs case w with SWAV_NN_GUARD=guard; its exit status or signal in *sig,
 * its stderr into err. */
static int run(enum which w, const char *guard, int *sig, char *err, size_t errlen)
{
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        exit(2);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO);
        setenv("SWAV_NN_GUARD", guard, 1);
        _exit(child(w));
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < errlen && (r = read(fds[0], err + n, errlen - 1 - n)) > 0) {
        n += (size_t)r;
    }
    err[n] = '\0';
    char sink[512];
    while (read(fds[0], sink, sizeof sink) > 0) {
    }
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    *sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(void)
{
    char err[8192];
    int sig, rc;
    rc = run(STRAY_READ, "1", &sig, err, sizeof err);
    EXPECT(sig == SIGSEGV && strstr(err, "host code touched backend memory") &&
               strstr(err, "byte 12 of an allocation of 256 bytes"),
           "stray read: rc %d signal %d, stderr:\n%s", rc, sig, err);
    rc = run(STRAY_WRITE, "1", &sig, err, sizeof err);
    EXPECT(sig == SIGSEGV && strstr(err, "byte 20 of an allocation of 256 bytes"),
           "stray write: rc %d signal %d, stderr:\n%s", rc, sig, err);
    rc = run(MOMENTUM_READ, "1", &sig, err, sizeof err);
    EXPECT(sig == SIGSEGV && strstr(err, "host code touched backend memory"),
           "momentum read: rc %d signal %d, stderr:\n%s", rc, sig, err);
    rc = run(PROPER_USE, "1", &sig, err, sizeof err);
    EXPECT(rc == 0 && sig == 0, "copies and a layer under the guard: rc %d signal %d, stderr:\n%s",
           rc, sig, err);
    rc = run(HOST_INPUT, "1", &sig, err, sizeof err);
    EXPECT(sig == SIGABRT && strstr(err, "nn_accumulate: x at") && strstr(err, "is host memory"),
           "host input: rc %d signal %d, stderr:\n%s", rc, sig, err);
    rc = run(STRAY_READ, "0", &sig, err, sizeof err);
    EXPECT(rc == 0 && sig == 0, "guard off: the stray read is allowed: rc %d signal %d", rc, sig);
    rc = run(HOST_INPUT, "0", &sig, err, sizeof err);
    EXPECT(rc == 0 && sig == 0, "guard off: host input allowed: rc %d signal %d", rc, sig);
    printf("%s: %d of %d checks failed\n", failures ? "FAIL" : "PASS", failures, checks);
    return failures ? 1 : 0;
}
