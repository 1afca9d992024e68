/* The host-access guard (guard.h): mmap'd regions, PROT_NONE outside backend
 * operations, and a SIGSEGV handler that names the region touched. */
#include "guard.h"

#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/check.h"
#include "common/log.h"

int nn_guard_enabled = 0;

#define GUARD_MAX_REGIONS 16384

struct region {
    uintptr_t base;
    size_t len;   /* mapped, whole pages */
    size_t bytes; /* asked */
};

static struct region regions[GUARD_MAX_REGIONS];
static volatile int n_regions;
static int depth;
static int initialised;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction previous;

static void protect_all(int prot)
{
    for (int i = 0; i < n_regions; i++) {
        if (mprotect((void *)regions[i].base, regions[i].len, prot) != 0) {
            LOG_ERROR("nn guard: mprotect of %zu bytes failed", regions[i].len);
            abort();
        }
    }
}

/* The index of the region holding address a, or -1.  The caller holds mu,
 * or is the SIGSEGV handler (which cannot take it). */
static int region_of(uintptr_t a)
{
    for (int i = 0; i < n_regions; i++) {
        if (a >= regions[i].base && a < regions[i].base + regions[i].len) {
            return i;
        }
    }
    return -1;
}

static void put_str(const char *s)
{
    ssize_t r = write(STDERR_FILENO, s, strlen(s));
    (void)r;
}

static void put_backtrace(void)
{
    void *frames[64];
    int n = backtrace(frames, 64);
    backtrace_symbols_fd(frames, n, STDERR_FILENO);
}

static void on_segv(int sig, siginfo_t *si, void *uctx)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    int i = region_of(a);
    if (i >= 0) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "nn guard (SWAV_NN_GUARD): host code touched backend memory outside a "
                 "backend operation: byte %zu of an allocation of %zu bytes at %p; "
                 "use nn_backend_copy. Backtrace:\n",
                 (size_t)(a - regions[i].base), regions[i].bytes, (void *)regions[i].base);
        put_str(msg);
        put_backtrace();
    }
    /* Not ours, or reported: let the previous disposition have it. */
    sigaction(SIGSEGV, &previous, NULL);
    if (!(previous.sa_flags & SA_SIGINFO) && previous.sa_handler == SIG_IGN) {
        signal(SIGSEGV, SIG_DFL);
    }
    (void)sig;
    (void)uctx;
}

int nn_guard_init(void)
{
    pthread_mutex_lock(&mu);
    if (!initialised) {
        const char *e = getenv("SWAV_NN_GUARD");
        nn_guard_enabled = e && *e && strcmp(e, "0") != 0;
        if (nn_guard_enabled) {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_sigaction = on_segv;
            sa.sa_flags = SA_SIGINFO;
            sigemptyset(&sa.sa_mask);
            sigaction(SIGSEGV, &sa, &previous);
            LOG_INFO("nn guard: on (SWAV_NN_GUARD): backend memory is unreadable outside "
                     "backend operations");
        }
        initialised = 1;
    }
    pthread_mutex_unlock(&mu);
    return nn_guard_enabled;
}

void *nn_guard_alloc(size_t bytes)
{
    if (!nn_guard_enabled) {
        return NULL;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = ((bytes ? bytes : 1) + page - 1) / page * page;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    SWAV_ASSERT(p != MAP_FAILED);
    pthread_mutex_lock(&mu);
    if (n_regions == GUARD_MAX_REGIONS) {
        LOG_ERROR("nn guard: more than %d live allocations", GUARD_MAX_REGIONS);
        abort();
    }
    regions[n_regions] = (struct region){(uintptr_t)p, len, bytes};
    n_regions = n_regions + 1;
    if (depth == 0 && mprotect(p, len, PROT_NONE) != 0) {
        LOG_ERROR("nn guard: mprotect of %zu bytes failed", len);
        abort();
    }
    pthread_mutex_unlock(&mu);
    return p;
}

int nn_guard_free(void *p)
{
    if (!nn_guard_enabled || !p) {
        return 0;
    }
    int found = 0;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < n_regions; i++) {
        if (regions[i].base == (uintptr_t)p) {
            munmap(p, regions[i].len);
            regions[i] = regions[n_regions - 1];
            n_regions = n_regions - 1;
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&mu);
    return found;
}

void nn_guard_check_slow(const void *p, const char *op, const char *arg)
{
    if (!p) {
        return;
    }
    pthread_mutex_lock(&mu);
    int found = region_of((uintptr_t)p) >= 0;
    pthread_mutex_unlock(&mu);
    if (!found) {
        LOG_ERROR("nn guard (SWAV_NN_GUARD): %s: %s at %p is host memory, not the backend's "
                  "(nn_backend_alloc it, and nn_backend_copy into it)",
                  op, arg, p);
        put_backtrace();
        abort();
    }
}

void nn_guard_enter_slow(void)
{
    pthread_mutex_lock(&mu);
    if (depth++ == 0) {
        protect_all(PROT_READ | PROT_WRITE);
    }
    pthread_mutex_unlock(&mu);
}

void nn_guard_leave_slow(void)
{
    pthread_mutex_lock(&mu);
    SWAV_ASSERT(depth > 0);
    if (--depth == 0) {
        protect_all(PROT_NONE);
    }
    pthread_mutex_unlock(&mu);
}
