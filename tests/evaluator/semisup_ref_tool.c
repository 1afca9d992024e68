/* Test helper for test_semisup_ref.py: fine-tunes a small network with
 * eval_semisup_run on images the script generated and dumps what PyTorch
 * must reproduce: the parameter and buffer tables (names, shapes), their
 * initial and final values, each epoch's order, each step's loss and
 * learning rates, and the validation accuracy of each epoch.
 *
 * usage: semisup_ref_tool DIR S C NT NV EPOCHS BATCH LR LR_LAST WD MILESTONE GAMMA SEED
 *   DIR holds x.f32 ((NT + NV), 3, S, S) normalized and y.i32 (NT + NV);
 *   the first NT are the training images.  The model is a resnet18, width
 *   8, small stem, head Linear(64, C), initialized from SEED. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "evaluator/results.h"
#include "evaluator/semisup.h"
#include "nn/backend.h"
#include "nn/resnet.h"
#include "tests/evaluator/ref_io.h"

/* write_file of a backend's memory (the model's), through a host copy */
static void write_backend(nn_backend_t *be, const char *dir, const char *name, const float *p,
                          size_t bytes)
{
    float *h = nn_backend_to_host(be, p, bytes / sizeof(float));
    write_file(dir, name, h, bytes);
    free(h);
}

static void write_table(FILE *f, const struct nn_param_table *t)
{
    fprintf(f, "[");
    for (int i = 0; i < t->n; i++) {
        fprintf(f, "%s{\"name\": \"%s\", \"offset\": %zu, \"shape\": [", i ? ", " : "",
                t->p[i].name, t->p[i].offset);
        for (int d = 0; d < t->p[i].ndim; d++)
            fprintf(f, "%s%lld", d ? ", " : "", (long long)t->p[i].shape[d]);
        fprintf(f, "]}");
    }
    fprintf(f, "]");
}

struct mem {
    const float *x;
    const int32_t *y;
    int64_t n, per;
};

static int mem_fill(void *ctx, int epoch, const uint32_t *idx, int64_t b, float *x, int32_t *y)
{
    const struct mem *m = ctx;
    for (int64_t i = 0; i < b; i++) {
        SWAV_ASSERT(idx[i] < m->n);
        memcpy(x + i * m->per, m->x + idx[i] * m->per, sizeof(float) * (size_t)m->per);
        y[i] = m->y[idx[i]];
    }
    return 0;
}

struct rec {
    float *loss;
    double *lr;
    int64_t n, cap;
};

static void on_step(void *ctx, int epoch, int64_t step, float loss, double lr_trunk,
                    double lr_head)
{
    struct rec *r = ctx;
    SWAV_ASSERT(step == r->n && r->n < r->cap);
    r->loss[r->n] = loss;
    r->lr[2 * r->n] = lr_trunk;
    r->lr[2 * r->n + 1] = lr_head;
    r->n++;
}

int main(int argc, char **argv)
{
    if (argc != 14) {
        fprintf(stderr, "usage: %s DIR S C NT NV EPOCHS BATCH LR LR_LAST WD MILESTONE GAMMA "
                        "SEED\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    int S = atoi(argv[2]), C = atoi(argv[3]), NT = atoi(argv[4]), NV = atoi(argv[5]);
    struct eval_semisup_config cfg;
    eval_semisup_config_default(&cfg);
    cfg.epochs = atoi(argv[6]);
    cfg.batch_size = atoi(argv[7]);
    cfg.lr = atof(argv[8]);
    cfg.lr_last_layer = atof(argv[9]);
    cfg.wd = atof(argv[10]);
    cfg.n_decay = 1;
    cfg.decay_epochs[0] = atoi(argv[11]);
    cfg.gamma = atof(argv[12]);
    cfg.seed = (uint64_t)atoll(argv[13]);
    const int64_t per = 3LL * S * S;
    float *x = read_exact(dir, "x.f32", sizeof(float) * (size_t)(per * (NT + NV)));
    int32_t *y = read_exact(dir, "y.i32", sizeof(int32_t) * (size_t)(NT + NV));

    nn_backend_t *be = nn_backend_cpu_new(1);
    struct nn_resnet_cfg rc;
    nn_resnet_cfg_default(&rc);
    rc.depth = 18;
    rc.width = 8;
    rc.small_stem = 1;
    rc.hidden_mlp = 0;
    rc.feat_dim = C;
    rc.nmb_prototypes = 0;
    rc.no_l2norm = 1;
    rc.seed = cfg.seed;
    struct nn_crop_group g = {.n_crops = 1, .size = S};
    struct nn_model *m = nn_model_new(be, &rc, &g, 1, cfg.batch_size);
    SWAV_ASSERT(m);
    char path[4096];
    snprintf(path, sizeof path, "%s/tables.json", dir);
    FILE *f = fopen(path, "w");
    SWAV_ASSERT(f);
    fprintf(f, "{\"params\": ");
    write_table(f, &m->params);
    fprintf(f, ", \"buffers\": ");
    write_table(f, &m->buffers);
    fprintf(f, "}\n");
    SWAV_ASSERT(fclose(f) == 0);
    write_backend(be, dir, "init_params.f32", m->param_data, sizeof(float) * m->params.total);
    write_backend(be, dir, "init_buffers.f32", m->buffer_data, sizeof(float) * m->buffers.total);
    uint32_t *order = malloc(sizeof(uint32_t) * (size_t)NT * cfg.epochs);
    for (int e = 0; e < cfg.epochs; e++)
        eval_linear_epoch_order(cfg.seed, e, order + (size_t)e * NT, NT);
    write_file(dir, "order.u32", order, sizeof(uint32_t) * (size_t)NT * cfg.epochs);

    char err[512];
    struct eval_semisup s;
    if (eval_semisup_init(&s, m, &cfg, 1, err, sizeof err) != 0) {
        fprintf(stderr, "semisup: %s\n", err);
        return 1;
    }
    int64_t steps = (int64_t)cfg.epochs * ((NT + cfg.batch_size - 1) / cfg.batch_size);
    struct rec r = {malloc(sizeof(float) * steps), malloc(2 * sizeof(double) * steps), 0, steps};
    struct mem tm = {x, y, NT, per}, vm = {x + NT * per, y + NT, NV, per};
    struct eval_image_source train = {.ctx = &tm, .n = NT, .fill = mem_fill};
    struct eval_image_source val = {.ctx = &vm, .n = NV, .fill = mem_fill};
    struct eval_linear_result res;
    enum eval_semisup_status st = eval_semisup_run(&s, &cfg, &train, &val, on_step, &r, &res);
    if (st != EVAL_SEMISUP_OK) {
        fprintf(stderr, "semisup: %s\n", eval_semisup_status_str(st));
        return 1;
    }
    SWAV_ASSERT(r.n == steps);
    write_file(dir, "loss.f32", r.loss, sizeof(float) * r.n);
    write_file(dir, "lr.f64", r.lr, 2 * sizeof(double) * r.n);
    write_backend(be, dir, "final_params.f32", m->param_data, sizeof(float) * m->params.total);
    write_backend(be, dir, "final_buffers.f32", m->buffer_data, sizeof(float) * m->buffers.total);
    printf("{\"steps\": %lld, \"last_top1\": %.6f, \"last_top5\": %.6f, \"best_top1\": %.6f, "
           "\"best_top5\": %.6f, \"best_epoch\": %d}\n", (long long)r.n, res.last_top1,
           res.last_top5, res.best_top1, res.best_top5, res.best_epoch);
    eval_semisup_free(&s);
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
    free(order);
    free(r.loss);
    free(r.lr);
    free(x);
    free(y);
    return 0;
}
