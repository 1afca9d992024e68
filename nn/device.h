/* Picks a backend by the name users give it (--device): "cpu", "cuda" (GPU
 * 0) or "cuda:N".  Built into swav_nn_device, which carries the CUDA backend
 * where the build found it (meson: have_cuda) and says so where it did not,
 * so the programs that take --device (trainer, evaluator) need no #ifdef. */
#ifndef SWAV_NN_DEVICE_H
#define SWAV_NN_DEVICE_H

#include <stddef.h>

#include "backend.h"

/* Checks the name only: 0, or -1 with a message ("cpu", "cuda", "cuda:N"). */
int nn_device_check(const char *device, char *err, size_t errlen);
/* The backend for `device`; cpu_threads for the CPU backend (<= 0: the
 * runtimes' defaults).  NULL with a message naming the reason: an unknown
 * name, a build without CUDA, no usable GPU (the driver's words), an index
 * past the GPUs present. */
nn_backend_t *nn_device_open(const char *device, int cpu_threads, char *err, size_t errlen);

/* The collective for gradients and SyncBN on this backend, for the ranks of
 * `bootstrap` (the trainer's ZeroMQ ring, which carries the NCCL id): NCCL
 * on the CUDA backend; NULL with err "" on the CPU backend, where the
 * bootstrap itself serves.  NULL with a message when NCCL fails to form. */
struct nn_collective;
struct nn_collective *nn_device_collective_new(nn_backend_t *be, struct nn_collective *bootstrap,
                                               int timeout_ms, char *err, size_t errlen);

#endif
