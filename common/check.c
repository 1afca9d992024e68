/* Allocation wrappers: see check.h. */
#include "check.h"

#include <string.h>

void *swav_xmalloc_at(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        LOG_ERROR("out of memory allocating %zu bytes at %s:%d", n, file, line);
        abort();
    }
    return p;
}

void *swav_xcalloc_at(size_t count, size_t size, const char *file, int line)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) {
        LOG_ERROR("out of memory allocating %zu x %zu bytes at %s:%d", count, size, file, line);
        abort();
    }
    return p;
}

void *swav_xrealloc_at(void *p, size_t n, const char *file, int line)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        LOG_ERROR("out of memory reallocating %zu bytes at %s:%d", n, file, line);
        abort();
    }
    return q;
}

char *swav_xstrdup_at(const char *s, const char *file, int line)
{
    size_t n = strlen(s) + 1;
    char *p = swav_xmalloc_at(n, file, line);
    memcpy(p, s, n);
    return p;
}
