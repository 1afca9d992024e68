/* nn_checkpoint: save/load.
 *
 * Without arguments: unit checks (round trip with metadata, "module." names,
 * F16 tensors, strict errors naming the tensor with nothing written, the
 * reference eval scripts' lenient mode, an unreadable file).
 * For test_checkpoint.py, on a small model mirroring part of the reference
 * (conv1, bn1, projection_head Linear-BN1d-ReLU-Linear, prototypes):
 *   test_checkpoint write CKPT RAW  write a checkpoint of random values, and
 *                                   the same values raw (params, buffers,
 *                                   momentum as float32) for torch to compare
 *   test_checkpoint load CKPT RAW   strict load (momentum included), compare
 *                                   with RAW exactly */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/rng.h"
#include "nn/checkpoint.h"
#include "proto/safetensors.h"

#define EXPECT_SHOW_COND 1
#include "tests/expect.h"

struct model {
    struct nn_param_table params, buffers;
    float *p, *b, *m;
};

static void add(struct nn_param_table *t, const char *name, int ndim, int64_t d0, int64_t d1,
                int64_t d2, int64_t d3, unsigned flags)
{
    int64_t shape[4] = {d0, d1, d2, d3};
    nn_param_table_add(t, name, ndim, shape, flags);
}

/* The reference's names: named_parameters() then named_buffers() order of
 * test_checkpoint.py's SmallNet. */
static void model_init(struct model *m)
{
    nn_param_table_init(&m->params);
    nn_param_table_init(&m->buffers);
    struct nn_param_table *p = &m->params, *b = &m->buffers;
    add(p, "conv1.weight", 4, 8, 3, 3, 3, 0);
    add(p, "bn1.weight", 1, 8, 0, 0, 0, 0);
    add(p, "bn1.bias", 1, 8, 0, 0, 0, 0);
    add(p, "projection_head.0.weight", 2, 16, 8, 0, 0, 0);
    add(p, "projection_head.0.bias", 1, 16, 0, 0, 0, 0);
    add(p, "projection_head.1.weight", 1, 16, 0, 0, 0, 0);
    add(p, "projection_head.1.bias", 1, 16, 0, 0, 0, 0);
    add(p, "projection_head.3.weight", 2, 4, 16, 0, 0, 0);
    add(p, "projection_head.3.bias", 1, 4, 0, 0, 0, 0);
    add(p, "prototypes.weight", 2, 5, 4, 0, 0, NN_PARAM_PROTOTYPES);
    add(b, "bn1.running_mean", 1, 8, 0, 0, 0, 0);
    add(b, "bn1.running_var", 1, 8, 0, 0, 0, 0);
    add(b, "bn1.num_batches_tracked", 0, 0, 0, 0, 0, NN_PARAM_INT64);
    add(b, "projection_head.1.running_mean", 1, 16, 0, 0, 0, 0);
    add(b, "projection_head.1.running_var", 1, 16, 0, 0, 0, 0);
    add(b, "projection_head.1.num_batches_tracked", 0, 0, 0, 0, 0, NN_PARAM_INT64);
    m->p = calloc(p->total, sizeof(float));
    m->b = calloc(b->total, sizeof(float));
    m->m = calloc(p->total, sizeof(float));
}

static void model_free(struct model *m)
{
    nn_param_table_free(&m->params);
    nn_param_table_free(&m->buffers);
    free(m->p);
    free(m->b);
    free(m->m);
}

static void model_random(struct model *m, uint64_t seed)
{
    struct swav_rng r;
    swav_rng_init(&r, seed, 0, 0, 0);
    for (size_t i = 0; i < m->params.total; i++) {
        m->p[i] = (float)swav_rng_normal(&r);
        m->m[i] = (float)swav_rng_normal(&r) * 0.01f;
    }
    for (int i = 0; i < m->buffers.n; i++) {
        const struct nn_param *q = &m->buffers.p[i];
        for (size_t k = 0; k < q->numel; k++) {
            m->b[q->offset + k] = (q->flags & NN_PARAM_INT64) ? 12345.0f
                                  : strstr(q->name, "var") ? (float)(0.5 + swav_rng_uniform(&r))
                                                           : (float)swav_rng_normal(&r);
        }
    }
}

static char *tmp_path(const char *tag)
{
    char path[256];
    snprintf(path, sizeof path, "/tmp/test_checkpoint_%ld_%s.safetensors", (long)getpid(), tag);
    return strdup(path);
}

static void unit_checks(void)
{
    struct model a, b;
    model_init(&a);
    model_init(&b);
    model_random(&a, 1);
    char err[1024];
    char *path = tmp_path("unit");
    struct nn_checkpoint_meta_pair extra[2] = {{"queue_path", "queue0.safetensors"},
                                               {"loss_scale", "32768 12"}};
    struct nn_checkpoint_meta meta = {.epoch = 7, .step = 7007, .seed = 31,
                                      .config_json = "{\"base_lr\": 4.8, \"arch\": \"resnet50\"}",
                                      .rng_state = "philox:31", .extra = extra, .nextra = 2};
    EXPECT(nn_checkpoint_save(path, &a.params, a.p, &a.buffers, a.b, a.m, &meta, err,
                              sizeof err) == NN_CHECKPOINT_OK, "save: %s", err);

    /* strict round trip */
    struct nn_checkpoint_load_opts strict = {.strict = true};
    struct nn_checkpoint_info info;
    enum nn_checkpoint_status st = nn_checkpoint_load(path, &b.params, b.p, &b.buffers, b.b, b.m,
                                                      &strict, &info, err, sizeof err);
    EXPECT(st == NN_CHECKPOINT_OK, "load: %s", err);
    EXPECT(!memcmp(a.p, b.p, a.params.total * 4) && !memcmp(a.b, b.b, a.buffers.total * 4) &&
               !memcmp(a.m, b.m, a.params.total * 4), "round trip values");
    EXPECT(info.epoch == 7 && info.step == 7007 && info.seed == 31 && info.format_version == 1 &&
               info.has_momentum && info.nloaded == 26, "info %lld %lld %llu v%d %d",
           (long long)info.epoch, (long long)info.step, (unsigned long long)info.seed,
           info.format_version, info.nloaded);
    EXPECT(info.config_json && !strcmp(info.config_json, meta.config_json), "config");
    EXPECT(info.rng_state && !strcmp(info.rng_state, "philox:31"), "rng");
    EXPECT(info.loss_scale && !strcmp(info.loss_scale, "32768 12"), "loss_scale");
    nn_checkpoint_info_free(&info);

    /* metadata from the header alone */
    EXPECT(nn_checkpoint_peek(path, &info, err, sizeof err) == NN_CHECKPOINT_OK, "peek: %s", err);
    EXPECT(info.epoch == 7 && info.step == 7007 && info.seed == 31 && info.has_momentum &&
               info.config_json && !strcmp(info.config_json, meta.config_json) &&
               info.nloaded == 0, "peek info");
    nn_checkpoint_info_free(&info);
    /* a file without the pair (bf16/fp32 runs, older files): NULL */
    char *plain = tmp_path("plain");
    struct nn_checkpoint_meta meta0 = {.epoch = 1, .step = 2, .seed = 3};
    EXPECT(nn_checkpoint_save(plain, &a.params, a.p, NULL, NULL, NULL, &meta0, err, sizeof err) ==
               NN_CHECKPOINT_OK, "save plain: %s", err);
    EXPECT(nn_checkpoint_peek(plain, &info, err, sizeof err) == NN_CHECKPOINT_OK &&
               info.loss_scale == NULL, "no loss_scale pair: %s", err);
    nn_checkpoint_info_free(&info);
    unlink(plain);
    free(plain);

    /* the file as safetensors: I64 num_batches_tracked, optimizer names, extra meta */
    struct safetensors_file f;
    EXPECT(safetensors_read(&f, path, 0, err, sizeof err) == SAFETENSORS_OK, "%s", err);
    int k = safetensors_find(&f, "bn1.num_batches_tracked");
    EXPECT(k >= 0 && f.tensors[k].dtype == SAFETENSORS_I64 && f.tensors[k].ndim == 0,
           "num_batches_tracked I64 scalar");
    EXPECT(safetensors_find(&f, "optimizer.prototypes.weight.momentum_buffer") >= 0,
           "momentum name");
    EXPECT(safetensors_meta_get(&f, "queue_path") &&
               !strcmp(safetensors_meta_get(&f, "queue_path"), "queue0.safetensors"), "extra");
    EXPECT(!strcmp(safetensors_meta_get(&f, "format"), "pt"), "format pt");

    /* a file with module. names, an F16 tensor, no metadata (as converted) */
    char *path2 = tmp_path("module");
    struct safetensors_writer w;
    safetensors_writer_init(&w);
    char names[64][128];
    uint16_t half[8] = {0x3c00, 0x4000, 0xbc00, 0, 0x3800, 0x3c00, 0x3c00, 0x3c00};
    for (int i = 0; i < a.params.n; i++) {
        const struct nn_param *q = &a.params.p[i];
        snprintf(names[i], sizeof names[i], "module.%s", q->name);
        if (!strcmp(q->name, "bn1.weight")) {
            safetensors_writer_add(&w, names[i], SAFETENSORS_F16, q->ndim, q->shape, half);
        } else {
            safetensors_writer_add(&w, names[i], SAFETENSORS_F32, q->ndim, q->shape, a.p + q->offset);
        }
    }
    safetensors_writer_add(&w, "module.fc.weight", SAFETENSORS_F32, 1, (int64_t[]){2}, a.p);
    EXPECT(safetensors_writer_write(&w, path2, err, sizeof err) == SAFETENSORS_OK, "%s", err);
    safetensors_writer_free(&w);
    memset(b.p, 0, a.params.total * 4);
    struct nn_checkpoint_load_opts lenient = {.strict = false, .quiet = false};
    st = nn_checkpoint_load(path2, &b.params, b.p, NULL, NULL, NULL, &lenient, &info, err,
                            sizeof err);
    EXPECT(st == NN_CHECKPOINT_OK, "lenient module. load: %s", err);
    EXPECT(info.nunexpected == 1 && info.nmissing == 0 && info.format_version == 0 &&
               info.epoch == -1, "lenient counts: unexpected %d missing %d", info.nunexpected,
           info.nmissing);
    int bw = nn_param_table_find(&b.params, "bn1.weight");
    EXPECT(b.p[b.params.p[bw].offset + 1] == 2.0f && b.p[b.params.p[bw].offset + 2] == -1.0f,
           "f16 converted");
    int cw = nn_param_table_find(&b.params, "conv1.weight");
    EXPECT(!memcmp(b.p + b.params.p[cw].offset, a.p + a.params.p[cw].offset, 4 * 216),
           "module. stripped");
    nn_checkpoint_info_free(&info);
    /* strict: the unknown fc.weight is an error, named, and nothing written */
    memset(b.p, 0, a.params.total * 4);
    st = nn_checkpoint_load(path2, &b.params, b.p, NULL, NULL, NULL, &strict, NULL, err,
                            sizeof err);
    EXPECT(st == NN_CHECKPOINT_ERR_UNEXPECTED && strstr(err, "module.fc.weight"),
           "strict unexpected: %s", err);
    printf("  strict, extra tensor: %s\n", err);
    float zero = 0;
    for (size_t i = 0; i < a.params.total; i++) {
        zero += fabsf(b.p[i]);
    }
    EXPECT(zero == 0, "strict failure wrote nothing");

    /* strict: a missing name, and a wrong shape */
    struct nn_param_table more;
    nn_param_table_init(&more);
    for (int i = 0; i < a.params.n; i++) {
        const struct nn_param *q = &a.params.p[i];
        int64_t sh[4] = {q->shape[0], q->shape[1], q->shape[2], q->shape[3]};
        if (!strcmp(q->name, "projection_head.3.weight")) {
            sh[1] = 17;
        }
        nn_param_table_add(&more, q->name, q->ndim, sh, q->flags);
    }
    nn_param_table_add(&more, "extra.weight", 1, (int64_t[]){3}, 0);
    float *mp = calloc(more.total, 4);
    st = nn_checkpoint_load(path, &more, mp, &a.buffers, b.b, NULL, &strict, NULL, err,
                            sizeof err);
    EXPECT(st == NN_CHECKPOINT_ERR_SHAPE && strstr(err, "projection_head.3.weight") &&
               strstr(err, "[4, 16]") && strstr(err, "extra.weight"),
           "strict shape+missing: %s", err);
    printf("  strict, wrong shape + missing: %s\n", err);
    /* lenient (eval scripts): mis-shaped kept, missing kept, others loaded */
    for (size_t i = 0; i < more.total; i++) {
        mp[i] = -5.0f;
    }
    st = nn_checkpoint_load(path, &more, mp, &a.buffers, b.b, NULL, &lenient, &info, err,
                            sizeof err);
    EXPECT(st == NN_CHECKPOINT_OK && info.nmismatched == 1 && info.nmissing == 1 &&
               !info.has_momentum, "lenient: %d %d", info.nmismatched, info.nmissing);
    int pw = nn_param_table_find(&more, "projection_head.3.weight");
    int ew = nn_param_table_find(&more, "extra.weight");
    EXPECT(mp[more.p[pw].offset] == -5.0f && mp[more.p[ew].offset] == -5.0f &&
               mp[more.p[cw].offset] == a.p[a.params.p[cw].offset], "lenient values");
    nn_checkpoint_info_free(&info);
    /* strict with momentum wanted but absent from the file */
    st = nn_checkpoint_load(path2, &b.params, b.p, NULL, NULL, b.m,
                            &(struct nn_checkpoint_load_opts){.strict = true}, NULL, err,
                            sizeof err);
    EXPECT(st != NN_CHECKPOINT_OK && strstr(err, "momentum_buffer"), "momentum missing: %s", err);
    free(mp);
    nn_param_table_free(&more);

    /* broken files */
    char *path3 = tmp_path("broken");
    char junk[] = "\x10\0\0\0\0\0\0\0{\"a\":1}";
    swav_file_write_atomic(path3, junk, sizeof junk - 1, err, sizeof err);
    st = nn_checkpoint_load(path3, &b.params, b.p, NULL, NULL, NULL, &lenient, NULL, err,
                            sizeof err);
    EXPECT(st == NN_CHECKPOINT_ERR_FILE && strstr(err, path3), "broken: %s", err);
    printf("  broken file: %s\n", err);
    EXPECT(nn_checkpoint_peek(path3, &info, err, sizeof err) == NN_CHECKPOINT_ERR_FILE &&
               strstr(err, path3), "peek broken: %s", err);
    printf("  peek, broken file: %s\n", err);
    st = nn_checkpoint_load("/nonexistent/x.safetensors", &b.params, b.p, NULL, NULL, NULL,
                            &lenient, NULL, err, sizeof err);
    EXPECT(st == NN_CHECKPOINT_ERR_FILE, "absent");
    /* metadata from the future */
    safetensors_writer_init(&w);
    safetensors_writer_set_meta(&w, "swav_format_version", "99");
    safetensors_writer_write(&w, path3, err, sizeof err);
    safetensors_writer_free(&w);
    st = nn_checkpoint_load(path3, &b.params, b.p, NULL, NULL, NULL, &lenient, NULL, err,
                            sizeof err);
    EXPECT(st == NN_CHECKPOINT_ERR_META, "future format: %s", err);

    safetensors_file_free(&f);
    unlink(path);
    unlink(path2);
    unlink(path3);
    free(path);
    free(path2);
    free(path3);
    model_free(&a);
    model_free(&b);
    printf("checkpoint unit checks: %s\n", failures ? "FAILED" : "ok");
}

static void write_raw(const char *path, const struct model *m)
{
    size_t np = m->params.total, nb = m->buffers.total;
    float *all = malloc((2 * np + nb) * 4);
    memcpy(all, m->p, np * 4);
    memcpy(all + np, m->b, nb * 4);
    memcpy(all + np + nb, m->m, np * 4);
    char err[512];
    if (swav_file_write_atomic(path, all, (2 * np + nb) * 4, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    free(all);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        unit_checks();
        return failures ? 1 : 0;
    }
    if (argc != 4) {
        fprintf(stderr, "usage: test_checkpoint [write|load CKPT RAW]\n");
        return 2;
    }
    struct model m;
    model_init(&m);
    char err[1024];
    if (!strcmp(argv[1], "write")) {
        model_random(&m, 2);
        struct nn_checkpoint_meta meta = {.epoch = 3, .step = 300, .seed = 31,
                                          .config_json = "{\"arch\": \"small\"}"};
        if (nn_checkpoint_save(argv[2], &m.params, m.p, &m.buffers, m.b, m.m, &meta, err,
                               sizeof err) != NN_CHECKPOINT_OK) {
            fprintf(stderr, "save: %s\n", err);
            model_free(&m);
            return 1;
        }
        write_raw(argv[3], &m);
        printf("wrote %s\n", argv[2]);
        model_free(&m);
        return 0;
    }
    if (!strcmp(argv[1], "load")) {
        struct nn_checkpoint_load_opts strict = {.strict = true};
        struct nn_checkpoint_info info;
        if (nn_checkpoint_load(argv[2], &m.params, m.p, &m.buffers, m.b, m.m, &strict, &info,
                               err, sizeof err) != NN_CHECKPOINT_OK) {
            fprintf(stderr, "load: %s\n", err);
            return 1;
        }
        void *raw;
        size_t len;
        size_t np = m.params.total, nb = m.buffers.total;
        if (swav_file_read_all(argv[3], 1u << 28, &raw, &len, err, sizeof err) ||
            len != (2 * np + nb) * 4) {
            fprintf(stderr, "raw: %s (%zu bytes)\n", err, len);
            return 1;
        }
        const float *want = raw;
        int bad = 0;
        const struct {
            const char *what;
            const struct nn_param_table *t;
            const float *got, *want;
        } parts[3] = {{"", &m.params, m.p, want},
                      {"", &m.buffers, m.b, want + np},
                      {"optimizer.", &m.params, m.m, want + np + nb}};
        for (int s = 0; s < 3; s++) {
            for (int i = 0; i < parts[s].t->n; i++) {
                const struct nn_param *q = &parts[s].t->p[i];
                if (memcmp(parts[s].got + q->offset, parts[s].want + q->offset, q->numel * 4)) {
                    fprintf(stderr, "MISMATCH %s%s: first value ours %.9g, torch %.9g\n",
                            parts[s].what, q->name, parts[s].got[q->offset],
                            parts[s].want[q->offset]);
                    bad++;
                }
            }
        }
        printf("loaded %d tensors from %s (epoch %lld, format %d): %s\n", info.nloaded, argv[2],
               (long long)info.epoch, info.format_version, bad ? "MISMATCH" : "all equal");
        nn_checkpoint_info_free(&info);
        free(raw);
        model_free(&m);
        return bad ? 1 : 0;
    }
    return 2;
}
