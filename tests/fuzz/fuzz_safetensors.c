/* libFuzzer target of the safetensors reader (proto/safetensors.h).
 *
 * Beyond "no crash, no sanitizer report" (safetensors_fuzz_one converts
 * every byte each tensor claims): a parsed file's tensors lie inside the
 * input and their byte length is numel x dtype size; what parses re-writes,
 * and the re-written file parses to the same names, dtypes, shapes, bytes
 * and metadata.  Built with replay_main.c by meson (suite 'fuzz', the seeds
 * in corpus/safetensors), or with clang for real fuzzing:
 *   clang -std=c11 -D_GNU_SOURCE -I. -g -O1 -fsanitize=fuzzer,address,undefined \
 *     tests/fuzz/fuzz_safetensors.c proto/safetensors.c common/fileio.c common/log.c \
 *     common/check.c common/timeutil.c -ljansson -lm -o fuzz_safetensors */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "proto/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    safetensors_fuzz_one(data, size);
    struct safetensors_file f;
    char err[256];
    enum safetensors_status st = safetensors_parse(&f, data, size, err, sizeof err);
    FUZZ_REQUIRE(safetensors_status_str(st)[0] != '\0');
    if (st != SAFETENSORS_OK) {
        FUZZ_REQUIRE(strlen(err) > 0);
        return 0;
    }
    struct safetensors_writer w;
    safetensors_writer_init(&w);
    for (int i = 0; i < f.ntensors; i++) {
        const struct safetensors_tensor *t = &f.tensors[i];
        FUZZ_REQUIRE(t->data >= data && t->data + t->nbytes <= data + size);
        FUZZ_REQUIRE(t->nbytes == t->numel * safetensors_dtype_size(t->dtype));
        FUZZ_REQUIRE(safetensors_writer_add(&w, t->name, t->dtype, t->ndim, t->shape, t->data) ==
                     SAFETENSORS_OK);
    }
    for (int i = 0; i < f.nmeta; i++) {
        FUZZ_REQUIRE(safetensors_writer_set_meta(&w, f.meta[i].key, f.meta[i].value) ==
                     SAFETENSORS_OK);
    }
    uint8_t *buf;
    size_t len;
    FUZZ_REQUIRE(safetensors_writer_to_buffer(&w, &buf, &len) == SAFETENSORS_OK);
    struct safetensors_file g;
    FUZZ_REQUIRE(safetensors_parse(&g, buf, len, err, sizeof err) == SAFETENSORS_OK);
    FUZZ_REQUIRE(g.ntensors == f.ntensors && g.nmeta == f.nmeta);
    for (int i = 0; i < f.ntensors; i++) {
        const struct safetensors_tensor *a = &f.tensors[i];
        int k = safetensors_find(&g, a->name);
        FUZZ_REQUIRE(k >= 0);
        const struct safetensors_tensor *b = &g.tensors[k];
        FUZZ_REQUIRE(a->dtype == b->dtype && a->ndim == b->ndim && a->nbytes == b->nbytes);
        FUZZ_REQUIRE(!memcmp(a->shape, b->shape, sizeof a->shape[0] * (size_t)a->ndim));
        FUZZ_REQUIRE(a->nbytes == 0 || !memcmp(a->data, b->data, a->nbytes));
    }
    for (int i = 0; i < f.nmeta; i++) {
        const char *v = safetensors_meta_get(&g, f.meta[i].key);
        FUZZ_REQUIRE(v && !strcmp(v, f.meta[i].value));
    }
    safetensors_file_free(&g);
    free(buf);
    safetensors_writer_free(&w);
    safetensors_file_free(&f);
    return 0;
}
