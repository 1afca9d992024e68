/* SyncBatchNorm across the ranks of a collective: see syncbn.h. */
#include "syncbn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"

struct nn_syncbn {
    struct nn_collective *c;
    int group0, group_size; /* this rank's group: ranks [group0, group0 + group_size) */
    int max_c;
    int status;
    double *mean, *m2;         /* (max_c) this rank's statistics */
    float *gather;             /* (world, 1 + 3 max_c) forward slots */
    float *red;                /* (world, 2 max_c) backward slots; (2 max_c) whole world */
    float *dw, *db;            /* (max_c) this rank's weight / bias gradient sums */
    nn_backend_t *dw_be;       /* whose memory dw, db are: the layer backward writes them */
    float *mean_dy, *mean_dyx; /* (max_c) the group's means */
    float *host;               /* (4 max_c) staging: the backend's memory is copied, never touched */
};

nn_syncbn_t *nn_syncbn_new(struct nn_collective *c, int group_size, int max_channels, char *err,
                           size_t errlen)
{
    SWAV_ASSERT(c != NULL && max_channels > 0);
    if (group_size <= 0 || group_size > c->world) {
        group_size = c->world;
    }
    if (c->world % group_size != 0) {
        snprintf(err, errlen, "SyncBN group size %d does not divide the %d ranks", group_size,
                 c->world);
        return NULL;
    }
    nn_syncbn_t *s = swav_xcalloc(1, sizeof *s);
    s->c = c;
    s->group_size = group_size;
    s->group0 = c->rank / group_size * group_size;
    s->max_c = max_channels;
    size_t C = (size_t)max_channels, W = (size_t)c->world;
    s->mean = swav_xcalloc(C, sizeof(double));
    s->m2 = swav_xcalloc(C, sizeof(double));
    s->gather = swav_xcalloc(W * (1 + 3 * C), sizeof(float));
    s->red = swav_xcalloc(W * 2 * C, sizeof(float));
    s->mean_dy = swav_xcalloc(C, sizeof(float));
    s->mean_dyx = swav_xcalloc(C, sizeof(float));
    s->host = swav_xcalloc(4 * C, sizeof(float));
    return s;
}

void nn_syncbn_destroy(nn_syncbn_t **sp)
{
    if (!sp || !*sp) {
        return;
    }
    nn_syncbn_t *s = *sp;
    free(s->mean);
    free(s->m2);
    free(s->gather);
    free(s->red);
    if (s->dw_be) {
        nn_backend_free(s->dw_be, s->dw);
        nn_backend_free(s->dw_be, s->db);
    }
    free(s->mean_dy);
    free(s->mean_dyx);
    free(s->host);
    free(s);
    *sp = NULL;
}

int nn_syncbn_status(const nn_syncbn_t *s)
{
    return s->status;
}

/* Exchanges the statistics of this rank (s->mean, s->m2 over n values per
 * channel) and merges the group's: mean, m2 (in place) and the count. */
static int syncbn_merge_stats(nn_syncbn_t *s, int64_t C, double *n)
{
    if (s->status) {
        return s->status;
    }
    size_t slot = 1 + 3 * (size_t)C, W = (size_t)s->c->world;
    float *g = s->gather;
    memset(g, 0, W * slot * sizeof(float));
    float *mine = g + (size_t)s->c->rank * slot;
    SWAV_ASSERT(*n < 16777216.0); /* exact in a float */
    mine[0] = (float)*n;
    for (int64_t c = 0; c < C; c++) {
        float hi = (float)s->mean[c];
        mine[1 + c] = hi;
        mine[1 + C + c] = (float)(s->mean[c] - hi);
        mine[1 + 2 * C + c] = (float)s->m2[c];
    }
    int st = nn_allreduce_sum(s->c, g, W * slot);
    if (st) {
        s->status = st;
        return st;
    }
    double total = 0;
    for (int64_t c = 0; c < C; c++) {
        double na = 0, ma = 0, m2 = 0;
        for (int r = s->group0; r < s->group0 + s->group_size; r++) {
            const float *sl = g + (size_t)r * slot;
            double nb = sl[0], mb = (double)sl[1 + c] + (double)sl[1 + C + c];
            double m2b = sl[1 + 2 * C + c];
            if (nb <= 0) {
                continue;
            }
            double nt = na + nb, d = mb - ma;
            ma += d * nb / nt;
            m2 += m2b + d * d * na * nb / nt;
            na = nt;
        }
        s->mean[c] = ma;
        s->m2[c] = m2;
        total = na;
    }
    *n = total;
    return 0;
}

int nn_syncbn_forward(nn_syncbn_t *s, nn_backend_t *be, struct nn_tensor *out,
                      const struct nn_tensor *inp, const float *weight, const float *bias,
                      float *running_mean, float *running_var, float *save_mean, float *save_var,
                      double *count, void *workspace, unsigned flags, float momentum, float eps)
{
    int64_t C = inp->shape[1];
    SWAV_ASSERT(C <= s->max_c);
    double n = (double)nn_tensor_numel(inp) / (double)C;
    nn_batchnorm_stats(be, s->mean, s->m2, inp);
    int st = syncbn_merge_stats(s, C, &n);
    /* the running statistics and the saved ones are backend memory: staged */
    const size_t bytes = (size_t)C * sizeof(float);
    float *h_rm = s->host, *h_rv = s->host + C, *h_sm = s->host + 2 * C, *h_sv = s->host + 3 * C;
    nn_backend_copy(be, h_rm, running_mean, bytes);
    nn_backend_copy(be, h_rv, running_var, bytes);
    for (int64_t c = 0; c < C; c++) {
        h_sm[c] = (float)s->mean[c];
        h_sv[c] = (float)(s->m2[c] / n);
        double uvar = s->m2[c] / (n > 1 ? n - 1 : 1);
        h_rm[c] = (float)((1 - momentum) * h_rm[c] + momentum * s->mean[c]);
        h_rv[c] = (float)((1 - momentum) * h_rv[c] + momentum * uvar);
    }
    nn_backend_copy(be, save_mean, h_sm, bytes);
    nn_backend_copy(be, save_var, h_sv, bytes);
    nn_backend_copy(be, running_mean, h_rm, bytes);
    nn_backend_copy(be, running_var, h_rv, bytes);
    *count = n;
    unsigned relu = flags & NN_BN_RELU;
    /* eval mode = normalize with the statistics given (as running stats) */
    nn_batchnorm_forward(be, out, inp, weight, bias, save_mean, save_var, NULL, NULL,
                         relu ? workspace : NULL, relu, 0.0f, eps);
    return st;
}

int nn_syncbn_backward(nn_syncbn_t *s, nn_backend_t *be, struct nn_tensor *dinp, float *dweight,
                       float *dbias, const struct nn_tensor *dout, const struct nn_tensor *inp,
                       const float *weight, const float *save_mean, const float *save_var,
                       double count, const void *workspace, unsigned flags, float eps)
{
    int64_t C = inp->shape[1];
    SWAV_ASSERT(C <= s->max_c);
    unsigned relu = flags & NN_BN_RELU;
    if (s->dw_be != be) { /* backend memory: a GPU backend's kernel writes them */
        if (s->dw_be) {
            nn_backend_free(s->dw_be, s->dw);
            nn_backend_free(s->dw_be, s->db);
        }
        s->dw = nn_backend_alloc(be, (size_t)s->max_c * sizeof(float));
        s->db = nn_backend_alloc(be, (size_t)s->max_c * sizeof(float));
        s->dw_be = be;
    }
    const size_t bytes = (size_t)C * sizeof(float);
    nn_backend_zero(be, s->dw, bytes);
    nn_backend_zero(be, s->db, bytes);
    /* statistics as constants: dinp = weight invstd dy', dw = sum dy' xhat, db = sum dy' */
    nn_batchnorm_backward(be, dinp, s->dw, s->db, dout, inp, weight, save_mean, save_var,
                          relu ? workspace : NULL, relu, eps);
    /* this rank's sums on the host: (db, dw), as the slots hold them */
    float *h_sums = s->host;
    nn_backend_copy(be, h_sums, s->db, bytes);
    nn_backend_copy(be, h_sums + C, s->dw, bytes);
    float *red = s->red;
    size_t W = (size_t)s->c->world, two = 2 * (size_t)C;
    int st = s->status;
    if (!st && s->group_size == s->c->world) {
        memcpy(red, h_sums, two * sizeof(float));
        st = nn_allreduce_sum(s->c, red, two);
    } else if (!st) {
        memset(red, 0, W * two * sizeof(float));
        float *mine = red + (size_t)s->c->rank * two;
        memcpy(mine, h_sums, two * sizeof(float));
        st = nn_allreduce_sum(s->c, red, W * two);
        if (!st) {
            /* the group's slots, summed in rank order into slot 0 */
            for (size_t j = 0; j < two; j++) {
                float acc = 0;
                for (int r = s->group0; r < s->group0 + s->group_size; r++) {
                    acc += red[(size_t)r * two + j];
                }
                red[j] = acc;
            }
        }
    }
    if (st) {
        s->status = st;
        memcpy(red, h_sums, two * sizeof(float));
    }
    for (int64_t c = 0; c < C; c++) {
        s->mean_dy[c] = (float)(red[c] / count);
        s->mean_dyx[c] = (float)(red[C + c] / count);
    }
    /* this rank's own sums into the parameter gradients, on the backend */
    struct nn_tensor gw = nn_tensor_1d(dweight, C), gb = nn_tensor_1d(dbias, C);
    struct nn_tensor tw = nn_tensor_1d(s->dw, C), tb = nn_tensor_1d(s->db, C);
    nn_accumulate(be, &gw, &tw);
    nn_accumulate(be, &gb, &tb);
    nn_batchnorm_backward_elemt(be, dinp, inp, weight, save_mean, save_var, s->mean_dy,
                                s->mean_dyx, eps);
    return st;
}
