/* `swav`: the launcher.  One command for a whole run on one machine (like
 * torchrun), and the small tools around it:
 *   swav prepare fashion-mnist OUT   ImageFolder JPEGs from Debian's package
 *   swav train ...                   (coming with the trainer)
 *   swav status ...                  (coming with the trainer) */
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "prepare.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: swav COMMAND [args]\n\n"
            "commands:\n"
            "  prepare fashion-mnist OUT   convert Debian's dataset-fashion-mnist into\n"
            "                              OUT/train and OUT/test image folders\n"
            "  train                       pretrain with SwAV (not built yet)\n"
            "  status                      live state of a running job (not built yet)\n");
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
    if (!strcmp(cmd, "train") || !strcmp(cmd, "status")) {
        fprintf(stderr, "swav %s: not built yet: the trainer and its launcher are the next issue\n",
                cmd);
        return 2;
    }
    fprintf(stderr, "swav: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
