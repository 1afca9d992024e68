/* The C side of the PyTorch parity test (test_parity.py drives it).
 *
 *   nn_ref_tool device DEV  opens the backend DEV (nn/device.h: cpu, cuda,
 *                           cuda:N) and prints its name; exit 77 with
 *                           "SKIP: ..." when it cannot be used here
 *   nn_ref_tool names DIR   prints the parameter and buffer tables of the
 *                           model DIR/cfg.txt describes ("P name d0 d1 ..",
 *                           "B name ..."), in flat-buffer order
 *   nn_ref_tool run DIR     loads DIR/params.bin, DIR/buffers.bin (float32,
 *                           table order) and DIR/input<g>.bin, then writes
 *                           eval_out.bin (eval-mode forward: embedding then
 *                           scores), train_out.bin (train-mode forward),
 *                           and if DIR/q.bin exists: loss.bin, grads.bin
 *                           (flat, table order), buffers_after.bin, and
 *                           with "lr" in cfg.txt one SGD + LARC step
 *                           (nn_optim_config_swav(wd, 0), iteration 0):
 *                           params_after.bin, momentum_after.bin
 *                           Also relu_masks.bin / relu_masks.txt: for every
 *                           ReLU of the train-mode forward (per crop group:
 *                           bn1, each block's inner BN+ReLUs and its output;
 *                           the head's BN1d+ReLU once), one byte per value
 *                           in NCHW order, 1 where the output is > 0; the
 *                           .txt lists "group name count" in file order.
 *
 * names and run take an optional last argument DEV (default cpu): the
 * model then lives on that backend (the CUDA backend for the GPU parity of
 * scripts/gpu-check); files are read into host memory and copied to the
 * backend, results copied back, so the same code serves both.
 *
 * cfg.txt: one "key values..." per line: depth, width, small_stem,
 * hidden_mlp, feat_dim, nmb_prototypes, batch, group (n_crops size; repeated),
 * temperature, assign (crop ids), threads, plain_layout, lr, wd. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/device.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "nn/resnet.h"

struct tool_cfg {
    struct nn_resnet_cfg rc;
    struct nn_crop_group groups[NN_MAX_GROUPS];
    int n_groups, batch, n_assign, threads;
    int assign[16];
    float temperature;
    double lr, wd; /* lr 0: no optimizer step */
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
        else if (!strcmp(key, "lr")) c->lr = atof(v);
        else if (!strcmp(key, "wd")) c->wd = atof(v);
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

/* n floats of backend memory src into a new host buffer. */
static float *to_host(nn_backend_t *be, const float *src, size_t n)
{
    float *h = malloc(n * sizeof(float));
    nn_backend_copy(be, h, src, n * sizeof(float));
    return h;
}

/* n floats of backend memory to DIR/name. */
static void write_backend_floats(nn_backend_t *be, const char *dir, const char *name,
                                 const float *src, size_t n)
{
    float *h = to_host(be, src, n);
    write_floats(dir, name, h, n);
    free(h);
}

/* DIR/name (n floats) into backend memory dst; -1 when the file is absent. */
static int read_backend_floats(nn_backend_t *be, const char *dir, const char *name, float *dst,
                               size_t n)
{
    float *h = malloc(n * sizeof(float));
    int rc = read_floats(dir, name, h, n);
    if (rc == 0) {
        nn_backend_copy(be, dst, h, n * sizeof(float));
    }
    free(h);
    return rc;
}

static void write_outputs(const char *dir, const char *name, struct nn_model *m)
{
    size_t ne = (size_t)m->n_rows * m->cfg.feat_dim, ns = (size_t)m->n_rows * m->cfg.nmb_prototypes;
    float *buf = malloc((ne + ns) * sizeof(float));
    nn_backend_copy(m->be, buf, m->embedding, ne * sizeof(float));
    nn_backend_copy(m->be, buf + ne, m->scores, ns * sizeof(float));
    write_floats(dir, name, buf, ne + ns);
    free(buf);
}

static void write_mask(FILE *bin, FILE *txt, struct nn_model *m, int group, const char *name)
{
    struct nn_tensor t;
    if (nn_model_activation(m, group, name, &t) != 0) {
        fprintf(stderr, "nn_ref_tool: no activation %s in group %d\n", name, group);
        exit(1);
    }
    size_t n = nn_tensor_numel(&t);
    /* its storage as the backend holds it (padded channels in a blocked layout) */
    float *plain = to_host(m->be, t.data, nn_tensor_bytes(&t) / sizeof(float));
    unsigned char *mask = malloc(n);
    if (t.ndim == 4 && t.layout != NN_LAYOUT_NCHW) { /* the CPU backend's blocked layout */
        struct nn_tensor host = t, p = t;
        host.data = plain;
        p.data = malloc(n * sizeof(float));
        p.layout = NN_LAYOUT_NCHW;
        nn_tensor_convert(&p, &host);
        free(plain);
        plain = p.data;
    }
    for (size_t i = 0; i < n; i++) {
        mask[i] = plain[i] > 0;
    }
    if (fwrite(mask, 1, n, bin) != n) {
        fprintf(stderr, "nn_ref_tool: cannot write relu_masks.bin\n");
        exit(1);
    }
    fprintf(txt, "%d %s %zu\n", group, name, n);
    free(plain);
    free(mask);
}

/* The ReLU masks of the last (train-mode) forward, in the reference's order. */
static void write_relu_masks(const char *dir, struct nn_model *m)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/relu_masks.bin", dir);
    FILE *bin = fopen(path, "wb");
    snprintf(path, sizeof path, "%s/relu_masks.txt", dir);
    FILE *txt = fopen(path, "w");
    if (!bin || !txt) {
        fprintf(stderr, "nn_ref_tool: cannot write %s\n", path);
        exit(1);
    }
    static const int c18[4] = {2, 2, 2, 2}, c34[4] = {3, 4, 6, 3}, c101[4] = {3, 4, 23, 3};
    int depth = m->cfg.depth;
    const int *counts = depth == 18 ? c18 : depth == 101 ? c101 : c34;
    int inner = depth >= 50 ? 2 : 1; /* BN+ReLUs inside a block */
    char name[64];
    for (int g = 0; g < m->n_groups; g++) {
        write_mask(bin, txt, m, g, "bn1");
        for (int s = 0; s < 4; s++) {
            for (int j = 0; j < counts[s]; j++) {
                for (int k = 1; k <= inner; k++) {
                    snprintf(name, sizeof name, "layer%d.%d.bn%d", s + 1, j, k);
                    write_mask(bin, txt, m, g, name);
                }
                snprintf(name, sizeof name, "layer%d.%d", s + 1, j);
                write_mask(bin, txt, m, g, name);
            }
        }
    }
    if (m->cfg.hidden_mlp > 0 && m->cfg.feat_dim > 0) {
        write_mask(bin, txt, m, -1, "projection_head.1");
    }
    if (fclose(bin) != 0 || fclose(txt) != 0) {
        fprintf(stderr, "nn_ref_tool: cannot write the relu masks\n");
        exit(1);
    }
}

/* The backend DEV, or exit 77 (a skip) with the reason when it cannot be used here. */
static nn_backend_t *open_backend(const char *dev, int threads)
{
    char err[512];
    if (nn_device_check(dev, err, sizeof err) != 0) {
        fprintf(stderr, "nn_ref_tool: %s\n", err);
        exit(2);
    }
    nn_backend_t *be = nn_device_open(dev, threads, err, sizeof err);
    if (!be) {
        printf("SKIP: %s\n", err);
        fflush(stdout);
        exit(77);
    }
    return be;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "device")) {
        nn_backend_t *be = open_backend(argv[2], 1);
        printf("%s\n", nn_backend_name(be));
        nn_backend_destroy(&be);
        return 0;
    }
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: nn_ref_tool names|run DIR [DEVICE]  |  nn_ref_tool device DEVICE\n");
        return 2;
    }
    const char *dir = argv[2];
    struct tool_cfg c;
    if (read_cfg(dir, &c) != 0) {
        return 2;
    }
    nn_backend_t *be = open_backend(argc == 4 ? argv[3] : "cpu", c.threads);
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
    if (read_backend_floats(be, dir, "params.bin", m->param_data, m->params.total) != 0 ||
        read_backend_floats(be, dir, "buffers.bin", m->buffer_data, m->buffers.total) != 0) {
        fprintf(stderr, "nn_ref_tool: missing params.bin / buffers.bin in %s\n", dir);
        return 2;
    }
    nn_backend_weights_updated(be);
    float *inputs[NN_MAX_GROUPS];
    for (int g = 0; g < c.n_groups; g++) {
        size_t n = (size_t)c.groups[g].n_crops * c.batch * 3 * c.groups[g].size * c.groups[g].size;
        inputs[g] = nn_backend_alloc(be, n * sizeof(float));
        char name[64];
        snprintf(name, sizeof name, "input%d.bin", g);
        if (read_backend_floats(be, dir, name, inputs[g], n) != 0) {
            fprintf(stderr, "nn_ref_tool: missing %s\n", name);
            return 2;
        }
    }
    nn_model_forward(m, (const float *const *)inputs, c.batch, NN_MODEL_EVAL);
    write_outputs(dir, "eval_out.bin", m);
    nn_model_forward(m, (const float *const *)inputs, c.batch, NN_MODEL_TRAIN);
    write_outputs(dir, "train_out.bin", m);
    write_relu_masks(dir, m);
    size_t K = (size_t)c.rc.nmb_prototypes, nq = (size_t)c.n_assign * c.batch * K;
    float *q = nn_backend_alloc(be, nq * sizeof(float));
    if (read_backend_floats(be, dir, "q.bin", q, nq) == 0) {
        int n_crops = 0;
        for (int g = 0; g < c.n_groups; g++) {
            n_crops += c.groups[g].n_crops;
        }
        struct nn_swav_loss_cfg lc = {n_crops, c.batch, c.n_assign, c.assign, c.temperature};
        float *logp = nn_backend_alloc(be, (size_t)m->n_rows * K * sizeof(float));
        float *dscores = nn_backend_alloc(be, (size_t)m->n_rows * K * sizeof(float));
        struct nn_tensor sc = nn_tensor_2d(m->scores, m->n_rows, (int64_t)K);
        struct nn_tensor dsc = nn_tensor_2d(dscores, m->n_rows, (int64_t)K);
        float loss = nn_swav_loss_forward(be, logp, &sc, q, &lc);
        nn_swav_loss_backward(be, &dsc, logp, q, &lc);
        nn_model_zero_grad(m);
        nn_model_backward(m, dscores);
        write_floats(dir, "loss.bin", &loss, 1);
        write_backend_floats(be, dir, "grads.bin", m->grad_data, m->params.total);
        write_backend_floats(be, dir, "buffers_after.bin", m->buffer_data, m->buffers.total);
        if (c.lr > 0) {
            /* the backend's own optimizer where it has one (CUDA), as the trainer */
            struct nn_optim_config oc = nn_optim_config_swav(c.wd, 0);
            struct nn_optim o;
            nn_optim_init_on(&o, be, &m->params, &oc);
            nn_optim_step(&o, m->param_data, m->grad_data, c.lr, 0);
            write_backend_floats(be, dir, "params_after.bin", m->param_data, m->params.total);
            write_backend_floats(be, dir, "momentum_after.bin", o.momentum, m->params.total);
            nn_optim_free(&o);
        }
        nn_backend_free(be, logp);
        nn_backend_free(be, dscores);
    }
    nn_backend_free(be, q);
    for (int g = 0; g < c.n_groups; g++) {
        nn_backend_free(be, inputs[g]);
    }
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
    return 0;
}
