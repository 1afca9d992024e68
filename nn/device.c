/* --device names to backends: see device.h. */
#include "device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/flags.h"

#ifdef SWAV_HAVE_CUDA
#include "cuda/backend_cuda.h"
#endif

int nn_device_check(const char *device, char *err, size_t errlen)
{
    int index;
    if (swav_flags_parse_device(device, &index) < 0) {
        snprintf(err, errlen, "--device %s: not one of cpu, cuda, cuda:N", device);
        return -1;
    }
    return 0;
}

nn_backend_t *nn_device_open(const char *device, int cpu_threads, char *err, size_t errlen)
{
    int index;
    int kind = swav_flags_parse_device(device, &index);
    if (kind < 0) {
        nn_device_check(device, err, errlen);
        return NULL;
    }
    if (kind == 0) {
        return nn_backend_cpu_new(cpu_threads);
    }
#ifdef SWAV_HAVE_CUDA
    int n = nn_cuda_device_count();
    if (n == 0) {
        snprintf(err, errlen, "--device %s: no usable CUDA device (%s)", device,
                 nn_cuda_count_error());
        return NULL;
    }
    if (index >= n) {
        snprintf(err, errlen, "--device %s: this machine has %d CUDA device%s (cuda:0%s)", device,
                 n, n == 1 ? "" : "s", n == 1 ? "" : " and up");
        return NULL;
    }
    nn_backend_t *be = nn_backend_cuda_new(index);
    if (!be) {
        snprintf(err, errlen, "--device %s: the CUDA backend could not start (see the log)",
                 device);
    }
    return be;
#else
    snprintf(err, errlen, "--device %s: this build has no CUDA backend (nvcc, cuDNN, cuBLAS or "
             "NCCL was not found under /usr/local/cuda when it was configured)", device);
    return NULL;
#endif
}

struct nn_collective *nn_device_collective_new(nn_backend_t *be, struct nn_collective *bootstrap,
                                               int timeout_ms, char *err, size_t errlen)
{
    err[0] = '\0';
    if (!strcmp(nn_backend_name(be), "cpu")) {
        return NULL;
    }
#ifdef SWAV_HAVE_CUDA
    return nn_collective_nccl_new(be, bootstrap, timeout_ms, err, errlen);
#else
    (void)bootstrap;
    (void)timeout_ms;
    snprintf(err, errlen, "no collective for the %s backend in this build", nn_backend_name(be));
    return NULL;
#endif
}
