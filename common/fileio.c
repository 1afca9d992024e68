/* Atomic file writes, bounded reads, folders: see fileio.h. */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fsync_parent(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) {
        dir[1] = '\0';
    } else if (slash) {
        *slash = '\0';
    } else {
        snprintf(dir, sizeof dir, ".");
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

int swav_file_writev_atomic(const char *path, const struct iovec *iov, int iovcnt,
                            unsigned mode, char *err, size_t errlen)
{
    /* A name of its own per call (pid + a process-wide counter), created
     * with O_EXCL: two threads replacing the same file must not write into
     * one temporary file (with only the pid they did, and one of the two
     * renames failed). */
    static atomic_uint counter;
    char tmp[PATH_MAX];
    int fd = -1;
    /* a leftover of a crashed process with the same pid: take the next name */
    for (int tries = 0; tries < 100; tries++) {
        unsigned seq = atomic_fetch_add(&counter, 1u);
        if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%u", path, (long)getpid(), seq) >=
            (int)sizeof tmp) {
            snprintf(err, errlen, "%s: path too long", path);
            return -ENAMETOOLONG;
        }
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode);
        if (fd >= 0 || errno != EEXIST) {
            break;
        }
    }
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(e));
        return -e;
    }
    for (int i = 0; i < iovcnt; i++) {
        const char *p = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left > 0) {
            ssize_t w = write(fd, p, left);
            if (w < 0) {
                if (errno == EINTR) {
                    continue;
                }
                int e = errno;
                snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(e));
                close(fd);
                unlink(tmp);
                return -e;
            }
            p += w;
            left -= (size_t)w;
        }
    }
    if (fsync(fd) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot fsync %s: %s", tmp, strerror(e));
        close(fd);
        unlink(tmp);
        return -e;
    }
    if (close(fd) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot close %s: %s", tmp, strerror(e));
        unlink(tmp);
        return -e;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(e));
        unlink(tmp);
        return -e;
    }
    int rc = fsync_parent(path);
    if (rc != 0) {
        snprintf(err, errlen, "cannot fsync the folder of %s: %s", path, strerror(-rc));
        return rc;
    }
    return 0;
}

int swav_file_write_atomic(const char *path, const void *data, size_t len, char *err,
                           size_t errlen)
{
    struct iovec iov = {(void *)data, len};
    return swav_file_writev_atomic(path, &iov, 1, 0644, err, errlen);
}

int swav_file_read_all(const char *path, size_t max_len, void **data, size_t *len, char *err,
                       size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot stat %s: %s", path, strerror(e));
        close(fd);
        return -e;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s is not a regular file", path);
        close(fd);
        return -EINVAL;
    }
    if ((unsigned long long)st.st_size > max_len) {
        snprintf(err, errlen, "%s is %lld bytes, more than the limit of %zu", path,
                 (long long)st.st_size, max_len);
        close(fd);
        return -EFBIG;
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        snprintf(err, errlen, "out of memory reading %s", path);
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            snprintf(err, errlen, "cannot read %s: %s", path, r < 0 ? strerror(e) : "file shrank");
            free(buf);
            close(fd);
            return -e;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;
}

int swav_mkdirs(const char *path, char *err, size_t errlen)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) {
        snprintf(err, errlen, "%s: path too long", path);
        return -ENAMETOOLONG;
    }
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                int e = errno;
                snprintf(err, errlen, "cannot create folder %s: %s", p, strerror(e));
                return -e;
            }
            *s = '/';
        }
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST) {
        int e = errno;
        snprintf(err, errlen, "cannot create folder %s: %s", p, strerror(e));
        return -e;
    }
    return 0;
}

/* nftw's callback has no argument of its own: the first failure goes here. */
static _Thread_local int rm_errno;
static _Thread_local char rm_failed[PATH_MAX];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0 && errno != ENOENT && !rm_errno) {
        rm_errno = errno;
        snprintf(rm_failed, sizeof rm_failed, "%s", path);
    }
    return 0;
}

int swav_rm_tree(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) return 0;
        int e = errno;
        snprintf(err, errlen, "cannot remove %s: %s", path, strerror(e));
        return -e;
    }
    rm_errno = 0;
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && !rm_errno) {
        rm_errno = errno;
        snprintf(rm_failed, sizeof rm_failed, "%s", path);
    }
    if (rm_errno) {
        snprintf(err, errlen, "cannot remove %s: %s", rm_failed, strerror(rm_errno));
        return -rm_errno;
    }
    return 0;
}
