/* Logging: see log.h.  Lines are formatted into one buffer and written with a
 * single write(2) so that lines from threads and processes sharing a stderr do
 * not interleave mid-line. */
#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "timeutil.h"

static char g_role[32] = "swav";
static int g_rank = -1;
static enum swav_log_level g_level = SWAV_LOG_INFO;
static pthread_mutex_t g_limit_mu = PTHREAD_MUTEX_INITIALIZER;

static const char *level_name(enum swav_log_level l)
{
    switch (l) {
    case SWAV_LOG_DEBUG: return "DEBUG";
    case SWAV_LOG_INFO: return "INFO";
    case SWAV_LOG_WARN: return "WARN";
    case SWAV_LOG_ERROR: return "ERROR";
    }
    return "?";
}

void swav_log_init(const char *role, int rank)
{
    if (role) {
        snprintf(g_role, sizeof g_role, "%s", role);
    }
    g_rank = rank;
    const char *env = getenv("SWAV_LOG_LEVEL");
    if (env) {
        if (!strcasecmp(env, "debug")) g_level = SWAV_LOG_DEBUG;
        else if (!strcasecmp(env, "info")) g_level = SWAV_LOG_INFO;
        else if (!strcasecmp(env, "warn")) g_level = SWAV_LOG_WARN;
        else if (!strcasecmp(env, "error")) g_level = SWAV_LOG_ERROR;
    }
}

void swav_log_set_level(enum swav_log_level level) { g_level = level; }
enum swav_log_level swav_log_get_level(void) { return g_level; }

static void log_emit(enum swav_log_level level, const char *suffix, const char *fmt, va_list ap)
{
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000L, g_role);
    if (g_rank >= 0 && n < (int)sizeof line) {
        n += snprintf(line + n, sizeof line - (size_t)n, "[%d]", g_rank);
    }
    if (n < (int)sizeof line) {
        n += snprintf(line + n, sizeof line - (size_t)n, " %s ", level_name(level));
    }
    if (n < (int)sizeof line) {
        n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    }
    if (suffix && n < (int)sizeof line) {
        n += snprintf(line + n, sizeof line - (size_t)n, "%s", suffix);
    }
    if (n >= (int)sizeof line - 1) {
        n = (int)sizeof line - 2; /* truncated: keep the newline */
    }
    line[n++] = '\n';
    ssize_t off = 0;
    while (off < n) {
        ssize_t w = write(STDERR_FILENO, line + off, (size_t)(n - off));
        if (w <= 0) {
            break;
        }
        off += w;
    }
}

void swav_logv(enum swav_log_level level, const char *fmt, va_list ap)
{
    if (level < g_level) {
        return;
    }
    log_emit(level, NULL, fmt, ap);
}

void swav_log(enum swav_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    swav_logv(level, fmt, ap);
    va_end(ap);
}

void swav_log_limited(struct swav_log_limit *lim, uint32_t burst, int64_t window_ms,
                      enum swav_log_level level, const char *fmt, ...)
{
    if (level < g_level) {
        return;
    }
    int64_t now = swav_now_ms();
    uint64_t suppressed = 0;
    int print = 0;
    pthread_mutex_lock(&g_limit_mu);
    if (now - lim->window_start_ms >= window_ms) {
        lim->window_start_ms = now;
        lim->in_window = 0;
    }
    if (lim->in_window < burst) {
        lim->in_window++;
        print = 1;
        suppressed = lim->suppressed;
        lim->suppressed = 0;
    } else {
        lim->suppressed++;
    }
    pthread_mutex_unlock(&g_limit_mu);
    if (!print) {
        return;
    }
    char suffix[64] = "";
    if (suppressed) {
        snprintf(suffix, sizeof suffix, " (%llu similar lines suppressed)",
                 (unsigned long long)suppressed);
    }
    va_list ap;
    va_start(ap, fmt);
    log_emit(level, suppressed ? suffix : NULL, fmt, ap);
    va_end(ap);
}
