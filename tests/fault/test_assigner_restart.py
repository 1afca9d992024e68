#!/usr/bin/python3
"""The assigner dies in the middle of a step of a real tiny `swav train` run
(issue 9) and the launcher restarts it.

Mid-step: the assigner is frozen (SIGSTOP); the trainer sends its step's
embeddings (they wait in the assigner's socket) and blocks on the codes (no
step completes for 2 s); then the assigner is killed (SIGKILL), so the step it
was sent is never answered.  The trainer names the timeout, says hello to the
restarted assigner and sends the step again.
  epoch 0   (no queue yet: --epoch_queue_starts 1): the restarted assigner
            starts without a queue, as the undisturbed run still is, so the
            run ends with the undisturbed run's parameters (max abs
            difference <= 1e-5; 0 expected, the CPU backend is deterministic).
  epoch 2   the queue is in use: the restarted assigner restores it from the
            epoch-2 checkpoint's queue file (state-120.queue), which lacks the
            embeddings of the epoch's steps before the kill (the queue is
            saved with checkpoints only), so the codes and the final
            parameters differ from the undisturbed run's: by design
            (docs/trainer.md).  Checked: the run finishes, the restore is
            logged, the parameters are finite.  Two more kills follow at
            random moments (SIGKILL alone, whatever the assigner is doing).
  trainer   the other side: the trainer is killed (SIGKILL) in epoch 0, before
            the first checkpoint; the launcher restarts it from scratch and the
            live assigner, whose last step is ahead of the new step 0, starts
            it afresh (`step 0 does not follow the live queue`) instead of
            refusing its steps as stale: the run ends with the undisturbed
            run's parameters.
Every run trains every image exactly once per epoch (--trace_images; for the
killed trainer, in the last pass over each epoch).
Usage: test_assigner_restart.py BUILD_DIR"""
import os, random, re, signal, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinyrun as T

bins = T.Bins(sys.argv[1])
check = T.check

tmp = tempfile.mkdtemp(prefix="swav-asg-restart-")
LIMIT = 960
train = T.prepare(bins, tmp, limit=LIMIT)
n_img = (LIMIT // T.BS) * T.BS
STEPS = n_img // T.BS
EPOCHS = 3
FLAGS = ["--codes_timeout_ms", "2000", "--hello_timeout_ms", "2000"]
stopped = T.stopped

def kill_mid_step(dump):
    """Freeze the assigner, wait until the trainer is blocked on a step's
    codes, kill the assigner; returns that step."""
    pid = T.pid_of(dump, "assigner")
    if not check(pid, "no assigner in status.json"):
        return -1
    os.kill(pid, signal.SIGSTOP)
    stopped.append(pid)
    last, since = T.steps_done(dump), time.time()
    while time.time() - since < 2.0:
        time.sleep(0.05)
        if T.steps_done(dump) != last:
            last, since = T.steps_done(dump), time.time()
    os.kill(pid, signal.SIGKILL)
    stopped.remove(pid)
    return last

def wait_restarted(dump, old, limit=30):
    return T.wait_for(lambda: T.pid_of(dump, "assigner") not in (0, old), limit)

def run(name, killer=None, restarted=False):
    return T.run_checked(bins, train, tmp, name, EPOCHS, n_img, FLAGS, during=killer,
                         last_pass=restarted)

rc, ref, _ = run("ref")
ref_ckpt = os.path.join(ref, "checkpoint.safetensors")

# epoch 0: one kill in the middle of a step
at = {}
def kill_epoch0(dump):
    check(T.wait_for(lambda: T.steps_done(dump) >= 20, 60), "epoch0: the run did not start")
    old = T.pid_of(dump, "assigner")
    at["step"] = kill_mid_step(dump)
    check(wait_restarted(dump, old), "epoch0: the launcher did not restart the assigner")
rc, dump, out = run("epoch0", kill_epoch0)
s = at.get("step", -1)
print(f"epoch0: assigner killed while step {s} waited for its codes")
tl, al = T.role_log(dump, "trainer-0"), T.role_log(dump, "assigner")
check("assigner ended: killed by signal 9 (Killed); restarting" in out,
      "epoch0: the launcher did not report the assigner's death:\n" + out[-2000:])
check(f"iteration {s}: no codes from the assigner: timeout" in tl,
      f"epoch0: the trainer did not name the timeout of step {s}:\n" + tl[-2000:])
check(al.count("session of 1 ranks established") >= 2,
      "epoch0: the restarted assigner formed no session:\n" + al[-2000:])
T.show(tl + al + out, "no codes", "no welcome", "killed by signal", "established", "restored")
if rc == 0:
    worst = T.max_param_diff(ref_ckpt, os.path.join(dump, "checkpoint.safetensors"))
    check(worst <= 1e-5, f"epoch0: final parameters differ from the undisturbed run's by {worst}")
    print(f"epoch0: final parameters within {worst:.2e} of the undisturbed run's")

# epoch 2: a kill mid-step, then two at random moments
def kill_epoch2(dump):
    check(T.wait_for(lambda: T.steps_done(dump) >= 2 * STEPS + 5, 60),
          "epoch2: the run did not reach epoch 2")
    old = T.pid_of(dump, "assigner")
    at["step"] = kill_mid_step(dump)
    check(wait_restarted(dump, old), "epoch2: the launcher did not restart the assigner")
    rng = random.Random(7)
    for k in range(2):
        steps = T.steps_done(dump)
        T.wait_for(lambda: T.steps_done(dump) >= steps + 3, 30)
        time.sleep(rng.uniform(0, 0.05))
        old = T.pid_of(dump, "assigner")
        if old and T.steps_done(dump) < EPOCHS * STEPS - 2:
            os.kill(old, signal.SIGKILL)
            print(f"epoch2: random kill {k + 1} near step {T.steps_done(dump)}")
            check(wait_restarted(dump, old), "epoch2: the assigner was not restarted")
rc, dump, out = run("epoch2", kill_epoch2)
s = at.get("step", -1)
print(f"epoch2: assigner killed while step {s} waited for its codes")
tl, al = T.role_log(dump, "trainer-0"), T.role_log(dump, "assigner")
check(f"iteration {s}: no codes from the assigner: timeout" in tl,
      f"epoch2: the trainer did not name the timeout of step {s}:\n" + tl[-2000:])
check(re.search(r"queue restored from \S*state-%d\.queue: step %d" % (2 * STEPS, 2 * STEPS - 1),
                al), "epoch2: the restarted assigner did not restore the epoch-2 queue:\n" +
      al[-2000:])
T.show(tl + al, "no codes", "restored")
if rc == 0:
    import numpy as np
    tensors, _ = T.read_safetensors(os.path.join(dump, "checkpoint.safetensors"))
    check(all(np.all(np.isfinite(v)) for v in tensors.values()),
          "epoch2: non-finite final parameters")
    worst = T.max_param_diff(ref_ckpt, os.path.join(dump, "checkpoint.safetensors"))
    print(f"epoch2: final parameters differ from the undisturbed run's by {worst:.3g} "
          f"(expected: the queue is restored from the epoch's checkpoint)")

# the trainer killed before the first checkpoint
def kill_trainer(dump):
    check(T.wait_for(lambda: T.steps_done(dump) >= 20, 60), "trainer: the run did not start")
    pid = T.pid_of(dump, "trainer 0")
    if check(pid, "trainer: no trainer 0 in status.json"):
        os.kill(pid, signal.SIGKILL)
        at["step"] = T.steps_done(dump)
rc, dump, out = run("trainer", kill_trainer, restarted=True)
print(f"trainer: killed after {at.get('step')} steps of epoch 0")
tl, al = T.role_log(dump, "trainer-0"), T.role_log(dump, "assigner")
check("trainer 0 ended: killed by signal 9 (Killed); restarting" in out,
      "trainer: the launcher did not restart the trainer:\n" + out[-2000:])
check("step 0 does not follow the live queue" in al and "stale step" not in al,
      "trainer: the assigner did not start the restarted trainer afresh:\n" + al[-2000:])
T.show(al + out, "killed by signal", "follow", "stale")
if rc == 0:
    worst = T.max_param_diff(ref_ckpt, os.path.join(dump, "checkpoint.safetensors"))
    check(worst <= 1e-5, f"trainer: final parameters differ from the undisturbed run's by {worst}")
    print(f"trainer: final parameters within {worst:.2e} of the undisturbed run's")

T.finish("test_assigner_restart", tmp)
