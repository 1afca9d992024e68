/* swav-loader: serves work orders of trainers and the evaluator.
 *
 * One DEALER per consumer endpoint (--connect, repeated): a DEALER connected
 * to several ROUTERs would spread its replies round-robin, and a batch must
 * go back to the consumer that ordered it.  Every --beat_ms the loader says
 * `ready` on each socket with its credit (the number of orders it holds for
 * that consumer at once): that is how a consumer learns of it, and how it
 * learns that it is alive.  ZeroMQ reconnects by itself when a consumer
 * restarts; the next `ready` introduces the loader to the new one.
 *
 * Work: the main thread owns the sockets; N worker threads take images of
 * the oldest order in hand (all workers on one order first, so a batch is
 * done as early as possible), decode and augment them (loader/augment.h)
 * straight into the batch's frames, and wake the main thread through a pipe
 * when an order is complete.  Crops depend only on (seed, epoch, image,
 * crop): any loader gives the same bytes for the same order.
 *
 * A file that fails to read or decode is replaced by a deterministic other
 * image, drawn from swav_rng(seed, epoch, image, LOADER_TAG_SUBSTITUTE + try),
 * reported in the batch's notes and counted.  A bad message gets a
 * rate-limited log line and an `error` answer; nothing from the wire can
 * crash the process.  SIGTERM/SIGINT: announce credit 0, refuse new orders
 * (error BUSY, so consumers re-issue them at once), finish and send the
 * orders in hand, exit 0. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "common/check.h"
#include "common/flags.h"
#include "common/log.h"
#include "common/rng.h"
#include "common/timeutil.h"
#include "loader/augment.h"
#include "loader/index.h"
#include "proto/wire.h"

#define MAX_CONSUMERS 32
#define MAX_DATASETS 8
#define LOADER_TAG_SUBSTITUTE 0x53554200u /* "SUB\0": RNG purpose tag, + try */
#define SUBSTITUTE_TRIES 16
#define MAX_FILE_BYTES (256u << 20)

struct config {
    const char *data_path;
    const char *run;
    const char *loader_id;
    const char *dump_path;
    int64_t workers;
    int64_t credit;
    int64_t beat_ms;
    int64_t heartbeat_ms;
    int64_t heartbeat_timeout_ms;
    int64_t max_order_bytes;
    int64_t max_batch_bytes;
    int64_t index_threads;
    int64_t report_s;
    bool index_only;
    int64_t delay_ms;
    const char *curve_secret;
    const char *curve_server_public;
};

#define OFF(f) offsetof(struct config, f)
static const struct swav_flag loader_flags[] = {
    {"data_path", SWAV_FLAG_STR, OFF(data_path), 0, 0, "",
     "image folder (ImageFolder or flat) served for dataset tags \"\" and \"train\""},
    {"run", SWAV_FLAG_STR, OFF(run), 0, 0, "swav", "run id carried by every message"},
    {"loader_id", SWAV_FLAG_STR, OFF(loader_id), 0, 0, "", "name in logs (default host:pid)"},
    {"dump_path", SWAV_FLAG_STR, OFF(dump_path), 0, 0, "",
     "run folder: the dataset index cache and bad-file report go there"},
    {"workers", SWAV_FLAG_INT, OFF(workers), 1, 256, "2", "decode/augment threads"},
    {"credit", SWAV_FLAG_INT, OFF(credit), 1, 1024, "2", "orders held per consumer at once"},
    {"beat_ms", SWAV_FLAG_INT, OFF(beat_ms), 10, 60000, "500",
     "interval of the `ready` keepalive on each consumer socket"},
    {"heartbeat_ms", SWAV_FLAG_INT, OFF(heartbeat_ms), 0, 600000, "1000",
     "ZMTP heartbeat interval (0: off)"},
    {"heartbeat_timeout_ms", SWAV_FLAG_INT, OFF(heartbeat_timeout_ms), 0, 3600000, "5000",
     "ZMTP heartbeat timeout"},
    {"max_order_bytes", SWAV_FLAG_INT, OFF(max_order_bytes), 4096, 1ll << 31, "4194304",
     "ZMQ_MAXMSGSIZE of the consumer sockets (orders are small)"},
    {"max_batch_bytes", SWAV_FLAG_INT, OFF(max_batch_bytes), 1024, 1ll << 40, "1073741824",
     "largest batch (crop bytes) an order may ask for"},
    {"index_threads", SWAV_FLAG_INT, OFF(index_threads), 0, 256, "0",
     "threads for the header probes of the index (0: --workers)"},
    {"report_s", SWAV_FLAG_INT, OFF(report_s), 0, 86400, "30",
     "seconds between counter lines on stderr (0: never)"},
    {"index_only", SWAV_FLAG_BOOL, OFF(index_only), 0, 0, "false",
     "build (or check) the index cache in --dump_path and exit"},
    {"delay_ms", SWAV_FLAG_INT, OFF(delay_ms), 0, 60000, "0",
     "sleep this long per image (tests: a slow loader holds its orders longer)"},
    {"curve_secret", SWAV_FLAG_STR, OFF(curve_secret), 0, 0, "",
     "CURVE: this loader's keypair file (swav keygen); with --curve_server_public"},
    {"curve_server_public", SWAV_FLAG_STR, OFF(curve_server_public), 0, 0, "",
     "CURVE: the consumers' public key file; every --connect is then encrypted"},
};
#undef OFF

/* ---- state ------------------------------------------------------------------------ */

struct dataset {
    char tag[PROTO_MAX_ID + 1];
    struct loader_index *ix;
};

enum job_stage { JOB_FREE = 0, JOB_WORKING, JOB_DONE };

struct job {
    enum job_stage stage;
    uint64_t seq;
    int consumer;
    struct proto_order order; /* indices.data -> idx */
    uint32_t *idx;
    size_t idx_cap;
    const struct loader_index *ix;
    struct loader_crop_spec spec;
    uint8_t *crops[PROTO_MAX_GROUPS];
    size_t crops_cap[PROTO_MAX_GROUPS];
    size_t crop_bytes[PROTO_MAX_GROUPS]; /* bytes per image in group g */
    int32_t *labels;
    size_t labels_cap;
    uint32_t next_pos, done;
    struct proto_note notes[PROTO_MAX_LIST];
    uint32_t n_notes, notes_dropped, substituted;
    double work_ms;
};

struct loader {
    struct config cfg;
    struct dataset datasets[MAX_DATASETS];
    int ndatasets;
    char loader_id[PROTO_MAX_ID + 1];

    void *ctx;
    void *socks[MAX_CONSUMERS];
    void *monitors[MAX_CONSUMERS]; /* PAIR: connection events of socks[k] */
    unsigned generation[MAX_CONSUMERS];
    int64_t rebuild_at[MAX_CONSUMERS]; /* the connection dropped: a fresh socket then (0: none) */
    int handshake[MAX_CONSUMERS];      /* this socket's handshake: 0 pending, 1 done, -1 failed */
    const char *endpoints[MAX_CONSUMERS];
    int nsocks;
    uint32_t in_hand[MAX_CONSUMERS];

    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job **jobs;
    int njobs, max_jobs;
    uint64_t seq;
    int quit;
    int pipe_fd[2];
    pthread_t *threads;

    struct proto_rx rx;
    struct proto_msg msg;
    struct proto_batch batch;

    /* counters */
    uint64_t images, batches, substituted, refused, bad, dropped;
};

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* ---- workers ---------------------------------------------------------------------- */

struct worker {
    struct loader *L;
    struct loader_scratch *scratch;
    uint8_t *file;
    size_t file_cap;
};

/* Read a whole file into w->file; 0 or -1 with a message. */
static int read_file(struct worker *w, const char *path, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 0 || (uint64_t)st.st_size > MAX_FILE_BYTES) {
        snprintf(err, errlen, "cannot stat or larger than %u bytes", MAX_FILE_BYTES);
        close(fd);
        return -1;
    }
    size_t want = (size_t)st.st_size;
    if (want + 1 > w->file_cap) {
        free(w->file);
        w->file_cap = want + 1 + (want >> 2);
        w->file = swav_xmalloc(w->file_cap);
    }
    size_t have = 0;
    while (have < want) {
        ssize_t r = read(fd, w->file + have, want - have);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            snprintf(err, errlen, "read error: %s", strerror(errno));
            close(fd);
            return -1;
        }
        if (r == 0) break; /* shrank since the stat: decode what is there */
        have += (size_t)r;
    }
    close(fd);
    *len = have;
    return 0;
}

static enum loader_status make_image(struct worker *w, const struct job *j, uint32_t image,
                                     uint32_t rng_image, uint8_t *const out[], char *err,
                                     size_t errlen)
{
    char path[4096];
    if (loader_index_path(j->ix, image, path, sizeof path) < 0) {
        snprintf(err, errlen, "path too long");
        return LOADER_ERR_UNSUPPORTED;
    }
    size_t len = 0;
    if (read_file(w, path, &len, err, errlen) != 0) return LOADER_ERR_EMPTY;
    return loader_make_crops(w->scratch, w->file, len, &j->spec, j->order.seed, j->order.epoch,
                             rng_image, out, NULL, err, errlen);
}

static void add_note(struct job *j, uint32_t pos, uint32_t code, const char *text)
{
    if (j->n_notes < PROTO_MAX_LIST) {
        struct proto_note *n = &j->notes[j->n_notes++];
        n->position = pos;
        n->code = code;
        snprintf(n->text, sizeof n->text, "%s", text);
    } else {
        j->notes_dropped++;
    }
}

/* Crops and label of position pos of job j.  Called without the lock: the
 * position is this worker's alone. */
static void work_one(struct worker *w, struct job *j, uint32_t pos, char *note, size_t notelen,
                     int *substituted)
{
    uint8_t *out[PROTO_MAX_GROUPS];
    for (uint32_t g = 0; g < j->order.ngroups; g++) out[g] = j->crops[g] + pos * j->crop_bytes[g];
    uint32_t image = j->idx[pos];
    char err[256] = "";
    *substituted = 0;
    enum loader_status st = make_image(w, j, image, image, out, err, sizeof err);
    uint32_t used = image;
    if (st != LOADER_OK) {
        char first[256];
        snprintf(first, sizeof first, "%s", err);
        uint32_t n = j->ix->n;
        for (uint32_t t = 0; t < SUBSTITUTE_TRIES && st != LOADER_OK && n > 1; t++) {
            struct swav_rng r;
            swav_rng_init(&r, j->order.seed, j->order.epoch, image, LOADER_TAG_SUBSTITUTE + t);
            uint32_t cand = swav_rng_below(&r, n);
            if (cand == image) continue;
            used = cand;
            /* Keyed by the ordered image, so positions stay distinct. */
            st = make_image(w, j, cand, image, out, err, sizeof err);
        }
        *substituted = 1;
        if (st == LOADER_OK) {
            snprintf(note, notelen, "image %u (%.100s): %.80s; replaced by image %u", image,
                     j->ix->entries[image].path, first, used);
        } else {
            for (uint32_t g = 0; g < j->order.ngroups; g++) memset(out[g], 0, j->crop_bytes[g]);
            used = UINT32_MAX;
            snprintf(note, notelen, "image %u (%.100s): %.80s; no substitute decoded, zeros",
                     image, j->ix->entries[image].path, first);
        }
        LOG_LIMITED(SWAV_LOG_WARN, "%s", note);
    }
    j->labels[pos] = used == UINT32_MAX ? -1 : j->ix->entries[used].label;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct loader *L = w->L;
    char note[PROTO_MAX_NOTE_TEXT + 1];
    PTHREAD_CHECK(pthread_mutex_lock(&L->mu));
    for (;;) {
        struct job *j = NULL;
        while (!L->quit) {
            for (int i = 0; i < L->njobs; i++) {
                struct job *c = L->jobs[i];
                if (c->stage == JOB_WORKING && c->next_pos < c->order.n_images &&
                    (!j || c->seq < j->seq)) {
                    j = c;
                }
            }
            if (j) break;
            PTHREAD_CHECK(pthread_cond_wait(&L->cv, &L->mu));
        }
        if (!j) break;
        uint32_t pos = j->next_pos++;
        PTHREAD_CHECK(pthread_mutex_unlock(&L->mu));
        int64_t t0 = swav_now_ms();
        int substituted = 0;
        work_one(w, j, pos, note, sizeof note, &substituted);
        if (L->cfg.delay_ms > 0) swav_sleep_ms(L->cfg.delay_ms);
        double ms = (double)(swav_now_ms() - t0);
        PTHREAD_CHECK(pthread_mutex_lock(&L->mu));
        if (substituted) {
            add_note(j, pos, PROTO_NOTE_SUBSTITUTED, note);
            j->substituted++;
        }
        j->work_ms += ms;
        if (++j->done == j->order.n_images) {
            j->stage = JOB_DONE;
            char b = 1;
            ssize_t rc = write(L->pipe_fd[1], &b, 1);
            (void)rc; /* a full pipe already holds a wake-up */
        }
    }
    PTHREAD_CHECK(pthread_mutex_unlock(&L->mu));
    loader_scratch_destroy(&w->scratch);
    free(w->file);
    return NULL;
}

/* ---- messages --------------------------------------------------------------------- */

static void send_ready(struct loader *L, int k, int stopping)
{
    struct proto_ready r = {.credit = stopping ? 0 : (uint32_t)L->cfg.credit,
                            .workers = (uint32_t)L->cfg.workers};
    snprintf(r.loader_id, sizeof r.loader_id, "%s", L->loader_id);
    /* The data sets and their sizes, so that a consumer need not ask; the
     * untagged one answers to "train" (dataset_for) unless a tagged one does. */
    r.has_datasets = true;
    bool tagged_train = false;
    for (int i = 0; i < L->ndatasets; i++) tagged_train |= !strcmp(L->datasets[i].tag, "train");
    for (int i = 0; i < L->ndatasets && r.n_datasets < PROTO_MAX_LIST; i++) {
        const char *tag = L->datasets[i].tag[0] ? L->datasets[i].tag : "train";
        if (!L->datasets[i].tag[0] && tagged_train) continue;
        struct proto_counter *d = &r.datasets[r.n_datasets++];
        snprintf(d->name, sizeof d->name, "%s", tag);
        d->value = (double)L->datasets[i].ix->n;
    }
    SWAV_ASSERT(proto_ready_encode(&L->msg, L->cfg.run, &r) == PROTO_OK);
    /* EAGAIN: not connected now (ZMQ_IMMEDIATE); the next beat will do. */
    proto_send(L->socks[k], NULL, 0, &L->msg, ZMQ_DONTWAIT);
}

static void send_error(struct loader *L, int k, enum proto_errcode code, const char *field,
                       uint64_t step, const char *text)
{
    struct proto_error *e = swav_xcalloc(1, sizeof *e);
    e->code = code;
    e->step = step;
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    snprintf(e->message, sizeof e->message, "%s", text);
    if (proto_error_encode(&L->msg, L->cfg.run, e) == PROTO_OK) {
        proto_send(L->socks[k], NULL, 0, &L->msg, ZMQ_DONTWAIT);
    }
    free(e);
}

static const struct loader_index *dataset_for(struct loader *L, const char *tag)
{
    for (int i = 0; i < L->ndatasets; i++) {
        if (!strcmp(L->datasets[i].tag, tag)) return L->datasets[i].ix;
    }
    if (!strcmp(tag, "train") || !*tag) {
        for (int i = 0; i < L->ndatasets; i++) {
            if (!L->datasets[i].tag[0]) return L->datasets[i].ix;
        }
    }
    return NULL;
}

static struct job *job_slot(struct loader *L)
{
    for (int i = 0; i < L->njobs; i++) {
        if (L->jobs[i]->stage == JOB_FREE) return L->jobs[i];
    }
    if (L->njobs == L->max_jobs) return NULL;
    struct job *j = swav_xcalloc(1, sizeof *j);
    L->jobs[L->njobs++] = j;
    return j;
}

static void grow(void **p, size_t *cap, size_t need)
{
    if (*cap >= need) return;
    free(*p);
    *p = swav_xmalloc(need);
    *cap = need;
}

static void on_order(struct loader *L, int k, int stopping)
{
    struct proto_order o;
    struct proto_diag diag = {0};
    struct proto_decode_opts dopts = {.run = L->cfg.run, .max_tensor_bytes = 1ull << 20};
    enum proto_status ps = proto_order_decode(L->rx.frames, L->rx.nframes, &dopts, &o, &diag);
    char msg[600];
    if (ps != PROTO_OK) {
        proto_diag_format(msg, sizeof msg, PROTO_TYPE_ORDER, ps, &diag);
        L->bad++;
        LOG_LIMITED(SWAV_LOG_WARN, "bad order from %s dropped: %s", L->endpoints[k], msg);
        send_error(L, k, ps == PROTO_ERR_WRONG_RUN ? PROTO_ERRC_WRONG_RUN : PROTO_ERRC_BAD_MESSAGE,
                   diag.field, 0, msg);
        return;
    }
    if (stopping) {
        L->refused++;
        send_error(L, k, PROTO_ERRC_BUSY, "", o.step, "loader stopping");
        return;
    }
    const struct loader_index *ix = dataset_for(L, o.dataset);
    if (!ix) {
        snprintf(msg, sizeof msg, "order step %" PRIu64 ": no data set '%s' on this loader",
                 o.step, o.dataset);
        goto refuse;
    }
    struct loader_crop_spec spec = {.mode = (int)o.mode, .ngroups = (int)o.ngroups,
                                    .resize = (int)o.resize};
    uint64_t per_image = 0;
    for (uint32_t g = 0; g < o.ngroups && g < LOADER_MAX_GROUPS; g++) {
        spec.nmb_crops[g] = (int)o.nmb_crops[g];
        spec.size_crops[g] = (int)o.size_crops[g];
        spec.min_scale[g] = o.min_scale_crops[g];
        spec.max_scale[g] = o.max_scale_crops[g];
        per_image += (uint64_t)o.nmb_crops[g] * o.size_crops[g] * o.size_crops[g] * 3;
    }
    char err[300];
    if (o.ngroups > LOADER_MAX_GROUPS || loader_crop_spec_check(&spec, err, sizeof err) != LOADER_OK) {
        snprintf(msg, sizeof msg, "order step %" PRIu64 ": %s", o.step,
                 o.ngroups > LOADER_MAX_GROUPS ? "too many groups" : err);
        goto refuse;
    }
    if (per_image * o.n_images > (uint64_t)L->cfg.max_batch_bytes) {
        snprintf(msg, sizeof msg, "order step %" PRIu64 ": batch of %" PRIu64
                 " bytes over --max_batch_bytes %" PRId64, o.step, per_image * o.n_images,
                 L->cfg.max_batch_bytes);
        goto refuse;
    }
    const uint32_t *idx = o.indices.data;
    for (uint32_t i = 0; i < o.n_images; i++) {
        uint32_t v;
        memcpy(&v, idx + i, sizeof v);
        if (v >= ix->n) {
            snprintf(msg, sizeof msg, "order step %" PRIu64 ": image index %u at position %u "
                     "outside the data set (%u images)", o.step, v, i, ix->n);
            goto refuse;
        }
    }
    PTHREAD_CHECK(pthread_mutex_lock(&L->mu));
    struct job *j = job_slot(L);
    PTHREAD_CHECK(pthread_mutex_unlock(&L->mu));
    if (!j) {
        L->refused++;
        LOG_LIMITED(SWAV_LOG_WARN, "%s sent more orders than its credit: step %" PRIu64
                    " refused (busy)", L->endpoints[k], o.step);
        send_error(L, k, PROTO_ERRC_BUSY, "", o.step, "loader busy: more orders than credit");
        return;
    }
    /* The job is FREE: no worker looks at it until it turns WORKING. */
    grow((void **)&j->idx, &j->idx_cap, (size_t)o.n_images * sizeof(uint32_t));
    memcpy(j->idx, o.indices.data, (size_t)o.n_images * sizeof(uint32_t));
    grow((void **)&j->labels, &j->labels_cap, (size_t)o.n_images * sizeof(int32_t));
    for (uint32_t g = 0; g < o.ngroups; g++) {
        j->crop_bytes[g] = (size_t)o.nmb_crops[g] * o.size_crops[g] * o.size_crops[g] * 3;
        grow((void **)&j->crops[g], &j->crops_cap[g], j->crop_bytes[g] * o.n_images);
    }
    j->order = o;
    j->order.indices.data = j->idx;
    j->ix = ix;
    j->spec = spec;
    j->consumer = k;
    j->next_pos = j->done = 0;
    j->n_notes = j->notes_dropped = j->substituted = 0;
    j->work_ms = 0;
    L->in_hand[k]++;
    PTHREAD_CHECK(pthread_mutex_lock(&L->mu));
    j->seq = ++L->seq;
    j->stage = JOB_WORKING;
    PTHREAD_CHECK(pthread_cond_broadcast(&L->cv));
    PTHREAD_CHECK(pthread_mutex_unlock(&L->mu));
    return;
refuse:
    L->refused++;
    LOG_LIMITED(SWAV_LOG_WARN, "refused: %s", msg);
    send_error(L, k, PROTO_ERRC_BAD_MESSAGE, "indices", o.step, msg);
}

static int cmp_note(const void *a, const void *b)
{
    const struct proto_note *x = a, *y = b;
    return (x->position > y->position) - (x->position < y->position);
}

/* Send the finished jobs (in arrival order) and free their slots. */
static void send_done(struct loader *L)
{
    for (;;) {
        struct job *j = NULL;
        PTHREAD_CHECK(pthread_mutex_lock(&L->mu));
        for (int i = 0; i < L->njobs; i++) {
            struct job *c = L->jobs[i];
            if (c->stage == JOB_DONE && (!j || c->seq < j->seq)) j = c;
        }
        PTHREAD_CHECK(pthread_mutex_unlock(&L->mu));
        if (!j) return;
        struct proto_batch *b = &L->batch;
        memset(b, 0, sizeof *b);
        b->order_id = j->order.order_id;
        b->epoch = j->order.epoch;
        b->step = j->order.step;
        b->rank = j->order.rank;
        snprintf(b->loader_id, sizeof b->loader_id, "%s", L->loader_id);
        b->n_images = j->order.n_images;
        b->ngroups = j->order.ngroups;
        for (uint32_t g = 0; g < b->ngroups; g++) {
            uint32_t S = j->order.size_crops[g];
            b->nmb_crops[g] = j->order.nmb_crops[g];
            b->size_crops[g] = S;
            uint64_t dims[4] = {(uint64_t)b->n_images * b->nmb_crops[g], S, S, 3};
            SWAV_ASSERT(proto_tensor_set(&b->crops[g], PROTO_DTYPE_U8, j->crops[g], 4, dims) ==
                        PROTO_OK);
        }
        uint64_t ldim = b->n_images;
        SWAV_ASSERT(proto_tensor_set(&b->labels, PROTO_DTYPE_I32, j->labels, 1, &ldim) ==
                    PROTO_OK);
        /* Workers finish in any order: sort so every loader sends the same notes. */
        qsort(j->notes, j->n_notes, sizeof j->notes[0], cmp_note);
        b->n_notes = j->n_notes;
        memcpy(b->notes, j->notes, j->n_notes * sizeof j->notes[0]);
        b->decode_ms = 0;
        b->augment_ms = j->work_ms;
        if (j->notes_dropped) {
            LOG_WARN("order step %" PRIu64 ": %u notes beyond the %d a batch carries not sent",
                     b->step, j->notes_dropped, PROTO_MAX_LIST);
        }
        enum proto_status ps = proto_batch_encode(&L->msg, L->cfg.run, b);
        SWAV_ASSERT(ps == PROTO_OK);
        ps = proto_send(L->socks[j->consumer], NULL, 0, &L->msg, ZMQ_DONTWAIT);
        if (ps == PROTO_OK) {
            L->batches++;
            L->images += b->n_images;
            L->substituted += j->substituted;
        } else {
            L->dropped++;
            LOG_LIMITED(SWAV_LOG_WARN, "batch of step %" PRIu64 " for %s not sent (%s): the "
                        "consumer is gone; it will re-issue the order", b->step,
                        L->endpoints[j->consumer],
                        ps == PROTO_ERR_AGAIN ? "not connected" : zmq_strerror(zmq_errno()));
        }
        if (L->in_hand[j->consumer] > 0) L->in_hand[j->consumer]--;
        PTHREAD_CHECK(pthread_mutex_lock(&L->mu));
        j->stage = JOB_FREE;
        PTHREAD_CHECK(pthread_mutex_unlock(&L->mu));
    }
}

static void on_message(struct loader *L, int k, int stopping)
{
    struct proto_header h;
    struct proto_diag diag = {0};
    struct proto_decode_opts dopts = {.run = L->cfg.run};
    enum proto_status ps = proto_peek_type(L->rx.frames, L->rx.nframes, &dopts, &h, &diag);
    char msg[600];
    if (ps != PROTO_OK) {
        proto_diag_format(msg, sizeof msg, PROTO_TYPE_NONE, ps, &diag);
        L->bad++;
        LOG_LIMITED(SWAV_LOG_WARN, "bad message from %s dropped: %s", L->endpoints[k], msg);
        send_error(L, k, ps == PROTO_ERR_WRONG_RUN ? PROTO_ERRC_WRONG_RUN : PROTO_ERRC_BAD_MESSAGE,
                   diag.field, 0, msg);
        return;
    }
    if (h.type == PROTO_TYPE_ORDER) {
        on_order(L, k, stopping);
        return;
    }
    L->bad++;
    snprintf(msg, sizeof msg, "a loader takes 'order' messages, not '%s'", proto_type_name(h.type));
    LOG_LIMITED(SWAV_LOG_WARN, "message from %s dropped: %s", L->endpoints[k], msg);
    send_error(L, k, PROTO_ERRC_BAD_MESSAGE, "type", 0, msg);
}

/* A monitor event: two frames (u16 event + u32 value, then the address). */
static void on_monitor(struct loader *L, int k, int stopping)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, L->monitors[k], ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        uint16_t ev = 0;
        uint32_t evval = 0;
        if (zmq_msg_size(&m) >= 2) memcpy(&ev, zmq_msg_data(&m), 2);
        if (zmq_msg_size(&m) >= 6) memcpy(&evval, (const char *)zmq_msg_data(&m) + 2, 4);
        int more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        while (more) {
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, L->monitors[k], 0) < 0) more = 0;
            else more = zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            L->handshake[k] = 1;
            LOG_INFO("connected to %s", L->endpoints[k]);
            send_ready(L, k, stopping);
        } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
            L->handshake[k] = -1;
            LOG_LIMITED(SWAV_LOG_ERROR,
                        "%s refused this loader's CURVE key (status %u): is its public key in "
                        "the consumer's --curve_allow list? (retrying)",
                        L->endpoints[k], (unsigned)evval);
        } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
            L->handshake[k] = -1;
            LOG_LIMITED(SWAV_LOG_ERROR,
                        "handshake with %s failed (ZMTP error %#x): CURVE on one side only, or "
                        "the wrong --curve_server_public? (retrying)",
                        L->endpoints[k], (unsigned)evval);
        } else if (ev == ZMQ_EVENT_DISCONNECTED) {
            /* libzmq reconnects after a network error but gives up on the
             * endpoint after a protocol error (an oversized or malformed
             * ZMTP frame): a fresh socket reconnects in both cases.  A
             * connection that closes before its handshake ends failed it: when
             * the consumer uses CURVE and this loader does not, the consumer
             * may hang up before this side has read its greeting, and then no
             * HANDSHAKE_FAILED event comes.  Such a retry waits one beat, so a
             * consumer that refuses every handshake is not hammered. */
            int64_t delay = 0;
            if (L->handshake[k] == 0) {
                LOG_LIMITED(SWAV_LOG_ERROR,
                            "handshake with %s failed: the connection closed before it ended "
                            "(CURVE on one side only, or a consumer stopped or gone?) (retrying)",
                            L->endpoints[k]);
            }
            if (L->handshake[k] != 1) delay = L->cfg.beat_ms;
            else LOG_INFO("disconnected from %s (reconnecting)", L->endpoints[k]);
            L->rebuild_at[k] = swav_now_ms() + delay;
        }
    }
}

static int jobs_in_hand(struct loader *L)
{
    int n = 0;
    PTHREAD_CHECK(pthread_mutex_lock(&L->mu));
    for (int i = 0; i < L->njobs; i++) n += L->jobs[i]->stage != JOB_FREE;
    PTHREAD_CHECK(pthread_mutex_unlock(&L->mu));
    return n;
}

/* The DEALER of consumer k and the monitor of its connection events. */
static int open_consumer(struct loader *L, int k)
{
    void *s = zmq_socket(L->ctx, ZMQ_DEALER);
    ZMQ_CHECK_PTR(s);
    if (proto_socket_setup(s, L->cfg.max_order_bytes, (int)L->cfg.heartbeat_ms,
                           (int)L->cfg.heartbeat_timeout_ms) != PROTO_OK) {
        LOG_ERROR("socket options: %s", zmq_strerror(zmq_errno()));
        zmq_close(s);
        return -1;
    }
    int one = 1;
    ZMQ_CHECK(zmq_setsockopt(s, ZMQ_IMMEDIATE, &one, sizeof one));
    if (*L->cfg.curve_server_public) {
        char cerr[512];
        if (proto_socket_curve_client(s, L->cfg.curve_server_public,
                                      *L->cfg.curve_secret ? L->cfg.curve_secret : NULL, cerr,
                                      sizeof cerr) != PROTO_OK) {
            fprintf(stderr, "swav-loader: %s\n", cerr);
            zmq_close(s);
            return -1;
        }
    }
    if (zmq_connect(s, L->endpoints[k]) != 0) {
        fprintf(stderr, "swav-loader: --connect %s: %s\n", L->endpoints[k],
                zmq_strerror(zmq_errno()));
        zmq_close(s);
        return -1;
    }
    L->socks[k] = s;
    L->handshake[k] = 0;
    /* Say ready the moment a connection is up (a consumer that just started
     * or restarted), not at the next beat. */
    char mon[64];
    snprintf(mon, sizeof mon, "inproc://monitor-%d-%u", k, ++L->generation[k]);
    ZMQ_CHECK(zmq_socket_monitor(s, mon,
                                 ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED |
                                     ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL));
    L->monitors[k] = zmq_socket(L->ctx, ZMQ_PAIR);
    ZMQ_CHECK_PTR(L->monitors[k]);
    ZMQ_CHECK(zmq_connect(L->monitors[k], mon));
    return 0;
}

static void close_consumer(struct loader *L, int k, int linger)
{
    zmq_socket_monitor(L->socks[k], NULL, 0);
    zmq_close(L->monitors[k]);
    zmq_setsockopt(L->socks[k], ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(L->socks[k]);
    L->monitors[k] = L->socks[k] = NULL;
}

/* ---- main ------------------------------------------------------------------------------- */

static void usage(FILE *out, const struct swav_flag_set *set)
{
    fprintf(out,
            "usage: swav-loader --connect ENDPOINT [--connect ENDPOINT ...] --data_path DIR "
            "[--dataset TAG=DIR ...] [flags]\n"
            "  --connect ENDPOINT      a consumer's ROUTER (trainer, evaluator); repeat for each\n"
            "  --dataset TAG=DIR       serve orders whose dataset tag is TAG from DIR; repeat\n");
    swav_flags_usage(out, "swav-loader", set, 1);
}

int main(int argc, char **argv)
{
    swav_log_init("loader", -1);
    static struct loader Lst;
    struct loader *L = &Lst;
    const char *datasets[MAX_DATASETS];
    int nds = 0;
    /* --connect and --dataset repeat: take them out before the table parser. */
    char **rest = swav_xcalloc((size_t)argc + 1, sizeof *rest);
    int nrest = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        int is_connect = !strncmp(a, "--connect", 9) && (a[9] == '\0' || a[9] == '=');
        int is_dataset = !strncmp(a, "--dataset", 9) && (a[9] == '\0' || a[9] == '=');
        if (!is_connect && !is_dataset) {
            rest[nrest++] = argv[i];
            continue;
        }
        if (a[9] == '=') {
            val = a + 10;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            fprintf(stderr, "swav-loader: %s needs a value\n", a);
            return 2;
        }
        if (is_connect) {
            if (L->nsocks == MAX_CONSUMERS) {
                fprintf(stderr, "swav-loader: more than %d --connect\n", MAX_CONSUMERS);
                return 2;
            }
            L->endpoints[L->nsocks++] = val;
        } else {
            if (nds == MAX_DATASETS - 1 || !strchr(val, '=')) {
                fprintf(stderr, "swav-loader: --dataset wants TAG=DIR (at most %d), got '%s'\n",
                        MAX_DATASETS - 1, val);
                return 2;
            }
            datasets[nds++] = val;
        }
    }
    struct swav_flag_set set = {loader_flags, sizeof loader_flags / sizeof loader_flags[0],
                                &L->cfg};
    char err[1024];
    int rc = swav_flags_parse(&set, 1, nrest, rest, err, sizeof err);
    if (rc == 1) {
        usage(stdout, &set);
        return 0;
    }
    if (rc != 0) {
        fprintf(stderr, "swav-loader: %s\n", err);
        usage(stderr, &set);
        return 2;
    }
    if (L->nsocks == 0 && !L->cfg.index_only) {
        fprintf(stderr, "swav-loader: no --connect endpoint\n");
        return 2;
    }
    if (!*L->cfg.data_path && nds == 0) {
        fprintf(stderr, "swav-loader: no --data_path (or --dataset TAG=DIR)\n");
        return 2;
    }
    if (*L->cfg.loader_id) {
        snprintf(L->loader_id, sizeof L->loader_id, "%s", L->cfg.loader_id);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        snprintf(L->loader_id, sizeof L->loader_id, "%.40s:%ld", host, (long)getpid());
    }

    /* A stop during indexing: index, then leave with 0. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Data sets: the index of each, built (or taken from the cache) once. */
    struct loader_index_opts iopts = {
        .cache_dir = L->cfg.dump_path,
        .threads = (int)(L->cfg.index_threads ? L->cfg.index_threads : L->cfg.workers)};
    for (int d = -1; d < nds; d++) {
        const char *tag = "", *path = L->cfg.data_path;
        char tagbuf[PROTO_MAX_ID + 1];
        if (d >= 0) {
            const char *eq = strchr(datasets[d], '=');
            size_t tl = (size_t)(eq - datasets[d]);
            if (tl > PROTO_MAX_ID) {
                fprintf(stderr, "swav-loader: --dataset tag too long: %s\n", datasets[d]);
                return 2;
            }
            memcpy(tagbuf, datasets[d], tl);
            tagbuf[tl] = '\0';
            tag = tagbuf;
            path = eq + 1;
        } else if (!*path) {
            continue;
        }
        struct dataset *ds = &L->datasets[L->ndatasets];
        snprintf(ds->tag, sizeof ds->tag, "%s", tag);
        enum loader_index_status st = loader_index_open(&ds->ix, path, &iopts, err, sizeof err);
        if (st != LOADER_INDEX_OK) {
            LOG_ERROR("%s", err);
            return 1;
        }
        L->ndatasets++;
    }
    if (L->cfg.index_only || g_stop) {
        for (int d = 0; d < L->ndatasets; d++) loader_index_destroy(&L->datasets[d].ix);
        free(rest);
        return 0;
    }


    L->ctx = zmq_ctx_new();
    ZMQ_CHECK_PTR(L->ctx);
    for (int k = 0; k < L->nsocks; k++) {
        if (open_consumer(L, k) != 0) return 2;
    }

    PTHREAD_CHECK(pthread_mutex_init(&L->mu, NULL));
    PTHREAD_CHECK(pthread_cond_init(&L->cv, NULL));
    SWAV_ASSERT(pipe2(L->pipe_fd, O_CLOEXEC | O_NONBLOCK) == 0);
    L->max_jobs = (int)(2 * L->cfg.credit * L->nsocks + 2);
    L->jobs = swav_xcalloc((size_t)L->max_jobs, sizeof *L->jobs);
    int nw = (int)L->cfg.workers;
    L->threads = swav_xcalloc((size_t)nw, sizeof *L->threads);
    struct worker *workers = swav_xcalloc((size_t)nw, sizeof *workers);
    for (int i = 0; i < nw; i++) {
        workers[i].L = L;
        workers[i].scratch = loader_scratch_new();
        PTHREAD_CHECK(pthread_create(&L->threads[i], NULL, worker_main, &workers[i]));
    }
    proto_rx_init(&L->rx);
    proto_msg_init(&L->msg);
    LOG_INFO("loader %s: %d worker%s, credit %" PRId64 " per consumer, %d consumer endpoint%s",
             L->loader_id, nw, nw == 1 ? "" : "s", L->cfg.credit, L->nsocks,
             L->nsocks == 1 ? "" : "s");

    zmq_pollitem_t items[2 * MAX_CONSUMERS + 1];
    int64_t next_beat = 0, next_report = swav_now_ms() + L->cfg.report_s * 1000;
    int stopping = 0;
    uint64_t last_images = 0;
    for (;;) {
        if (g_stop && !stopping) {
            stopping = 1;
            LOG_INFO("stopping: finishing %d order%s in hand", jobs_in_hand(L),
                     jobs_in_hand(L) == 1 ? "" : "s");
            next_beat = 0;
        }
        int64_t now = swav_now_ms();
        if (now >= next_beat) {
            for (int k = 0; k < L->nsocks; k++) send_ready(L, k, stopping);
            next_beat = now + L->cfg.beat_ms;
        }
        if (L->cfg.report_s > 0 && now >= next_report) {
            if (L->images != last_images) {
                LOG_INFO("served %" PRIu64 " images in %" PRIu64 " batches, %" PRIu64
                         " substituted, %" PRIu64 " orders refused, %" PRIu64 " bad messages",
                         L->images, L->batches, L->substituted, L->refused, L->bad);
                last_images = L->images;
            }
            next_report = now + L->cfg.report_s * 1000;
        }
        if (stopping && jobs_in_hand(L) == 0) break;
        for (int k = 0; k < L->nsocks; k++) {
            if (!L->rebuild_at[k] || now < L->rebuild_at[k]) continue;
            L->rebuild_at[k] = 0;
            close_consumer(L, k, 0);
            if (open_consumer(L, k) != 0) {
                LOG_ERROR("cannot reopen the socket of %s", L->endpoints[k]);
                g_stop = 1;
            }
        }
        for (int k = 0; k < L->nsocks; k++) {
            items[k] = (zmq_pollitem_t){.socket = L->socks[k], .events = ZMQ_POLLIN};
        }
        items[L->nsocks] = (zmq_pollitem_t){.fd = L->pipe_fd[0], .events = ZMQ_POLLIN};
        for (int k = 0; k < L->nsocks; k++) {
            items[L->nsocks + 1 + k] = (zmq_pollitem_t){.socket = L->monitors[k], .events = ZMQ_POLLIN};
        }
        long wait = (long)(next_beat - now);
        if (wait < 0) wait = 0;
        if (zmq_poll(items, 2 * L->nsocks + 1, wait) < 0) {
            if (zmq_errno() == EINTR) continue;
            LOG_ERROR("poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (items[L->nsocks].revents & ZMQ_POLLIN) {
            char buf[64];
            while (read(L->pipe_fd[0], buf, sizeof buf) > 0) {
            }
        }
        send_done(L);
        for (int k = 0; k < L->nsocks; k++) {
            if (items[L->nsocks + 1 + k].revents & ZMQ_POLLIN) on_monitor(L, k, stopping);
        }
        for (int k = 0; k < L->nsocks; k++) {
            if (!(items[k].revents & ZMQ_POLLIN)) continue;
            /* A bounded number per socket per turn: one consumer cannot starve another. */
            for (int m = 0; m < 64; m++) {
                enum proto_status ps = proto_recv(L->socks[k], &L->rx, false, ZMQ_DONTWAIT);
                if (ps == PROTO_ERR_AGAIN) break;
                if (ps == PROTO_ERR_ZMQ) {
                    if (zmq_errno() != EINTR) {
                        LOG_LIMITED(SWAV_LOG_WARN, "receive from %s: %s", L->endpoints[k],
                                    zmq_strerror(zmq_errno()));
                    }
                    break;
                }
                if (ps != PROTO_OK) {
                    L->bad++;
                    LOG_LIMITED(SWAV_LOG_WARN, "malformed message from %s dropped: %s",
                                L->endpoints[k], proto_status_str(ps));
                    send_error(L, k, PROTO_ERRC_BAD_MESSAGE, "", 0, proto_status_str(ps));
                    continue;
                }
                on_message(L, k, stopping);
            }
        }
    }

    /* Workers are idle (nothing in hand): stop them, flush, leave. */
    PTHREAD_CHECK(pthread_mutex_lock(&L->mu));
    L->quit = 1;
    PTHREAD_CHECK(pthread_cond_broadcast(&L->cv));
    PTHREAD_CHECK(pthread_mutex_unlock(&L->mu));
    for (int i = 0; i < nw; i++) PTHREAD_CHECK(pthread_join(L->threads[i], NULL));
    for (int k = 0; k < L->nsocks; k++) close_consumer(L, k, 2000);
    proto_rx_free(&L->rx);
    proto_msg_free(&L->msg);
    zmq_ctx_term(L->ctx);
    LOG_INFO("stopped: served %" PRIu64 " images in %" PRIu64 " batches, %" PRIu64
             " substituted, %" PRIu64 " refused, %" PRIu64 " bad messages, %" PRIu64
             " batches not deliverable",
             L->images, L->batches, L->substituted, L->refused, L->bad, L->dropped);
    for (int i = 0; i < L->njobs; i++) {
        struct job *j = L->jobs[i];
        for (int g = 0; g < PROTO_MAX_GROUPS; g++) free(j->crops[g]);
        free(j->idx);
        free(j->labels);
        free(j);
    }
    free(L->jobs);
    free(L->threads);
    free(workers);
    free(rest);
    for (int d = 0; d < L->ndatasets; d++) loader_index_destroy(&L->datasets[d].ix);
    close(L->pipe_fd[0]);
    close(L->pipe_fd[1]);
    return 0;
}
