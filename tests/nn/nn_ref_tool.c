/* The C side of the PyTorch parity test (test_parity.py drives it).
 *
 *   nn_ref_tool names DIR   prints the parameter and buffer tables of the
 *                           model DIR/cfg.txt describes ("P name d0 d1 ..",
 *                           "B name ..."), in flat-buffer order
 *   nn_ref_tool run DIR     loads DIR/params.bin, DIR/buffers.bin (float32,
 *                           table order) and DIR/input<g>.bin, then writes
 *                           eval_out.bin (eval-mode forward: embedding then
 *                           scores), train_out.bin (train-mode forward),
 *                           and if DIR/q.bin exists: loss.bin, grads.bin
 *                           (flat, table order), buffers_after.bin
 *
 * cfg.txt: one "key values..." per line: depth, width, small_stem,
 * hidden_mlp, feat_dim, nmb_prototypes, batch, group (n_crops size; repeated),
 * temperature, assign (crop ids), threads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/layers.h"
#include "nn/resnet.h"

struct tool_cfg {
    struct nn_resnet_cfg rc;
    struct nn_crop_group groups[NN_MAX_GROUPS];
    int n_groups, batch, n_assign, threads;
    int assign[16];
    float temperature;
};

static int read_cfg(const char *dir, struct tool_cfg *c)
{
    char path[4096], line[512];
    snprintf(path, sizeof path, "%s/cfg.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "nn_ref_tool: cannot open %s\n", path);
        return -1;
    }
    memset(c, 0, sizeof *c);
    nn_resnet_cfg_default(&c->rc);
    c->threads = 2;
    c->temperature = 0.1f;
    while (fgets(line, sizeof line, f)) {
        char key[64];
        int off = 0;
        if (sscanf(line, "%63s %n", key, &off) != 1) {
            continue;
        }
        const char *v = line + off;
        if (!strcmp(key, "depth")) c->rc.depth = atoi(v);
        else if (!strcmp(key, "width")) c->rc.width = atoi(v);
        else if (!strcmp(key, "small_stem")) c->rc.small_stem = atoi(v);
        else if (!strcmp(key, "hidden_mlp")) c->rc.hidden_mlp = atoi(v);
        else if (!strcmp(key, "feat_dim")) c->rc.feat_dim = atoi(v);
        else if (!strcmp(key, "nmb_prototypes")) c->rc.nmb_prototypes = atoi(v);
        else if (!strcmp(key, "plain_layout")) c->rc.plain_layout = atoi(v);
        else if (!strcmp(key, "batch")) c->batch = atoi(v);
        else if (!strcmp(key, "threads")) c->threads = atoi(v);
        else if (!strcmp(key, "temperature")) c->temperature = (float)atof(v);
        else if (!strcmp(key, "group") && c->n_groups < NN_MAX_GROUPS) {
            sscanf(v, "%d %d", &c->groups[c->n_groups].n_crops, &c->groups[c->n_groups].size);
            c->n_groups++;
        } else if (!strcmp(key, "assign")) {
            int n = 0, x;
            while (c->n_assign < 16 && sscanf(v, "%d%n", &x, &n) == 1) {
                c->assign[c->n_assign++] = x;
                v += n;
            }
        }
    }
    fclose(f);
    return 0;
}

static int read_floats(const char *dir, const char *name, float *dst, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        return -1;
    }
    size_t got = fread(dst, sizeof(float), n, f);
    fclose(f);
    if (got != n) {
        fprintf(stderr, "nn_ref_tool: %s: %zu floats, expected %zu\n", path, got, n);
        exit(1);
    }
    return 0;
}

static void write_floats(const char *dir, const char *name, const float *src, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(src, sizeof(float), n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "nn_ref_tool: cannot write %s\n", path);
        exit(1);
    }
}

static void print_table(const char *tag, const struct nn_param_table *t)
{
    for (int i = 0; i < t->n; i++) {
        printf("%s %s", tag, t->p[i].name);
        for (int d = 0; d < t->p[i].ndim; d++) {
            printf(" %lld", (long long)t->p[i].shape[d]);
        }
        printf("\n");
    }
}

static void write_outputs(const char *dir, const char *name, struct nn_model *m)
{
    size_t ne = (size_t)m->n_rows * m->cfg.feat_dim, ns = (size_t)m->n_rows * m->cfg.nmb_prototypes;
    float *buf = malloc((ne + ns) * sizeof(float));
    memcpy(buf, m->embedding, ne * sizeof(float));
    memcpy(buf + ne, m->scores, ns * sizeof(float));
    write_floats(dir, name, buf, ne + ns);
    free(buf);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: nn_ref_tool names|run DIR\n");
        return 2;
    }
    const char *dir = argv[2];
    struct tool_cfg c;
    if (read_cfg(dir, &c) != 0) {
        return 2;
    }
    nn_backend_t *be = nn_backend_cpu_new(c.threads);
    struct nn_model *m = nn_model_new(be, &c.rc, c.groups, c.n_groups, c.batch);
    if (!m) {
        return 2;
    }
    if (!strcmp(argv[1], "names")) {
        print_table("P", &m->params);
        print_table("B", &m->buffers);
        nn_model_destroy(&m);
        nn_backend_destroy(&be);
        return 0;
    }
    if (read_floats(dir, "params.bin", m->param_data, m->params.total) != 0 ||
        read_floats(dir, "buffers.bin", m->buffer_data, m->buffers.total) != 0) {
        fprintf(stderr, "nn_ref_tool: missing params.bin / buffers.bin in %s\n", dir);
        return 2;
    }
    float *inputs[NN_MAX_GROUPS];
    for (int g = 0; g < c.n_groups; g++) {
        size_t n = (size_t)c.groups[g].n_crops * c.batch * 3 * c.groups[g].size * c.groups[g].size;
        inputs[g] = malloc(n * sizeof(float));
        char name[64];
        snprintf(name, sizeof name, "input%d.bin", g);
        if (read_floats(dir, name, inputs[g], n) != 0) {
            fprintf(stderr, "nn_ref_tool: missing %s\n", name);
            return 2;
        }
    }
    nn_model_forward(m, (const float *const *)inputs, c.batch, NN_MODEL_EVAL);
    write_outputs(dir, "eval_out.bin", m);
    nn_model_forward(m, (const float *const *)inputs, c.batch, NN_MODEL_TRAIN);
    write_outputs(dir, "train_out.bin", m);
    size_t K = (size_t)c.rc.nmb_prototypes;
    float *q = malloc((size_t)c.n_assign * c.batch * K * sizeof(float));
    if (read_floats(dir, "q.bin", q, (size_t)c.n_assign * c.batch * K) == 0) {
        int n_crops = 0;
        for (int g = 0; g < c.n_groups; g++) {
            n_crops += c.groups[g].n_crops;
        }
        struct nn_swav_loss_cfg lc = {n_crops, c.batch, c.n_assign, c.assign, c.temperature};
        float *logp = malloc((size_t)m->n_rows * K * sizeof(float));
        float *dscores = malloc((size_t)m->n_rows * K * sizeof(float));
        struct nn_tensor sc = nn_tensor_2d(m->scores, m->n_rows, (int64_t)K);
        struct nn_tensor dsc = nn_tensor_2d(dscores, m->n_rows, (int64_t)K);
        float loss = nn_swav_loss_forward(be, logp, &sc, q, &lc);
        nn_swav_loss_backward(be, &dsc, logp, q, &lc);
        nn_model_zero_grad(m);
        nn_model_backward(m, dscores);
        write_floats(dir, "loss.bin", &loss, 1);
        write_floats(dir, "grads.bin", m->grad_data, m->params.total);
        write_floats(dir, "buffers_after.bin", m->buffer_data, m->buffers.total);
        free(logp);
        free(dscores);
    }
    free(q);
    for (int g = 0; g < c.n_groups; g++) {
        free(inputs[g]);
    }
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
    return 0;
}
