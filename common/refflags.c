/* The reference's flag tables: see refflags.h.  One row per flag, in the
 * reference's order; defaults written as the reference's argparse default
 * would be typed on a command line. */
#include "refflags.h"

#include <stdio.h>

#define NO_MIN SWAV_FLAG_NO_MIN
#define NO_MAX SWAV_FLAG_NO_MAX
#define I64_MAX 9.2233720368547758e18

/* ROW(struct, name, type, min, max, default, help); LIST(..., min_len, max_len) */
#define ROW(st, name, type, mn, mx, def, help) \
    {#name, type, offsetof(struct st, name), mn, mx, def, help, 0, 0, NULL}
#define LIST(st, name, type, mn, mx, def, help, lmin, lmax) \
    {#name, type, offsetof(struct st, name), mn, mx, def, help, lmin, lmax, NULL}
#define CHOICE(st, name, def, choices, help) \
    {#name, SWAV_FLAG_STR, offsetof(struct st, name), 0, 0, def, help, 0, 0, choices}

/* Resolution groups and crops per image as the wire carries them
 * (proto.h: PROTO_MAX_GROUPS, PROTO_MAX_CROPS_PER_IMAGE, PROTO_MAX_CROP_SIZE). */
#define MAX_GROUPS 8
#define MAX_CROPS 64
#define MAX_SIZE 4096

#define M swav_main_args
const struct swav_flag swav_main_flags[] = {
    ROW(M, data_path, SWAV_FLAG_STR, 0, 0, "/path/to/imagenet", "path to dataset repository"),
    LIST(M, nmb_crops, SWAV_FLAG_INT_LIST, 1, MAX_CROPS, "2",
         "list of number of crops (example: [2, 6])", 1, MAX_GROUPS),
    LIST(M, size_crops, SWAV_FLAG_INT_LIST, 1, MAX_SIZE, "224",
         "crops resolutions (example: [224, 96])", 1, MAX_GROUPS),
    LIST(M, min_scale_crops, SWAV_FLAG_FLOAT_LIST, 1e-6, 1, "0.14",
         "argument in RandomResizedCrop (example: [0.14, 0.05])", 1, MAX_GROUPS),
    LIST(M, max_scale_crops, SWAV_FLAG_FLOAT_LIST, 1e-6, 1, "1",
         "argument in RandomResizedCrop (example: [1., 0.14])", 1, MAX_GROUPS),
    LIST(M, crops_for_assign, SWAV_FLAG_INT_LIST, 0, MAX_GROUPS * MAX_CROPS - 1, "0 1",
         "list of crops id used for computing assignments", 1, SWAV_FLAG_LIST_MAX),
    ROW(M, temperature, SWAV_FLAG_FLOAT, 1e-6, 1e3, "0.1", "temperature parameter in training loss"),
    ROW(M, epsilon, SWAV_FLAG_FLOAT, 1e-6, 1e3, "0.05",
        "regularization parameter for Sinkhorn-Knopp algorithm (> 0)"),
    ROW(M, sinkhorn_iterations, SWAV_FLAG_INT, 1, 10000, "3",
        "number of iterations in Sinkhorn-Knopp algorithm"),
    ROW(M, feat_dim, SWAV_FLAG_INT, 1, 65536, "128", "feature dimension"),
    ROW(M, nmb_prototypes, SWAV_FLAG_INT, 1, 1 << 24, "3000", "number of prototypes"),
    ROW(M, queue_length, SWAV_FLAG_INT, 0, 1 << 30, "0", "length of the queue (0 for no queue)"),
    ROW(M, epoch_queue_starts, SWAV_FLAG_INT, 0, 1e9, "15", "from this epoch, we start using a queue"),
    ROW(M, epochs, SWAV_FLAG_INT, 1, 1e9, "100", "number of total epochs to run"),
    ROW(M, batch_size, SWAV_FLAG_INT, 1, 1 << 20, "64",
        "batch size per gpu, i.e. how many unique instances per gpu"),
    ROW(M, base_lr, SWAV_FLAG_FLOAT, 0, 1e6, "4.8", "base learning rate"),
    ROW(M, final_lr, SWAV_FLAG_FLOAT, 0, 1e6, "0", "final learning rate"),
    ROW(M, freeze_prototypes_niters, SWAV_FLAG_INT, 0, I64_MAX, "313",
        "freeze the prototypes during this many iterations from the start"),
    ROW(M, wd, SWAV_FLAG_FLOAT, 0, 1, "1e-6", "weight decay"),
    ROW(M, warmup_epochs, SWAV_FLAG_INT, 0, 1e9, "10", "number of warmup epochs"),
    ROW(M, start_warmup, SWAV_FLAG_FLOAT, 0, 1e6, "0", "initial warmup learning rate"),
    ROW(M, dist_url, SWAV_FLAG_STR, 0, 0, "env://", "url used to set up distributed training"),
    ROW(M, world_size, SWAV_FLAG_INT, -1, 65536, "-1",
        "number of processes (-1: set automatically)"),
    ROW(M, rank, SWAV_FLAG_INT, 0, 65535, "0", "rank of this process"),
    ROW(M, local_rank, SWAV_FLAG_INT, 0, 65535, "0", "not used (kept for the reference's scripts)"),
    ROW(M, arch, SWAV_FLAG_STR, 0, 0, "resnet50", "convnet architecture"),
    ROW(M, hidden_mlp, SWAV_FLAG_INT, 0, 1 << 20, "2048",
        "hidden layer dimension in projection head (0: a single linear layer)"),
    ROW(M, workers, SWAV_FLAG_INT, 0, 1024, "10", "number of data loading workers"),
    ROW(M, checkpoint_freq, SWAV_FLAG_INT, 1, 1e9, "25", "Save the model periodically"),
    ROW(M, use_fp16, SWAV_FLAG_BOOL, 0, 0, "true",
        "whether to train with mixed precision or not"),
    ROW(M, sync_bn, SWAV_FLAG_STR, 0, 0, "pytorch", "synchronize bn (pytorch, apex; else off)"),
    ROW(M, syncbn_process_group_size, SWAV_FLAG_INT, 1, 65536, "8",
        "ranks per SyncBN group (apex)"),
    ROW(M, dump_path, SWAV_FLAG_STR, 0, 0, ".", "experiment dump path for checkpoints and log"),
    ROW(M, seed, SWAV_FLAG_INT, 0, 4294967295.0, "31", "seed (numpy's range: 0 .. 2^32-1)"),
};
const size_t swav_main_nflags = sizeof swav_main_flags / sizeof swav_main_flags[0];
#undef M

#define L swav_eval_linear_args
const struct swav_flag swav_eval_linear_flags[] = {
    ROW(L, dump_path, SWAV_FLAG_STR, 0, 0, ".", "experiment dump path for checkpoints and log"),
    ROW(L, seed, SWAV_FLAG_INT, 0, 4294967295.0, "31", "seed"),
    ROW(L, data_path, SWAV_FLAG_STR, 0, 0, "/path/to/imagenet", "path to dataset repository"),
    ROW(L, workers, SWAV_FLAG_INT, 0, 1024, "10", "number of data loading workers"),
    ROW(L, arch, SWAV_FLAG_STR, 0, 0, "resnet50", "convnet architecture"),
    ROW(L, pretrained, SWAV_FLAG_STR, 0, 0, "", "path to pretrained weights"),
    ROW(L, global_pooling, SWAV_FLAG_BOOL, 0, 0, "true",
        "if True, we use the resnet50 global average pooling"),
    ROW(L, use_bn, SWAV_FLAG_BOOL, 0, 0, "false",
        "optionally add a batchnorm layer before the linear classifier"),
    ROW(L, epochs, SWAV_FLAG_INT, 1, 1e9, "100", "number of total epochs to run"),
    ROW(L, batch_size, SWAV_FLAG_INT, 1, 1 << 20, "32",
        "batch size per gpu, i.e. how many unique instances per gpu"),
    ROW(L, lr, SWAV_FLAG_FLOAT, 0, 1e6, "0.3", "initial learning rate"),
    ROW(L, wd, SWAV_FLAG_FLOAT, 0, 1, "1e-6", "weight decay"),
    ROW(L, nesterov, SWAV_FLAG_BOOL, 0, 0, "false", "nesterov momentum"),
    CHOICE(L, scheduler_type, "cosine", "step|cosine", "learning rate schedule"),
    LIST(L, decay_epochs, SWAV_FLAG_INT_LIST, 0, 1e9, "60 80",
         "Epochs at which to decay learning rate.", 1, SWAV_FLAG_LIST_MAX),
    ROW(L, gamma, SWAV_FLAG_FLOAT, 0, 1e6, "0.1", "decay factor"),
    ROW(L, final_lr, SWAV_FLAG_FLOAT, 0, 1e6, "0", "final learning rate"),
    ROW(L, dist_url, SWAV_FLAG_STR, 0, 0, "env://", "url used to set up distributed training"),
    ROW(L, world_size, SWAV_FLAG_INT, -1, 65536, "-1", "number of processes (-1: automatic)"),
    ROW(L, rank, SWAV_FLAG_INT, 0, 65535, "0", "rank of this process"),
    ROW(L, local_rank, SWAV_FLAG_INT, 0, 65535, "0", "not used"),
};
const size_t swav_eval_linear_nflags = sizeof swav_eval_linear_flags / sizeof swav_eval_linear_flags[0];
#undef L

#define S swav_eval_semisup_args
const struct swav_flag swav_eval_semisup_flags[] = {
    CHOICE(S, labels_perc, "10", "1|10", "fine-tune on either 1% or 10% of labels"),
    ROW(S, dump_path, SWAV_FLAG_STR, 0, 0, ".", "experiment dump path for checkpoints and log"),
    ROW(S, seed, SWAV_FLAG_INT, 0, 4294967295.0, "31", "seed"),
    ROW(S, data_path, SWAV_FLAG_STR, 0, 0, "/path/to/imagenet", "path to imagenet"),
    ROW(S, workers, SWAV_FLAG_INT, 0, 1024, "10", "number of data loading workers"),
    ROW(S, arch, SWAV_FLAG_STR, 0, 0, "resnet50", "convnet architecture"),
    ROW(S, pretrained, SWAV_FLAG_STR, 0, 0, "", "path to pretrained weights"),
    ROW(S, epochs, SWAV_FLAG_INT, 1, 1e9, "20", "number of total epochs to run"),
    ROW(S, batch_size, SWAV_FLAG_INT, 1, 1 << 20, "32",
        "batch size per gpu, i.e. how many unique instances per gpu"),
    ROW(S, lr, SWAV_FLAG_FLOAT, 0, 1e6, "0.01", "initial learning rate - trunk"),
    ROW(S, lr_last_layer, SWAV_FLAG_FLOAT, 0, 1e6, "0.2", "initial learning rate - head"),
    LIST(S, decay_epochs, SWAV_FLAG_INT_LIST, 0, 1e9, "12 16",
         "Epochs at which to decay learning rate.", 1, SWAV_FLAG_LIST_MAX),
    ROW(S, gamma, SWAV_FLAG_FLOAT, 0, 1e6, "0.2", "lr decay factor"),
    ROW(S, dist_url, SWAV_FLAG_STR, 0, 0, "env://", "url used to set up distributed training"),
    ROW(S, world_size, SWAV_FLAG_INT, -1, 65536, "-1", "number of processes (-1: automatic)"),
    ROW(S, rank, SWAV_FLAG_INT, 0, 65535, "0", "rank of this process"),
    ROW(S, local_rank, SWAV_FLAG_INT, 0, 65535, "0", "not used"),
};
const size_t swav_eval_semisup_nflags = sizeof swav_eval_semisup_flags / sizeof swav_eval_semisup_flags[0];
#undef S

struct swav_flag_set swav_main_flag_set(struct swav_main_args *a)
{
    return (struct swav_flag_set){swav_main_flags, swav_main_nflags, a};
}

struct swav_flag_set swav_eval_linear_flag_set(struct swav_eval_linear_args *a)
{
    return (struct swav_flag_set){swav_eval_linear_flags, swav_eval_linear_nflags, a};
}

struct swav_flag_set swav_eval_semisup_flag_set(struct swav_eval_semisup_args *a)
{
    return (struct swav_flag_set){swav_eval_semisup_flags, swav_eval_semisup_nflags, a};
}

static int check_rank(int64_t rank, int64_t world_size, char *err, size_t errlen)
{
    if (world_size > 0 && rank >= world_size) {
        snprintf(err, errlen, "--rank: %lld is not below --world_size %lld", (long long)rank,
                 (long long)world_size);
        return -1;
    }
    return 0;
}

int swav_main_args_check(const struct swav_main_args *a, char *err, size_t errlen)
{
    int n = a->nmb_crops.n;
    const struct {
        const char *name;
        int n;
    } lists[] = {
        {"size_crops", a->size_crops.n},
        {"min_scale_crops", a->min_scale_crops.n},
        {"max_scale_crops", a->max_scale_crops.n},
    };
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        if (lists[i].n != n) {
            snprintf(err, errlen, "--%s: %d value%s, but --nmb_crops has %d", lists[i].name,
                     lists[i].n, lists[i].n == 1 ? "" : "s", n);
            return -1;
        }
    }
    int64_t total = 0;
    for (int g = 0; g < n; g++) {
        total += a->nmb_crops.v[g];
        if (a->min_scale_crops.v[g] > a->max_scale_crops.v[g]) {
            snprintf(err, errlen, "--min_scale_crops: %g is above --max_scale_crops %g (group %d)",
                     a->min_scale_crops.v[g], a->max_scale_crops.v[g], g);
            return -1;
        }
    }
    for (int i = 0; i < a->crops_for_assign.n; i++) {
        if (a->crops_for_assign.v[i] >= total) {
            snprintf(err, errlen, "--crops_for_assign: crop %lld does not exist (%lld crops)",
                     (long long)a->crops_for_assign.v[i], (long long)total);
            return -1;
        }
    }
    return check_rank(a->rank, a->world_size, err, errlen);
}

int swav_eval_linear_args_check(const struct swav_eval_linear_args *a, char *err, size_t errlen)
{
    return check_rank(a->rank, a->world_size, err, errlen);
}

int swav_eval_semisup_args_check(const struct swav_eval_semisup_args *a, char *err, size_t errlen)
{
    return check_rank(a->rank, a->world_size, err, errlen);
}
