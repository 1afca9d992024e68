/* Dynamic loss scaling for an fp16 backbone (cfg.act_dtype NN_DTYPE_F16,
 * the trainer's --use_fp16 true --amp_dtype fp16): PyTorch's GradScaler and
 * apex's dynamic scaler, whose rules the reference's apex O1 run follows.
 *
 * fp16's largest finite value is 65504 and its smallest normal 2^-14, so
 * the backward's small gradients would flush to zero.  The loss gradient
 * entering the backward is multiplied by S (2^16 at first), the gradients
 * are divided by S again after the all-reduce (with the mean over ranks:
 * one scale by 1 / (world S), exact since S is a power of two), and then:
 *
 *   any gradient inf or NaN (an fp16 overflow somewhere in the backward;
 *   after the all-reduce every rank sees the same buffer, so the ranks
 *   agree): the optimizer step is skipped, S halves, the run of finite
 *   steps restarts;
 *   else the step is taken, and after NN_LOSS_SCALE_INTERVAL (2000) finite
 *   steps in a row S doubles (at most NN_LOSS_SCALE_MAX, 2^24, apex's cap).
 *
 * The check over the gradient buffer is the backend's nn_backend_nonfinite
 * (nn/backend.h); this module is the state machine, pure C.  Checkpoints
 * keep S and the run under the metadata key "loss_scale"
 * (nn_loss_scale_format / _parse; docs/checkpoints.md). */
#ifndef SWAV_NN_LOSS_SCALE_H
#define SWAV_NN_LOSS_SCALE_H

#include <stddef.h>
#include <stdint.h>

#define NN_LOSS_SCALE_INIT 65536.0f       /* 2^16: GradScaler's init_scale */
#define NN_LOSS_SCALE_INTERVAL 2000       /* GradScaler's growth_interval, apex's scale_window */
#define NN_LOSS_SCALE_MAX 16777216.0f     /* 2^24: apex's max_loss_scale */
#define NN_LOSS_SCALE_MIN 0x1p-24f        /* below it S stops halving (a broken run: every
                                           * step non-finite whatever the scale) */

struct nn_loss_scale {
    float scale;        /* S, a power of two */
    int64_t good_steps; /* finite steps in a row since S last changed or a skip */
    int64_t skipped;    /* steps skipped by this process (not saved) */
};

/* S = NN_LOSS_SCALE_INIT, no finite steps yet, nothing skipped. */
void nn_loss_scale_init(struct nn_loss_scale *ls);

/* After the step's gradients are all-reduced and unscaled: nonfinite is
 * nn_backend_nonfinite's answer over them.  Returns 1 when the optimizer
 * step is to be taken (all finite), 0 when it is to be skipped; S and the
 * run are updated as above. */
int nn_loss_scale_update(struct nn_loss_scale *ls, int nonfinite);

/* "S good_steps" (S exactly, "%.9g"), the checkpoint's metadata value.
 * Returns the length written, or -1 when len is too small. */
int nn_loss_scale_format(const struct nn_loss_scale *ls, char *buf, size_t len);

/* The inverse: a power of two in [NN_LOSS_SCALE_MIN, NN_LOSS_SCALE_MAX] and
 * a count in [0, NN_LOSS_SCALE_INTERVAL), nothing else.  Returns 0, or -1
 * (ls untouched). */
int nn_loss_scale_parse(struct nn_loss_scale *ls, const char *text);

#endif
