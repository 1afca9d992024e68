/* Probe results: one JSON line per (checkpoint, probe) appended to
 * <dump_path>/eval.jsonl, the record the report and `swav status` read:
 *
 *   {"time": 1764288000123, "epoch": 3, "step": 1404,
 *    "checkpoint": "/run/checkpoints/ckp-3.safetensors", "probe": "knn",
 *    "top1": 79.51, "top5": 98.2, "n_train": 60000, "n_val": 10000,
 *    "seconds": 12.3, "baseline": false, "config": {...}}
 *
 * time is Unix milliseconds; top1/top5 in percent; baseline marks the
 * random-init network (drawn as a horizontal line in the report).  A line is
 * written with one write(2) on an O_APPEND descriptor and fsynced, so that
 * concurrent appenders never interleave and a crash leaves whole lines.
 *
 * Also here: raw feature / label files for the CLI (float32 / int32,
 * little-endian, row-major, no header). */
#ifndef SWAV_EVALUATOR_RESULTS_H
#define SWAV_EVALUATOR_RESULTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct eval_result {
    int64_t time_ms;          /* 0: now */
    int64_t epoch, step;      /* of the checkpoint; -1 unknown */
    const char *checkpoint;   /* path, "" for none */
    const char *probe;        /* "knn", "linear", "semisup1", "semisup10" */
    double top1, top5;        /* percent */
    int64_t n_train, n_val;
    double seconds;           /* the probe's wall time */
    bool baseline;            /* random-init network */
    const char *config_json;  /* a JSON object (the probe's settings), NULL: {} */
};

/* Appends one line to <dump_path>/eval.jsonl (creating dump_path).  0, or
 * -1 with a message naming the file in err (bad config_json included). */
int eval_result_append(const char *dump_path, const struct eval_result *r, char *err,
                       size_t errlen);

/* Raw files.  *out is malloc'd; *rows = bytes / (dim * 4).  A size that is
 * not a whole number of rows, an empty file or one over max_bytes is an
 * error with a message naming the file. */
int eval_read_features(const char *path, int64_t dim, size_t max_bytes, float **out,
                       int64_t *rows, char *err, size_t errlen);
int eval_read_labels(const char *path, size_t max_bytes, int32_t **out, int64_t *n, char *err,
                     size_t errlen);

#endif
