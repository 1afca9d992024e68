/* swav-loadcount: a consumer with nothing to train.  It binds a ROUTER,
 * orders epochs of batches from whatever swav-loader processes connect
 * (through loader/client.h, as a trainer does), checks what comes back and
 * counts images per second.  Used by the loader tests (determinism, faults:
 * --hashes writes one line per step with hashes of every frame) and by
 * scripts/bench-loader (the end-to-end rate with N loader processes).
 *
 * Checks on every batch: it is the next step in sequence, of the order's
 * size, and its labels are the index's labels of the ordered images (except
 * at substituted positions).  Exit 0 when all epochs came through, 1 on a
 * check failure or a timeout, 2 on bad flags. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/timeutil.h"
#include "loader/client.h"
#include "loader/index.h"

#define TAG_PERMUTATION 0x5045524du /* "PERM": RNG purpose tag of the epoch's order */

struct config {
    const char *bind;
    const char *data_path;
    const char *dump_path;
    const char *dataset;
    const char *run;
    const char *mode;
    const char *hashes;
    int64_t epochs, start_epoch, batch_size, seed, window, resize, n_images, rank, world_size;
    int64_t step_ms, timeout_s, silence_ms, deadline_ms, wait_loaders;
    bool shuffle;
    struct swav_int_list nmb_crops, size_crops;
    struct swav_float_list min_scale_crops, max_scale_crops;
};

#define OFF(f) offsetof(struct config, f)
#define NOLIM SWAV_FLAG_NO_MIN, SWAV_FLAG_NO_MAX
static const struct swav_flag flags[] = {
    {"bind", SWAV_FLAG_STR, OFF(bind), 0, 0, "", "endpoint the loaders connect to"},
    {"data_path", SWAV_FLAG_STR, OFF(data_path), 0, 0, "", "the data set (indexed for its size and labels)"},
    {"dump_path", SWAV_FLAG_STR, OFF(dump_path), 0, 0, "", "index cache folder"},
    {"dataset", SWAV_FLAG_STR, OFF(dataset), 0, 0, "", "dataset tag put in the orders"},
    {"run", SWAV_FLAG_STR, OFF(run), 0, 0, "swav", "run id"},
    {"mode", SWAV_FLAG_STR, OFF(mode), 0, 0, "swav", "swav | eval_train | eval_val"},
    {"hashes", SWAV_FLAG_STR, OFF(hashes), 0, 0, "", "write one hash line per step to this file"},
    {"epochs", SWAV_FLAG_INT, OFF(epochs), 1, 1e6, "1", "epochs to order"},
    {"start_epoch", SWAV_FLAG_INT, OFF(start_epoch), 0, 1e6, "0", "first epoch number"},
    {"batch_size", SWAV_FLAG_INT, OFF(batch_size), 1, 65536, "32", "images per order"},
    {"seed", SWAV_FLAG_INT, OFF(seed), 0, 9.2e18, "31", "run seed"},
    {"window", SWAV_FLAG_INT, OFF(window), 1, 1024, "8", "orders outstanding"},
    {"resize", SWAV_FLAG_INT, OFF(resize), 0, 4096, "0", "eval_val: shorter side before the crop"},
    {"n_images", SWAV_FLAG_INT, OFF(n_images), 0, 1ll << 31, "0", "use only this many (0: all)"},
    {"rank", SWAV_FLAG_INT, OFF(rank), 0, 65535, "0", "shard of the epoch to order"},
    {"world_size", SWAV_FLAG_INT, OFF(world_size), 1, 65536, "1", "number of shards"},
    {"step_ms", SWAV_FLAG_INT, OFF(step_ms), 0, 1e6, "0", "sleep per batch (a stand-in for training)"},
    {"timeout_s", SWAV_FLAG_INT, OFF(timeout_s), 1, 1e6, "120", "give up when one batch takes longer"},
    {"silence_ms", SWAV_FLAG_INT, OFF(silence_ms), 100, 1e7, "5000", "a loader silent this long is dead"},
    {"deadline_ms", SWAV_FLAG_INT, OFF(deadline_ms), 100, 1e8, "120000", "re-issue orders older than this"},
    {"wait_loaders", SWAV_FLAG_INT, OFF(wait_loaders), 0, 1024, "0", "wait for this many loaders before ordering"},
    {"shuffle", SWAV_FLAG_BOOL, OFF(shuffle), 0, 0, "true", "permute each epoch (seed, epoch)"},
    {"nmb_crops", SWAV_FLAG_INT_LIST, OFF(nmb_crops), 1, 64, "2 6", "crops per group"},
    {"size_crops", SWAV_FLAG_INT_LIST, OFF(size_crops), 1, 4096, "224 96", "crop sides"},
    {"min_scale_crops", SWAV_FLAG_FLOAT_LIST, OFF(min_scale_crops), 0, 1, "0.14 0.05", "min scales"},
    {"max_scale_crops", SWAV_FLAG_FLOAT_LIST, OFF(max_scale_crops), 0, 1, "1 0.14", "max scales"},
};
#undef OFF

static volatile sig_atomic_t g_stop;
static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static uint64_t fnv(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

int main(int argc, char **argv)
{
    swav_log_init("loadcount", -1);
    struct config cfg;
    struct swav_flag_set set = {flags, sizeof flags / sizeof flags[0], &cfg};
    char err[1024];
    int rc = swav_flags_parse(&set, 1, argc - 1, argv + 1, err, sizeof err);
    if (rc == 1) {
        swav_flags_usage(stdout, "swav-loadcount", &set, 1);
        return 0;
    }
    if (rc != 0) {
        fprintf(stderr, "swav-loadcount: %s\n", err);
        return 2;
    }
    if (!*cfg.bind || !*cfg.data_path) {
        fprintf(stderr, "swav-loadcount: --bind and --data_path are required\n");
        return 2;
    }
    enum proto_mode mode = PROTO_MODE_SWAV;
    if (!strcmp(cfg.mode, "eval_train")) mode = PROTO_MODE_EVAL_TRAIN;
    else if (!strcmp(cfg.mode, "eval_val")) mode = PROTO_MODE_EVAL_VAL;
    else if (strcmp(cfg.mode, "swav") != 0) {
        fprintf(stderr, "swav-loadcount: --mode %s: swav, eval_train or eval_val\n", cfg.mode);
        return 2;
    }
    int ng = cfg.nmb_crops.n;
    if (ng < 1 || ng > PROTO_MAX_GROUPS || cfg.size_crops.n != ng || cfg.min_scale_crops.n != ng ||
        cfg.max_scale_crops.n != ng) {
        fprintf(stderr, "swav-loadcount: --nmb_crops, --size_crops, --min_scale_crops and "
                        "--max_scale_crops need the same length (1..%d)\n", PROTO_MAX_GROUPS);
        return 2;
    }
    struct loader_index *ix = NULL;
    struct loader_index_opts iopts = {.cache_dir = cfg.dump_path, .threads = 2};
    if (loader_index_open(&ix, cfg.data_path, &iopts, err, sizeof err) != LOADER_INDEX_OK) {
        LOG_ERROR("%s", err);
        return 1;
    }
    uint32_t n = ix->n;
    if (cfg.n_images > 0 && (uint64_t)cfg.n_images < n) n = (uint32_t)cfg.n_images;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct loader_client_opts copts = {.bind = cfg.bind, .run = cfg.run,
                                       .window = (uint32_t)cfg.window,
                                       .silence_ms = (int)cfg.silence_ms,
                                       .deadline_ms = (int)cfg.deadline_ms};
    struct loader_client *cl = NULL;
    if (loader_client_new(&cl, &copts, err, sizeof err) != 0) {
        LOG_ERROR("%s", err);
        return 1;
    }
    FILE *hf = NULL;
    if (*cfg.hashes && !(hf = fopen(cfg.hashes, "w"))) {
        LOG_ERROR("cannot write %s", cfg.hashes);
        return 1;
    }
    LOG_INFO("bound %s; ordering %" PRId64 " epoch%s of %u images, batch %" PRId64,
             loader_client_endpoint(cl), cfg.epochs, cfg.epochs == 1 ? "" : "s", n,
             cfg.batch_size);

    if (cfg.wait_loaders > 0) {
        /* The client learns of loaders while it waits for batches: give it a
         * no-op turn until enough have said ready. */
        struct loader_client_stats st;
        int64_t until = swav_now_ms() + cfg.timeout_s * 1000;
        for (;;) {
            loader_client_poll(cl, 50);
            loader_client_get_stats(cl, &st);
            if (st.loaders_alive >= (uint32_t)cfg.wait_loaders || g_stop) break;
            if (swav_now_ms() > until) {
                LOG_ERROR("only %u of %" PRId64 " loaders after %" PRId64 " s", st.loaders_alive,
                          cfg.wait_loaders, cfg.timeout_s);
                return 1;
            }
        }
    }

    uint32_t *perm = swav_xmalloc((size_t)ix->n * sizeof *perm);
    uint32_t *shard = swav_xmalloc((size_t)ix->n * sizeof *shard);
    /* Orders of the epoch: step k takes shard[k*B .. k*B+B). */
    struct pending { uint64_t step; uint32_t epoch, off, cnt; } *pend =
        swav_xcalloc((size_t)cfg.window + 1, sizeof *pend);
    uint32_t pend_head = 0, pend_n = 0;
    uint64_t images = 0, first_images = 0, batches = 0, step = 0, next_step_out = 0;
    int failed = 0;
    double t_first = 0, t_start = swav_now_s();
    for (int64_t e = cfg.start_epoch; e < cfg.start_epoch + cfg.epochs && !failed && !g_stop; e++) {
        for (uint32_t i = 0; i < ix->n; i++) perm[i] = i;
        if (cfg.shuffle) {
            struct swav_rng r;
            swav_rng_init(&r, (uint64_t)cfg.seed, (uint32_t)e, 0, TAG_PERMUTATION);
            swav_rng_shuffle_u32(&r, perm, ix->n);
        }
        uint32_t ns = 0;
        for (uint32_t i = (uint32_t)cfg.rank; i < n; i += (uint32_t)cfg.world_size) shard[ns++] = perm[i];
        uint32_t off = 0;
        /* Submit while the window has room, take batches in order. */
        while ((off < ns || pend_n > 0) && !failed && !g_stop) {
            while (off < ns && loader_client_outstanding(cl) < (uint32_t)cfg.window) {
                uint32_t cnt = ns - off < (uint32_t)cfg.batch_size ? ns - off : (uint32_t)cfg.batch_size;
                struct proto_order o = {.epoch = (uint32_t)e, .step = step, .rank = (uint32_t)cfg.rank,
                                        .seed = (uint64_t)cfg.seed, .mode = mode,
                                        .ngroups = (uint32_t)ng, .resize = (uint32_t)cfg.resize,
                                        .n_images = cnt};
                snprintf(o.dataset, sizeof o.dataset, "%s", cfg.dataset);
                for (int g = 0; g < ng; g++) {
                    o.nmb_crops[g] = (uint32_t)cfg.nmb_crops.v[g];
                    o.size_crops[g] = (uint32_t)cfg.size_crops.v[g];
                    o.min_scale_crops[g] = cfg.min_scale_crops.v[g];
                    o.max_scale_crops[g] = cfg.max_scale_crops.v[g];
                }
                uint64_t dim = cnt;
                SWAV_ASSERT(proto_tensor_set(&o.indices, PROTO_DTYPE_U32, shard + off, 1, &dim) ==
                            PROTO_OK);
                enum loader_client_status cs = loader_client_submit(cl, &o, NULL);
                if (cs != LOADER_CLIENT_OK) {
                    LOG_ERROR("submit step %" PRIu64 ": %s: %s", step,
                              loader_client_status_str(cs), loader_client_last_error(cl));
                    failed = 1;
                    break;
                }
                pend[(pend_head + pend_n) % (cfg.window + 1)] =
                    (struct pending){step, (uint32_t)e, off, cnt};
                pend_n++;
                off += cnt;
                step++;
            }
            if (failed || pend_n == 0) break;
            const struct proto_batch *b = NULL;
            int64_t until = swav_now_ms() + cfg.timeout_s * 1000;
            enum loader_client_status cs;
            do {
                cs = loader_client_next(cl, &b, 500);
            } while (cs == LOADER_CLIENT_TIMEOUT && swav_now_ms() < until && !g_stop);
            if (cs != LOADER_CLIENT_OK) {
                LOG_ERROR("waiting for step %" PRIu64 ": %s %s", next_step_out,
                          loader_client_status_str(cs), loader_client_last_error(cl));
                failed = 1;
                break;
            }
            struct pending p = pend[pend_head];
            pend_head = (pend_head + 1) % (uint32_t)(cfg.window + 1);
            pend_n--;
            /* The checks of the fault test: step order, size, labels. */
            if (b->step != next_step_out || b->step != p.step || b->epoch != p.epoch ||
                b->n_images != p.cnt) {
                LOG_ERROR("batch out of sequence: step %" PRIu64 " epoch %u (%u images), "
                          "expected step %" PRIu64 " epoch %u (%u images)", b->step, b->epoch,
                          b->n_images, p.step, p.epoch, p.cnt);
                failed = 1;
                break;
            }
            const int32_t *labels = b->labels.data;
            for (uint32_t i = 0; i < b->n_images && !failed; i++) {
                int subst = 0;
                for (uint32_t k = 0; k < b->n_notes; k++) {
                    subst |= b->notes[k].position == i && b->notes[k].code == PROTO_NOTE_SUBSTITUTED;
                }
                int32_t want = ix->entries[shard[p.off + i]].label;
                if (!subst && labels[i] != want) {
                    LOG_ERROR("step %" PRIu64 " position %u: label %d, the index says %d",
                              b->step, i, labels[i], want);
                    failed = 1;
                }
            }
            if (hf) {
                fprintf(hf, "step %" PRIu64 " epoch %u n %u idx %016" PRIx64, b->step, b->epoch,
                        b->n_images, fnv(shard + p.off, (size_t)p.cnt * 4));
                for (uint32_t g = 0; g < b->ngroups; g++) {
                    fprintf(hf, " g%u %016" PRIx64, g, fnv(b->crops[g].data, b->crops[g].nbytes));
                }
                fprintf(hf, " labels %016" PRIx64 " notes %u", fnv(b->labels.data, b->labels.nbytes),
                        b->n_notes);
                for (uint32_t k = 0; k < b->n_notes; k++) {
                    fprintf(hf, " [%u:%u]", b->notes[k].position, b->notes[k].code);
                }
                fprintf(hf, "\n");
                fflush(hf); /* tests watch the progress */
            }
            if (batches == 0) {
                t_first = swav_now_s();
                first_images = b->n_images;
            }
            images += b->n_images;
            batches++;
            next_step_out++;
            if (cfg.step_ms > 0) swav_sleep_ms(cfg.step_ms);
        }
    }
    double t_end = swav_now_s();
    struct loader_client_stats st;
    loader_client_get_stats(cl, &st);
    if (hf) fclose(hf);
    double rate_all = images / (t_end - t_start > 1e-9 ? t_end - t_start : 1e-9);
    double rate = batches > 1 ? (double)(images - first_images) / (t_end - t_first > 1e-9 ? t_end - t_first : 1e-9)
                              : rate_all;
    printf("loadcount: %" PRIu64 " images in %" PRIu64 " batches, %.2f s; reissued %" PRIu64
           ", duplicates %" PRIu64 ", stale %" PRIu64 ", refusals %" PRIu64 ", bad %" PRIu64
           ", substituted %" PRIu64 ", loaders alive %u; %.2f images/s overall\n",
           images, batches, t_end - t_start, st.reissued, st.duplicates, st.stale, st.refusals,
           st.bad_messages, st.substituted, st.loaders_alive, rate_all);
    printf("RESULT loadcount_images_per_s %.2f\n", rate);
    fflush(stdout);
    loader_client_destroy(&cl);
    loader_index_destroy(&ix);
    free(perm);
    free(shard);
    free(pend);
    if (g_stop && !failed) {
        LOG_WARN("stopped by a signal before the end");
        return 1;
    }
    return failed ? 1 : 0;
}
