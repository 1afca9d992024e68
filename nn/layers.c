/* Layer calls: dispatch through the backend table (backend_impl.h). */
#include "layers.h"

#include "backend_impl.h"
#include "common/check.h"
#include "guard.h"

/* Every call that reads or writes backend memory runs inside the host-access
 * guard (guard.h; a load and a branch when it is off). */
#define CALL(stmt)           \
    do {                     \
        nn_guard_enter();    \
        stmt;                \
        nn_guard_leave();    \
    } while (0)
/* ... and every tensor and array it hands over must be the backend's memory
 * (guard.h: a host pointer would fault in a GPU kernel).  Host arrays by
 * design are not checked: batchnorm_stats' mean and m2, backward_elemt's
 * mean_dy and mean_dy_xhat, add_at's offsets, normalize_crops' source. */
#define DEV(p) nn_guard_check((p), __func__, #p)
#define DEVT(t) nn_guard_check((t) ? (t)->data : NULL, __func__, #t)
#define CALL_RET(type, expr)   \
    do {                       \
        nn_guard_enter();      \
        type call_ret_ = expr; \
        nn_guard_leave();      \
        return call_ret_;      \
    } while (0)

void nn_convert(nn_backend_t *be, struct nn_tensor *dst, const struct nn_tensor *src)
{
    DEVT(dst);
    DEVT(src);
    SWAV_ASSERT(be->iface->convert != NULL); /* a backend without bf16/fp16 */
    CALL(be->iface->convert(be, dst, src));
}

void nn_conv2d_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, const struct nn_tensor *weight, int stride, int pad)
{
    DEVT(out);
    DEVT(inp);
    DEVT(weight);
    CALL(be->iface->conv2d_forward(be, out, inp, weight, stride, pad));
}

void nn_conv2d_backward(nn_backend_t *be, struct nn_tensor *dinp, struct nn_tensor *dweight, const struct nn_tensor *dout, const struct nn_tensor *inp, const struct nn_tensor *weight, int stride, int pad)
{
    DEVT(dinp);
    DEVT(dweight);
    DEVT(dout);
    DEVT(inp);
    DEVT(weight);
    CALL(be->iface->conv2d_backward(be, dinp, dweight, dout, inp, weight, stride, pad));
}

size_t nn_batchnorm_workspace_bytes(nn_backend_t *be, const struct nn_tensor *inp, unsigned flags)
{
    return be->iface->batchnorm_workspace_bytes(be, inp, flags);
}

void nn_batchnorm_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, const float *weight, const float *bias, float *running_mean, float *running_var, float *save_mean, float *save_var, void *workspace, unsigned flags, float momentum, float eps)
{
    DEVT(out);
    DEVT(inp);
    DEV(weight);
    DEV(bias);
    DEV(running_mean);
    DEV(running_var);
    DEV(save_mean);
    DEV(save_var);
    DEV(workspace);
    CALL(be->iface->batchnorm_forward(be, out, inp, weight, bias, running_mean, running_var, save_mean, save_var, workspace, flags, momentum, eps));
}

void nn_batchnorm_backward(nn_backend_t *be, struct nn_tensor *dinp, float *dweight, float *dbias, const struct nn_tensor *dout, const struct nn_tensor *inp, const float *weight, const float *save_mean, const float *save_var, const void *workspace, unsigned flags, float eps)
{
    DEVT(dinp);
    DEV(dweight);
    DEV(dbias);
    DEVT(dout);
    DEVT(inp);
    DEV(weight);
    DEV(save_mean);
    DEV(save_var);
    DEV(workspace);
    CALL(be->iface->batchnorm_backward(be, dinp, dweight, dbias, dout, inp, weight, save_mean, save_var, workspace, flags, eps));
}

void nn_batchnorm_stats(nn_backend_t *be, double *mean, double *m2, const struct nn_tensor *inp)
{
    DEVT(inp);
    SWAV_ASSERT(be->iface->batchnorm_stats != NULL); /* a backend without SyncBN pieces */
    CALL(be->iface->batchnorm_stats(be, mean, m2, inp));
}

void nn_batchnorm_backward_elemt(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *inp, const float *weight, const float *mean, const float *var, const float *mean_dy, const float *mean_dy_xhat, float eps)
{
    DEVT(dinp);
    DEVT(inp);
    DEV(weight);
    DEV(mean);
    DEV(var);
    SWAV_ASSERT(be->iface->batchnorm_backward_elemt != NULL);
    CALL(be->iface->batchnorm_backward_elemt(be, dinp, inp, weight, mean, var, mean_dy, mean_dy_xhat, eps));
}

void nn_relu_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp)
{
    DEVT(out);
    DEVT(inp);
    CALL(be->iface->relu_forward(be, out, inp));
}

void nn_relu_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout, const struct nn_tensor *out)
{
    DEVT(dinp);
    DEVT(dout);
    DEVT(out);
    CALL(be->iface->relu_backward(be, dinp, dout, out));
}

void nn_add_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *a, const struct nn_tensor *b, int relu)
{
    DEVT(out);
    DEVT(a);
    DEVT(b);
    CALL(be->iface->add_forward(be, out, a, b, relu));
}

void nn_accumulate(nn_backend_t *be, struct nn_tensor *y, const struct nn_tensor *x)
{
    DEVT(y);
    DEVT(x);
    CALL(be->iface->accumulate(be, y, x));
}

size_t nn_maxpool2d_workspace_bytes(nn_backend_t *be, const struct nn_tensor *out, const struct nn_tensor *inp, int k, int stride, int pad)
{
    return be->iface->maxpool2d_workspace_bytes(be, out, inp, k, stride, pad);
}

void nn_maxpool2d_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, void *workspace, int k, int stride, int pad)
{
    DEVT(out);
    DEVT(inp);
    DEV(workspace);
    CALL(be->iface->maxpool2d_forward(be, out, inp, workspace, k, stride, pad));
}

void nn_maxpool2d_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout, const void *workspace, int k, int stride, int pad)
{
    DEVT(dinp);
    DEVT(dout);
    DEV(workspace);
    CALL(be->iface->maxpool2d_backward(be, dinp, dout, workspace, k, stride, pad));
}

void nn_avgpool_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp)
{
    DEVT(out);
    DEVT(inp);
    CALL(be->iface->avgpool_forward(be, out, inp));
}

void nn_avgpool_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout)
{
    DEVT(dinp);
    DEVT(dout);
    CALL(be->iface->avgpool_backward(be, dinp, dout));
}

void nn_linear_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, const float *weight, const float *bias)
{
    DEVT(out);
    DEVT(inp);
    DEV(weight);
    DEV(bias);
    CALL(be->iface->linear_forward(be, out, inp, weight, bias));
}

void nn_linear_backward(nn_backend_t *be, struct nn_tensor *dinp, float *dweight, float *dbias, const struct nn_tensor *dout, const struct nn_tensor *inp, const float *weight)
{
    DEVT(dinp);
    DEV(dweight);
    DEV(dbias);
    DEVT(dout);
    DEVT(inp);
    DEV(weight);
    CALL(be->iface->linear_backward(be, dinp, dweight, dbias, dout, inp, weight));
}

void nn_l2_normalize_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, float *norms)
{
    DEVT(out);
    DEVT(inp);
    DEV(norms);
    CALL(be->iface->l2_normalize_forward(be, out, inp, norms));
}

void nn_l2_normalize_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout, const struct nn_tensor *out, const float *norms)
{
    DEVT(dinp);
    DEVT(dout);
    DEVT(out);
    DEV(norms);
    CALL(be->iface->l2_normalize_backward(be, dinp, dout, out, norms));
}

void nn_log_softmax_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, float scale)
{
    DEVT(out);
    DEVT(inp);
    CALL(be->iface->log_softmax_forward(be, out, inp, scale));
}

void nn_log_softmax_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout, const struct nn_tensor *out, float scale)
{
    DEVT(dinp);
    DEVT(dout);
    DEVT(out);
    CALL(be->iface->log_softmax_backward(be, dinp, dout, out, scale));
}

float nn_swav_loss_forward(nn_backend_t *be, float *logp, const struct nn_tensor *scores, const float *q, const struct nn_swav_loss_cfg *cfg)
{
    DEV(logp);
    DEVT(scores);
    DEV(q);
    CALL_RET(float, be->iface->swav_loss_forward(be, logp, scores, q, cfg));
}

void nn_swav_loss_backward(nn_backend_t *be, struct nn_tensor *dscores, const float *logp, const float *q, const struct nn_swav_loss_cfg *cfg)
{
    DEVT(dscores);
    DEV(logp);
    DEV(q);
    CALL(be->iface->swav_loss_backward(be, dscores, logp, q, cfg));
}

float nn_cross_entropy_soft_forward(nn_backend_t *be, float *logp, const struct nn_tensor *logits, const float *target)
{
    DEV(logp);
    DEVT(logits);
    DEV(target);
    CALL_RET(float, be->iface->cross_entropy_soft_forward(be, logp, logits, target));
}

void nn_cross_entropy_soft_backward(nn_backend_t *be, struct nn_tensor *dlogits, const float *logp, const float *target)
{
    DEVT(dlogits);
    DEV(logp);
    DEV(target);
    CALL(be->iface->cross_entropy_soft_backward(be, dlogits, logp, target));
}

float nn_cross_entropy_forward(nn_backend_t *be, float *logp, const struct nn_tensor *logits, const int32_t *labels)
{
    DEV(logp);
    DEVT(logits);
    DEV(labels);
    CALL_RET(float, be->iface->cross_entropy_forward(be, logp, logits, labels));
}

void nn_cross_entropy_backward(nn_backend_t *be, struct nn_tensor *dlogits, const float *logp, const int32_t *labels)
{
    DEVT(dlogits);
    DEV(logp);
    DEV(labels);
    CALL(be->iface->cross_entropy_backward(be, dlogits, logp, labels));
}
/* ---- backend.h: generic entry points ------------------------------------- */

void nn_backend_destroy(nn_backend_t **be)
{
    if (be && *be) {
        (*be)->iface->destroy(*be);
        *be = NULL;
    }
}

const char *nn_backend_name(const nn_backend_t *be)
{
    return be->iface->name;
}

void *nn_backend_alloc(nn_backend_t *be, size_t bytes)
{
    return be->iface->alloc(be, bytes);
}

void nn_backend_free(nn_backend_t *be, void *p)
{
    be->iface->free(be, p);
}

void nn_backend_sync(nn_backend_t *be)
{
    be->iface->sync(be);
}

int nn_backend_cache_size(const nn_backend_t *be)
{
    return be->iface->cache_size(be);
}

int nn_backend_has_lowp(const nn_backend_t *be)
{
    return be->iface->lowp_nhwc && be->iface->convert != NULL;
}

void nn_backend_weights_updated(nn_backend_t *be)
{
    be->iface->weights_updated(be);
}

void nn_backend_copy(nn_backend_t *be, void *dst, const void *src, size_t bytes)
{
    if (bytes) {
        CALL(be->iface->copy(be, dst, src, bytes));
    }
}

float *nn_backend_to_host(nn_backend_t *be, const float *p, size_t n)
{
    if (!p) {
        return NULL;
    }
    float *h = swav_xmalloc((n ? n : 1) * sizeof(float));
    nn_backend_copy(be, h, p, n * sizeof(float));
    return h;
}

void nn_backend_zero(nn_backend_t *be, void *p, size_t bytes)
{
    DEV(p);
    if (bytes) {
        CALL(be->iface->zero(be, p, bytes));
    }
}

void nn_backend_scale(nn_backend_t *be, float *x, size_t n, float s)
{
    DEV(x);
    if (n) {
        CALL(be->iface->scale(be, x, n, s));
    }
}

void nn_backend_add_at(nn_backend_t *be, float *base, const int64_t *offsets, int n, float value)
{
    DEV(base);
    if (n > 0) {
        CALL(be->iface->add_at(be, base, offsets, n, value));
    }
}

int nn_backend_nonfinite(nn_backend_t *be, const float *x, size_t n)
{
    DEV(x);
    if (!n) {
        return 0;
    }
    CALL_RET(int, be->iface->nonfinite(be, x, n));
}

void nn_backend_normalize_crops(nn_backend_t *be, float *dst, const uint8_t *src, int batch,
                                int n_crops, int h, int w)
{
    DEV(dst);
    if (batch > 0 && n_crops > 0) {
        CALL(be->iface->normalize_crops(be, dst, src, batch, n_crops, h, w));
    }
}

void nn_backend_normalize_rows(nn_backend_t *be, float *w, int64_t rows, int64_t cols)
{
    DEV(w);
    if (rows > 0) {
        CALL(be->iface->normalize_rows(be, w, rows, cols));
    }
}
