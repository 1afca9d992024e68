/* swav-evaluator: probes on frozen features.
 *
 * Watch mode (live.h): checkpoints of a run folder, crops from swav-loader
 * processes that connect to --loader_bind, kNN, linear and (on request)
 * semi-supervised fine-tuning probes, records in
 * <dump_path>/eval.jsonl and <dump_path>/report.html:
 *
 *   swav-evaluator --dump_path D --sub EP --loader_bind EP2 [--once]
 *   swav-evaluator --pretrained FILE --loader_bind EP2 --dump_path D
 *
 * File mode: raw feature files (float32 (N, dim), int32 labels), one probe:
 *
 *   swav-evaluator --features_train F --labels_train L --features_val F
 *                  --labels_val L --dim D --probe knn|linear --dump_path D
 *   swav-evaluator --report D        (regenerate D/report.html only)
 *
 * --device cpu|cuda|cuda:N (live mode): the backend of the backbone and the
 * fine-tuning; kNN and the linear probe run on the host either way.
 *
 * Exit status: 0 done (or stopped by SIGTERM / SIGINT), 1 a probe, file or
 * setup failed, 2 bad flags or a --device that cannot be opened. */
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/fileio.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "evaluator/knn.h"
#include "evaluator/linear.h"
#include "evaluator/live.h"
#include "evaluator/report.h"
#include "evaluator/results.h"
#include "nn/device.h"

struct cli {
    const char *features_train, *labels_train, *features_val, *labels_val;
    int64_t dim, n_classes;
    const char *probe, *dump_path, *report, *config;
    const char *checkpoint;
    int64_t epoch, step;
    bool baseline;
    int64_t knn_k;
    double knn_temperature;
    int64_t threads;
    const char *device;
    int64_t epochs, batch_size;
    double lr, wd;
    bool nesterov;
    const char *scheduler_type;
    struct swav_int_list decay_epochs;
    double gamma, final_lr;
    int64_t seed;
    /* live mode */
    const char *sub, *loader_bind, *run, *eval_train, *eval_val, *probes, *pretrained;
    const char *linear_mode;
    const char *curve_secret, *curve_allow, *sub_public;
    /* semisup */
    int64_t labels_perc, semisup_epochs, semisup_batch_size;
    double semisup_lr, lr_last_layer, semisup_wd, semisup_gamma;
    struct swav_int_list semisup_decay_epochs;
    const char *subset_file, *semisup_data;
    int64_t eval_train_limit, eval_val_limit, size, resize, wait_s, rescan_s, feature_batch;
    bool once, random_init_baseline;
};

#define F(name, type, field, mn, mx, def, help, ...) \
    {name, type, offsetof(struct cli, field), mn, mx, def, help, __VA_ARGS__}
static const struct swav_flag cli_flags[] = {
    F("features_train", SWAV_FLAG_STR, features_train, 0, 0, "", "float32 (N, dim) training features"),
    F("labels_train", SWAV_FLAG_STR, labels_train, 0, 0, "", "int32 (N) training labels"),
    F("features_val", SWAV_FLAG_STR, features_val, 0, 0, "", "float32 (M, dim) validation features"),
    F("labels_val", SWAV_FLAG_STR, labels_val, 0, 0, "", "int32 (M) validation labels"),
    F("dim", SWAV_FLAG_INT, dim, 1, 1 << 20, "2048", "feature dimension"),
    F("n_classes", SWAV_FLAG_INT, n_classes, 0, 1 << 24, "0", "classes (0: max label + 1)"),
    F("probe", SWAV_FLAG_STR, probe, 0, 0, "knn", "knn or linear"),
    F("dump_path", SWAV_FLAG_STR, dump_path, 0, 0, ".", "where eval.jsonl and report.html go"),
    F("report", SWAV_FLAG_STR, report, 0, 0, "", "only regenerate <report>/report.html"),
    F("config", SWAV_FLAG_STR, config, 0, 0, "", "run configuration JSON file for the report"),
    F("checkpoint", SWAV_FLAG_STR, checkpoint, 0, 0, "", "checkpoint the features came from"),
    F("epoch", SWAV_FLAG_INT, epoch, -1, SWAV_FLAG_NO_MAX, "-1", "the checkpoint's epoch"),
    F("step", SWAV_FLAG_INT, step, -1, SWAV_FLAG_NO_MAX, "-1", "the checkpoint's step"),
    F("baseline", SWAV_FLAG_BOOL, baseline, 0, 0, "false", "features of the random-init network"),
    F("knn_k", SWAV_FLAG_INT, knn_k, 1, EVAL_KNN_MAX_K, "20", "kNN neighbours"),
    F("knn_temperature", SWAV_FLAG_FLOAT, knn_temperature, 1e-6, 1e6, "0.07", "kNN vote temperature"),
    F("threads", SWAV_FLAG_INT, threads, 1, 256, "1", "kNN worker threads (live: backbone threads too)"),
    F("device", SWAV_FLAG_STR, device, 0, 0, "cpu", "live: where the backbone's features and the fine-tuning run: cpu, cuda (GPU 0) or cuda:N (kNN and the linear probe stay on the host; docs/cuda.md)", 0, 0, SWAV_FLAG_DEVICE_CHOICES),
    F("epochs", SWAV_FLAG_INT, epochs, 1, 100000, "100", "linear: epochs"),
    F("batch_size", SWAV_FLAG_INT, batch_size, 1, 1 << 20, "32", "linear: batch size (live: also images per loader order and forward, unless --feature_batch)"),
    F("lr", SWAV_FLAG_FLOAT, lr, 0, 1e6, "0.3", "linear: initial learning rate"),
    F("wd", SWAV_FLAG_FLOAT, wd, 0, 1e6, "1e-6", "linear: weight decay"),
    F("nesterov", SWAV_FLAG_BOOL, nesterov, 0, 0, "false", "linear: nesterov momentum"),
    F("scheduler_type", SWAV_FLAG_STR, scheduler_type, 0, 0, "cosine", "linear: cosine or step"),
    F("decay_epochs", SWAV_FLAG_INT_LIST, decay_epochs, 0, 1e9, "60 80", "linear: step milestones"),
    F("gamma", SWAV_FLAG_FLOAT, gamma, 0, 1e6, "0.1", "linear: step decay factor"),
    F("final_lr", SWAV_FLAG_FLOAT, final_lr, 0, 1e6, "0", "linear: cosine final learning rate"),
    F("seed", SWAV_FLAG_INT, seed, 0, SWAV_FLAG_NO_MAX, "31", "linear / semisup: init, order and crop seed"),
    F("sub", SWAV_FLAG_STR, sub, 0, 0, "", "live: the trainer's PUB endpoint (checkpoint announcements)"),
    F("loader_bind", SWAV_FLAG_STR, loader_bind, 0, 0, "", "live: ROUTER endpoint swav-loader processes connect to"),
    F("run", SWAV_FLAG_STR, run, 0, 0, "swav", "live: run id of the messages"),
    F("curve_secret", SWAV_FLAG_STR, curve_secret, 0, 0, "", "live: CURVE keypair file (swav keygen): --loader_bind accepts encrypted loaders only (their --curve_server_public is its public key: the trainers' keypair when the loaders serve both), and this evaluator's key on --sub"),
    F("curve_allow", SWAV_FLAG_STR, curve_allow, 0, 0, "", "live: file of loader public keys let in on --loader_bind (with --curve_secret; empty: any)"),
    F("sub_public", SWAV_FLAG_STR, sub_public, 0, 0, "", "live: the trainer's public key file: --sub talks CURVE (the trainer's --pub_allow must list this evaluator's key)"),
    F("eval_train", SWAV_FLAG_STR, eval_train, 0, 0, "eval_train", "live: data set tag of the probes' training set"),
    F("eval_val", SWAV_FLAG_STR, eval_val, 0, 0, "eval_val", "live: data set tag of the probes' validation set"),
    F("eval_train_limit", SWAV_FLAG_INT, eval_train_limit, 0, 1 << 30, "10000", "live: stratified subset of the training set (0: all)"),
    F("eval_val_limit", SWAV_FLAG_INT, eval_val_limit, 0, 1 << 30, "0", "live: stratified subset of the validation set (0: all)"),
    F("size", SWAV_FLAG_INT, size, 8, 4096, "224", "live: center crop size"),
    F("resize", SWAV_FLAG_INT, resize, 8, 16384, "256", "live: shorter side before the center crop"),
    F("probes", SWAV_FLAG_STR, probes, 0, 0, "knn,linear", "live: probes to run (knn, linear, semisup; comma separated)"),
    F("linear_mode", SWAV_FLAG_STR, linear_mode, 0, 0, "auto", "live: linear probe on cached center-crop features (fast) or on RandomResizedCrop + flip crops through the backbone every epoch (full, eval_linear.py); auto: full with --pretrained, else fast"),
    F("labels_perc", SWAV_FLAG_INT, labels_perc, 1, 10, "10", "semisup: fine-tune on 1 or 10 percent of eval_train's labels"),
    F("subset_file", SWAV_FLAG_STR, subset_file, 0, 0, "", "semisup: SimCLR list of the labelled images (needs --semisup_data)"),
    F("semisup_data", SWAV_FLAG_STR, semisup_data, 0, 0, "", "semisup: eval_train's ImageFolder as the loaders see it (names and labels: a stratified draw or --subset_file); \"\": evenly spaced subset"),
    F("semisup_epochs", SWAV_FLAG_INT, semisup_epochs, 1, 100000, "20", "semisup: epochs (eval_semisup.py --epochs)"),
    F("semisup_batch_size", SWAV_FLAG_INT, semisup_batch_size, 1, 1 << 16, "32", "semisup: batch size"),
    F("semisup_lr", SWAV_FLAG_FLOAT, semisup_lr, 0, 1e6, "0.01", "semisup: learning rate of the trunk (eval_semisup.py --lr)"),
    F("lr_last_layer", SWAV_FLAG_FLOAT, lr_last_layer, 0, 1e6, "0.2", "semisup: learning rate of the head"),
    F("semisup_wd", SWAV_FLAG_FLOAT, semisup_wd, 0, 1e6, "0", "semisup: weight decay (0 in eval_semisup.py)"),
    F("semisup_decay_epochs", SWAV_FLAG_INT_LIST, semisup_decay_epochs, 0, 1e9, "12 16", "semisup: MultiStepLR milestones"),
    F("semisup_gamma", SWAV_FLAG_FLOAT, semisup_gamma, 0, 1e6, "0.2", "semisup: MultiStepLR decay factor"),
    F("once", SWAV_FLAG_BOOL, once, 0, 0, "false", "live: evaluate the newest checkpoint (and baseline) there, then exit"),
    F("random_init_baseline", SWAV_FLAG_BOOL, random_init_baseline, 0, 0, "true", "live: evaluate the random-init network once per run"),
    F("pretrained", SWAV_FLAG_STR, pretrained, 0, 0, "", "live: evaluate this checkpoint file and exit"),
    F("wait_s", SWAV_FLAG_INT, wait_s, 0, 1 << 30, "300", "live: --once / --pretrained give up after this long without loaders (0: never)"),
    F("feature_batch", SWAV_FLAG_INT, feature_batch, 0, 65536, "0", "live: images per loader order and backbone forward (0: --batch_size); memory grows with it"),
    F("rescan_s", SWAV_FLAG_INT, rescan_s, 1, 86400, "5", "live: seconds between scans of the run folder"),
};
#undef F

static int regen_report(const char *dir, const char *config_path)
{
    char err[1024];
    void *cfg = NULL;
    size_t len;
    if (config_path[0] &&
        swav_file_read_all(config_path, 64u << 20, &cfg, &len, err, sizeof(err)) != 0) {
        LOG_ERROR("%s", err);
        return 1;
    }
    int rc = eval_report_write(dir, cfg, err, sizeof(err));
    free(cfg);
    if (rc != 0) {
        LOG_ERROR("report: %s", err);
        return 1;
    }
    LOG_INFO("wrote %s/report.html", dir);
    return 0;
}

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static int live_main(struct cli *c, const struct swav_flag_set *set)
{
    if (!c->loader_bind[0]) {
        fprintf(stderr, "swav-evaluator: --loader_bind is required (or --features_train / "
                        "--report)\n");
        return 2;
    }
    if (c->resize < c->size) {
        fprintf(stderr, "swav-evaluator: --resize %lld is smaller than --size %lld\n",
                (long long)c->resize, (long long)c->size);
        return 2;
    }
    if (c->curve_allow[0] && !c->curve_secret[0]) {
        fprintf(stderr, "swav-evaluator: --curve_allow needs --curve_secret (the keypair of "
                        "--loader_bind)\n");
        return 2;
    }
    if (c->sub_public[0] && !c->sub[0]) {
        fprintf(stderr, "swav-evaluator: --sub_public without --sub\n");
        return 2;
    }
    struct eval_live_opts o = {
        .dump_path = c->dump_path, .sub = c->sub, .loader_bind = c->loader_bind,
        .run = c->run, .device = c->device, .eval_train = c->eval_train,
        .eval_val = c->eval_val,
        .train_limit = c->eval_train_limit, .val_limit = c->eval_val_limit,
        .size = (int)c->size, .resize = (int)c->resize, .threads = (int)c->threads,
        .batch_size = (int)(c->feature_batch ? c->feature_batch : c->batch_size),
        .once = c->once,
        .baseline = c->random_init_baseline, .pretrained = c->pretrained,
        .config_path = c->config, .wait_s = c->wait_s, .rescan_s = c->rescan_s,
        .curve_secret = c->curve_secret, .curve_allow = c->curve_allow,
        .sub_public = c->sub_public,
    };
    char list[256];
    snprintf(list, sizeof list, "%s", c->probes);
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (!strcmp(tok, "knn")) {
            o.knn = true;
        } else if (!strcmp(tok, "linear")) {
            o.linear = true;
        } else if (!strcmp(tok, "semisup")) {
            o.semisup = true;
        } else {
            fprintf(stderr, "swav-evaluator: --probes: '%s' is not knn, linear or semisup\n",
                    tok);
            return 2;
        }
    }
    if (!o.knn && !o.linear && !o.semisup) {
        fprintf(stderr, "swav-evaluator: --probes names no probe\n");
        return 2;
    }
    if (!strcmp(c->linear_mode, "full")) {
        o.linear_full = true;
    } else if (!strcmp(c->linear_mode, "auto")) {
        o.linear_full = c->pretrained[0] != '\0';
    } else if (strcmp(c->linear_mode, "fast") != 0) {
        fprintf(stderr, "swav-evaluator: --linear_mode: '%s' is not auto, fast or full\n",
                c->linear_mode);
        return 2;
    }
    eval_knn_config_default(&o.knn_cfg);
    o.knn_cfg.k = (int)c->knn_k;
    o.knn_cfg.temperature = c->knn_temperature;
    o.knn_cfg.threads = (int)c->threads;
    struct eval_linear_config *lc = &o.lin_cfg;
    eval_linear_config_default(lc);
    lc->epochs = (int)c->epochs;
    lc->batch_size = (int)c->batch_size;
    lc->lr = c->lr;
    lc->wd = c->wd;
    lc->nesterov = c->nesterov;
    lc->sched = !strcmp(c->scheduler_type, "step") ? EVAL_SCHED_STEP : EVAL_SCHED_COSINE;
    lc->final_lr = c->final_lr;
    lc->n_decay = c->decay_epochs.n;
    for (int i = 0; i < c->decay_epochs.n && i < EVAL_MAX_MILESTONES; i++)
        lc->decay_epochs[i] = (int)c->decay_epochs.v[i];
    lc->gamma = c->gamma;
    lc->seed = (uint64_t)c->seed;
    struct eval_semisup_config *sc = &o.semi_cfg;
    eval_semisup_config_default(sc);
    if (c->labels_perc != 1 && c->labels_perc != 10) {
        fprintf(stderr, "swav-evaluator: --labels_perc %lld is not 1 or 10\n",
                (long long)c->labels_perc);
        return 2;
    }
    if (c->subset_file[0] && !c->semisup_data[0]) {
        fprintf(stderr, "swav-evaluator: --subset_file needs --semisup_data (the file names "
                        "are matched against that folder)\n");
        return 2;
    }
    if (c->semisup_decay_epochs.n > EVAL_MAX_MILESTONES) {
        fprintf(stderr, "swav-evaluator: --semisup_decay_epochs: at most %d\n",
                EVAL_MAX_MILESTONES);
        return 2;
    }
    sc->labels_perc = (int)c->labels_perc;
    sc->epochs = (int)c->semisup_epochs;
    sc->batch_size = (int)c->semisup_batch_size;
    sc->lr = c->semisup_lr;
    sc->lr_last_layer = c->lr_last_layer;
    sc->wd = c->semisup_wd;
    sc->n_decay = c->semisup_decay_epochs.n;
    for (int i = 0; i < c->semisup_decay_epochs.n; i++)
        sc->decay_epochs[i] = (int)c->semisup_decay_epochs.v[i];
    sc->gamma = c->semisup_gamma;
    sc->seed = (uint64_t)c->seed;
    sc->subset_file = c->subset_file;
    o.semisup_data = c->semisup_data;
    int need = swav_flags_to_json(NULL, 0, set, 1);
    char *flags_json = swav_xmalloc((size_t)need + 1);
    swav_flags_to_json(flags_json, (size_t)need + 1, set, 1);
    o.flags_json = flags_json;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int rc = eval_live_run(&o, &g_stop);
    free(flags_json);
    return rc;
}

int main(int argc, char **argv)
{
    swav_log_init("evaluator", -1);
    struct cli c;
    struct swav_flag_set set = {cli_flags, sizeof(cli_flags) / sizeof(cli_flags[0]), &c};
    char err[1024];
    int pr = swav_flags_parse(&set, 1, argc - 1, argv + 1, err, sizeof(err));
    if (pr == 1) {
        swav_flags_usage(stdout, "swav-evaluator", &set, 1);
        return 0;
    }
    if (pr != 0) {
        fprintf(stderr, "swav-evaluator: %s\n", err);
        return 2;
    }
    if (nn_device_check(c.device, err, sizeof(err)) != 0) {
        fprintf(stderr, "swav-evaluator: %s\n", err);
        return 2;
    }
    if (c.report[0])
        return regen_report(c.report, c.config);
    if (strcmp(c.scheduler_type, "step") != 0 && strcmp(c.scheduler_type, "cosine") != 0) {
        fprintf(stderr, "swav-evaluator: --scheduler_type: '%s' is not cosine or step\n",
                c.scheduler_type);
        return 2;
    }
    if (!c.features_train[0] && (c.loader_bind[0] || c.pretrained[0] || c.sub[0] || c.once))
        return live_main(&c, &set);
    if (!strcmp(c.linear_mode, "full")) {
        fprintf(stderr, "swav-evaluator: --linear_mode full needs images (live mode); file mode "
                        "has features only\n");
        return 2;
    }
    bool knn = !strcmp(c.probe, "knn"), lin = !strcmp(c.probe, "linear");
    if (!knn && !lin) {
        fprintf(stderr, "swav-evaluator: --probe: '%s' is not knn or linear\n", c.probe);
        return 2;
    }
    if (!c.features_train[0] || !c.labels_train[0] || !c.features_val[0] || !c.labels_val[0]) {
        fprintf(stderr, "swav-evaluator: --features_train, --labels_train, --features_val and "
                        "--labels_val are required\n");
        return 2;
    }
    bool step_sched = !strcmp(c.scheduler_type, "step");
    if (!step_sched && strcmp(c.scheduler_type, "cosine") != 0) {
        fprintf(stderr, "swav-evaluator: --scheduler_type: '%s' is not cosine or step\n",
                c.scheduler_type);
        return 2;
    }

    size_t cap = (size_t)64 << 30;
    float *xt = NULL, *xv = NULL;
    int32_t *yt = NULL, *yv = NULL;
    int64_t nt, nv, nyt, nyv;
    int rc = 1;
    if (eval_read_features(c.features_train, c.dim, cap, &xt, &nt, err, sizeof(err)) ||
        eval_read_features(c.features_val, c.dim, cap, &xv, &nv, err, sizeof(err)) ||
        eval_read_labels(c.labels_train, cap, &yt, &nyt, err, sizeof(err)) ||
        eval_read_labels(c.labels_val, cap, &yv, &nyv, err, sizeof(err))) {
        LOG_ERROR("%s", err);
        goto out;
    }
    if (nt != nyt || nv != nyv) {
        LOG_ERROR("%lld training features but %lld labels, %lld validation features but %lld "
                  "labels", (long long)nt, (long long)nyt, (long long)nv, (long long)nyv);
        goto out;
    }
    int64_t ncls = c.n_classes;
    if (ncls == 0) {
        for (int64_t i = 0; i < nt; i++)
            ncls = yt[i] + 1 > ncls ? yt[i] + 1 : ncls;
        for (int64_t i = 0; i < nv; i++)
            ncls = yv[i] + 1 > ncls ? yv[i] + 1 : ncls;
    }
    if (ncls < 1 || ncls > (1 << 24)) {
        LOG_ERROR("no usable labels (classes: %lld)", (long long)ncls);
        goto out;
    }

    double t0 = swav_now_s();
    double top1 = 0, top5 = 0;
    if (knn) {
        struct eval_knn_config kc;
        eval_knn_config_default(&kc);
        kc.k = (int)c.knn_k;
        kc.temperature = c.knn_temperature;
        kc.threads = (int)c.threads;
        struct eval_acc acc;
        enum eval_knn_status st = eval_knn_run(xt, yt, nt, xv, yv, nv, c.dim, (int)ncls, &kc, &acc);
        if (st != EVAL_KNN_OK) {
            LOG_ERROR("knn probe: %s", eval_knn_status_str(st));
            goto out;
        }
        top1 = eval_acc_top1(&acc);
        top5 = eval_acc_top5(&acc);
    } else {
        struct eval_linear_config lc;
        eval_linear_config_default(&lc);
        lc.epochs = (int)c.epochs;
        lc.batch_size = (int)c.batch_size;
        lc.lr = c.lr;
        lc.wd = c.wd;
        lc.nesterov = c.nesterov;
        lc.sched = step_sched ? EVAL_SCHED_STEP : EVAL_SCHED_COSINE;
        lc.final_lr = c.final_lr;
        lc.n_decay = c.decay_epochs.n;
        for (int i = 0; i < c.decay_epochs.n && i < EVAL_MAX_MILESTONES; i++)
            lc.decay_epochs[i] = (int)c.decay_epochs.v[i];
        lc.gamma = c.gamma;
        lc.seed = (uint64_t)c.seed;
        struct eval_linear m;
        eval_linear_init(&m, c.dim, ncls, lc.batch_size, lc.seed);
        struct eval_feature_source fs = {xt, yt, nt, c.dim};
        struct eval_batch_source src = eval_linear_source_features(&fs);
        struct eval_linear_result res;
        enum eval_linear_status st =
            eval_linear_run(&m, &lc, &src, xv, yv, nv, NULL, NULL, &res);
        eval_linear_free(&m);
        if (st != EVAL_LINEAR_OK) {
            LOG_ERROR("linear probe: %s", eval_linear_status_str(st));
            goto out;
        }
        top1 = res.best_top1;
        top5 = res.best_top5;
    }
    double secs = swav_now_s() - t0;

    int need = swav_flags_to_json(NULL, 0, &set, 1);
    char *cfg_json = swav_xmalloc((size_t)need + 1);
    swav_flags_to_json(cfg_json, (size_t)need + 1, &set, 1);
    struct eval_result r = {
        .epoch = c.epoch, .step = c.step, .checkpoint = c.checkpoint, .probe = c.probe,
        .top1 = top1, .top5 = top5, .n_train = nt, .n_val = nv, .seconds = secs,
        .baseline = c.baseline, .config_json = cfg_json,
    };
    int arc = eval_result_append(c.dump_path, &r, err, sizeof(err));
    free(cfg_json);
    if (arc != 0) {
        LOG_ERROR("%s", err);
        goto out;
    }
    printf("%s top1 %.2f top5 %.2f (%lld train, %lld val, %.2f s)\n", c.probe, top1, top5,
           (long long)nt, (long long)nv, secs);
    rc = regen_report(c.dump_path, c.config);
out:
    free(xt);
    free(xv);
    free(yt);
    free(yv);
    return rc;
}
