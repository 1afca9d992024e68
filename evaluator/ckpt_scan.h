/* Finding checkpoints to evaluate.  The evaluator learns of new checkpoints
 * from the trainer's announcements and, at start and whenever it may have
 * missed some, from a scan of the checkpoint folder; when it falls behind it
 * skips to the newest one (DESIGN.md: it never slows training down).
 *
 * A scan lists the folder's regular files named ckp-<EPOCH>.safetensors
 * (epoch from the name) and checkpoint.safetensors (the latest; epoch
 * unknown from its name: -1), with their modification times, sorted oldest
 * first by (mtime, epoch, name).  Temporary files of an atomic write and
 * anything else are ignored. */
#ifndef SWAV_EVALUATOR_CKPT_SCAN_H
#define SWAV_EVALUATOR_CKPT_SCAN_H

#include <stddef.h>
#include <stdint.h>

#define EVAL_CKPT_PATH_MAX 4096

struct eval_ckpt {
    char path[EVAL_CKPT_PATH_MAX]; /* dir/name */
    int64_t epoch;                 /* from ckp-<EPOCH>; -1 for checkpoint.safetensors */
    int64_t mtime_ns;
};

/* Lists up to max entries into out (sorted oldest first, the newest kept
 * when there are more than max); returns the count, or -1 with a message
 * when the folder cannot be read. */
int eval_ckpt_scan(const char *dir, struct eval_ckpt *out, int max, char *err, size_t errlen);

/* Index of the newest entry strictly newer than (last_mtime_ns, last_epoch)
 * in (mtime, epoch) order, or -1 when there is none: everything in between
 * is skipped.  Pass last_mtime_ns = INT64_MIN to take the newest of all. */
int eval_ckpt_pick_newest(const struct eval_ckpt *list, int n, int64_t last_mtime_ns,
                          int64_t last_epoch);

#endif
