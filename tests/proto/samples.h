/* Valid sample messages of every type, shared by the proto tests and the fuzz
 * corpus generator (and the union of all decoded structs, which the fuzz
 * targets use too).  Tensor data lives in static arrays. */
#ifndef SWAV_TESTS_PROTO_SAMPLES_H
#define SWAV_TESTS_PROTO_SAMPLES_H

#include "proto/proto.h"

/* Fill *m with a valid message of `type`, encode it into out with run id
 * SAMPLE_RUN; returns the encoder's status. */
#define SAMPLE_RUN "run-0001"
enum proto_status sample_encode(enum proto_type type, struct proto_msg *out);

/* The struct sample_encode encoded (static storage), for comparisons. */
const void *sample_struct(enum proto_type type);

/* Room for the decoded struct of any message type (the decoders' output in
 * the codec test and the fuzz targets). */
union sample_any_msg {
    struct proto_ready ready;
    struct proto_order order;
    struct proto_batch batch;
    struct proto_hello hello;
    struct proto_welcome welcome;
    struct proto_embed embed;
    struct proto_codes codes;
    struct proto_save save;
    struct proto_saved saved;
    struct proto_error error;
    struct proto_checkpoint checkpoint;
    struct proto_status_msg status;
};

#endif
