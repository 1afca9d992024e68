/* Dynamic loss scaling (nn/loss_scale.h) and the CPU backend's non-finite
 * check (nn_backend_nonfinite) it relies on:
 * - the state machine: S starts at 2^16; 1999 finite steps keep it, the
 *   2000th doubles it and restarts the run; a non-finite step is skipped,
 *   halves S and restarts the run (a growth needs 2000 more); S stops at
 *   2^24 and at 2^-24;
 * - the checkpoint text: round trip, and every malformed value refused;
 * - nn_backend_nonfinite on real buffers: +inf, -inf, a quiet and a
 *   signalling NaN at the first, a middle and the last element each
 *   found; FLT_MAX, -FLT_MAX, the smallest subnormal, -0 and a long finite
 *   buffer not; n = 0 is finite;
 * - a step's arithmetic on a real gradient buffer: a gradient g scaled by S
 *   and summed over two ranks overflows to inf in float when 2 |g| S >
 *   FLT_MAX (as an fp16 activation gradient overflows beyond 65504), the
 *   check sees it, the step is skipped and S halves, until S is small
 *   enough; the gradients are then finite and, unscaled by 1 / (world S),
 *   equal the unscaled ones exactly (S a power of two). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/backend.h"
#include "nn/loss_scale.h"

#define EXPECT_SHOW_COND 1
#include "tests/expect.h"

static void test_state_machine(void)
{
    struct nn_loss_scale ls;
    nn_loss_scale_init(&ls);
    EXPECT(ls.scale == 65536.0f && ls.good_steps == 0 && ls.skipped == 0, "init S %g", ls.scale);
    for (int i = 0; i < NN_LOSS_SCALE_INTERVAL - 1; i++) {
        EXPECT(nn_loss_scale_update(&ls, 0) == 1, "finite step %d not taken", i);
    }
    EXPECT(ls.scale == 65536.0f && ls.good_steps == NN_LOSS_SCALE_INTERVAL - 1,
           "after 1999 finite steps S %g run %lld", ls.scale, (long long)ls.good_steps);
    EXPECT(nn_loss_scale_update(&ls, 0) == 1, "the 2000th finite step not taken");
    EXPECT(ls.scale == 131072.0f && ls.good_steps == 0, "growth: S %g run %lld", ls.scale,
           (long long)ls.good_steps);
    /* 1000 finite, then an overflow: skipped, halved, the run restarts */
    for (int i = 0; i < 1000; i++) {
        nn_loss_scale_update(&ls, 0);
    }
    EXPECT(nn_loss_scale_update(&ls, 1) == 0, "a non-finite step was taken");
    EXPECT(ls.scale == 65536.0f && ls.good_steps == 0 && ls.skipped == 1,
           "backoff: S %g run %lld skipped %lld", ls.scale, (long long)ls.good_steps,
           (long long)ls.skipped);
    /* 1000 more finite steps do not grow it (the run restarted at the skip) */
    for (int i = 0; i < 1000; i++) {
        nn_loss_scale_update(&ls, 0);
    }
    EXPECT(ls.scale == 65536.0f, "grew %g after a skip and only 1000 finite steps", ls.scale);
    /* two skips in a row: two halvings */
    nn_loss_scale_update(&ls, 1);
    nn_loss_scale_update(&ls, 1);
    EXPECT(ls.scale == 16384.0f && ls.skipped == 3, "two backoffs: S %g skipped %lld", ls.scale,
           (long long)ls.skipped);
    /* the cap: from 2^23, two growths end at 2^24 */
    ls.scale = 8388608.0f;
    ls.good_steps = 0;
    for (int i = 0; i < 2 * NN_LOSS_SCALE_INTERVAL; i++) {
        nn_loss_scale_update(&ls, 0);
    }
    EXPECT(ls.scale == NN_LOSS_SCALE_MAX, "cap: S %g", ls.scale);
    /* the floor */
    ls.scale = NN_LOSS_SCALE_MIN * 2.0f;
    nn_loss_scale_update(&ls, 1);
    nn_loss_scale_update(&ls, 1);
    EXPECT(ls.scale == NN_LOSS_SCALE_MIN, "floor: S %g", ls.scale);
}

static void test_text(void)
{
    struct nn_loss_scale ls, back;
    nn_loss_scale_init(&ls);
    ls.scale = 4096.0f;
    ls.good_steps = 1234;
    char buf[64];
    int n = nn_loss_scale_format(&ls, buf, sizeof buf);
    EXPECT(n > 0 && !strcmp(buf, "4096 1234"), "format gave \"%s\"", buf);
    nn_loss_scale_init(&back);
    EXPECT(nn_loss_scale_parse(&back, buf) == 0 && back.scale == 4096.0f &&
               back.good_steps == 1234, "round trip of \"%s\"", buf);
    ls.scale = NN_LOSS_SCALE_MIN;
    ls.good_steps = 0;
    nn_loss_scale_format(&ls, buf, sizeof buf);
    EXPECT(nn_loss_scale_parse(&back, buf) == 0 && back.scale == NN_LOSS_SCALE_MIN,
           "round trip of the floor \"%s\"", buf);
    EXPECT(nn_loss_scale_format(&ls, buf, 4) == -1, "format into 4 bytes");
    static const char *bad[] = {"", "65536", "65536 ", " 65536 1", "65536  1", "65536 -1",
                                "65536 +1", "65536 2000", "65536 1x", "x 1", "65535 1",
                                "0 1", "-65536 1", "inf 1", "nan 1", "33554432 1",
                                "1e-9 1", "65536 1 2", "65536.5 1", "65536 99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        back.scale = 3.0f;
        back.good_steps = 7;
        EXPECT(nn_loss_scale_parse(&back, bad[i]) == -1 && back.scale == 3.0f &&
                   back.good_steps == 7, "\"%s\" accepted (or ls touched)", bad[i]);
    }
}

/* The backend's buffer x is only written by copies of the host's h (the
 * host may not touch backend memory: nn/guard.h). */
static int nonfinite_of(nn_backend_t *be, float *x, const float *h, size_t n, size_t look)
{
    nn_backend_copy(be, x, h, n * sizeof(float));
    return nn_backend_nonfinite(be, x, look);
}

static void test_nonfinite(nn_backend_t *be)
{
    const size_t n = 1001;
    float *x = nn_backend_alloc(be, n * sizeof(float));
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        h[i] = (float)i * 0.37f - 100.0f;
    }
    EXPECT(nonfinite_of(be, x, h, n, n) == 0, "a finite buffer reported non-finite");
    EXPECT(nn_backend_nonfinite(be, x, 0) == 0, "n = 0 reported non-finite");
    const float specials_ok[] = {FLT_MAX, -FLT_MAX, 0x1p-149f, -0.0f, FLT_MIN};
    for (size_t k = 0; k < sizeof specials_ok / sizeof specials_ok[0]; k++) {
        float keep = h[n / 2];
        h[n / 2] = specials_ok[k];
        EXPECT(nonfinite_of(be, x, h, n, n) == 0, "finite %g reported non-finite",
               (double)specials_ok[k]);
        h[n / 2] = keep;
    }
    uint32_t snan_bits = 0x7f800001u;
    float snan;
    memcpy(&snan, &snan_bits, sizeof snan);
    const float bad[] = {INFINITY, -INFINITY, NAN, snan};
    const char *names[] = {"+inf", "-inf", "quiet NaN", "signalling NaN"};
    const size_t where[] = {0, n / 2, n - 1};
    for (size_t k = 0; k < 4; k++) {
        for (size_t w = 0; w < 3; w++) {
            float keep = h[where[w]];
            h[where[w]] = bad[k];
            EXPECT(nonfinite_of(be, x, h, n, n) == 1, "%s at %zu not found", names[k],
                   where[w]);
            /* outside the range looked at: not seen */
            if (where[w] == n - 1) {
                EXPECT(nn_backend_nonfinite(be, x, n - 1) == 0, "%s beyond n seen", names[k]);
            }
            h[where[w]] = keep;
        }
    }
    free(h);
    nn_backend_free(be, x);
}

/* One step's scaling on real buffers: dscores * S, a "backward" that
 * multiplies by a large weight (a stand-in for the backbone's fp16 overflow:
 * float overflows beyond FLT_MAX as fp16 does beyond 65504), the sum of two
 * ranks' gradients, the unscale by 1 / (world S), the check, the update. */
static void test_step(nn_backend_t *be)
{
    const size_t n = 64;
    const int world = 2;
    float *g = nn_backend_alloc(be, n * sizeof(float));
    float *h = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
    struct nn_loss_scale ls;
    nn_loss_scale_init(&ls);
    ls.scale = NN_LOSS_SCALE_MAX; /* 2^24: 1e32 * 2^24 = 1.7e39 > FLT_MAX */
    int skipped = 0, taken = 0;
    for (int attempt = 0; attempt < 40 && !taken; attempt++) {
        for (size_t i = 0; i < n; i++) {
            float base = (i == 5) ? 1e32f : (float)(i + 1) * 1e-3f; /* one huge gradient */
            h[i] = 0.0f;
            for (int r = 0; r < world; r++) { /* each rank's scaled gradient, summed */
                h[i] += base * ls.scale;
            }
            want[i] = base;
        }
        nn_backend_copy(be, g, h, n * sizeof(float));
        nn_backend_scale(be, g, n, 1.0f / ((float)world * ls.scale));
        int nf = nn_backend_nonfinite(be, g, n);
        if (nn_loss_scale_update(&ls, nf)) {
            taken = 1;
        } else {
            skipped++;
        }
    }
    /* the sum of two ranks' 1e32 S overflows FLT_MAX (3.4e38) for S = 2^24,
     * 2^23, 2^22 and 2^21 (4.2e38); 2^20 gives 2.1e38: four skips */
    EXPECT(taken && skipped == 4 && ls.scale == 1048576.0f,
           "taken %d after %d skips, S %g (want 4 skips, S 2^20)", taken, skipped, ls.scale);
    nn_backend_copy(be, h, g, n * sizeof(float));
    int exact = 1;
    for (size_t i = 0; i < n; i++) {
        exact &= h[i] == want[i];
    }
    EXPECT(exact, "unscaled gradients differ from the unscaled ones");
    free(h);
    free(want);
    nn_backend_free(be, g);
}

int main(void)
{
    test_state_machine();
    test_text();
    nn_backend_t *be = nn_backend_cpu_new(1);
    test_nonfinite(be);
    test_step(be);
    nn_backend_destroy(&be);
    printf("%s: %d of %d checks failed\n", failures ? "FAIL" : "PASS", failures, checks);
    return failures ? 1 : 0;
}
