/* Pieces of the live evaluator that need no process: the evenly spaced
 * training subset is stratified over ImageFolder order (each class gets
 * round(limit * n_class / N) images, +-1, for even and uneven classes),
 * distinct and sorted; the architecture comes from the tensors of a
 * checkpoint (depth, width, stem, with or without "module."; real
 * checkpoints of small models, and name/shape-only files for the big ones),
 * its seed from the config metadata. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/check.h"
#include "evaluator/live.h"
#include "nn/backend.h"
#include "nn/checkpoint.h"
#include "nn/resnet.h"
#include "tests/expect.h"


static void subset_case(const int *class_sizes, int ncls, int64_t limit)
{
    int64_t n = 0;
    for (int c = 0; c < ncls; c++) n += class_sizes[c];
    uint32_t *idx = swav_xmalloc((size_t)n * sizeof(uint32_t));
    int64_t k = eval_subset_even(idx, n, limit);
    EXPECT(k == (limit <= 0 || limit >= n ? n : limit), "subset of %lld from %lld: %lld",
           (long long)limit, (long long)n, (long long)k);
    for (int64_t i = 1; i < k; i++)
        EXPECT(idx[i] > idx[i - 1] && idx[i] < n, "subset not increasing at %lld", (long long)i);
    int64_t start = 0;
    for (int c = 0; c < ncls; c++) {
        int64_t got = 0;
        for (int64_t i = 0; i < k; i++)
            got += idx[i] >= start && idx[i] < start + class_sizes[c];
        double want = (double)k * class_sizes[c] / (double)n;
        EXPECT(fabs((double)got - want) <= 1.0, "class %d: %lld images, want %.1f +- 1", c,
               (long long)got, want);
        start += class_sizes[c];
    }
    free(idx);
}

static void arch_case(int depth, int width, int small_stem, bool module, const char *config,
                      uint64_t want_seed, const char *want_name)
{
    nn_backend_t *be = nn_backend_cpu_new(1);
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    cfg.depth = depth;
    cfg.width = width;
    cfg.small_stem = small_stem;
    cfg.hidden_mlp = 0;
    cfg.feat_dim = 8;
    cfg.nmb_prototypes = 4;
    struct nn_crop_group g = {.n_crops = 1, .size = 32};
    struct nn_model *m = nn_model_new(be, &cfg, &g, 1, 1);
    SWAV_ASSERT(m);
    if (module) {
        for (int i = 0; i < m->params.n; i++) {
            char tmp[NN_PARAM_NAME_MAX];
            snprintf(tmp, sizeof tmp, "module.%.80s", m->params.p[i].name);
            memcpy(m->params.p[i].name, tmp, sizeof tmp);
        }
    }
    char path[] = "/tmp/test_live_unit_XXXXXX";
    int fd = mkstemp(path);
    SWAV_ASSERT(fd >= 0);
    close(fd);
    char err[512];
    struct nn_checkpoint_meta meta = {.epoch = 1, .step = 2, .config_json = config};
    SWAV_ASSERT(nn_checkpoint_save_backend(m->be, path, &m->params, m->param_data, NULL, NULL,
                                           NULL, &meta, err, sizeof err) == NN_CHECKPOINT_OK);
    struct safetensors_file f;
    SWAV_ASSERT(safetensors_read(&f, path, 0, err, sizeof err) == SAFETENSORS_OK);
    struct eval_arch a;
    int rc = eval_arch_from_file(&f, &a, err, sizeof err);
    EXPECT(rc == 0 && a.depth == depth && a.width == width && a.small_stem == small_stem &&
               a.seed == want_seed && !strcmp(a.name, want_name),
           "arch of resnet%d width %d stem %d module %d: rc %d (%s) depth %d width %d stem %d "
           "seed %llu name '%s'",
           depth, width, small_stem, module, rc, rc ? err : "", a.depth, a.width, a.small_stem,
           (unsigned long long)a.seed, a.name);
    safetensors_file_free(&f);
    unlink(path);
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
}

/* A file with only the names and shapes eval_arch_from_file looks at (no
 * data), for the big architectures. */
static void fake_case(int depth, int width, int small_stem, bool module, const char *config,
                      uint64_t want_seed, const char *want_name)
{
    static const int c18[4] = {2, 2, 2, 2}, c34[4] = {3, 4, 6, 3}, c101[4] = {3, 4, 23, 3};
    const int *cnt = depth == 18 ? c18 : depth == 101 ? c101 : c34;
    bool bottleneck = depth >= 50;
    static char names[256][64];
    static struct safetensors_tensor t[256];
    int n = 0;
    const char *pre = module ? "module." : "";
    snprintf(names[n], sizeof names[n], "%sconv1.weight", pre);
    t[n] = (struct safetensors_tensor){.name = names[n], .ndim = 4,
                                       .shape = {width, 3, small_stem ? 3 : 7, small_stem ? 3 : 7}};
    n++;
    for (int s = 0; s < 4; s++)
        for (int b = 0; b < cnt[s]; b++)
            for (int c = 1; c <= (bottleneck ? 3 : 2); c++) {
                snprintf(names[n], sizeof names[n], "%slayer%d.%d.conv%d.weight", pre, s + 1, b, c);
                t[n] = (struct safetensors_tensor){.name = names[n], .ndim = 4, .shape = {8, 8, 3, 3}};
                n++;
            }
    struct safetensors_meta meta = {"config", config};
    struct safetensors_file f = {.tensors = t, .ntensors = n, .meta = &meta, .nmeta = config ? 1 : 0};
    struct eval_arch a;
    char err[256];
    int rc = eval_arch_from_file(&f, &a, err, sizeof err);
    EXPECT(rc == 0 && a.depth == depth && a.width == width && a.small_stem == small_stem &&
               a.seed == want_seed && !strcmp(a.name, want_name),
           "fake resnet%d width %d stem %d: rc %d (%s) depth %d width %d seed %llu name '%s'",
           depth, width, small_stem, rc, rc ? err : "", a.depth, a.width,
           (unsigned long long)a.seed, a.name);
}

int main(void)
{
    static const int even[10] = {6000, 6000, 6000, 6000, 6000, 6000, 6000, 6000, 6000, 6000};
    subset_case(even, 10, 10000);
    subset_case(even, 10, 0);
    subset_case(even, 10, 7);
    static const int uneven[5] = {100, 300, 7, 600, 1};
    subset_case(uneven, 5, 100);
    subset_case(uneven, 5, 1007);
    subset_case(uneven, 5, 5000);

    arch_case(18, 8, 1, false, "{\"seed\": 5, \"arch\": \"resnet18\"}", 5,
              "resnet18 width 8 small stem");
    arch_case(50, 8, 0, true, NULL, 31, "resnet50 width 8");
    fake_case(50, 64, 0, true, NULL, 31, "resnet50");
    fake_case(50, 128, 0, false, "{\"seed\": 7}", 7, "resnet50w2");
    fake_case(50, 320, 0, false, "{}", 31, "resnet50w5");
    fake_case(34, 16, 1, false, "not json", 31, "resnet34 width 16 small stem");
    fake_case(101, 64, 0, false, NULL, 31, "resnet101");
    fake_case(18, 192, 0, false, NULL, 31, "resnet18 width 192");

    struct safetensors_file empty = {0};
    struct eval_arch a;
    char err[256];
    EXPECT(eval_arch_from_file(&empty, &a, err, sizeof err) == -1 && strstr(err, "conv1"),
           "no conv1: an error naming it");
    if (failures) fprintf(stderr, "test_live_unit: %d failures\n", failures);
    return failures != 0;
}
