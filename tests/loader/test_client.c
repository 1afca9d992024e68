/* loader/client.h against fake loaders (DEALER sockets in this process, real
 * ZeroMQ): in-order hand-out of batches that arrive out of
 * order, credit, duplicate drop, re-issue after a loader goes silent,
 * refusals, window full, bad messages.  Over ipc:// (not inproc://): only
 * the stream transports put small frames at odd addresses in libzmq's
 * receive buffer, which proto_recv must realign (11 images x 1 crop x 3x3x3
 * makes the crop frames an odd length).  Exits 1 at the first failed check. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/check.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "loader/client.h"
#include "proto/wire.h"

#define RUN "testrun"
#define N_IMAGES 11 /* labels 44 bytes: over the 33 bytes libzmq keeps inside zmq_msg_t */
#define S0 3 /* odd frame sizes: the labels frame lands misaligned in libzmq's buffer */

static int failures;
#define EXPECT(cond, ...)                                             \
    do {                                                              \
        if (!(cond)) {                                                \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                             \
            fprintf(stderr, "\n");                                    \
            exit(1);                                                  \
        }                                                             \
    } while (0)

struct fake {
    void *s;
    struct proto_rx rx;
    struct proto_msg msg;
    char id[32];
};

static void fake_init(struct fake *f, void *ctx, const char *ep, const char *id)
{
    memset(f, 0, sizeof *f);
    f->s = zmq_socket(ctx, ZMQ_DEALER);
    ZMQ_CHECK_PTR(f->s);
    proto_socket_setup(f->s, -1, 0, 0);
    ZMQ_CHECK(zmq_connect(f->s, ep));
    proto_rx_init(&f->rx);
    proto_msg_init(&f->msg);
    snprintf(f->id, sizeof f->id, "%s", id);
}

static void fake_free(struct fake *f)
{
    proto_rx_free(&f->rx);
    proto_msg_free(&f->msg);
    zmq_close(f->s);
}

static void fake_ready(struct fake *f, uint32_t credit)
{
    struct proto_ready r = {.credit = credit, .workers = 1};
    snprintf(r.loader_id, sizeof r.loader_id, "%s", f->id);
    EXPECT(proto_ready_encode(&f->msg, RUN, &r) == PROTO_OK, "encode ready");
    EXPECT(proto_send(f->s, NULL, 0, &f->msg, 0) == PROTO_OK, "send ready");
}

/* A ready with data sets: tags[i] -> sizes[i] (n < 0: no datasets field). */
static void fake_ready_ds(struct fake *f, int n, const char *const *tags, const double *sizes)
{
    static struct proto_ready r;
    memset(&r, 0, sizeof r);
    r.credit = 1;
    r.workers = 1;
    snprintf(r.loader_id, sizeof r.loader_id, "%s", f->id);
    r.has_datasets = n >= 0;
    for (int i = 0; i < n; i++) {
        snprintf(r.datasets[i].name, sizeof r.datasets[i].name, "%s", tags[i]);
        r.datasets[i].value = sizes[i];
    }
    r.n_datasets = n > 0 ? (uint32_t)n : 0;
    EXPECT(proto_ready_encode(&f->msg, RUN, &r) == PROTO_OK, "encode ready with data sets");
    EXPECT(proto_send(f->s, NULL, 0, &f->msg, 0) == PROTO_OK, "send ready");
}

/* Receive one order (waiting up to ms while the client works); 1 or 0. */
static int fake_order(struct fake *f, struct loader_client *c, struct proto_order *o, int ms)
{
    int64_t until = swav_now_ms() + ms;
    for (;;) {
        if (proto_recv(f->s, &f->rx, false, ZMQ_DONTWAIT) == PROTO_OK) {
            EXPECT(proto_order_decode(f->rx.frames, f->rx.nframes, NULL, o, NULL) == PROTO_OK,
                   "order decodes");
            return 1;
        }
        if (swav_now_ms() > until) return 0;
        loader_client_poll(c, 10);
    }
}

static uint8_t crops0[N_IMAGES * 1 * S0 * S0 * 3];
static int32_t labels[N_IMAGES];

static void fake_batch(struct fake *f, const struct proto_order *o, uint8_t fill, uint32_t n_images)
{
    struct proto_batch b;
    memset(&b, 0, sizeof b);
    b.order_id = o->order_id;
    b.epoch = o->epoch;
    b.step = o->step;
    b.rank = o->rank;
    snprintf(b.loader_id, sizeof b.loader_id, "%s", f->id);
    b.n_images = n_images;
    b.ngroups = 1;
    b.nmb_crops[0] = 1;
    b.size_crops[0] = S0;
    memset(crops0, fill, sizeof crops0);
    uint64_t d[4] = {(uint64_t)n_images * 1, S0, S0, 3};
    proto_tensor_set(&b.crops[0], PROTO_DTYPE_U8, crops0, 4, d);
    for (int i = 0; i < N_IMAGES; i++) labels[i] = fill;
    uint64_t ld = n_images;
    proto_tensor_set(&b.labels, PROTO_DTYPE_I32, labels, 1, &ld);
    EXPECT(proto_batch_encode(&f->msg, RUN, &b) == PROTO_OK, "encode batch");
    EXPECT(proto_send(f->s, NULL, 0, &f->msg, 0) == PROTO_OK, "send batch");
}

static void fake_refuse(struct fake *f, const struct proto_order *o)
{
    static struct proto_error e;
    e.code = PROTO_ERRC_BAD_MESSAGE;
    e.step = o->step;
    snprintf(e.message, sizeof e.message, "no such image");
    EXPECT(proto_error_encode(&f->msg, RUN, &e) == PROTO_OK, "encode error");
    EXPECT(proto_send(f->s, NULL, 0, &f->msg, 0) == PROTO_OK, "send error");
}

static uint32_t idx[N_IMAGES] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10};

static void submit(struct loader_client *c, uint64_t step)
{
    struct proto_order o = {.epoch = 1, .step = step, .rank = 0, .seed = 7,
                            .mode = PROTO_MODE_SWAV, .ngroups = 1, .n_images = N_IMAGES};
    o.nmb_crops[0] = 1;
    o.size_crops[0] = S0;
    o.min_scale_crops[0] = 0.5;
    o.max_scale_crops[0] = 1.0;
    uint64_t d = N_IMAGES;
    proto_tensor_set(&o.indices, PROTO_DTYPE_U32, idx, 1, &d);
    enum loader_client_status st = loader_client_submit(c, &o, NULL);
    EXPECT(st == LOADER_CLIENT_OK, "submit step %" PRIu64 ": %s", step, loader_client_status_str(st));
}

static const struct proto_batch *next_batch(struct loader_client *c, int ms)
{
    const struct proto_batch *b = NULL;
    enum loader_client_status st = loader_client_next(c, &b, ms);
    EXPECT(st == LOADER_CLIENT_OK, "next: %s", loader_client_status_str(st));
    return b;
}

int main(void)
{
    swav_log_init("test_client", -1);
    void *ctx = zmq_ctx_new();
    char ep[128];
    snprintf(ep, sizeof ep, "ipc:///tmp/swav-test-client-%ld.sock", (long)getpid());
    struct loader_client_opts opts = {.bind = ep, .run = RUN, .window = 4,
                                      .silence_ms = 400, .deadline_ms = 60000,
                                      .heartbeat_ivl_ms = -1, .max_attempts = 3, .zmq_ctx = ctx};
    struct loader_client *c = NULL;
    char err[256];
    EXPECT(loader_client_new(&c, &opts, err, sizeof err) == 0, "%s", err);
    struct loader_client_stats st;

    /* 1. Out-of-order arrival, in-order hand-out; credit bounds what A gets. */
    struct fake a;
    fake_init(&a, ctx, ep, "A");
    fake_ready(&a, 3);
    loader_client_poll(c, 20);
    for (uint64_t s = 0; s < 4; s++) submit(c, s);
    {
        const struct proto_batch *b;
        EXPECT(loader_client_submit(c, &(struct proto_order){0}, NULL) == LOADER_CLIENT_ERR_FULL,
               "window of 4 is full");
        struct proto_order o[4];
        for (int i = 0; i < 3; i++) EXPECT(fake_order(&a, c, &o[i], 500), "order %d reaches A", i);
        EXPECT(!fake_order(&a, c, &o[3], 100), "credit 3: a 4th order must wait");
        for (int i = 2; i >= 0; i--) fake_batch(&a, &o[i], (uint8_t)(10 + o[i].step), N_IMAGES);
        for (uint64_t s = 0; s < 3; s++) {
            b = next_batch(c, 1000);
            EXPECT(b->step == s, "step %" PRIu64 " handed out, want %" PRIu64, b->step, s);
            EXPECT(((const uint8_t *)b->crops[0].data)[5] == 10 + s, "zero-copy data of step %" PRIu64, s);
            if (s == 0) EXPECT(fake_order(&a, c, &o[3], 500), "credit came back: 4th order sent");
        }
        /* A duplicate of step 3 after the first copy. */
        fake_batch(&a, &o[3], 13, N_IMAGES);
        fake_batch(&a, &o[3], 99, N_IMAGES);
        b = next_batch(c, 1000);
        EXPECT(b->step == 3 && ((const uint8_t *)b->crops[0].data)[0] == 13, "first copy wins");
        loader_client_poll(c, 50);
        loader_client_get_stats(c, &st);
        EXPECT(st.duplicates == 1, "duplicates %" PRIu64, st.duplicates);
        EXPECT(st.bad_messages == 0, "good batches all accepted (aligned): bad %" PRIu64,
               st.bad_messages);
        EXPECT(loader_client_next(c, &b, 0) == LOADER_CLIENT_ERR_EMPTY, "nothing left");
    }

    /* 2. A goes silent holding an order: B gets it after silence_ms; A's late
     * answer is a duplicate. */
    {
        submit(c, 4);
        struct proto_order oa, ob;
        EXPECT(fake_order(&a, c, &oa, 500), "A gets step 4");
        struct fake b;
        fake_init(&b, ctx, ep, "B");
        int64_t t0 = swav_now_ms();
        int got = 0;
        while (!got && swav_now_ms() - t0 < 3000) {
            fake_ready(&b, 2);
            got = fake_order(&b, c, &ob, 100);
        }
        EXPECT(got && ob.step == 4 && ob.order_id == oa.order_id, "step 4 re-issued to B");
        EXPECT(swav_now_ms() - t0 >= 300, "not re-issued before silence_ms");
        fake_batch(&b, &ob, 44, N_IMAGES);
        const struct proto_batch *bb = next_batch(c, 1000);
        EXPECT(bb->step == 4 && ((const uint8_t *)bb->crops[0].data)[0] == 44, "B's batch");
        fake_batch(&a, &oa, 45, N_IMAGES); /* A wakes up late */
        fake_ready(&a, 0);                 /* and takes no more orders */
        loader_client_poll(c, 50);
        loader_client_get_stats(c, &st);
        EXPECT(st.reissued == 1 && st.duplicates == 2 && st.bad_messages == 0,
               "reissued %" PRIu64 " duplicates %" PRIu64 " bad %" PRIu64, st.reissued,
               st.duplicates, st.bad_messages);

        /* 3. Refusals: re-queued, then failed after max_attempts. */
        submit(c, 5);
        for (int k = 0; k < 3; k++) {
            got = 0;
            for (int t = 0; t < 30 && !got; t++) {
                fake_ready(&b, 2);
                got = fake_order(&b, c, &ob, 50);
            }
            EXPECT(got && ob.step == 5, "refused order comes back (%d)", k);
            fake_refuse(&b, &ob);
        }
        const struct proto_batch *x;
        enum loader_client_status s2 = loader_client_next(c, &x, 1000);
        EXPECT(s2 == LOADER_CLIENT_ERR_FAILED, "after 3 refusals: %s", loader_client_status_str(s2));
        EXPECT(strstr(loader_client_last_error(c), "no such image") != NULL, "error names the cause: %s",
               loader_client_last_error(c));

        /* 4. Bad input: garbage frames, a batch that does not match its order. */
        zmq_send(b.s, "garbage", 7, 0);
        zmq_send(b.s, "\x81\xa1v\x01", 4, 0);
        submit(c, 6);
        got = 0;
        for (int t = 0; t < 30 && !got; t++) {
            fake_ready(&b, 2);
            got = fake_order(&b, c, &ob, 50);
        }
        EXPECT(got, "step 6 sent");
        fake_batch(&b, &ob, 60, N_IMAGES - 1); /* wrong size */
        fake_batch(&b, &ob, 61, N_IMAGES);
        bb = next_batch(c, 1000);
        EXPECT(bb->step == 6 && ((const uint8_t *)bb->crops[0].data)[0] == 61, "the good batch");
        loader_client_get_stats(c, &st);
        EXPECT(st.bad_messages >= 3, "bad messages %" PRIu64, st.bad_messages);
        fake_free(&b);
    }
    fake_free(&a);
    loader_client_destroy(&c);
    EXPECT(c == NULL, "destroy clears the pointer");

    /* 5. Data set sizes from the loaders' ready: none yet, a loader that does
     * not say, one that does, an unknown tag, two that disagree, the
     * disagreeing one gone silent. */
    {
        char ep2[160];
        snprintf(ep2, sizeof ep2, "%s.ds", ep);
        opts.bind = ep2;
        EXPECT(loader_client_new(&c, &opts, err, sizeof err) == 0, "%s", err);
        uint64_t n = 0;
        char why[512];
        EXPECT(loader_client_dataset_size(c, "eval_train", &n, why, sizeof why) ==
                   LOADER_CLIENT_DATASET_WAIT, "no loader yet: wait (%s)", why);
        struct fake d1, d2;
        fake_init(&d1, ctx, ep2, "D1");
        fake_ready_ds(&d1, -1, NULL, NULL);
        loader_client_poll(c, 100);
        EXPECT(loader_client_dataset_size(c, "eval_train", &n, why, sizeof why) ==
                   LOADER_CLIENT_DATASET_WAIT, "a loader without the field: wait (%s)", why);
        const char *tags[2] = {"eval_train", "eval_val"};
        const double sizes[2] = {200, 80};
        fake_ready_ds(&d1, 2, tags, sizes);
        loader_client_poll(c, 100);
        enum loader_client_dataset ds = loader_client_dataset_size(c, "eval_val", &n, why,
                                                                   sizeof why);
        EXPECT(ds == LOADER_CLIENT_DATASET_FOUND && n == 80, "eval_val: %d, %" PRIu64, ds, n);
        ds = loader_client_dataset_size(c, "nosuch", &n, why, sizeof why);
        EXPECT(ds == LOADER_CLIENT_DATASET_ABSENT && strstr(why, "no data set 'nosuch'") &&
                   strstr(why, "'eval_train', 'eval_val'"), "unknown tag: %d %s", ds, why);
        fake_init(&d2, ctx, ep2, "D2");
        const double other[1] = {199};
        fake_ready_ds(&d2, 1, tags, other);
        loader_client_poll(c, 100);
        ds = loader_client_dataset_size(c, "eval_train", &n, why, sizeof why);
        EXPECT(ds == LOADER_CLIENT_DATASET_CONFLICT && n == 199 && strstr(why, "disagree"),
               "disagreeing loaders: %d %s", ds, why);
        int64_t t0 = swav_now_ms();
        while (swav_now_ms() - t0 < 700) { /* D2 silent past silence_ms, D1 beats */
            fake_ready_ds(&d1, 2, tags, sizes);
            loader_client_poll(c, 100);
        }
        ds = loader_client_dataset_size(c, "eval_train", &n, why, sizeof why);
        EXPECT(ds == LOADER_CLIENT_DATASET_FOUND && n == 200, "D2 silent: %d %" PRIu64, ds, n);
        fake_free(&d1);
        fake_free(&d2);
        loader_client_destroy(&c);
        unlink(ep2 + 6);
    }
    zmq_ctx_term(ctx);
    unlink(ep + 6);
    printf("test_client: ok\n");
    return failures ? 1 : 0;
}
