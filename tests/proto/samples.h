/* Valid sample messages of every type, shared by the proto tests and the fuzz
 * corpus generator.  Tensor data lives in static arrays. */
#ifndef SWAV_TESTS_PROTO_SAMPLES_H
#define SWAV_TESTS_PROTO_SAMPLES_H

#include "proto/proto.h"

/* Fill *m with a valid message of `type`, encode it into out with run id
 * SAMPLE_RUN; returns the encoder's status. */
#define SAMPLE_RUN "run-0001"
enum proto_status sample_encode(enum proto_type type, struct proto_msg *out);

/* The struct sample_encode encoded (static storage), for comparisons. */
const void *sample_struct(enum proto_type type);

#endif
