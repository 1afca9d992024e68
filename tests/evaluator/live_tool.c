/* Helper of test_live.py (no trainer needed):
 *
 *   live_tool ckpt PATH EPOCH STEP SEED [module|plain [DEPTH WIDTH]]
 *       a checkpoint of a tiny SwAV model (resnet18, width 8, small stem,
 *       projection head 16, 10 prototypes: what the trainer saves, heads
 *       included) initialised from SEED (a stand-in for trained weights),
 *       with the trainer's metadata (epoch, step, config JSON of a run with
 *       seed 31, arch); "module" prefixes every name like DDP and leaves the
 *       config out (like the converted published weights).
 *   live_tool pub ENDPOINT RUN PATH EPOCH STEP SECONDS
 *       binds a PUB socket and, every 200 ms for SECONDS, publishes garbage
 *       (a non-msgpack frame, a `checkpoint` of another run, one naming a
 *       missing file) and then the `checkpoint` announcement of PATH (PUB/SUB
 *       drops what is sent before the subscriber has joined). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/check.h"
#include "common/timeutil.h"
#include "nn/backend.h"
#include "nn/checkpoint.h"
#include "nn/resnet.h"
#include "proto/proto.h"
#include "proto/wire.h"

static int make_ckpt(int argc, char **argv)
{
    if (argc < 6) return 2;
    const char *path = argv[2];
    long long epoch = atoll(argv[3]), step = atoll(argv[4]), seed = atoll(argv[5]);
    bool module = argc > 6 && !strcmp(argv[6], "module");
    int depth = argc > 8 ? atoi(argv[7]) : 18, width = argc > 8 ? atoi(argv[8]) : 8;
    nn_backend_t *be = nn_backend_cpu_new(1);
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.depth = depth;
    cfg.width = width;
    cfg.small_stem = 1;
    cfg.hidden_mlp = 0;
    cfg.feat_dim = 16;
    cfg.nmb_prototypes = 10;
    cfg.seed = (uint64_t)seed;
    struct nn_crop_group g = {.n_crops = 1, .size = 16};
    struct nn_model *m = nn_model_new(be, &cfg, &g, 1, 1);
    SWAV_ASSERT(m);
    if (module) {
        for (int i = 0; i < m->params.n; i++) {
            char tmp[NN_PARAM_NAME_MAX];
            snprintf(tmp, sizeof tmp, "module.%.80s", m->params.p[i].name);
            memcpy(m->params.p[i].name, tmp, sizeof tmp);
        }
        for (int i = 0; i < m->buffers.n; i++) {
            char tmp[NN_PARAM_NAME_MAX];
            snprintf(tmp, sizeof tmp, "module.%.80s", m->buffers.p[i].name);
            memcpy(m->buffers.p[i].name, tmp, sizeof tmp);
        }
    }
    char config[512];
    snprintf(config, sizeof config,
             "{\"arch\": \"resnet%d\", \"width\": %d, \"small_stem\": true, \"hidden_mlp\": 0, "
             "\"feat_dim\": 16, \"nmb_prototypes\": 10, \"seed\": 31}", depth, width);
    struct nn_checkpoint_meta_pair extra[] = {{"arch", "resnet18"}};
    struct nn_checkpoint_meta meta = {.epoch = epoch, .step = step, .seed = (uint64_t)seed,
                                      .config_json = module ? NULL : config,
                                      .extra = extra, .nextra = 1};
    char err[512];
    enum nn_checkpoint_status st =
        nn_checkpoint_save_backend(be, path, &m->params, m->param_data, &m->buffers,
                                   m->buffer_data, NULL, &meta, err, sizeof err);
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
    if (st != NN_CHECKPOINT_OK) {
        fprintf(stderr, "live_tool: %s\n", err);
        return 1;
    }
    return 0;
}

static void send_raw(void *s, const void *p, size_t n)
{
    zmq_send(s, p, n, ZMQ_DONTWAIT);
}

static int pub(int argc, char **argv)
{
    if (argc < 8) return 2;
    const char *ep = argv[2], *run = argv[3], *path = argv[4];
    struct proto_checkpoint c = {.epoch = (uint32_t)atoll(argv[5]),
                                 .step = (uint64_t)atoll(argv[6])};
    double secs = atof(argv[7]);
    snprintf(c.path, sizeof c.path, "%s", path);
    struct proto_checkpoint missing = c;
    snprintf(missing.path, sizeof missing.path, "%s.missing", path);
    missing.epoch = c.epoch + 100;
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_PUB);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(s, ep) != 0) {
        fprintf(stderr, "live_tool: bind %s: %s\n", ep, zmq_strerror(zmq_errno()));
        return 1;
    }
    struct proto_msg m, other, miss;
    proto_msg_init(&m);
    proto_msg_init(&other);
    proto_msg_init(&miss);
    SWAV_ASSERT(proto_checkpoint_encode(&m, run, &c) == PROTO_OK);
    SWAV_ASSERT(proto_checkpoint_encode(&other, "another-run", &c) == PROTO_OK);
    SWAV_ASSERT(proto_checkpoint_encode(&miss, run, &missing) == PROTO_OK);
    double t0 = swav_now_s();
    while (swav_now_s() - t0 < secs) {
        send_raw(s, "\xc1garbage", 8);
        proto_send(s, NULL, 0, &other, ZMQ_DONTWAIT);
        proto_send(s, NULL, 0, &miss, ZMQ_DONTWAIT);
        proto_send(s, NULL, 0, &m, ZMQ_DONTWAIT);
        swav_sleep_ms(200);
    }
    proto_msg_free(&m);
    proto_msg_free(&other);
    proto_msg_free(&miss);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "ckpt")) return make_ckpt(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "pub")) return pub(argc, argv);
    fprintf(stderr, "usage: live_tool ckpt PATH EPOCH STEP SEED [module|plain [DEPTH WIDTH]] | "
                    "pub ENDPOINT RUN PATH EPOCH STEP SECONDS\n");
    return 2;
}
