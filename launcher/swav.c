/* `swav`: the launcher.  One command for a whole run on one machine (like
 * torchrun), and the small tools around it:
 *   swav prepare fashion-mnist OUT   ImageFolder JPEGs from Debian's package
 *   swav train [flags]               a whole run: assigner, loaders, trainers, evaluator
 *   swav status [DUMP_PATH]          the live state of a run */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <unistd.h>
#include <string.h>

#include "common/log.h"
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
            "  status [DUMP_PATH]          live state of a run (default: .)\n");
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
    if (!strcmp(cmd, "status")) {
        return swav_status_main(argc - 2, argv + 2);
    }
    fprintf(stderr, "swav: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
