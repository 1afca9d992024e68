/* Logging for every role: one line per event on stderr, with the time (UTC,
 * milliseconds), the role, the rank and the level, so that the interleaved
 * stderr of a whole run stays readable.  Repeats of the same event (a flood of
 * bad messages, say) are rate-limited per call site and the suppressed count is
 * reported when the next line gets through. */
#ifndef SWAV_COMMON_LOG_H
#define SWAV_COMMON_LOG_H

#include <stdarg.h>
#include <stdint.h>

enum swav_log_level {
    SWAV_LOG_DEBUG = 0,
    SWAV_LOG_INFO,
    SWAV_LOG_WARN,
    SWAV_LOG_ERROR,
};

/* Set the role name ("loader", "trainer", ...) and rank printed on each line;
 * rank < 0 prints no rank.  SWAV_LOG_LEVEL=debug|info|warn|error in the
 * environment sets the threshold (default info). */
void swav_log_init(const char *role, int rank);
void swav_log_set_level(enum swav_log_level level);
enum swav_log_level swav_log_get_level(void);

void swav_log(enum swav_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void swav_logv(enum swav_log_level level, const char *fmt, va_list ap);

/* Per-call-site state of a rate-limited line. */
struct swav_log_limit {
    int64_t window_start_ms;
    uint32_t in_window;
    uint64_t suppressed;
};

/* At most `burst` lines per `window_ms` from one call site; the rest are
 * counted and the count is appended to the next line that is printed. */
void swav_log_limited(struct swav_log_limit *lim, uint32_t burst, int64_t window_ms,
                      enum swav_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define LOG_DEBUG(...) swav_log(SWAV_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(...) swav_log(SWAV_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...) swav_log(SWAV_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) swav_log(SWAV_LOG_ERROR, __VA_ARGS__)

/* Rate-limited: 5 lines per 10 s per call site. */
#define LOG_LIMITED(level, ...)                                                   \
    do {                                                                          \
        static struct swav_log_limit swav_log_limit_site_;                        \
        swav_log_limited(&swav_log_limit_site_, 5, 10000, (level), __VA_ARGS__); \
    } while (0)

#endif
