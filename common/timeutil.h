/* Clocks: monotonic milliseconds/seconds for deadlines and rates, wall-clock
 * milliseconds for logs and announcements. */
#ifndef SWAV_COMMON_TIMEUTIL_H
#define SWAV_COMMON_TIMEUTIL_H

#include <stdint.h>

int64_t swav_now_ms(void);     /* CLOCK_MONOTONIC */
double swav_now_s(void);       /* CLOCK_MONOTONIC, seconds */
int64_t swav_wall_ms(void);    /* CLOCK_REALTIME, Unix epoch */
void swav_sleep_ms(int64_t ms);

#endif
