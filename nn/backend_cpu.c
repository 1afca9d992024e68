/* The CPU backend, the reference: oneDNN 2.6 C API for convolution, batch
 * norm, pooling, ReLU and residual add; OpenBLAS sgemm for linear layers;
 * plain C for the small row-wise ops and losses.
 *
 * Every oneDNN primitive is created once per (op, shape, layout) and kept in
 * a cache owned by the backend, with its memory objects (only their data
 * handles change per call) and the buffers it needs (reordered weights, the
 * weight gradient in the kernel's format).  Primitives run with a user
 * scratchpad: one buffer shared by all, grown only when a primitive is
 * created.  So after the first step (or a warm-up at model build) a step
 * allocates nothing.
 *
 * Weights arrive plain (OIHW); a convolution reorders them to the format its
 * kernel picked, and reorders its weight gradient back with a sum post-op,
 * which gives the += of layers.h for free. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <dnnl.h>

#include "backend_impl.h"
#include "common/check.h"
#include "common/log.h"
#include "guard.h"

#define CPU_KEY_MAX 16

struct cpu_prim {
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    size_t scratch_bytes;
    dnnl_memory_t scratch; /* NULL when the primitive needs none */
};

struct cpu_entry {
    int key[CPU_KEY_MAX];
    void *op;
    void (*op_free)(void *op);
};

/* A copy of a weight tensor in a kernel's layout, shared by every primitive
 * that wants that layout (e.g. the same convolution on each crop group). */
struct cpu_wslot {
    dnnl_memory_desc_t md;
    const void *src;  /* the plain weights this slot holds a copy of */
    uint64_t version; /* b->weights_version when it was made */
    void *buf;
    dnnl_memory_t mem;
};

struct cpu_backend {
    struct nn_backend base;
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    void *scratch;
    size_t scratch_bytes;
    struct cpu_entry *entries;
    int n_entries, cap_entries;
    uint64_t weights_version; /* bumped by nn_backend_weights_updated */
    struct cpu_wslot *wslots;
    int n_wslots;
    float *coef; /* (2 coef_cap): per-channel factors of batchnorm_backward_elemt */
    size_t coef_cap;
};

static struct cpu_backend *cpu(nn_backend_t *be)
{
    return (struct cpu_backend *)be;
}

/* ---- cache ---------------------------------------------------------------- */

static void *cpu_cache_find(struct cpu_backend *b, const int *key)
{
    for (int i = 0; i < b->n_entries; i++) {
        if (!memcmp(b->entries[i].key, key, sizeof(int) * CPU_KEY_MAX)) {
            return b->entries[i].op;
        }
    }
    return NULL;
}

static void cpu_cache_put(struct cpu_backend *b, const int *key, void *op, void (*op_free)(void *))
{
    if (b->n_entries == b->cap_entries) {
        b->cap_entries = b->cap_entries ? 2 * b->cap_entries : 64;
        b->entries = swav_xrealloc(b->entries, (size_t)b->cap_entries * sizeof *b->entries);
    }
    struct cpu_entry *e = &b->entries[b->n_entries++];
    memcpy(e->key, key, sizeof e->key);
    e->op = op;
    e->op_free = op_free;
}

/* ---- oneDNN helpers --------------------------------------------------------- */

static dnnl_memory_desc_t cpu_md(const struct nn_tensor *t)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t dims;
    for (int i = 0; i < t->ndim; i++) {
        dims[i] = t->shape[i];
    }
    dnnl_format_tag_t tag;
    if (t->ndim == 4) {
        tag = t->layout == NN_LAYOUT_NCHW8C ? dnnl_nChw8c : dnnl_nchw;
    } else if (t->ndim == 2) {
        tag = dnnl_nc;
    } else {
        SWAV_ASSERT(t->ndim == 1);
        tag = dnnl_x;
    }
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&md, t->ndim, dims, dnnl_f32, tag));
    return md;
}

static dnnl_memory_desc_t cpu_md_any(const struct nn_tensor *t)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t dims;
    for (int i = 0; i < t->ndim; i++) {
        dims[i] = t->shape[i];
    }
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&md, t->ndim, dims, dnnl_f32, dnnl_format_tag_any));
    return md;
}

static dnnl_memory_desc_t cpu_md_1d(int64_t n)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {n};
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&md, 1, dims, dnnl_f32, dnnl_x));
    return md;
}

static dnnl_memory_t cpu_mem(struct cpu_backend *b, const dnnl_memory_desc_t *md)
{
    dnnl_memory_t m;
    DNNL_CHECK(dnnl_memory_create(&m, md, b->eng, DNNL_MEMORY_NONE));
    return m;
}

static void cpu_mem_set(dnnl_memory_t m, const void *p)
{
    DNNL_CHECK(dnnl_memory_set_data_handle(m, (void *)p));
}

static dnnl_primitive_attr_t cpu_attr(void)
{
    dnnl_primitive_attr_t attr;
    DNNL_CHECK(dnnl_primitive_attr_create(&attr));
    DNNL_CHECK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    return attr;
}

/* Finishes a primitive from its pd: creates it and its scratchpad memory. */
static void cpu_prim_finish(struct cpu_backend *b, struct cpu_prim *p)
{
    DNNL_CHECK(dnnl_primitive_create(&p->prim, p->pd));
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(p->pd, dnnl_query_scratchpad_md, 0);
    p->scratch_bytes = smd ? dnnl_memory_desc_get_size(smd) : 0;
    p->scratch = NULL;
    if (p->scratch_bytes) {
        p->scratch = cpu_mem(b, smd);
        if (p->scratch_bytes > b->scratch_bytes) {
            free(b->scratch);
            b->scratch_bytes = p->scratch_bytes;
            b->scratch = aligned_alloc(64, (b->scratch_bytes + 63) / 64 * 64);
            SWAV_ASSERT(b->scratch != NULL);
            memset(b->scratch, 0, b->scratch_bytes);
        }
    }
}

static void cpu_prim_create(struct cpu_backend *b, struct cpu_prim *p, const_dnnl_op_desc_t desc,
                            dnnl_primitive_attr_t attr, const_dnnl_primitive_desc_t hint)
{
    DNNL_CHECK(dnnl_primitive_desc_create(&p->pd, desc, attr, b->eng, hint));
    cpu_prim_finish(b, p);
}

/* Reorder src_md -> dst_md; with accumulate, dst += src. */
static void cpu_reorder_create(struct cpu_backend *b, struct cpu_prim *p,
                               const dnnl_memory_desc_t *src, const dnnl_memory_desc_t *dst,
                               int accumulate)
{
    dnnl_primitive_attr_t attr = cpu_attr();
    if (accumulate) {
        dnnl_post_ops_t po;
        DNNL_CHECK(dnnl_post_ops_create(&po));
        DNNL_CHECK(dnnl_post_ops_append_sum(po, 1.0f));
        DNNL_CHECK(dnnl_primitive_attr_set_post_ops(attr, po));
        DNNL_CHECK(dnnl_post_ops_destroy(po));
    }
    DNNL_CHECK(dnnl_reorder_primitive_desc_create(&p->pd, src, b->eng, dst, b->eng, attr));
    DNNL_CHECK(dnnl_primitive_attr_destroy(attr));
    cpu_prim_finish(b, p);
}

static void cpu_prim_free(struct cpu_prim *p)
{
    if (p->prim) {
        dnnl_primitive_destroy(p->prim);
    }
    if (p->pd) {
        dnnl_primitive_desc_destroy(p->pd);
    }
    if (p->scratch) {
        dnnl_memory_destroy(p->scratch);
    }
    memset(p, 0, sizeof *p);
}

#define CPU_ARGS_MAX 16

static void cpu_exec(struct cpu_backend *b, struct cpu_prim *p, int nargs, dnnl_exec_arg_t *args)
{
    SWAV_ASSERT(nargs < CPU_ARGS_MAX);
    if (p->scratch) {
        cpu_mem_set(p->scratch, b->scratch);
        args[nargs].arg = DNNL_ARG_SCRATCHPAD;
        args[nargs].memory = p->scratch;
        nargs++;
    }
    dnnl_status_t st = dnnl_primitive_execute(p->prim, b->stream, nargs, args);
    if (st != dnnl_success) {
        for (int i = 0; i < nargs; i++) {
            const dnnl_memory_desc_t *md =
                dnnl_primitive_desc_query_md(p->pd, dnnl_query_exec_arg_md, args[i].arg);
            const dnnl_memory_desc_t *have = NULL;
            void *h = NULL;
            dnnl_memory_get_memory_desc(args[i].memory, &have);
            dnnl_memory_get_data_handle(args[i].memory, &h);
            LOG_ERROR("arg %d: pd md %s, handle %p, equal %d", args[i].arg,
                      md && md->ndims ? "yes" : "none", h,
                      md && have ? dnnl_memory_desc_equal(md, have) : -1);
        }
        DNNL_CHECK(st);
    }
}

static void cpu_key_tensor(int *key, int *at, const struct nn_tensor *t)
{
    key[(*at)++] = t->ndim;
    for (int i = 0; i < t->ndim; i++) {
        key[(*at)++] = (int)t->shape[i];
    }
    key[(*at)++] = (int)t->layout;
    SWAV_ASSERT(*at <= CPU_KEY_MAX);
}

static void cpu_mem_free(dnnl_memory_t *m)
{
    if (*m) {
        dnnl_memory_destroy(*m);
        *m = NULL;
    }
}

/* ---- backend basics ------------------------------------------------------- */

static void *cpu_alloc(nn_backend_t *be, size_t bytes)
{
    void *g = nn_guard_alloc(bytes); /* SWAV_NN_GUARD: zeroed pages */
    if (g) {
        return g;
    }
    size_t n = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, n ? n : 64);
    SWAV_ASSERT(p != NULL);
    memset(p, 0, n);
    return p;
}

static void cpu_free(nn_backend_t *be, void *p)
{
    if (!nn_guard_free(p)) {
        free(p);
    }
}

static void cpu_sync(nn_backend_t *be)
{
    DNNL_CHECK(dnnl_stream_wait(cpu(be)->stream));
}

static void cpu_weights_updated(nn_backend_t *be)
{
    cpu(be)->weights_version++;
}

/* ---- memory operations: host memory, done at once ---------------------------- */

static void cpu_copy(nn_backend_t *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    memmove(dst, src, bytes);
}

static void cpu_zero(nn_backend_t *be, void *p, size_t bytes)
{
    (void)be;
    memset(p, 0, bytes);
}

static void cpu_scale(nn_backend_t *be, float *x, size_t n, float s)
{
    (void)be;
    for (size_t i = 0; i < n; i++) {
        x[i] *= s;
    }
}

static void cpu_add_at(nn_backend_t *be, float *base, const int64_t *offsets, int n, float value)
{
    (void)be;
    for (int i = 0; i < n; i++) {
        base[offsets[i]] += value;
    }
}

/* By the bits (exponent all ones), so that no compiler flag about finite
 * math can fold the test away. */
static int cpu_nonfinite(nn_backend_t *be, const float *x, size_t n)
{
    (void)be;
    uint32_t any = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        any |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
    }
    return any != 0;
}

static void cpu_normalize_crops(nn_backend_t *be, float *dst, const uint8_t *src, int batch,
                                int n_crops, int h, int w)
{
    (void)be;
    size_t img = (size_t)h * (size_t)w * 3;
    for (int i = 0; i < batch; i++) {
        for (int c = 0; c < n_crops; c++) {
            nn_normalize_u8(dst + ((size_t)c * batch + i) * img,
                            src + ((size_t)i * n_crops + c) * img, 1, h, w);
        }
    }
}

static void cpu_normalize_rows(nn_backend_t *be, float *w, int64_t rows, int64_t cols)
{
    (void)be;
    nn_prototypes_normalize(w, rows, cols);
}

static int cpu_cache_size(const nn_backend_t *be)
{
    return ((const struct cpu_backend *)be)->n_entries;
}

static void cpu_destroy(nn_backend_t *be)
{
    struct cpu_backend *b = cpu(be);
    for (int i = 0; i < b->n_entries; i++) {
        b->entries[i].op_free(b->entries[i].op);
    }
    free(b->entries);
    for (int i = 0; i < b->n_wslots; i++) {
        free(b->wslots[i].buf);
        cpu_mem_free(&b->wslots[i].mem);
    }
    free(b->wslots);
    free(b->coef);
    free(b->scratch);
    dnnl_stream_destroy(b->stream);
    dnnl_engine_destroy(b->eng);
    free(b);
}

/* ---- conv2d ----------------------------------------------------------------- */

enum cpu_kind {
    CPU_CONV_FWD = 1,
    CPU_CONV_BWD,
    CPU_BN,
    CPU_RELU,
    CPU_ADD,
    CPU_POOL,
};

static int cpu_is_ref(const struct cpu_prim *p)
{
    const char *impl = NULL;
    DNNL_CHECK(dnnl_primitive_desc_query(p->pd, dnnl_query_impl_info_str, 0, &impl));
    return impl && !strncmp(impl, "ref", 3);
}

/* A tensor in the user's layout in, the kernel's layout out (skipped when
 * they agree): weights (OIHW -> blocked), and inputs of a kernel that wants
 * another activation layout. */

struct cpu_wconv {
    int needed, cached;
    struct cpu_prim reorder;
    dnnl_memory_t user, prim;
    void *buf;
    size_t bytes;
    dnnl_memory_desc_t want;
    /* cached: the reordered copy lives in the backend's weight slots, one per
     * (weight pointer, layout), valid until nn_backend_weights_updated */
};

static void *cpu_buf(size_t bytes)
{
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    SWAV_ASSERT(p != NULL);
    memset(p, 0, bytes);
    return p;
}

static void cpu_wconv_init(struct cpu_backend *b, struct cpu_wconv *w, const dnnl_memory_desc_t *user,
                           const dnnl_memory_desc_t *want, int cached)
{
    w->needed = !dnnl_memory_desc_equal(user, want);
    w->cached = cached;
    w->user = cpu_mem(b, user);
    w->prim = cpu_mem(b, want);
    w->want = *want;
    if (w->needed) {
        cpu_reorder_create(b, &w->reorder, user, want, 0);
        w->bytes = dnnl_memory_desc_get_size(want);
        if (!cached) {
            w->buf = cpu_buf(w->bytes);
            cpu_mem_set(w->prim, w->buf);
        }
    }
}

/* Returns the memory holding the tensor in the kernel's format. */
static dnnl_memory_t cpu_wconv_run(struct cpu_backend *b, struct cpu_wconv *w, const void *src)
{
    if (!w->needed) {
        cpu_mem_set(w->prim, src);
        return w->prim;
    }
    dnnl_memory_t dst = w->prim;
    if (w->cached) {
        struct cpu_wslot *slot = NULL;
        for (int i = 0; i < b->n_wslots; i++) {
            if (b->wslots[i].src == src && dnnl_memory_desc_equal(&b->wslots[i].md, &w->want)) {
                slot = &b->wslots[i];
                break;
            }
        }
        if (!slot) { /* first sight of these weights in this layout: warm-up only */
            b->wslots = swav_xrealloc(b->wslots, (size_t)(b->n_wslots + 1) * sizeof *b->wslots);
            slot = &b->wslots[b->n_wslots++];
            slot->md = w->want;
            slot->src = src;
            slot->version = 0;
            slot->buf = cpu_buf(w->bytes);
            slot->mem = cpu_mem(b, &w->want);
            cpu_mem_set(slot->mem, slot->buf);
        }
        if (slot->version == b->weights_version) {
            return slot->mem;
        }
        slot->version = b->weights_version;
        dst = slot->mem;
    }
    cpu_mem_set(w->user, src);
    dnnl_exec_arg_t args[CPU_ARGS_MAX] = {{DNNL_ARG_FROM, w->user}, {DNNL_ARG_TO, dst}};
    cpu_exec(b, &w->reorder, 2, args);
    return dst;
}

static void cpu_wconv_free(struct cpu_wconv *w)
{
    cpu_prim_free(&w->reorder);
    cpu_mem_free(&w->user);
    cpu_mem_free(&w->prim);
    free(w->buf);
}

struct cpu_conv_fwd {
    struct cpu_prim fwd;
    dnnl_memory_t src, dst;
    struct cpu_wconv w;
};

struct cpu_conv_bwd {
    int have_data;
    struct cpu_prim fwd_hint, bwd_data, bwd_w, dw_back;
    dnnl_memory_t bd_dsrc, bd_ddst, bw_dw, dw_user;
    struct cpu_wconv w, bw_src_in, bw_ddst_in; /* bw_*_in: inputs in bwd_w's layout */
    void *dw_buf;
    /* im2col + sgemm weight gradient, where oneDNN has only its reference
     * loop for the shape (3x3 on maps of 1x1 or 2x2) or its kernel is slow
     * (small maps: cpu_conv_bwd_w_small) */
    int im2col;
    float *col, *drows; /* (rows, I*k*k), (rows, O); rows = N*Ho*Wo */
    float *dwt; /* direct path (cpu_conv_bwd_weights_direct): its tiles, O*I*9 */
};

static void cpu_conv_fwd_free(void *op)
{
    struct cpu_conv_fwd *c = op;
    cpu_prim_free(&c->fwd);
    cpu_mem_free(&c->src);
    cpu_mem_free(&c->dst);
    cpu_wconv_free(&c->w);
    free(c);
}

static void cpu_conv_bwd_free(void *op)
{
    struct cpu_conv_bwd *c = op;
    cpu_prim_free(&c->fwd_hint);
    cpu_prim_free(&c->bwd_data);
    cpu_prim_free(&c->bwd_w);
    cpu_prim_free(&c->dw_back);
    cpu_mem_free(&c->bd_dsrc);
    cpu_mem_free(&c->bd_ddst);
    cpu_wconv_free(&c->bw_src_in);
    cpu_wconv_free(&c->bw_ddst_in);
    cpu_mem_free(&c->bw_dw);
    cpu_mem_free(&c->dw_user);
    cpu_wconv_free(&c->w);
    free(c->dw_buf);
    free(c->col);
    free(c->drows);
    free(c->dwt);
    free(c);
}

/* PyTorch's output size is floor((H + 2p - k)/s) + 1; oneDNN wants the right
 * padding that makes its formula give the same size. */
static int64_t cpu_pad_r(int64_t in, int64_t out, int k, int stride, int pad)
{
    return (out - 1) * stride + k - in - pad;
}

static void cpu_conv_desc(dnnl_convolution_desc_t *d, int which, const dnnl_memory_desc_t *src,
                          const dnnl_memory_desc_t *w, const dnnl_memory_desc_t *dst,
                          const struct nn_tensor *inp, const struct nn_tensor *out, int k,
                          int stride, int pad)
{
    dnnl_dims_t strides = {stride, stride};
    dnnl_dims_t pl = {pad, pad};
    dnnl_dims_t pr = {cpu_pad_r(inp->shape[2], out->shape[2], k, stride, pad),
                      cpu_pad_r(inp->shape[3], out->shape[3], k, stride, pad)};
    if (which == 0) {
        DNNL_CHECK(dnnl_convolution_forward_desc_init(d, dnnl_forward_training,
                                                      dnnl_convolution_direct, src, w, NULL, dst,
                                                      strides, pl, pr));
    } else if (which == 1) {
        DNNL_CHECK(dnnl_convolution_backward_data_desc_init(d, dnnl_convolution_direct, src, w,
                                                            dst, strides, pl, pr));
    } else {
        DNNL_CHECK(dnnl_convolution_backward_weights_desc_init(d, dnnl_convolution_direct, src, w,
                                                               NULL, dst, strides, pl, pr));
    }
}

static void cpu_conv_check(const struct nn_tensor *out, const struct nn_tensor *inp,
                           const struct nn_tensor *weight, int stride, int pad)
{
    SWAV_ASSERT(inp->ndim == 4 && out->ndim == 4 && weight->ndim == 4);
    SWAV_ASSERT(weight->shape[0] == out->shape[1] && weight->shape[1] == inp->shape[1]);
    SWAV_ASSERT(out->shape[0] == inp->shape[0]);
    int64_t k = weight->shape[2];
    SWAV_ASSERT(out->shape[2] == (inp->shape[2] + 2 * pad - k) / stride + 1);
    SWAV_ASSERT(out->shape[3] == (inp->shape[3] + 2 * pad - k) / stride + 1);
}

static void cpu_conv_key(int *key, int kind, const struct nn_tensor *out,
                         const struct nn_tensor *inp, const struct nn_tensor *weight, int stride,
                         int pad, int extra)
{
    memset(key, 0, sizeof(int) * CPU_KEY_MAX);
    int at = 0;
    key[at++] = kind;
    key[at++] = (int)inp->shape[0];
    key[at++] = (int)inp->shape[1];
    key[at++] = (int)inp->shape[2];
    key[at++] = (int)inp->shape[3];
    key[at++] = (int)inp->layout;
    key[at++] = (int)out->shape[1];
    key[at++] = (int)out->layout;
    key[at++] = (int)weight->shape[2];
    key[at++] = stride;
    key[at++] = pad;
    key[at++] = extra;
}

static void cpu_conv2d_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                               const struct nn_tensor *weight, int stride, int pad)
{
    struct cpu_backend *b = cpu(be);
    cpu_conv_check(out, inp, weight, stride, pad);
    int key[CPU_KEY_MAX];
    cpu_conv_key(key, CPU_CONV_FWD, out, inp, weight, stride, pad, 0);
    struct cpu_conv_fwd *c = cpu_cache_find(b, key);
    int k = (int)weight->shape[2];
    if (!c) {
        c = swav_xcalloc(1, sizeof *c);
        dnnl_memory_desc_t src = cpu_md(inp), dst = cpu_md(out), wany = cpu_md_any(weight);
        dnnl_memory_desc_t wuser = cpu_md(weight);
        dnnl_convolution_desc_t d;
        cpu_conv_desc(&d, 0, &src, &wany, &dst, inp, out, k, stride, pad);
        dnnl_primitive_attr_t attr = cpu_attr();
        cpu_prim_create(b, &c->fwd, &d, attr, NULL);
        DNNL_CHECK(dnnl_primitive_attr_destroy(attr));
        c->src = cpu_mem(b, &src);
        c->dst = cpu_mem(b, &dst);
        cpu_wconv_init(b, &c->w, &wuser, dnnl_primitive_desc_query_md(c->fwd.pd, dnnl_query_weights_md, 0), 1);
        cpu_cache_put(b, key, c, cpu_conv_fwd_free);
    }
    dnnl_memory_t wm = cpu_wconv_run(b, &c->w, weight->data);
    cpu_mem_set(c->src, inp->data);
    cpu_mem_set(c->dst, out->data);
    dnnl_exec_arg_t args[CPU_ARGS_MAX] = {
        {DNNL_ARG_SRC, c->src}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, c->dst}};
    cpu_exec(b, &c->fwd, 3, args);
}

static size_t cpu_off4(const struct nn_tensor *t, int64_t n, int64_t c, int64_t h, int64_t w)
{
    int64_t C = t->shape[1], H = t->shape[2], W = t->shape[3];
    if (t->layout == NN_LAYOUT_NCHW8C) {
        return (size_t)(((((n * ((C + 7) / 8) + c / 8) * H + h) * W + w) * 8) + c % 8);
    }
    return (size_t)(((n * C + c) * H + h) * W + w);
}

/* One row of the im2col matrices: the k x k x Ci input patch of output
 * position (n, oh, ow) in OIHW weight order (i, kh, kw), zeros where the
 * patch hangs over the padding, and the O output gradients there. */
static void cpu_im2col_row(float *col, float *drow, const struct nn_tensor *inp,
                           const struct nn_tensor *dout, int64_t n, int64_t oh, int64_t ow, int k,
                           int stride, int pad)
{
    int64_t Ci = inp->shape[1], H = inp->shape[2], W = inp->shape[3];
    int64_t O = dout->shape[1], Ho = dout->shape[2], Wo = dout->shape[3];
    const float *x = inp->data, *dy = dout->data;
    int64_t kk = (int64_t)k * k;
    if (inp->layout == NN_LAYOUT_NCHW8C && Ci % 8 == 0) {
        /* 8 channels of a pixel are contiguous: read them once, write them
         * k*k apart */
        int64_t CB = Ci / 8;
        for (int64_t cb = 0; cb < CB; cb++) {
            float *cc = col + cb * 8 * kk;
            for (int kh = 0; kh < k; kh++) {
                int64_t ih = oh * stride - pad + kh;
                for (int kw = 0; kw < k; kw++) {
                    int64_t iw = ow * stride - pad + kw;
                    float *c = cc + kh * k + kw;
                    if (ih < 0 || ih >= H || iw < 0 || iw >= W) {
                        for (int l = 0; l < 8; l++) {
                            c[l * kk] = 0.0f;
                        }
                    } else {
                        const float *px = x + (((n * CB + cb) * H + ih) * W + iw) * 8;
                        for (int l = 0; l < 8; l++) {
                            c[l * kk] = px[l];
                        }
                    }
                }
            }
        }
    } else {
        for (int64_t i = 0; i < Ci; i++) {
            for (int kh = 0; kh < k; kh++) {
                int64_t ih = oh * stride - pad + kh;
                for (int kw = 0; kw < k; kw++) {
                    int64_t iw = ow * stride - pad + kw;
                    int in = ih >= 0 && ih < H && iw >= 0 && iw < W;
                    col[(i * k + kh) * k + kw] = in ? x[cpu_off4(inp, n, i, ih, iw)] : 0.0f;
                }
            }
        }
    }
    if (dout->layout == NN_LAYOUT_NCHW8C && O % 8 == 0) {
        for (int64_t ob = 0; ob < O / 8; ob++) {
            memcpy(drow + ob * 8, dy + (((n * (O / 8) + ob) * Ho + oh) * Wo + ow) * 8,
                   8 * sizeof(float));
        }
    } else {
        for (int64_t o = 0; o < O; o++) {
            drow[o] = dy[cpu_off4(dout, n, o, oh, ow)];
        }
    }
}

/* dW (O, Ci*k*k) += dY^T (O, rows) col (rows, Ci*k*k), rows = (n, oh, ow),
 * straight into the plain gradient (no reorder back).  oneDNN's sgemm, not
 * OpenBLAS's: it runs on the same OpenMP threads as the im2col before it
 * and the primitives after it, where OpenBLAS would wake its own threads
 * beside OpenMP's still-spinning ones. */
/* The im2col buffer holds at most this many bytes: larger problems (big
 * batches) go through it in chunks of rows, each GEMM adding into dW. */
#define CPU_IM2COL_MAX_BYTES ((size_t)16 << 20)

/* Rows of one im2col chunk for a (rows, ikk) problem. */
static int64_t cpu_im2col_chunk(int64_t rows, int64_t ikk)
{
    int64_t cap = (int64_t)(CPU_IM2COL_MAX_BYTES / ((size_t)ikk * sizeof(float)));
    return cap < 1 ? 1 : (cap < rows ? cap : rows);
}

static void cpu_conv_bwd_weights_im2col(struct cpu_conv_bwd *c, float *dw,
                                        const struct nn_tensor *dout, const struct nn_tensor *inp,
                                        int k, int stride, int pad)
{
    int64_t N = inp->shape[0], Ci = inp->shape[1];
    int64_t O = dout->shape[1], Ho = dout->shape[2], Wo = dout->shape[3];
    int64_t ikk = Ci * k * k, rows = N * Ho * Wo, chunk = cpu_im2col_chunk(rows, ikk);
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t nr = rows - r0 < chunk ? rows - r0 : chunk;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nr; i++) {
            int64_t r = r0 + i, n = r / (Ho * Wo), oh = r / Wo % Ho, ow = r % Wo;
            cpu_im2col_row(c->col + i * ikk, c->drows + i * O, inp, dout, n, oh, ow, k, stride,
                           pad);
        }
        DNNL_CHECK(dnnl_sgemm('T', 'N', O, ikk, nr, 1.0f, c->drows, O, c->col, ikk, 1.0f, dw, ikk));
    }
}

static int cpu_avx2(void);

/* ---- direct 3x3 weight gradient on nChw8c maps ---------------------------------
 *
 * dW[o][i][kh][kw] = sum over (n, oh, ow) of dY[n][o][oh][ow] *
 * X[n][i][oh*s - p + kh][ow*s - p + kw], for 3x3 kernels with both tensors in
 * nChw8c and channel counts multiples of 8.  A tile holds 4 output channels
 * x 3 kw x 8 input channels (one input block) in 12 AVX2 accumulators for
 * one kh: per output position 4 broadcasts of dY and 3 loads of X feed 12
 * FMAs.  Output rows go in bands of about CPU_DW_BAND positions of one
 * image, so that one input block's rows and one output block's rows stay in
 * L1 while every tile of the band passes over them.  The threads split the
 * output-channel blocks: each dW element is summed by one thread over the
 * positions in order (n, oh, ow), whatever the number of threads.
 * Used on output maps larger than CPU_IM2COL_MAX_MAP, where it beat oneDNN
 * 2.6's AVX2 backward-weights kernel on every ResNet-18 shape measured (CPU
 * time per call, 2 threads, load 1.3, alternating: batch 8 on 56x56 maps
 * 46-48 ms -> 26; 28x28 32-41 -> 23-25; 14x14 36-39 -> 24-27; stride 2
 * into 28x28 20 -> 16; batch 24 on 24x24 and 12x12 maps even to 5% faster,
 * stride 2 into 12x12 9-14 -> 9). */
#define CPU_DW_BAND 256

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CPU_HAVE_DW_DIRECT 1
/* One band (rows oh0..oh1 of image n) of one tile: output channels
 * q*4 .. +4 of dY's block dyb, input block xb, kernel row kh; the tile at t
 * is [kw][o 4][i 8].  The output positions whose three taps are all inside
 * the row take 3 loads and 4 broadcasts for 12 FMAs; the edge positions
 * take their taps inside the row one by one.  The accumulators are named
 * variables (an array of them went to the stack): 12 + 3 inputs + 1
 * broadcast = 16 registers. */
__attribute__((target("avx2,fma"))) static void
cpu_dw3_tile(float *t, const float *xb, const float *dyb, int64_t H, int64_t W, int64_t Wo,
             int64_t oh0, int64_t oh1, int kh, int q, int stride, int pad)
{
    /* ow with all three taps inside the row: ow*s - p >= 0, ow*s - p + 2 <= W - 1 */
    int64_t lo = (pad + stride - 1) / stride, hi = W - 3 + pad >= 0 ? (W - 3 + pad) / stride : -1;
    if (hi > Wo - 1) {
        hi = Wo - 1;
    }
#define CPU_DW3_ACC(kw, j) __m256 a##kw##j = _mm256_loadu_ps(t + ((kw) * 4 + (j)) * 8);
    CPU_DW3_ACC(0, 0) CPU_DW3_ACC(0, 1) CPU_DW3_ACC(0, 2) CPU_DW3_ACC(0, 3)
    CPU_DW3_ACC(1, 0) CPU_DW3_ACC(1, 1) CPU_DW3_ACC(1, 2) CPU_DW3_ACC(1, 3)
    CPU_DW3_ACC(2, 0) CPU_DW3_ACC(2, 1) CPU_DW3_ACC(2, 2) CPU_DW3_ACC(2, 3)
#undef CPU_DW3_ACC
#define CPU_DW3_TAP(kw)                                                                            \
    if (iw + (kw) >= 0 && iw + (kw) < W) {                                                         \
        __m256 x = _mm256_loadu_ps(xr + (iw + (kw)) * 8);                                          \
        a##kw##0 = _mm256_fmadd_ps(_mm256_broadcast_ss(d), x, a##kw##0);                           \
        a##kw##1 = _mm256_fmadd_ps(_mm256_broadcast_ss(d + 1), x, a##kw##1);                       \
        a##kw##2 = _mm256_fmadd_ps(_mm256_broadcast_ss(d + 2), x, a##kw##2);                       \
        a##kw##3 = _mm256_fmadd_ps(_mm256_broadcast_ss(d + 3), x, a##kw##3);                       \
    }
#define CPU_DW3_EDGE(ow_)                                                                          \
    {                                                                                              \
        int64_t iw = (ow_) * stride - pad;                                                         \
        const float *d = dr + (ow_) * 8;                                                           \
        CPU_DW3_TAP(0) CPU_DW3_TAP(1) CPU_DW3_TAP(2)                                               \
    }
    for (int64_t oh = oh0; oh < oh1; oh++) {
        int64_t ih = oh * stride - pad + kh;
        if (ih < 0 || ih >= H) {
            continue;
        }
        const float *xr = xb + ih * W * 8, *dr = dyb + (oh * Wo) * 8 + q * 4;
        for (int64_t ow = 0; ow < lo && ow < Wo; ow++) {
            CPU_DW3_EDGE(ow)
        }
        for (int64_t ow = lo; ow <= hi; ow++) {
            const float *d = dr + ow * 8, *x = xr + (ow * stride - pad) * 8;
            __m256 x0 = _mm256_loadu_ps(x), x1 = _mm256_loadu_ps(x + 8),
                   x2 = _mm256_loadu_ps(x + 16);
#define CPU_DW3_ROW(j)                                                                             \
    {                                                                                              \
        __m256 dj = _mm256_broadcast_ss(d + (j));                                                  \
        a0##j = _mm256_fmadd_ps(dj, x0, a0##j);                                                    \
        a1##j = _mm256_fmadd_ps(dj, x1, a1##j);                                                    \
        a2##j = _mm256_fmadd_ps(dj, x2, a2##j);                                                    \
    }
            CPU_DW3_ROW(0)
            CPU_DW3_ROW(1)
            CPU_DW3_ROW(2)
            CPU_DW3_ROW(3)
#undef CPU_DW3_ROW
        }
        for (int64_t ow = (hi + 1 > lo ? hi + 1 : lo); ow < Wo; ow++) {
            CPU_DW3_EDGE(ow)
        }
    }
#undef CPU_DW3_EDGE
#undef CPU_DW3_TAP
#define CPU_DW3_ST(kw, j) _mm256_storeu_ps(t + ((kw) * 4 + (j)) * 8, a##kw##j);
    CPU_DW3_ST(0, 0) CPU_DW3_ST(0, 1) CPU_DW3_ST(0, 2) CPU_DW3_ST(0, 3)
    CPU_DW3_ST(1, 0) CPU_DW3_ST(1, 1) CPU_DW3_ST(1, 2) CPU_DW3_ST(1, 3)
    CPU_DW3_ST(2, 0) CPU_DW3_ST(2, 1) CPU_DW3_ST(2, 2) CPU_DW3_ST(2, 3)
#undef CPU_DW3_ST
}
#endif

/* The direct path's conditions (besides AVX2 and FMA). */
static int cpu_dw_direct_fits(const struct nn_tensor *dout, const struct nn_tensor *inp, int k)
{
    return k == 3 && inp->layout == NN_LAYOUT_NCHW8C && dout->layout == NN_LAYOUT_NCHW8C &&
           inp->shape[1] % 8 == 0 && dout->shape[1] % 8 == 0;
}

/* dw (plain OIHW) += the weight gradient; buf: O*Ci*9 floats, laid out
 * [ob][ib][kh][q][kw][o 4][i 8]. */
static void cpu_conv_bwd_weights_direct(float *buf, float *dw, const struct nn_tensor *dout,
                                        const struct nn_tensor *inp, int stride, int pad)
{
#ifdef CPU_HAVE_DW_DIRECT
    int64_t N = inp->shape[0], Ci = inp->shape[1], H = inp->shape[2], W = inp->shape[3];
    int64_t O = dout->shape[1], Ho = dout->shape[2], Wo = dout->shape[3];
    int64_t IB = Ci / 8, OB = O / 8;
    int64_t band = CPU_DW_BAND / Wo < 1 ? 1 : CPU_DW_BAND / Wo;
    const float *x = inp->data, *dy = dout->data;
    memset(buf, 0, (size_t)(O * Ci * 9) * sizeof(float));
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int64_t ob0 = OB * id / nt, ob1 = OB * (id + 1) / nt;
        for (int64_t n = 0; n < N; n++) {
            for (int64_t oh0 = 0; oh0 < Ho; oh0 += band) {
                int64_t oh1 = oh0 + band < Ho ? oh0 + band : Ho;
                for (int64_t ib = 0; ib < IB; ib++) {
                    const float *xb = x + (n * IB + ib) * H * W * 8;
                    for (int64_t ob = ob0; ob < ob1; ob++) {
                        const float *dyb = dy + (n * OB + ob) * Ho * Wo * 8;
                        for (int kh = 0; kh < 3; kh++) {
                            for (int q = 0; q < 2; q++) {
                                float *t = buf + ((((ob * IB + ib) * 3 + kh) * 2 + q) * 12) * 8;
                                cpu_dw3_tile(t, xb, dyb, H, W, Wo, oh0, oh1, kh, q, stride, pad);
                            }
                        }
                    }
                }
            }
        }
    }
    /* into the plain gradient: o = ob*8 + q*4 + j, i = ib*8 + l */
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < O; o++) {
        int64_t ob = o / 8, q = o % 8 / 4, j = o % 4;
        for (int64_t i = 0; i < Ci; i++) {
            int64_t ib = i / 8, l = i % 8;
            for (int kh = 0; kh < 3; kh++) {
                const float *t = buf + ((((ob * IB + ib) * 3 + kh) * 2 + q) * 12) * 8;
                float *d = dw + ((o * Ci + i) * 3 + kh) * 3;
                for (int kw = 0; kw < 3; kw++) {
                    d[kw] += t[(kw * 4 + j) * 8 + l];
                }
            }
        }
    }
#else
    (void)buf, (void)dw, (void)dout, (void)inp, (void)stride, (void)pad;
    SWAV_ASSERT(0);
#endif
}

/* The weight gradient of a k x k convolution (k > 1) whose output map has at
 * most this many positions takes the im2col path: oneDNN 2.6's AVX2
 * backward-weights kernel is slow there (one thread, ResNet-18's 3x3
 * convolutions at batch 24 on 3x3 maps: 56-74 ms against 14-20 ms for
 * im2col + sgemm; batch 8 on 7x7 maps: 43-56 against 27-37; 6x6 maps about
 * even, 12x12 and larger oneDNN's kernel won, and cpu_dw3_tile wins there
 * now where it fits). */
#define CPU_IM2COL_MAX_MAP 49

static int cpu_conv_bwd_w_small(const struct nn_tensor *dout, int k)
{
    return k > 1 && dout->shape[2] * dout->shape[3] <= CPU_IM2COL_MAX_MAP;
}

static void cpu_conv2d_backward(nn_backend_t *be, struct nn_tensor *dinp, struct nn_tensor *dweight,
                                const struct nn_tensor *dout, const struct nn_tensor *inp,
                                const struct nn_tensor *weight, int stride, int pad)
{
    struct cpu_backend *b = cpu(be);
    cpu_conv_check(dout, inp, weight, stride, pad);
    if (dinp) {
        SWAV_ASSERT(dinp->layout == inp->layout);
    }
    int key[CPU_KEY_MAX];
    cpu_conv_key(key, CPU_CONV_BWD, dout, inp, weight, stride, pad, dinp != NULL);
    struct cpu_conv_bwd *c = cpu_cache_find(b, key);
    int k = (int)weight->shape[2];
    if (!c) {
        c = swav_xcalloc(1, sizeof *c);
        c->have_data = dinp != NULL;
        dnnl_memory_desc_t src = cpu_md(inp), dst = cpu_md(dout), wany = cpu_md_any(weight);
        dnnl_memory_desc_t wuser = cpu_md(weight);
        dnnl_convolution_desc_t d;
        cpu_conv_desc(&d, 0, &src, &wany, &dst, inp, dout, k, stride, pad);
        dnnl_primitive_attr_t attr = cpu_attr();
        cpu_prim_create(b, &c->fwd_hint, &d, attr, NULL);
        if (c->have_data) {
            cpu_conv_desc(&d, 1, &src, &wany, &dst, inp, dout, k, stride, pad);
            cpu_prim_create(b, &c->bwd_data, &d, attr, c->fwd_hint.pd);
            c->bd_dsrc = cpu_mem(b, &src);
            c->bd_ddst = cpu_mem(b, &dst);
            cpu_wconv_init(b, &c->w, &wuser,
                           dnnl_primitive_desc_query_md(c->bwd_data.pd, dnnl_query_weights_md, 0), 1);
        }
        cpu_conv_desc(&d, 2, &src, &wany, &dst, inp, dout, k, stride, pad);
        cpu_prim_create(b, &c->bwd_w, &d, attr, c->fwd_hint.pd);
        DNNL_CHECK(dnnl_primitive_attr_destroy(attr));
        if (!cpu_conv_bwd_w_small(dout, k) && cpu_avx2() && cpu_dw_direct_fits(dout, inp, k)) {
            /* larger maps: our direct kernel, faster than oneDNN's there */
            cpu_prim_free(&c->bwd_w);
            c->dwt = cpu_buf((size_t)(dout->shape[1] * inp->shape[1] * 9) * sizeof(float));
            cpu_cache_put(b, key, c, cpu_conv_bwd_free);
            goto run;
        }
        if (cpu_is_ref(&c->bwd_w) || cpu_conv_bwd_w_small(dout, k)) {
            /* The AVX2 kernels refuse 3x3 on tiny maps and the reference
             * loop is ~1000x slower (oneDNN's gemm version ~50x); where
             * they do run on small maps they are slow too: one im2col and
             * one sgemm instead. */
            cpu_prim_free(&c->bwd_w);
            c->im2col = 1;
            int64_t ikk = inp->shape[1] * k * k;
            int64_t all = dout->shape[0] * dout->shape[2] * dout->shape[3];
            size_t rows = (size_t)cpu_im2col_chunk(all, ikk);
            c->col = cpu_buf(rows * (size_t)ikk * sizeof(float));
            c->drows = cpu_buf(rows * (size_t)dout->shape[1] * sizeof(float));
            cpu_cache_put(b, key, c, cpu_conv_bwd_free);
            goto run;
        }

        const dnnl_memory_desc_t *dwmd =
            dnnl_primitive_desc_query_md(c->bwd_w.pd, dnnl_query_diff_weights_md, 0);
        cpu_wconv_init(b, &c->bw_src_in, &src,
                       dnnl_primitive_desc_query_md(c->bwd_w.pd, dnnl_query_src_md, 0), 0);
        cpu_wconv_init(b, &c->bw_ddst_in, &dst,
                       dnnl_primitive_desc_query_md(c->bwd_w.pd, dnnl_query_diff_dst_md, 0), 0);
        c->bw_dw = cpu_mem(b, dwmd);
        c->dw_buf = aligned_alloc(64, (dnnl_memory_desc_get_size(dwmd) + 63) / 64 * 64);
        SWAV_ASSERT(c->dw_buf != NULL);
        cpu_mem_set(c->bw_dw, c->dw_buf);
        c->dw_user = cpu_mem(b, &wuser);
        cpu_reorder_create(b, &c->dw_back, dwmd, &wuser, 1);
        cpu_cache_put(b, key, c, cpu_conv_bwd_free);
    }
run:;
    dnnl_exec_arg_t args[CPU_ARGS_MAX];
    if (c->dwt) {
        cpu_conv_bwd_weights_direct(c->dwt, dweight->data, dout, inp, stride, pad);
        goto data;
    }
    if (c->im2col) {
        cpu_conv_bwd_weights_im2col(c, dweight->data, dout, inp, k, stride, pad);
        goto data;
    }
    /* weight gradient into the kernel's format, then += into the plain one */
    args[0] = (dnnl_exec_arg_t){DNNL_ARG_SRC, cpu_wconv_run(b, &c->bw_src_in, inp->data)};
    args[1] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_DST, cpu_wconv_run(b, &c->bw_ddst_in, dout->data)};
    args[2] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_WEIGHTS, c->bw_dw};
    cpu_exec(b, &c->bwd_w, 3, args);
    cpu_mem_set(c->dw_user, dweight->data);
    args[0] = (dnnl_exec_arg_t){DNNL_ARG_FROM, c->bw_dw};
    args[1] = (dnnl_exec_arg_t){DNNL_ARG_TO, c->dw_user};
    cpu_exec(b, &c->dw_back, 2, args);
data:
    if (c->have_data) {
        dnnl_memory_t wm = cpu_wconv_run(b, &c->w, weight->data);
        cpu_mem_set(c->bd_dsrc, dinp->data);
        cpu_mem_set(c->bd_ddst, dout->data);
        args[0] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_DST, c->bd_ddst};
        args[1] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, wm};
        args[2] = (dnnl_exec_arg_t){DNNL_ARG_DIFF_SRC, c->bd_dsrc};
        cpu_exec(b, &c->bwd_data, 3, args);
    }
}

/* ---- batch norm --------------------------------------------------------------- */

struct cpu_bn {
    unsigned flags;
    int64_t channels;
    /* fwd: normalization with given statistics (train mode: the ones
     * cpu_bn_stats computed, in double); fwd_hint: the batch-statistics
     * forward, only the hint the backward is created from */
    struct cpu_prim fwd, inf, bwd;
    dnnl_primitive_desc_t fwd_hint;
    size_t ws_bytes;
    dnnl_memory_t src, dst, scale, shift, mean, var, ws, dsrc, ddst, dscale, dshift;
    float *tmp; /* (2C): diff scale, diff shift before they are added */
    double *mean_d, *m2_d; /* (C): batch statistics of the last train forward */
};

static void cpu_bn_free(void *op)
{
    struct cpu_bn *n = op;
    cpu_prim_free(&n->fwd);
    if (n->fwd_hint) {
        dnnl_primitive_desc_destroy(n->fwd_hint);
    }
    cpu_prim_free(&n->inf);
    cpu_prim_free(&n->bwd);
    dnnl_memory_t *ms[] = {&n->src, &n->dst, &n->scale, &n->shift, &n->mean, &n->var,
                           &n->ws, &n->dsrc, &n->ddst, &n->dscale, &n->dshift};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        cpu_mem_free(ms[i]);
    }
    free(n->tmp);
    free(n->mean_d);
    free(n->m2_d);
    free(n);
}

/* global: the primitive reads mean and variance instead of computing them */
static unsigned cpu_bn_dnnl_flags(unsigned flags, int global)
{
    unsigned f = dnnl_use_scale | dnnl_use_shift;
    if (global) {
        f |= dnnl_use_global_stats;
    }
    if (flags & NN_BN_RELU) {
        f |= dnnl_fuse_norm_relu;
    }
    return f;
}

static struct cpu_bn *cpu_bn_get(struct cpu_backend *b, const struct nn_tensor *inp, unsigned flags,
                                 float eps)
{
    int key[CPU_KEY_MAX] = {0};
    int at = 0;
    key[at++] = CPU_BN;
    key[at++] = (int)flags;
    memcpy(&key[at++], &eps, sizeof(float));
    cpu_key_tensor(key, &at, inp);
    struct cpu_bn *n = cpu_cache_find(b, key);
    if (n) {
        return n;
    }
    n = swav_xcalloc(1, sizeof *n);
    n->flags = flags;
    n->channels = inp->shape[1];
    dnnl_memory_desc_t md = cpu_md(inp), cmd = cpu_md_1d(inp->shape[1]);
    dnnl_batch_normalization_desc_t d;
    dnnl_primitive_attr_t attr = cpu_attr();
    int train = (flags & NN_BN_TRAIN) != 0;
    /* Train mode: oneDNN 2.6 accumulates the batch statistics in fp32, which
     * costs precision where the conv output's mean is large against its
     * spread; cpu_bn_stats computes them in double and the forward runs
     * with them as given statistics (dnnl_use_global_stats).  The backward
     * still wants the batch-statistics forward as its hint: its workspace
     * (the ReLU mask) is checked to be the same. */
    DNNL_CHECK(dnnl_batch_normalization_forward_desc_init(&d, dnnl_forward_training, &md, eps,
                                                          cpu_bn_dnnl_flags(flags, 1)));
    cpu_prim_create(b, &n->fwd, &d, attr, NULL);
    const dnnl_memory_desc_t *wsmd = dnnl_primitive_desc_query_md(n->fwd.pd, dnnl_query_workspace_md, 0);
    n->ws_bytes = wsmd ? dnnl_memory_desc_get_size(wsmd) : 0;
    if (n->ws_bytes) {
        n->ws = cpu_mem(b, wsmd);
    }
    const_dnnl_primitive_desc_t hint = n->fwd.pd;
    if (train) {
        DNNL_CHECK(dnnl_batch_normalization_forward_desc_init(&d, dnnl_forward_training, &md, eps,
                                                              cpu_bn_dnnl_flags(flags, 0)));
        DNNL_CHECK(dnnl_primitive_desc_create(&n->fwd_hint, &d, attr, b->eng, NULL));
        const dnnl_memory_desc_t *hws = dnnl_primitive_desc_query_md(n->fwd_hint, dnnl_query_workspace_md, 0);
        SWAV_ASSERT((hws ? dnnl_memory_desc_get_size(hws) : 0) == n->ws_bytes);
        SWAV_ASSERT(!n->ws_bytes || dnnl_memory_desc_equal(hws, wsmd));
        hint = n->fwd_hint;
    }
    DNNL_CHECK(dnnl_batch_normalization_forward_desc_init(&d, dnnl_forward_inference, &md, eps,
                                                          cpu_bn_dnnl_flags(flags, 1)));
    cpu_prim_create(b, &n->inf, &d, attr, NULL);
    DNNL_CHECK(dnnl_batch_normalization_backward_desc_init(&d, dnnl_backward, &md, &md, eps,
                                                           cpu_bn_dnnl_flags(flags, !train)));
    cpu_prim_create(b, &n->bwd, &d, attr, hint);
    DNNL_CHECK(dnnl_primitive_attr_destroy(attr));
    n->src = cpu_mem(b, &md);
    n->dst = cpu_mem(b, &md);
    n->dsrc = cpu_mem(b, &md);
    n->ddst = cpu_mem(b, &md);
    n->scale = cpu_mem(b, &cmd);
    n->shift = cpu_mem(b, &cmd);
    n->mean = cpu_mem(b, &cmd);
    n->var = cpu_mem(b, &cmd);
    n->dscale = cpu_mem(b, &cmd);
    n->dshift = cpu_mem(b, &cmd);
    n->tmp = swav_xcalloc((size_t)(2 * n->channels), sizeof(float));
    n->mean_d = swav_xcalloc((size_t)n->channels, sizeof(double));
    n->m2_d = swav_xcalloc((size_t)n->channels, sizeof(double));
    cpu_mem_set(n->dscale, n->tmp);
    cpu_mem_set(n->dshift, n->tmp + n->channels);
    cpu_cache_put(b, key, n, cpu_bn_free);
    return n;
}

/* Per-channel batch statistics of a BN input, to double precision: sums of
 * d = x - k_c, k_c the channel's first value (a shift that keeps the one
 * pass exact enough however large the mean is against the spread), over
 * (N, H, W).  Runs of CPU_BN_RUN values per channel are summed in float
 * (where they lose nothing measurable: they are short and shifted), the
 * runs in double.  One task per block of 8 channels and a fixed order inside
 * it: the same bits for any thread count.  Writes the mean and
 * M2 = sum (x - mean)^2. */
#define CPU_BN_RUN 64

/* A block of `lanes` (<= 8) channels: element (o, i, l) at
 * x[o * ostride + i * istride + l]. */
static void cpu_bn_stats_lanes(const float *x, int lanes, int64_t outer, int64_t ostride,
                               int64_t inner, int64_t istride, double *mean, double *m2)
{
    float k[8] = {0}, f1[8] = {0}, f2[8] = {0};
    double s1[8] = {0}, s2[8] = {0};
    for (int l = 0; l < lanes; l++) {
        k[l] = x[l];
    }
    int run = 0;
    for (int64_t o = 0; o < outer; o++) {
        const float *p = x + o * ostride;
        for (int64_t i = 0; i < inner; i++) {
            const float *q = p + i * istride;
            for (int l = 0; l < lanes; l++) {
                float d = q[l] - k[l];
                f1[l] += d;
                f2[l] += d * d;
            }
            if (++run == CPU_BN_RUN) {
                for (int l = 0; l < 8; l++) {
                    s1[l] += f1[l];
                    s2[l] += f2[l];
                    f1[l] = f2[l] = 0;
                }
                run = 0;
            }
        }
    }
    double n = (double)(outer * inner);
    for (int l = 0; l < lanes; l++) {
        s1[l] += f1[l];
        s2[l] += f2[l];
        mean[l] = k[l] + s1[l] / n;
        double v = s2[l] - s1[l] * s1[l] / n;
        m2[l] = v > 0 ? v : 0;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CPU_HAVE_AVX2_PATH 1
/* The same sums over 8 full lanes with AVX2 (same run length, so the same
 * grouping of the float sums; FMA rounding differs in the last bit). */
__attribute__((target("avx2,fma"))) static void
cpu_bn_stats_lanes8_avx2(const float *x, int64_t outer, int64_t ostride, int64_t inner,
                         int64_t istride, double *mean, double *m2)
{
    __m256 k = _mm256_loadu_ps(x), f1 = _mm256_setzero_ps(), f2 = _mm256_setzero_ps();
    __m256d s1lo = _mm256_setzero_pd(), s1hi = s1lo, s2lo = s1lo, s2hi = s1lo;
    int run = 0;
    for (int64_t o = 0; o < outer; o++) {
        const float *p = x + o * ostride;
        for (int64_t i = 0; i < inner; i++) {
            __m256 d = _mm256_sub_ps(_mm256_loadu_ps(p + i * istride), k);
            f1 = _mm256_add_ps(f1, d);
            f2 = _mm256_fmadd_ps(d, d, f2);
            if (++run == CPU_BN_RUN) {
                s1lo = _mm256_add_pd(s1lo, _mm256_cvtps_pd(_mm256_castps256_ps128(f1)));
                s1hi = _mm256_add_pd(s1hi, _mm256_cvtps_pd(_mm256_extractf128_ps(f1, 1)));
                s2lo = _mm256_add_pd(s2lo, _mm256_cvtps_pd(_mm256_castps256_ps128(f2)));
                s2hi = _mm256_add_pd(s2hi, _mm256_cvtps_pd(_mm256_extractf128_ps(f2, 1)));
                f1 = f2 = _mm256_setzero_ps();
                run = 0;
            }
        }
    }
    s1lo = _mm256_add_pd(s1lo, _mm256_cvtps_pd(_mm256_castps256_ps128(f1)));
    s1hi = _mm256_add_pd(s1hi, _mm256_cvtps_pd(_mm256_extractf128_ps(f1, 1)));
    s2lo = _mm256_add_pd(s2lo, _mm256_cvtps_pd(_mm256_castps256_ps128(f2)));
    s2hi = _mm256_add_pd(s2hi, _mm256_cvtps_pd(_mm256_extractf128_ps(f2, 1)));
    double s1[8], s2[8];
    float kk[8];
    _mm256_storeu_pd(s1, s1lo);
    _mm256_storeu_pd(s1 + 4, s1hi);
    _mm256_storeu_pd(s2, s2lo);
    _mm256_storeu_pd(s2 + 4, s2hi);
    _mm256_storeu_ps(kk, k);
    double n = (double)(outer * inner);
    for (int l = 0; l < 8; l++) {
        mean[l] = kk[l] + s1[l] / n;
        double v = s2[l] - s1[l] * s1[l] / n;
        m2[l] = v > 0 ? v : 0;
    }
}
#endif

/* 1 where the AVX2 paths (AVX2 and FMA) can run. */
static int cpu_avx2(void)
{
#ifdef CPU_HAVE_AVX2_PATH
    static int avx2 = -1;
    if (avx2 < 0) {
        avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return avx2;
#else
    return 0;
#endif
}

static void cpu_bn_stats_block(const float *x, int lanes, int64_t outer, int64_t ostride,
                               int64_t inner, int64_t istride, double *mean, double *m2)
{
#ifdef CPU_HAVE_AVX2_PATH
    if (cpu_avx2() && lanes == 8) {
        cpu_bn_stats_lanes8_avx2(x, outer, ostride, inner, istride, mean, m2);
        return;
    }
#endif
    cpu_bn_stats_lanes(x, lanes, outer, ostride, inner, istride, mean, m2);
}

static void cpu_bn_stats(const struct nn_tensor *t, double *mean, double *m2)
{
    int64_t N = t->shape[0], C = t->shape[1];
    int64_t HW = t->ndim == 4 ? t->shape[2] * t->shape[3] : 1;
    const float *x = t->data;
    if (t->ndim == 4 && t->layout == NN_LAYOUT_NCHW) {
#pragma omp parallel for schedule(static) if (N * C * HW > 32768)
        for (int64_t c = 0; c < C; c++) {
            cpu_bn_stats_lanes(x + c * HW, 1, N, C * HW, HW, 1, mean + c, m2 + c);
        }
        return;
    }
    int64_t CB = (C + 7) / 8;
    int blocked = t->ndim == 4; /* nChw8c, else (N, C) row-major */
    SWAV_ASSERT(!blocked || t->layout == NN_LAYOUT_NCHW8C);
#pragma omp parallel for schedule(static) if (N * C * HW > 32768)
    for (int64_t cb = 0; cb < CB; cb++) {
        int lanes = (int)(C - cb * 8 < 8 ? C - cb * 8 : 8);
        if (blocked) {
            cpu_bn_stats_block(x + cb * HW * 8, lanes, N, CB * HW * 8, HW, 8, mean + cb * 8,
                               m2 + cb * 8);
        } else {
            cpu_bn_stats_block(x + cb * 8, lanes, N, C, 1, 0, mean + cb * 8, m2 + cb * 8);
        }
    }
}

static void cpu_batchnorm_stats(nn_backend_t *be, double *mean, double *m2,
                                const struct nn_tensor *inp)
{
    cpu_bn_stats(inp, mean, m2);
}

/* dx -= a_c + b_c (x - mean_c), a = w invstd mean_dy, b = w invstd^2 mean_dy_xhat */
static void cpu_batchnorm_backward_elemt(nn_backend_t *be, struct nn_tensor *dinp,
                                         const struct nn_tensor *inp, const float *weight,
                                         const float *mean, const float *var,
                                         const float *mean_dy, const float *mean_dy_xhat,
                                         float eps)
{
    struct cpu_backend *b = cpu(be);
    SWAV_ASSERT(dinp->layout == inp->layout && dinp->ndim == inp->ndim);
    int64_t N = inp->shape[0], C = inp->shape[1];
    int64_t HW = inp->ndim == 4 ? inp->shape[2] * inp->shape[3] : 1;
    if (b->coef_cap < (size_t)C) {
        free(b->coef);
        b->coef = swav_xmalloc((size_t)C * 2 * sizeof(float));
        b->coef_cap = (size_t)C;
    }
    float *A = b->coef, *B = b->coef + C;
    for (int64_t c = 0; c < C; c++) {
        double inv = 1.0 / sqrt((double)var[c] + (double)eps);
        A[c] = (float)(weight[c] * inv * mean_dy[c]);
        B[c] = (float)(weight[c] * inv * inv * mean_dy_xhat[c]);
    }
    const float *x = inp->data;
    float *dx = dinp->data;
    if (inp->ndim == 4 && inp->layout == NN_LAYOUT_NCHW8C) {
        int64_t CB = (C + 7) / 8;
#pragma omp parallel for schedule(static) if (N * C * HW > 32768)
        for (int64_t nb = 0; nb < N * CB; nb++) {
            int64_t c0 = (nb % CB) * 8;
            int lanes = (int)(C - c0 < 8 ? C - c0 : 8);
            const float *xp = x + nb * HW * 8;
            float *dp = dx + nb * HW * 8;
            for (int64_t i = 0; i < HW; i++) {
                for (int l = 0; l < lanes; l++) {
                    dp[i * 8 + l] -= A[c0 + l] + B[c0 + l] * (xp[i * 8 + l] - mean[c0 + l]);
                }
            }
        }
    } else if (inp->ndim == 4) {
#pragma omp parallel for schedule(static) if (N * C * HW > 32768)
        for (int64_t nc = 0; nc < N * C; nc++) {
            int64_t c = nc % C;
            const float *xp = x + nc * HW;
            float *dp = dx + nc * HW;
            for (int64_t i = 0; i < HW; i++) {
                dp[i] -= A[c] + B[c] * (xp[i] - mean[c]);
            }
        }
    } else {
        for (int64_t n = 0; n < N; n++) {
            for (int64_t c = 0; c < C; c++) {
                dx[n * C + c] -= A[c] + B[c] * (x[n * C + c] - mean[c]);
            }
        }
    }
}

static size_t cpu_batchnorm_workspace_bytes(nn_backend_t *be, const struct nn_tensor *inp,
                                            unsigned flags)
{
    return cpu_bn_get(cpu(be), inp, flags, 1e-5f)->ws_bytes;
}

static void cpu_batchnorm_forward(nn_backend_t *be, struct nn_tensor *out,
                                  const struct nn_tensor *inp, const float *weight,
                                  const float *bias, float *running_mean, float *running_var,
                                  float *save_mean, float *save_var, void *workspace,
                                  unsigned flags, float momentum, float eps)
{
    struct cpu_backend *b = cpu(be);
    SWAV_ASSERT(out->layout == inp->layout && out->ndim == inp->ndim);
    struct cpu_bn *n = cpu_bn_get(b, inp, flags, eps);
    int train = (flags & NN_BN_TRAIN) != 0;
    double count = (double)nn_tensor_numel(inp) / (double)inp->shape[1];
    if (train) {
        cpu_bn_stats(inp, n->mean_d, n->m2_d);
        for (int64_t c = 0; c < n->channels; c++) {
            save_mean[c] = (float)n->mean_d[c];
            save_var[c] = (float)(n->m2_d[c] / count);
        }
    }
    cpu_mem_set(n->src, inp->data);
    cpu_mem_set(n->dst, out->data);
    cpu_mem_set(n->scale, weight);
    cpu_mem_set(n->shift, bias);
    cpu_mem_set(n->mean, train ? save_mean : running_mean);
    cpu_mem_set(n->var, train ? save_var : running_var);
    dnnl_exec_arg_t args[CPU_ARGS_MAX] = {
        {DNNL_ARG_SRC, n->src},   {DNNL_ARG_DST, n->dst},   {DNNL_ARG_SCALE, n->scale},
        {DNNL_ARG_SHIFT, n->shift}, {DNNL_ARG_MEAN, n->mean}, {DNNL_ARG_VARIANCE, n->var}};
    int nargs = 6;
    if (!train && workspace == NULL) {
        cpu_exec(b, &n->inf, nargs, args); /* eval, no backward to follow */
    } else {
        if (n->ws) {
            SWAV_ASSERT(workspace != NULL);
            cpu_mem_set(n->ws, workspace);
            args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_WORKSPACE, n->ws};
        }
        cpu_exec(b, &n->fwd, nargs, args);
    }
    if (train) {
        for (int64_t c = 0; c < n->channels; c++) {
            double uvar = n->m2_d[c] / (count > 1 ? count - 1 : 1);
            running_mean[c] = (float)((1 - momentum) * running_mean[c] + momentum * n->mean_d[c]);
            running_var[c] = (float)((1 - momentum) * running_var[c] + momentum * uvar);
        }
    }
}

static void cpu_batchnorm_backward(nn_backend_t *be, struct nn_tensor *dinp, float *dweight,
                                   float *dbias, const struct nn_tensor *dout,
                                   const struct nn_tensor *inp, const float *weight,
                                   const float *save_mean, const float *save_var,
                                   const void *workspace, unsigned flags, float eps)
{
    struct cpu_backend *b = cpu(be);
    struct cpu_bn *n = cpu_bn_get(b, inp, flags, eps);
    cpu_mem_set(n->src, inp->data);
    cpu_mem_set(n->mean, save_mean);
    cpu_mem_set(n->var, save_var);
    cpu_mem_set(n->ddst, dout->data);
    cpu_mem_set(n->scale, weight);
    cpu_mem_set(n->dsrc, dinp->data);
    dnnl_exec_arg_t args[CPU_ARGS_MAX] = {
        {DNNL_ARG_SRC, n->src},       {DNNL_ARG_MEAN, n->mean},
        {DNNL_ARG_VARIANCE, n->var},  {DNNL_ARG_DIFF_DST, n->ddst},
        {DNNL_ARG_SCALE, n->scale},   {DNNL_ARG_DIFF_SRC, n->dsrc},
        {DNNL_ARG_DIFF_SCALE, n->dscale}, {DNNL_ARG_DIFF_SHIFT, n->dshift}};
    int nargs = 8;
    /* oneDNN 2.6 counts SHIFT among the backward's inputs with dnnl_use_shift
     * although it never reads it (the ReLU mask is in the workspace): any
     * valid C floats do. */
    cpu_mem_set(n->shift, weight);
    args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SHIFT, n->shift};
    if (n->ws) {
        SWAV_ASSERT(workspace != NULL);
        cpu_mem_set(n->ws, workspace);
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_WORKSPACE, n->ws};
    }
    cpu_exec(b, &n->bwd, nargs, args);
    for (int64_t c = 0; c < n->channels; c++) {
        dweight[c] += n->tmp[c];
        dbias[c] += n->tmp[n->channels + c];
    }
}

/* ---- relu, add ------------------------------------------------------------------ */

struct cpu_eltwise {
    struct cpu_prim fwd, bwd;
    dnnl_memory_t a, b, dst, ddst, dsrc;
};

static void cpu_eltwise_free(void *op)
{
    struct cpu_eltwise *e = op;
    cpu_prim_free(&e->fwd);
    cpu_prim_free(&e->bwd);
    dnnl_memory_t *ms[] = {&e->a, &e->b, &e->dst, &e->ddst, &e->dsrc};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        cpu_mem_free(ms[i]);
    }
    free(e);
}

static struct cpu_eltwise *cpu_relu_get(struct cpu_backend *b, const struct nn_tensor *t)
{
    int key[CPU_KEY_MAX] = {0};
    int at = 0;
    key[at++] = CPU_RELU;
    cpu_key_tensor(key, &at, t);
    struct cpu_eltwise *e = cpu_cache_find(b, key);
    if (e) {
        return e;
    }
    e = swav_xcalloc(1, sizeof *e);
    dnnl_memory_desc_t md = cpu_md(t);
    dnnl_eltwise_desc_t d;
    dnnl_primitive_attr_t attr = cpu_attr();
    DNNL_CHECK(dnnl_eltwise_forward_desc_init(&d, dnnl_forward_training,
                                              dnnl_eltwise_relu_use_dst_for_bwd, &md, 0.f, 0.f));
    cpu_prim_create(b, &e->fwd, &d, attr, NULL);
    DNNL_CHECK(dnnl_eltwise_backward_desc_init(&d, dnnl_eltwise_relu_use_dst_for_bwd, &md, &md,
                                               0.f, 0.f));
    cpu_prim_create(b, &e->bwd, &d, attr, e->fwd.pd);
    DNNL_CHECK(dnnl_primitive_attr_destroy(attr));
    e->a = cpu_mem(b, &md);
    e->dst = cpu_mem(b, &md);
    e->ddst = cpu_mem(b, &md);
    e->dsrc = cpu_mem(b, &md);
    cpu_cache_put(b, key, e, cpu_eltwise_free);
    return e;
}

static void cpu_relu_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp)
{
    struct cpu_backend *b = cpu(be);
    struct cpu_eltwise *e = cpu_relu_get(b, inp);
    cpu_mem_set(e->a, inp->data);
    cpu_mem_set(e->dst, out->data);
    dnnl_exec_arg_t args[CPU_ARGS_MAX] = {{DNNL_ARG_SRC, e->a}, {DNNL_ARG_DST, e->dst}};
    cpu_exec(b, &e->fwd, 2, args);
}

static void cpu_relu_backward(nn_backend_t *be, struct nn_tensor *dinp,
                              const struct nn_tensor *dout, const struct nn_tensor *out)
{
    struct cpu_backend *b = cpu(be);
    struct cpu_eltwise *e = cpu_relu_get(b, out);
    cpu_mem_set(e->dst, out->data);
    cpu_mem_set(e->ddst, dout->data);
    cpu_mem_set(e->dsrc, dinp->data);
    dnnl_exec_arg_t args[CPU_ARGS_MAX] = {
        {DNNL_ARG_DST, e->dst}, {DNNL_ARG_DIFF_DST, e->ddst}, {DNNL_ARG_DIFF_SRC, e->dsrc}};
    cpu_exec(b, &e->bwd, 3, args);
}

static void cpu_add_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *a,
                            const struct nn_tensor *bb, int relu)
{
    struct cpu_backend *b = cpu(be);
    SWAV_ASSERT(a->layout == bb->layout && a->layout == out->layout);
    int key[CPU_KEY_MAX] = {0};
    int at = 0;
    key[at++] = CPU_ADD;
    key[at++] = relu;
    cpu_key_tensor(key, &at, a);
    struct cpu_eltwise *e = cpu_cache_find(b, key);
    if (!e) {
        e = swav_xcalloc(1, sizeof *e);
        dnnl_memory_desc_t md = cpu_md(a);
        dnnl_binary_desc_t d;
        DNNL_CHECK(dnnl_binary_desc_init(&d, dnnl_binary_add, &md, &md, &md));
        dnnl_primitive_attr_t attr = cpu_attr();
        if (relu) {
            dnnl_post_ops_t po;
            DNNL_CHECK(dnnl_post_ops_create(&po));
            DNNL_CHECK(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.f, 0.f));
            DNNL_CHECK(dnnl_primitive_attr_set_post_ops(attr, po));
            DNNL_CHECK(dnnl_post_ops_destroy(po));
        }
        cpu_prim_create(b, &e->fwd, &d, attr, NULL);
        DNNL_CHECK(dnnl_primitive_attr_destroy(attr));
        e->a = cpu_mem(b, &md);
        e->b = cpu_mem(b, &md);
        e->dst = cpu_mem(b, &md);
        cpu_cache_put(b, key, e, cpu_eltwise_free);
    }
    cpu_mem_set(e->a, a->data);
    cpu_mem_set(e->b, bb->data);
    cpu_mem_set(e->dst, out->data);
    dnnl_exec_arg_t args[CPU_ARGS_MAX] = {
        {DNNL_ARG_SRC_0, e->a}, {DNNL_ARG_SRC_1, e->b}, {DNNL_ARG_DST, e->dst}};
    cpu_exec(b, &e->fwd, 3, args);
}

static void cpu_accumulate(nn_backend_t *be, struct nn_tensor *y, const struct nn_tensor *x)
{
    SWAV_ASSERT(y->layout == x->layout && nn_tensor_bytes(y) == nn_tensor_bytes(x));
    float *restrict yd = y->data;
    const float *restrict xd = x->data;
    size_t n = nn_tensor_bytes(y) / sizeof(float);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        yd[i] += xd[i];
    }
}

/* ---- max pooling ------------------------------------------------------------------- */

struct cpu_pool {
    struct cpu_prim fwd, bwd;
    size_t ws_bytes;
    dnnl_memory_t src, dst, ws, dsrc, ddst;
};

static void cpu_pool_free(void *op)
{
    struct cpu_pool *p = op;
    cpu_prim_free(&p->fwd);
    cpu_prim_free(&p->bwd);
    dnnl_memory_t *ms[] = {&p->src, &p->dst, &p->ws, &p->dsrc, &p->ddst};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        cpu_mem_free(ms[i]);
    }
    free(p);
}

static struct cpu_pool *cpu_pool_get(struct cpu_backend *b, const struct nn_tensor *out,
                                     const struct nn_tensor *inp, int k, int stride, int pad)
{
    SWAV_ASSERT(out->layout == inp->layout && out->ndim == 4 && inp->ndim == 4);
    SWAV_ASSERT(out->shape[2] == (inp->shape[2] + 2 * pad - k) / stride + 1);
    SWAV_ASSERT(out->shape[3] == (inp->shape[3] + 2 * pad - k) / stride + 1);
    int key[CPU_KEY_MAX] = {0};
    int at = 0;
    key[at++] = CPU_POOL;
    key[at++] = k;
    key[at++] = stride;
    key[at++] = pad;
    cpu_key_tensor(key, &at, inp);
    key[at++] = (int)out->shape[2];
    struct cpu_pool *p = cpu_cache_find(b, key);
    if (p) {
        return p;
    }
    p = swav_xcalloc(1, sizeof *p);
    dnnl_memory_desc_t src = cpu_md(inp), dst = cpu_md(out);
    dnnl_dims_t strides = {stride, stride}, kernel = {k, k}, pl = {pad, pad};
    dnnl_dims_t pr = {cpu_pad_r(inp->shape[2], out->shape[2], k, stride, pad),
                      cpu_pad_r(inp->shape[3], out->shape[3], k, stride, pad)};
    dnnl_pooling_desc_t d;
    dnnl_primitive_attr_t attr = cpu_attr();
    DNNL_CHECK(dnnl_pooling_forward_desc_init(&d, dnnl_forward_training, dnnl_pooling_max, &src,
                                              &dst, strides, kernel, pl, pr));
    cpu_prim_create(b, &p->fwd, &d, attr, NULL);
    DNNL_CHECK(dnnl_pooling_backward_desc_init(&d, dnnl_pooling_max, &src, &dst, strides, kernel,
                                               pl, pr));
    cpu_prim_create(b, &p->bwd, &d, attr, p->fwd.pd);
    DNNL_CHECK(dnnl_primitive_attr_destroy(attr));
    const dnnl_memory_desc_t *wsmd = dnnl_primitive_desc_query_md(p->fwd.pd, dnnl_query_workspace_md, 0);
    p->ws_bytes = wsmd ? dnnl_memory_desc_get_size(wsmd) : 0;
    SWAV_ASSERT(p->ws_bytes > 0);
    p->ws = cpu_mem(b, wsmd);
    p->src = cpu_mem(b, &src);
    p->dst = cpu_mem(b, &dst);
    p->dsrc = cpu_mem(b, &src);
    p->ddst = cpu_mem(b, &dst);
    cpu_cache_put(b, key, p, cpu_pool_free);
    return p;
}

/* Max pooling of nChw8c tensors (C a multiple of 8) is our own pass, not
 * oneDNN's (whose AVX2 kernel took 10 ms, 2 threads, for ResNet's stem pool
 * at batch 8 x 224 pixels, a pass that reads 26 MB): one task per (image,
 * 8-channel block) plane, the 8 channels of a pixel one vector.  The
 * workspace is one byte per output, the window position (kh k + kw) of its
 * maximum; as torch, the first maximum in window order wins and a NaN
 * propagates.  Other layouts keep oneDNN's primitive. */
static int cpu_pool_own(const struct nn_tensor *inp, int k)
{
    return inp->layout == NN_LAYOUT_NCHW8C && inp->shape[1] % 8 == 0 && k * k <= 255;
}

/* The window rows [*k0, *k1) of output row o that fall inside the input. */
static void cpu_pool_range(int64_t o, int64_t in, int k, int stride, int pad, int *k0, int *k1)
{
    int64_t i0 = o * stride - pad;
    *k0 = i0 < 0 ? (int)-i0 : 0;
    *k1 = i0 + k > in ? (int)(in - i0) : k;
}

/* One (image, channel block) plane: x (H, W, 8) -> y (Ho, Wo, 8), ws (Ho, Wo, 8). */
static void cpu_maxpool_plane(const float *x, float *y, uint8_t *ws, int64_t H, int64_t W,
                              int64_t Ho, int64_t Wo, int k, int stride, int pad)
{
    for (int64_t oh = 0; oh < Ho; oh++) {
        int h0, h1;
        cpu_pool_range(oh, H, k, stride, pad, &h0, &h1);
        for (int64_t ow = 0; ow < Wo; ow++) {
            int w0, w1;
            cpu_pool_range(ow, W, k, stride, pad, &w0, &w1);
            int64_t at = (oh * stride - pad) * W + (ow * stride - pad); /* may be < 0 */
            float m[8];
            uint8_t id[8];
            for (int l = 0; l < 8; l++) {
                m[l] = -INFINITY;
                id[l] = (uint8_t)(h0 * k + w0);
            }
            for (int kh = h0; kh < h1; kh++) {
                for (int kw = w0; kw < w1; kw++) {
                    const float *v = x + (at + kh * W + kw) * 8;
                    for (int l = 0; l < 8; l++) {
                        if (v[l] > m[l] || v[l] != v[l]) {
                            m[l] = v[l];
                            id[l] = (uint8_t)(kh * k + kw);
                        }
                    }
                }
            }
            memcpy(y + (oh * Wo + ow) * 8, m, sizeof m);
            memcpy(ws + (oh * Wo + ow) * 8, id, sizeof id);
        }
    }
}

/* dx plane = 0, then each output's gradient added at its maximum. */
static void cpu_maxpool_bwd_plane(float *dx, const float *dy, const uint8_t *ws, int64_t H,
                                  int64_t W, int64_t Ho, int64_t Wo, int k, int stride, int pad)
{
    memset(dx, 0, (size_t)(H * W * 8) * sizeof(float));
    for (int64_t oh = 0; oh < Ho; oh++) {
        for (int64_t ow = 0; ow < Wo; ow++) {
            int64_t at = (oh * stride - pad) * W + (ow * stride - pad); /* may be < 0 */
            const float *g = dy + (oh * Wo + ow) * 8;
            const uint8_t *id = ws + (oh * Wo + ow) * 8;
            for (int l = 0; l < 8; l++) {
                dx[(at + id[l] / k * W + id[l] % k) * 8 + l] += g[l];
            }
        }
    }
}

#ifdef CPU_HAVE_AVX2_PATH
__attribute__((target("avx2"))) static void
cpu_maxpool_plane_avx2(const float *x, float *y, uint8_t *ws, int64_t H, int64_t W, int64_t Ho,
                       int64_t Wo, int k, int stride, int pad)
{
    for (int64_t oh = 0; oh < Ho; oh++) {
        int h0, h1;
        cpu_pool_range(oh, H, k, stride, pad, &h0, &h1);
        for (int64_t ow = 0; ow < Wo; ow++) {
            int w0, w1;
            cpu_pool_range(ow, W, k, stride, pad, &w0, &w1);
            int64_t at = (oh * stride - pad) * W + (ow * stride - pad); /* may be < 0 */
            __m256 m = _mm256_set1_ps(-INFINITY);
            __m256 id = _mm256_castsi256_ps(_mm256_set1_epi32(h0 * k + w0));
            for (int kh = h0; kh < h1; kh++) {
                for (int kw = w0; kw < w1; kw++) {
                    __m256 v = _mm256_loadu_ps(x + (at + kh * W + kw) * 8);
                    __m256 gt = _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ),
                                             _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                    m = _mm256_blendv_ps(m, v, gt);
                    id = _mm256_blendv_ps(id, _mm256_castsi256_ps(_mm256_set1_epi32(kh * k + kw)),
                                          gt);
                }
            }
            _mm256_storeu_ps(y + (oh * Wo + ow) * 8, m);
            __m256i i32 = _mm256_castps_si256(id);
            __m128i i16 = _mm_packus_epi32(_mm256_castsi256_si128(i32),
                                           _mm256_extracti128_si256(i32, 1));
            _mm_storel_epi64((__m128i *)(ws + (oh * Wo + ow) * 8), _mm_packus_epi16(i16, i16));
        }
    }
}

__attribute__((target("avx2"))) static void
cpu_maxpool_bwd_plane_avx2(float *dx, const float *dy, const uint8_t *ws, int64_t H, int64_t W,
                           int64_t Ho, int64_t Wo, int k, int stride, int pad)
{
    memset(dx, 0, (size_t)(H * W * 8) * sizeof(float));
    for (int64_t oh = 0; oh < Ho; oh++) {
        int h0, h1;
        cpu_pool_range(oh, H, k, stride, pad, &h0, &h1);
        for (int64_t ow = 0; ow < Wo; ow++) {
            int w0, w1;
            cpu_pool_range(ow, W, k, stride, pad, &w0, &w1);
            int64_t at = (oh * stride - pad) * W + (ow * stride - pad); /* may be < 0 */
            __m256 g = _mm256_loadu_ps(dy + (oh * Wo + ow) * 8);
            __m256i id = _mm256_cvtepu8_epi32(
                _mm_loadl_epi64((const __m128i *)(ws + (oh * Wo + ow) * 8)));
            for (int kh = h0; kh < h1; kh++) {
                for (int kw = w0; kw < w1; kw++) {
                    __m256 hit = _mm256_castsi256_ps(
                        _mm256_cmpeq_epi32(id, _mm256_set1_epi32(kh * k + kw)));
                    float *p = dx + (at + kh * W + kw) * 8;
                    _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm256_and_ps(g, hit)));
                }
            }
        }
    }
}
#endif

static size_t cpu_maxpool2d_workspace_bytes(nn_backend_t *be, const struct nn_tensor *out,
                                            const struct nn_tensor *inp, int k, int stride,
                                            int pad)
{
    if (cpu_pool_own(inp, k)) {
        return (size_t)nn_tensor_numel(out);
    }
    return cpu_pool_get(cpu(be), out, inp, k, stride, pad)->ws_bytes;
}

static void cpu_maxpool2d_forward(nn_backend_t *be, struct nn_tensor *out,
                                  const struct nn_tensor *inp, void *workspace, int k, int stride,
                                  int pad)
{
    struct cpu_backend *b = cpu(be);
    if (cpu_pool_own(inp, k)) {
        SWAV_ASSERT(out->layout == inp->layout && out->shape[0] == inp->shape[0] &&
                    out->shape[1] == inp->shape[1]);
        SWAV_ASSERT(out->shape[2] == (inp->shape[2] + 2 * pad - k) / stride + 1);
        SWAV_ASSERT(out->shape[3] == (inp->shape[3] + 2 * pad - k) / stride + 1);
        int64_t H = inp->shape[2], W = inp->shape[3], Ho = out->shape[2], Wo = out->shape[3];
        int64_t planes = inp->shape[0] * (inp->shape[1] / 8);
        int avx2 = cpu_avx2();
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < planes; i++) {
            const float *x = (const float *)inp->data + i * H * W * 8;
            float *y = (float *)out->data + i * Ho * Wo * 8;
            uint8_t *ws = (uint8_t *)workspace + i * Ho * Wo * 8;
#ifdef CPU_HAVE_AVX2_PATH
            if (avx2) {
                cpu_maxpool_plane_avx2(x, y, ws, H, W, Ho, Wo, k, stride, pad);
                continue;
            }
#endif
            cpu_maxpool_plane(x, y, ws, H, W, Ho, Wo, k, stride, pad);
        }
        (void)avx2;
        return;
    }
    struct cpu_pool *p = cpu_pool_get(b, out, inp, k, stride, pad);
    cpu_mem_set(p->src, inp->data);
    cpu_mem_set(p->dst, out->data);
    cpu_mem_set(p->ws, workspace);
    dnnl_exec_arg_t args[CPU_ARGS_MAX] = {
        {DNNL_ARG_SRC, p->src}, {DNNL_ARG_DST, p->dst}, {DNNL_ARG_WORKSPACE, p->ws}};
    cpu_exec(b, &p->fwd, 3, args);
}

static void cpu_maxpool2d_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                   const struct nn_tensor *dout, const void *workspace, int k,
                                   int stride, int pad)
{
    struct cpu_backend *b = cpu(be);
    if (cpu_pool_own(dinp, k)) {
        SWAV_ASSERT(dout->layout == dinp->layout && dout->shape[0] == dinp->shape[0] &&
                    dout->shape[1] == dinp->shape[1]);
        int64_t H = dinp->shape[2], W = dinp->shape[3], Ho = dout->shape[2], Wo = dout->shape[3];
        int64_t planes = dinp->shape[0] * (dinp->shape[1] / 8);
        int avx2 = cpu_avx2();
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < planes; i++) {
            float *dx = (float *)dinp->data + i * H * W * 8;
            const float *dy = (const float *)dout->data + i * Ho * Wo * 8;
            const uint8_t *ws = (const uint8_t *)workspace + i * Ho * Wo * 8;
#ifdef CPU_HAVE_AVX2_PATH
            if (avx2) {
                cpu_maxpool_bwd_plane_avx2(dx, dy, ws, H, W, Ho, Wo, k, stride, pad);
                continue;
            }
#endif
            cpu_maxpool_bwd_plane(dx, dy, ws, H, W, Ho, Wo, k, stride, pad);
        }
        (void)avx2;
        return;
    }
    struct cpu_pool *p = cpu_pool_get(b, dout, dinp, k, stride, pad);
    cpu_mem_set(p->dsrc, dinp->data);
    cpu_mem_set(p->ddst, dout->data);
    cpu_mem_set(p->ws, workspace);
    dnnl_exec_arg_t args[CPU_ARGS_MAX] = {
        {DNNL_ARG_DIFF_DST, p->ddst}, {DNNL_ARG_WORKSPACE, p->ws}, {DNNL_ARG_DIFF_SRC, p->dsrc}};
    cpu_exec(b, &p->bwd, 3, args);
}

/* ---- global average pooling (plain C: one pass, either layout) ---------------------- */

static void cpu_avgpool_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp)
{
    int64_t N = inp->shape[0], C = inp->shape[1], HW = inp->shape[2] * inp->shape[3];
    SWAV_ASSERT(out->ndim == 2 && out->shape[0] == N && out->shape[1] == C);
    const float *x = inp->data;
    float *y = out->data;
    float inv = 1.0f / (float)HW;
    if (inp->layout == NN_LAYOUT_NCHW8C) {
        int64_t CB = (C + 7) / 8;
        for (int64_t n = 0; n < N; n++) {
            for (int64_t cb = 0; cb < CB; cb++) {
                float acc[8] = {0};
                const float *p = x + (n * CB + cb) * HW * 8;
                for (int64_t i = 0; i < HW; i++) {
                    for (int j = 0; j < 8; j++) {
                        acc[j] += p[i * 8 + j];
                    }
                }
                for (int j = 0; j < 8 && cb * 8 + j < C; j++) {
                    y[n * C + cb * 8 + j] = acc[j] * inv;
                }
            }
        }
    } else {
        for (int64_t nc = 0; nc < N * C; nc++) {
            float acc = 0;
            for (int64_t i = 0; i < HW; i++) {
                acc += x[nc * HW + i];
            }
            y[nc] = acc * inv;
        }
    }
}

static void cpu_avgpool_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                 const struct nn_tensor *dout)
{
    int64_t N = dinp->shape[0], C = dinp->shape[1], HW = dinp->shape[2] * dinp->shape[3];
    const float *dy = dout->data;
    float *dx = dinp->data;
    float inv = 1.0f / (float)HW;
    if (dinp->layout == NN_LAYOUT_NCHW8C) {
        int64_t CB = (C + 7) / 8;
        for (int64_t n = 0; n < N; n++) {
            for (int64_t cb = 0; cb < CB; cb++) {
                float g[8] = {0};
                for (int j = 0; j < 8 && cb * 8 + j < C; j++) {
                    g[j] = dy[n * C + cb * 8 + j] * inv;
                }
                float *p = dx + (n * CB + cb) * HW * 8;
                for (int64_t i = 0; i < HW; i++) {
                    for (int j = 0; j < 8; j++) {
                        p[i * 8 + j] = g[j];
                    }
                }
            }
        }
    } else {
        for (int64_t nc = 0; nc < N * C; nc++) {
            float g = dy[nc] * inv;
            for (int64_t i = 0; i < HW; i++) {
                dx[nc * HW + i] = g;
            }
        }
    }
}

/* ---- linear (OpenBLAS) ------------------------------------------------------------ */

static void cpu_linear_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                               const float *weight, const float *bias)
{
    int N = (int)inp->shape[0], In = (int)inp->shape[1], O = (int)out->shape[1];
    SWAV_ASSERT(out->shape[0] == N);
    float *y = out->data;
    float beta = 0.0f;
    if (bias) {
        for (int n = 0; n < N; n++) {
            memcpy(y + (size_t)n * O, bias, (size_t)O * sizeof(float));
        }
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, O, In, 1.0f, inp->data, In, weight, In,
                beta, y, O);
}

static void cpu_linear_backward(nn_backend_t *be, struct nn_tensor *dinp, float *dweight,
                                float *dbias, const struct nn_tensor *dout,
                                const struct nn_tensor *inp, const float *weight)
{
    int N = (int)inp->shape[0], In = (int)inp->shape[1], O = (int)dout->shape[1];
    const float *dy = dout->data;
    if (dinp) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, In, O, 1.0f, dy, O, weight, In,
                    0.0f, dinp->data, In);
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, In, N, 1.0f, dy, O, inp->data, In, 1.0f,
                dweight, In);
    if (dbias) {
        for (int n = 0; n < N; n++) {
            for (int o = 0; o < O; o++) {
                dbias[o] += dy[(size_t)n * O + o];
            }
        }
    }
}

/* ---- row-wise ops --------------------------------------------------------------------- */

static void cpu_l2_normalize_forward(nn_backend_t *be, struct nn_tensor *out,
                                     const struct nn_tensor *inp, float *norms)
{
    int64_t N = inp->shape[0], D = inp->shape[1];
    const float *x = inp->data;
    float *y = out->data;
    for (int64_t n = 0; n < N; n++) {
        double s = 0;
        for (int64_t d = 0; d < D; d++) {
            s += (double)x[n * D + d] * x[n * D + d];
        }
        float nrm = (float)sqrt(s);
        norms[n] = nrm;
        float inv = 1.0f / (nrm > 1e-12f ? nrm : 1e-12f);
        for (int64_t d = 0; d < D; d++) {
            y[n * D + d] = x[n * D + d] * inv;
        }
    }
}

static void cpu_l2_normalize_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                      const struct nn_tensor *dout, const struct nn_tensor *out,
                                      const float *norms)
{
    int64_t N = out->shape[0], D = out->shape[1];
    const float *y = out->data, *dy = dout->data;
    float *dx = dinp->data;
    for (int64_t n = 0; n < N; n++) {
        if (norms[n] <= 1e-12f) { /* clamped: y = x / eps, a plain scaling */
            for (int64_t d = 0; d < D; d++) {
                dx[n * D + d] = dy[n * D + d] / 1e-12f;
            }
            continue;
        }
        double dot = 0;
        for (int64_t d = 0; d < D; d++) {
            dot += (double)y[n * D + d] * dy[n * D + d];
        }
        float inv = 1.0f / norms[n];
        for (int64_t d = 0; d < D; d++) {
            dx[n * D + d] = (dy[n * D + d] - y[n * D + d] * (float)dot) * inv;
        }
    }
}

static void cpu_log_softmax_rows(float *y, const float *x, int64_t N, int64_t K, float scale)
{
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * K;
        float *yr = y + n * K;
        float m = -INFINITY;
        for (int64_t k = 0; k < K; k++) {
            m = fmaxf(m, scale * xr[k]);
        }
        double s = 0;
        for (int64_t k = 0; k < K; k++) {
            s += exp((double)(scale * xr[k] - m));
        }
        float lse = m + (float)log(s);
        for (int64_t k = 0; k < K; k++) {
            yr[k] = scale * xr[k] - lse;
        }
    }
}

static void cpu_log_softmax_forward(nn_backend_t *be, struct nn_tensor *out,
                                    const struct nn_tensor *inp, float scale)
{
    cpu_log_softmax_rows(out->data, inp->data, inp->shape[0], inp->shape[1], scale);
}

static void cpu_log_softmax_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                     const struct nn_tensor *dout, const struct nn_tensor *out,
                                     float scale)
{
    int64_t N = out->shape[0], K = out->shape[1];
    const float *y = out->data, *dy = dout->data;
    float *dx = dinp->data;
    for (int64_t n = 0; n < N; n++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) {
            s += dy[n * K + k];
        }
        for (int64_t k = 0; k < K; k++) {
            dx[n * K + k] = scale * (dy[n * K + k] - expf(y[n * K + k]) * (float)s);
        }
    }
}

static float cpu_swav_loss_forward(nn_backend_t *be, float *logp, const struct nn_tensor *scores,
                                   const float *q, const struct nn_swav_loss_cfg *cfg)
{
    int64_t bs = cfg->bs, K = scores->shape[1];
    SWAV_ASSERT(scores->shape[0] == (int64_t)cfg->n_crops * bs && cfg->n_crops > 1);
    cpu_log_softmax_rows(logp, scores->data, scores->shape[0], K, 1.0f / cfg->temperature);
    double loss = 0;
    for (int i = 0; i < cfg->n_assign; i++) {
        const float *qi = q + (size_t)i * bs * K;
        double sub = 0;
        for (int v = 0; v < cfg->n_crops; v++) {
            if (v == cfg->crops_for_assign[i]) {
                continue;
            }
            const float *lp = logp + (size_t)v * bs * K;
            double s = 0;
            for (int64_t j = 0; j < bs * K; j++) {
                s += (double)qi[j] * lp[j];
            }
            sub -= s / (double)bs;
        }
        loss += sub / (cfg->n_crops - 1);
    }
    return (float)(loss / cfg->n_assign);
}

static void cpu_swav_loss_backward(nn_backend_t *be, struct nn_tensor *dscores, const float *logp,
                                   const float *q, const struct nn_swav_loss_cfg *cfg)
{
    int64_t bs = cfg->bs, K = dscores->shape[1];
    float *g = dscores->data;
    memset(g, 0, (size_t)cfg->n_crops * bs * K * sizeof(float));
    /* d/dx of -sum_k q log_softmax(x/T)_k = (softmax(x/T) sum_k q - q) / T */
    float c = 1.0f / (cfg->temperature * (float)bs * (float)(cfg->n_crops - 1) * (float)cfg->n_assign);
    for (int i = 0; i < cfg->n_assign; i++) {
        const float *qi = q + (size_t)i * bs * K;
        for (int v = 0; v < cfg->n_crops; v++) {
            if (v == cfg->crops_for_assign[i]) {
                continue;
            }
            const float *lp = logp + (size_t)v * bs * K;
            float *gv = g + (size_t)v * bs * K;
            for (int64_t b = 0; b < bs; b++) {
                float qs = 0;
                for (int64_t k = 0; k < K; k++) {
                    qs += qi[b * K + k];
                }
                for (int64_t k = 0; k < K; k++) {
                    gv[b * K + k] += c * (expf(lp[b * K + k]) * qs - qi[b * K + k]);
                }
            }
        }
    }
}

static float cpu_cross_entropy_soft_forward(nn_backend_t *be, float *logp,
                                            const struct nn_tensor *logits, const float *target)
{
    int64_t N = logits->shape[0], K = logits->shape[1];
    cpu_log_softmax_rows(logp, logits->data, N, K, 1.0f);
    double s = 0;
    for (int64_t j = 0; j < N * K; j++) {
        s -= (double)target[j] * logp[j];
    }
    return (float)(s / (double)N);
}

static void cpu_cross_entropy_soft_backward(nn_backend_t *be, struct nn_tensor *dlogits,
                                            const float *logp, const float *target)
{
    int64_t N = dlogits->shape[0], K = dlogits->shape[1];
    float *g = dlogits->data;
    for (int64_t n = 0; n < N; n++) {
        float ts = 0;
        for (int64_t k = 0; k < K; k++) {
            ts += target[n * K + k];
        }
        for (int64_t k = 0; k < K; k++) {
            g[n * K + k] = (expf(logp[n * K + k]) * ts - target[n * K + k]) / (float)N;
        }
    }
}

static float cpu_cross_entropy_forward(nn_backend_t *be, float *logp,
                                       const struct nn_tensor *logits, const int32_t *labels)
{
    int64_t N = logits->shape[0], K = logits->shape[1];
    cpu_log_softmax_rows(logp, logits->data, N, K, 1.0f);
    double s = 0;
    for (int64_t n = 0; n < N; n++) {
        SWAV_ASSERT(labels[n] >= 0 && labels[n] < K);
        s -= logp[n * K + labels[n]];
    }
    return (float)(s / (double)N);
}

static void cpu_cross_entropy_backward(nn_backend_t *be, struct nn_tensor *dlogits,
                                       const float *logp, const int32_t *labels)
{
    int64_t N = dlogits->shape[0], K = dlogits->shape[1];
    float *g = dlogits->data;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < K; k++) {
            g[n * K + k] = (expf(logp[n * K + k]) - (k == labels[n] ? 1.0f : 0.0f)) / (float)N;
        }
    }
}

/* ---- the table ------------------------------------------------------------------------ */

static const struct nn_backend_iface cpu_iface = {
    .name = "cpu",
    .blocked_layout = 1,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .sync = cpu_sync,
    .cache_size = cpu_cache_size,
    .weights_updated = cpu_weights_updated,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .scale = cpu_scale,
    .add_at = cpu_add_at,
    .nonfinite = cpu_nonfinite,
    .normalize_crops = cpu_normalize_crops,
    .normalize_rows = cpu_normalize_rows,
    .conv2d_forward = cpu_conv2d_forward,
    .conv2d_backward = cpu_conv2d_backward,
    .batchnorm_workspace_bytes = cpu_batchnorm_workspace_bytes,
    .batchnorm_forward = cpu_batchnorm_forward,
    .batchnorm_backward = cpu_batchnorm_backward,
    .batchnorm_stats = cpu_batchnorm_stats,
    .batchnorm_backward_elemt = cpu_batchnorm_backward_elemt,
    .relu_forward = cpu_relu_forward,
    .relu_backward = cpu_relu_backward,
    .add_forward = cpu_add_forward,
    .accumulate = cpu_accumulate,
    .maxpool2d_workspace_bytes = cpu_maxpool2d_workspace_bytes,
    .maxpool2d_forward = cpu_maxpool2d_forward,
    .maxpool2d_backward = cpu_maxpool2d_backward,
    .avgpool_forward = cpu_avgpool_forward,
    .avgpool_backward = cpu_avgpool_backward,
    .linear_forward = cpu_linear_forward,
    .linear_backward = cpu_linear_backward,
    .l2_normalize_forward = cpu_l2_normalize_forward,
    .l2_normalize_backward = cpu_l2_normalize_backward,
    .log_softmax_forward = cpu_log_softmax_forward,
    .log_softmax_backward = cpu_log_softmax_backward,
    .swav_loss_forward = cpu_swav_loss_forward,
    .swav_loss_backward = cpu_swav_loss_backward,
    .cross_entropy_soft_forward = cpu_cross_entropy_soft_forward,
    .cross_entropy_soft_backward = cpu_cross_entropy_soft_backward,
    .cross_entropy_forward = cpu_cross_entropy_forward,
    .cross_entropy_backward = cpu_cross_entropy_backward,
};

nn_backend_t *nn_backend_cpu_new(int nthreads)
{
    if (nthreads > 0) {
        omp_set_num_threads(nthreads);
        openblas_set_num_threads(nthreads);
    }
    nn_guard_init();
    struct cpu_backend *b = swav_xcalloc(1, sizeof *b);
    b->base.iface = &cpu_iface;
    b->weights_version = 1;
    DNNL_CHECK(dnnl_engine_create(&b->eng, dnnl_cpu, 0));
    DNNL_CHECK(dnnl_stream_create(&b->stream, b->eng, dnnl_stream_default_flags));
    return &b->base;
}
