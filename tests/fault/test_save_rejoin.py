#!/usr/bin/python3
"""A queue save refused because the assigner lost the trainer's session is
sent again after a hello (trainer/main.c, save_checkpoint and
rejoin_for_save).

The roles are started directly (assigner, one trainer, one loader, ipc://),
the assigner with --log_every 1 and 500 ms heartbeats.  When the assigner
logs the codes of an epoch's last step, the trainer gets SIGSTOP: it is then
in that step's backward, before its save request.  It stays stopped past the
assigner's heartbeat timeout (1.5 s), so the assigner drops the connection and
the trainer's next request, the save, comes from a peer that is not a rank of
the session ("send hello first").  If the stop came too late (the checkpoint
of that epoch is already logged) the trainer is let go and the next epoch is
tried.  Then:
  - the trainer logs the refused save and that it says hello again, and then
    that the assigner saved the queue after the session re-formed;
  - the assigner wrote that checkpoint's queue file (state-N.queue) from its
    live queue, at step N-1 (later checkpoints remove it);
  - the run finishes (exit 0) with every image once per epoch.
Usage: test_save_rejoin.py BUILD_DIR"""
import os, re, signal, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinyrun as T

bins = T.Bins(sys.argv[1])
check = T.check

# a wider model with 32-pixel crops: a step of about half a second, so the
# stop lands inside the last step's backward
HEAVY = list(T.TINY)
HEAVY[HEAVY.index("--width") + 1] = "32"
i = HEAVY.index("--size_crops")
HEAVY[i + 1:i + 3] = ["32", "16"]
EPOCHS = 4
SPE = 160 // T.BS

tmp = tempfile.mkdtemp(prefix="swav-saverejoin-")
train = T.prepare(bins, tmp)
dump = os.path.join(tmp, "run")
os.makedirs(dump)
alog, tlog = os.path.join(tmp, "assigner.log"), os.path.join(tmp, "trainer.log")
trace = os.path.join(tmp, "trace")
procs = []
hit = None  # the iteration whose save met the lost session
try:
    procs.append(T.start([bins.assigner, f"--endpoint=ipc://{tmp}/assigner", "--run=rejoin",
                          "--threads=1", "--log_every=1", "--heartbeat_ms=500"], alog))
    trainer = T.start([bins.trainer, *HEAVY, "--epochs", str(EPOCHS), "--rank=0",
                       "--world_size=1", "--run=rejoin", "--data_path", train,
                       "--dump_path", dump, "--trace_images", trace,
                       f"--assigner=ipc://{tmp}/assigner", f"--loader_bind=ipc://{tmp}/loader",
                       "--codes_timeout_ms=5000", "--hello_timeout_ms=5000"], tlog)
    procs.append(trainer)
    procs.append(T.start([bins.loader, f"--connect=ipc://{tmp}/loader", "--data_path", train,
                          "--dump_path", dump, "--run=rejoin", "--workers=1"],
                         os.path.join(tmp, "loader.log")))
    for e in range(EPOCHS - 1):
        last = (e + 1) * SPE - 1
        if not check(T.wait_for(lambda: f"step {last} epoch {e}:" in T.read(alog), 120),
                     f"the assigner did not log step {last}:\n" + T.read(alog)[-2000:]):
            break
        os.kill(trainer.pid, signal.SIGSTOP)
        if f"(epoch {e + 1}, iteration {last + 1})" in T.read(tlog):
            print(f"epoch {e}: the checkpoint was written before the stop; the next epoch")
            os.kill(trainer.pid, signal.SIGCONT)
            continue
        time.sleep(5)
        os.kill(trainer.pid, signal.SIGCONT)
        hit = last + 1
        break
    check(hit is not None, "the stop never landed before an epoch's save")
    rc = T.exit_code(trainer, 180)
    check(rc == 0, f"trainer exit {rc}:\n" + T.read(tlog)[-3000:])
finally:
    T.stop(procs)

tl, al = T.read(tlog), T.read(alog)
if hit is not None:
    check(re.search(rf"the assigner did not save its queue for iteration {hit}: refused \(save "
                    r"from a peer that is not a rank of the session; send hello first\); "
                    r"saying hello again", tl),
          "the trainer did not log the refused save and the hello:\n" + tl[-3000:])
    check(f"the assigner saved its queue for iteration {hit} after the session re-formed" in tl,
          "the save was not sent again after the hello:\n" + tl[-3000:])
    check("the checkpoint is written without it" not in tl,
          "a checkpoint was written without its queue")
    check(re.search(rf"queue saved to \S*/state-{hit}\.queue \(step {hit - 1},", al),
          f"the assigner did not write state-{hit}.queue at step {hit - 1}:\n" + al[-2000:])
    T.show(tl + al, "did not save", "saying hello", "after the session", f"state-{hit}.queue",
           "send hello first")
for problem in T.trace_check(trace, EPOCHS, SPE * T.BS):
    check(False, problem)
T.finish("test_save_rejoin", tmp)
