/* common/fileio.h: an atomic write replaces the content and leaves no
 * temporary file, also when it fails and when threads replace one file at
 * once; bounded reads refuse what is too large or not a file; mkdirs. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/fileio.h"
#include "tests/expect.h"


static char g_dir[256];

/* Number of entries in dir (without . and ..); names containing ".tmp." counted in *tmps. */
static int count_entries(const char *dir, int *tmps)
{
    DIR *d = opendir(dir);
    int n = 0;
    *tmps = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        n++;
        if (strstr(e->d_name, ".tmp.")) (*tmps)++;
    }
    if (d) closedir(d);
    return n;
}

static int read_is(const char *path, const char *want)
{
    void *data = NULL;
    size_t len = 0;
    char err[256];
    if (swav_file_read_all(path, 1 << 20, &data, &len, err, sizeof err) != 0) return 0;
    int ok = len == strlen(want) && !memcmp(data, want, len) && ((char *)data)[len] == '\0';
    free(data);
    return ok;
}

/* dir/rel with a one-byte content, its folders made. */
static void put_file(const char *dir, const char *rel)
{
    char path[600], err[256];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    EXPECT(swav_mkdirs(path, err, sizeof err) == 0, "mkdirs: %s", err);
    *slash = '/';
    EXPECT(swav_file_write_atomic(path, "f", 1, err, sizeof err) == 0, "write: %s", err);
}

struct writer {
    const char *path;
    char fill;
    int fails;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    char buf[4096];
    memset(buf, w->fill, sizeof buf);
    char err[256];
    for (int i = 0; i < 100; i++) {
        if (swav_file_write_atomic(w->path, buf, sizeof buf, err, sizeof err) != 0) {
            fprintf(stderr, "writer %c: %s\n", w->fill, err);
            w->fails++;
        }
    }
    return NULL;
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/swav-test-fileio-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    char path[512], err[512];
    int tmps;
    snprintf(path, sizeof path, "%s/state.json", g_dir);

    EXPECT(swav_file_write_atomic(path, "first version, long", 19, err, sizeof err) == 0, "write: %s", err);
    EXPECT(read_is(path, "first version, long"), "content after first write");
    EXPECT(count_entries(g_dir, &tmps) == 1 && tmps == 0, "one file, no temporary");
    EXPECT(swav_file_write_atomic(path, "second", 6, err, sizeof err) == 0, "replace: %s", err);
    EXPECT(read_is(path, "second"), "content replaced (and shorter)");
    EXPECT(count_entries(g_dir, &tmps) == 1 && tmps == 0, "still one file, no temporary");
    EXPECT(swav_file_write_atomic(path, "", 0, err, sizeof err) == 0 && read_is(path, ""), "empty file");

    /* writev and the mode */
    char secret[512];
    snprintf(secret, sizeof secret, "%s/key", g_dir);
    struct iovec iov[3] = {{"ab", 2}, {"", 0}, {"cde", 3}};
    EXPECT(swav_file_writev_atomic(secret, iov, 3, 0600, err, sizeof err) == 0, "writev: %s", err);
    struct stat st;
    EXPECT(stat(secret, &st) == 0 && (st.st_mode & 0777) == 0600, "mode 0600: %o", st.st_mode & 0777);
    EXPECT(read_is(secret, "abcde"), "writev content");

    /* failures leave nothing behind and name the path */
    char nodir[512];
    snprintf(nodir, sizeof nodir, "%s/missing/x", g_dir);
    int rc = swav_file_write_atomic(nodir, "x", 1, err, sizeof err);
    EXPECT(rc == -ENOENT && strstr(err, "missing"), "write into a missing folder: %d %s", rc, err);
    char sub[512];
    snprintf(sub, sizeof sub, "%s/adir", g_dir);
    EXPECT(mkdir(sub, 0755) == 0, "mkdir");
    rc = swav_file_write_atomic(sub, "x", 1, err, sizeof err); /* rename onto a folder fails */
    EXPECT(rc < 0 && strstr(err, "adir"), "replace a folder: %d %s", rc, err);
    EXPECT(count_entries(g_dir, &tmps) == 3 && tmps == 0, "no temporary after failures (%d)", tmps);

    /* threads replacing one file at once: every write succeeds, content whole */
    struct writer w[2] = {{path, 'a', 0}, {path, 'b', 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, writer_main, &w[i]);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    EXPECT(w[0].fails == 0 && w[1].fails == 0, "concurrent writers failed %d, %d times", w[0].fails, w[1].fails);
    void *data = NULL;
    size_t len = 0;
    EXPECT(swav_file_read_all(path, 1 << 20, &data, &len, err, sizeof err) == 0 && len == 4096, "read after race");
    int uniform = data != NULL;
    for (size_t i = 1; data && i < len; i++) uniform &= ((char *)data)[i] == ((char *)data)[0];
    EXPECT(uniform, "content of one writer, not a mix");
    free(data);
    EXPECT(count_entries(g_dir, &tmps) == 3 && tmps == 0, "no temporary after the race (%d)", tmps);

    /* bounded reads */
    data = NULL;
    rc = swav_file_read_all(path, 100, &data, &len, err, sizeof err);
    EXPECT(rc == -EFBIG && data == NULL && strstr(err, "state.json"), "over the limit: %d %s", rc, err);
    rc = swav_file_read_all(sub, 100, &data, &len, err, sizeof err);
    EXPECT(rc == -EINVAL && strstr(err, "adir"), "a folder: %d %s", rc, err);
    rc = swav_file_read_all(nodir, 100, &data, &len, err, sizeof err);
    EXPECT(rc == -ENOENT && strstr(err, "missing"), "missing: %d %s", rc, err);

    /* mkdirs */
    char deep[512];
    snprintf(deep, sizeof deep, "%s/a/b/c", g_dir);
    EXPECT(swav_mkdirs(deep, err, sizeof err) == 0, "mkdirs: %s", err);
    EXPECT(swav_mkdirs(deep, err, sizeof err) == 0, "mkdirs again: %s", err);
    EXPECT(stat(deep, &st) == 0 && S_ISDIR(st.st_mode), "deep folder exists");
    char under_file[512];
    snprintf(under_file, sizeof under_file, "%s/state.json/x", g_dir);
    rc = swav_mkdirs(under_file, err, sizeof err);
    EXPECT(rc == -ENOTDIR && strstr(err, "state.json"), "mkdirs under a file: %d %s", rc, err);

    /* rm_tree: files, folders, a socket (the launcher's socket folder) and a
     * link out of the tree (removed, not followed) */
    char tree[512], outside[512], p2[600];
    snprintf(tree, sizeof tree, "%s/tree", g_dir);
    snprintf(outside, sizeof outside, "%s/outside", g_dir);
    EXPECT(swav_file_write_atomic(outside, "keep", 4, err, sizeof err) == 0, "write: %s", err);
    put_file(tree, "x/y/z/f");
    put_file(tree, "x/f");
    snprintf(p2, sizeof p2, "%s/x/link", tree);
    EXPECT(symlink(g_dir, p2) == 0, "symlink: %s", strerror(errno));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int plen = snprintf(sa.sun_path, sizeof sa.sun_path, "%s/x/y/sock", tree);
    int sfd = socket(AF_UNIX, SOCK_STREAM, 0);
    EXPECT(plen < (int)sizeof sa.sun_path && sfd >= 0 &&
               bind(sfd, (struct sockaddr *)&sa, sizeof sa) == 0,
           "bind %s: %s", sa.sun_path, strerror(errno));
    if (sfd >= 0) close(sfd);
    EXPECT(swav_rm_tree(tree, err, sizeof err) == 0, "rm_tree: %s", err);
    EXPECT(lstat(tree, &st) != 0 && errno == ENOENT, "the tree is gone");
    EXPECT(read_is(outside, "keep"), "the link's target is untouched");
    EXPECT(swav_rm_tree(tree, err, sizeof err) == 0, "rm_tree of a missing path: %s", err);
    if (geteuid() != 0) {
        /* a folder we cannot write: the entry is named, the rest still goes */
        put_file(tree, "ro/sub/f");
        put_file(tree, "other");
        snprintf(p2, sizeof p2, "%s/ro/sub", tree);
        chmod(p2, 0555);
        rc = swav_rm_tree(tree, err, sizeof err);
        EXPECT(rc == -EACCES && strstr(err, "ro/sub/f"), "read-only folder: %d %s", rc, err);
        chmod(p2, 0755);
        snprintf(p2, sizeof p2, "%s/other", tree);
        EXPECT(access(p2, F_OK) != 0, "the other entries are removed");
    }
    EXPECT(swav_rm_tree(g_dir, err, sizeof err) == 0, "rm_tree of the test folder: %s", err);
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
