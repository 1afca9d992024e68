/* Checkpoint folder scan (see ckpt_scan.h). */
#include "ckpt_scan.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/check.h"

static const char suffix[] = ".safetensors";

/* epoch from "ckp-<digits>.safetensors", -1 for checkpoint.safetensors,
 * -2 for anything else. */
static int64_t name_epoch(const char *name)
{
    if (!strcmp(name, "checkpoint.safetensors"))
        return -1;
    if (strncmp(name, "ckp-", 4) != 0)
        return -2;
    const char *p = name + 4;
    int64_t e = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9') {
        if (++digits > 12)
            return -2;
        e = e * 10 + (*p++ - '0');
    }
    if (digits == 0 || strcmp(p, suffix) != 0)
        return -2;
    return e;
}

static int cmp_ckpt(const void *a, const void *b)
{
    const struct eval_ckpt *x = a, *y = b;
    if (x->mtime_ns != y->mtime_ns)
        return (x->mtime_ns > y->mtime_ns) - (x->mtime_ns < y->mtime_ns);
    if (x->epoch != y->epoch)
        return (x->epoch > y->epoch) - (x->epoch < y->epoch);
    return strcmp(x->path, y->path);
}

int eval_ckpt_scan(const char *dir, struct eval_ckpt *out, int max, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        return -1;
    }
    int cap = 16, n = 0;
    struct eval_ckpt *all = swav_xmalloc(sizeof(*all) * (size_t)cap);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        int64_t e = name_epoch(de->d_name);
        if (e == -2)
            continue;
        struct eval_ckpt c;
        if ((size_t)snprintf(c.path, sizeof(c.path), "%s/%s", dir, de->d_name) >= sizeof(c.path))
            continue;
        struct stat st;
        if (stat(c.path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        c.epoch = e;
        c.mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        if (n == cap) {
            cap *= 2;
            all = swav_xrealloc(all, sizeof(*all) * (size_t)cap);
        }
        all[n++] = c;
    }
    closedir(d);
    if (n > 0) /* all is NULL in a folder without checkpoints */
        qsort(all, (size_t)n, sizeof(*all), cmp_ckpt);
    int skip = n > max ? n - max : 0;
    int m = n - skip;
    if (m > 0)
        memcpy(out, all + skip, sizeof(*all) * (size_t)m);
    free(all);
    return m;
}

int eval_ckpt_pick_newest(const struct eval_ckpt *list, int n, int64_t last_mtime_ns,
                          int64_t last_epoch)
{
    int best = -1;
    for (int i = 0; i < n; i++) {
        const struct eval_ckpt *c = &list[i];
        if (c->mtime_ns < last_mtime_ns ||
            (c->mtime_ns == last_mtime_ns && c->epoch <= last_epoch))
            continue;
        if (best < 0 || cmp_ckpt(c, &list[best]) > 0)
            best = i;
    }
    return best;
}
