/* Files: atomic replacement (temporary file in the same folder, fsync, rename,
 * fsync of the folder) so that a reader never sees a half-written checkpoint,
 * queue or index, even across a crash or a full disk; bounded reads of
 * whole files; folders made and removed.  Functions return 0 on success, or -errno with a message in
 * `err` naming the path. */
#ifndef SWAV_COMMON_FILEIO_H
#define SWAV_COMMON_FILEIO_H

#include <stddef.h>
#include <sys/uio.h>

/* Files are created with mode 0644 (umask applies); secrets use 0600. */
int swav_file_write_atomic(const char *path, const void *data, size_t len, char *err,
                           size_t errlen);
int swav_file_writev_atomic(const char *path, const struct iovec *iov, int iovcnt,
                            unsigned mode, char *err, size_t errlen);
/* Read a whole file of at most max_len bytes into a malloc'd buffer (NUL
 * terminated, not counted in *len). */
int swav_file_read_all(const char *path, size_t max_len, void **data, size_t *len, char *err,
                       size_t errlen);
/* mkdir -p with mode 0755. */
int swav_mkdirs(const char *path, char *err, size_t errlen);
/* rm -rf of a folder we made (a failed data set, a run's socket folder):
 * links are removed, never followed; a missing path is no error.  Goes on
 * past an entry it cannot remove and reports the first one. */
int swav_rm_tree(const char *path, char *err, size_t errlen);

#endif
