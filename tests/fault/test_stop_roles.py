#!/usr/bin/python3
"""SIGSTOP of the trainer and of the assigner during a real tiny `swav train`
run (issue 9), each against an undisturbed run of the same flags:
  trainer  frozen 10 s in epoch 1, longer than the assigner's --stale_peer_ms
           (5 s under swav train), its ZMTP heartbeat timeout (6 s) and the
           loaders' (5 s), then thawed (SIGCONT).  The loaders' and the
           assigner's links to it drop; it takes its orders back from the
           loaders, says hello again to the assigner, which keeps its live
           queue because the trainer's next step follows it.
  assigner frozen 5 s in epoch 1, longer than the trainer's --codes_timeout_ms
           (2 s here): the trainer names the timeout, says hello again and
           resends the same step; the thawed assigner keeps its live queue and
           answers the repeated step with the same codes.
  evaluator (--eval-data) frozen 8 s in epoch 1, longer than the loaders'
           heartbeat timeout (5 s), then thawed: the trainer never notices
           (no warning or error but the tiny model's COLLAPSE? notes,
           train.jsonl complete), the evaluator gets its loaders back and the
           run ends with the last checkpoint's knn and linear records.
Each disturbed run finishes (exit 0), trains every image exactly once per
epoch (--trace_images), names what happened in its logs, and ends with the
undisturbed run's parameters (max abs difference <= 1e-5; the CPU backend is
deterministic and a retried step is answered with the same codes, so 0 is
expected: docs/assigner.md, "Resume").
Usage: test_stop_roles.py BUILD_DIR"""
import os, signal, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinyrun as T

bins = T.Bins(sys.argv[1])
check = T.check

tmp = tempfile.mkdtemp(prefix="swav-stop-")
LIMIT = 960
train = T.prepare(bins, tmp, limit=LIMIT)
n_img = (LIMIT // T.BS) * T.BS
STEPS = n_img // T.BS
EPOCHS = 3
# short assigner deadlines, the same in every run (they change no number)
FLAGS = ["--codes_timeout_ms", "2000", "--hello_timeout_ms", "2000"]
stopped = T.stopped

def run(name, role=None, at=0, seconds=0.0, extra=()):
    """A run; with role, that process is frozen for `seconds` once `at` steps
    are done.  Returns (exit status, dump, swav output)."""
    def freeze(dump):
        check(T.wait_for(lambda: T.steps_done(dump) >= at, 60),
              f"{name}: the run did not reach step {at}")
        pid = T.pid_of(dump, role)
        if check(pid, f"{name}: no {role} in status.json"):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
            s0 = T.steps_done(dump)
            time.sleep(seconds)
            s1 = T.steps_done(dump)
            os.kill(pid, signal.SIGCONT)
            stopped.remove(pid)
            print(f"{name}: {role} (pid {pid}) stopped {seconds:.0f} s at step {s0}; "
                  f"{s1 - s0} steps done meanwhile")
    return T.run_checked(bins, train, tmp, name, EPOCHS, n_img, FLAGS + list(extra),
                         during=freeze if role else None)

def same_params(name, dump):
    worst = T.max_param_diff(os.path.join(ref, "checkpoint.safetensors"),
                             os.path.join(dump, "checkpoint.safetensors"))
    check(worst <= 1e-5, f"{name}: final parameters differ from the undisturbed run's by {worst}")
    print(f"{name}: final parameters within {worst:.2e} of the undisturbed run's")

rc, ref, _ = run("ref")

# the trainer, frozen
rc, dump, out = run("trainer", "trainer 0", STEPS + 10, 10)
tl, al = T.role_log(dump, "trainer-0"), T.role_log(dump, "assigner")
ll = T.role_log(dump, "loader-0") + T.role_log(dump, "loader-1")
check("disconnected from" in ll, "the loaders did not notice the frozen trainer:\n" + ll[-2000:])
check("loader loader-0 unreachable" in tl or "loader loader-0 silent for" in tl,
      "the trainer did not take its orders back from the loaders:\n" + tl[-2000:])
check("hello again" in tl, "the trainer did not say hello again to the assigner:\n" + tl[-2000:])
check("follows the live queue" in al and "does not follow" not in al,
      "the assigner did not keep its live queue:\n" + al[-2000:])
T.show(tl + al + ll, "unreachable", "silent for", "hello again", "follows", "disconnected", "peer")
if rc == 0:
    same_params("trainer", dump)

# the assigner, frozen
rc, dump, out = run("assigner", "assigner", STEPS + 10, 5)
tl, al = T.role_log(dump, "trainer-0"), T.role_log(dump, "assigner")
check("no codes from the assigner: timeout" in tl,
      "the trainer did not name the assigner's timeout:\n" + tl[-2000:])
check("follows the live queue" in al and "does not follow" not in al,
      "the assigner did not keep its live queue:\n" + al[-2000:])
T.show(tl + al, "no codes", "no welcome", "follows", "again, the same", "peer")
if rc == 0:
    same_params("assigner", dump)

# the evaluator, frozen (its eval data: the test/ images beside train/)
data = os.path.dirname(train)
rc, dump, out = run("evaluator", "evaluator", STEPS + 10, 8,
                    ["--eval-data", data, "--eval_size", "16", "--eval_resize", "16"])
tl, el = T.role_log(dump, "trainer-0"), T.role_log(dump, "evaluator")
noticed = [l for l in tl.splitlines()
           if (" WARN " in l or " ERROR " in l) and "COLLAPSE?" not in l]
check(not noticed, f"the trainer noticed the frozen evaluator: {noticed[:3]}")
check(T.steps_done(dump) == EPOCHS * STEPS,
      f"{T.steps_done(dump)} steps in train.jsonl, want {EPOCHS * STEPS}")
probes = {r["probe"] for r in T.records(dump)
          if not r["baseline"] and r["step"] == EPOCHS * STEPS}
check({"knn", "linear"} <= probes,
      f"eval.jsonl records of the last checkpoint after the freeze: {sorted(probes)}\n" + el[-2000:])
ll = T.role_log(dump, "loader-0") + T.role_log(dump, "loader-1")
check("eval-loader (reconnecting)" in ll,
      "the loaders did not notice the frozen evaluator (the freeze was too short?):\n" + ll[-2000:])
T.show(el + ll, "eval-loader", "connected", "unreachable", "silent", "announced")
if rc == 0:
    same_params("evaluator", dump)

T.finish("test_stop_roles", tmp)
