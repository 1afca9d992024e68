/* `swav`: the launcher.  One command for a whole run on one machine (like
 * torchrun), and the small tools around it:
 *   swav prepare fashion-mnist OUT   ImageFolder JPEGs from Debian's package
 *   swav train [flags]               a whole run: assigner, loaders, trainers, evaluator
 *   swav status [DUMP_PATH]          the live state of a run
 *   swav keygen DIR [NAME...]        CURVE keypairs for TCP endpoints (docs/security.md) */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <unistd.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "proto/wire.h"
#include "prepare.h"
#include "status.h"
#include "train.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: swav COMMAND [args]\n\n"
            "commands:\n"
            "  prepare fashion-mnist OUT   convert Debian's dataset-fashion-mnist into\n"
            "                              OUT/train and OUT/test image folders\n"
            "  train [flags]               pretrain with SwAV: main_swav.py's flags, plus\n"
            "                              --nproc W --loaders N --workers M [--eval-data DIR]\n"
            "                              [--eval_probes knn,linear,semisup]\n"
            "                              [--curve_keys KEYS: CURVE on every link]\n"
            "                              (docs/trainer.md)\n"
            "  status [DUMP_PATH]          live state of a run (default: .)\n"
            "  keygen DIR [NAME...]        CURVE keypairs DIR/NAME.key (0600, secret) and\n"
            "                              DIR/NAME.pub for each NAME (default: assigner\n"
            "                              trainer loader); existing files are kept\n");
}

/* swav keygen DIR [NAME...]: one keypair per role (or per host) for the
 * CURVE flags of the roles; a key file already there is never overwritten. */
static int keygen_main(int argc, char **argv)
{
    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        fprintf(argc < 1 ? stderr : stdout, "usage: swav keygen DIR [NAME...]\n");
        return argc < 1 ? 2 : 0;
    }
    const char *dir = argv[0];
    static const char *const defaults[] = {"assigner", "trainer", "loader"};
    int n = argc > 1 ? argc - 1 : 3;
    const char *const *names = argc > 1 ? (const char *const *)argv + 1 : defaults;
    mode_t old = umask(077);
    int rc = mkdir(dir, 0700) == 0 || errno == EEXIST ? 0 : 1;
    if (rc) fprintf(stderr, "swav keygen: cannot create %s: %s\n", dir, strerror(errno));
    for (int i = 0; i < n && !rc; i++) {
        const char *nm = names[i];
        if (!*nm || strchr(nm, '/') || nm[0] == '.') {
            fprintf(stderr, "swav keygen: bad key name '%s'\n", nm);
            rc = 2;
            break;
        }
        char key[PATH_MAX], pub[PATH_MAX], err[512] = "";
        snprintf(key, sizeof key, "%s/%s.key", dir, nm);
        snprintf(pub, sizeof pub, "%s/%s.pub", dir, nm);
        if (access(key, F_OK) == 0 || access(pub, F_OK) == 0) {
            fprintf(stderr, "swav keygen: %s or %s exists; keeping it\n", key, pub);
            continue;
        }
        if (proto_curve_keygen(key, pub, err, sizeof err) != PROTO_OK ||
            chmod(key, 0600) != 0 || chmod(pub, 0644) != 0) {
            fprintf(stderr, "swav keygen: %s\n", err[0] ? err : strerror(errno));
            rc = 1;
            break;
        }
        printf("%s (secret, 0600)  %s (public)\n", key, pub);
    }
    umask(old);
    return rc;
}

int main(int argc, char **argv)
{
    swav_log_init("swav", -1);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "prepare")) {
        return swav_prepare_main(argc - 2, argv + 2);
    }
    if (!strcmp(cmd, "train")) {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) {
            fprintf(stderr, "swav: cannot find my own folder\n");
            return 1;
        }
        self[n] = '\0';
        return swav_train_main(argc - 2, argv + 2, dirname(self));
    }
    if (!strcmp(cmd, "keygen")) {
        return keygen_main(argc - 2, argv + 2);
    }
    if (!strcmp(cmd, "status")) {
        return swav_status_main(argc - 2, argv + 2);
    }
    fprintf(stderr, "swav: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
