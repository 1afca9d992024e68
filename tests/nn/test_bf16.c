/* The host side of the bf16/fp16 backbone (suite 'unit'; the device side
 * is tests/cuda/test_cuda_lowp.c):
 * - nn_bf16_from_f32 rounds to nearest even (ties, carries into the
 *   exponent, overflow to inf, subnormals, signed zero, NaN) and
 *   nn_f32_from_bf16 inverts it on all 65536 encodings;
 * - nn_f16_from_f32 likewise (ties, the carry into the exponent, 65504 and
 *   the overflow threshold 65520, fp16 subnormals and their rounding into
 *   the normals, underflow to zero at 2^-25, NaN), nn_f32_from_f16 inverts
 *   it on all 65536 encodings, and where the compiler has _Float16 (GCC 12,
 *   libgcc's conversion) both agree with it on every 613th float bit
 *   pattern (7 million values);
 * - byte counts of BF16 and F16 tensors and layouts (2 bytes an element;
 *   F32 and I32 unchanged);
 * - nn_tensor_convert between float NCHW and bf16 or fp16 NHWC: NHWC
 *   offsets, the rounding, an exact round trip of representable values;
 * - a model with cfg.act_dtype BF16 or F16 is refused on the CPU backend,
 *   which has neither. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/layers.h"
#include "nn/resnet.h"

#define EXPECT_SHOW_COND 1
#include "tests/expect.h"

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void test_rounding(void)
{
    static const struct {
        uint32_t f;
        uint16_t want;
    } cases[] = {
        {0x3f800000u, 0x3f80u}, /* 1 */
        {0x3f808000u, 0x3f80u}, /* 1 + 2^-8: a tie, to even (down) */
        {0x3f818000u, 0x3f82u}, /* 1 + 3 2^-8: a tie, to even (up) */
        {0x3f808001u, 0x3f81u}, /* just above the tie */
        {0x3f807fffu, 0x3f80u}, /* just below it */
        {0x3fffffffu, 0x4000u}, /* the carry goes into the exponent */
        {0x7f7fffffu, 0x7f80u}, /* FLT_MAX rounds to inf */
        {0x7f800000u, 0x7f80u}, /* inf */
        {0xff800000u, 0xff80u}, /* -inf */
        {0x80000000u, 0x8000u}, /* -0 */
        {0x00000001u, 0x0000u}, /* the smallest subnormal rounds to 0 */
        {0x00018000u, 0x0002u}, /* a subnormal tie, to even (up) */
        {0x00008000u, 0x0000u}, /* a subnormal tie, to even (down) */
        {0xbfc0c000u, 0xbfc1u}, /* -1.5059: a negative value, above the tie */
        {0x7fc00000u, 0x7fffu}, /* NaN: the canonical one */
        {0xffa00001u, 0x7fffu}, /* a signalling NaN too */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = nn_bf16_from_f32(from_bits(cases[i].f));
        EXPECT(got == cases[i].want, "bf16(%08x) = %04x, want %04x", cases[i].f, got, cases[i].want);
    }
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = nn_f32_from_bf16((uint16_t)h);
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        if (u != h << 16 || (!isnan(f) && nn_bf16_from_f32(f) != h)) {
            bad++;
        }
    }
    EXPECT(bad == 0, "%d of the 65536 bf16 values do not survive f32 and back", bad);
}

static void test_rounding_f16(void)
{
    static const struct {
        uint32_t f;
        uint16_t want;
    } cases[] = {
        {0x3f800000u, 0x3c00u}, /* 1 */
        {0x3f801000u, 0x3c00u}, /* 1 + 2^-11: a tie, to even (down) */
        {0x3f803000u, 0x3c02u}, /* 1 + 3 2^-11: a tie, to even (up) */
        {0x3f801001u, 0x3c01u}, /* just above the tie */
        {0x3f800fffu, 0x3c00u}, /* just below it */
        {0x3fffffffu, 0x4000u}, /* the carry goes into the exponent */
        {0x477fe000u, 0x7bffu}, /* 65504, the largest finite */
        {0x477fefffu, 0x7bffu}, /* just below 65520 */
        {0x477ff000u, 0x7c00u}, /* 65520: a tie, to even: inf */
        {0x7f7fffffu, 0x7c00u}, /* FLT_MAX: inf */
        {0x7f800000u, 0x7c00u}, /* inf */
        {0xff800000u, 0xfc00u}, /* -inf */
        {0xc7800000u, 0xfc00u}, /* -65536: -inf */
        {0x80000000u, 0x8000u}, /* -0 */
        {0x38800000u, 0x0400u}, /* 2^-14, the smallest normal */
        {0x387fc000u, 0x03ffu}, /* the largest subnormal, 1023 2^-24 */
        {0x387fe000u, 0x0400u}, /* 1023.5 2^-24: a tie, to even: into the normals */
        {0x33800000u, 0x0001u}, /* 2^-24, the smallest subnormal */
        {0x33000000u, 0x0000u}, /* 2^-25: a tie, to even: zero */
        {0x33000001u, 0x0001u}, /* just above it */
        {0x33c00000u, 0x0002u}, /* 1.5 2^-24: a tie, to even (up) */
        {0x34200000u, 0x0002u}, /* 2.5 2^-24: a tie, to even (down) */
        {0xb3c00000u, 0x8002u}, /* a negative subnormal */
        {0x00000001u, 0x0000u}, /* a float subnormal: zero */
        {0x7fc00000u, 0x7fffu}, /* NaN: the canonical one */
        {0xffa00001u, 0x7fffu}, /* a signalling NaN too */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = nn_f16_from_f32(from_bits(cases[i].f));
        EXPECT(got == cases[i].want, "f16(%08x) = %04x, want %04x", cases[i].f, got,
               cases[i].want);
    }
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = nn_f32_from_f16((uint16_t)h);
        if (isnan(f) != (((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff) != 0) ||
            (!isnan(f) && nn_f16_from_f32(f) != h)) {
            bad++;
        }
    }
    EXPECT(bad == 0, "%d of the 65536 fp16 values do not survive f32 and back", bad);
    EXPECT(nn_f32_from_f16(0x7bffu) == 65504.0f && nn_f32_from_f16(0x0001u) == 0x1p-24f &&
               nn_f32_from_f16(0x8400u) == -0x1p-14f && isinf(nn_f32_from_f16(0xfc00u)),
           "fp16 decoding of 65504, 2^-24, -2^-14, -inf");
#ifdef __FLT16_MAX__
    long bad_to = 0, bad_from = 0, seen = 0;
    for (uint64_t u = 0; u < (1ull << 32); u += 613, seen++) {
        float f = from_bits((uint32_t)u);
        _Float16 r = (_Float16)f;
        uint16_t want;
        memcpy(&want, &r, sizeof want);
        uint16_t got = nn_f16_from_f32(f);
        if (isnan(f) ? got != 0x7fffu : got != want) {
            bad_to++;
        }
        _Float16 hv;
        uint16_t hb = (uint16_t)u;
        memcpy(&hv, &hb, sizeof hv);
        float back = nn_f32_from_f16(hb);
        if (!(back == (float)hv || (isnan(back) && isnan((float)hv)))) {
            bad_from++;
        }
    }
    EXPECT(bad_to == 0 && bad_from == 0,
           "against _Float16: %ld conversions to fp16 and %ld back differ", bad_to, bad_from);
    printf("fp16 against _Float16: %ld values\n", seen);
#endif
}

static void test_bytes(void)
{
    EXPECT(nn_dtype_bytes(NN_DTYPE_BF16) == 2 && nn_dtype_bytes(NN_DTYPE_F16) == 2 &&
               nn_dtype_bytes(NN_DTYPE_F32) == 4 && nn_dtype_bytes(NN_DTYPE_I32) == 4,
           "dtype bytes");
    EXPECT(nn_layout_bytes_dt(NN_DTYPE_F16, NN_LAYOUT_NHWC, 2, 3, 5, 7) == 2 * 3 * 5 * 7 * 2,
           "fp16 NHWC bytes");
    EXPECT(nn_dtype_is_lowp(NN_DTYPE_BF16) && nn_dtype_is_lowp(NN_DTYPE_F16) &&
               !nn_dtype_is_lowp(NN_DTYPE_F32) && !nn_dtype_is_lowp(NN_DTYPE_I32),
           "nn_dtype_is_lowp");
    EXPECT(nn_layout_bytes_dt(NN_DTYPE_BF16, NN_LAYOUT_NHWC, 2, 3, 5, 7) == 2 * 3 * 5 * 7 * 2,
           "bf16 NHWC bytes");
    EXPECT(nn_layout_bytes(NN_LAYOUT_NCHW8C, 2, 3, 5, 7) == 2 * 8 * 5 * 7 * 4, "float nChw8c bytes");
    EXPECT(nn_layout_bytes_dt(NN_DTYPE_F32, NN_LAYOUT_NHWC, 2, 3, 5, 7) == 2 * 3 * 5 * 7 * 4,
           "float NHWC bytes");
    struct nn_tensor t = nn_tensor_4d(NULL, NN_LAYOUT_NHWC, 4, 6, 3, 3);
    t.dtype = NN_DTYPE_BF16;
    EXPECT(nn_tensor_bytes(&t) == 4 * 6 * 3 * 3 * 2, "bf16 tensor bytes %zu", nn_tensor_bytes(&t));
    struct nn_tensor v = nn_tensor_2d(NULL, 5, 7);
    v.dtype = NN_DTYPE_BF16;
    EXPECT(nn_tensor_bytes(&v) == 5 * 7 * 2, "bf16 2-D bytes %zu", nn_tensor_bytes(&v));
    v.dtype = NN_DTYPE_F32;
    EXPECT(nn_tensor_bytes(&v) == 5 * 7 * 4, "float 2-D bytes %zu", nn_tensor_bytes(&v));
}

static uint16_t to_lowp(enum nn_dtype dt, float v)
{
    return dt == NN_DTYPE_BF16 ? nn_bf16_from_f32(v) : nn_f16_from_f32(v);
}

/* dt: BF16 (8 significant bits) or F16 (11) */
static void test_convert(enum nn_dtype dt)
{
    const char *nm = nn_dtype_name(dt);
    const double half_ulp = dt == NN_DTYPE_BF16 ? 1.0 / 256 : 1.0 / 2048;
    enum { N = 2, C = 5, H = 3, W = 4, NE = N * C * H * W };
    float a[NE], back[NE];
    uint16_t h[NE];
    for (int i = 0; i < NE; i++) {
        a[i] = (float)(i - 37) * 0.3f + 1e-3f; /* not representable: rounding shows */
    }
    struct nn_tensor ta = nn_tensor_4d(a, NN_LAYOUT_NCHW, N, C, H, W);
    struct nn_tensor th = nn_tensor_4d((float *)h, NN_LAYOUT_NHWC, N, C, H, W);
    th.dtype = dt;
    struct nn_tensor tb = nn_tensor_4d(back, NN_LAYOUT_NCHW, N, C, H, W);
    nn_tensor_convert(&th, &ta);
    int bad = 0;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    float v = a[((n * C + c) * H + y) * W + x];
                    if (h[((n * H + y) * W + x) * C + c] != to_lowp(dt, v)) {
                        bad++;
                    }
                }
    EXPECT(bad == 0, "%d elements of the NHWC %s copy are not at ((n H + h) W + w) C + c", bad,
           nm);
    nn_tensor_convert(&tb, &th);
    double maxrel = 0;
    for (int i = 0; i < NE; i++) {
        double r = fabs((double)back[i] - a[i]) / fabs(a[i]);
        maxrel = r > maxrel ? r : maxrel;
    }
    /* one rounding to 8 (11) significant bits: at most half an ulp, 2^-8 (2^-11) relative */
    EXPECT(maxrel <= half_ulp && maxrel > 0, "%s round trip rel err %g (want (0, %g])", nm, maxrel,
           half_ulp);
    float again[NE];
    struct nn_tensor tg = nn_tensor_4d(again, NN_LAYOUT_NCHW, N, C, H, W);
    nn_tensor_convert(&th, &tb); /* representable now: exact both ways */
    nn_tensor_convert(&tg, &th);
    EXPECT(!memcmp(again, back, sizeof back), "%s-representable values change on a round trip",
           nm);
}

static void test_model_refused(enum nn_dtype dt)
{
    nn_backend_t *be = nn_backend_cpu_new(1);
    EXPECT(!nn_backend_has_lowp(be), "the CPU backend claims bf16/fp16");
    struct nn_resnet_cfg cfg;
    nn_resnet_cfg_default(&cfg);
    EXPECT(cfg.act_dtype == NN_DTYPE_F32, "the default is not fp32");
    cfg.depth = 18;
    cfg.width = 8;
    cfg.act_dtype = dt;
    const struct nn_crop_group g = {2, 32};
    fprintf(stderr, "(an error about %s on the cpu backend is expected next)\n", nn_dtype_name(dt));
    struct nn_model *m = nn_model_new(be, &cfg, &g, 1, 2);
    EXPECT(m == NULL, "nn_model_new built a %s model on the CPU backend", nn_dtype_name(dt));
    nn_model_destroy(&m);
    nn_backend_destroy(&be);
}

int main(void)
{
    test_rounding();
    test_rounding_f16();
    test_bytes();
    test_convert(NN_DTYPE_BF16);
    test_convert(NN_DTYPE_F16);
    test_model_refused(NN_DTYPE_BF16);
    test_model_refused(NN_DTYPE_F16);
    printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
