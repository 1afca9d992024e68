/* `swav train`: a whole SwAV run on one machine, like torchrun.
 *
 *   swav train [main_swav.py flags] [swav-trainer flags]
 *              --nproc W --loaders N --workers M [--eval-data DIR]
 *              [--eval_probes knn,linear,semisup] [--eval_labels_perc 1|10]
 *              [--curve_keys KEYS] [--device cpu|cuda|cuda:N]
 *              [--assigner_device D] [--eval_device D]
 *
 * starts the assigner, N loaders (M decode threads each), W trainer ranks
 * and, with --eval-data (an ImageFolder with train/ and test/ or val/), the
 * evaluator (the probes of --eval_probes), all talking over ipc:// sockets
 * in a private folder (with --curve_keys, every link CURVE-encrypted and
 * authenticated with the keys of `swav keygen KEYS`: docs/security.md).
 * Each role's stderr goes to dump_path/logs/<role>.log; the launcher shows
 * one live progress line (from dump_path/train.jsonl) and repeats the
 * roles' warnings and errors.  A crashed loader, assigner or
 * evaluator is restarted; a crashed trainer restarts the whole trainer group,
 * which resumes from the last checkpoint (bounded retries).  SIGINT/SIGTERM:
 * trainers stop first (they write a checkpoint), then the rest.  The run ends
 * when every trainer has finished (and the evaluator has the last
 * checkpoint's results, bounded).  dump_path/status.json holds the live state
 * (`swav status`).  --device cuda puts trainer rank r on GPU r (NCCL between
 * them), and the assigner and evaluator on GPU 0 unless told otherwise. */
#include "train.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/check.h"
#include "common/fileio.h"
#include "common/log.h"
#include "common/flags.h"
#include "common/timeutil.h"
#include "supervise.h"

#define MAX_PASS 512
#define MAX_PROBES 3 /* knn, linear, semisup */

static volatile sig_atomic_t g_signal;
static void on_signal(int sig) { g_signal = sig; }

struct train_opts {
    int nproc, loaders, workers;
    const char *eval_data;
    const char *data_path, *dump_path;
    const char *run;
    int threads;
    int verbose;
    int eval_size, eval_resize;
    int eval_train_limit, eval_val_limit; /* -1: the evaluator's default */
    const char *eval_probes;       /* the evaluator's --probes, checked */
    int eval_semisup;              /* semisup is among them */
    int eval_labels_perc;          /* semisup: 1 or 10; 0: not given (10) */
    const char *eval_subset_file;  /* semisup: a SimCLR list; "": a stratified draw */
    int eval_semisup_epochs;       /* semisup: 0: the evaluator's default */
    /* the probe names of eval.jsonl records to wait for at the end */
    char probe_names[MAX_PROBES][16];
    int n_probes;
    int trainer_retries;
    /* --device (the trainers': "cuda" puts rank r on GPU r), and the
     * assigner's and evaluator's (default: the trainers' device, GPU 0 or
     * the one GPU named) */
    const char *device, *assigner_device, *eval_device;
    /* --curve_keys: absolute paths of KEYS/{assigner,trainer,loader}.{key,pub},
     * or all "" */
    char k_assigner[PATH_MAX], k_assigner_pub[PATH_MAX];
    char k_trainer[PATH_MAX], k_trainer_pub[PATH_MAX];
    char k_loader[PATH_MAX], k_loader_pub[PATH_MAX];
    /* everything else goes to the trainers as it is */
    char *pass[MAX_PASS];
    int npass;
};

/* Our own flags accept dashes too (--eval-data); the reference's are passed on. */
/* The NVIDIA GPUs the driver lists (one folder each under
 * /proc/driver/nvidia/gpus), 0 without the driver: for a hint when a run is
 * left on the CPU of a machine that has them. */
static int nvidia_gpus(void)
{
    DIR *d = opendir("/proc/driver/nvidia/gpus");
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static int take_value(int *i, int argc, char **argv, const char *name, const char **out)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return 0;
    if (a[n] == '=') {
        *out = a + n + 1;
        return 1;
    }
    if (a[n] != '\0') return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "swav train: %s needs a value\n", name);
        exit(2);
    }
    *out = argv[++*i];
    return 1;
}

static int parse_int_flag(const char *name, const char *v, int lo, int hi)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < lo || x > hi) {
        fprintf(stderr, "swav train: %s: '%s' is not an integer in [%d, %d]\n", name, v, lo, hi);
        exit(2);
    }
    return (int)x;
}

static void normalize_name(char *dst, size_t len, const char *arg)
{
    snprintf(dst, len, "%s", arg);
    for (char *p = dst + 2; *p && *p != '='; p++) {
        if (*p == '-') *p = '_';
    }
}

/* --eval_probes: a comma list of knn, linear, semisup (the evaluator's
 * --probes), checked here so that a typo stops the run at once instead of
 * the evaluator failing at every restart.  Fills the record names to wait
 * for at the end: semisup's records are semisup1 / semisup10. */
static void parse_probes(struct train_opts *o)
{
    static const char *const known[MAX_PROBES] = {"knn", "linear", "semisup"};
    const char *p = o->eval_probes;
    int seen[MAX_PROBES] = {0};
    for (;;) {
        size_t n = strcspn(p, ",");
        int k = 0;
        while (k < MAX_PROBES && !(strlen(known[k]) == n && !strncmp(p, known[k], n))) k++;
        if (n == 0) {
            fprintf(stderr, "swav train: --eval_probes: an empty entry in '%s' (want a comma "
                    "list of knn, linear, semisup)\n", o->eval_probes);
            exit(2);
        }
        if (k == MAX_PROBES) {
            fprintf(stderr, "swav train: --eval_probes: '%.*s' is not knn, linear or semisup "
                    "(in '%s')\n", (int)n, p, o->eval_probes);
            exit(2);
        }
        seen[k] = 1;
        if (!p[n]) break;
        p += n + 1;
    }
    o->n_probes = 0;
    for (int k = 0; k < MAX_PROBES; k++) {
        if (!seen[k]) continue;
        if (k == 2) {
            snprintf(o->probe_names[o->n_probes++], sizeof o->probe_names[0], "semisup%d",
                     o->eval_labels_perc ? o->eval_labels_perc : 10);
        } else {
            snprintf(o->probe_names[o->n_probes++], sizeof o->probe_names[0], "%s", known[k]);
        }
    }
    o->eval_semisup = seen[2];
}

/* --curve_keys KEYS: the keypairs of `swav keygen KEYS` (assigner, trainer,
 * loader), checked readable now so that a missing key stops the run at once
 * rather than every role at every restart. */
static void curve_keys(struct train_opts *o, const char *dir)
{
    char abs[PATH_MAX];
    if (!realpath(dir, abs)) {
        fprintf(stderr, "swav train: --curve_keys %s: %s (make the keys with `swav keygen %s`)\n",
                dir, strerror(errno), dir);
        exit(2);
    }
    struct {
        char *key, *pub;
        const char *name;
    } k[3] = {{o->k_assigner, o->k_assigner_pub, "assigner"},
              {o->k_trainer, o->k_trainer_pub, "trainer"},
              {o->k_loader, o->k_loader_pub, "loader"}};
    for (int i = 0; i < 3; i++) {
        if (snprintf(k[i].key, PATH_MAX, "%s/%s.key", abs, k[i].name) >= PATH_MAX ||
            snprintf(k[i].pub, PATH_MAX, "%s/%s.pub", abs, k[i].name) >= PATH_MAX) {
            fprintf(stderr, "swav train: --curve_keys %s: path too long\n", dir);
            exit(2);
        }
        const char *bad = access(k[i].key, R_OK) != 0 ? k[i].key
                          : access(k[i].pub, R_OK) != 0 ? k[i].pub : NULL;
        if (bad) {
            fprintf(stderr, "swav train: --curve_keys: %s: %s (`swav keygen %s` makes "
                    "assigner, trainer and loader keys)\n", bad, strerror(errno), dir);
            exit(2);
        }
    }
}

static void parse(struct train_opts *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->nproc = 1;
    o->loaders = 1;
    o->workers = 1;
    o->eval_data = "";
    o->data_path = "";
    o->dump_path = ".";
    o->run = "";
    o->eval_size = 0;
    o->eval_resize = 0;
    o->trainer_retries = 3;
    o->eval_train_limit = -1;
    o->eval_val_limit = -1;
    o->eval_probes = "knn,linear";
    o->eval_subset_file = "";
    o->device = "cpu";
    o->assigner_device = "";
    o->eval_device = "";
    int probes_given = 0;
    for (int i = 0; i < argc; i++) {
        char name[256];
        normalize_name(name, sizeof name, argv[i]);
        char *saved = argv[i];
        argv[i] = name;
        const char *v;
        if (take_value(&i, argc, argv, "--nproc", &v)) {
            o->nproc = parse_int_flag("--nproc", v, 1, 256);
        } else if (take_value(&i, argc, argv, "--loaders", &v)) {
            o->loaders = parse_int_flag("--loaders", v, 0, 256);
        } else if (take_value(&i, argc, argv, "--workers", &v)) {
            o->workers = parse_int_flag("--workers", v, 1, 256);
        } else if (take_value(&i, argc, argv, "--eval_data", &v)) {
            o->eval_data = v;
        } else if (take_value(&i, argc, argv, "--eval_size", &v)) {
            o->eval_size = parse_int_flag("--eval_size", v, 8, 4096);
        } else if (take_value(&i, argc, argv, "--eval_resize", &v)) {
            o->eval_resize = parse_int_flag("--eval_resize", v, 8, 16384);
        } else if (take_value(&i, argc, argv, "--eval_train_limit", &v)) {
            o->eval_train_limit = parse_int_flag("--eval_train_limit", v, 0, 1 << 30);
        } else if (take_value(&i, argc, argv, "--eval_val_limit", &v)) {
            o->eval_val_limit = parse_int_flag("--eval_val_limit", v, 0, 1 << 30);
        } else if (take_value(&i, argc, argv, "--eval_probes", &v)) {
            o->eval_probes = v;
            probes_given = 1;
        } else if (take_value(&i, argc, argv, "--eval_labels_perc", &v)) {
            o->eval_labels_perc = parse_int_flag("--eval_labels_perc", v, 1, 10);
            if (o->eval_labels_perc != 1 && o->eval_labels_perc != 10) {
                fprintf(stderr, "swav train: --eval_labels_perc: '%s' is not 1 or 10\n", v);
                exit(2);
            }
        } else if (take_value(&i, argc, argv, "--eval_subset_file", &v)) {
            o->eval_subset_file = v;
        } else if (take_value(&i, argc, argv, "--eval_semisup_epochs", &v)) {
            o->eval_semisup_epochs = parse_int_flag("--eval_semisup_epochs", v, 1, 100000);
        } else if (take_value(&i, argc, argv, "--trainer_retries", &v)) {
            o->trainer_retries = parse_int_flag("--trainer_retries", v, 0, 1000);
        } else if (take_value(&i, argc, argv, "--curve_keys", &v)) {
            curve_keys(o, v);
        } else if (take_value(&i, argc, argv, "--device", &v)) {
            o->device = v;
        } else if (take_value(&i, argc, argv, "--assigner_device", &v)) {
            o->assigner_device = v;
        } else if (take_value(&i, argc, argv, "--eval_device", &v)) {
            o->eval_device = v;
        } else if (!strcmp(name, "--verbose")) {
            o->verbose = 1;
        } else {
            /* a trainer flag: remember the ones we need, pass all on */
            int j = i;
            if (take_value(&j, argc, argv, "--data_path", &v)) o->data_path = v;
            j = i;
            if (take_value(&j, argc, argv, "--dump_path", &v)) o->dump_path = v;
            j = i;
            if (take_value(&j, argc, argv, "--run", &v)) o->run = v;
            j = i;
            if (take_value(&j, argc, argv, "--threads", &v)) o->threads = atoi(v);
            if (!strcmp(name, "--rank") || !strcmp(name, "--world_size") ||
                !strncmp(name, "--rank=", 7) || !strncmp(name, "--world_size=", 13)) {
                fprintf(stderr, "swav train: %s is set by the launcher (use --nproc)\n", saved);
                exit(2);
            }
            argv[i] = saved;
            if (o->npass >= MAX_PASS) {
                fprintf(stderr, "swav train: too many arguments\n");
                exit(2);
            }
            o->pass[o->npass++] = saved;
            continue;
        }
        argv[i] = saved;
    }
    if (!o->data_path[0]) {
        fprintf(stderr, "swav train: --data_path DIR is required (an image folder)\n");
        exit(2);
    }
    int gpu = 0;
    int kind = swav_flags_parse_device(o->device, &gpu);
    if (kind < 0) {
        fprintf(stderr, "swav train: --device %s: not one of cpu, cuda, cuda:N\n", o->device);
        exit(2);
    }
    if (kind == 1 && strcmp(o->device, "cuda") != 0 && o->nproc > 1) {
        fprintf(stderr, "swav train: --device %s names one GPU for %d ranks: give --device cuda "
                        "(rank r trains on GPU r)\n", o->device, o->nproc);
        exit(2);
    }
    /* the assigner and the evaluator follow the trainers unless told */
    if (!o->assigner_device[0]) o->assigner_device = o->device;
    if (!o->eval_device[0]) o->eval_device = o->device;
    if (swav_flags_parse_device(o->assigner_device, &gpu) < 0 ||
        swav_flags_parse_device(o->eval_device, &gpu) < 0) {
        fprintf(stderr, "swav train: --assigner_device %s / --eval_device %s: not one of cpu, "
                        "cuda, cuda:N\n", o->assigner_device, o->eval_device);
        exit(2);
    }
    parse_probes(o);
    int semisup_flags = o->eval_labels_perc || o->eval_subset_file[0] || o->eval_semisup_epochs;
    if ((probes_given || semisup_flags) && !o->eval_data[0]) {
        fprintf(stderr, "swav train: --eval_probes, --eval_labels_perc, --eval_subset_file "
                        "and --eval_semisup_epochs need --eval-data DIR (the evaluator runs "
                        "only with it)\n");
        exit(2);
    }
    if (semisup_flags && !o->eval_semisup) {
        fprintf(stderr, "swav train: --eval_labels_perc, --eval_subset_file and "
                        "--eval_semisup_epochs need semisup in --eval_probes (now '%s')\n",
                o->eval_probes);
        exit(2);
    }
    if (o->eval_subset_file[0] && access(o->eval_subset_file, R_OK) != 0) {
        fprintf(stderr, "swav train: --eval_subset_file %s: %s\n", o->eval_subset_file,
                strerror(errno));
        exit(2);
    }
}

/* argv builder */
struct args {
    char *v[SUP_MAX_ARGS];
    int n;
};

static void arg(struct args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void arg(struct args *a, const char *fmt, ...)
{
    SWAV_ASSERT(a->n < SUP_MAX_ARGS - 1);
    va_list ap;
    va_start(ap, fmt);
    char buf[8192];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    a->v[a->n++] = swav_xstrdup(buf);
    a->v[a->n] = NULL;
}

static void args_free(struct args *a)
{
    for (int i = 0; i < a->n; i++) free(a->v[i]);
    a->n = 0;
}

/* The folder the role binaries are in: beside this program's build folder
 * (build/launcher/swav -> build/trainer/swav-trainer), or installed together. */
static void role_path(char *buf, size_t len, const char *self_dir, const char *sub,
                      const char *name)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/../%s/%s", self_dir, sub, name);
    if (access(p, X_OK) == 0) {
        snprintf(buf, len, "%s", p);
        return;
    }
    snprintf(buf, len, "%s/%s", self_dir, name);
}

/* ---- live output ------------------------------------------------------------ */

struct tail {
    char path[PATH_MAX];
    off_t off;
};

/* Prints new WARN/ERROR lines of a role's log. */
static void tail_errors(struct tail *t, int live_line)
{
    int fd = open(t->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size < t->off) t->off = 0; /* truncated */
    char buf[65536];
    ssize_t n;
    while ((n = pread(fd, buf, sizeof buf - 1, t->off)) > 0) {
        buf[n] = '\0';
        char *end = strrchr(buf, '\n');
        if (!end) break;
        *end = '\0';
        t->off += (end - buf) + 1;
        for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
            if (strstr(line, " WARN ") || strstr(line, " ERROR ") || strstr(line, "cannot run")) {
                if (live_line) fputs("\r\033[K", stderr);
                fprintf(stderr, "%s\n", line);
            }
        }
    }
    close(fd);
}

/* Last complete line of train.jsonl (for the progress line and status). */
static json_t *last_json_line(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    json_t *o = NULL;
    if (fstat(fd, &st) == 0 && st.st_size > 0) {
        off_t from = st.st_size > 8192 ? st.st_size - 8192 : 0;
        char buf[8193];
        ssize_t n = pread(fd, buf, 8192, from);
        if (n > 0) {
            buf[n] = '\0';
            while (n > 0 && buf[n - 1] == '\n') buf[--n] = '\0';
            char *line = strrchr(buf, '\n');
            line = line ? line + 1 : buf;
            o = json_loads(line, 0, NULL);
        }
    }
    close(fd);
    return o;
}

static json_t *status_json(const struct sup *s, json_t *progress, const struct train_opts *o,
                           const char *state)
{
    json_t *root = json_object();
    json_object_set_new(root, "state", json_string(state));
    json_object_set_new(root, "time", json_real((double)swav_wall_ms() / 1000.0));
    json_object_set_new(root, "launcher_pid", json_integer(getpid()));
    json_object_set_new(root, "dump_path", json_string(o->dump_path));
    json_t *procs = json_array();
    for (int i = 0; i < s->n; i++) {
        const struct sup_child *c = &s->child[i];
        static const char *names[] = {"idle", "running", "restarting", "exited", "failed"};
        json_t *p = json_object();
        json_object_set_new(p, "name", json_string(c->name));
        json_object_set_new(p, "pid", json_integer(c->pid));
        json_object_set_new(p, "state", json_string(names[c->state]));
        json_object_set_new(p, "restarts", json_integer(c->restarts));
        json_array_append_new(procs, p);
    }
    json_object_set_new(root, "processes", procs);
    if (progress) json_object_set(root, "trainer", progress);
    return root;
}

/* Said once when status.json cannot be written (a full disk), and once when
 * it can again: meanwhile `swav status` shows a stale state. */
static void write_status(const char *path, json_t *st)
{
    static int failing;
    char *s = json_dumps(st, JSON_INDENT(1) | JSON_REAL_PRECISION(15));
    if (!s) return;
    char err[PATH_MAX + 128];
    if (swav_file_write_atomic(path, s, strlen(s), err, sizeof err) != 0) {
        if (!failing) LOG_WARN("%s; swav status shows the last state written", err);
        failing = 1;
    } else if (failing) {
        LOG_INFO("%s written again", path);
        failing = 0;
    }
    free(s);
}

static void progress_line(json_t *p, int live, int64_t *last_print)
{
    if (!p) return;
    double data = json_number_value(json_object_get(p, "wait_data_s"));
    double codes = json_number_value(json_object_get(p, "wait_codes_s"));
    double busy = data + codes + json_number_value(json_object_get(p, "compute_s")) + 1e-12;
    char line[256];
    snprintf(line, sizeof line,
             "epoch %lld step %lld loss %.4f lr %.4g %.1f img/s data %.0f%% codes %.0f%%%s",
             (long long)json_integer_value(json_object_get(p, "epoch")),
             (long long)json_integer_value(json_object_get(p, "step")),
             json_number_value(json_object_get(p, "loss")),
             json_number_value(json_object_get(p, "lr")),
             json_number_value(json_object_get(p, "images_per_s")), 100 * data / busy,
             100 * codes / busy,
             json_is_true(json_object_get(p, "queue_used")) ? " queue on" : "");
    if (live) {
        fprintf(stderr, "\r\033[K%s", line);
    } else if (swav_now_ms() - *last_print >= 30000) {
        LOG_INFO("%s", line);
        *last_print = swav_now_ms();
    }
}

/* The largest integer `key` of a JSON-lines file, -1 when none. */
static int64_t max_step_in(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[16384];
    int64_t best = -1;
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        if (!o) continue;
        json_t *v = json_object_get(o, key);
        if (json_is_integer(v) && json_integer_value(v) > best) best = json_integer_value(v);
        json_decref(o);
    }
    fclose(f);
    return best;
}

/* Which of names[0..n) have a (non-baseline) result for a checkpoint at or
 * after final_step: bit k for names[k]. */
static unsigned probes_done(const char *path, int64_t final_step, const char (*names)[16], int n)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[16384];
    unsigned done = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        if (!o) continue;
        json_t *st = json_object_get(o, "step");
        const char *probe = json_string_value(json_object_get(o, "probe"));
        if (probe && !json_is_true(json_object_get(o, "baseline")) && json_is_integer(st) &&
            json_integer_value(st) >= final_step) {
            for (int k = 0; k < n; k++) {
                if (!strcmp(probe, names[k])) done |= 1u << k;
            }
        }
        json_decref(o);
    }
    fclose(f);
    return done;
}

/* The evaluator learns of the last checkpoint like of any other: give it
 * time (bounded) to put the result of every probe asked for (--eval_probes)
 * of that checkpoint into eval.jsonl, and say how that ended. */
static void wait_for_evaluator(struct sup *s, int i_eval, struct tail *t,
                               const struct train_opts *o, const char *jsonl)
{
    char evals[PATH_MAX];
    snprintf(evals, sizeof evals, "%s/eval.jsonl", o->dump_path);
    int64_t final_step = max_step_in(jsonl, "step") + 1;
    LOG_INFO("training done; waiting (at most 10 minutes) for the evaluator's results of the "
             "last checkpoint (step %lld)", (long long)final_step);
    unsigned all = (1u << o->n_probes) - 1, done = 0;
    int64_t until = swav_now_ms() + 600000;
    const char *why = "in 10 minutes";
    for (;;) {
        done = probes_done(evals, final_step, o->probe_names, o->n_probes);
        if (done == all || g_signal) break;
        if (swav_now_ms() >= until) break;
        sup_poll(s);
        tail_errors(t, 0);
        if (s->child[i_eval].state != SUP_RUNNING &&
            s->child[i_eval].state != SUP_WAITING_RESTART) {
            why = "before the evaluator stopped";
            break;
        }
        swav_sleep_ms(500);
    }
    char have[64] = "", missing[64] = "";
    for (int k = 0; k < o->n_probes; k++) {
        char *list = done >> k & 1 ? have : missing;
        size_t n = strlen(list);
        snprintf(list + n, sizeof have - n, "%s%s", n ? ", " : "", o->probe_names[k]);
    }
    if (done == all) {
        LOG_INFO("evaluator: %s of the last checkpoint in eval.jsonl", have);
    } else if (!g_signal) {
        LOG_WARN("evaluator: no %s result of the last checkpoint (step %lld) %s%s%s", missing,
                 (long long)final_step, why, have[0] ? "; have " : "", have);
    }
}

/* ---- main --------------------------------------------------------------------- */

int swav_train_main(int argc, char **argv, const char *self_dir)
{
    struct train_opts o;
    parse(&o, argc, argv);
    char err[512];
    if (swav_mkdirs(o.dump_path, err, sizeof err) != 0) {
        fprintf(stderr, "swav train: %s\n", err);
        return 2;
    }
    char logs[PATH_MAX];
    snprintf(logs, sizeof logs, "%s/logs", o.dump_path);
    if (swav_mkdirs(logs, err, sizeof err) != 0) {
        fprintf(stderr, "swav train: %s\n", err);
        return 2;
    }
    char sock[] = "/tmp/swav-XXXXXX";
    if (!mkdtemp(sock)) {
        fprintf(stderr, "swav train: cannot make a socket folder: %s\n", strerror(errno));
        return 1;
    }
    char run[80];
    snprintf(run, sizeof run, "%s", o.run[0] ? o.run : "swav");
    char bin_trainer[PATH_MAX], bin_loader[PATH_MAX], bin_assigner[PATH_MAX], bin_eval[PATH_MAX];
    role_path(bin_trainer, sizeof bin_trainer, self_dir, "trainer", "swav-trainer");
    role_path(bin_loader, sizeof bin_loader, self_dir, "loader", "swav-loader");
    role_path(bin_assigner, sizeof bin_assigner, self_dir, "assigner", "swav-assigner");
    role_path(bin_eval, sizeof bin_eval, self_dir, "evaluator", "swav-evaluator");

    struct sup s;
    sup_init(&s);
    struct args a = {0};
    /* stop order: trainers (0) checkpoint first, then evaluator and loaders (1), assigner (2) */
    arg(&a, "%s", bin_assigner);
    arg(&a, "--endpoint=ipc://%s/assigner", sock);
    arg(&a, "--run=%s", run);
    arg(&a, "--threads=1");
    arg(&a, "--device=%s", o.assigner_device);
    /* a restarted trainer may take over its dead predecessor's rank after 5 s */
    arg(&a, "--stale_peer_ms=5000");
    const int curve = o.k_trainer[0] != '\0';
    if (curve) {
        arg(&a, "--curve_secret=%s", o.k_assigner);
        arg(&a, "--curve_allow=%s", o.k_trainer_pub);
    }
    int i_assigner = sup_add(&s, "assigner", a.v, SUP_RESTART_ALWAYS, 0, 2, 20);
    args_free(&a);

    char ring[8192] = "";
    for (int r = 0; r < o.nproc; r++) {
        size_t n = strlen(ring);
        snprintf(ring + n, sizeof ring - n, "%sipc://%s/ring-%d", r ? "," : "", sock, r);
    }
    int first_trainer = s.n;
    for (int r = 0; r < o.nproc; r++) {
        arg(&a, "%s", bin_trainer);
        for (int k = 0; k < o.npass; k++) arg(&a, "%s", o.pass[k]);
        arg(&a, "--rank=%d", r);
        arg(&a, "--world_size=%d", o.nproc);
        if (!strcmp(o.device, "cuda")) {
            arg(&a, "--device=cuda:%d", r);
        } else {
            arg(&a, "--device=%s", o.device);
        }
        arg(&a, "--run=%s", run);
        arg(&a, "--assigner=ipc://%s/assigner", sock);
        arg(&a, "--loader_bind=ipc://%s/loader-%d", sock, r);
        if (o.nproc > 1) arg(&a, "--ring_endpoints=%s", ring);
        if (r == 0) arg(&a, "--pub=ipc://%s/checkpoints", sock);
        if (curve) {
            /* the trainer keypair: server key for the loaders, client key to
             * the assigner, the ring's key (all ranks), the --pub server key,
             * whose one subscriber, the evaluator, holds the same keypair */
            arg(&a, "--curve_secret=%s", o.k_trainer);
            arg(&a, "--curve_allow=%s", o.k_loader_pub);
            arg(&a, "--assigner_public=%s", o.k_assigner_pub);
            if (r == 0) arg(&a, "--pub_allow=%s", o.k_trainer_pub);
        }
        char name[48];
        snprintf(name, sizeof name, "trainer %d", r);
        sup_add(&s, name, a.v, SUP_RESTART_GROUP, 1, 0, o.trainer_retries);
        args_free(&a);
    }
    char eval_train[PATH_MAX] = "", eval_val[PATH_MAX] = "";
    if (o.eval_data[0]) {
        snprintf(eval_train, sizeof eval_train, "%s/train", o.eval_data);
        snprintf(eval_val, sizeof eval_val, "%s/val", o.eval_data);
        if (access(eval_val, F_OK) != 0) snprintf(eval_val, sizeof eval_val, "%s/test", o.eval_data);
        if (access(eval_train, F_OK) != 0 || access(eval_val, F_OK) != 0) {
            fprintf(stderr, "swav train: --eval-data %s needs train/ and val/ (or test/) folders\n",
                    o.eval_data);
            return 2;
        }
    }
    for (int k = 0; k < o.loaders; k++) {
        arg(&a, "%s", bin_loader);
        for (int r = 0; r < o.nproc; r++) arg(&a, "--connect=ipc://%s/loader-%d", sock, r);
        if (o.eval_data[0]) {
            arg(&a, "--connect=ipc://%s/eval-loader", sock);
            arg(&a, "--dataset=eval_train=%s", eval_train);
            arg(&a, "--dataset=eval_val=%s", eval_val);
        }
        arg(&a, "--data_path=%s", o.data_path);
        arg(&a, "--dump_path=%s", o.dump_path);
        arg(&a, "--run=%s", run);
        arg(&a, "--workers=%d", o.workers);
        arg(&a, "--loader_id=loader-%d", k);
        if (curve) {
            arg(&a, "--curve_secret=%s", o.k_loader);
            arg(&a, "--curve_server_public=%s", o.k_trainer_pub);
        }
        char name[48];
        snprintf(name, sizeof name, "loader %d", k);
        sup_add(&s, name, a.v, SUP_RESTART_ALWAYS, 0, 1, 100);
        args_free(&a);
    }
    int i_eval = -1;
    if (o.eval_data[0]) {
        arg(&a, "%s", bin_eval);
        arg(&a, "--dump_path=%s", o.dump_path);
        arg(&a, "--sub=ipc://%s/checkpoints", sock);
        arg(&a, "--loader_bind=ipc://%s/eval-loader", sock);
        arg(&a, "--eval_train=eval_train");
        arg(&a, "--eval_val=eval_val");
        arg(&a, "--run=%s", run);
        if (o.eval_size) arg(&a, "--size=%d", o.eval_size);
        if (o.eval_resize) arg(&a, "--resize=%d", o.eval_resize);
        if (o.eval_train_limit >= 0) arg(&a, "--eval_train_limit=%d", o.eval_train_limit);
        if (o.eval_val_limit >= 0) arg(&a, "--eval_val_limit=%d", o.eval_val_limit);
        arg(&a, "--probes=%s", o.eval_probes);
        if (curve) {
            /* a consumer of the same loaders as the trainers: their keypair
             * (the loaders know one server key), which --pub_allow lets in */
            arg(&a, "--curve_secret=%s", o.k_trainer);
            arg(&a, "--curve_allow=%s", o.k_loader_pub);
            arg(&a, "--sub_public=%s", o.k_trainer_pub);
        }
        if (o.eval_semisup) {
            /* the folder the loaders serve as eval_train: its file names give
             * the stratified labelled subset (saved beside eval.jsonl) and
             * match --eval_subset_file's names */
            arg(&a, "--semisup_data=%s", eval_train);
            arg(&a, "--labels_perc=%d", o.eval_labels_perc ? o.eval_labels_perc : 10);
            if (o.eval_subset_file[0]) arg(&a, "--subset_file=%s", o.eval_subset_file);
            if (o.eval_semisup_epochs) arg(&a, "--semisup_epochs=%d", o.eval_semisup_epochs);
        }
        arg(&a, "--threads=1");
        arg(&a, "--device=%s", o.eval_device);
        i_eval = sup_add(&s, "evaluator", a.v, SUP_RESTART_ALWAYS, 0, 1, 100);
        args_free(&a);
    }
    (void)i_assigner;

    /* Each child's stderr (and stdout) to its own log file. */
    struct tail tails[SUP_MAX_CHILDREN];
    for (int i = 0; i < s.n; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s", s.child[i].name);
        for (char *p = name; *p; p++) if (*p == ' ') *p = '-';
        if (snprintf(tails[i].path, sizeof tails[i].path, "%s/%s.log", logs, name) >=
            (int)sizeof tails[i].path) {
            fprintf(stderr, "swav train: --dump_path is too long\n");
            return 2;
        }
        struct stat st;
        tails[i].off = stat(tails[i].path, &st) == 0 ? st.st_size : 0;
        memcpy(s.child[i].log_path, tails[i].path, sizeof s.child[i].log_path);
    }

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* The roles share the machine's cores: OpenMP threads that spin while they
     * wait steal the CPU the loaders and the other ranks need (seen on the
     * 2-core machine: a 2-thread trainer beside a loader and an evaluator spent
     * half its samples in libgomp's spin loop and ran several times slower
     * than a 1-thread one).  An explicit setting in the environment wins. */
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);

    LOG_INFO("run %s: %d trainer%s, %d loader%s x %d workers%s; logs in %s, sockets in %s%s", run,
             o.nproc, o.nproc > 1 ? "s" : "", o.loaders, o.loaders == 1 ? "" : "s", o.workers,
             o.eval_data[0] ? ", live evaluation" : "", logs, sock,
             curve ? ", CURVE on every link" : "");
    int gpus = strcmp(o.device, "cpu") ? 0 : nvidia_gpus();
    if (gpus > 0) {
        LOG_INFO("this machine has %d NVIDIA GPU%s and the run trains on the CPU (--device cpu, "
                 "the default): --device cuda --nproc %d puts a rank on each (docs/cuda.md)",
                 gpus, gpus == 1 ? "" : "s", gpus);
    }
    if (sup_start_all(&s) != 0) {
        sup_stop_all(&s, 5000);
        return 1;
    }
    int live = isatty(STDERR_FILENO) && !o.verbose;
    char jsonl[PATH_MAX], status_path[PATH_MAX];
    snprintf(jsonl, sizeof jsonl, "%s/train.jsonl", o.dump_path);
    snprintf(status_path, sizeof status_path, "%s/status.json", o.dump_path);
    int64_t last_print = 0;
    int rc = 0;
    const char *state = "running";
    for (;;) {
        sup_poll(&s);
        for (int i = 0; i < s.n; i++) tail_errors(&tails[i], live);
        json_t *p = last_json_line(jsonl);
        progress_line(p, live, &last_print);
        json_t *st = status_json(&s, p, &o, state);
        write_status(status_path, st);
        json_decref(st);
        json_decref(p);
        int trainers_done = 1, trainers_failed = 0;
        for (int r = 0; r < o.nproc; r++) {
            const struct sup_child *c = &s.child[first_trainer + r];
            if (c->state == SUP_FAILED) trainers_failed = 1;
            if (c->state != SUP_EXITED) trainers_done = 0;
        }
        if (g_signal) {
            if (live) fputs("\n", stderr);
            LOG_INFO("signal %d: stopping (trainers write a checkpoint first)", (int)g_signal);
            state = "stopped";
            break;
        }
        if (trainers_failed) {
            if (live) fputs("\n", stderr);
            LOG_ERROR("the trainers failed after %d restarts: see %s/trainer-0.log", o.trainer_retries,
                      logs);
            state = "failed";
            rc = 1;
            break;
        }
        if (trainers_done) {
            if (live) fputs("\n", stderr);
            int bad = 0;
            for (int r = 0; r < o.nproc; r++) {
                int ws = s.child[first_trainer + r].last_status;
                if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) bad = 1;
            }
            state = bad ? "failed" : "done";
            rc = bad;
            break;
        }
        swav_sleep_ms(live ? 250 : 1000);
    }
    if (i_eval >= 0 && !strcmp(state, "done")) {
        wait_for_evaluator(&s, i_eval, &tails[i_eval], &o, jsonl);
    }
    sup_stop_all(&s, 60000);
    for (int i = 0; i < s.n; i++) tail_errors(&tails[i], 0);
    json_t *p = last_json_line(jsonl);
    json_t *st = status_json(&s, p, &o, state);
    write_status(status_path, st);
    json_decref(st);
    json_decref(p);
    sup_free(&s);
    if (swav_rm_tree(sock, err, sizeof err) != 0) LOG_WARN("%s", err);
    LOG_INFO("run %s %s (status in %s)", run, state, status_path);
    return rc;
}
