/* Semi-supervised subsets: stratified (round(fraction * n_class), at least 1,
 * per class), deterministic (same seed -> same files, another seed -> other
 * files), written and read back in SimCLR's list format; a bad list is a
 * status with a message, not a crash.  Also the fine-tuning schedule
 * (MultiStepLR per parameter group, eval_semisup.py's defaults), the result
 * record (eval.jsonl line) and the checkpoint folder scan.  And the
 * fine-tuning loop: a resnet18 (width 8, small stem) from random init,
 * fine-tuned on 96 generated 16x16 images of 4 colour classes, reaches >= 90%
 * top-1 on 64 others (chance 25%); the step's parameter groups and
 * argument checks. */
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/check.h"
#include "common/fileio.h"
#include "common/rng.h"
#include "nn/backend.h"
#include "nn/resnet.h"
#include "nn/tensor.h"
#include "evaluator/ckpt_scan.h"
#include "evaluator/results.h"
#include "evaluator/semisup.h"
#include "tests/expect.h"


enum { NCLS = 7 };

static void write_text(const char *path, const char *s)
{
    char err[256];
    SWAV_ASSERT(swav_file_write_atomic(path, s, strlen(s), err, sizeof(err)) == 0);
}

static void test_subsets(const char *dir)
{
    /* classes of very different sizes: 1, 5, 49, 50, 150, 333, 1300 */
    const int sizes[NCLS] = {1, 5, 49, 50, 150, 333, 1300};
    int n = 0;
    for (int c = 0; c < NCLS; c++)
        n += sizes[c];
    int32_t *labels = malloc(sizeof(int32_t) * n);
    char **names = malloc(sizeof(char *) * n);
    int i = 0;
    for (int c = 0; c < NCLS; c++)
        for (int j = 0; j < sizes[c]; j++, i++) {
            labels[i] = c;
            names[i] = malloc(64);
            snprintf(names[i], 64, "n0%d/n0%d_%d.JPEG", 1440 + c, 1440 + c, 10000 + j * 7);
        }
    const char *const *paths = (const char *const *)names;

    const double fracs[2] = {0.01, 0.10};
    for (int f = 0; f < 2; f++) {
        uint32_t *a, *b, *o;
        int64_t na, nb, no;
        SWAV_ASSERT(eval_subset_stratified(labels, n, NCLS, fracs[f], 31, &a, &na) == EVAL_SUBSET_OK);
        SWAV_ASSERT(eval_subset_stratified(labels, n, NCLS, fracs[f], 31, &b, &nb) == EVAL_SUBSET_OK);
        SWAV_ASSERT(eval_subset_stratified(labels, n, NCLS, fracs[f], 32, &o, &no) == EVAL_SUBSET_OK);
        EXPECT(na == nb && !memcmp(a, b, sizeof(uint32_t) * na), "same seed, other subset");
        EXPECT(na == no && memcmp(a, o, sizeof(uint32_t) * na) != 0,
               "another seed gave the same subset");
        int per[NCLS] = {0};
        for (int64_t k = 0; k < na; k++) {
            per[labels[a[k]]]++;
            EXPECT(k == 0 || a[k] > a[k - 1], "subset not sorted or has duplicates");
        }
        for (int c = 0; c < NCLS; c++) {
            int want = (int)floor(fracs[f] * sizes[c] + 0.5);
            want = want < 1 ? 1 : want;
            EXPECT(per[c] == want, "fraction %.2f class %d: %d images, want %d", fracs[f], c,
                   per[c], want);
        }
        printf("subset %.0f%%: %lld of %d images; per class", fracs[f] * 100, (long long)na, n);
        for (int c = 0; c < NCLS; c++)
            printf(" %d", per[c]);
        printf("\n");

        /* SimCLR format round trip */
        char path[4096], err[1024];
        snprintf(path, sizeof(path), "%s/%dpercent.txt", dir, f ? 10 : 1);
        SWAV_ASSERT(eval_subset_write(path, paths, a, na, err, sizeof(err)) == EVAL_SUBSET_OK);
        void *txt;
        size_t len;
        SWAV_ASSERT(swav_file_read_all(path, 1 << 20, &txt, &len, err, sizeof(err)) == 0);
        const char *first = eval_basename(paths[a[0]]);
        EXPECT(!strncmp(txt, first, strlen(first)) && ((char *)txt)[strlen(first)] == '\n',
               "first line is not '%s'", first);
        EXPECT(!strchr(txt, '/'), "a folder in the list");
        free(txt);
        uint32_t *r;
        int64_t nr;
        enum eval_subset_status st = eval_subset_read(path, paths, n, &r, &nr, err, sizeof(err));
        EXPECT(st == EVAL_SUBSET_OK && nr == na && !memcmp(r, a, sizeof(uint32_t) * na),
               "read back differs: %s", st ? err : "");
        if (st == EVAL_SUBSET_OK)
            free(r);
        free(a);
        free(b);
        free(o);
    }

    /* a hand-written list in SimCLR's format with CRLF and a trailing blank */
    char path[4096], err[1024], txt[512];
    uint32_t *r;
    int64_t nr;
    snprintf(path, sizeof(path), "%s/hand.txt", dir);
    snprintf(txt, sizeof(txt), "%s\r\n%s\n\n", eval_basename(names[6]), eval_basename(names[0]));
    write_text(path, txt);
    EXPECT(eval_subset_read(path, paths, n, &r, &nr, err, sizeof(err)) == EVAL_SUBSET_OK &&
               nr == 2 && r[0] == 0 && r[1] == 6,
           "hand list: %s", err);
    if (nr == 2)
        free(r);
    /* faults */
    struct {
        const char *text;
        enum eval_subset_status want;
    } bad[] = {
        {"n01440_nosuch.JPEG\n", EVAL_SUBSET_ERR_UNKNOWN},
        {"n01441/n01441_10000.JPEG\n", EVAL_SUBSET_ERR_FORMAT},
        {"n01441_10000.JPEG\nn01441_10000.JPEG\n", EVAL_SUBSET_ERR_DUPLICATE},
        {"\n\n", EVAL_SUBSET_ERR_FORMAT},
        {"n01441_10000.JPEG\n\nn01441_10007.JPEG\n", EVAL_SUBSET_ERR_FORMAT},
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        write_text(path, bad[k].text);
        err[0] = 0;
        enum eval_subset_status st = eval_subset_read(path, paths, n, &r, &nr, err, sizeof(err));
        EXPECT(st == bad[k].want, "bad list %zu: status %d (%s), want %d", k, st, err,
               bad[k].want);
        EXPECT(err[0] != 0, "bad list %zu: no message", k);
    }
    snprintf(path, sizeof(path), "%s/missing.txt", dir);
    EXPECT(eval_subset_read(path, paths, n, &r, &nr, err, sizeof(err)) == EVAL_SUBSET_ERR_IO,
           "missing list");
    /* ambiguous: two files with the same base name in different classes */
    char *dup[2] = {"a/x.JPEG", "b/x.JPEG"};
    snprintf(path, sizeof(path), "%s/amb.txt", dir);
    write_text(path, "x.JPEG\n");
    EXPECT(eval_subset_read(path, (const char *const *)dup, 2, &r, &nr, err, sizeof(err)) ==
               EVAL_SUBSET_ERR_AMBIGUOUS,
           "ambiguous name accepted");
    /* a run's subset: drawn, then saved beside the results; read back when
     * given as the subset file, the same images */
    {
        struct eval_semisup_config sc;
        eval_semisup_config_default(&sc);
        sc.labels_perc = 1;
        char dump[4096], saved[4200];
        snprintf(dump, sizeof(dump), "%s/run", dir);
        uint32_t *a, *b2;
        int64_t na, nb2;
        SWAV_ASSERT(eval_subset_prepare(&sc, dump, paths, labels, n, NCLS, &a, &na, err,
                                        sizeof(err)) == EVAL_SUBSET_OK);
        snprintf(saved, sizeof(saved), "%s/semisup-1percent.txt", dump);
        sc.subset_file = saved;
        sc.seed = 99; /* ignored when a list is given */
        enum eval_subset_status st =
            eval_subset_prepare(&sc, dump, paths, labels, n, NCLS, &b2, &nb2, err, sizeof(err));
        EXPECT(st == EVAL_SUBSET_OK && na == nb2 && !memcmp(a, b2, sizeof(uint32_t) * na),
               "prepared subset does not read back: %s", st ? err : "");
        char js[1024];
        eval_semisup_config_json(&sc, js, sizeof(js));
        json_error_t je;
        json_t *o = json_loads(js, 0, &je);
        EXPECT(json_is_object(o) && json_integer_value(json_object_get(o, "labels_perc")) == 1 &&
                   json_array_size(json_object_get(o, "decay_epochs")) == 2 &&
                   fabs(json_number_value(json_object_get(o, "lr_last_layer")) - 0.2) < 1e-12,
               "semisup config json: %s", js);
        json_decref(o);
        sc.labels_perc = 5;
        EXPECT(eval_subset_prepare(&sc, dump, paths, labels, n, NCLS, &b2, &nb2, err,
                                   sizeof(err)) == EVAL_SUBSET_ERR_ARGS,
               "labels_perc 5 accepted");
        free(a);
        if (st == EVAL_SUBSET_OK)
            free(b2);
    }
    int32_t badl[3] = {0, 1, 9};
    EXPECT(eval_subset_stratified(badl, 3, 2, 0.1, 1, &r, &nr) == EVAL_SUBSET_ERR_ARGS,
           "bad label accepted");
    EXPECT(eval_subset_stratified(labels, n, NCLS, 0.0, 1, &r, &nr) == EVAL_SUBSET_ERR_ARGS,
           "fraction 0 accepted");
    for (i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(labels);
}

static void test_schedule(void)
{
    struct eval_semisup_config c;
    eval_semisup_config_default(&c);
    double t, h;
    eval_semisup_lr(&c, 0, &t, &h);
    EXPECT(fabs(t - 0.01) < 1e-15 && fabs(h - 0.2) < 1e-15, "epoch 0: %g %g", t, h);
    eval_semisup_lr(&c, 12, &t, &h);
    EXPECT(fabs(t - 0.002) < 1e-15 && fabs(h - 0.04) < 1e-15, "epoch 12: %g %g", t, h);
    eval_semisup_lr(&c, 19, &t, &h);
    EXPECT(fabs(t - 0.0004) < 1e-15 && fabs(h - 0.008) < 1e-15, "epoch 19: %g %g", t, h);
}

static void test_result(const char *dir)
{
    char err[1024], path[4096];
    struct eval_result r = {.time_ms = 1764288000123, .epoch = 3, .step = 1404,
                            .checkpoint = "/run/ckp-3.safetensors", .probe = "knn",
                            .top1 = 79.51, .top5 = 98.25, .n_train = 60000, .n_val = 10000,
                            .seconds = 12.5, .baseline = true, .config_json = "{\"k\":20}"};
    SWAV_ASSERT(eval_result_append(dir, &r, err, sizeof(err)) == 0);
    r.probe = "linear";
    r.baseline = false;
    SWAV_ASSERT(eval_result_append(dir, &r, err, sizeof(err)) == 0);
    r.config_json = "[1]";
    EXPECT(eval_result_append(dir, &r, err, sizeof(err)) != 0, "non-object config accepted");
    snprintf(path, sizeof(path), "%s/eval.jsonl", dir);
    FILE *f = fopen(path, "r");
    SWAV_ASSERT(f);
    char line[4096];
    int lines = 0;
    while (fgets(line, sizeof(line), f)) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        EXPECT(json_is_object(o), "line %d is not a JSON object", lines);
        const char *keys[] = {"time", "epoch", "step", "checkpoint", "probe", "top1", "top5",
                              "n_train", "n_val", "seconds", "baseline", "config"};
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
            EXPECT(json_object_get(o, keys[k]), "line %d lacks %s", lines, keys[k]);
        EXPECT(json_integer_value(json_object_get(o, "step")) == 1404, "step");
        EXPECT(fabs(json_number_value(json_object_get(o, "top1")) - 79.51) < 1e-9, "top1");
        EXPECT(json_is_boolean(json_object_get(o, "baseline")) &&
                   json_is_true(json_object_get(o, "baseline")) == (lines == 0),
               "baseline flag");
        EXPECT(json_integer_value(json_object_get(json_object_get(o, "config"), "k")) == 20,
               "config");
        json_decref(o);
        lines++;
    }
    fclose(f);
    EXPECT(lines == 2, "%d lines, want 2", lines);
}

static void touch(const char *dir, const char *name, time_t mtime)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    write_text(path, "x");
    struct timespec ts[2] = {{mtime, 0}, {mtime, 0}};
    SWAV_ASSERT(utimensat(AT_FDCWD, path, ts, 0) == 0);
}

static void test_scan(const char *dir)
{
    char ck[4096], err[1024];
    snprintf(ck, sizeof(ck), "%s/ckpts", dir);
    SWAV_ASSERT(swav_mkdirs(ck, err, sizeof(err)) == 0);
    touch(ck, "ckp-0.safetensors", 1000);
    touch(ck, "ckp-10.safetensors", 3000);
    touch(ck, "ckp-2.safetensors", 2000);
    touch(ck, "checkpoint.safetensors", 3000);
    touch(ck, ".checkpoint.safetensors.tmp123", 4000); /* a write in progress */
    touch(ck, "ckp-x.safetensors", 4000);
    touch(ck, "notes.txt", 4000);
    struct eval_ckpt list[8];
    int n = eval_ckpt_scan(ck, list, 8, err, sizeof(err));
    EXPECT(n == 4, "scan found %d, want 4", n);
    if (n == 4) {
        EXPECT(list[0].epoch == 0 && list[1].epoch == 2 && list[2].epoch == -1 &&
                   list[3].epoch == 10,
               "scan order %lld %lld %lld %lld", (long long)list[0].epoch,
               (long long)list[1].epoch, (long long)list[2].epoch, (long long)list[3].epoch);
        int k = eval_ckpt_pick_newest(list, n, INT64_MIN, -1);
        EXPECT(k == 3, "newest of all: %d", k);
        /* after evaluating ckp-0, skip ckp-2 and checkpoint.safetensors */
        k = eval_ckpt_pick_newest(list, n, list[0].mtime_ns, list[0].epoch);
        EXPECT(k == 3, "skip to newest: %d", k);
        k = eval_ckpt_pick_newest(list, n, list[3].mtime_ns, list[3].epoch);
        EXPECT(k == -1, "nothing newer: %d", k);
    }
    n = eval_ckpt_scan(ck, list, 2, err, sizeof(err));
    EXPECT(n == 2 && list[1].epoch == 10 && list[0].epoch == -1, "cap keeps the newest");
    snprintf(ck, sizeof(ck), "%s/nosuch", dir);
    EXPECT(eval_ckpt_scan(ck, list, 8, err, sizeof(err)) == -1 && err[0], "missing folder");
}

/* ---- fine-tuning on generated images -------------------------------------- */

enum { FT_S = 16, FT_C = 4 };

struct mem_source {
    const float *x; /* (n, 3, S, S) normalized */
    const int32_t *y;
    int64_t n;
    int begins;
};

static int mem_begin(void *ctx, int epoch, const uint32_t *order, int64_t n, int64_t batch)
{
    struct mem_source *m = ctx;
    (void)epoch;
    (void)batch;
    for (int64_t i = 0; i < n; i++)
        if (order[i] >= m->n) return 1;
    m->begins++;
    return 0;
}

static int mem_fill(void *ctx, int epoch, const uint32_t *idx, int64_t b, float *x, int32_t *y)
{
    struct mem_source *m = ctx;
    (void)epoch;
    const size_t per = 3 * FT_S * FT_S;
    for (int64_t i = 0; i < b; i++) {
        memcpy(x + i * per, m->x + idx[i] * per, per * sizeof(float));
        y[i] = m->y[idx[i]];
    }
    return 0;
}

/* Images of class c: a disc of the class's colour at a random place on a
 * random grey background, with noise. */
static void make_images(uint64_t seed, int64_t n, float *x, int32_t *y)
{
    static const int col[FT_C][3] = {{220, 30, 30}, {30, 200, 30}, {30, 30, 220}, {230, 220, 40}};
    uint8_t *u8 = swav_xmalloc((size_t)n * FT_S * FT_S * 3);
    struct swav_rng r;
    swav_rng_init(&r, seed, 0, 0, 0x494d4753u);
    for (int64_t i = 0; i < n; i++) {
        int c = (int)(i % FT_C);
        y[i] = c;
        int bg = 60 + (int)(swav_rng_uniform(&r) * 60);
        int cx = 3 + (int)(swav_rng_uniform(&r) * 10), cy = 3 + (int)(swav_rng_uniform(&r) * 10);
        int rad = 3 + (int)(swav_rng_uniform(&r) * 3);
        for (int py = 0; py < FT_S; py++)
            for (int px = 0; px < FT_S; px++) {
                bool in = (px - cx) * (px - cx) + (py - cy) * (py - cy) <= rad * rad;
                for (int ch = 0; ch < 3; ch++) {
                    double v = (in ? col[c][ch] : bg) + 20.0 * (swav_rng_uniform(&r) - 0.5);
                    u8[((i * FT_S + py) * FT_S + px) * 3 + ch] =
                        (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
                }
            }
    }
    nn_normalize_u8(x, u8, (int)n, FT_S, FT_S);
    free(u8);
}

static struct nn_model *ft_model(nn_backend_t *be, int batch)
{
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.depth = 18;
    cfg.width = 8;
    cfg.small_stem = 1;
    cfg.hidden_mlp = 0;
    cfg.feat_dim = FT_C;
    cfg.nmb_prototypes = 0;
    cfg.no_l2norm = 1;
    cfg.seed = 5;
    struct nn_crop_group g = {.n_crops = 1, .size = FT_S};
    return nn_model_new(be, &cfg, &g, 1, batch);
}

static void test_finetune(void)
{
    enum { NT = 96, NV = 64, B = 16 };
    float *xt = swav_xmalloc(sizeof(float) * NT * 3 * FT_S * FT_S);
    float *xv = swav_xmalloc(sizeof(float) * NV * 3 * FT_S * FT_S);
    int32_t yt[NT], yv[NV];
    make_images(1, NT, xt, yt);
    make_images(2, NV, xv, yv);
    nn_backend_t *be = nn_backend_cpu_new(1);
    struct nn_model *m = ft_model(be, B);
    SWAV_ASSERT(m);
    struct eval_semisup_config cfg;
    eval_semisup_config_default(&cfg);
    cfg.batch_size = B; /* eval_semisup.py's schedule otherwise: 20 epochs, decay at 12 and 16 */
    char err[256];
    struct eval_semisup s;
    EXPECT(eval_semisup_init(&s, m, &cfg, 1, err, sizeof err) == 0, "init: %s", err);
    int nhead = 0;
    for (int i = 0; i < m->params.n; i++) {
        bool head = strstr(m->params.p[i].name, "head") != NULL;
        EXPECT(s.optim.group[i] == (head ? 1 : 0), "%s in group %d", m->params.p[i].name,
               s.optim.group[i]);
        nhead += head;
    }
    EXPECT(nhead == 2, "projection_head.weight and .bias in the head group (%d)", nhead);
    struct mem_source ts = {xt, yt, NT, 0}, vs = {xv, yv, NV, 0};
    struct eval_image_source train = {&ts, NT, mem_begin, mem_fill};
    struct eval_image_source val = {&vs, NV, mem_begin, mem_fill};
    struct eval_acc a0;
    EXPECT(eval_semisup_evaluate(&s, &val, 0, &a0, NULL) == EVAL_SEMISUP_OK, "evaluate");
    struct eval_linear_result res;
    enum eval_semisup_status st = eval_semisup_run(&s, &cfg, &train, &val, NULL, NULL, &res);
    EXPECT(st == EVAL_SEMISUP_OK, "run: %s", eval_semisup_status_str(st));
    printf("fine-tuning from random init: top-1 before %.2f, best %.2f (epoch %d), top-5 "
           "%.2f, last train loss %.4f, %lld steps\n", eval_acc_top1(&a0), res.best_top1,
           res.best_epoch, res.best_top5, res.last_train_loss, (long long)res.steps);
    EXPECT(res.best_top1 >= 90.0, "fine-tuned top-1 %.2f >= 90 (chance 25)", res.best_top1);
    EXPECT(res.steps == 20 * ((NT + B - 1) / B), "steps %lld", (long long)res.steps);
    EXPECT(ts.begins == 20 && vs.begins == 21, "begin per pass: %d train, %d val", ts.begins,
           vs.begins);
    /* argument checks */
    cfg.batch_size = B + 1;
    EXPECT(eval_semisup_run(&s, &cfg, &train, &val, NULL, NULL, &res) == EVAL_SEMISUP_ERR_ARGS,
           "batch over the model's");
    cfg.batch_size = B;
    yv[3] = FT_C;
    EXPECT(eval_semisup_run(&s, &cfg, &train, &val, NULL, NULL, &res) == EVAL_SEMISUP_ERR_LABEL,
           "a label out of range");
    eval_semisup_free(&s);
    nn_model_destroy(&m);
    /* a model without the classifier head is refused */
    struct nn_resnet_cfg rc;
    nn_resnet_cfg_default(&rc);
    rc.depth = 18;
    rc.width = 8;
    rc.small_stem = 1;
    rc.feat_dim = 0;
    rc.nmb_prototypes = 0;
    struct nn_crop_group g = {.n_crops = 1, .size = FT_S};
    m = nn_model_new(be, &rc, &g, 1, B);
    EXPECT(eval_semisup_init(&s, m, &cfg, 1, err, sizeof err) == -1 && strstr(err, "head"),
           "a backbone without head: %s", err);
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
    free(xt);
    free(xv);
}

int main(void)
{
    char dir[] = "/tmp/swav-eval-test-XXXXXX";
    SWAV_ASSERT(mkdtemp(dir));
    test_subsets(dir);
    test_schedule();
    test_result(dir);
    test_scan(dir);
    test_finetune();
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
