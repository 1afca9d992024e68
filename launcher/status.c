/* `swav status DUMP_PATH`: the live state of a run, from the status.json the
 * launcher rewrites every second (atomically) in the run folder: each
 * process with its state and restarts, the trainer's last step, loss, rate
 * and time split, and the last probe results from eval.jsonl. */
#include "status.h"

#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "common/timeutil.h"

static void print_probes(const char *dump)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/eval.jsonl", dump);
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("probes: none yet\n");
        return;
    }
    /* the last result of each (probe, baseline) */
    json_t *last = json_object();
    char line[16384];
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        if (!o) continue;
        const char *probe = json_string_value(json_object_get(o, "probe"));
        if (probe) {
            char key[128];
            snprintf(key, sizeof key, "%s%s", probe,
                     json_is_true(json_object_get(o, "baseline")) ? " (random init)" : "");
            json_object_set(last, key, o);
        }
        json_decref(o);
    }
    fclose(f);
    const char *key;
    json_t *o;
    printf("probes:\n");
    json_object_foreach(last, key, o) {
        printf("  %-22s epoch %-4lld top-1 %6.2f%%  top-5 %6.2f%%\n", key,
               (long long)json_integer_value(json_object_get(o, "epoch")),
               json_number_value(json_object_get(o, "top1")),
               json_number_value(json_object_get(o, "top5")));
    }
    json_decref(last);
}

int swav_status_main(int argc, char **argv)
{
    const char *dump = argc > 0 ? argv[0] : ".";
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/status.json", dump);
    json_error_t je;
    json_t *st = json_load_file(path, 0, &je);
    if (!st) {
        fprintf(stderr, "swav status: no readable %s (%s): is a run using --dump_path %s?\n", path,
                je.text, dump);
        return 1;
    }
    double age = (double)swav_wall_ms() / 1000.0 - json_number_value(json_object_get(st, "time"));
    const char *state = json_string_value(json_object_get(st, "state"));
    printf("run in %s: %s%s (updated %.0f s ago, launcher pid %lld)\n", dump, state ? state : "?",
           state && !strcmp(state, "running") && age > 10 ? " — but not updated lately: is the "
                                                            "launcher still alive?" : "",
           age, (long long)json_integer_value(json_object_get(st, "launcher_pid")));
    json_t *tr = json_object_get(st, "trainer");
    if (tr) {
        double d = json_number_value(json_object_get(tr, "wait_data_s"));
        double c = json_number_value(json_object_get(tr, "wait_codes_s"));
        double k = json_number_value(json_object_get(tr, "compute_s"));
        double sum = d + c + k + 1e-12;
        printf("trainer: epoch %lld step %lld loss %.4f lr %.4g %.1f images/s%s\n"
               "         time: waiting for data %.0f%%, for codes %.0f%%, compute %.0f%%%s\n",
               (long long)json_integer_value(json_object_get(tr, "epoch")),
               (long long)json_integer_value(json_object_get(tr, "step")),
               json_number_value(json_object_get(tr, "loss")),
               json_number_value(json_object_get(tr, "lr")),
               json_number_value(json_object_get(tr, "images_per_s")),
               json_is_true(json_object_get(tr, "queue_used")) ? ", queue in use" : "",
               100 * d / sum, 100 * c / sum, 100 * k / sum,
               d / sum > 0.2 ? " — the loaders are the bottleneck: add --loaders or --workers" : "");
        printf("assigner: %lld of the prototypes used in the last step, assignment entropy %.3f\n",
               (long long)json_integer_value(json_object_get(tr, "prototypes_used")),
               json_number_value(json_object_get(tr, "entropy")));
    } else {
        printf("trainer: no step yet\n");
    }
    printf("processes:\n");
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(st, "processes"), i, p) {
        printf("  %-12s %-10s pid %-8lld restarts %lld\n",
               json_string_value(json_object_get(p, "name")),
               json_string_value(json_object_get(p, "state")),
               (long long)json_integer_value(json_object_get(p, "pid")),
               (long long)json_integer_value(json_object_get(p, "restarts")));
    }
    print_probes(dump);
    json_decref(st);
    return 0;
}
