/* safetensors reader/writer: round trip (in memory and through a file), then
 * every kind of malformed file refused with its own status, then a few
 * thousand random mutations of a valid file parsed without a crash. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/rng.h"
#include "proto/safetensors.h"
#include "tests/expect.h"


/* A file from a header text and `data_len` data bytes (0, 1, 2, ...). */
static uint8_t *make_file(const char *header, size_t data_len, size_t *len)
{
    size_t hl = strlen(header);
    uint8_t *b = malloc(8 + hl + data_len + 1);
    for (int i = 0; i < 8; i++) {
        b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    }
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) {
        b[8 + hl + i] = (uint8_t)i;
    }
    *len = 8 + hl + data_len;
    return b;
}

static void expect_status(const char *what, const char *header, size_t data_len,
                          enum safetensors_status want, const char *must_mention)
{
    size_t len;
    uint8_t *b = make_file(header, data_len, &len);
    struct safetensors_file f;
    char err[512] = "";
    enum safetensors_status st = safetensors_parse(&f, b, len, err, sizeof err);
    EXPECT(st == want, "%s: got %s (%s), want %s", what, safetensors_status_str(st), err,
           safetensors_status_str(want));
    if (st == SAFETENSORS_OK) {
        safetensors_file_free(&f);
    } else if (must_mention) {
        EXPECT(strstr(err, must_mention) != NULL, "%s: message \"%s\" does not name \"%s\"",
               what, err, must_mention);
    }
    printf("  %-34s -> %-28s %s\n", what, safetensors_status_str(st), err);
    free(b);
}

static void test_round_trip(void)
{
    float a[6] = {1.5f, -2.25f, 0.0f, 3.0e-8f, 1e30f, -0.0f};
    int64_t n[1] = {123456789012345LL};
    uint16_t h[3] = {0x3c00 /* 1 */, 0xc000 /* -2 */, 0x0001 /* 2^-24 */};
    uint16_t bf[2] = {0x3f80 /* 1 */, 0xc040 /* -3 */};
    int32_t i32[2] = {-7, 1 << 30};
    uint8_t u8[3] = {0, 128, 255};
    struct safetensors_writer w;
    safetensors_writer_init(&w);
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s2[1] = {2}, s0[1] = {0};
    EXPECT(safetensors_writer_add(&w, "layer1.0.conv1.weight", SAFETENSORS_F32, 2, s23, a) ==
               SAFETENSORS_OK, "add");
    EXPECT(safetensors_writer_add(&w, "bn.num_batches_tracked", SAFETENSORS_I64, 0, NULL, n) ==
               SAFETENSORS_OK, "add scalar");
    EXPECT(safetensors_writer_add(&w, "h", SAFETENSORS_F16, 1, s3, h) == SAFETENSORS_OK, "f16");
    EXPECT(safetensors_writer_add(&w, "bf", SAFETENSORS_BF16, 1, s2, bf) == SAFETENSORS_OK, "bf");
    EXPECT(safetensors_writer_add(&w, "i", SAFETENSORS_I32, 1, s2, i32) == SAFETENSORS_OK, "i32");
    EXPECT(safetensors_writer_add(&w, "u", SAFETENSORS_U8, 1, s3, u8) == SAFETENSORS_OK, "u8");
    EXPECT(safetensors_writer_add(&w, "empty", SAFETENSORS_F32, 1, s0, NULL) == SAFETENSORS_OK,
           "empty");
    EXPECT(safetensors_writer_add(&w, "h", SAFETENSORS_F32, 1, s3, a) == SAFETENSORS_ERR_DUPLICATE,
           "duplicate refused");
    EXPECT(safetensors_writer_add(&w, "", SAFETENSORS_F32, 1, s3, a) == SAFETENSORS_ERR_BAD_NAME,
           "empty name refused");
    EXPECT(safetensors_writer_set_meta(&w, "epoch", "7") == SAFETENSORS_OK, "meta");
    EXPECT(safetensors_writer_set_meta(&w, "config", "{\"a\": [1, 2]}") == SAFETENSORS_OK, "meta");

    char path[] = "/tmp/test_safetensors_XXXXXX";
    int fd = mkstemp(path);
    EXPECT(fd >= 0, "mkstemp");
    close(fd);
    char err[512] = "";
    EXPECT(safetensors_writer_write(&w, path, err, sizeof err) == SAFETENSORS_OK, "write: %s", err);
    uint8_t *mem;
    size_t memlen;
    EXPECT(safetensors_writer_to_buffer(&w, &mem, &memlen) == SAFETENSORS_OK, "to_buffer");
    safetensors_writer_free(&w);

    for (int pass = 0; pass < 2; pass++) {
        struct safetensors_file f;
        enum safetensors_status st = pass == 0
                                         ? safetensors_read(&f, path, 0, err, sizeof err)
                                         : safetensors_parse(&f, mem, memlen, err, sizeof err);
        EXPECT(st == SAFETENSORS_OK, "pass %d: %s", pass, err);
        if (st != SAFETENSORS_OK) {
            continue;
        }
        EXPECT(f.ntensors == 7, "ntensors %d", f.ntensors);
        EXPECT(safetensors_meta_get(&f, "epoch") && !strcmp(safetensors_meta_get(&f, "epoch"), "7"),
               "meta epoch");
        EXPECT(!strcmp(safetensors_meta_get(&f, "config"), "{\"a\": [1, 2]}"), "meta config");
        /* each tensor aligned to its element size within the data section */
        size_t data0 = 0;
        for (int i = 0; i < 8; i++) {
            data0 |= (size_t)(pass ? mem : f.owned)[i] << (8 * i);
        }
        EXPECT(data0 % 8 == 0, "header padded to 8: %zu", data0);
        for (int i = 0; i < f.ntensors; i++) {
            size_t off = (size_t)(f.tensors[i].data - (pass ? mem : f.owned)) - 8 - data0;
            EXPECT(off % safetensors_dtype_size(f.tensors[i].dtype) == 0, "%s misaligned",
                   f.tensors[i].name);
        }
        int k = safetensors_find(&f, "layer1.0.conv1.weight");
        EXPECT(k >= 0 && f.tensors[k].ndim == 2 && f.tensors[k].shape[0] == 2 &&
                   f.tensors[k].shape[1] == 3, "shape");
        float got[6];
        EXPECT(safetensors_tensor_to_f32(&f.tensors[k], got) == SAFETENSORS_OK, "f32");
        EXPECT(!memcmp(got, a, sizeof a), "f32 values");
        k = safetensors_find(&f, "bn.num_batches_tracked");
        int64_t gi;
        EXPECT(k >= 0 && f.tensors[k].ndim == 0 && f.tensors[k].numel == 1, "scalar");
        EXPECT(safetensors_tensor_to_i64(&f.tensors[k], &gi) == SAFETENSORS_OK && gi == n[0],
               "i64 %" PRId64, gi);
        k = safetensors_find(&f, "h");
        EXPECT(safetensors_tensor_to_f32(&f.tensors[k], got) == SAFETENSORS_OK && got[0] == 1.0f &&
                   got[1] == -2.0f && got[2] == 5.9604644775390625e-8f, "f16 %g %g %g", got[0],
               got[1], got[2]);
        k = safetensors_find(&f, "bf");
        EXPECT(safetensors_tensor_to_f32(&f.tensors[k], got) == SAFETENSORS_OK && got[0] == 1.0f &&
                   got[1] == -3.0f, "bf16");
        EXPECT(safetensors_tensor_to_i64(&f.tensors[k], &gi) == SAFETENSORS_ERR_CONVERT,
               "float to int refused");
        k = safetensors_find(&f, "i");
        EXPECT(safetensors_tensor_to_f32(&f.tensors[k], got) == SAFETENSORS_OK && got[0] == -7.0f,
               "i32");
        k = safetensors_find(&f, "u");
        EXPECT(safetensors_tensor_to_f32(&f.tensors[k], got) == SAFETENSORS_OK && got[2] == 255.0f,
               "u8");
        k = safetensors_find(&f, "empty");
        EXPECT(k >= 0 && f.tensors[k].numel == 0, "empty");
        EXPECT(safetensors_find(&f, "nope") == -1, "find missing");
        safetensors_file_free(&f);
    }
    /* header only: same names and metadata, no data; a cut file refused */
    struct safetensors_file hf;
    EXPECT(safetensors_read_header(&hf, path, err, sizeof err) == SAFETENSORS_OK, "header: %s",
           err);
    EXPECT(hf.ntensors == 7 && safetensors_find(&hf, "h") >= 0 &&
               hf.tensors[safetensors_find(&hf, "h")].data == NULL &&
               !strcmp(safetensors_meta_get(&hf, "epoch"), "7"), "header-only contents");
    safetensors_file_free(&hf);
    EXPECT(truncate(path, (off_t)memlen - 3) == 0, "truncate");
    EXPECT(safetensors_read_header(&hf, path, err, sizeof err) == SAFETENSORS_ERR_OFFSETS,
           "header of a cut file: %s", err);
    EXPECT(truncate(path, 20) == 0, "truncate");
    EXPECT(safetensors_read_header(&hf, path, err, sizeof err) == SAFETENSORS_ERR_TRUNCATED,
           "header of a cut header: %s", err);
    printf("  header only, cut header: %s\n", err);
    EXPECT(safetensors_read_header(&hf, "/nonexistent", err, sizeof err) == SAFETENSORS_ERR_IO,
           "absent");
    free(mem);
    unlink(path);
    printf("round trip: ok\n");
}

static void test_malformed(void)
{
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    expect_status("valid", ok, 8, SAFETENSORS_OK, NULL);
    expect_status("valid + trailing data", ok, 12, SAFETENSORS_OK, NULL);
    expect_status("padded header", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}    ",
                  8, SAFETENSORS_OK, NULL);
    expect_status("empty object", "{}", 0, SAFETENSORS_OK, NULL);
    expect_status("metadata only", "{\"__metadata__\":{\"k\":\"v\"}}", 0, SAFETENSORS_OK, NULL);
    expect_status("unknown entry field ignored",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8,
                  SAFETENSORS_OK, NULL);

    /* truncations */
    {
        struct safetensors_file f;
        char err[256];
        uint8_t b[4] = {1, 0, 0, 0};
        EXPECT(safetensors_parse(&f, b, 4, err, sizeof err) == SAFETENSORS_ERR_TRUNCATED,
               "4 bytes");
        EXPECT(safetensors_parse(&f, b, 0, err, sizeof err) == SAFETENSORS_ERR_TRUNCATED,
               "0 bytes");
        size_t len;
        uint8_t *v = make_file(ok, 8, &len);
        EXPECT(safetensors_parse(&f, v, 20, err, sizeof err) == SAFETENSORS_ERR_TRUNCATED,
               "header cut");
        printf("  %-34s -> %s\n", "truncated header", err);
        EXPECT(safetensors_parse(&f, v, len - 1, err, sizeof err) == SAFETENSORS_ERR_OFFSETS,
               "data cut");
        EXPECT(strstr(err, "\"a\""), "names a: %s", err);
        printf("  %-34s -> %s\n", "truncated data", err);
        /* header length over the cap, and absurdly large */
        v[3] = 0x10; /* 256 MiB + */
        EXPECT(safetensors_parse(&f, v, len, err, sizeof err) == SAFETENSORS_ERR_HEADER_TOO_LARGE,
               "too big");
        printf("  %-34s -> %s\n", "header too large", err);
        memset(v, 0xff, 8);
        EXPECT(safetensors_parse(&f, v, len, err, sizeof err) == SAFETENSORS_ERR_HEADER_TOO_LARGE,
               "2^64-1");
        free(v);
    }

    expect_status("bad JSON", "{\"a\":{\"dtype\":\"F32\",", 0, SAFETENSORS_ERR_JSON, NULL);
    expect_status("JSON garbage after", "{} x", 0, SAFETENSORS_ERR_JSON, NULL);
    expect_status("duplicate name",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  8, SAFETENSORS_ERR_JSON, NULL);
    expect_status("NUL in name",
                  "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  SAFETENSORS_ERR_JSON, NULL);
    expect_status("header is an array", "[1,2]", 0, SAFETENSORS_ERR_NOT_OBJECT, NULL);
    expect_status("entry not an object", "{\"w\":3}", 0, SAFETENSORS_ERR_NOT_OBJECT, "\"w\"");
    expect_status("metadata not an object", "{\"__metadata__\":[]}", 0,
                  SAFETENSORS_ERR_NOT_OBJECT, NULL);
    expect_status("metadata value not a string", "{\"__metadata__\":{\"epoch\":3}}", 0,
                  SAFETENSORS_ERR_WRONG_TYPE, "epoch");
    expect_status("missing dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  SAFETENSORS_ERR_MISSING_FIELD, "\"w\"");
    expect_status("missing offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
                  SAFETENSORS_ERR_MISSING_FIELD, "\"w\"");
    expect_status("dtype not a string", "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}",
                  4, SAFETENSORS_ERR_WRONG_TYPE, "\"w\"");
    expect_status("unknown dtype",
                  "{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                  SAFETENSORS_ERR_BAD_DTYPE, "\"w\"");
    expect_status("shape not an array",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}}", 16,
                  SAFETENSORS_ERR_WRONG_TYPE, "\"w\"");
    expect_status("negative dim",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
                  SAFETENSORS_ERR_BAD_SHAPE, "\"w\"");
    expect_status("float dim",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
                  SAFETENSORS_ERR_BAD_SHAPE, "\"w\"");
    expect_status("rank 9",
                  "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
                  1, SAFETENSORS_ERR_BAD_SHAPE, "\"w\"");
    expect_status("numel overflow",
                  "{\"w\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
                  "\"data_offsets\":[0,1]}}",
                  1, SAFETENSORS_ERR_BAD_SHAPE, "\"w\"");
    expect_status("shape/size mismatch",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                  SAFETENSORS_ERR_SIZE_MISMATCH, "\"w\"");
    expect_status("offsets reversed",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
                  SAFETENSORS_ERR_OFFSETS, "\"w\"");
    expect_status("offsets past the end",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[4,20]}}", 8,
                  SAFETENSORS_ERR_OFFSETS, "\"w\"");
    expect_status("negative offset",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8,
                  SAFETENSORS_ERR_OFFSETS, "\"w\"");
    expect_status("huge offset",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
                  "\"data_offsets\":[9223372036854775804,9223372036854775808]}}",
                  8, SAFETENSORS_ERR_JSON, NULL);
    expect_status("three offsets",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
                  SAFETENSORS_ERR_WRONG_TYPE, "\"w\"");
    expect_status("overlap",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                  12, SAFETENSORS_ERR_OVERLAP, "\"b\"");
    expect_status("overlap, not adjacent",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[10],\"data_offsets\":[0,10]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
                  "\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[5,6]}}",
                  10, SAFETENSORS_ERR_OVERLAP, "\"a\"");
    expect_status("empty tensors may share offsets",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                  8, SAFETENSORS_OK, NULL);
    char longname[400];
    memset(longname, 'x', sizeof longname);
    snprintf(longname, sizeof longname, "{\"%0300d\":{\"dtype\":\"U8\",\"shape\":[1],"
             "\"data_offsets\":[0,1]}}", 0);
    expect_status("name over the cap", longname, 1, SAFETENSORS_ERR_BAD_NAME, "000");
    expect_status("empty name", "{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                  SAFETENSORS_ERR_BAD_NAME, NULL);
}

/* Random mutations of a valid file: any status, never a crash (ASan/UBSan
 * builds make this stricter; tests/fuzz drives the same entry point). */
static void test_mutations(void)
{
    float a[64];
    for (int i = 0; i < 64; i++) {
        a[i] = (float)i;
    }
    struct safetensors_writer w;
    safetensors_writer_init(&w);
    int64_t s[2] = {8, 8}, s1[1] = {3};
    int64_t nb[1] = {5};
    safetensors_writer_add(&w, "conv.weight", SAFETENSORS_F32, 2, s, a);
    safetensors_writer_add(&w, "bn.num_batches_tracked", SAFETENSORS_I64, 0, NULL, nb);
    safetensors_writer_add(&w, "x", SAFETENSORS_F16, 1, s1, a);
    safetensors_writer_set_meta(&w, "epoch", "3");
    uint8_t *good;
    size_t len;
    safetensors_writer_to_buffer(&w, &good, &len);
    safetensors_writer_free(&w);
    struct swav_rng r;
    swav_rng_init(&r, 1234, 0, 0, 0);
    uint8_t *buf = malloc(len + 64);
    int counts[32] = {0};
    for (int it = 0; it < 20000; it++) {
        memcpy(buf, good, len);
        size_t n = len;
        int kind = (int)swav_rng_below(&r, 3);
        int edits = 1 + (int)swav_rng_below(&r, 4);
        for (int e = 0; e < edits; e++) {
            size_t pos = swav_rng_below(&r, (uint32_t)n);
            if (kind == 0) {
                buf[pos] = (uint8_t)swav_rng_u32(&r);
            } else if (kind == 1) {
                static const char tok[] = "{}[],:\"0123456789-.e ";
                buf[pos] = (uint8_t)tok[swav_rng_below(&r, sizeof tok - 1)];
            } else {
                n = pos;
            }
        }
        struct safetensors_file f;
        char err[256];
        enum safetensors_status st = safetensors_parse(&f, buf, n, err, sizeof err);
        counts[st]++;
        if (st == SAFETENSORS_OK) {
            safetensors_file_free(&f);
        }
        safetensors_fuzz_one(buf, n);
    }
    printf("mutations: 20000 parsed without a crash:");
    for (int i = 0; i < 32; i++) {
        if (counts[i]) {
            printf(" %s=%d", safetensors_status_str((enum safetensors_status)i), counts[i]);
        }
    }
    printf("\n");
    free(buf);
    free(good);
}

int main(void)
{
    test_round_trip();
    test_malformed();
    test_mutations();
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("all ok\n");
    return 0;
}
