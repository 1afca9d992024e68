/* Dynamic loss scaling: the state machine of nn/loss_scale.h. */
#include "nn/loss_scale.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void nn_loss_scale_init(struct nn_loss_scale *ls)
{
    ls->scale = NN_LOSS_SCALE_INIT;
    ls->good_steps = 0;
    ls->skipped = 0;
}

int nn_loss_scale_update(struct nn_loss_scale *ls, int nonfinite)
{
    if (nonfinite) {
        ls->skipped++;
        ls->good_steps = 0;
        if (ls->scale > NN_LOSS_SCALE_MIN) {
            ls->scale *= 0.5f;
        }
        return 0;
    }
    if (++ls->good_steps >= NN_LOSS_SCALE_INTERVAL) {
        ls->good_steps = 0;
        if (ls->scale < NN_LOSS_SCALE_MAX) {
            ls->scale *= 2.0f;
        }
    }
    return 1;
}

int nn_loss_scale_format(const struct nn_loss_scale *ls, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%.9g %lld", (double)ls->scale, (long long)ls->good_steps);
    return n < 0 || (size_t)n >= len ? -1 : n;
}

static int is_power_of_two(float f)
{
    int e;
    return f > 0 && isfinite(f) && frexpf(f, &e) == 0.5f;
}

int nn_loss_scale_parse(struct nn_loss_scale *ls, const char *text)
{
    char *end;
    if (text[0] < '0' || text[0] > '9') { /* no sign, no space: what _format writes */
        return -1;
    }
    errno = 0;
    double s = strtod(text, &end);
    if (errno || end == text || *end != ' ') {
        return -1;
    }
    const char *p = end + 1;
    if (*p < '0' || *p > '9') {
        return -1;
    }
    long long g = strtoll(p, &end, 10);
    if (errno || *end != '\0') {
        return -1;
    }
    float f = (float)s;
    /* "%.9g" gives a float back exactly (9 significant digits) */
    if (!is_power_of_two(f) || f < NN_LOSS_SCALE_MIN || f > NN_LOSS_SCALE_MAX ||
        g < 0 || g >= NN_LOSS_SCALE_INTERVAL) {
        return -1;
    }
    ls->scale = f;
    ls->good_steps = g;
    return 0;
}
