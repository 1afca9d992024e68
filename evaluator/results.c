/* eval.jsonl records and raw feature files (see results.h). */
#include "results.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/check.h"
#include "common/fileio.h"
#include "common/timeutil.h"

int eval_result_append(const char *dump_path, const struct eval_result *r, char *err,
                       size_t errlen)
{
    json_t *cfg;
    if (r->config_json && r->config_json[0]) {
        json_error_t je;
        cfg = json_loads(r->config_json, JSON_REJECT_DUPLICATES, &je);
        if (!cfg || !json_is_object(cfg)) {
            snprintf(err, errlen, "result config is not a JSON object: %s",
                     cfg ? "not an object" : je.text);
            json_decref(cfg);
            return -1;
        }
    } else {
        cfg = json_object();
    }
    json_t *o = json_object();
    json_object_set_new(o, "time", json_integer(r->time_ms ? r->time_ms : swav_wall_ms()));
    json_object_set_new(o, "epoch", json_integer(r->epoch));
    json_object_set_new(o, "step", json_integer(r->step));
    json_object_set_new(o, "checkpoint", json_string(r->checkpoint ? r->checkpoint : ""));
    json_object_set_new(o, "probe", json_string(r->probe ? r->probe : ""));
    json_object_set_new(o, "top1", json_real(r->top1));
    json_object_set_new(o, "top5", json_real(r->top5));
    json_object_set_new(o, "n_train", json_integer(r->n_train));
    json_object_set_new(o, "n_val", json_integer(r->n_val));
    json_object_set_new(o, "seconds", json_real(r->seconds));
    json_object_set_new(o, "baseline", json_boolean(r->baseline));
    json_object_set_new(o, "config", cfg);
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(o);
    if (!line) {
        snprintf(err, errlen, "cannot encode a result (a string that is not UTF-8?)");
        return -1;
    }
    if (swav_mkdirs(dump_path, err, errlen) != 0) {
        free(line);
        return -1;
    }
    char path[4096];
    if ((size_t)snprintf(path, sizeof(path), "%s/eval.jsonl", dump_path) >= sizeof(path)) {
        snprintf(err, errlen, "dump_path too long");
        free(line);
        return -1;
    }
    size_t len = strlen(line);
    line[len] = '\n'; /* json_dumps' NUL becomes the newline; write len + 1 bytes */
    int rc = 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        rc = -1;
    } else {
        ssize_t w = write(fd, line, len + 1);
        if (w != (ssize_t)(len + 1) || fsync(fd) != 0) {
            snprintf(err, errlen, "%s: %s", path, w < 0 ? strerror(errno) : "short write");
            rc = -1;
        }
        close(fd);
    }
    free(line);
    return rc;
}

int eval_read_features(const char *path, int64_t dim, size_t max_bytes, float **out,
                       int64_t *rows, char *err, size_t errlen)
{
    if (dim < 1) {
        snprintf(err, errlen, "%s: feature dimension %lld must be positive", path,
                 (long long)dim);
        return -1;
    }
    void *data;
    size_t len;
    if (swav_file_read_all(path, max_bytes, &data, &len, err, errlen) != 0)
        return -1;
    size_t row = (size_t)dim * sizeof(float);
    if (len == 0 || len % row != 0) {
        snprintf(err, errlen, "%s: %zu bytes is not a whole number of %lld-float rows", path,
                 len, (long long)dim);
        free(data);
        return -1;
    }
    *out = data;
    *rows = (int64_t)(len / row);
    return 0;
}

int eval_read_labels(const char *path, size_t max_bytes, int32_t **out, int64_t *n, char *err,
                     size_t errlen)
{
    void *data;
    size_t len;
    if (swav_file_read_all(path, max_bytes, &data, &len, err, errlen) != 0)
        return -1;
    if (len == 0 || len % sizeof(int32_t) != 0) {
        snprintf(err, errlen, "%s: %zu bytes is not a whole number of int32 labels", path, len);
        free(data);
        return -1;
    }
    *out = data;
    *n = (int64_t)(len / sizeof(int32_t));
    return 0;
}
