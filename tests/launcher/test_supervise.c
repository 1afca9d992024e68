/* The launcher's supervisor with real child processes: restart policies and
 * their bounds, group restarts, ordered stop with SIGKILL for a child that
 * ignores SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "common/timeutil.h"
#include "launcher/supervise.h"

static int fails;
#define EXPECT(c) do { if (!(c)) { fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #c); fails++; } } while (0)

static void run_until_idle(struct sup *s, int64_t limit_ms)
{
    int64_t until = swav_now_ms() + limit_ms;
    while (sup_poll(s) > 0 && swav_now_ms() < until) swav_sleep_ms(10);
}

int main(void)
{
    swav_log_init("test", -1);
    alarm(60);
    struct sup s;

    /* A crashing child restarts up to its bound, then fails. */
    sup_init(&s);
    s.backoff_ms = 10;
    char *crash[] = {"/bin/sh", "-c", "exit 3", NULL};
    char *ok[] = {"/bin/true", NULL};
    int a = sup_add(&s, "crasher", crash, SUP_RESTART_ALWAYS, 0, 0, 2);
    int b = sup_add(&s, "once", ok, SUP_RESTART_NEVER, 0, 0, 0);
    EXPECT(sup_start_all(&s) == 0);
    run_until_idle(&s, 10000);
    EXPECT(s.child[a].state == SUP_FAILED && s.child[a].restarts == 2);
    EXPECT(WIFEXITED(s.child[a].last_status) && WEXITSTATUS(s.child[a].last_status) == 3);
    EXPECT(s.child[b].state == SUP_EXITED && WIFEXITED(s.child[b].last_status) && WEXITSTATUS(s.child[b].last_status) == 0);
    sup_free(&s);

    /* A group member's crash restarts the whole group; when the crasher has
     * used up its restarts, the group stops. */
    sup_init(&s);
    s.backoff_ms = 10;
    char *sleeper[] = {"/bin/sleep", "30", NULL};
    char *dies[] = {"/bin/sh", "-c", "sleep 0.2; exit 1", NULL};
    int g0 = sup_add(&s, "rank 0", sleeper, SUP_RESTART_GROUP, 1, 0, 5);
    int g1 = sup_add(&s, "rank 1", dies, SUP_RESTART_GROUP, 1, 0, 1);
    EXPECT(sup_start_all(&s) == 0);
    pid_t first = s.child[g0].pid;
    run_until_idle(&s, 15000);
    EXPECT(s.child[g1].state == SUP_FAILED && s.child[g1].restarts == 1);
    EXPECT(s.child[g0].state == SUP_FAILED);
    EXPECT(s.child[g0].pid == 0 && first != 0);
    EXPECT(kill(first, 0) != 0); /* the first rank 0 was stopped */
    sup_free(&s);

    /* Ordered stop: SIGTERM first, SIGKILL after the grace period. */
    sup_init(&s);
    char *stubborn[] = {"/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.1; done", NULL};
    int t0 = sup_add(&s, "trainer", sleeper, SUP_RESTART_ALWAYS, 0, 0, 3);
    int t1 = sup_add(&s, "stubborn", stubborn, SUP_RESTART_ALWAYS, 0, 1, 3);
    EXPECT(sup_start_all(&s) == 0);
    swav_sleep_ms(200);
    EXPECT(sup_poll(&s) == 2);
    int64_t t = swav_now_ms();
    sup_stop_all(&s, 500);
    int64_t took = swav_now_ms() - t;
    EXPECT(s.child[t0].state == SUP_EXITED && WIFSIGNALED(s.child[t0].last_status) && WTERMSIG(s.child[t0].last_status) == SIGTERM);
    EXPECT(s.child[t1].state == SUP_EXITED && WIFSIGNALED(s.child[t1].last_status) && WTERMSIG(s.child[t1].last_status) == SIGKILL);
    EXPECT(took >= 450 && took < 5000);
    EXPECT(sup_poll(&s) == 0);
    sup_free(&s);

    if (fails) return 1;
    printf("test_supervise: ok\n");
    return 0;
}
