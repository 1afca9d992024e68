/* Named slices of one flat buffer: see params.h. */
#include "params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"

void nn_param_table_init(struct nn_param_table *t)
{
    memset(t, 0, sizeof *t);
}

void nn_param_table_free(struct nn_param_table *t)
{
    free(t->p);
    memset(t, 0, sizeof *t);
}

size_t nn_param_table_add(struct nn_param_table *t, const char *name, int ndim,
                          const int64_t *shape, unsigned flags)
{
    SWAV_ASSERT(ndim >= 0 && ndim <= NN_PARAM_MAX_DIMS);
    SWAV_ASSERT(strlen(name) < NN_PARAM_NAME_MAX);
    SWAV_ASSERT(nn_param_table_find(t, name) < 0);
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->p = swav_xrealloc(t->p, (size_t)t->cap * sizeof *t->p);
    }
    struct nn_param *p = &t->p[t->n++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = shape[i];
        p->numel *= (size_t)shape[i];
    }
    p->offset = t->total;
    p->flags = flags;
    t->total += p->numel;
    return p->offset;
}

int nn_param_table_find(const struct nn_param_table *t, const char *name)
{
    if (!strncmp(name, "module.", 7)) {
        name += 7;
    }
    for (int i = 0; i < t->n; i++) {
        if (!strcmp(t->p[i].name, name)) {
            return i;
        }
    }
    return -1;
}
