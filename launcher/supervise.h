/* A small process supervisor for the launcher: it starts the roles of a run
 * as child processes, notices when one ends, restarts it under its policy
 * (with a bounded number of restarts and a growing delay), and stops them all
 * in a chosen order on request.  Children get SIGTERM if the launcher dies
 * (PR_SET_PDEATHSIG), so a killed launcher leaves no orphans. */
#ifndef SWAV_LAUNCHER_SUPERVISE_H
#define SWAV_LAUNCHER_SUPERVISE_H

#include <stdint.h>
#include <sys/types.h>

#define SUP_MAX_CHILDREN 64
#define SUP_MAX_ARGS 256

enum sup_policy {
    SUP_RESTART_NEVER = 0, /* an exit is reported, nothing restarts */
    SUP_RESTART_ALWAYS,    /* restarted whatever the exit (loaders, evaluator, assigner) */
    SUP_RESTART_GROUP,     /* a crash restarts every child of the same group (trainer ranks) */
};

enum sup_state { SUP_IDLE = 0, SUP_RUNNING, SUP_WAITING_RESTART, SUP_EXITED, SUP_FAILED };

struct sup_child {
    char name[48];           /* "loader 2", "trainer 0" */
    char *argv[SUP_MAX_ARGS]; /* owned copies, NULL-terminated */
    enum sup_policy policy;
    int group;               /* for SUP_RESTART_GROUP */
    int stop_order;          /* lower stops first */
    int max_restarts;
    pid_t pid;
    enum sup_state state;
    int restarts;
    int last_status;         /* waitpid status of the last exit */
    int64_t restart_at_ms;   /* when SUP_WAITING_RESTART */
    int64_t started_ms;
    char log_path[4096];     /* stdout and stderr appended here; "" inherits ours */
};

struct sup {
    struct sup_child child[SUP_MAX_CHILDREN];
    int n;
    int64_t backoff_ms;      /* first restart delay; doubles per restart, max 30 s */
};

void sup_init(struct sup *s);
/* Adds a child (not started); argv is copied.  Returns its index. */
int sup_add(struct sup *s, const char *name, char *const argv[], enum sup_policy policy,
            int group, int stop_order, int max_restarts);
/* Starts child i now.  Returns 0 or -1 (fork failed; logged). */
int sup_start(struct sup *s, int i);
int sup_start_all(struct sup *s);
/* Reaps exited children and applies the policies; starts the restarts that
 * are due.  Returns the number of children still running or waiting for a
 * restart.  Call it often (it never blocks). */
int sup_poll(struct sup *s);
/* SIGTERM to children in stop_order (waiting up to grace_ms for each order
 * level to exit), then SIGKILL to any left. */
void sup_stop_all(struct sup *s, int64_t grace_ms);
void sup_free(struct sup *s);
/* "exit 3", "killed by SIGKILL". */
const char *sup_status_str(int status, char *buf, size_t len);

#endif
