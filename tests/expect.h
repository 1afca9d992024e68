/* The check of the C unit tests (STYLE.md: every test can fail).
 * EXPECT(cond, fmt, ...) prints "FAIL file:line: message" on stderr when
 * cond is false and counts it in `failures`; the test goes on, so one run
 * shows every failed check.  `checks` counts the checks made.  A test's main
 * reports them and returns failures ? 1 : 0.  A test that reports its
 * progress on stdout (the CUDA tests) defines EXPECT_STREAM as stdout before
 * including this, so that each FAIL line stands among those lines; one that
 * defines EXPECT_SHOW_COND as 1 (the nn unit tests) has the condition's text
 * printed too: "FAIL file:line: cond: message". */
#ifndef SWAV_TESTS_EXPECT_H
#define SWAV_TESTS_EXPECT_H

#include <stdio.h>

#ifndef EXPECT_STREAM
#define EXPECT_STREAM stderr
#endif
#ifndef EXPECT_SHOW_COND
#define EXPECT_SHOW_COND 0
#endif

static int failures, checks;

#define EXPECT(cond, ...)                                               \
    do {                                                                \
        checks++;                                                       \
        if (!(cond)) {                                                  \
            failures++;                                                 \
            fprintf(EXPECT_STREAM, "FAIL %s:%d: ", __FILE__, __LINE__); \
            if (EXPECT_SHOW_COND) {                                     \
                fprintf(EXPECT_STREAM, "%s: ", #cond);                  \
            }                                                           \
            fprintf(EXPECT_STREAM, __VA_ARGS__);                        \
            fputc('\n', EXPECT_STREAM);                                 \
        }                                                               \
    } while (0)

#endif
