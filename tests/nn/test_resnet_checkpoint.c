/* Test (d) of the checkpoint work: a torchvision ResNet-50 saved by torch,
 * converted by scripts/torch-to-safetensors, loaded into our ResNet-50
 * (nn/resnet.h, backbone only) the way the reference's eval scripts load
 * weights (non-strict: torchvision's fc.weight/fc.bias are ignored), gives
 * torch's 2048-d features.  test_resnet_checkpoint.py drives it:
 *   test_resnet_checkpoint CKPT INPUT.bin OUT.bin BATCH SIZE
 * INPUT: (BATCH, 3, SIZE, SIZE) float32; OUT: (BATCH, 2048) float32, eval mode.
 * Exits 1 unless exactly fc.weight and fc.bias were left unused and nothing
 * was missing or mis-shaped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fileio.h"
#include "nn/checkpoint.h"
#include "nn/resnet.h"

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: test_resnet_checkpoint CKPT INPUT OUT BATCH SIZE\n");
        return 2;
    }
    int batch = atoi(argv[4]), size = atoi(argv[5]);
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.hidden_mlp = 0;
    cfg.feat_dim = 0;
    cfg.nmb_prototypes = 0;
    struct nn_crop_group g = {1, size};
    nn_backend_t *be = nn_backend_cpu_new(2);
    struct nn_model *m = nn_model_new(be, &cfg, &g, 1, batch);
    if (!m) {
        return 2;
    }
    char err[2048];
    struct nn_checkpoint_load_opts opts = {.strict = false};
    struct nn_checkpoint_info info;
    enum nn_checkpoint_status st =
        nn_checkpoint_load_backend(be, argv[1], &m->params, m->param_data, &m->buffers,
                                   m->buffer_data, NULL, &opts, &info, err, sizeof err);
    if (st != NN_CHECKPOINT_OK) {
        fprintf(stderr, "load: %s\n", err);
        return 1;
    }
    printf("loaded %d tensors, %d unused, %d missing, %d mis-shaped\n", info.nloaded,
           info.nunexpected, info.nmissing, info.nmismatched);
    int bad = info.nunexpected != 2 || info.nmissing != 0 || info.nmismatched != 0 ||
              info.nloaded != m->params.n + m->buffers.n;
    nn_checkpoint_info_free(&info);

    void *in;
    size_t len;
    size_t n = (size_t)batch * 3 * size * size;
    if (swav_file_read_all(argv[2], 1u << 30, &in, &len, err, sizeof err) || len != n * 4) {
        fprintf(stderr, "input: %s\n", err);
        return 2;
    }
    float *x = nn_backend_alloc(be, n * 4); /* the model's input: backend memory */
    nn_backend_copy(be, x, in, n * 4);
    const float *inputs[1] = {x};
    nn_model_forward(m, inputs, batch, NN_MODEL_EVAL);
    if (m->feat_channels != 2048) {
        fprintf(stderr, "feat_channels %d\n", m->feat_channels);
        bad = 1;
    }
    size_t fbytes = (size_t)batch * m->feat_channels * 4;
    float *feats = nn_backend_to_host(be, m->feats, fbytes / 4);
    if (swav_file_write_atomic(argv[3], feats, fbytes, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    free(feats);
    nn_backend_free(be, x);
    free(in);
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
    return bad;
}
