/* Process supervision: see supervise.h. */
#include "supervise.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/check.h"
#include "common/log.h"
#include "common/timeutil.h"

void sup_init(struct sup *s)
{
    memset(s, 0, sizeof *s);
    s->backoff_ms = 500;
}

int sup_add(struct sup *s, const char *name, char *const argv[], enum sup_policy policy,
            int group, int stop_order, int max_restarts)
{
    SWAV_ASSERT(s->n < SUP_MAX_CHILDREN);
    struct sup_child *c = &s->child[s->n];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    int k = 0;
    for (; argv[k]; k++) {
        SWAV_ASSERT(k < SUP_MAX_ARGS - 1);
        c->argv[k] = swav_xstrdup(argv[k]);
    }
    c->argv[k] = NULL;
    c->policy = policy;
    c->group = group;
    c->stop_order = stop_order;
    c->max_restarts = max_restarts;
    return s->n++;
}

const char *sup_status_str(int status, char *buf, size_t len)
{
    if (WIFEXITED(status)) {
        snprintf(buf, len, "exit %d", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        snprintf(buf, len, "killed by signal %d (%s)", sig, strsignal(sig));
    } else {
        snprintf(buf, len, "status %d", status);
    }
    return buf;
}

int sup_start(struct sup *s, int i)
{
    struct sup_child *c = &s->child[i];
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        LOG_ERROR("cannot start %s: fork: %s", c->name, strerror(errno));
        c->state = SUP_FAILED;
        return -1;
    }
    if (pid == 0) {
        /* The child: its own process group, so that a signal to the
         * launcher's group (Ctrl-C, timeout(1), a service manager) reaches
         * only the launcher, which then stops the roles in order; and it dies
         * with the launcher. */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) {
            _exit(1);
        }
        if (c->log_path[0]) {
            int fd = open(c->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (fd >= 0) {
                dup2(fd, STDOUT_FILENO);
                dup2(fd, STDERR_FILENO);
                close(fd);
            }
        }
        signal(SIGTERM, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(c->argv[0], c->argv);
        fprintf(stderr, "cannot run %s: %s\n", c->argv[0], strerror(errno));
        _exit(127);
    }
    c->pid = pid;
    c->state = SUP_RUNNING;
    c->started_ms = swav_now_ms();
    LOG_INFO("started %s (pid %d)", c->name, (int)pid);
    return 0;
}

int sup_start_all(struct sup *s)
{
    int rc = 0;
    for (int i = 0; i < s->n; i++) {
        if (sup_start(s, i)) rc = -1;
    }
    return rc;
}

static int64_t backoff(const struct sup *s, int restarts)
{
    int64_t d = s->backoff_ms;
    for (int k = 0; k < restarts && d < 30000; k++) d *= 2;
    return d < 30000 ? d : 30000;
}

static void schedule_restart(struct sup *s, struct sup_child *c)
{
    if (c->restarts >= c->max_restarts) {
        LOG_ERROR("%s: gave up after %d restarts", c->name, c->restarts);
        c->state = SUP_FAILED;
        return;
    }
    c->state = SUP_WAITING_RESTART;
    c->restart_at_ms = swav_now_ms() + backoff(s, c->restarts);
    c->restarts++;
}

int sup_poll(struct sup *s)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) {
            break;
        }
        for (int i = 0; i < s->n; i++) {
            struct sup_child *c = &s->child[i];
            if (c->pid != pid || c->state != SUP_RUNNING) continue;
            c->pid = 0;
            c->last_status = status;
            char what[96];
            sup_status_str(status, what, sizeof what);
            int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            if (c->policy == SUP_RESTART_NEVER || (clean && c->policy == SUP_RESTART_GROUP)) {
                c->state = SUP_EXITED;
                if (clean) LOG_INFO("%s finished (%s)", c->name, what);
                else LOG_ERROR("%s ended: %s", c->name, what);
                break;
            }
            LOG_WARN("%s ended: %s; restarting", c->name, what);
            schedule_restart(s, c);
            if (c->policy == SUP_RESTART_GROUP) {
                /* The whole group restarts together (from the last checkpoint),
                 * or stops together once one member has used up its restarts. */
                int give_up = c->state == SUP_FAILED;
                for (int j = 0; j < s->n; j++) {
                    struct sup_child *o = &s->child[j];
                    if (j == i || o->group != c->group || o->policy != SUP_RESTART_GROUP) continue;
                    if (o->state == SUP_RUNNING) {
                        LOG_WARN("stopping %s to restart its group with %s", o->name, c->name);
                        kill(o->pid, SIGTERM);
                        int st;
                        int64_t until = swav_now_ms() + 10000;
                        while (waitpid(o->pid, &st, WNOHANG) == 0) {
                            if (swav_now_ms() > until) {
                                kill(o->pid, SIGKILL);
                                waitpid(o->pid, &st, 0);
                                break;
                            }
                            swav_sleep_ms(20);
                        }
                        o->pid = 0;
                        o->last_status = st;
                    }
                    if (give_up) {
                        o->state = SUP_FAILED;
                    } else if (o->state == SUP_RUNNING || o->state == SUP_EXITED) {
                        o->state = SUP_WAITING_RESTART;
                        o->restart_at_ms = c->restart_at_ms;
                        o->restarts = c->restarts;
                    }
                }
            }
            break;
        }
    }
    int live = 0;
    int64_t now = swav_now_ms();
    for (int i = 0; i < s->n; i++) {
        struct sup_child *c = &s->child[i];
        if (c->state == SUP_WAITING_RESTART && now >= c->restart_at_ms) {
            sup_start(s, i);
        }
        if (c->state == SUP_RUNNING || c->state == SUP_WAITING_RESTART) live++;
    }
    return live;
}

void sup_stop_all(struct sup *s, int64_t grace_ms)
{
    int min = 1 << 30, max = -(1 << 30);
    for (int i = 0; i < s->n; i++) {
        if (s->child[i].stop_order < min) min = s->child[i].stop_order;
        if (s->child[i].stop_order > max) max = s->child[i].stop_order;
        if (s->child[i].state == SUP_WAITING_RESTART) s->child[i].state = SUP_EXITED;
    }
    for (int level = min; level <= max; level++) {
        int any = 0;
        for (int i = 0; i < s->n; i++) {
            struct sup_child *c = &s->child[i];
            if (c->stop_order == level && c->state == SUP_RUNNING) {
                kill(c->pid, SIGTERM);
                any = 1;
            }
        }
        if (!any) continue;
        int64_t until = swav_now_ms() + grace_ms;
        for (;;) {
            int running = 0;
            for (int i = 0; i < s->n; i++) {
                struct sup_child *c = &s->child[i];
                if (c->stop_order != level || c->state != SUP_RUNNING) continue;
                int st;
                if (waitpid(c->pid, &st, WNOHANG) == c->pid) {
                    c->state = SUP_EXITED;
                    c->last_status = st;
                    c->pid = 0;
                } else {
                    running++;
                }
            }
            if (!running) break;
            if (swav_now_ms() > until) {
                for (int i = 0; i < s->n; i++) {
                    struct sup_child *c = &s->child[i];
                    if (c->stop_order == level && c->state == SUP_RUNNING) {
                        LOG_WARN("%s did not stop within %lld ms: SIGKILL", c->name,
                                 (long long)grace_ms);
                        kill(c->pid, SIGKILL);
                        int st;
                        waitpid(c->pid, &st, 0);
                        c->state = SUP_EXITED;
                        c->last_status = st;
                        c->pid = 0;
                    }
                }
                break;
            }
            swav_sleep_ms(20);
        }
    }
}

void sup_free(struct sup *s)
{
    for (int i = 0; i < s->n; i++) {
        for (int k = 0; s->child[i].argv[k]; k++) free(s->child[i].argv[k]);
    }
    memset(s, 0, sizeof *s);
}
