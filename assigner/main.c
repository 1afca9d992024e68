/* swav-assigner: the queue and Sinkhorn-Knopp as a service for the trainer
 * ranks of one run.  Flags in, logs on stderr, graceful SIGINT/SIGTERM; the
 * training config itself arrives with the ranks' hello messages.  See
 * docs/assigner.md. */
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "common/flags.h"
#include "common/log.h"
#include "server.h"
#ifdef SWAV_HAVE_CUDA
#include "sinkhorn_cuda.h"
#endif

struct cli {
    const char *endpoint;
    const char *run;
    const char *resume;
    int64_t threads;
    const char *device;
    int64_t embed_timeout_ms;
    int64_t hello_timeout_ms;
    int64_t stale_peer_ms;
    int64_t heartbeat_ms;
    int64_t max_msg_mb;
    double collapse_entropy_frac;
    int64_t collapse_min_used;
    int64_t log_every;
    const char *curve_secret;
    const char *curve_allow;
};

#define F(name, type, field, mn, mx, def, help, ...) \
    {name, type, offsetof(struct cli, field), mn, mx, def, help, __VA_ARGS__}
static const struct swav_flag cli_flags[] = {
    F("endpoint", SWAV_FLAG_STR, endpoint, 0, 0, "tcp://127.0.0.1:5570",
      "ROUTER bind address (loopback or ipc:// unless told otherwise)"),
    F("run", SWAV_FLAG_STR, run, 0, 0, "", "run id to serve (empty: the first hello's)"),
    F("resume", SWAV_FLAG_STR, resume, 0, 0, "",
      "checkpoint whose queue (<checkpoint>.queue) to restore when the session forms"),
    F("threads", SWAV_FLAG_INT, threads, 1, 64, "2", "Sinkhorn and BLAS threads (--device cpu)"),
    F("device", SWAV_FLAG_STR, device, 0, 0, "cpu",
      "where scores and Sinkhorn run: cpu, cuda (GPU 0) or cuda:N (builds with the CUDA "
      "toolkit)", 0, 0, SWAV_FLAG_DEVICE_CHOICES),
    F("embed_timeout_ms", SWAV_FLAG_INT, embed_timeout_ms, 1, 86400000, "60000",
      "a rank this late with its embed gets the others an error naming it"),
    F("hello_timeout_ms", SWAV_FLAG_INT, hello_timeout_ms, 1, 86400000, "120000",
      "likewise for the hello of every rank"),
    F("stale_peer_ms", SWAV_FLAG_INT, stale_peer_ms, 0, 86400000, "60000",
      "a rank silent this long may be taken over by a new peer's hello"),
    F("heartbeat_ms", SWAV_FLAG_INT, heartbeat_ms, 0, 3600000, "2000",
      "ZMTP heartbeat interval (0: off)"),
    F("max_msg_mb", SWAV_FLAG_INT, max_msg_mb, 1, 1 << 20, "4096",
      "largest frame accepted (ZMQ_MAXMSGSIZE), MiB"),
    F("collapse_entropy_frac", SWAV_FLAG_FLOAT, collapse_entropy_frac, 0, 1, "0.95",
      "warn when the mean assignment entropy exceeds this fraction of ln K"),
    F("collapse_min_used", SWAV_FLAG_INT, collapse_min_used, 0, 1 << 20, "0",
      "warn when fewer prototypes get an argmax (0: 5% of min(K, rows))"),
    F("log_every", SWAV_FLAG_INT, log_every, 0, 1 << 30, "50", "a statistics line every N steps"),
    F("curve_secret", SWAV_FLAG_STR, curve_secret, 0, 0, "",
      "CURVE keypair file (swav keygen): the endpoint accepts encrypted trainers only"),
    F("curve_allow", SWAV_FLAG_STR, curve_allow, 0, 0, "",
      "file of trainer public keys let in (with --curve_secret; empty: any key)"),
};
#undef F

static assigner_server_t *g_server;

static void on_signal(int sig)
{
    (void)sig;
    if (g_server) assigner_server_stop(g_server);
}

int main(int argc, char **argv)
{
    swav_log_init("assigner", -1);
    struct cli cli;
    struct swav_flag_set set = {cli_flags, sizeof cli_flags / sizeof cli_flags[0], &cli};
    char err[512];
    int pr = swav_flags_parse(&set, 1, argc - 1, argv + 1, err, sizeof err);
    if (pr == 1) {
        swav_flags_usage(stdout, "swav-assigner", &set, 1);
        return 0;
    }
    if (pr < 0) {
        fprintf(stderr, "swav-assigner: %s\n", err);
        swav_flags_usage(stderr, "swav-assigner", &set, 1);
        return 2;
    }
    int gpu = 0;
    const int kind = swav_flags_parse_device(cli.device, &gpu);
    if (kind < 0) {
        fprintf(stderr, "swav-assigner: --device %s: expected cpu, cuda or cuda:N\n", cli.device);
        swav_flags_usage(stderr, "swav-assigner", &set, 1);
        return 2;
    }
    if (kind == 1) {
#ifdef SWAV_HAVE_CUDA
        char why[256];
        const int count = sinkhorn_cuda_device_count(why, sizeof why);
        if (count == 0) {
            LOG_ERROR("--device %s: no usable CUDA device (%s)", cli.device, why);
            return 2;
        }
        if (gpu >= count) {
            LOG_ERROR("--device %s: %d CUDA device(s) present", cli.device, count);
            return 2;
        }
#else
        LOG_ERROR("--device %s: swav-assigner was built without CUDA (nvcc/cuDNN/NCCL not "
                  "found at build time)", cli.device);
        return 2;
#endif
    }
    struct assigner_server_opts o = {
        .endpoint = cli.endpoint,
        .run = cli.run,
        .resume = cli.resume,
        .threads = (int)cli.threads,
        .device = cli.device,
        .embed_timeout_ms = (int)cli.embed_timeout_ms,
        .hello_timeout_ms = (int)cli.hello_timeout_ms,
        .stale_peer_ms = (int)cli.stale_peer_ms,
        .heartbeat_ms = (int)cli.heartbeat_ms,
        .max_msg_bytes = cli.max_msg_mb << 20,
        .collapse_entropy_frac = cli.collapse_entropy_frac,
        .collapse_min_used = (int)cli.collapse_min_used,
        .log_every = (int)cli.log_every,
        .curve_secret = cli.curve_secret,
        .curve_allow = cli.curve_allow,
    };
    g_server = assigner_server_new(&o, err, sizeof err);
    if (!g_server) {
        LOG_ERROR("%s", err);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int rc = assigner_server_run(g_server);
    assigner_server_destroy(&g_server);
    return rc == 0 ? 0 : 1;
}
