/* Valid sample messages of every type: see samples.h. */
#include "samples.h"

#include <stdio.h>
#include <string.h>

#include "common/check.h"

/* batch: 2 images, groups of 2 crops at 4x4 and 1 crop at 2x2 */
#define B_N 2
static uint8_t batch_g0[B_N * 2 * 4 * 4 * 3];
static uint8_t batch_g1[B_N * 1 * 2 * 2 * 3];
static int32_t batch_labels[B_N] = {3, -1};
static uint32_t order_idx[5] = {10, 0, 7, 99999, 3};
/* embed/codes: 2 assign crops, B = 3, D = 4, K = 5 */
static float embed_emb[2 * 3 * 4];
static float embed_protos[5 * 4];
static float codes_q[2 * 3 * 5];

static struct proto_ready s_ready;
static struct proto_order s_order;
static struct proto_batch s_batch;
static struct proto_hello s_hello;
static struct proto_welcome s_welcome;
static struct proto_embed s_embed;
static struct proto_codes s_codes;
static struct proto_save s_save;
static struct proto_saved s_saved;
static struct proto_error s_error;
static struct proto_checkpoint s_checkpoint;
static struct proto_status_msg s_status;

static void fill(void)
{
    static int done;
    if (done) return;
    done = 1;
    for (size_t i = 0; i < sizeof batch_g0; i++) batch_g0[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < sizeof batch_g1; i++) batch_g1[i] = (uint8_t)(255 - i);
    for (size_t i = 0; i < sizeof embed_emb / sizeof(float); i++) embed_emb[i] = 0.25f * (float)i - 1.f;
    for (size_t i = 0; i < sizeof embed_protos / sizeof(float); i++) embed_protos[i] = -0.5f * (float)i;
    for (size_t i = 0; i < sizeof codes_q / sizeof(float); i++) codes_q[i] = 1.f / (float)(i + 1);

    snprintf(s_ready.loader_id, sizeof s_ready.loader_id, "loader-a");
    s_ready.credit = 4;
    s_ready.workers = 2;
    s_ready.has_datasets = true;
    s_ready.n_datasets = 2;
    snprintf(s_ready.datasets[0].name, sizeof s_ready.datasets[0].name, "train");
    s_ready.datasets[0].value = 1281167;
    snprintf(s_ready.datasets[1].name, sizeof s_ready.datasets[1].name, "eval_val");
    s_ready.datasets[1].value = 50000;

    s_order.order_id = 0x1234567890ull;
    s_order.epoch = 3;
    s_order.step = 1001;
    s_order.rank = 1;
    s_order.seed = 31;
    s_order.mode = PROTO_MODE_SWAV;
    snprintf(s_order.dataset, sizeof s_order.dataset, "train");
    s_order.ngroups = 2;
    s_order.nmb_crops[0] = 2;
    s_order.nmb_crops[1] = 6;
    s_order.size_crops[0] = 224;
    s_order.size_crops[1] = 96;
    s_order.min_scale_crops[0] = 0.14;
    s_order.min_scale_crops[1] = 0.05;
    s_order.max_scale_crops[0] = 1.0;
    s_order.max_scale_crops[1] = 0.14;
    s_order.resize = 0;
    s_order.n_images = 5;
    SWAV_ASSERT(!proto_tensor_set(&s_order.indices, PROTO_DTYPE_U32, order_idx, 1,
                                  (uint64_t[]){5}));

    s_batch.order_id = 0x1234567890ull;
    s_batch.epoch = 3;
    s_batch.step = 1001;
    s_batch.rank = 1;
    snprintf(s_batch.loader_id, sizeof s_batch.loader_id, "loader-a");
    s_batch.n_images = B_N;
    s_batch.ngroups = 2;
    s_batch.nmb_crops[0] = 2;
    s_batch.nmb_crops[1] = 1;
    s_batch.size_crops[0] = 4;
    s_batch.size_crops[1] = 2;
    SWAV_ASSERT(!proto_tensor_set(&s_batch.crops[0], PROTO_DTYPE_U8, batch_g0, 4,
                                  (uint64_t[]){B_N * 2, 4, 4, 3}));
    SWAV_ASSERT(!proto_tensor_set(&s_batch.crops[1], PROTO_DTYPE_U8, batch_g1, 4,
                                  (uint64_t[]){B_N * 1, 2, 2, 3}));
    SWAV_ASSERT(!proto_tensor_set(&s_batch.labels, PROTO_DTYPE_I32, batch_labels, 1,
                                  (uint64_t[]){B_N}));
    s_batch.n_notes = 1;
    s_batch.notes[0].position = 1;
    s_batch.notes[0].code = PROTO_NOTE_SUBSTITUTED;
    snprintf(s_batch.notes[0].text, sizeof s_batch.notes[0].text,
             "image 99999 (bad.jpg) unreadable: replaced by image 4");
    s_batch.decode_ms = 12.5;
    s_batch.augment_ms = 30.25;

    s_hello.rank = 1;
    s_hello.world_size = 2;
    s_hello.nmb_prototypes = 3000;
    s_hello.feat_dim = 128;
    s_hello.epsilon = 0.05;
    s_hello.sinkhorn_iterations = 3;
    s_hello.queue_length = 3840;
    s_hello.epoch_queue_starts = 15;
    s_hello.n_crops_for_assign = 2;
    s_hello.crops_for_assign[0] = 0;
    s_hello.crops_for_assign[1] = 1;
    s_hello.batch_size = 64;
    s_hello.resume_epoch = 2;
    snprintf(s_hello.resume_path, sizeof s_hello.resume_path, "/tmp/run/checkpoint.safetensors");
    s_hello.has_nccl_id = true;
    for (int i = 0; i < PROTO_NCCL_ID_BYTES; i++) s_hello.nccl_id[i] = (uint8_t)(i * 3 + 1);

    s_welcome.rank = 1;
    s_welcome.world_size = 2;
    s_welcome.has_nccl_id = true;
    for (int i = 0; i < PROTO_NCCL_ID_BYTES; i++) s_welcome.nccl_id[i] = (uint8_t)(200 - i);
    s_welcome.queue_length = 3840;
    s_welcome.queue_fill = 128;
    s_welcome.epoch = 2;
    s_welcome.step = 500;

    s_embed.epoch = 3;
    s_embed.step = 1001;
    s_embed.rank = 0;
    SWAV_ASSERT(!proto_tensor_set(&s_embed.embeddings, PROTO_DTYPE_F32, embed_emb, 3,
                                  (uint64_t[]){2, 3, 4}));
    s_embed.has_prototypes = true;
    SWAV_ASSERT(!proto_tensor_set(&s_embed.prototypes, PROTO_DTYPE_F32, embed_protos, 2,
                                  (uint64_t[]){5, 4}));

    s_codes.epoch = 3;
    s_codes.step = 1001;
    s_codes.rank = 1;
    SWAV_ASSERT(!proto_tensor_set(&s_codes.q, PROTO_DTYPE_F32, codes_q, 3, (uint64_t[]){2, 3, 5}));
    s_codes.stats.entropy = 1.5;
    s_codes.stats.prototypes_used = 5;
    s_codes.stats.sinkhorn_ms = 0.75;
    s_codes.stats.queue_used = true;
    s_codes.stats.queue_fill = 3840;
    s_codes.stats.collapse_warnings = 1;

    s_save.epoch = 4;
    s_save.step = 2000;
    snprintf(s_save.path, sizeof s_save.path, "/tmp/run/queue-rank.safetensors");

    s_saved.epoch = 4;
    s_saved.step = 2000;
    snprintf(s_saved.path, sizeof s_saved.path, "/tmp/run/queue-rank.safetensors");
    s_saved.ok = false;
    snprintf(s_saved.message, sizeof s_saved.message, "disk full: \"No space left on device\"");

    s_error.code = PROTO_ERRC_REFUSED_CONFIG;
    snprintf(s_error.field, sizeof s_error.field, "epsilon");
    snprintf(s_error.message, sizeof s_error.message, "rank 1 says 0.03, rank 0 says 0.05");
    s_error.step = 7;

    s_checkpoint.epoch = 5;
    s_checkpoint.step = 2500;
    snprintf(s_checkpoint.path, sizeof s_checkpoint.path, "/tmp/run/ckp-5.safetensors");

    snprintf(s_status.role, sizeof s_status.role, "trainer");
    s_status.rank = -1;
    s_status.request = false;
    s_status.n_counters = 3;
    snprintf(s_status.counters[0].name, sizeof s_status.counters[0].name, "images_per_s");
    s_status.counters[0].value = 412.5;
    snprintf(s_status.counters[1].name, sizeof s_status.counters[1].name, "step");
    s_status.counters[1].value = 1001;
    snprintf(s_status.counters[2].name, sizeof s_status.counters[2].name, "loss");
    s_status.counters[2].value = -0.0;
}

const void *sample_struct(enum proto_type type)
{
    fill();
    switch (type) {
    case PROTO_TYPE_READY: return &s_ready;
    case PROTO_TYPE_ORDER: return &s_order;
    case PROTO_TYPE_BATCH: return &s_batch;
    case PROTO_TYPE_HELLO: return &s_hello;
    case PROTO_TYPE_WELCOME: return &s_welcome;
    case PROTO_TYPE_EMBED: return &s_embed;
    case PROTO_TYPE_CODES: return &s_codes;
    case PROTO_TYPE_SAVE: return &s_save;
    case PROTO_TYPE_SAVED: return &s_saved;
    case PROTO_TYPE_ERROR: return &s_error;
    case PROTO_TYPE_CHECKPOINT: return &s_checkpoint;
    case PROTO_TYPE_STATUS: return &s_status;
    default: return NULL;
    }
}

enum proto_status sample_encode(enum proto_type type, struct proto_msg *out)
{
    fill();
    switch (type) {
    case PROTO_TYPE_READY: return proto_ready_encode(out, SAMPLE_RUN, &s_ready);
    case PROTO_TYPE_ORDER: return proto_order_encode(out, SAMPLE_RUN, &s_order);
    case PROTO_TYPE_BATCH: return proto_batch_encode(out, SAMPLE_RUN, &s_batch);
    case PROTO_TYPE_HELLO: return proto_hello_encode(out, SAMPLE_RUN, &s_hello);
    case PROTO_TYPE_WELCOME: return proto_welcome_encode(out, SAMPLE_RUN, &s_welcome);
    case PROTO_TYPE_EMBED: return proto_embed_encode(out, SAMPLE_RUN, &s_embed);
    case PROTO_TYPE_CODES: return proto_codes_encode(out, SAMPLE_RUN, &s_codes);
    case PROTO_TYPE_SAVE: return proto_save_encode(out, SAMPLE_RUN, &s_save);
    case PROTO_TYPE_SAVED: return proto_saved_encode(out, SAMPLE_RUN, &s_saved);
    case PROTO_TYPE_ERROR: return proto_error_encode(out, SAMPLE_RUN, &s_error);
    case PROTO_TYPE_CHECKPOINT: return proto_checkpoint_encode(out, SAMPLE_RUN, &s_checkpoint);
    case PROTO_TYPE_STATUS: return proto_status_msg_encode(out, SAMPLE_RUN, &s_status);
    default: return PROTO_ERR_BAD_ARG;
    }
}
