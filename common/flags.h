/* Table-driven command-line flags.
 *
 * One row per flag with its type, where it is stored, its range and its
 * default (written as on a command line), like redis's config table.  The
 * reference's spelling is kept: `--name value`, `--name=value`, lists as
 * `--nmb_crops 2 6` (values up to the next `--` token), booleans as
 * `--use_fp16 true` (bool_flag of src/utils.py: on/true/1, off/false/0; a
 * bare boolean flag, followed by nothing or by another flag, means true; the
 * next token that is not a flag is its value and must be a boolean).  A bad
 * flag gets a message that names it. */
#ifndef SWAV_COMMON_FLAGS_H
#define SWAV_COMMON_FLAGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SWAV_FLAG_LIST_MAX 16

enum swav_flag_type {
    SWAV_FLAG_INT,        /* int64_t */
    SWAV_FLAG_FLOAT,      /* double */
    SWAV_FLAG_BOOL,       /* bool */
    SWAV_FLAG_STR,        /* const char * (points into argv or the default) */
    SWAV_FLAG_INT_LIST,   /* struct swav_int_list */
    SWAV_FLAG_FLOAT_LIST, /* struct swav_float_list */
};

struct swav_int_list {
    int n;
    int64_t v[SWAV_FLAG_LIST_MAX];
};

struct swav_float_list {
    int n;
    double v[SWAV_FLAG_LIST_MAX];
};

struct swav_flag {
    const char *name;     /* without the leading "--" */
    enum swav_flag_type type;
    size_t offset;        /* offsetof(config struct, field) */
    double min, max;      /* numbers, and every element of a list */
    const char *def;      /* default as typed on a command line; NULL: "" / empty */
    const char *help;
    /* Optional (zero: no constraint).  Lists: number of values allowed
     * (min_len 0 means 1, max_len 0 means SWAV_FLAG_LIST_MAX).  Strings:
     * choices as "a|b|c" (argparse's choices=). */
    int min_len, max_len;
    const char *choices;
};

/* A table and the struct its offsets point into. */
struct swav_flag_set {
    const struct swav_flag *flags;
    size_t n;
    void *cfg;
};

#define SWAV_FLAG_NO_MIN (-1e300)
#define SWAV_FLAG_NO_MAX (1e300)

/* Store every default, then parse argv[0..argc) (argv[0] is a flag, not the
 * program name).  Returns 0, or -1 with a message naming the flag in err.
 * "--help" / "-h" returns 1 (the caller prints swav_flags_usage). */
int swav_flags_parse(const struct swav_flag_set *sets, int nsets, int argc, char **argv,
                     char *err, size_t errlen);
/* Only the defaults. */
int swav_flags_defaults(const struct swav_flag_set *sets, int nsets, char *err, size_t errlen);
void swav_flags_usage(FILE *out, const char *prog, const struct swav_flag_set *sets, int nsets);
/* The current values as one JSON object {"name": value, ...}; returns the
 * length written (as snprintf). */
int swav_flags_to_json(char *buf, size_t len, const struct swav_flag_set *sets, int nsets);

/* Python's bool_flag: 1 true, 0 false, -1 not a boolean. */
int swav_flags_parse_bool(const char *s);
/* A --device value: 0 "cpu", 1 "cuda" (index 0) or "cuda:N" (index N < 1024),
 * -1 anything else. */
int swav_flags_parse_device(const char *s, int *index);
/* The choices of a --device flag: checked while parsing (before --help). */
#define SWAV_FLAG_DEVICE_CHOICES "cpu|cuda|cuda:N"

#endif
