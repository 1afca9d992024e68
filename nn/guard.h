/* The host-access guard: proves on a machine without a GPU that host code
 * never reads or writes a backend's memory itself.
 *
 * The CUDA backend's memory is plain device memory (cudaMalloc): the host
 * cannot touch it, only queue copies (nn_backend_copy) and layers.  On the
 * CPU backend the same mistake would go unnoticed, since its "device" memory
 * is host memory.  With SWAV_NN_GUARD=1 in the environment, the CPU backend
 * takes its memory (nn_backend_alloc, and the host optimizer's momentum)
 * from here: pages that are mapped PROT_NONE except while a backend
 * operation runs (nn/layers.c's table calls, the host optimizer's step, the
 * collectives of nn/collective.h).  Host code that touches such memory
 * outside them takes a SIGSEGV, which the guard reports with the allocation
 * and a backtrace before the process dies.  Conversely, a layer handed host
 * memory where it takes the backend's (nn_guard_check) stops with the layer
 * and argument named.  The test suite runs the model, SyncBN, trainer,
 * evaluator and checkpoint tests under it ("guard" suite).
 *
 * Process-wide: one set of guarded allocations and one nesting depth,
 * shared by all threads (an operation on one thread opens the memory for
 * all; the guard misses a race, it never reports a false one).  Off, every
 * call is a load and a branch. */
#ifndef SWAV_NN_GUARD_H
#define SWAV_NN_GUARD_H

#include <stddef.h>

extern int nn_guard_enabled; /* read SWAV_NN_GUARD once: nn_guard_init */

/* Reads SWAV_NN_GUARD (set and not "0": on); returns nn_guard_enabled.  The
 * CPU backend calls it when made. */
int nn_guard_init(void);
/* Zeroed, page-aligned memory, guarded; NULL when the guard is off. */
void *nn_guard_alloc(size_t bytes);
/* 1 when p came from nn_guard_alloc (then it is unmapped), else 0. */
int nn_guard_free(void *p);

void nn_guard_enter_slow(void);
void nn_guard_check_slow(const void *p, const char *op, const char *arg);
/* The converse mistake: p (unless NULL) must be guarded memory, the
 * backend's, because `op` hands it to the backend as such (a GPU kernel
 * cannot read a host pointer); otherwise the guard reports op and arg and
 * aborts.  nn/layers.c checks every tensor and array a layer takes, except
 * those its header documents as host memory. */
static inline void nn_guard_check(const void *p, const char *op, const char *arg)
{
    if (nn_guard_enabled) {
        nn_guard_check_slow(p, op, arg);
    }
}
void nn_guard_leave_slow(void);
/* Around a backend operation: the guarded memory is readable and writable
 * from the first enter to the matching leave (they nest). */
static inline void nn_guard_enter(void)
{
    if (nn_guard_enabled) {
        nn_guard_enter_slow();
    }
}
static inline void nn_guard_leave(void)
{
    if (nn_guard_enabled) {
        nn_guard_leave_slow();
    }
}

#endif
