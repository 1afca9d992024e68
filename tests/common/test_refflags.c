/* The reference's flag tables (common/refflags.h) against our own transcript
 * of main_swav.py, eval_linear.py and eval_semisup.py (the reference is not
 * available in CI, so the (flag, type, default) lists below are copied from
 * it by hand): every reference flag exists with its type and default, is
 * accepted when given its default explicitly, and nothing else is in the
 * tables.  Bad values (not a number, out of range, unknown flag, bad boolean,
 * wrong list length, a choice not offered, lists that disagree) are refused
 * with a message naming the flag.  Also the parser's fixed corners
 * (common/flags.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/flags.h"
#include "common/refflags.h"
#include "tests/expect.h"


/* kind: i int, f float, s str, b bool_flag, I int list (nargs="+"), F float list */
struct ref_flag {
    const char *name;
    char kind;
    const char *def; /* the reference's default, Python spelling; lists space-separated */
};

/* main_swav.py, in its order */
static const struct ref_flag ref_main[] = {
    {"data_path", 's', "/path/to/imagenet"},
    {"nmb_crops", 'I', "2"},
    {"size_crops", 'I', "224"},
    {"min_scale_crops", 'F', "0.14"},
    {"max_scale_crops", 'F', "1"},
    {"crops_for_assign", 'I', "0 1"},
    {"temperature", 'f', "0.1"},
    {"epsilon", 'f', "0.05"},
    {"sinkhorn_iterations", 'i', "3"},
    {"feat_dim", 'i', "128"},
    {"nmb_prototypes", 'i', "3000"},
    {"queue_length", 'i', "0"},
    {"epoch_queue_starts", 'i', "15"},
    {"epochs", 'i', "100"},
    {"batch_size", 'i', "64"},
    {"base_lr", 'f', "4.8"},
    {"final_lr", 'f', "0"},
    {"freeze_prototypes_niters", 'i', "313"},
    {"wd", 'f', "1e-6"},
    {"warmup_epochs", 'i', "10"},
    {"start_warmup", 'f', "0"},
    {"dist_url", 's', "env://"},
    {"world_size", 'i', "-1"},
    {"rank", 'i', "0"},
    {"local_rank", 'i', "0"},
    {"arch", 's', "resnet50"},
    {"hidden_mlp", 'i', "2048"},
    {"workers", 'i', "10"},
    {"checkpoint_freq", 'i', "25"},
    {"use_fp16", 'b', "True"},
    {"sync_bn", 's', "pytorch"},
    {"syncbn_process_group_size", 'i', "8"},
    {"dump_path", 's', "."},
    {"seed", 'i', "31"},
};

/* eval_linear.py */
static const struct ref_flag ref_linear[] = {
    {"dump_path", 's', "."},
    {"seed", 'i', "31"},
    {"data_path", 's', "/path/to/imagenet"},
    {"workers", 'i', "10"},
    {"arch", 's', "resnet50"},
    {"pretrained", 's', ""},
    {"global_pooling", 'b', "True"},
    {"use_bn", 'b', "False"},
    {"epochs", 'i', "100"},
    {"batch_size", 'i', "32"},
    {"lr", 'f', "0.3"},
    {"wd", 'f', "1e-6"},
    {"nesterov", 'b', "False"},
    {"scheduler_type", 's', "cosine"},
    {"decay_epochs", 'I', "60 80"},
    {"gamma", 'f', "0.1"},
    {"final_lr", 'f', "0"},
    {"dist_url", 's', "env://"},
    {"world_size", 'i', "-1"},
    {"rank", 'i', "0"},
    {"local_rank", 'i', "0"},
};

/* eval_semisup.py */
static const struct ref_flag ref_semisup[] = {
    {"labels_perc", 's', "10"},
    {"dump_path", 's', "."},
    {"seed", 'i', "31"},
    {"data_path", 's', "/path/to/imagenet"},
    {"workers", 'i', "10"},
    {"arch", 's', "resnet50"},
    {"pretrained", 's', ""},
    {"epochs", 'i', "20"},
    {"batch_size", 'i', "32"},
    {"lr", 'f', "0.01"},
    {"lr_last_layer", 'f', "0.2"},
    {"decay_epochs", 'I', "12 16"},
    {"gamma", 'f', "0.2"},
    {"dist_url", 's', "env://"},
    {"world_size", 'i', "-1"},
    {"rank", 'i', "0"},
    {"local_rank", 'i', "0"},
};

static enum swav_flag_type kind_type(char k)
{
    switch (k) {
    case 'i': return SWAV_FLAG_INT;
    case 'f': return SWAV_FLAG_FLOAT;
    case 's': return SWAV_FLAG_STR;
    case 'b': return SWAV_FLAG_BOOL;
    case 'I': return SWAV_FLAG_INT_LIST;
    default: return SWAV_FLAG_FLOAT_LIST;
    }
}

static const struct swav_flag *find_row(const struct swav_flag_set *set, const char *name)
{
    for (size_t i = 0; i < set->n; i++) {
        if (!strcmp(set->flags[i].name, name)) return &set->flags[i];
    }
    return NULL;
}

/* The field holds the reference default r->def. */
static int field_matches(const struct swav_flag *f, const void *cfg, const struct ref_flag *r)
{
    const char *field = (const char *)cfg + f->offset;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", r->def);
    switch (f->type) {
    case SWAV_FLAG_INT: return *(const int64_t *)field == strtoll(r->def, NULL, 10);
    case SWAV_FLAG_FLOAT: return *(const double *)field == strtod(r->def, NULL);
    case SWAV_FLAG_STR: return !strcmp(*(const char *const *)field, r->def);
    case SWAV_FLAG_BOOL: return *(const bool *)field == !strcmp(r->def, "True");
    case SWAV_FLAG_INT_LIST:
    case SWAV_FLAG_FLOAT_LIST: {
        int n = 0;
        char *save = NULL;
        for (char *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save), n++) {
            if (f->type == SWAV_FLAG_INT_LIST) {
                const struct swav_int_list *l = (const void *)field;
                if (n >= l->n || l->v[n] != strtoll(t, NULL, 10)) return 0;
            } else {
                const struct swav_float_list *l = (const void *)field;
                if (n >= l->n || l->v[n] != strtod(t, NULL)) return 0;
            }
        }
        return n == (f->type == SWAV_FLAG_INT_LIST ? ((const struct swav_int_list *)(const void *)field)->n
                                                   : ((const struct swav_float_list *)(const void *)field)->n);
    }
    }
    return 0;
}

static int parse(const struct swav_flag_set *set, char *err, size_t errlen, int argc,
                 const char **argv)
{
    err[0] = '\0';
    return swav_flags_parse(set, 1, argc, (char **)argv, err, errlen);
}

static void check_table(const char *what, const struct swav_flag_set *set,
                        const struct ref_flag *ref, size_t nref)
{
    char err[512];
    EXPECT(set->n == nref, "%s: %zu flags in the table, %zu in the reference", what, set->n, nref);
    EXPECT(parse(set, err, sizeof err, 0, NULL) == 0, "%s: defaults: %s", what, err);
    for (size_t i = 0; i < nref; i++) {
        const struct swav_flag *f = find_row(set, ref[i].name);
        EXPECT(f != NULL, "%s: no flag --%s", what, ref[i].name);
        if (!f) continue;
        EXPECT(f->type == kind_type(ref[i].kind), "%s: --%s has the wrong type", what, ref[i].name);
        EXPECT(field_matches(f, set->cfg, &ref[i]), "%s: --%s default is not %s", what,
               ref[i].name, ref[i].def);
    }
    /* each flag given its default explicitly is accepted and keeps it */
    for (size_t i = 0; i < nref; i++) {
        const struct swav_flag *f = find_row(set, ref[i].name);
        if (!f) continue;
        const char *argv[1 + SWAV_FLAG_LIST_MAX];
        char flag[80], vals[256];
        snprintf(flag, sizeof flag, "--%s", ref[i].name);
        snprintf(vals, sizeof vals, "%s", ref[i].def);
        int argc = 0;
        argv[argc++] = flag;
        if (ref[i].kind == 'I' || ref[i].kind == 'F') {
            char *save = NULL;
            for (char *t = strtok_r(vals, " ", &save); t; t = strtok_r(NULL, " ", &save)) argv[argc++] = t;
        } else {
            argv[argc++] = vals;
        }
        int rc = parse(set, err, sizeof err, argc, argv);
        EXPECT(rc == 0, "%s: %s %s refused: %s", what, flag, ref[i].def, err);
        EXPECT(rc == 0 && field_matches(f, set->cfg, &ref[i]), "%s: %s %s not stored", what,
               flag, ref[i].def);
        /* and in --name=value form for single values */
        if (ref[i].kind != 'I' && ref[i].kind != 'F') {
            char eq[300];
            snprintf(eq, sizeof eq, "--%s=%s", ref[i].name, ref[i].def);
            const char *a1[] = {eq};
            EXPECT(parse(set, err, sizeof err, 1, a1) == 0 && field_matches(f, set->cfg, &ref[i]),
                   "%s: %s refused: %s", what, eq, err);
        }
    }
    /* every number flag refuses text, naming itself */
    for (size_t i = 0; i < set->n; i++) {
        const struct swav_flag *f = &set->flags[i];
        if (f->type == SWAV_FLAG_STR || f->type == SWAV_FLAG_BOOL) continue;
        char flag[80], want[90];
        snprintf(flag, sizeof flag, "--%s", f->name);
        snprintf(want, sizeof want, "--%s:", f->name);
        const char *argv[] = {flag, "abc"};
        EXPECT(parse(set, err, sizeof err, 2, argv) == -1 && strstr(err, want),
               "%s: %s abc: '%s'", what, flag, err);
        const char *argv2[] = {flag, "1.5x"};
        EXPECT(parse(set, err, sizeof err, 2, argv2) == -1 && strstr(err, want),
               "%s: %s 1.5x: '%s'", what, flag, err);
        const char *argv3[] = {flag};
        EXPECT(parse(set, err, sizeof err, 1, argv3) == -1 && strstr(err, want),
               "%s: %s without value: '%s'", what, flag, err);
    }
    /* every boolean refuses a non-boolean, naming itself */
    for (size_t i = 0; i < set->n; i++) {
        const struct swav_flag *f = &set->flags[i];
        if (f->type != SWAV_FLAG_BOOL) continue;
        char flag[80], eq[90], want[90];
        snprintf(flag, sizeof flag, "--%s", f->name);
        snprintf(eq, sizeof eq, "--%s=maybe", f->name);
        snprintf(want, sizeof want, "--%s:", f->name);
        const char *argv[] = {flag, "maybe"};
        EXPECT(parse(set, err, sizeof err, 2, argv) == -1 && strstr(err, want),
               "%s: %s maybe: '%s'", what, flag, err);
        const char *argv2[] = {eq};
        EXPECT(parse(set, err, sizeof err, 1, argv2) == -1 && strstr(err, want),
               "%s: %s: '%s'", what, eq, err);
        const char *argv3[] = {flag, "off"};
        EXPECT(parse(set, err, sizeof err, 2, argv3) == 0 &&
                   !*(const bool *)((const char *)set->cfg + f->offset),
               "%s: %s off", what, flag);
        const char *argv4[] = {flag, "--seed", "1"};
        EXPECT(parse(set, err, sizeof err, 3, argv4) == 0 &&
                   *(const bool *)((const char *)set->cfg + f->offset),
               "%s: bare %s means true: %s", what, flag, err);
    }
    /* unknown flags name themselves */
    const char *unk[] = {"--nmb_crop", "2"};
    EXPECT(parse(set, err, sizeof err, 2, unk) == -1 && strstr(err, "--nmb_crop "), "%s: unknown: '%s'", what, err);
    const char *pos[] = {"positional"};
    EXPECT(parse(set, err, sizeof err, 1, pos) == -1 && strstr(err, "positional"), "%s: positional: '%s'", what, err);
    const char *help[] = {"--help"};
    EXPECT(parse(set, err, sizeof err, 1, help) == 1, "%s: --help", what);
    /* usage lists every flag; JSON has every flag */
    char *ubuf = NULL;
    size_t ulen = 0;
    FILE *mem = open_memstream(&ubuf, &ulen);
    swav_flags_usage(mem, "test", set, 1);
    fclose(mem);
    static char json[16384];
    EXPECT(parse(set, err, sizeof err, 0, NULL) == 0, "defaults again");
    int jn = swav_flags_to_json(json, sizeof json, set, 1);
    EXPECT(jn > 0 && (size_t)jn < sizeof json, "%s: json length %d", what, jn);
    EXPECT(swav_flags_to_json(NULL, 0, set, 1) == jn, "%s: json measuring pass", what);
    for (size_t i = 0; i < nref; i++) {
        char key[80];
        snprintf(key, sizeof key, "--%s ", ref[i].name);
        EXPECT(strstr(ubuf, key), "%s: usage lacks %s", what, key);
        snprintf(key, sizeof key, "\"%s\":", ref[i].name);
        EXPECT(strstr(json, key), "%s: json lacks %s", what, key);
    }
    free(ubuf);
}

static void expect_err(const struct swav_flag_set *set, int argc, const char **argv,
                       const char *want, int (*post)(const void *, char *, size_t))
{
    char err[512] = "";
    int rc = parse(set, err, sizeof err, argc, argv);
    if (rc == 0 && post) rc = post(set->cfg, err, sizeof err);
    EXPECT(rc == -1 && strstr(err, want), "%s %s...: want an error naming '%s', got rc %d '%s'",
           argv[0], argc > 1 ? argv[1] : "", want, rc, err);
}

static int main_check(const void *cfg, char *err, size_t len) { return swav_main_args_check(cfg, err, len); }

/* --dump: one line per table, "<script>\t<defaults as JSON>\t<types as JSON>",
 * for check_refflags.py, which compares them with the reference's argparse
 * calls where the reference is at hand. */
static void dump(const char *script, const struct swav_flag_set *set)
{
    static char json[16384];
    char err[256];
    if (swav_flags_defaults(set, 1, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", script, err);
        exit(1);
    }
    swav_flags_to_json(json, sizeof json, set, 1);
    printf("%s\t%s\t{", script, json);
    static const char *names[] = {"int", "float", "bool", "str", "int_list", "float_list"};
    for (size_t i = 0; i < set->n; i++) {
        printf("%s\"%s\":\"%s\"", i ? "," : "", set->flags[i].name, names[set->flags[i].type]);
    }
    printf("}\n");
}

int main(int argc, char **argv)
{
    static struct swav_main_args ma;
    static struct swav_eval_linear_args la;
    static struct swav_eval_semisup_args sa;
    struct swav_flag_set ms = swav_main_flag_set(&ma);
    struct swav_flag_set ls = swav_eval_linear_flag_set(&la);
    struct swav_flag_set ss = swav_eval_semisup_flag_set(&sa);
    if (argc > 1 && !strcmp(argv[1], "--dump")) {
        dump("main_swav.py", &ms);
        dump("eval_linear.py", &ls);
        dump("eval_semisup.py", &ss);
        return 0;
    }
    check_table("main_swav", &ms, ref_main, sizeof ref_main / sizeof ref_main[0]);
    check_table("eval_linear", &ls, ref_linear, sizeof ref_linear / sizeof ref_linear[0]);
    check_table("eval_semisup", &ss, ref_semisup, sizeof ref_semisup / sizeof ref_semisup[0]);

    /* --device values (the trainer's, the evaluator's, the assigner's, swav train's) */
    static const struct {
        const char *s;
        int kind, index;
    } dev[] = {{"cpu", 0, 0},     {"cuda", 1, 0},     {"cuda:0", 1, 0},  {"cuda:7", 1, 7},
               {"cuda:1023", 1, 1023}, {"cuda:1024", -1, 0}, {"cuda:", -1, 0}, {"cuda:-1", -1, 0},
               {"cuda:1x", -1, 0}, {"gpu", -1, 0},     {"CPU", -1, 0},    {"", -1, 0}};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) {
        int index = -5;
        int kind = swav_flags_parse_device(dev[i].s, &index);
        EXPECT(kind == dev[i].kind && (kind != 1 || index == dev[i].index),
               "--device '%s': kind %d index %d, want %d %d", dev[i].s, kind, index, dev[i].kind,
               dev[i].index);
        /* a flag with SWAV_FLAG_DEVICE_CHOICES (the programs' --device)
         * takes exactly the values the grammar takes, while parsing */
        struct {
            const char *device;
        } dc;
        static const struct swav_flag dflag[] = {{"device", SWAV_FLAG_STR, 0, 0, 0, "cpu", "",
                                                  0, 0, SWAV_FLAG_DEVICE_CHOICES}};
        struct swav_flag_set dset = {dflag, 1, &dc};
        char derr[256] = "";
        char *dargv[] = {"--device", (char *)dev[i].s};
        int rc = swav_flags_parse(&dset, 1, 2, dargv, derr, sizeof derr);
        EXPECT(rc == (dev[i].kind < 0 ? -1 : 0) && (rc == 0 || strstr(derr, "--device")),
               "--device '%s' through the choices: rc %d (%s)", dev[i].s, rc, derr);
    }

    char err[512];
    /* the reference's own 400-epoch command line */
    const char *ref400[] = {"--data_path", "/data/imagenet/train", "--nmb_crops", "2", "6",
                            "--size_crops", "224", "96", "--min_scale_crops", "0.14", "0.05",
                            "--max_scale_crops", "1.", "0.14", "--crops_for_assign", "0", "1",
                            "--temperature", "0.1", "--epsilon", "0.05", "--sinkhorn_iterations",
                            "3", "--feat_dim", "128", "--nmb_prototypes", "3000",
                            "--queue_length", "3840", "--epoch_queue_starts", "15", "--epochs",
                            "400", "--batch_size", "64", "--base_lr", "0.6", "--final_lr",
                            "0.0006", "--freeze_prototypes_niters", "5005", "--wd", "0.000001",
                            "--warmup_epochs", "0", "--dist_url", "tcp://host:40000", "--arch",
                            "resnet50", "--use_fp16", "true", "--sync_bn", "pytorch",
                            "--dump_path", "/exp/swav"};
    int rc = parse(&ms, err, sizeof err, (int)(sizeof ref400 / sizeof ref400[0]), ref400);
    EXPECT(rc == 0 && swav_main_args_check(&ma, err, sizeof err) == 0, "reference command line: %s", err);
    EXPECT(ma.nmb_crops.n == 2 && ma.nmb_crops.v[1] == 6 && ma.size_crops.v[1] == 96 &&
               ma.max_scale_crops.v[0] == 1.0 && ma.min_scale_crops.v[1] == 0.05 &&
               ma.queue_length == 3840 && ma.wd == 1e-6 && ma.final_lr == 0.0006 && ma.use_fp16 &&
               !strcmp(ma.sync_bn, "pytorch") && !strcmp(ma.dump_path, "/exp/swav"),
           "reference command line values");
    const char *apex[] = {"--sync_bn", "apex", "--use_fp16", "false"};
    EXPECT(parse(&ms, err, sizeof err, 4, apex) == 0 && !strcmp(ma.sync_bn, "apex") && !ma.use_fp16,
           "--sync_bn apex --use_fp16 false: %s", err);

    /* out of range, naming the flag */
    const char *c1[] = {"--epsilon", "0"};
    expect_err(&ms, 2, c1, "--epsilon", NULL);
    const char *c2[] = {"--epsilon", "-0.05"};
    expect_err(&ms, 2, c2, "--epsilon", NULL);
    const char *c2b[] = {"--epsilon", "nan"};
    expect_err(&ms, 2, c2b, "--epsilon", NULL);
    const char *c3[] = {"--sinkhorn_iterations", "0"};
    expect_err(&ms, 2, c3, "--sinkhorn_iterations", NULL);
    const char *c4[] = {"--checkpoint_freq", "0"};
    expect_err(&ms, 2, c4, "--checkpoint_freq", NULL);
    const char *c5[] = {"--nmb_crops", "2", "0"};
    expect_err(&ms, 3, c5, "--nmb_crops", NULL);
    const char *c6[] = {"--seed", "-1"};
    expect_err(&ms, 2, c6, "--seed", NULL);
    const char *c7[] = {"--seed", "99999999999999999999999"};
    expect_err(&ms, 2, c7, "--seed", NULL);
    const char *c8[] = {"--batch_size", "0"};
    expect_err(&ms, 2, c8, "--batch_size", NULL);
    const char *c9[] = {"--max_scale_crops", "1.5"};
    expect_err(&ms, 2, c9, "--max_scale_crops", NULL);
    /* wrong list lengths */
    const char *l1[] = {"--nmb_crops", "1", "1", "1", "1", "1", "1", "1", "1", "1"};
    expect_err(&ms, 10, l1, "--nmb_crops", NULL);
    const char *l2[] = {"--nmb_crops", "2", "6", "--size_crops", "224"};
    expect_err(&ms, 5, l2, "--size_crops", main_check);
    const char *l3[] = {"--nmb_crops", "2", "6", "--size_crops", "224", "96", "--min_scale_crops",
                        "0.14", "0.05", "--max_scale_crops", "1"};
    expect_err(&ms, 11, l3, "--max_scale_crops", main_check);
    const char *l4[] = {"--decay_epochs"};
    expect_err(&ls, 1, l4, "--decay_epochs", NULL);
    const char *l5[] = {"--crops_for_assign", "0", "2"};
    expect_err(&ms, 3, l5, "--crops_for_assign", main_check);
    const char *l6[] = {"--max_scale_crops", "0.1"}; /* below the default min 0.14 */
    expect_err(&ms, 2, l6, "--min_scale_crops", main_check);
    const char *l7[] = {"--rank", "2", "--world_size", "2"};
    expect_err(&ms, 4, l7, "--rank", main_check);
    const char *l8[] = {"--nmb_crops", "1", "1", "1", "1", "1", "1", "1", "1", "1", "1", "1",
                        "1", "1", "1", "1", "1", "1", "1"};
    expect_err(&ms, 19, l8, "--nmb_crops", NULL);
    /* choices */
    const char *h1[] = {"--scheduler_type", "linear"};
    expect_err(&ls, 2, h1, "--scheduler_type", NULL);
    const char *h2[] = {"--labels_perc", "5"};
    expect_err(&ss, 2, h2, "--labels_perc", NULL);
    const char *h3[] = {"--labels_perc", "1"};
    EXPECT(parse(&ss, err, sizeof err, 2, h3) == 0 && !strcmp(sa.labels_perc, "1"), "--labels_perc 1");
    const char *h4[] = {"--scheduler_type", "step", "--decay_epochs", "30", "60", "90"};
    EXPECT(parse(&ls, err, sizeof err, 6, h4) == 0 && la.decay_epochs.n == 3 &&
               !strcmp(la.scheduler_type, "step"),
           "eval_linear step schedule: %s", err);
    /* a negative number is a value, not a flag */
    const char *n1[] = {"--world_size", "-1", "--rank", "0"};
    EXPECT(parse(&ms, err, sizeof err, 4, n1) == 0 && ma.world_size == -1, "negative value: %s", err);

    /* JSON of a string with quotes and control characters */
    const char *q[] = {"--dump_path", "a\"b\\c\n"};
    EXPECT(parse(&ms, err, sizeof err, 2, q) == 0, "dump_path with quotes");
    static char json[8192];
    swav_flags_to_json(json, sizeof json, &ms, 1);
    EXPECT(strstr(json, "\"dump_path\":\"a\\\"b\\\\c\\u000a\""), "json escaping: %s", json);
    char small[16];
    int need = swav_flags_to_json(small, sizeof small, &ms, 1);
    EXPECT(need > (int)sizeof small && small[sizeof small - 1] == '\0', "json truncation");

    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
