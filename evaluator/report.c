/* report.html (see report.h): a string builder, a small SVG line-plot
 * function with "nice" ticks, and readers of train.jsonl / eval.jsonl that
 * treat every line as untrusted (skip and count what does not parse). */
#include "report.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/check.h"
#include "common/fileio.h"

#define REPORT_MAX_FILE ((size_t)1 << 30)
#define REPORT_MAX_POINTS 1500
#define REPORT_MAX_PROBES 32

/* ---- string builder ------------------------------------------------------ */

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_reserve(struct sbuf *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + more + 1)
        cap *= 2;
    b->p = swav_xrealloc(b->p, cap);
    b->cap = cap;
}

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    SWAV_ASSERT(n >= 0);
    sb_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void sb_puts(struct sbuf *b, const char *s)
{
    size_t n = strlen(s);
    sb_reserve(b, n);
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
}

/* HTML/XML text and attribute escaping. */
static void sb_esc(struct sbuf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': sb_puts(b, "&amp;"); break;
        case '<': sb_puts(b, "&lt;"); break;
        case '>': sb_puts(b, "&gt;"); break;
        case '"': sb_puts(b, "&quot;"); break;
        case '\'': sb_puts(b, "&#39;"); break;
        default: {
            char c[2] = {*s, 0};
            sb_puts(b, c);
        }
        }
    }
}

/* ---- data ---------------------------------------------------------------- */

struct train_pt {
    double epoch, step, loss, lr;
};

struct result_row {
    char probe[64];
    char checkpoint[512];
    double epoch, step, top1, top5, seconds;
    long long time_ms, n_train, n_val;
    bool baseline;
};

struct report_data {
    struct train_pt *tp;
    size_t ntp, captp;
    long bad_train;
    struct result_row *rr;
    size_t nrr, caprr;
    long bad_eval;
    json_t *config; /* object or NULL */
    char config_err[4608];
};

static bool num_field(json_t *o, const char *k, double *v)
{
    json_t *x = json_object_get(o, k);
    if (!json_is_number(x))
        return false;
    *v = json_number_value(x);
    return isfinite(*v);
}

/* Calls fn(line as JSON object) for each line; returns the count of lines
 * that are not JSON objects.  A missing file is no data, not an error. */
static long for_each_line(const char *path, void (*fn)(struct report_data *, json_t *, long *),
                          struct report_data *d)
{
    void *data;
    size_t len;
    char err[512];
    long bad = 0;
    if (swav_file_read_all(path, REPORT_MAX_FILE, &data, &len, err, sizeof(err)) != 0)
        return 0;
    char *p = data, *end = p + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *e = nl ? nl : end;
        if (e > p) {
            json_error_t je;
            json_t *o = json_loadb(p, (size_t)(e - p), 0, &je);
            if (json_is_object(o))
                fn(d, o, &bad);
            else
                bad++;
            json_decref(o);
        }
        p = nl ? nl + 1 : end;
    }
    free(data);
    return bad;
}

static void add_train(struct report_data *d, json_t *o, long *bad)
{
    struct train_pt t;
    if (!num_field(o, "epoch", &t.epoch) || !num_field(o, "step", &t.step) ||
        !num_field(o, "loss", &t.loss)) {
        (*bad)++;
        return;
    }
    if (!num_field(o, "lr", &t.lr))
        t.lr = NAN;
    if (d->ntp == d->captp) {
        d->captp = d->captp ? 2 * d->captp : 1024;
        d->tp = swav_xrealloc(d->tp, d->captp * sizeof(*d->tp));
    }
    d->tp[d->ntp++] = t;
}

static void add_result(struct report_data *d, json_t *o, long *bad)
{
    struct result_row r = {0};
    const char *probe = json_string_value(json_object_get(o, "probe"));
    if (!probe || !probe[0] || !num_field(o, "top1", &r.top1)) {
        (*bad)++;
        return;
    }
    snprintf(r.probe, sizeof(r.probe), "%s", probe);
    const char *ck = json_string_value(json_object_get(o, "checkpoint"));
    snprintf(r.checkpoint, sizeof(r.checkpoint), "%s", ck ? ck : "");
    if (!num_field(o, "top5", &r.top5))
        r.top5 = NAN;
    if (!num_field(o, "epoch", &r.epoch))
        r.epoch = -1;
    if (!num_field(o, "step", &r.step))
        r.step = -1;
    if (!num_field(o, "seconds", &r.seconds))
        r.seconds = NAN;
    double v;
    r.time_ms = num_field(o, "time", &v) ? (long long)v : 0;
    r.n_train = num_field(o, "n_train", &v) ? (long long)v : -1;
    r.n_val = num_field(o, "n_val", &v) ? (long long)v : -1;
    r.baseline = json_is_true(json_object_get(o, "baseline"));
    if (d->nrr == d->caprr) {
        d->caprr = d->caprr ? 2 * d->caprr : 64;
        d->rr = swav_xrealloc(d->rr, d->caprr * sizeof(*d->rr));
    }
    d->rr[d->nrr++] = r;
}

/* ---- plots --------------------------------------------------------------- */

struct series {
    const char *name;
    const char *color;
    const double *x, *y;
    size_t n;
    bool dashed, markers;
};

struct hline {
    char name[96];
    const char *color;
    double y;
};

enum { PW = 820, PH = 330, ML = 64, MR = 190, MT = 34, MB = 48 };

static double nice_step(double range, int target)
{
    double raw = range / target;
    double mag = pow(10.0, floor(log10(raw)));
    double f = raw / mag;
    double s = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
    return s * mag;
}

static void fmt_tick(char *buf, size_t n, double v, double step)
{
    if (fabs(v) < step * 1e-6)
        v = 0.0;
    if (fabs(v) >= 1e5 || (fabs(v) < 1e-3 && v != 0.0))
        snprintf(buf, n, "%.3g", v);
    else {
        int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
        snprintf(buf, n, "%.*f", dec > 6 ? 6 : dec, v);
    }
}

/* One plot; vlines (x positions) with labels vlab (may be NULL). */
static void svg_plot(struct sbuf *b, const char *title, const char *xlabel, const char *ylabel,
                     const struct series *s, int ns, const struct hline *h, int nh,
                     const double *vx, const char *const *vlab, int nv, bool y_from_zero,
                     bool x_int_from_zero)
{
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    size_t npts = 0;
    for (int i = 0; i < ns; i++)
        for (size_t j = 0; j < s[i].n; j++) {
            if (!isfinite(s[i].x[j]) || !isfinite(s[i].y[j]))
                continue;
            x0 = fmin(x0, s[i].x[j]);
            x1 = fmax(x1, s[i].x[j]);
            y0 = fmin(y0, s[i].y[j]);
            y1 = fmax(y1, s[i].y[j]);
            npts++;
        }
    for (int i = 0; i < nh; i++) {
        y0 = fmin(y0, h[i].y);
        y1 = fmax(y1, h[i].y);
    }
    sb_printf(b, "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                 "viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"",
              PW, PH, PW, PH);
    sb_esc(b, title);
    sb_puts(b, "\">\n");
    sb_printf(b, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#fff\"/>\n", PW, PH);
    sb_printf(b, "<text x=\"%d\" y=\"20\" class=\"t\">", ML);
    sb_esc(b, title);
    sb_puts(b, "</text>\n");
    if (npts == 0 && nh == 0) {
        sb_printf(b, "<text x=\"%d\" y=\"%d\" class=\"e\">no data yet</text></svg></figure>\n",
                  PW / 2 - 40, PH / 2);
        return;
    }
    if (x_int_from_zero && isfinite(x0) && x0 > 0)
        x0 = 0;
    if (!(x1 > x0)) {
        if (!isfinite(x0))
            x0 = 0, x1 = 1;
        x0 -= 0.5;
        x1 += 0.5;
    }
    if (y_from_zero && y0 > 0)
        y0 = 0;
    if (!(y1 > y0)) {
        double pad = fabs(y0) > 0 ? fabs(y0) * 0.05 : 0.5;
        y0 -= pad;
        y1 += pad;
    }
    double ys = nice_step(y1 - y0, 6), xs = nice_step(x1 - x0, 8);
    if (x_int_from_zero && xs < 1)
        xs = 1; /* epochs: whole ticks */
    if (x_int_from_zero)
        x1 += 0.03 * (x1 - x0); /* room for the last markers */
    y0 = floor(y0 / ys) * ys;
    y1 = ceil(y1 / ys) * ys;
    double pw = PW - ML - MR, ph = PH - MT - MB;
#define SX(v) (ML + ((v) - x0) / (x1 - x0) * pw)
#define SY(v) (MT + ph - ((v) - y0) / (y1 - y0) * ph)
    /* grid and ticks */
    char tb[64];
    for (double v = y0; v <= y1 + ys * 1e-6; v += ys) {
        fmt_tick(tb, sizeof(tb), v, ys);
        sb_printf(b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" class=\"g\"/>"
                     "<text x=\"%d\" y=\"%.1f\" class=\"yt\">%s</text>\n",
                  ML, SY(v), ML + pw, SY(v), ML - 6, SY(v) + 4, tb);
    }
    for (double v = ceil(x0 / xs) * xs; v <= x1 + xs * 1e-6; v += xs) {
        fmt_tick(tb, sizeof(tb), v, xs);
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.0f\" class=\"g\"/>"
                     "<text x=\"%.1f\" y=\"%.0f\" class=\"xt\">%s</text>\n",
                  SX(v), MT, SX(v), MT + ph, SX(v), MT + ph + 16, tb);
    }
    sb_printf(b, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" class=\"frame\"/>\n", ML,
              MT, pw, ph);
    for (int i = 0; i < nv; i++) {
        if (vx[i] < x0 || vx[i] > x1)
            continue;
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.0f\" class=\"v\"/>", SX(vx[i]),
                  MT, SX(vx[i]), MT + ph);
        if (vlab && vlab[i])
            sb_printf(b, "<text x=\"%.1f\" y=\"%d\" class=\"vl\">%s</text>", SX(vx[i]) + 2, MT + 10,
                      vlab[i]);
        sb_puts(b, "\n");
    }
    sb_printf(b, "<text x=\"%.0f\" y=\"%d\" class=\"xl\">", ML + pw / 2, PH - 8);
    sb_esc(b, xlabel);
    sb_printf(b, "</text><text x=\"14\" y=\"%.0f\" class=\"yl\" transform=\"rotate(-90 14 %.0f)\">",
              MT + ph / 2, MT + ph / 2);
    sb_esc(b, ylabel);
    sb_puts(b, "</text>\n");
    int legend = 0;
    for (int i = 0; i < nh; i++) {
        sb_printf(b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"%s\" "
                     "stroke-width=\"1.6\" stroke-dasharray=\"7 4\"><title>",
                  ML, SY(h[i].y), ML + pw, SY(h[i].y), h[i].color);
        sb_esc(b, h[i].name);
        sb_printf(b, ": %.4g</title></line>\n", h[i].y);
        double ly = MT + 8 + 18 * legend++;
        sb_printf(b, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" "
                     "stroke-width=\"1.6\" stroke-dasharray=\"7 4\"/><text x=\"%.0f\" y=\"%.0f\" "
                     "class=\"lg\">",
                  ML + pw + 10, ly, ML + pw + 34, ly, h[i].color, ML + pw + 38, ly + 4);
        sb_esc(b, h[i].name);
        sb_printf(b, " %.4g</text>\n", h[i].y);
    }
    for (int i = 0; i < ns; i++) {
        if (s[i].n == 0)
            continue;
        sb_printf(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\"%s points=\"",
                  s[i].color, s[i].dashed ? " stroke-dasharray=\"4 3\"" : "");
        for (size_t j = 0; j < s[i].n; j++)
            if (isfinite(s[i].x[j]) && isfinite(s[i].y[j]))
                sb_printf(b, "%.1f,%.1f ", SX(s[i].x[j]), SY(s[i].y[j]));
        sb_puts(b, "\"/>\n");
        if (s[i].markers)
            for (size_t j = 0; j < s[i].n; j++) {
                if (!isfinite(s[i].x[j]) || !isfinite(s[i].y[j]))
                    continue;
                sb_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>",
                          SX(s[i].x[j]), SY(s[i].y[j]), s[i].color);
                sb_esc(b, s[i].name);
                sb_printf(b, " at %g: %.4g</title></circle>\n", s[i].x[j], s[i].y[j]);
            }
        double ly = MT + 8 + 18 * legend++;
        sb_printf(b, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" "
                     "stroke-width=\"1.8\"%s/><text x=\"%.0f\" y=\"%.0f\" class=\"lg\">",
                  ML + pw + 10, ly, ML + pw + 34, ly, s[i].color,
                  s[i].dashed ? " stroke-dasharray=\"4 3\"" : "", ML + pw + 38, ly + 4);
        sb_esc(b, s[i].name);
        sb_puts(b, "</text>\n");
    }
#undef SX
#undef SY
    sb_puts(b, "</svg></figure>\n");
}

/* Bucket means so that a long run's loss curve stays a few KB. */
static size_t decimate(const struct train_pt *tp, size_t n, double *x, double *y, double *lr)
{
    if (n <= REPORT_MAX_POINTS) {
        for (size_t i = 0; i < n; i++) {
            x[i] = tp[i].step;
            y[i] = tp[i].loss;
            lr[i] = tp[i].lr;
        }
        return n;
    }
    size_t m = REPORT_MAX_POINTS;
    for (size_t k = 0; k < m; k++) {
        size_t a = k * n / m, e = (k + 1) * n / m;
        double sx = 0, sy = 0, sl = 0;
        for (size_t i = a; i < e; i++) {
            sx += tp[i].step;
            sy += tp[i].loss;
            sl += tp[i].lr;
        }
        x[k] = sx / (double)(e - a);
        y[k] = sy / (double)(e - a);
        lr[k] = sl / (double)(e - a);
    }
    return m;
}

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                                      "#8c564b", "#e377c2", "#17becf"};

static int cmp_train(const void *a, const void *b)
{
    const struct train_pt *x = a, *y = b;
    return (x->step > y->step) - (x->step < y->step);
}

static int cmp_result_epoch(const void *a, const void *b)
{
    const struct result_row *x = a, *y = b;
    if (x->epoch != y->epoch)
        return (x->epoch > y->epoch) - (x->epoch < y->epoch);
    return (x->time_ms > y->time_ms) - (x->time_ms < y->time_ms);
}

static void render_loss(struct sbuf *b, struct report_data *d)
{
    if (d->ntp > 0) /* tp is NULL without train.jsonl */
        qsort(d->tp, d->ntp, sizeof(*d->tp), cmp_train);
    size_t n = d->ntp < REPORT_MAX_POINTS ? d->ntp : REPORT_MAX_POINTS;
    double *x = swav_xmalloc(sizeof(double) * (n + 1));
    double *y = swav_xmalloc(sizeof(double) * (n + 1));
    double *lr = swav_xmalloc(sizeof(double) * (n + 1));
    n = decimate(d->tp, d->ntp, x, y, lr);
    /* epoch starts: the first step whose floor(epoch) changes */
    int nv = 0, capv = 64;
    double vx[64];
    char vbuf[64][16];
    const char *vlab[64];
    long long ep_prev = LLONG_MIN, ne = 0;
    for (size_t i = 0; i < d->ntp; i++) {
        long long e = (long long)floor(d->tp[i].epoch);
        if (e != ep_prev) {
            ne++;
            ep_prev = e;
        }
    }
    ep_prev = LLONG_MIN;
    long long every = ne > capv ? (ne + capv - 1) / capv : 1;
    for (size_t i = 0; i < d->ntp && nv < capv; i++) {
        long long e = (long long)floor(d->tp[i].epoch);
        if (e != ep_prev) {
            if (e % every == 0 && i > 0) {
                vx[nv] = d->tp[i].step;
                snprintf(vbuf[nv], sizeof(vbuf[nv]), "ep %lld", e);
                vlab[nv] = ne <= 24 ? vbuf[nv] : NULL;
                nv++;
            }
            ep_prev = e;
        }
    }
    struct series ls = {"loss", palette[0], x, y, n, false, n <= 60};
    svg_plot(b, "Training loss", "step (dotted lines: epoch starts)", "loss", &ls, 1, NULL, 0,
             vx, vlab, nv, false, false);
    bool have_lr = false;
    for (size_t i = 0; i < n; i++)
        have_lr |= isfinite(lr[i]);
    if (have_lr) {
        struct series lrs = {"learning rate", palette[4], x, lr, n, false, false};
        svg_plot(b, "Learning rate", "step", "lr", &lrs, 1, NULL, 0, vx, vlab, nv, true, false);
    }
    free(x);
    free(y);
    free(lr);
}

static void render_probe(struct sbuf *b, struct report_data *d, const char *probe)
{
    size_t n = 0;
    for (size_t i = 0; i < d->nrr; i++)
        n += !strcmp(d->rr[i].probe, probe) && !d->rr[i].baseline;
    double *x = swav_xmalloc(sizeof(double) * (n + 1));
    double *t1 = swav_xmalloc(sizeof(double) * (n + 1));
    double *t5 = swav_xmalloc(sizeof(double) * (n + 1));
    struct hline h[2];
    int nh = 0;
    const struct result_row *base = NULL;
    size_t k = 0;
    for (size_t i = 0; i < d->nrr; i++) {
        const struct result_row *r = &d->rr[i];
        if (strcmp(r->probe, probe) != 0)
            continue;
        if (r->baseline) {
            base = r; /* the latest baseline of this probe */
            continue;
        }
        x[k] = r->epoch;
        t1[k] = r->top1;
        t5[k] = r->top5;
        k++;
    }
    if (base) {
        snprintf(h[nh].name, sizeof(h[nh].name), "random init top-1");
        h[nh].color = "#555";
        h[nh++].y = base->top1;
        if (isfinite(base->top5)) {
            snprintf(h[nh].name, sizeof(h[nh].name), "random init top-5");
            h[nh].color = "#aaa";
            h[nh++].y = base->top5;
        }
    }
    struct series s[2] = {
        {"top-1", palette[1], x, t1, k, false, true},
        {"top-5", palette[2], x, t5, k, true, true},
    };
    char title[128];
    snprintf(title, sizeof(title), "Probe \"%.64s\": accuracy (%%) against epoch", probe);
    svg_plot(b, title, "epoch of the checkpoint", "accuracy (%)", s, 2, h, nh, NULL, NULL, 0,
             false, true);
    free(x);
    free(t1);
    free(t5);
}

static void render_results_table(struct sbuf *b, struct report_data *d)
{
    sb_puts(b, "<h3>All results (file order; random-init baselines in italics)</h3>\n<table><tr><th>time (UTC)</th><th>probe</th><th>epoch</th>"
               "<th>step</th><th>top-1 %</th><th>top-5 %</th><th>n train</th><th>n val</th>"
               "<th>seconds</th><th>checkpoint</th></tr>\n");
    for (size_t i = 0; i < d->nrr; i++) {
        const struct result_row *r = &d->rr[i];
        char ts[32] = "";
        time_t t = (time_t)(r->time_ms / 1000);
        struct tm tm;
        if (r->time_ms > 0 && gmtime_r(&t, &tm))
            strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%S", &tm);
        sb_printf(b, "<tr%s><td>%s</td><td>", r->baseline ? " class=\"base\"" : "", ts);
        sb_esc(b, r->probe);
        sb_printf(b, "%s</td><td>%.0f</td><td>%.0f</td><td>%.2f</td><td>%.2f</td><td>%lld</td>"
                     "<td>%lld</td><td>%.2f</td><td>",
                  r->baseline ? " (random init)" : "", r->epoch, r->step, r->top1, r->top5,
                  r->n_train, r->n_val, r->seconds);
        sb_esc(b, r->checkpoint);
        sb_puts(b, "</td></tr>\n");
    }
    sb_puts(b, "</table>\n");
}

static void render_config(struct sbuf *b, struct report_data *d)
{
    sb_puts(b, "<h2>Configuration</h2>\n");
    if (!d->config) {
        sb_puts(b, "<p class=\"note\">");
        sb_esc(b, d->config_err[0] ? d->config_err : "no configuration given");
        sb_puts(b, "</p>\n");
        return;
    }
    sb_puts(b, "<table class=\"cfg\">\n");
    const char *key;
    json_t *v;
    json_object_foreach(d->config, key, v)
    {
        char *txt = json_is_string(v) ? NULL
                                      : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY |
                                                          JSON_REAL_PRECISION(12));
        sb_puts(b, "<tr><th>");
        sb_esc(b, key);
        sb_puts(b, "</th><td>");
        sb_esc(b, txt ? txt : json_is_string(v) ? json_string_value(v) : "?");
        sb_puts(b, "</td></tr>\n");
        free(txt);
    }
    sb_puts(b, "</table>\n");
}

static const char *const css =
    "body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}"
    "h1{font-size:22px}h2{font-size:18px;margin-top:28px}"
    "figure{margin:12px 0}svg{border:1px solid #ddd}"
    "svg text{font-family:sans-serif;font-size:12px;fill:#333}"
    "svg .t{font-size:14px;font-weight:bold}svg .e{fill:#999}"
    "svg .yt{text-anchor:end}svg .xt{text-anchor:middle}svg .xl{text-anchor:middle}"
    "svg .yl{text-anchor:middle}svg .lg{font-size:12px}svg .vl{font-size:10px;fill:#888}"
    "svg .g{stroke:#eee;stroke-width:1}svg .v{stroke:#bbb;stroke-width:1;stroke-dasharray:2 3}"
    "svg .frame{fill:none;stroke:#999}"
    "table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}"
    "tr.base td{color:#666;font-style:italic}"
    "table.cfg td{font-family:monospace}.note{color:#666}";

int eval_report_render(const char *dump_path, const char *config_json, char **html,
                       size_t *len, char *err, size_t errlen)
{
    struct report_data d = {0};
    char path[4096];
    if ((size_t)snprintf(path, sizeof(path), "%s/train.jsonl", dump_path) >= sizeof(path)) {
        snprintf(err, errlen, "dump_path too long");
        return -1;
    }
    d.bad_train = for_each_line(path, add_train, &d);
    snprintf(path, sizeof(path), "%s/eval.jsonl", dump_path);
    d.bad_eval = for_each_line(path, add_result, &d);

    json_error_t je;
    if (config_json) {
        d.config = json_loads(config_json, 0, &je);
        if (!json_is_object(d.config)) {
            snprintf(d.config_err, sizeof(d.config_err), "configuration is not a JSON object: %s",
                     d.config ? "not an object" : je.text);
            json_decref(d.config);
            d.config = NULL;
        }
    } else {
        snprintf(path, sizeof(path), "%s/config.json", dump_path);
        struct stat st;
        if (stat(path, &st) == 0) {
            d.config = json_load_file(path, 0, &je);
            if (!json_is_object(d.config)) {
                snprintf(d.config_err, sizeof(d.config_err), "%s is not a JSON object: %s", path,
                         d.config ? "not an object" : je.text);
                json_decref(d.config);
                d.config = NULL;
            }
        }
    }

    struct sbuf b = {0};
    sb_puts(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<title>swav report</title><style>");
    sb_puts(&b, css);
    sb_puts(&b, "</style></head><body>\n<h1>swav run report</h1>\n<p>dump path: <code>");
    sb_esc(&b, dump_path);
    sb_puts(&b, "</code></p>\n<p>");
    if (d.ntp) {
        const struct train_pt *last = &d.tp[d.ntp - 1];
        sb_printf(&b, "%zu training records; last: epoch %g, step %.0f, loss %.4f. ", d.ntp,
                  last->epoch, last->step, last->loss);
    } else {
        sb_puts(&b, "No training records yet. ");
    }
    sb_printf(&b, "%zu probe results.", d.nrr);
    if (d.bad_train || d.bad_eval)
        sb_printf(&b, " Skipped unreadable lines: %ld in train.jsonl, %ld in eval.jsonl.",
                  d.bad_train, d.bad_eval);
    sb_puts(&b, "</p>\n<h2>Training</h2>\n");
    render_loss(&b, &d);

    /* probes in order of first appearance; points sorted by epoch */
    const char *probes[REPORT_MAX_PROBES];
    int np = 0;
    for (size_t i = 0; i < d.nrr; i++) {
        int j = 0;
        while (j < np && strcmp(probes[j], d.rr[i].probe) != 0)
            j++;
        if (j == np && np < REPORT_MAX_PROBES)
            probes[np++] = d.rr[i].probe;
    }
    sb_puts(&b, "<h2>Probes</h2>\n");
    if (np == 0)
        sb_puts(&b, "<p class=\"note\">No probe results yet.</p>\n");
    struct result_row *sorted = swav_xmalloc(sizeof(*sorted) * (d.nrr + 1));
    if (d.nrr > 0) { /* rr is NULL without eval.jsonl */
        memcpy(sorted, d.rr, sizeof(*sorted) * d.nrr);
        qsort(sorted, d.nrr, sizeof(*sorted), cmp_result_epoch);
    }
    char names[REPORT_MAX_PROBES][64];
    for (int j = 0; j < np; j++)
        snprintf(names[j], sizeof(names[j]), "%s", probes[j]);
    struct result_row *orig = d.rr;
    d.rr = sorted;
    for (int j = 0; j < np; j++)
        render_probe(&b, &d, names[j]);
    d.rr = orig;
    free(sorted);
    if (d.nrr)
        render_results_table(&b, &d);
    render_config(&b, &d);
    sb_puts(&b, "</body></html>\n");

    free(d.tp);
    free(d.rr);
    json_decref(d.config);
    *html = b.p;
    *len = b.len;
    return 0;
}

int eval_report_write(const char *dump_path, const char *config_json, char *err, size_t errlen)
{
    char *html;
    size_t len;
    if (eval_report_render(dump_path, config_json, &html, &len, err, errlen) != 0)
        return -1;
    char path[4096];
    snprintf(path, sizeof(path), "%s/report.html", dump_path);
    int rc = swav_mkdirs(dump_path, err, errlen);
    if (rc == 0)
        rc = swav_file_write_atomic(path, html, len, err, errlen);
    free(html);
    return rc == 0 ? 0 : -1;
}
