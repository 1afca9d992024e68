/* Prints the index of a folder, one line per image ("i label w h format
 * path"), after a summary line, for test_index.py to compare with
 * torchvision's ImageFolder.  Usage: test_index ROOT [CACHE_DIR] */
#include <stdio.h>

#include "common/log.h"
#include "loader/index.h"

int main(int argc, char **argv)
{
    swav_log_init("test_index", -1);
    if (argc < 2) {
        fprintf(stderr, "usage: test_index ROOT [CACHE_DIR]\n");
        return 2;
    }
    struct loader_index_opts opts = {.cache_dir = argc > 2 ? argv[2] : NULL, .threads = 3};
    struct loader_index *ix = NULL;
    char err[1024];
    enum loader_index_status st = loader_index_open(&ix, argv[1], &opts, err, sizeof err);
    if (st != LOADER_INDEX_OK) {
        printf("error %d %s\n", (int)st, loader_index_status_str(st));
        fprintf(stderr, "test_index: %s\n", err);
        return 1;
    }
    printf("summary n=%u classes=%u bad=%u ignored=%u cached=%d report=%s\n", ix->n,
           ix->nclasses, ix->nbad, ix->nignored, ix->from_cache,
           ix->report_path[0] ? ix->report_path : "-");
    for (uint32_t c = 0; c < ix->nclasses; c++) printf("class %u %s\n", c, ix->classes[c]);
    for (uint32_t i = 0; i < ix->n; i++) {
        const struct loader_index_entry *e = &ix->entries[i];
        char path[4096];
        if (loader_index_path(ix, i, path, sizeof path) < 0) return 1;
        printf("img %u %d %u %u %u %llu %s\n", i, e->label, e->width, e->height, e->format,
               (unsigned long long)e->bytes, e->path);
    }
    loader_index_destroy(&ix);
    return ix == NULL ? 0 : 1;
}
