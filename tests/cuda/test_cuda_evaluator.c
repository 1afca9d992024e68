/* The evaluator's GPU path against its CPU path (swav-evaluator --device
 * cuda vs cpu), from the same checkpoint file and the same uint8 crops:
 *
 *   1. a "pretrained" checkpoint written by a small SwAV model on the CPU
 *      (ResNet-18 width 16, small stem, head 32 -> 16, 20 prototypes; 20 train-mode
 *      forwards first, so that the BN running statistics are those of such
 *      crops, as a trained network's, and eval-mode activations stay in
 *      scale)
 *      loaded into a backbone (feat_dim 0, another init seed) on each
 *      backend with eval_backbone_load (the live evaluator's load: a sync,
 *      then nn_checkpoint_load non-strict, head and prototypes skipped);
 *   2. eval_backbone_features (the live evaluator's feature extraction:
 *      crops normalized by the backend, eval-mode forward, features copied
 *      out) of 10 crops of 32 pixels in forwards of 4, 4 and 2 rows;
 *   3. the semi-supervised fine-tuning: a network with a 5-class head,
 *      eval_semisup_copy_backbone from that backbone, eval_semisup_init
 *      (the optimizer through nn_optim_init_on) and eval_semisup_run for one
 *      epoch of 7 labelled images in batches of 4 (two steps, the last one
 *      short), training crops as uint8 (fill_u8: normalized by the backend,
 *      as the live evaluator's loader batches), validation crops as host
 *      floats (fill: copied into the backend's memory), weight decay on.
 *
 * Tolerances, max |cuda - cpu| / max |cpu| over the whole output unless
 * said otherwise:
 *   - parameters and BN statistics after the load: exact (a byte copy);
 *   - features 1e-4: an eval-mode forward (fixed BN statistics, so no batch
 *     normalization amplifies differences) through 20 fp32 layers, cuDNN
 *     vs oneDNN summation orders; cuda_layers holds each convolution to
 *     1e-4 and sees far less;
 *   - step losses 1e-4 relative to the loss (the mean cross-entropy, in
 *     double on the host from logits read back, of a forward in train mode);
 *   - parameter updates (after - before) 2e-3 relative to the largest
 *     update, parameters after the steps 2e-3, momentum 2e-3: the updates
 *     are the gradients (times lr, plus momentum and weight decay), and
 *     gradients through train-mode BN at batches of 4 and 3 differ by
 *     summation order as in cuda_model, which holds them to 2e-3;
 *   - BN running statistics after the steps 1e-3 (as cuda_model), the
 *     validation loss after the epoch 1e-3 relative (eval forward on the
 *     stepped weights); num_batches_tracked exact (NPRE from the checkpoint
 *     + 2 steps).
 * And on the GPU the evaluator's own buffers (the fine-tuning's input,
 * logits gradient and momentum) must be the backend's memory and the
 * optimizer the backend's own: a host pointer handed to a kernel would
 * fault, or on an HMM machine pass silently, so it is checked directly.
 *
 * Exit 77 without a device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/rng.h"
#include "evaluator/live.h"
#include "evaluator/semisup.h"
#include "nn/checkpoint.h"
#include "nn/cuda/backend_cuda.h"
#include "nn/resnet.h"
#include "nn/tensor.h"

#define CHECK_REL_FLOOR 1e-12 /* of max |cpu| */
#define CHECK_NAME_WIDTH 44
#include "tests/cuda/compare.h"

enum {
    S = 32,  /* crop size */
    FB = 4,  /* feature batch (the backbone's rows) */
    NF = 10, /* images whose features are compared: forwards of 4, 4, 2 */
    C = 5,   /* classes of the fine-tuning head */
    SB = 4,  /* fine-tuning batch */
    NT = 7,  /* labelled images: steps of 4 and 3 */
    NV = 6,  /* validation images: forwards of 4 and 2 */
    NPRE = 20, /* train-mode forwards of the "pretrained" model */
};

static float max_abs(const float *x, size_t n)
{
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    }
    return m;
}

/* the evaluator's memory on the GPU side must be the backend's own */
static int backend_memory(const void *p)
{
    return nn_cuda_pointer_usable(p) == 1;
}

static int backend_optimizer(const struct nn_optim *o)
{
    return o->dev != NULL;
}

/* ---- image sources: uint8 crops (as a loader's batch) and host floats ---- */

struct u8_source {
    const uint8_t *crops; /* (n, S, S, 3) */
    const int32_t *y;
    uint8_t *batch;       /* (SB, S, S, 3): the "loader's batch" handed out */
    int begins;
};

static int u8_begin(void *ctx, int epoch, const uint32_t *order, int64_t n, int64_t batch)
{
    (void)epoch;
    (void)order;
    (void)n;
    (void)batch;
    ((struct u8_source *)ctx)->begins++;
    return 0;
}

static int u8_fill(void *ctx, int epoch, const uint32_t *idx, int64_t b, const uint8_t **crops,
                   int32_t *y)
{
    struct u8_source *s = ctx;
    (void)epoch;
    const size_t per = (size_t)S * S * 3;
    for (int64_t i = 0; i < b; i++) {
        memcpy(s->batch + i * per, s->crops + idx[i] * per, per);
        y[i] = s->y[idx[i]];
    }
    *crops = s->batch;
    return 0;
}

struct f32_source {
    const float *x; /* (n, 3, S, S) normalized */
    const int32_t *y;
};

static int f32_fill(void *ctx, int epoch, const uint32_t *idx, int64_t b, float *x, int32_t *y)
{
    const struct f32_source *s = ctx;
    (void)epoch;
    const size_t per = (size_t)3 * S * S;
    for (int64_t i = 0; i < b; i++) {
        memcpy(x + i * per, s->x + idx[i] * per, per * sizeof(float));
        y[i] = s->y[idx[i]];
    }
    return 0;
}

struct losses {
    float v[8];
    int n;
};

static void on_step(void *ctx, int epoch, int64_t step, float loss, double lr_trunk,
                    double lr_head)
{
    struct losses *l = ctx;
    (void)epoch;
    (void)step;
    (void)lr_trunk;
    (void)lr_head;
    if (l->n < 8) {
        l->v[l->n++] = loss;
    }
}

static void random_u8(struct swav_rng *r, uint8_t *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        x[i] = (uint8_t)swav_rng_below(r, 256);
    }
}

/* One side: load, features, fine-tuning.  Everything the checks compare is
 * copied to host memory (after a sync) in the out arrays. */
struct side {
    const char *name;
    nn_backend_t *be;
    struct nn_model *bb, *ft;
    struct eval_semisup s;
    struct nn_checkpoint_info info;
    float *bb_params, *bb_buffers; /* after the load */
    float *feats;                  /* (NF, D) */
    float *ft_before, *ft_after, *ft_momentum, *ft_buffers;
    struct losses loss;
    struct eval_linear_result res;
    int status;
};

static int run_side(struct side *sd, const char *ckpt, const uint8_t *fcrops,
                    const uint8_t *tcrops, const int32_t *ty, const float *vx,
                    const int32_t *vy)
{
    char err[512];
    struct nn_resnet_cfg bc;
    nn_resnet_cfg_default(&bc);
    bc.depth = 18;
    bc.width = 16;
    bc.small_stem = 1;
    bc.hidden_mlp = 0;
    bc.feat_dim = 0;
    bc.nmb_prototypes = 0;
    bc.seed = 99; /* not the checkpoint's: the load must overwrite everything */
    struct nn_crop_group g = {.n_crops = 1, .size = S};
    sd->bb = nn_model_new(sd->be, &bc, &g, 1, FB);
    if (!sd->bb) {
        printf("FAIL: %s: nn_model_new (backbone)\n", sd->name);
        return -1;
    }
    /* 1. the checkpoint */
    enum nn_checkpoint_status cs = eval_backbone_load(sd->bb, ckpt, &sd->info, err, sizeof err);
    if (cs != NN_CHECKPOINT_OK) {
        printf("FAIL: %s: eval_backbone_load: %s\n", sd->name, err);
        return -1;
    }
    size_t np = sd->bb->params.total, nb = sd->bb->buffers.total;
    sd->bb_params = nn_backend_to_host(sd->be, sd->bb->param_data, np);
    sd->bb_buffers = nn_backend_to_host(sd->be, sd->bb->buffer_data, nb);

    /* 2. features, as the live evaluator extracts them */
    const int64_t D = sd->bb->feat_channels;
    float *input = nn_backend_alloc(sd->be, (size_t)FB * 3 * S * S * sizeof(float));
    sd->feats = malloc((size_t)(NF * D) * sizeof(float)); /* host, as live.c's */
    eval_backbone_features(sd->bb, input, fcrops, NF, sd->feats);
    nn_backend_free(sd->be, input);

    /* 3. fine-tuning, as live.c's run_semisup sets it up */
    struct nn_resnet_cfg fc = sd->bb->cfg;
    fc.hidden_mlp = 0;
    fc.feat_dim = C;
    fc.nmb_prototypes = 0;
    fc.no_l2norm = 1;
    fc.seed = 31;
    nn_backend_sync(sd->be);
    sd->ft = nn_model_new(sd->be, &fc, &g, 1, SB);
    if (!sd->ft) {
        printf("FAIL: %s: nn_model_new (fine-tuning)\n", sd->name);
        return -1;
    }
    eval_semisup_copy_backbone(sd->ft, sd->bb);
    struct eval_semisup_config cfg;
    eval_semisup_config_default(&cfg);
    cfg.epochs = 1;
    cfg.batch_size = SB;
    cfg.wd = 1e-4; /* 0 in the reference; on here so the decay term is compared too */
    if (eval_semisup_init(&sd->s, sd->ft, &cfg, 1, err, sizeof err) != 0) {
        printf("FAIL: %s: eval_semisup_init: %s\n", sd->name, err);
        return -1;
    }
    size_t nfp = sd->ft->params.total, nfb = sd->ft->buffers.total;
    sd->ft_before = nn_backend_to_host(sd->be, sd->ft->param_data, nfp);
    struct u8_source ts = {.crops = tcrops, .y = ty, .batch = malloc((size_t)SB * S * S * 3)};
    struct f32_source vs = {.x = vx, .y = vy};
    struct eval_image_source train = {.ctx = &ts, .n = NT, .begin = u8_begin, .fill_u8 = u8_fill};
    struct eval_image_source val = {.ctx = &vs, .n = NV, .fill = f32_fill};
    enum eval_semisup_status st =
        eval_semisup_run(&sd->s, &cfg, &train, &val, on_step, &sd->loss, &sd->res);
    free(ts.batch);
    if (st != EVAL_SEMISUP_OK) {
        printf("FAIL: %s: eval_semisup_run: %s\n", sd->name, eval_semisup_status_str(st));
        return -1;
    }
    sd->ft_after = nn_backend_to_host(sd->be, sd->ft->param_data, nfp);
    sd->ft_momentum = nn_backend_to_host(sd->be, sd->s.optim.momentum, nfp);
    sd->ft_buffers = nn_backend_to_host(sd->be, sd->ft->buffer_data, nfb);
    printf("%s: %d steps, losses %.6f %.6f, val loss %.6f, val top-1 %.2f top-5 %.2f\n",
           sd->name, sd->loss.n, sd->loss.v[0], sd->loss.v[1], sd->res.last_val_loss,
           sd->res.last_top1, sd->res.last_top5);
    return 0;
}

static void side_free(struct side *sd)
{
    if (sd->ft) {
        eval_semisup_free(&sd->s);
    }
    nn_model_destroy(&sd->ft);
    nn_model_destroy(&sd->bb);
    nn_checkpoint_info_free(&sd->info);
    free(sd->bb_params);
    free(sd->bb_buffers);
    free(sd->feats);
    free(sd->ft_before);
    free(sd->ft_after);
    free(sd->ft_momentum);
    free(sd->ft_buffers);
    nn_backend_destroy(&sd->be);
}

/* The "pretrained" checkpoint: a SwAV model on the CPU after NPRE
 * train-mode forwards (BN running statistics moved off their init). */
static int write_checkpoint(const char *path, struct swav_rng *r)
{
    nn_backend_t *be = nn_backend_cpu_new(1);
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.depth = 18;
    cfg.width = 16;
    cfg.small_stem = 1; /* 32-pixel data: layer4 still 4x4, BN sees 4x4 x batch values */
    cfg.hidden_mlp = 32;
    cfg.feat_dim = 16;
    cfg.nmb_prototypes = 20;
    cfg.seed = 7;
    struct nn_crop_group g = {.n_crops = 1, .size = S};
    struct nn_model *m = nn_model_new(be, &cfg, &g, 1, FB);
    if (!m) {
        printf("FAIL: nn_model_new (the pretrained SwAV model)\n");
        nn_backend_destroy(&be);
        return -1;
    }
    size_t n = (size_t)FB * S * S * 3;
    uint8_t *raw = malloc(n);
    float *in = nn_backend_alloc(be, n * sizeof(float));
    for (int k = 0; k < NPRE; k++) {
        random_u8(r, raw, n);
        nn_backend_normalize_crops(be, in, raw, FB, 1, S, S);
        const float *ins[1] = {in};
        nn_model_forward(m, ins, FB, NN_MODEL_TRAIN);
    }
    struct nn_checkpoint_meta meta = {.epoch = 3, .step = 30, .seed = 7,
                                      .config_json = "{\"seed\": 7}"};
    char err[512];
    enum nn_checkpoint_status st =
        nn_checkpoint_save_backend(be, path, &m->params, m->param_data, &m->buffers,
                                   m->buffer_data, NULL, &meta, err, sizeof err);
    if (st != NN_CHECKPOINT_OK) {
        printf("FAIL: nn_checkpoint_save: %s\n", err);
    }
    nn_backend_free(be, in);
    free(raw);
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
    return st == NN_CHECKPOINT_OK ? 0 : -1;
}

int main(void)
{
    if (nn_cuda_device_count() == 0) {
        printf("SKIP: no CUDA device (%s)\n", nn_cuda_count_error());
        return 77;
    }
    char dir[] = "/tmp/cuda_evaluator_XXXXXX", path[64];
    if (!mkdtemp(dir)) {
        printf("FAIL: mkdtemp\n");
        return 1;
    }
    snprintf(path, sizeof path, "%s/ckp-3.safetensors", dir);
    struct swav_rng r;
    swav_rng_init(&r, 2024, 0, 0, 0);
    if (write_checkpoint(path, &r) != 0) {
        return 1;
    }
    /* inputs, host memory as the loaders' batches */
    const size_t per = (size_t)S * S * 3;
    uint8_t *fcrops = malloc(NF * per), *tcrops = malloc(NT * per), *vraw = malloc(NV * per);
    random_u8(&r, fcrops, NF * per);
    random_u8(&r, tcrops, NT * per);
    random_u8(&r, vraw, NV * per);
    float *vx = malloc(NV * per * sizeof(float));
    nn_normalize_u8(vx, vraw, NV, S, S);
    int32_t ty[NT], vy[NV];
    for (int i = 0; i < NT; i++) {
        ty[i] = (int32_t)swav_rng_below(&r, C);
    }
    for (int i = 0; i < NV; i++) {
        vy[i] = (int32_t)swav_rng_below(&r, C);
    }

    struct side cpu = {.name = "cpu", .be = nn_backend_cpu_new(1)};
    struct side gpu = {.name = "cuda", .be = nn_backend_cuda_new(0)};
    if (!gpu.be) {
        printf("FAIL: nn_backend_cuda_new(0)\n");
        return 1;
    }
    if (run_side(&cpu, path, fcrops, tcrops, ty, vx, vy) != 0 ||
        run_side(&gpu, path, fcrops, tcrops, ty, vx, vy) != 0) {
        return 1;
    }

    printf("-- the GPU side's memory\n");
    expect(backend_memory(gpu.bb->param_data) && backend_memory(gpu.ft->param_data) &&
               backend_memory(gpu.ft->grad_data),
           "model parameters and gradients on the device");
    expect(backend_memory(gpu.s.input), "fine-tuning input on the device");
    expect(backend_memory(gpu.s.dlogits), "logits gradient on the device");
    expect(backend_optimizer(&gpu.s.optim) && backend_memory(gpu.s.optim.momentum),
           "the backend's own optimizer, momentum on the device");

    printf("-- checkpoint load\n");
    expect(cpu.info.nmissing == 0 && gpu.info.nmissing == 0 && cpu.info.nmismatched == 0 &&
               gpu.info.nmismatched == 0 && gpu.info.nunexpected == cpu.info.nunexpected &&
               gpu.info.nunexpected > 0 && gpu.info.epoch == 3,
           "backbone complete, head and prototypes skipped");
    check("backbone parameters after the load", gpu.bb_params, cpu.bb_params,
          cpu.bb->params.total, 0);
    check("backbone BN statistics after the load", gpu.bb_buffers, cpu.bb_buffers,
          cpu.bb->buffers.total, 0);

    printf("-- features\n");
    const size_t nfeat = (size_t)NF * cpu.bb->feat_channels;
    printf("features: max |cpu| %.4g\n", max_abs(cpu.feats, nfeat));
    expect(max_abs(cpu.feats, nfeat) > 1e-3f, "features not all zero");
    check("features (10 crops, forwards of 4, 4, 2)", gpu.feats, cpu.feats, nfeat, 1e-4);
    check("features of the short last forward", gpu.feats + 8 * cpu.bb->feat_channels,
          cpu.feats + 8 * cpu.bb->feat_channels, 2 * (size_t)cpu.bb->feat_channels, 1e-4);

    printf("-- fine-tuning\n");
    const size_t np = cpu.ft->params.total;
    check("fine-tuning start (backbone copied, head init)", gpu.ft_before, cpu.ft_before, np, 0);
    expect(cpu.loss.n == 2 && gpu.loss.n == 2, "two steps on each side");
    for (int k = 0; k < 2 && k < cpu.loss.n && k < gpu.loss.n; k++) {
        double e = fabs((double)gpu.loss.v[k] - cpu.loss.v[k]) / fabs((double)cpu.loss.v[k]);
        int ok = e <= 1e-4;
        printf("step %d loss%-35s rel err %.3g (tol 1e-04) %s (cuda %.6f cpu %.6f)\n", k, "", e,
               ok ? "ok" : "FAIL", gpu.loss.v[k], cpu.loss.v[k]);
        failures += !ok;
    }
    float *du_c = malloc(np * sizeof(float)), *du_g = malloc(np * sizeof(float));
    for (size_t i = 0; i < np; i++) {
        du_c[i] = cpu.ft_after[i] - cpu.ft_before[i];
        du_g[i] = gpu.ft_after[i] - gpu.ft_before[i];
    }
    expect(max_abs(du_c, np) > 1e-6f, "the steps changed the parameters");
    check("parameter updates (after - before)", du_g, du_c, np, 2e-3);
    for (int i = 0; i < cpu.ft->params.n; i++) {
        const struct nn_param *p = &cpu.ft->params.p[i];
        if (i == 0 || strstr(p->name, "layer4.1.conv2") || strstr(p->name, "projection_head")) {
            char name[160];
            snprintf(name, sizeof name, "update %s", p->name);
            check(name, du_g + p->offset, du_c + p->offset, p->numel, 2e-3);
        }
    }
    check("parameters after the steps", gpu.ft_after, cpu.ft_after, np, 2e-3);
    check("momentum after the steps", gpu.ft_momentum, cpu.ft_momentum, np, 2e-3);
    check("BN running statistics after the steps", gpu.ft_buffers, cpu.ft_buffers,
          cpu.ft->buffers.total, 1e-3);
    float nbt_c, nbt_g; /* device memory on the GPU side: copied out */
    nn_backend_copy(cpu.be, &nbt_c, nn_model_buffer(cpu.ft, "layer1.0.bn1.num_batches_tracked"),
                    sizeof nbt_c);
    nn_backend_copy(gpu.be, &nbt_g, nn_model_buffer(gpu.ft, "layer1.0.bn1.num_batches_tracked"),
                    sizeof nbt_g);
    printf("num_batches_tracked: cuda %g cpu %g (want %d)\n", nbt_g, nbt_c, NPRE + 2);
    expect(nbt_c == NPRE + 2 && nbt_g == NPRE + 2, "num_batches_tracked NPRE + 2 steps");
    double ve = fabs(gpu.res.last_val_loss - cpu.res.last_val_loss) / fabs(cpu.res.last_val_loss);
    printf("%-44s rel err %.3g (tol 1e-03) %s\n", "validation loss after the epoch", ve,
           ve <= 1e-3 ? "ok" : "FAIL");
    failures += !(ve <= 1e-3);
    free(du_c);
    free(du_g);

    side_free(&gpu);
    side_free(&cpu);
    unlink(path);
    rmdir(dir);
    free(fcrops);
    free(tcrops);
    free(vraw);
    free(vx);
    printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
