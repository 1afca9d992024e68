/* Table-driven flag parser: see flags.h. */
#include "flags.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int swav_flags_parse_bool(const char *s)
{
    static const char *truthy[] = {"on", "true", "1"};
    static const char *falsy[] = {"off", "false", "0"};
    for (size_t i = 0; i < 3; i++) {
        if (!strcasecmp(s, truthy[i])) return 1;
        if (!strcasecmp(s, falsy[i])) return 0;
    }
    return -1;
}

static const char *type_name(enum swav_flag_type t)
{
    switch (t) {
    case SWAV_FLAG_INT: return "int";
    case SWAV_FLAG_FLOAT: return "float";
    case SWAV_FLAG_BOOL: return "bool";
    case SWAV_FLAG_STR: return "str";
    case SWAV_FLAG_INT_LIST: return "int...";
    case SWAV_FLAG_FLOAT_LIST: return "float...";
    }
    return "?";
}

static int parse_int(const struct swav_flag *f, const char *s, int64_t *out, char *err,
                     size_t errlen)
{
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno) {
        snprintf(err, errlen, "--%s: '%s' is not an integer", f->name, s);
        return -1;
    }
    if ((double)v < f->min || (double)v > f->max) {
        snprintf(err, errlen, "--%s: %lld is outside the allowed range [%.17g, %.17g]", f->name, v,
                 f->min, f->max);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const struct swav_flag *f, const char *s, double *out, char *err,
                       size_t errlen)
{
    errno = 0;
    char *end = NULL;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v)) {
        snprintf(err, errlen, "--%s: '%s' is not a finite number", f->name, s);
        return -1;
    }
    if (v < f->min || v > f->max) {
        snprintf(err, errlen, "--%s: %g is outside the allowed range [%.17g, %.17g]", f->name, v,
                 f->min, f->max);
        return -1;
    }
    *out = v;
    return 0;
}

/* s is one of the '|'-separated words of choices; a word "PREFIX:N"
 * stands for PREFIX: and an index 0..1023 ("cuda:N": cuda:0, cuda:7). */
static int in_choices(const char *choices, const char *s)
{
    size_t n = strlen(s);
    const char *p = choices;
    for (;;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, s, n)) {
            return 1;
        }
        if (len >= 2 && !strncmp(p + len - 2, ":N", 2) && n > len - 1 &&
            !strncmp(p, s, len - 1) && s[len - 1] >= '0' && s[len - 1] <= '9') {
            char *end = NULL;
            long v = strtol(s + len - 1, &end, 10);
            if (*end == '\0' && v < 1024) {
                return 1;
            }
        }
        if (!bar) {
            return 0;
        }
        p = bar + 1;
    }
}

int swav_flags_parse_device(const char *s, int *index)
{
    *index = 0;
    if (!in_choices(SWAV_FLAG_DEVICE_CHOICES, s)) return -1;
    if (!strcmp(s, "cpu")) return 0;
    if (s[4] == ':') *index = (int)strtol(s + 5, NULL, 10);
    return 1;
}

/* Store the values vals[0..nvals) into f's field. */
static int store(const struct swav_flag *f, void *cfg, char **vals, int nvals, char *err,
                 size_t errlen)
{
    char *field = (char *)cfg + f->offset;
    switch (f->type) {
    case SWAV_FLAG_INT:
    case SWAV_FLAG_FLOAT:
    case SWAV_FLAG_STR:
        if (nvals != 1) {
            snprintf(err, errlen, "--%s: expects exactly one value, got %d", f->name, nvals);
            return -1;
        }
        if (f->type == SWAV_FLAG_INT) {
            return parse_int(f, vals[0], (int64_t *)field, err, errlen);
        }
        if (f->type == SWAV_FLAG_FLOAT) {
            return parse_float(f, vals[0], (double *)field, err, errlen);
        }
        if (f->choices && !in_choices(f->choices, vals[0])) {
            snprintf(err, errlen, "--%s: '%s' is not one of %s", f->name, vals[0], f->choices);
            return -1;
        }
        *(const char **)field = vals[0];
        return 0;
    case SWAV_FLAG_BOOL: {
        if (nvals > 1) {
            snprintf(err, errlen, "--%s: expects one boolean value, got %d", f->name, nvals);
            return -1;
        }
        int b = nvals == 0 ? 1 : swav_flags_parse_bool(vals[0]);
        if (b < 0) {
            snprintf(err, errlen, "--%s: '%s' is not a boolean (true/false, on/off, 1/0)",
                     f->name, vals[0]);
            return -1;
        }
        *(bool *)field = b != 0;
        return 0;
    }
    case SWAV_FLAG_INT_LIST:
    case SWAV_FLAG_FLOAT_LIST: {
        int lo = f->min_len > 0 ? f->min_len : 1;
        int hi = f->max_len > 0 && f->max_len < SWAV_FLAG_LIST_MAX ? f->max_len : SWAV_FLAG_LIST_MAX;
        if (nvals < lo || nvals > hi) {
            if (lo == hi) {
                snprintf(err, errlen, "--%s: expects %d value%s, got %d", f->name, lo,
                         lo == 1 ? "" : "s", nvals);
            } else {
                snprintf(err, errlen, "--%s: expects %d to %d values, got %d", f->name, lo, hi,
                         nvals);
            }
            return -1;
        }
        if (f->type == SWAV_FLAG_INT_LIST) {
            struct swav_int_list tmp = {.n = nvals};
            for (int i = 0; i < nvals; i++) {
                if (parse_int(f, vals[i], &tmp.v[i], err, errlen)) return -1;
            }
            *(struct swav_int_list *)field = tmp;
        } else {
            struct swav_float_list tmp = {.n = nvals};
            for (int i = 0; i < nvals; i++) {
                if (parse_float(f, vals[i], &tmp.v[i], err, errlen)) return -1;
            }
            *(struct swav_float_list *)field = tmp;
        }
        return 0;
    }
    }
    snprintf(err, errlen, "--%s: unknown flag type", f->name);
    return -1;
}

static int store_default(const struct swav_flag *f, void *cfg, char *err, size_t errlen)
{
    char *field = (char *)cfg + f->offset;
    const char *def = f->def ? f->def : "";
    if (f->type == SWAV_FLAG_STR) {
        *(const char **)field = def;
        return 0;
    }
    if (!*def && (f->type == SWAV_FLAG_INT_LIST || f->type == SWAV_FLAG_FLOAT_LIST)) {
        memset(field, 0, f->type == SWAV_FLAG_INT_LIST ? sizeof(struct swav_int_list)
                                                       : sizeof(struct swav_float_list));
        return 0;
    }
    /* Split the default on spaces into a scratch copy. */
    char buf[512];
    snprintf(buf, sizeof buf, "%s", def);
    char *vals[SWAV_FLAG_LIST_MAX + 1];
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, " ", &save); tok && n <= SWAV_FLAG_LIST_MAX;
         tok = strtok_r(NULL, " ", &save)) {
        vals[n++] = tok;
    }
    if (store(f, cfg, vals, n, err, errlen)) {
        return -1;
    }
    return 0;
}

int swav_flags_defaults(const struct swav_flag_set *sets, int nsets, char *err, size_t errlen)
{
    for (int s = 0; s < nsets; s++) {
        for (size_t i = 0; i < sets[s].n; i++) {
            if (store_default(&sets[s].flags[i], sets[s].cfg, err, errlen)) {
                return -1;
            }
        }
    }
    return 0;
}

static const struct swav_flag *find(const struct swav_flag_set *sets, int nsets, const char *name,
                                    size_t len, void **cfg)
{
    for (int s = 0; s < nsets; s++) {
        for (size_t i = 0; i < sets[s].n; i++) {
            const struct swav_flag *f = &sets[s].flags[i];
            if (strlen(f->name) == len && !strncmp(f->name, name, len)) {
                *cfg = sets[s].cfg;
                return f;
            }
        }
    }
    return NULL;
}

int swav_flags_parse(const struct swav_flag_set *sets, int nsets, int argc, char **argv,
                     char *err, size_t errlen)
{
    if (swav_flags_defaults(sets, nsets, err, errlen)) {
        return -1;
    }
    int i = 0;
    while (i < argc) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            return 1;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            snprintf(err, errlen, "unexpected argument '%s' (flags start with --)", a);
            return -1;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        void *cfg = NULL;
        const struct swav_flag *f = find(sets, nsets, name, len, &cfg);
        if (!f) {
            snprintf(err, errlen, "unknown flag --%.*s (see --help)", (int)len, name);
            return -1;
        }
        char *vals[SWAV_FLAG_LIST_MAX + 1];
        int n = 0;
        i++;
        if (eq) {
            vals[n++] = (char *)eq + 1;
        } else {
            bool list = f->type == SWAV_FLAG_INT_LIST || f->type == SWAV_FLAG_FLOAT_LIST;
            int want = list ? SWAV_FLAG_LIST_MAX + 1 : 1;
            /* a boolean takes the next token unless it is a flag, and
             * store() rejects it when it is not a boolean: "--use_fp16
             * maybe" names --use_fp16, not "maybe" */
            while (i < argc && n < want && strncmp(argv[i], "--", 2) != 0) {
                vals[n++] = argv[i++];
            }
            if (list && i < argc && n == want) {
                snprintf(err, errlen, "--%s: expects at most %d values", f->name,
                         SWAV_FLAG_LIST_MAX);
                return -1;
            }
        }
        if (n == 0 && f->type != SWAV_FLAG_BOOL) {
            snprintf(err, errlen, "--%s: missing value (%s)", f->name, type_name(f->type));
            return -1;
        }
        if (store(f, cfg, vals, n, err, errlen)) {
            return -1;
        }
    }
    return 0;
}

void swav_flags_usage(FILE *out, const char *prog, const struct swav_flag_set *sets, int nsets)
{
    fprintf(out, "usage: %s [flags]\n\nflags (reference names kept; lists as --name 2 6):\n", prog);
    for (int s = 0; s < nsets; s++) {
        for (size_t i = 0; i < sets[s].n; i++) {
            const struct swav_flag *f = &sets[s].flags[i];
            fprintf(out, "  --%-26s %-9s %s (default: %s)\n", f->name, type_name(f->type),
                    f->help ? f->help : "", f->def && *f->def ? f->def : "none");
        }
    }
}

static int json_str(char *buf, size_t len, const char *s)
{
    /* buf may be NULL (len 0) to measure; never form a pointer past buf + len */
#define JROOM ((size_t)n < len ? len - (size_t)n : 0)
#define JAT (buf ? buf + ((size_t)n < len ? (size_t)n : len) : NULL)
    int n = 0;
    n += snprintf(JAT, JROOM, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            n += snprintf(JAT, JROOM, "\\%c", c);
        } else if (c < 0x20) {
            n += snprintf(JAT, JROOM, "\\u%04x", c);
        } else {
            n += snprintf(JAT, JROOM, "%c", c);
        }
    }
    n += snprintf(JAT, JROOM, "\"");
#undef JROOM
#undef JAT
    return n;
}

int swav_flags_to_json(char *buf, size_t len, const struct swav_flag_set *sets, int nsets)
{
    int n = 0;
#define ROOM ((size_t)n < len ? len - (size_t)n : 0)
#define AT (buf ? buf + ((size_t)n < len ? (size_t)n : len) : NULL)
    n += snprintf(AT, ROOM, "{");
    int first = 1;
    for (int s = 0; s < nsets; s++) {
        for (size_t i = 0; i < sets[s].n; i++) {
            const struct swav_flag *f = &sets[s].flags[i];
            const char *field = (const char *)sets[s].cfg + f->offset;
            n += snprintf(AT, ROOM, "%s\"%s\":", first ? "" : ",", f->name);
            first = 0;
            switch (f->type) {
            case SWAV_FLAG_INT: n += snprintf(AT, ROOM, "%lld", (long long)*(const int64_t *)field); break;
            case SWAV_FLAG_FLOAT: n += snprintf(AT, ROOM, "%.17g", *(const double *)field); break;
            case SWAV_FLAG_BOOL: n += snprintf(AT, ROOM, "%s", *(const bool *)field ? "true" : "false"); break;
            case SWAV_FLAG_STR: {
                const char *v = *(const char *const *)field;
                n += json_str(AT, ROOM, v ? v : "");
                break;
            }
            case SWAV_FLAG_INT_LIST: {
                const struct swav_int_list *l = (const void *)field;
                n += snprintf(AT, ROOM, "[");
                for (int k = 0; k < l->n; k++) n += snprintf(AT, ROOM, "%s%lld", k ? "," : "", (long long)l->v[k]);
                n += snprintf(AT, ROOM, "]");
                break;
            }
            case SWAV_FLAG_FLOAT_LIST: {
                const struct swav_float_list *l = (const void *)field;
                n += snprintf(AT, ROOM, "[");
                for (int k = 0; k < l->n; k++) n += snprintf(AT, ROOM, "%s%.17g", k ? "," : "", l->v[k]);
                n += snprintf(AT, ROOM, "]");
                break;
            }
            }
        }
    }
    n += snprintf(AT, ROOM, "}");
#undef ROOM
#undef AT
    return n;
}
