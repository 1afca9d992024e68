/* The check of the C unit tests (STYLE.md: every test can fail).
 * EXPECT(cond, fmt, ...) prints "FAIL file:line: message" on stderr when
 * cond is false and counts it in `failures`; the test goes on, so one run
 * shows every failed check.  `checks` counts the checks made.  A test's main
 * reports them and returns failures ? 1 : 0. */
#ifndef SWAV_TESTS_EXPECT_H
#define SWAV_TESTS_EXPECT_H

#include <stdio.h>

static int failures, checks;

#define EXPECT(cond, ...)                                        \
    do {                                                         \
        checks++;                                                \
        if (!(cond)) {                                           \
            failures++;                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                        \
            fputc('\n', stderr);                                 \
        }                                                        \
    } while (0)

#endif
