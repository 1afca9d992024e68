/* Training progress and the collapse / queue watch: see progress.h. */
#include "progress.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/timeutil.h"

#define EMA_DECAY 0.98          /* ~50-step memory */
#define COLLAPSE_FRACTION 0.98  /* EMA >= 98% of ln K */
#define COLLAPSE_RUN 100        /* for this many steps in a row */
#define QUEUE_RISE 1.05         /* 5% above the pre-queue loss ... */
#define QUEUE_WINDOW 200        /* ... still, this many steps after the queue started */

int trainer_progress_open(struct trainer_progress *p, const char *path, uint32_t nmb_prototypes,
                          uint64_t grace_steps, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    p->fd = -1;
    p->ln_k = log((double)nmb_prototypes);
    p->grace_steps = grace_steps;
    p->print_every_s = 5.0;
    p->last_print_s = swav_now_s();
    if (path) {
        p->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (p->fd < 0) {
            snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
            return -1;
        }
    }
    return 0;
}

void trainer_progress_close(struct trainer_progress *p)
{
    if (p->fd >= 0) close(p->fd);
    p->fd = -1;
}

static void write_line(struct trainer_progress *p, const struct trainer_step_record *r)
{
    if (p->fd < 0) return;
    json_t *o = json_object();
    json_object_set_new(o, "time", json_real((double)swav_wall_ms() / 1000.0));
    json_object_set_new(o, "epoch", json_integer(r->epoch));
    json_object_set_new(o, "step", json_integer((json_int_t)r->step));
    json_object_set_new(o, "loss", json_real(r->loss));
    json_object_set_new(o, "lr", json_real(r->lr));
    json_object_set_new(o, "images_per_s", json_real(r->images_per_s));
    json_object_set_new(o, "wait_data_s", json_real(r->wait_data_s));
    json_object_set_new(o, "wait_codes_s", json_real(r->wait_codes_s));
    json_object_set_new(o, "compute_s", json_real(r->compute_s));
    json_object_set_new(o, "queue_used", json_boolean(r->queue_used));
    json_object_set_new(o, "entropy", json_real(r->entropy));
    json_object_set_new(o, "prototypes_used", json_integer(r->prototypes_used));
    if (r->loss_scale > 0) {
        json_object_set_new(o, "loss_scale", json_real(r->loss_scale));
        json_object_set_new(o, "skipped", json_boolean(r->skipped));
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(o);
    if (!s) return;
    size_t n = strlen(s);
    /* one write(2) per line, newline included, so a reader never sees half a line */
    char *line = malloc(n + 1);
    if (line) {
        memcpy(line, s, n);
        line[n] = '\n';
        off_t end = lseek(p->fd, 0, SEEK_END);
        ssize_t w = write(p->fd, line, n + 1);
        int e = errno;
        if (w >= 0 && w < (ssize_t)(n + 1)) {
            /* A full disk took part of the line: the rest fails with the
             * reason (ENOSPC), and the part is cut off again, so that the
             * next line does not continue half of this one. */
            ssize_t rest = (ssize_t)(n + 1) - w;
            ssize_t w2 = write(p->fd, line + w, (size_t)rest);
            if (w2 == rest) {
                w = (ssize_t)(n + 1);
            } else {
                e = w2 < 0 ? errno : ENOSPC;
                if (end >= 0 && ftruncate(p->fd, end) != 0) e = errno;
            }
        }
        if (w != (ssize_t)(n + 1)) {
            LOG_LIMITED(SWAV_LOG_WARN, "cannot append to train.jsonl: %s; step %llu is not "
                        "recorded there", strerror(e), (unsigned long long)r->step);
        }
        free(line);
    }
    free(s);
}

static void watch(struct trainer_progress *p, const struct trainer_step_record *r)
{
    if (!isfinite(r->loss)) {
        LOG_LIMITED(SWAV_LOG_ERROR, "step %llu: the loss is %f: training has diverged "
                    "(lower --base_lr, check --use_fp16)", (unsigned long long)r->step, r->loss);
        return;
    }
    p->loss_ema = p->steps_seen == 0 ? r->loss : EMA_DECAY * p->loss_ema + (1 - EMA_DECAY) * r->loss;
    p->steps_seen++;

    if (r->step >= p->grace_steps && p->loss_ema >= COLLAPSE_FRACTION * p->ln_k) {
        p->near_lnk_run++;
    } else {
        p->near_lnk_run = 0;
        p->collapse_warned = false; /* warn again if it comes back */
    }
    if (p->near_lnk_run >= COLLAPSE_RUN && !p->collapse_warned) {
        p->collapse_warned = true;
        p->collapse_warnings++;
        LOG_WARN("COLLAPSE? step %llu: the loss has stayed at ln(K) = %.3f (average %.3f) for %llu "
                 "steps: the network may map every image to the same code. Remedies (reference "
                 "FAQ): a lower --epsilon (0.03 instead of 0.05), more "
                 "--freeze_prototypes_niters, a lower --base_lr, fewer crops or softer "
                 "augmentation.",
                 (unsigned long long)r->step, p->ln_k, p->loss_ema,
                 (unsigned long long)p->near_lnk_run);
    }

    if (r->queue_used && !p->queue_seen) {
        p->queue_seen = true;
        p->loss_before_queue = p->loss_ema;
        p->queue_start_step = r->step;
        LOG_INFO("step %llu: the queue is full and used from now on (loss before: %.4f)",
                 (unsigned long long)r->step, p->loss_before_queue);
    }
    if (p->queue_seen && !p->queue_warned && r->step - p->queue_start_step >= QUEUE_WINDOW &&
        p->loss_ema > QUEUE_RISE * p->loss_before_queue) {
        p->queue_warned = true;
        p->queue_warnings++;
        LOG_WARN("QUEUE: %llu steps after the queue started the loss is %.4f, above the %.4f "
                 "it had before: the queue's members may be too inconsistent. Remedies "
                 "(reference FAQ): a smaller --queue_length, a later --epoch_queue_starts.",
                 (unsigned long long)(r->step - p->queue_start_step), p->loss_ema,
                 p->loss_before_queue);
    }
}

void trainer_progress_step(struct trainer_progress *p, const struct trainer_step_record *r)
{
    write_line(p, r);
    watch(p, r);
    double now = swav_now_s();
    if (now - p->last_print_s >= p->print_every_s || r->step_in_epoch + 1 == r->steps_per_epoch) {
        p->last_print_s = now;
        double busy = r->wait_data_s + r->wait_codes_s + r->compute_s;
        double f = busy > 0 ? 100.0 / busy : 0;
        char scale[48] = "";
        if (r->loss_scale > 0) {
            snprintf(scale, sizeof scale, " | fp16 loss scale %g", r->loss_scale);
        }
        LOG_INFO("epoch %u step %u/%u (it %llu) loss %.4f lr %.4g %.1f img/s | data %.0f%% "
                 "codes %.0f%% compute %.0f%%%s%s",
                 r->epoch, r->step_in_epoch + 1, r->steps_per_epoch, (unsigned long long)r->step,
                 r->loss, r->lr, r->images_per_s, r->wait_data_s * f, r->wait_codes_s * f,
                 r->compute_s * f, r->queue_used ? " | queue on" : "", scale);
    }
}
