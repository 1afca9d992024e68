/* Progress: train.jsonl gets one valid JSON line per step; the collapse watch
 * fires when the loss sits at ln K past the grace period (and not for a loss
 * that falls, nor during the grace period); the queue watch fires when the loss
 * rises after the queue starts (and not when it falls). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "trainer/progress.h"

static int fails;
#define EXPECT(c) do { if (!(c)) { fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #c); fails++; } } while (0)

static void feed(struct trainer_progress *p, int n, double (*loss)(int), int queue_from)
{
    for (int i = 0; i < n; i++) {
        struct trainer_step_record r = {.epoch = (uint32_t)(i / 100), .step = (uint64_t)i,
                                        .step_in_epoch = (uint32_t)(i % 100), .steps_per_epoch = 100,
                                        .loss = loss(i), .lr = 0.1, .images_per_s = 100,
                                        .compute_s = 0.1, .queue_used = queue_from >= 0 && i >= queue_from};
        trainer_progress_step(p, &r);
    }
}

static double at_lnk(int i) { (void)i; return log(3000.0) - 0.01; }
static double falling(int i) { return log(3000.0) * exp(-i / 150.0); }
static double rises_after_300(int i) { return i < 300 ? 4.0 - i * 0.001 : 4.6; }
static double falls_after_300(int i) { return i < 300 ? 4.0 - i * 0.001 : 3.2; }

int main(void)
{
    swav_log_init("test", 0);
    swav_log_set_level(SWAV_LOG_ERROR); /* quiet: we check the counters */
    char path[] = "/tmp/swav-progress-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    char err[256];
    struct trainer_progress p;

    EXPECT(trainer_progress_open(&p, path, 3000, 50, err, sizeof err) == 0);
    feed(&p, 400, at_lnk, -1);
    EXPECT(p.collapse_warnings == 1);
    trainer_progress_close(&p);

    /* the same plateau inside the grace period: no verdict */
    EXPECT(trainer_progress_open(&p, NULL, 3000, 1000, err, sizeof err) == 0);
    feed(&p, 400, at_lnk, -1);
    EXPECT(p.collapse_warnings == 0);
    trainer_progress_close(&p);

    EXPECT(trainer_progress_open(&p, NULL, 3000, 0, err, sizeof err) == 0);
    feed(&p, 600, falling, -1);
    EXPECT(p.collapse_warnings == 0);
    trainer_progress_close(&p);

    EXPECT(trainer_progress_open(&p, NULL, 3000, 0, err, sizeof err) == 0);
    feed(&p, 800, rises_after_300, 300);
    EXPECT(p.queue_warnings == 1 && p.queue_start_step == 300);
    trainer_progress_close(&p);

    EXPECT(trainer_progress_open(&p, NULL, 3000, 0, err, sizeof err) == 0);
    feed(&p, 800, falls_after_300, 300);
    EXPECT(p.queue_warnings == 0 && p.queue_seen);
    trainer_progress_close(&p);

    /* the file: 400 lines, each a JSON object with the fields */
    FILE *f = fopen(path, "r");
    char line[4096];
    int lines = 0;
    while (f && fgets(line, sizeof line, f)) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        EXPECT(o && json_is_object(o));
        if (o) {
            EXPECT(json_integer_value(json_object_get(o, "step")) == lines);
            EXPECT(json_is_real(json_object_get(o, "loss")));
            EXPECT(json_object_get(o, "wait_data_s") && json_object_get(o, "wait_codes_s"));
            json_decref(o);
        }
        lines++;
    }
    if (f) fclose(f);
    EXPECT(lines == 400);
    EXPECT(trainer_progress_open(&p, "/nonexistent-dir/x.jsonl", 10, 0, err, sizeof err) != 0 &&
           strstr(err, "/nonexistent-dir/x.jsonl"));
    unlink(path);
    if (fails) return 1;
    printf("test_progress: ok\n");
    return 0;
}
