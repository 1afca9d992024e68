/* swav-trainer: rank r of W.  The training loop of main_swav.py with the
 * data, the assignment and the gradient exchange done by other processes:
 *
 *   per step: order the step's images from the loaders (a window of orders
 *   ahead) -> normalize the uint8 crops -> normalize the prototypes ->
 *   multi-crop forward (with --sync_bn pytorch/apex every BatchNorm takes its
 *   statistics over the ranks: one all-reduce per call, each way) -> send
 *   the assign crops' embeddings (rank 0 adds the prototypes) to the
 *   assigner -> codes -> swapped-prediction loss -> backward -> all-reduce
 *   the gradients (mean over ranks) -> LARC/SGD step at the schedule's
 *   learning rate.
 *
 * The head's BatchNorm1d takes its statistics over all crops together (as
 * the reference's), so the assign crops' embeddings exist only once the
 * whole forward is done; while the assigner works the trainer computes
 * nothing it could not compute before, and instead keeps the loaders' window
 * full (docs/trainer.md).
 *
 * Checkpoints: rank 0 writes dump_path/checkpoint.safetensors at the end of
 * every epoch (and when stopped by SIGTERM/SIGINT, mid-epoch), a copy
 * ckp-EPOCH.safetensors every checkpoint_freq epochs, asks the assigner to
 * save its queue beside it first, and announces the file on --pub.  A run
 * started again with the same dump_path resumes from checkpoint.safetensors:
 * model, momentum, schedule position, epoch and step, queue; the crops are a
 * pure function of (seed, epoch, image, crop), so nothing else is needed.
 *
 * Exit codes: 0 done (or stopped cleanly), 2 bad flags, 1 a failure (named
 * in the log): the launcher restarts the trainer group from the checkpoint. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "assigner/client.h"
#include "common/check.h"
#include "common/fileio.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/refflags.h"
#include "common/timeutil.h"
#include "loader/client.h"
#include "loader/index.h"
#include "nn/backend.h"
#include "nn/device.h"
#include "nn/checkpoint.h"
#include "nn/collective.h"
#include "nn/layers.h"
#include "nn/loss_scale.h"
#include "nn/optim.h"
#include "nn/resnet.h"
#include "nn/schedule.h"
#include "proto/proto.h"
#include "proto/wire.h"
#include "trainer/progress.h"
#include "trainer/ring.h"
#include "trainer/sampler.h"

/* Flags of ours, beside the reference's (main_swav.py's keep their names). */
struct trainer_args {
    const char *run;
    const char *assigner;
    const char *loader_bind;
    const char *ring_endpoints;
    const char *pub;
    int64_t threads;
    int64_t width;
    bool small_stem;
    bool zero_init_residual;
    int64_t window;
    int64_t codes_timeout_ms;
    int64_t hello_timeout_ms;
    int64_t batch_warn_ms;
    int64_t assigner_retries;
    int64_t ring_timeout_ms;
    double bucket_cap_mb;
    int64_t stop_after_steps;
    const char *trace_images;
    const char *curve_secret;
    const char *curve_allow;
    const char *assigner_public;
    const char *pub_allow;
    const char *device;
    const char *amp_dtype;
};

#define TOFF(f) offsetof(struct trainer_args, f)
static const struct swav_flag trainer_flags[] = {
    {"run", SWAV_FLAG_STR, TOFF(run), 0, 0, "swav", "run id carried by every message"},
    {"assigner", SWAV_FLAG_STR, TOFF(assigner), 0, 0, "",
     "the assigner's endpoint (required), e.g. ipc:///tmp/run/assigner"},
    {"loader_bind", SWAV_FLAG_STR, TOFF(loader_bind), 0, 0, "",
     "endpoint this rank binds for the loaders (required)"},
    {"ring_endpoints", SWAV_FLAG_STR, TOFF(ring_endpoints), 0, 0, "",
     "comma-separated endpoints of ranks 0..W-1 for the gradient ring (W > 1)"},
    {"pub", SWAV_FLAG_STR, TOFF(pub), 0, 0, "",
     "rank 0: endpoint to announce checkpoints on (PUB), empty: none"},
    {"threads", SWAV_FLAG_INT, TOFF(threads), 0, 1024, "0",
     "compute threads (0: the runtime's default)"},
    {"width", SWAV_FLAG_INT, TOFF(width), 0, 4096, "0",
     "stem width overriding the arch's (64 x widen); 0: from --arch"},
    {"small_stem", SWAV_FLAG_BOOL, TOFF(small_stem), 0, 0, "false",
     "3x3 stride-1 stem without maxpool, for 32-pixel images"},
    {"zero_init_residual", SWAV_FLAG_BOOL, TOFF(zero_init_residual), 0, 0, "false",
     "last BN of each residual branch starts at zero"},
    {"window", SWAV_FLAG_INT, TOFF(window), 1, 64, "4", "orders in flight to the loaders"},
    {"codes_timeout_ms", SWAV_FLAG_INT, TOFF(codes_timeout_ms), 100, 86400000, "60000",
     "deadline for the assigner's codes of a step"},
    {"hello_timeout_ms", SWAV_FLAG_INT, TOFF(hello_timeout_ms), 100, 86400000, "10000",
     "deadline for each hello to the assigner (repeated while it is absent)"},
    {"batch_warn_ms", SWAV_FLAG_INT, TOFF(batch_warn_ms), 100, 86400000, "10000",
     "warn when no batch came for this long (the trainer keeps waiting)"},
    {"assigner_retries", SWAV_FLAG_INT, TOFF(assigner_retries), 0, 1000, "5",
     "times a step's codes are asked for again (hello first) before giving up"},
    {"ring_timeout_ms", SWAV_FLAG_INT, TOFF(ring_timeout_ms), 100, 86400000, "120000",
     "deadline of a gradient all-reduce"},
    {"bucket_cap_mb", SWAV_FLAG_FLOAT, TOFF(bucket_cap_mb), 0, 65536, "25",
     "several ranks: all-reduce the gradients in buckets of about this many MB, each started "
     "during the backward as soon as it is final (DDP's bucket_cap_mb); 0: one all-reduce "
     "after the backward"},
    {"stop_after_steps", SWAV_FLAG_INT, TOFF(stop_after_steps), 0, INT64_MAX, "0",
     "stop (with a checkpoint) after this many steps of this process (tests); 0: never"},
    {"trace_images", SWAV_FLAG_STR, TOFF(trace_images), 0, 0, "",
     "append 'epoch step index...' for every step trained to this file (tests, audits)"},
    {"curve_secret", SWAV_FLAG_STR, TOFF(curve_secret), 0, 0, "",
     "CURVE keypair file (swav keygen): --loader_bind accepts encrypted loaders only, this "
     "rank's key to the assigner, and the gradient ring's key (every rank the same keypair: "
     "the ring lets in only its public key)"},
    {"curve_allow", SWAV_FLAG_STR, TOFF(curve_allow), 0, 0, "",
     "file of loader public keys let in on --loader_bind (with --curve_secret; empty: any)"},
    {"assigner_public", SWAV_FLAG_STR, TOFF(assigner_public), 0, 0, "",
     "the assigner's public key file: talk CURVE to the assigner"},
    {"pub_allow", SWAV_FLAG_STR, TOFF(pub_allow), 0, 0, "",
     "rank 0: file of subscriber (evaluator) public keys let in on --pub, which is then CURVE "
     "with the --curve_secret keypair; empty: a plain --pub"},
    {"device", SWAV_FLAG_STR, TOFF(device), 0, 0, "cpu",
     "where the model trains: cpu, cuda (GPU 0) or cuda:N (docs/cuda.md)", 0, 0,
     SWAV_FLAG_DEVICE_CHOICES},
    {"amp_dtype", SWAV_FLAG_STR, TOFF(amp_dtype), 0, 0, "bf16",
     "with --use_fp16 on cuda, the backbone's type: bf16, or fp16 with dynamic loss scaling "
     "(GPUs without bf16 tensor cores: T4, Turing); the CPU trains in fp32 either way",
     0, 0, "bf16|fp16"},
};

static volatile sig_atomic_t g_stop;
static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

struct trainer {
    struct swav_main_args a;
    struct trainer_args t;
    int rank, world;
    void *zctx;
    struct loader_index *index;
    struct trainer_sampler sampler;
    nn_backend_t *be;
    struct nn_model *model;
    struct nn_optim optim;
    bool loss_scaling;         /* --amp_dtype fp16 on cuda: dynamic loss scaling */
    struct nn_loss_scale ls;
    struct nn_sched_swav sched;
    struct nn_collective *coll;
    struct nn_collective *ring; /* with NCCL (--device cuda): the ZeroMQ ring that bootstrapped it */
    assigner_client_t *assigner;
    struct loader_client *loaders;
    void *pub;
    void *pub_ctx;              /* --pub_allow: the PUB's own context, for its ZAP handler */
    struct proto_zap *pub_zap;  /* --pub_allow's handler */
    struct trainer_progress progress;
    FILE *trace;
    /* crop geometry */
    int ngroups, n_crops;
    struct nn_crop_group groups[NN_MAX_GROUPS];
    int n_assign;
    int crops_for_assign[PROTO_MAX_LIST];
    /* step buffers, allocated once; "backend" ones in the model's memory
     * (the GPU's with --device cuda), the others on the host */
    float *inputs[NN_MAX_GROUPS]; /* backend */
    float *emb_assign;  /* (n_assign, bs, D) host: to the assigner */
    float *protos;      /* (K, D) host: rank 0's prototypes to the assigner */
    float *codes;       /* (n_assign, bs, K) host: from the assigner */
    float *codes_dev;   /* the same, backend */
    float *logp;        /* (n_crops * bs, K) backend */
    float *dscores;     /* (n_crops * bs, K) backend */
    /* the gradient all-reduce's buckets (--bucket_cap_mb, grad_ready) */
    struct {
        size_t cap;   /* elements; 0: one all-reduce after the backward */
        size_t hi;    /* grad_data[hi, total) is started */
        int started;  /* buckets started this step */
        int status;   /* the first failed start of this step */
    } bucket;
    /* position */
    int64_t epoch;          /* epoch of the next step */
    int64_t iteration;      /* global iteration of the next step */
    uint64_t steps_run;     /* by this process */
    int64_t next_order_it;  /* next global iteration to order from the loaders */
    int64_t saved_iteration, prev_iteration; /* of checkpoint.safetensors and .prev */
    char config_json[16384];
};

static int parse_arch(const char *arch, int *depth, int *widen)
{
    int d = 0, w = 1;
    char tail[16] = "";
    if (sscanf(arch, "resnet%d%15s", &d, tail) < 1) return -1;
    if (tail[0]) {
        if (tail[0] != 'w' || sscanf(tail + 1, "%d", &w) != 1) return -1;
    }
    if (d != 18 && d != 34 && d != 50 && d != 101) return -1;
    if (w != 1 && w != 2 && w != 4 && w != 5) return -1;
    *depth = d;
    *widen = w;
    return 0;
}

static void path_in(char *buf, size_t len, const char *dir, const char *name)
{
    if (snprintf(buf, len, "%s/%s", dir, name) >= (int)len) {
        LOG_ERROR("path too long: %s/%s", dir, name);
        exit(2);
    }
}

/* ---- set-up ------------------------------------------------------------- */

static int setup_flags(struct trainer *T, int argc, char **argv)
{
    struct swav_flag_set sets[2] = {
        swav_main_flag_set(&T->a),
        {trainer_flags, sizeof trainer_flags / sizeof *trainer_flags, &T->t},
    };
    char err[512];
    int rc = swav_flags_parse(sets, 2, argc - 1, argv + 1, err, sizeof err);
    if (rc == 1) {
        swav_flags_usage(stdout, "swav-trainer", sets, 2);
        exit(0);
    }
    if (rc < 0 || swav_main_args_check(&T->a, err, sizeof err) != 0) {
        fprintf(stderr, "swav-trainer: %s\n", err);
        return -1;
    }
    T->world = T->a.world_size > 0 ? (int)T->a.world_size : 1;
    T->rank = (int)T->a.rank;
    if (T->rank >= T->world) {
        fprintf(stderr, "swav-trainer: --rank %d is not below --world_size %d\n", T->rank, T->world);
        return -1;
    }
    if (!T->t.assigner[0] || !T->t.loader_bind[0]) {
        fprintf(stderr, "swav-trainer: --assigner and --loader_bind are required\n");
        return -1;
    }
    if (T->t.pub_allow[0] && !T->t.curve_secret[0]) {
        fprintf(stderr, "swav-trainer: --pub_allow needs --curve_secret (the PUB's keypair)\n");
        return -1;
    }
    if (!strcmp(T->a.data_path, "/path/to/imagenet")) {
        fprintf(stderr, "swav-trainer: --data_path is required (an image folder)\n");
        return -1;
    }
    if (nn_device_check(T->t.device, err, sizeof err) != 0) {
        fprintf(stderr, "swav-trainer: %s\n", err);
        return -1;
    }
    if (T->a.use_fp16 && strncmp(T->t.device, "cuda", 4) != 0) {
        /* The CPU backend computes in fp32 only; on CUDA --use_fp16 means a
         * bf16 backbone (setup_model, docs/cuda.md).  An INFO, not a warning:
         * the flag is on by default, as in the reference. */
        LOG_INFO("--use_fp16: the %s backend trains in fp32 (bf16 and fp16 are the CUDA "
                 "backend's, docs/cuda.md)", T->t.device);
        T->a.use_fp16 = false;
    }
    if (T->a.warmup_epochs > T->a.epochs) {
        fprintf(stderr, "swav-trainer: --warmup_epochs %lld is more than --epochs %lld\n",
                (long long)T->a.warmup_epochs, (long long)T->a.epochs);
        return -1;
    }
    T->ngroups = T->a.nmb_crops.n;
    T->n_crops = 0;
    for (int g = 0; g < T->ngroups; g++) {
        T->groups[g].n_crops = (int)T->a.nmb_crops.v[g];
        T->groups[g].size = (int)T->a.size_crops.v[g];
        T->n_crops += T->groups[g].n_crops;
    }
    T->n_assign = T->a.crops_for_assign.n;
    for (int i = 0; i < T->n_assign; i++) T->crops_for_assign[i] = (int)T->a.crops_for_assign.v[i];
    if (T->n_crops < 2) {
        fprintf(stderr, "swav-trainer: --nmb_crops must give at least 2 crops (swapped prediction)\n");
        return -1;
    }
    swav_flags_to_json(T->config_json, sizeof T->config_json, sets, 2);
    return 0;
}

static int setup_model(struct trainer *T)
{
    int depth, widen;
    if (parse_arch(T->a.arch, &depth, &widen)) {
        LOG_ERROR("--arch %s: not one of resnet18, resnet34, resnet50, resnet101 (optionally "
                  "w2, w4, w5: resnet50w2)", T->a.arch);
        return -1;
    }
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.depth = depth;
    cfg.width = T->t.width > 0 ? (int)T->t.width : 64 * widen;
    cfg.small_stem = T->t.small_stem;
    cfg.zero_init_residual = T->t.zero_init_residual;
    cfg.hidden_mlp = (int)T->a.hidden_mlp;
    cfg.feat_dim = (int)T->a.feat_dim;
    cfg.nmb_prototypes = (int)T->a.nmb_prototypes;
    cfg.seed = (uint64_t)T->a.seed;
    if (T->a.use_fp16) {
        /* the reference's fp16 (apex O1): bf16 by default (fp32's range, no
         * loss scaling), or fp16 with dynamic loss scaling (--amp_dtype
         * fp16); fp32 master weights either way (docs/cuda.md) */
        if (nn_backend_has_lowp(T->be)) {
            cfg.act_dtype = strcmp(T->t.amp_dtype, "fp16") ? NN_DTYPE_BF16 : NN_DTYPE_F16;
            T->loss_scaling = cfg.act_dtype == NN_DTYPE_F16;
            nn_loss_scale_init(&T->ls);
        } else {
            LOG_WARN("--use_fp16: the %s backend has no %s backbone; training in fp32",
                     nn_backend_name(T->be), T->t.amp_dtype);
        }
    }
    T->model = nn_model_new(T->be, &cfg, T->groups, T->ngroups, (int)T->a.batch_size);
    if (!T->model) {
        LOG_ERROR("cannot build %s (width %d) for these crops", T->a.arch, cfg.width);
        return -1;
    }
    struct nn_optim_config oc = nn_optim_config_swav(T->a.wd, T->a.freeze_prototypes_niters);
    oc.nthreads = 1;
    nn_optim_init_on(&T->optim, T->be, &T->model->params, &oc);
    size_t bs = (size_t)T->a.batch_size, K = (size_t)T->a.nmb_prototypes, D = (size_t)T->a.feat_dim;
    for (int g = 0; g < T->ngroups; g++) {
        size_t s = (size_t)T->groups[g].size;
        T->inputs[g] = nn_backend_alloc(T->be, (size_t)T->groups[g].n_crops * bs * 3 * s * s *
                                                   sizeof(float));
    }
    T->emb_assign = swav_xmalloc((size_t)T->n_assign * bs * D * sizeof(float));
    T->protos = swav_xmalloc(K * D * sizeof(float));
    T->codes = swav_xmalloc((size_t)T->n_assign * bs * K * sizeof(float));
    T->codes_dev = nn_backend_alloc(T->be, (size_t)T->n_assign * bs * K * sizeof(float));
    T->logp = nn_backend_alloc(T->be, (size_t)T->n_crops * bs * K * sizeof(float));
    T->dscores = nn_backend_alloc(T->be, (size_t)T->n_crops * bs * K * sizeof(float));
    LOG_INFO("model %s width %d%s on %s%s%s%s: %zu parameters, activations %.1f MiB", T->a.arch,
             cfg.width, cfg.small_stem ? " small stem" : "", nn_backend_name(T->be),
             cfg.act_dtype != NN_DTYPE_F32 ? " (" : "",
             cfg.act_dtype != NN_DTYPE_F32 ? nn_dtype_name(cfg.act_dtype) : "",
             cfg.act_dtype == NN_DTYPE_F16
                 ? " backbone, fp32 master weights, dynamic loss scaling from 65536)"
                 : cfg.act_dtype != NN_DTYPE_F32 ? " backbone, fp32 master weights)" : "",
             T->model->params.total, (double)nn_model_arena_bytes(T->model) / (1 << 20));
    return 0;
}

/* ---- checkpoints ----------------------------------------------------------- */

/* The queue file the assigner wrote for a checkpoint is named after the
 * checkpoint's step, so that a checkpoint never pairs with a newer queue. */
static void queue_key(char *buf, size_t len, const char *dump, int64_t iteration)
{
    char name[64];
    snprintf(name, sizeof name, "state-%lld", (long long)iteration);
    path_in(buf, len, dump, name);
}

static enum nn_checkpoint_status load_checkpoint(struct trainer *T, const char *path,
                                                 struct nn_checkpoint_info *info, char *err,
                                                 size_t errlen)
{
    struct nn_checkpoint_load_opts lo = {.strict = true};
    return nn_checkpoint_load_backend(T->be, path, &T->model->params, T->model->param_data,
                                      &T->model->buffers, T->model->buffer_data,
                                      T->optim.momentum, &lo, info, err, errlen);
}

/* Resume from checkpoint.safetensors, or from the one before it when the
 * latest cannot be read (a crash while a disk filled up, a damaged file). */
static int try_resume(struct trainer *T, char *queue_for, size_t qlen)
{
    char path[PATH_MAX], prev[PATH_MAX];
    path_in(path, sizeof path, T->a.dump_path, "checkpoint.safetensors");
    path_in(prev, sizeof prev, T->a.dump_path, "checkpoint.prev.safetensors");
    queue_for[0] = '\0';
    T->epoch = 0;
    T->iteration = 0;
    if (access(path, F_OK) != 0 && access(prev, F_OK) != 0) {
        return 0;
    }
    char err[1024];
    struct nn_checkpoint_info info;
    const char *used = path;
    enum nn_checkpoint_status st = load_checkpoint(T, path, &info, err, sizeof err);
    if (st != NN_CHECKPOINT_OK) {
        LOG_ERROR("cannot resume from %s: %s (%s)", path, nn_checkpoint_status_str(st), err);
        if (access(prev, F_OK) != 0) {
            LOG_ERROR("no previous checkpoint (%s) to fall back to; move %s away to start afresh",
                      prev, path);
            return -1;
        }
        used = prev;
        st = load_checkpoint(T, prev, &info, err, sizeof err);
        if (st != NN_CHECKPOINT_OK) {
            LOG_ERROR("the previous checkpoint %s cannot be read either: %s (%s); move both "
                      "away to start afresh", prev, nn_checkpoint_status_str(st), err);
            return -1;
        }
        LOG_WARN("falling back to the previous checkpoint %s", prev);
    }
    T->epoch = info.epoch;
    T->iteration = info.step;
    if (info.seed != (uint64_t)T->a.seed) {
        LOG_WARN("resuming with --seed %lld but the checkpoint was made with seed %llu: crops "
                 "will differ from the original run", (long long)T->a.seed,
                 (unsigned long long)info.seed);
    }
    if (T->loss_scaling && info.loss_scale) { /* fp16: the scale where it was */
        if (nn_loss_scale_parse(&T->ls, info.loss_scale) == 0) {
            LOG_INFO("fp16 loss scale %g (%lld finite steps in a row) from the checkpoint",
                     (double)T->ls.scale, (long long)T->ls.good_steps);
        } else {
            LOG_WARN("the checkpoint's loss_scale \"%s\" is malformed; starting again from %g",
                     info.loss_scale, (double)T->ls.scale);
        }
    }
    nn_checkpoint_info_free(&info);
    queue_key(queue_for, qlen, T->a.dump_path, T->iteration);
    LOG_INFO("resuming from %s: epoch %lld, iteration %lld", used, (long long)T->epoch,
             (long long)T->iteration);
    return 0;
}

/* Queue files of checkpoints that can no longer be resumed from go. */
static void remove_old_queues(struct trainer *T, int64_t keep_a, int64_t keep_b)
{
    DIR *d = opendir(T->a.dump_path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long it;
        char tail[16];
        if (sscanf(e->d_name, "state-%lld.queu%1s", &it, tail) != 2 || strcmp(tail, "e")) continue;
        if (it == keep_a || it == keep_b) continue;
        char p[PATH_MAX];
        path_in(p, sizeof p, T->a.dump_path, e->d_name);
        unlink(p);
    }
    closedir(d);
}

static void announce(struct trainer *T, const char *path)
{
    if (!T->pub) return;
    struct proto_checkpoint c = {.epoch = (uint32_t)T->epoch, .step = (uint64_t)T->iteration};
    snprintf(c.path, sizeof c.path, "%s", path);
    struct proto_msg m;
    proto_msg_init(&m);
    if (proto_checkpoint_encode(&m, T->t.run, &c) == PROTO_OK) {
        proto_send(T->pub, NULL, 0, &m, ZMQ_DONTWAIT);
    }
    proto_msg_free(&m);
}

/* Whether a failed request means the assigner holds no session with this
 * rank any more: no answer (it died, is restarting or stopped), or "send
 * hello first" (a restarted assigner, or this rank's connection was
 * replaced).  A hello re-forms the session. */
static bool session_lost(struct trainer *T, enum assigner_client_status st)
{
    if (st == ASSIGNER_CLIENT_ERR_TIMEOUT) return true;
    const struct proto_error *e = assigner_client_last_error(T->assigner);
    return st == ASSIGNER_CLIENT_ERR_REFUSED && e->code == PROTO_ERRC_OUT_OF_ORDER &&
           !strcmp(e->field, "hello");
}

/* A queue save failed because the session was lost: one hello (the other
 * ranks say theirs when their next step's embed is refused), so that the
 * save can be sent again.  The hello names the checkpoint still on disk:
 * an assigner that kept its queue (only the session was lost) writes that
 * live queue, which is at the step of the save; a restarted one restores
 * the queue of that older checkpoint and then refuses the save (its queue
 * is not at the step), so this checkpoint is not paired with a queue it
 * does not match.  One attempt of --hello_timeout_ms, not say_hello's
 * endless ones: with --sync_bn the other ranks wait for rank 0 in their
 * next forward and cannot say hello.  Returns whether the session is back. */
static bool rejoin_for_save(struct trainer *T, enum assigner_client_status st)
{
    char key[PATH_MAX], ckpt[PATH_MAX];
    path_in(ckpt, sizeof ckpt, T->a.dump_path, "checkpoint.safetensors");
    queue_key(key, sizeof key, T->a.dump_path, T->saved_iteration);
    const bool have = access(ckpt, F_OK) == 0;
    LOG_WARN("the assigner did not save its queue for iteration %lld: %s (%s); saying hello "
             "again to send the save once more", (long long)T->iteration,
             assigner_client_status_str(st), assigner_client_last_error(T->assigner)->message);
    struct proto_welcome w;
    enum assigner_client_status hs = assigner_client_hello(
        T->assigner, NULL, have ? key : NULL, (uint32_t)T->epoch, (int)T->t.hello_timeout_ms, &w);
    if (hs != ASSIGNER_CLIENT_OK) {
        LOG_WARN("no welcome from the assigner at %s within %lld ms (%s)", T->t.assigner,
                 (long long)T->t.hello_timeout_ms, assigner_client_status_str(hs));
        return false;
    }
    LOG_INFO("assigner: welcome (world %u, queue %u rows, %llu filled)", w.world_size,
             w.queue_length, (unsigned long long)w.queue_fill);
    return true;
}

/* Rank 0: queue first (named after the step), then the checkpoint
 * atomically, then the copies and the announcement.  Returns 0 or -1. */
static int save_checkpoint(struct trainer *T, bool epoch_end)
{
    if (T->rank != 0) return 0;
    double t0 = swav_now_s();
    char qkey[PATH_MAX], path[PATH_MAX], err[1024];
    queue_key(qkey, sizeof qkey, T->a.dump_path, T->iteration);
    if (T->a.queue_length > 0) {
        struct proto_saved saved;
        /* the assigner names a queue by the last step it took in */
        enum assigner_client_status st = assigner_client_save(
            T->assigner, (uint32_t)T->epoch, (uint64_t)(T->iteration - 1), qkey,
            (int)T->t.codes_timeout_ms, &saved);
        if (st != ASSIGNER_CLIENT_OK && session_lost(T, st) && !g_stop &&
            rejoin_for_save(T, st)) {
            st = assigner_client_save(T->assigner, (uint32_t)T->epoch,
                                      (uint64_t)(T->iteration - 1), qkey,
                                      (int)T->t.codes_timeout_ms, &saved);
            if (st == ASSIGNER_CLIENT_OK) {
                LOG_INFO("the assigner saved its queue for iteration %lld after the session "
                         "re-formed", (long long)T->iteration);
            }
        }
        if (st != ASSIGNER_CLIENT_OK) {
            LOG_ERROR("the assigner did not save its queue for iteration %lld: %s (%s); the "
                      "checkpoint is written without it", (long long)T->iteration,
                      assigner_client_status_str(st), assigner_client_last_error(T->assigner)->message);
        }
    }
    char step_s[32];
    snprintf(step_s, sizeof step_s, "%lld", (long long)T->iteration);
    char ls_s[64] = "";
    if (T->loss_scaling) nn_loss_scale_format(&T->ls, ls_s, sizeof ls_s);
    struct nn_checkpoint_meta_pair extra[] = {
        {"queue_key", qkey}, {"arch", T->a.arch}, {"loss_scale", ls_s}};
    struct nn_checkpoint_meta meta = {
        .epoch = T->epoch, .step = T->iteration, .seed = (uint64_t)T->a.seed,
        .config_json = T->config_json, .rng_state = step_s, .extra = extra,
        .nextra = T->loss_scaling ? 3 : 2};
    path_in(path, sizeof path, T->a.dump_path, "checkpoint.safetensors");
    /* the current checkpoint becomes the previous one (a hard link, renamed
     * into place: both names always point to complete files).  After a
     * failed save the two names are already one file, and rename() between
     * two links of the same file does nothing: prev_tmp is then removed
     * here (unlinking one of three links of an intact file). */
    char prev[PATH_MAX], prev_tmp[PATH_MAX + 8];
    path_in(prev, sizeof prev, T->a.dump_path, "checkpoint.prev.safetensors");
    snprintf(prev_tmp, sizeof prev_tmp, "%s.tmp", prev);
    unlink(prev_tmp);
    if (link(path, prev_tmp) == 0) {
        if (rename(prev_tmp, prev) != 0) {
            LOG_WARN("cannot rename %s to %s: %s", prev_tmp, prev, strerror(errno));
        } else {
            T->prev_iteration = T->saved_iteration;
        }
        unlink(prev_tmp);
    }
    enum nn_checkpoint_status st = nn_checkpoint_save_backend(
        T->be, path, &T->model->params, T->model->param_data, &T->model->buffers,
        T->model->buffer_data, T->optim.momentum, &meta, err, sizeof err);
    if (st != NN_CHECKPOINT_OK) {
        LOG_ERROR("checkpoint not written: %s (%s); the previous one stays", err,
                  nn_checkpoint_status_str(st));
        return -1;
    }
    /* The reference's ckp-EPOCH copies: epoch is 0-based in their names. */
    int64_t done = T->epoch - 1;
    if (epoch_end && T->a.checkpoint_freq > 0 &&
        (done % T->a.checkpoint_freq == 0 || done == T->a.epochs - 1)) {
        char name[64], copy[PATH_MAX];
        snprintf(name, sizeof name, "ckp-%lld.safetensors", (long long)done);
        path_in(copy, sizeof copy, T->a.dump_path, name);
        unlink(copy);
        if (link(path, copy) != 0) {
            LOG_WARN("cannot link %s to %s: %s", path, copy, strerror(errno));
        }
    }
    T->saved_iteration = T->iteration;
    remove_old_queues(T, T->saved_iteration, T->prev_iteration);
    LOG_INFO("checkpoint: %s (epoch %lld, iteration %lld) in %.2f s", path, (long long)T->epoch,
             (long long)T->iteration, swav_now_s() - t0);
    announce(T, path);
    return 0;
}

/* ---- the step --------------------------------------------------------------- */

static void fill_order(struct trainer *T, struct proto_order *o, int64_t it)
{
    uint32_t epoch = (uint32_t)(it / T->sampler.n_batches);
    uint32_t step = (uint32_t)(it % T->sampler.n_batches);
    memset(o, 0, sizeof *o);
    o->epoch = epoch;
    o->step = (uint64_t)it;
    o->rank = (uint32_t)T->rank;
    o->seed = (uint64_t)T->a.seed;
    o->mode = PROTO_MODE_SWAV;
    snprintf(o->dataset, sizeof o->dataset, "train");
    o->ngroups = (uint32_t)T->ngroups;
    for (int g = 0; g < T->ngroups; g++) {
        o->nmb_crops[g] = (uint32_t)T->groups[g].n_crops;
        o->size_crops[g] = (uint32_t)T->groups[g].size;
        o->min_scale_crops[g] = T->a.min_scale_crops.v[g];
        o->max_scale_crops[g] = T->a.max_scale_crops.v[g];
    }
    o->n_images = (uint32_t)T->a.batch_size;
    const uint32_t *idx = trainer_sampler_batch(&T->sampler, epoch, step);
    uint64_t dims[1] = {o->n_images};
    proto_tensor_set(&o->indices, PROTO_DTYPE_U32, idx, 1, dims);
}

/* Keep the loaders' window full, up to the end of the run. */
static void order_ahead(struct trainer *T, int64_t end_it)
{
    while (T->next_order_it < end_it &&
           loader_client_outstanding(T->loaders) < (uint32_t)T->t.window) {
        struct proto_order o;
        fill_order(T, &o, T->next_order_it);
        enum loader_client_status st = loader_client_submit(T->loaders, &o, NULL);
        if (st == LOADER_CLIENT_ERR_FULL) break;
        if (st != LOADER_CLIENT_OK) {
            LOG_ERROR("cannot order iteration %lld: %s: %s", (long long)T->next_order_it,
                      loader_client_status_str(st), loader_client_last_error(T->loaders));
            exit(1);
        }
        T->next_order_it++;
    }
}

/* The loader's uint8 NHWC crops, image-major (row i * n + c), into the
 * model's float NCHW inputs, crop-major (row c * bs + i), on the backend (a
 * copy and a kernel with --device cuda). */
static void normalize_batch(struct trainer *T, const struct proto_batch *b)
{
    int bs = (int)T->a.batch_size;
    for (int g = 0; g < T->ngroups; g++) {
        int n = T->groups[g].n_crops, s = T->groups[g].size;
        nn_backend_normalize_crops(T->be, T->inputs[g], b->crops[g].data, bs, n, s, s);
    }
}

static const struct proto_batch *wait_batch(struct trainer *T, double *waited)
{
    double t0 = swav_now_s();
    const struct proto_batch *b = NULL;
    for (;;) {
        enum loader_client_status st = loader_client_next(T->loaders, &b, (int)T->t.batch_warn_ms);
        if (st == LOADER_CLIENT_OK) break;
        if (st == LOADER_CLIENT_TIMEOUT) {
            struct loader_client_stats s;
            loader_client_get_stats(T->loaders, &s);
            LOG_WARN("iteration %lld: no batch for %.0f s (%u loaders alive%s); still waiting",
                     (long long)T->iteration, swav_now_s() - t0, s.loaders_alive,
                     s.loaders_alive ? "" : ": start swav-loader processes connecting to --loader_bind");
            if (g_stop) return NULL;
            continue;
        }
        LOG_ERROR("iteration %lld: %s: %s", (long long)T->iteration, loader_client_status_str(st),
                  loader_client_last_error(T->loaders));
        return NULL;
    }
    for (uint32_t k = 0; k < b->n_notes; k++) {
        LOG_LIMITED(SWAV_LOG_WARN, "iteration %lld, image %u of the batch: %s",
                    (long long)T->iteration, b->notes[k].position, b->notes[k].text);
    }
    *waited = swav_now_s() - t0;
    return b;
}

static enum assigner_client_status say_hello(struct trainer *T, const char *resume_key)
{
    struct proto_welcome w;
    for (int attempt = 0;; attempt++) {
        enum assigner_client_status st = assigner_client_hello(
            T->assigner, NULL, resume_key, (uint32_t)T->epoch, (int)T->t.hello_timeout_ms, &w);
        if (st == ASSIGNER_CLIENT_OK) {
            LOG_INFO("assigner: welcome (world %u, queue %u rows, %llu filled)", w.world_size,
                     w.queue_length, (unsigned long long)w.queue_fill);
            return st;
        }
        if (st == ASSIGNER_CLIENT_ERR_REFUSED) {
            const struct proto_error *e = assigner_client_last_error(T->assigner);
            /* A restarted rank whose dead predecessor the assigner still
             * holds: it lets the rank go once the old peer is stale. */
            if (!strcmp(e->field, "rank") && strstr(e->message, "duplicate") && attempt < 120) {
                LOG_LIMITED(SWAV_LOG_WARN, "the assigner still holds rank %d for an earlier "
                            "process: %s; retrying", T->rank, e->message);
                swav_sleep_ms(1000);
                continue;
            }
            LOG_ERROR("the assigner refused this rank: %s%s%s", e->message,
                      e->field[0] ? ", field " : "", e->field);
            return st;
        }
        if (g_stop) return st;
        LOG_WARN("no welcome from the assigner at %s within %lld ms (%s); trying again",
                 T->t.assigner, (long long)T->t.hello_timeout_ms, assigner_client_status_str(st));
    }
}

/* Embeddings out, codes back; on a timeout or refusal, hello again and
 * resend, up to --assigner_retries times. */
static int get_codes(struct trainer *T, double *waited, struct proto_codes_stats *stats,
                     const char *resume_key)
{
    size_t bs = (size_t)T->a.batch_size, D = (size_t)T->a.feat_dim;
    for (int i = 0; i < T->n_assign; i++) {
        nn_backend_copy(T->be, T->emb_assign + (size_t)i * bs * D,
                        T->model->embedding + (size_t)T->crops_for_assign[i] * bs * D,
                        bs * D * sizeof(float));
    }
    const float *protos = NULL;
    if (T->rank == 0) {
        nn_backend_copy(T->be, T->protos, nn_model_param(T->model, "prototypes.weight"),
                        (size_t)T->a.nmb_prototypes * D * sizeof(float));
        protos = T->protos;
    }
    double t0 = swav_now_s();
    const long long tries = (long long)T->t.assigner_retries + 1;
    for (long long attempt = 1;; attempt++) {
        enum assigner_client_status st = assigner_client_embed(
            T->assigner, (uint32_t)T->epoch, (uint64_t)T->iteration, T->emb_assign, protos);
        if (st == ASSIGNER_CLIENT_OK) {
            st = assigner_client_wait_codes(T->assigner, (uint64_t)T->iteration,
                                            (int)T->t.codes_timeout_ms, T->codes, stats);
        }
        if (st == ASSIGNER_CLIENT_OK) {
            *waited = swav_now_s() - t0;
            return 0;
        }
        const struct proto_error *e = assigner_client_last_error(T->assigner);
        if (attempt == tries) {
            LOG_ERROR("iteration %lld: no codes from the assigner: %s (%s) (attempt %lld of "
                      "%lld); the assigner gave no codes after %lld attempts; stopping",
                      (long long)T->iteration, assigner_client_status_str(st), e->message,
                      attempt, tries, tries);
            return -1;
        }
        LOG_WARN("iteration %lld: no codes from the assigner: %s (%s); hello again (attempt %lld "
                 "of %lld)", (long long)T->iteration, assigner_client_status_str(st), e->message,
                 attempt, tries);
        if (g_stop) return -1;
        if (say_hello(T, resume_key) == ASSIGNER_CLIENT_ERR_REFUSED) return -1;
    }
}

/* nn_model_set_grad_ready: grad_data[lo, total) is final.  Starts the
 * all-reduce of what is final and not started yet once it reaches
 * --bucket_cap_mb, and of the rest at the stem (lo 0). */
static void grad_ready(void *ctx, size_t lo)
{
    struct trainer *T = ctx;
    if (T->bucket.status || T->bucket.hi == lo || (lo > 0 && T->bucket.hi - lo < T->bucket.cap)) {
        return;
    }
    /* the ZeroMQ ring reads and writes the gradients from the host (NCCL
     * orders itself after the backend's stream) */
    if (!T->ring) nn_backend_sync(T->be);
    T->bucket.status = nn_allreduce_start(T->coll, T->model->grad_data + lo, T->bucket.hi - lo);
    T->bucket.hi = lo;
    T->bucket.started++;
}

/* The gradients summed over the ranks and divided by the world (and by
 * fp16's loss scale): in the buckets grad_ready started during the
 * backward, or in one call. */
static int reduce_gradients(struct trainer *T)
{
    float unscale = T->loss_scaling ? 1.0f / T->ls.scale : 1.0f;
    if (T->world == 1) {
        if (T->loss_scaling) {
            nn_backend_scale(T->be, T->model->grad_data, T->model->params.total, unscale);
        }
        return 0;
    }
    if (!T->bucket.status) {
        grad_ready(T, 0); /* all of it when there are no buckets */
    }
    int st = nn_collective_wait_all(T->coll);
    if (T->bucket.status || st) {
        LOG_ERROR("iteration %lld: gradient all-reduce failed: %s", (long long)T->iteration,
                  T->coll->err);
        return -1;
    }
    if (T->steps_run == 0) {
        LOG_INFO("gradient all-reduce: %d bucket%s (--bucket_cap_mb %g), %s", T->bucket.started,
                 T->bucket.started == 1 ? "" : "s", T->t.bucket_cap_mb,
                 T->ring ? "NCCL on its own stream, overlapping the backward"
                         : "the ZeroMQ ring, each bucket as the backward reaches it");
    }
    nn_backend_scale(T->be, T->model->grad_data, T->model->params.total,
                     unscale / (float)T->world);
    return 0;
}

static int train_step(struct trainer *T, const char *resume_key)
{
    struct trainer_step_record rec = {0};
    double t_step = swav_now_s();
    const struct proto_batch *b = wait_batch(T, &rec.wait_data_s);
    if (!b) return -1;
    double t0 = swav_now_s();
    normalize_batch(T, b);
    const int64_t bs = T->a.batch_size, K = T->a.nmb_prototypes;

    nn_model_normalize_prototypes(T->model);
    const float *in[NN_MAX_GROUPS];
    for (int g = 0; g < T->ngroups; g++) in[g] = T->inputs[g];
    if (nn_model_forward(T->model, in, (int)bs, NN_MODEL_TRAIN) != 0) {
        LOG_ERROR("iteration %lld: SyncBN all-reduce failed: %s", (long long)T->iteration,
                  T->coll->err);
        return -1;
    }
    double compute = swav_now_s() - t0;

    struct proto_codes_stats cs = {0};
    if (get_codes(T, &rec.wait_codes_s, &cs, resume_key) != 0) return -1;

    t0 = swav_now_s();
    struct nn_tensor scores = nn_tensor_2d(T->model->scores, T->n_crops * bs, K);
    struct nn_swav_loss_cfg lc = {.n_crops = T->n_crops, .bs = (int)bs, .n_assign = T->n_assign,
                                  .crops_for_assign = T->crops_for_assign,
                                  .temperature = (float)T->a.temperature};
    nn_backend_copy(T->be, T->codes_dev, T->codes, (size_t)T->n_assign * bs * K * sizeof(float));
    float loss = nn_swav_loss_forward(T->be, T->logp, &scores, T->codes_dev, &lc);
    struct nn_tensor dscores = nn_tensor_2d(T->dscores, T->n_crops * bs, K);
    nn_swav_loss_backward(T->be, &dscores, T->logp, T->codes_dev, &lc);
    if (T->loss_scaling) { /* fp16: the loss gradient times S (nn/loss_scale.h) */
        nn_backend_scale(T->be, T->dscores, (size_t)T->n_crops * bs * K, T->ls.scale);
    }
    nn_model_zero_grad(T->model);
    T->bucket.hi = T->model->params.total;
    T->bucket.started = 0;
    T->bucket.status = 0;
    if (nn_model_backward(T->model, T->dscores) != 0) {
        LOG_ERROR("iteration %lld: SyncBN all-reduce failed: %s", (long long)T->iteration,
                  T->coll->err);
        return -1;
    }
    if (reduce_gradients(T) != 0) return -1;
    /* The mean loss, and whether any rank was asked to stop: all ranks then
     * stop after the same step. */
    float shared[2] = {loss, g_stop ? 1.0f : 0.0f};
    if (nn_allreduce_sum(T->coll, shared, 2) != 0) {
        LOG_ERROR("iteration %lld: all-reduce failed: %s", (long long)T->iteration, T->coll->err);
        return -1;
    }
    loss = shared[0] / (float)T->world;
    if (shared[1] > 0) g_stop = 1;
    double lr = nn_sched_swav_lr(&T->sched, T->iteration);
    bool take_step = true;
    if (T->loss_scaling) {
        /* an fp16 overflow anywhere shows as inf/NaN in the all-reduced
         * gradients, the same on every rank: all skip, all halve S */
        rec.loss_scale = T->ls.scale;
        int nf = nn_backend_nonfinite(T->be, T->model->grad_data, T->model->params.total);
        take_step = nn_loss_scale_update(&T->ls, nf);
        if (!take_step) {
            rec.skipped = true;
            LOG_LIMITED(SWAV_LOG_WARN, "iteration %lld: fp16 gradients overflowed (inf/NaN) at "
                        "loss scale %g: step skipped, scale now %g (%lld skipped so far)",
                        (long long)T->iteration, (double)rec.loss_scale, (double)T->ls.scale,
                        (long long)T->ls.skipped);
        }
    }
    if (take_step) {
        nn_optim_step(&T->optim, T->model->param_data, T->model->grad_data, lr, T->iteration);
    }
    compute += swav_now_s() - t0;

    rec.epoch = (uint32_t)T->epoch;
    rec.step = (uint64_t)T->iteration;
    rec.step_in_epoch = (uint32_t)(T->iteration % T->sampler.n_batches);
    rec.steps_per_epoch = T->sampler.n_batches;
    rec.loss = loss;
    rec.lr = lr;
    rec.compute_s = compute;
    double dt = swav_now_s() - t_step;
    rec.images_per_s = dt > 0 ? (double)bs * T->world / dt : 0;
    rec.queue_used = cs.queue_used;
    rec.entropy = cs.entropy;
    rec.prototypes_used = cs.prototypes_used;
    if (T->rank == 0) trainer_progress_step(&T->progress, &rec);
    if (T->trace) {
        const uint32_t *idx = trainer_sampler_batch(&T->sampler, (uint32_t)T->epoch,
                                                    rec.step_in_epoch);
        fprintf(T->trace, "%lld %lld", (long long)T->epoch, (long long)T->iteration);
        for (int64_t i = 0; i < bs; i++) fprintf(T->trace, " %u", idx[i]);
        fputc('\n', T->trace);
        fflush(T->trace);
    }
    return 0;
}

/* ---- main ----------------------------------------------------------------------- */

static char **split_endpoints(const char *list, int world)
{
    char **eps = swav_xcalloc((size_t)world, sizeof *eps);
    char *copy = swav_xstrdup(list);
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n < world) eps[n] = swav_xstrdup(tok);
        n++;
    }
    free(copy);
    if (n != world) {
        LOG_ERROR("--ring_endpoints has %d endpoints, --world_size is %d", n, world);
        exit(2);
    }
    return eps;
}

int main(int argc, char **argv)
{
    static struct trainer T;
    if (setup_flags(&T, argc, argv) != 0) return 2;
    swav_log_init("trainer", T.rank);
    char err[1024];
    if (swav_mkdirs(T.a.dump_path, err, sizeof err) != 0) {
        LOG_ERROR("%s", err);
        return 2;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* the device first: a machine without a usable GPU is said at once, not
     * after indexing a large dataset */
    T.be = nn_device_open(T.t.device, (int)T.t.threads, err, sizeof err);
    if (!T.be) {
        LOG_ERROR("%s", err);
        return 2;
    }
    struct loader_index_opts io = {.cache_dir = T.a.dump_path, .threads = 2, .quiet = T.rank != 0};
    if (loader_index_open(&T.index, T.a.data_path, &io, err, sizeof err) != LOADER_INDEX_OK) {
        LOG_ERROR("%s", err);
        return 2;
    }
    if (trainer_sampler_init(&T.sampler, T.index->n, T.rank, T.world, (uint32_t)T.a.batch_size,
                             (uint64_t)T.a.seed, err, sizeof err) != 0) {
        LOG_ERROR("%s", err);
        return 2;
    }
    if (setup_model(&T) != 0) return 2;
    T.sched = (struct nn_sched_swav){.base_lr = T.a.base_lr, .final_lr = T.a.final_lr,
                                     .start_warmup = T.a.start_warmup,
                                     .iters_per_epoch = T.sampler.n_batches,
                                     .epochs = T.a.epochs, .warmup_epochs = T.a.warmup_epochs};
    char resume_key[PATH_MAX];
    if (try_resume(&T, resume_key, sizeof resume_key) != 0) return 1;
    T.saved_iteration = T.iteration;
    T.prev_iteration = T.iteration;
    const int64_t end_it = T.a.epochs * (int64_t)T.sampler.n_batches;
    if (T.iteration >= end_it) {
        LOG_INFO("the run in %s is complete (%lld epochs); nothing to do", T.a.dump_path,
                 (long long)T.a.epochs);
        return 0;
    }

    T.zctx = zmq_ctx_new();
    struct assigner_client_config ac = {
        .endpoint = T.t.assigner, .run = T.t.run, .rank = (uint32_t)T.rank,
        .world_size = (uint32_t)T.world, .nmb_prototypes = (uint32_t)T.a.nmb_prototypes,
        .feat_dim = (uint32_t)T.a.feat_dim, .epsilon = T.a.epsilon,
        .sinkhorn_iterations = (uint32_t)T.a.sinkhorn_iterations,
        .queue_length = (uint32_t)T.a.queue_length,
        .epoch_queue_starts = (uint32_t)T.a.epoch_queue_starts,
        .n_crops_for_assign = (uint32_t)T.n_assign, .batch_size = (uint32_t)T.a.batch_size,
        .heartbeat_ms = 1000, .curve_server_public = T.t.assigner_public,
        .curve_secret = T.t.curve_secret};
    for (int i = 0; i < T.n_assign; i++) ac.crops_for_assign[i] = (uint32_t)T.crops_for_assign[i];
    T.assigner = assigner_client_new(T.zctx, &ac, err, sizeof err);
    if (!T.assigner) {
        LOG_ERROR("assigner client: %s", err);
        return 2;
    }
    struct loader_client_opts lo = {.bind = T.t.loader_bind, .run = T.t.run,
                                    .window = (uint32_t)T.t.window, .zmq_ctx = T.zctx,
                                    .curve_secret = T.t.curve_secret,
                                    .curve_allow = T.t.curve_allow};
    if (loader_client_new(&T.loaders, &lo, err, sizeof err) != 0) {
        LOG_ERROR("loader endpoint: %s", err);
        return 2;
    }
    if (T.world > 1) {
        char **eps = split_endpoints(T.t.ring_endpoints, T.world);
        T.coll = trainer_ring_new(T.zctx, T.rank, T.world, (const char *const *)eps,
                                  (uint64_t)T.a.seed ^ 0x5eedull, (int)T.t.ring_timeout_ms,
                                  T.t.curve_secret, err, sizeof err);
        for (int i = 0; i < T.world; i++) free(eps[i]);
        free(eps);
        if (!T.coll) {
            LOG_ERROR("gradient ring: %s", err);
            return 2;
        }
        /* --device cuda: NCCL for gradients and SyncBN, its id sent over the ring */
        struct nn_collective *dc = nn_device_collective_new(T.be, T.coll, (int)T.t.ring_timeout_ms,
                                                            err, sizeof err);
        if (dc) {
            T.ring = T.coll;
            T.coll = dc;
        } else if (err[0]) {
            LOG_ERROR("NCCL: %s", err);
            return 2;
        }
    } else {
        T.coll = nn_collective_single_new();
    }
    /* --sync_bn pytorch: nn.SyncBatchNorm over all ranks; apex: over groups of
     * --syncbn_process_group_size ranks; anything else: per-rank statistics,
     * as the reference (main_swav.py converts only for those two). */
    int apex = !strcmp(T.a.sync_bn, "apex");
    if (T.world > 1 && (apex || !strcmp(T.a.sync_bn, "pytorch"))) {
        int group = apex ? (int)T.a.syncbn_process_group_size : 0;
        if (nn_model_set_sync_bn(T.model, T.coll, group, err, sizeof err) != 0) {
            LOG_ERROR("--sync_bn apex: %s (--syncbn_process_group_size %lld)", err,
                      (long long)T.a.syncbn_process_group_size);
            return 2;
        }
        LOG_INFO("SyncBN (%s): BatchNorm statistics over %d ranks", T.a.sync_bn,
                 apex && group < T.world ? group : T.world);
    }
    if (T.world > 1 && T.t.bucket_cap_mb > 0) {
        T.bucket.cap = (size_t)(T.t.bucket_cap_mb * 1024 * 1024 / sizeof(float));
        nn_model_set_grad_ready(T.model, grad_ready, &T);
    }
    if (T.rank == 0 && T.t.pub[0]) {
        /* --pub_allow: a CURVE server letting in the listed subscribers, in
         * a context of its own (one ZAP handler per context: the loaders'
         * allow-list has T.zctx's) */
        void *ctx = T.zctx;
        if (T.t.pub_allow[0]) {
            T.pub_ctx = zmq_ctx_new();
            ctx = T.pub_ctx;
            char what[PATH_MAX + 16];
            snprintf(what, sizeof what, "--pub %s", T.t.pub);
            T.pub_zap = proto_zap_new_logged(T.pub_ctx, T.t.pub_allow, what, err, sizeof err);
            if (!T.pub_zap) {
                LOG_ERROR("--pub_allow: %s", err);
                return 2;
            }
        }
        T.pub = zmq_socket(ctx, ZMQ_PUB);
        int zero = 0;
        zmq_setsockopt(T.pub, ZMQ_LINGER, &zero, sizeof zero);
        if (T.t.pub_allow[0] &&
            proto_socket_curve_server(T.pub, T.t.curve_secret, err, sizeof err) != PROTO_OK) {
            LOG_ERROR("--pub %s: %s", T.t.pub, err);
            return 2;
        }
        if (zmq_bind(T.pub, T.t.pub) != 0) {
            LOG_ERROR("cannot bind --pub %s: %s", T.t.pub, zmq_strerror(zmq_errno()));
            return 2;
        }
    }
    char jpath[PATH_MAX];
    path_in(jpath, sizeof jpath, T.a.dump_path, "train.jsonl");
    uint64_t grace = (uint64_t)T.a.freeze_prototypes_niters + 2 * (uint64_t)T.sampler.n_batches;
    if (trainer_progress_open(&T.progress, T.rank == 0 ? jpath : NULL,
                              (uint32_t)T.a.nmb_prototypes, grace, err, sizeof err) != 0) {
        LOG_ERROR("%s", err);
        return 2;
    }

    if (T.t.trace_images[0] && !(T.trace = fopen(T.t.trace_images, "a"))) {
        LOG_ERROR("cannot open --trace_images %s: %s", T.t.trace_images, strerror(errno));
        return 2;
    }
    if (say_hello(&T, resume_key[0] ? resume_key : NULL) != ASSIGNER_CLIENT_OK) return 1;
    LOG_INFO("training: %u images, %u steps per epoch of %lld per rank x %d ranks, epochs %lld..%lld",
             T.index->n, T.sampler.n_batches, (long long)T.a.batch_size, T.world,
             (long long)T.epoch, (long long)T.a.epochs - 1);

    T.next_order_it = T.iteration;
    int rc = 0;
    while (T.iteration < end_it) {
        order_ahead(&T, end_it);
        if (g_stop) break;
        if (train_step(&T, resume_key) != 0) {
            rc = g_stop ? 0 : 1;
            break;
        }
        T.iteration++;
        T.steps_run++;
        int64_t new_epoch = T.iteration / T.sampler.n_batches;
        if (new_epoch != T.epoch) {
            T.epoch = new_epoch;
            queue_key(resume_key, sizeof resume_key, T.a.dump_path, T.iteration);
            if (save_checkpoint(&T, true) != 0) {
                rc = 1;
                break;
            }
        }
        if (T.t.stop_after_steps > 0 && T.steps_run >= (uint64_t)T.t.stop_after_steps) {
            LOG_INFO("stopping after %llu steps (--stop_after_steps)", (unsigned long long)T.steps_run);
            g_stop = 1;
        }
    }
    if (g_stop && T.iteration < end_it && T.iteration % T.sampler.n_batches != 0) {
        LOG_INFO("stopping at iteration %lld: writing a checkpoint first", (long long)T.iteration);
        if (save_checkpoint(&T, false) != 0) rc = 1;
    }
    if (T.iteration >= end_it) LOG_INFO("training done: %lld epochs", (long long)T.a.epochs);

    trainer_progress_close(&T.progress);
    if (T.trace) fclose(T.trace);
    loader_client_destroy(&T.loaders);
    assigner_client_destroy(&T.assigner);
    nn_collective_destroy(&T.coll);
    nn_collective_destroy(&T.ring);
    if (T.pub) zmq_close(T.pub);
    proto_zap_destroy(&T.pub_zap);
    if (T.pub_ctx) zmq_ctx_term(T.pub_ctx);
    zmq_ctx_term(T.zctx);
    nn_optim_free(&T.optim);
    if (T.be) {
        for (int g = 0; g < T.ngroups; g++) nn_backend_free(T.be, T.inputs[g]);
        nn_backend_free(T.be, T.codes_dev);
        nn_backend_free(T.be, T.logp);
        nn_backend_free(T.be, T.dscores);
    }
    free(T.emb_assign);
    free(T.protos);
    free(T.codes);
    nn_model_destroy(&T.model);
    nn_backend_destroy(&T.be);
    trainer_sampler_free(&T.sampler);
    loader_index_destroy(&T.index);
    return rc;
}
