/* common/log.h: line format (time, role[rank], level), level threshold, and
 * rate limiting: at most `burst` lines per window per call site, the number
 * suppressed reported on the next line that gets through. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

static int failures, checks;
#define CHECK(cond, ...)                                         \
    do {                                                         \
        checks++;                                                \
        if (!(cond)) {                                           \
            failures++;                                          \
            fprintf(stdout, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stdout, __VA_ARGS__);                        \
            fputc('\n', stdout);                                 \
        }                                                        \
    } while (0)

static char g_path[] = "/tmp/swav-test-log-XXXXXX";
static int g_saved_stderr;
static FILE *g_capture;

/* Point stderr (fd 2) at a fresh temporary file. */
static void capture_begin(void)
{
    int fd = mkstemp(g_path);
    if (fd < 0) {
        perror("mkstemp");
        exit(1);
    }
    unlink(g_path);
    snprintf(g_path, sizeof g_path, "/tmp/swav-test-log-XXXXXX");
    g_capture = fdopen(fd, "w+");
    dup2(fd, 2);
}

/* Restore stderr; return what was written (static buffer). */
static const char *capture_end(void)
{
    static char buf[1 << 16];
    dup2(g_saved_stderr, 2);
    fflush(g_capture);
    rewind(g_capture);
    size_t n = fread(buf, 1, sizeof buf - 1, g_capture);
    buf[n] = '\0';
    fclose(g_capture);
    return buf;
}

static int count_lines(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

static void limited_site(int i) { LOG_LIMITED(SWAV_LOG_WARN, "bad message %d", i); }

int main(void)
{
    g_saved_stderr = dup(2);
    unsetenv("SWAV_LOG_LEVEL");
    swav_log_init("trainer", 3);
    swav_log_set_level(SWAV_LOG_INFO);

    capture_begin();
    LOG_INFO("hello %s", "world");
    LOG_DEBUG("not shown");
    const char *out = capture_end();
    CHECK(strstr(out, " trainer[3] INFO hello world\n") != NULL, "line format: '%s'", out);
    CHECK(out[4] == '-' && strstr(out, "Z trainer") != NULL, "UTC time stamp: '%s'", out);
    CHECK(!strstr(out, "not shown"), "debug below the threshold");

    swav_log_set_level(SWAV_LOG_ERROR);
    capture_begin();
    LOG_WARN("warn hidden");
    LOG_ERROR("error shown");
    out = capture_end();
    CHECK(!strstr(out, "warn hidden") && strstr(out, "ERROR error shown"), "threshold error: '%s'", out);
    swav_log_set_level(SWAV_LOG_INFO);

    /* explicit limiter: burst 3 in a long window, then a new window */
    struct swav_log_limit lim = {0};
    capture_begin();
    for (int i = 0; i < 10; i++) {
        swav_log_limited(&lim, 3, 3600 * 1000, SWAV_LOG_WARN, "flood %d", i);
    }
    out = capture_end();
    CHECK(count_lines(out, "flood") == 3, "3 of 10 lines printed: '%s'", out);
    CHECK(lim.suppressed == 7, "7 suppressed, counted %llu", (unsigned long long)lim.suppressed);
    lim.window_start_ms -= 3600 * 1000; /* the window has passed */
    capture_begin();
    swav_log_limited(&lim, 3, 3600 * 1000, SWAV_LOG_WARN, "flood %d", 10);
    swav_log_limited(&lim, 3, 3600 * 1000, SWAV_LOG_WARN, "flood %d", 11);
    out = capture_end();
    CHECK(strstr(out, "flood 10 (7 similar lines suppressed)\n") != NULL, "suppressed count reported: '%s'", out);
    CHECK(strstr(out, "flood 11\n") != NULL && count_lines(out, "suppressed") == 1,
          "count reported once: '%s'", out);

    /* the macro: 5 lines per 10 s per call site */
    capture_begin();
    for (int i = 0; i < 50; i++) limited_site(i);
    out = capture_end();
    CHECK(count_lines(out, "bad message") == 5, "LOG_LIMITED printed %d lines", count_lines(out, "bad message"));

    /* a very long line is cut but still ends with a newline */
    static char big[5000];
    memset(big, 'x', sizeof big - 1);
    capture_begin();
    LOG_INFO("%s", big);
    LOG_INFO("after");
    out = capture_end();
    CHECK(strstr(out, "xxx\n") != NULL && strstr(out, "INFO after\n") != NULL, "long line cut with newline");

    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
