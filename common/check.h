/* The first two tiers of error handling (STYLE.md): a broken invariant is a
 * bug (SWAV_ASSERT: file:line, abort); a library call that must not fail is
 * checked with the expression and place (ZMQ_CHECK, ...).  Untrusted input
 * never reaches these: it gets a status code and a message instead. */
#ifndef SWAV_COMMON_CHECK_H
#define SWAV_COMMON_CHECK_H

#include <stdint.h>
#include <stdlib.h>

#include "log.h"

#define SWAV_ASSERT(cond)                                                          \
    do {                                                                           \
        if (!(cond)) {                                                             \
            LOG_ERROR("assertion failed: %s at %s:%d", #cond, __FILE__, __LINE__); \
            abort();                                                               \
        }                                                                          \
    } while (0)

/* Out of memory is not recoverable in any role: say where, then abort. */
void *swav_xmalloc_at(size_t n, const char *file, int line);
void *swav_xcalloc_at(size_t count, size_t size, const char *file, int line);
void *swav_xrealloc_at(void *p, size_t n, const char *file, int line);
char *swav_xstrdup_at(const char *s, const char *file, int line);
#define swav_xmalloc(n) swav_xmalloc_at((n), __FILE__, __LINE__)
#define swav_xcalloc(c, s) swav_xcalloc_at((c), (s), __FILE__, __LINE__)
#define swav_xrealloc(p, n) swav_xrealloc_at((p), (n), __FILE__, __LINE__)
#define swav_xstrdup(s) swav_xstrdup_at((s), __FILE__, __LINE__)

/* ZMQ_CHECK(expr): expr returns -1 (or NULL) on failure with errno set. */
#define ZMQ_CHECK(expr)                                                            \
    do {                                                                           \
        if ((long)(intptr_t)(expr) == -1) {                                        \
            LOG_ERROR("%s failed: %s at %s:%d", #expr, zmq_strerror(zmq_errno()), \
                      __FILE__, __LINE__);                                         \
            abort();                                                               \
        }                                                                          \
    } while (0)

#define ZMQ_CHECK_PTR(expr)                                                        \
    do {                                                                           \
        if ((expr) == NULL) {                                                      \
            LOG_ERROR("%s failed: %s at %s:%d", #expr, zmq_strerror(zmq_errno()), \
                      __FILE__, __LINE__);                                         \
            abort();                                                               \
        }                                                                          \
    } while (0)

/* oneDNN: dnnl_status_t, dnnl_success == 0. */
#define DNNL_CHECK(expr)                                                               \
    do {                                                                               \
        int swav_dnnl_st_ = (int)(expr);                                               \
        if (swav_dnnl_st_ != 0) {                                                      \
            LOG_ERROR("%s failed: dnnl status %d at %s:%d", #expr, swav_dnnl_st_,      \
                      __FILE__, __LINE__);                                             \
            abort();                                                                   \
        }                                                                              \
    } while (0)

#define PTHREAD_CHECK(expr)                                                        \
    do {                                                                           \
        int swav_pt_rc_ = (expr);                                                  \
        if (swav_pt_rc_ != 0) {                                                    \
            LOG_ERROR("%s failed: error %d at %s:%d", #expr, swav_pt_rc_, __FILE__, \
                      __LINE__);                                                   \
            abort();                                                               \
        }                                                                          \
    } while (0)

#endif
