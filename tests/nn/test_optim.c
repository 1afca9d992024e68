/* nn_optim against the reference's LARC + torch SGD (driven by test_optim.py,
 * which writes a case folder: spec.json, init.bin, grads.bin,
 * expect_params.bin, expect_mom.bin).  Runs the case with 1 and 3 threads:
 * both must be bit-identical, and each tensor must satisfy
 *     max |ours - torch| <= 1e-6 * max |torch| + 1e-12
 * for parameters and momentum buffers.
 *
 * Without arguments it runs the unit checks that need no torch: the zero-norm
 * rule, the prototype freeze, prototype normalization. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/fileio.h"
#include "nn/optim.h"

#define REL_TOL 1e-6

#define EXPECT_SHOW_COND 1
#include "tests/expect.h"

static float *read_floats(const char *dir, const char *name, size_t want)
{
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    void *data;
    size_t len;
    if (swav_file_read_all(path, 1u << 30, &data, &len, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    if (len != want * sizeof(float)) {
        fprintf(stderr, "%s: %zu bytes, expected %zu\n", path, len, want * sizeof(float));
        exit(1);
    }
    return data;
}

/* Per tensor relative max error; prints the worst. */
static int compare(const char *what, const struct nn_param_table *t, const float *got,
                   const float *want)
{
    int bad = 0;
    double worst = 0;
    for (int i = 0; i < t->n; i++) {
        const struct nn_param *p = &t->p[i];
        double maxref = 0, maxdiff = 0;
        size_t at = 0;
        for (size_t k = 0; k < p->numel; k++) {
            double r = want[p->offset + k], g = got[p->offset + k];
            maxref = fmax(maxref, fabs(r));
            if (fabs(g - r) > maxdiff) {
                maxdiff = fabs(g - r);
                at = k;
            }
        }
        double rel = maxdiff / (maxref > 0 ? maxref : 1);
        worst = fmax(worst, rel);
        if (maxdiff > REL_TOL * maxref + 1e-12) {
            fprintf(stderr,
                    "  %s %s: max |diff| %.3g at %zu (ours %.9g, torch %.9g), max |torch| %.3g, "
                    "relative %.3g > %g\n",
                    what, p->name, maxdiff, at, got[p->offset + at], want[p->offset + at],
                    maxref, rel, REL_TOL);
            bad++;
        }
    }
    printf("  %-8s worst relative error over tensors %.3g (tolerance %g)\n", what, worst, REL_TOL);
    return bad;
}

static int run_case(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/spec.json", dir);
    json_error_t jerr;
    json_t *spec = json_load_file(path, 0, &jerr);
    if (!spec) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
        return 1;
    }
    struct nn_param_table table;
    nn_param_table_init(&table);
    json_t *names = json_object_get(spec, "names");
    for (size_t i = 0; i < json_array_size(names); i++) {
        json_t *sh = json_array_get(json_object_get(spec, "shapes"), i);
        int64_t shape[NN_PARAM_MAX_DIMS];
        for (size_t d = 0; d < json_array_size(sh); d++) {
            shape[d] = json_integer_value(json_array_get(sh, d));
        }
        unsigned flags = (unsigned)json_integer_value(json_array_get(json_object_get(spec, "flags"), i));
        nn_param_table_add(&table, json_string_value(json_array_get(names, i)),
                           (int)json_array_size(sh), shape, flags ? NN_PARAM_PROTOTYPES : 0);
    }
    int steps = (int)json_integer_value(json_object_get(spec, "steps"));
    struct nn_optim_config cfg = nn_optim_config_swav(
        json_real_value(json_object_get(spec, "weight_decay")),
        json_integer_value(json_object_get(spec, "freeze_prototypes_niters")));
    cfg.larc = json_is_true(json_object_get(spec, "larc"));
    cfg.clip = json_is_true(json_object_get(spec, "clip"));
    cfg.nesterov = json_is_true(json_object_get(spec, "nesterov"));
    cfg.momentum = json_number_value(json_object_get(spec, "momentum"));
    bool normalize = json_is_true(json_object_get(spec, "normalize_prototypes"));

    size_t total = table.total;
    float *init = read_floats(dir, "init.bin", total);
    float *grads = read_floats(dir, "grads.bin", total * (size_t)steps);
    float *want_p = read_floats(dir, "expect_params.bin", total);
    float *want_m = read_floats(dir, "expect_mom.bin", total);
    float *results[2][2];
    int bad = 0;
    const int threads[2] = {1, 3};
    for (int r = 0; r < 2; r++) {
        cfg.nthreads = threads[r];
        struct nn_optim opt;
        nn_optim_init(&opt, &table, &cfg);
        for (int i = 0; i < table.n; i++) {
            nn_optim_set_group(&opt, i,
                               (int)json_integer_value(
                                   json_array_get(json_object_get(spec, "groups"), (size_t)i)));
        }
        float *params = malloc(total * sizeof(float));
        memcpy(params, init, total * sizeof(float));
        for (int s = 0; s < steps; s++) {
            json_t *lr = json_array_get(json_object_get(spec, "lrs"), (size_t)s);
            double group_lr[NN_OPTIM_MAX_GROUPS];
            for (int g = 0; g < NN_OPTIM_MAX_GROUPS; g++) {
                group_lr[g] = json_number_value(json_array_get(lr, (size_t)(g < 2 ? g : 0)));
            }
            if (normalize) {
                nn_optim_normalize_prototypes(&table, params);
            }
            nn_optim_step_groups(&opt, params, grads + (size_t)s * total, group_lr, s);
        }
        printf(" %d thread%s:\n", threads[r], threads[r] > 1 ? "s" : "");
        bad += compare("params", &table, params, want_p);
        bad += compare("momentum", &table, opt.momentum, want_m);
        results[r][0] = params;
        results[r][1] = malloc(total * sizeof(float));
        memcpy(results[r][1], opt.momentum, total * sizeof(float));
        nn_optim_free(&opt);
    }
    if (memcmp(results[0][0], results[1][0], total * sizeof(float)) ||
        memcmp(results[0][1], results[1][1], total * sizeof(float))) {
        fprintf(stderr, "  1 and 3 threads differ\n");
        bad++;
    }
    for (int r = 0; r < 2; r++) {
        free(results[r][0]);
        free(results[r][1]);
    }
    free(init);
    free(grads);
    free(want_p);
    free(want_m);
    nn_param_table_free(&table);
    json_decref(spec);
    printf(" %s\n", bad ? "MISMATCH" : "ok");
    return bad ? 1 : 0;
}

/* Checks that need no reference: hand-computed single steps. */
static void unit_checks(void)
{
    struct nn_param_table t;
    nn_param_table_init(&t);
    int64_t s2[1] = {2};
    nn_param_table_add(&t, "a.weight", 1, s2, 0);
    nn_param_table_add(&t, "zero.bias", 1, s2, 0);
    nn_param_table_add(&t, "prototypes.weight", 1, s2, NN_PARAM_PROTOTYPES);
    struct nn_optim_config cfg = nn_optim_config_swav(0.5, 1);
    struct nn_optim opt;
    nn_optim_init(&opt, &t, &cfg);
    float p[6] = {3, 4, 0, 0, 1, 1};
    const float g[6] = {0, 5, 7, 7, 1, 1};
    nn_optim_step(&opt, p, g, 2.0, 0);
    /* a: ||p|| 5, ||g|| 5: a = 0.001*5/(5 + 2.5 + 1e-8); d = (g + 0.5 p) a */
    float a = 0.001f * 5.0f / (5.0f + 2.5f + 1e-8f);
    float d0 = (0.0f + 0.5f * 3.0f) * a, d1 = (5.0f + 0.5f * 4.0f) * a;
    EXPECT(fabsf(p[0] - (3.0f - 2.0f * d0)) < 1e-7f && fabsf(p[1] - (4.0f - 2.0f * d1)) < 1e-7f,
           "larc step: %g %g", p[0], p[1]);
    /* zero param norm: g as is, no decay */
    EXPECT(p[2] == -14.0f && p[3] == -14.0f, "zero-norm rule: %g %g", p[2], p[3]);
    EXPECT(opt.momentum[2] == 7.0f, "momentum = g on the first step");
    /* prototypes frozen at iteration 0 < 1 */
    EXPECT(p[4] == 1.0f && p[5] == 1.0f && opt.momentum[4] == 0.0f, "frozen prototypes");
    nn_optim_step(&opt, p, g, 2.0, 1);
    EXPECT(p[4] != 1.0f && opt.momentum[4] != 0.0f, "prototypes move at iteration 1");
    nn_optim_free(&opt);
    nn_param_table_free(&t);

    float w[6] = {3, 4, 0, 0, 0, 0, };
    nn_prototypes_normalize(w, 3, 2);
    EXPECT(w[0] == 0.6f && w[1] == 0.8f && w[2] == 0.0f && w[3] == 0.0f, "normalize %g %g", w[0],
           w[1]);
    printf("unit checks: %s\n", failures ? "FAILED" : "ok");
}

/* --bench SPEC STEPS THREADS: times nn_optim_step (LARC) on the table of
 * SPEC (names, shapes, flags), prints "ms_per_step X" (scripts/bench-optim). */
static int bench(const char *specpath, int steps, int threads)
{
    json_error_t jerr;
    json_t *spec = json_load_file(specpath, 0, &jerr);
    if (!spec) {
        fprintf(stderr, "%s: %s\n", specpath, jerr.text);
        return 2;
    }
    struct nn_param_table table;
    nn_param_table_init(&table);
    json_t *names = json_object_get(spec, "names");
    for (size_t i = 0; i < json_array_size(names); i++) {
        json_t *sh = json_array_get(json_object_get(spec, "shapes"), i);
        int64_t shape[NN_PARAM_MAX_DIMS];
        for (size_t d = 0; d < json_array_size(sh); d++) {
            shape[d] = json_integer_value(json_array_get(sh, d));
        }
        unsigned flags = (unsigned)json_integer_value(json_array_get(json_object_get(spec, "flags"), i));
        nn_param_table_add(&table, json_string_value(json_array_get(names, i)),
                           (int)json_array_size(sh), shape, flags ? NN_PARAM_PROTOTYPES : 0);
    }
    struct nn_optim_config cfg = nn_optim_config_swav(1e-6, 0);
    cfg.nthreads = threads;
    struct nn_optim opt;
    nn_optim_init(&opt, &table, &cfg);
    float *p = malloc(table.total * sizeof(float)), *g = malloc(table.total * sizeof(float));
    for (size_t i = 0; i < table.total; i++) {
        p[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
        g[i] = (float)((i * 40503u) % 1000) * 1e-4f - 0.05f;
    }
    nn_optim_step(&opt, p, g, 0.1, 0); /* warm-up: pages touched */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int s = 0; s < steps; s++) {
        nn_optim_normalize_prototypes(&table, p);
        nn_optim_step(&opt, p, g, 0.1, s + 1);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = ((double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-6) /
                steps;
    printf("params %zu tensors %d threads %d\nms_per_step %.3f\n", table.total, table.n, threads, ms);
    free(p);
    free(g);
    nn_optim_free(&opt);
    nn_param_table_free(&table);
    json_decref(spec);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "--bench")) {
        return bench(argv[2], atoi(argv[3]), atoi(argv[4]));
    }
    if (argc < 2) {
        unit_checks();
        return failures ? 1 : 0;
    }
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        rc |= run_case(argv[i]);
    }
    return rc;
}
