#!/usr/bin/python3
"""Garbage on every socket of a live `swav train` (issue 9): --nproc 2 with
--eval-data, so the run has the assigner's ROUTER, two trainer loader
endpoints (ROUTER), the evaluator's loader endpoint (ROUTER), two gradient
ring PULLs and rank 0's --pub.  Once the run has done a few steps,
tests/fault/garbage_probe connects to each of its ipc:// sockets with the
socket type that belongs there and sends bad messages (random bytes, a
msgpack header cut short, a valid message of the wrong type, one of another
run, a header over the size limit, too many frames; for the ring: frames of
the wrong magic, of another run's tag, of this run's tag for a call that
never comes, with extra frames, of 8 MiB; for --pub: garbage
subscriptions).  Then:
  - each role that can tell names the bad input in its log (rate-limited
    warnings) and keeps going: no ERROR line in any log;
  - the run finishes (exit 0), every image is trained once per epoch on the
    two ranks (--trace_images), eval.jsonl has the last checkpoint's knn and
    linear records;
  - the final parameters equal those of an undisturbed run of the same flags
    and seed (max abs difference <= 1e-5; the CPU backend is deterministic,
    0 is expected): no garbage entered an all-reduce or a codes reply.
Usage: test_garbage.py BUILD_DIR GARBAGE_PROBE"""
import os, re, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinyrun as T

bins = T.Bins(sys.argv[1])
probe_bin = sys.argv[2]
check = T.check

EPOCHS = 24
NPROC = 2
SEED = 31
tmp = tempfile.mkdtemp(prefix="swav-garbage-")
data = T.prepare_data(bins, tmp, "fm", 160)
train = os.path.join(data, "train")
n_img = (160 // (T.BS * NPROC)) * T.BS * NPROC
steps = EPOCHS * n_img // (T.BS * NPROC)
FLAGS = ["--seed", str(SEED)]

# the undisturbed run
ref = os.path.join(tmp, "ref")
p = T.swav_train(bins, train, ref, EPOCHS, ref + ".out", extra=FLAGS, nproc=NPROC, loaders=1)
rc = T.exit_code(p, 180)
T.stop([p])
check(rc == 0, f"the undisturbed run: exit {rc}:\n" + T.read(ref + ".out")[-3000:])

dump = os.path.join(tmp, "run")
out = dump + ".out"
trace = dump + ".trace"
run = T.swav_train(bins, train, dump, EPOCHS, out, trace=trace, nproc=NPROC, loaders=1,
                   extra=FLAGS + ["--eval-data", data, "--eval_size", "16",
                                  "--eval_resize", "16"])
names = ["assigner", "loader-0", "loader-1", "eval-loader", "ring-0", "ring-1", "checkpoints"]
kind = {"assigner": "dealer", "loader-0": "dealer", "loader-1": "dealer",
        "eval-loader": "dealer", "ring-0": "push", "ring-1": "push", "checkpoints": "xsub"}
said = {}
try:
    m = None
    if check(T.wait_for(lambda: re.search(r"run (\S+): .*sockets in (\S+)", T.read(out)), 30),
             "swav train did not name its sockets:\n" + T.read(out)[-2000:]):
        m = re.search(r"run (\S+): .*sockets in (\S+)", T.read(out))
    if m:
        run_id, sock = m.group(1), m.group(2)
        check(T.wait_for(lambda: all(os.path.exists(os.path.join(sock, n)) for n in names), 60),
              f"not every endpoint was bound in {sock}")
        check(T.wait_for(lambda: T.steps_done(dump) >= 3, 60), "the run did not reach step 3")
        for n in names:
            r = subprocess.run([probe_bin, kind[n], f"ipc://{sock}/{n}", run_id, str(SEED)],
                               capture_output=True, text=True, timeout=60)
            said[n] = r.stdout
            check(r.returncode == 0 and "done" in r.stdout,
                  f"garbage_probe on {n}: exit {r.returncode}: {r.stderr}")
            print(f"  {n} ({kind[n]}): {r.stdout.count('sent ')} bad messages sent; "
                  + " ".join(l for l in r.stdout.splitlines() if l.startswith("replies")))
        check(run.poll() is None, "the run ended before the probes were done (raise EPOCHS)")
    rc = T.exit_code(run, 240)
    check(rc == 0, f"swav train exit {rc}:\n" + T.read(out)[-3000:])
finally:
    T.stop([run])

for problem in T.trace_check(trace, EPOCHS, n_img):
    check(False, problem)
done = T.steps_done(dump)
check(done == steps, f"{done} steps in train.jsonl, want {steps}")
probes = {r["probe"] for r in T.records(dump) if not r["baseline"] and r["step"] == steps}
check({"knn", "linear"} <= probes, f"eval.jsonl records of the last checkpoint: {sorted(probes)}")
if rc == 0:
    worst = T.max_param_diff(os.path.join(ref, "checkpoint.safetensors"),
                             os.path.join(dump, "checkpoint.safetensors"))
    check(worst <= 1e-5, f"final parameters differ from the undisturbed run's by {worst}")
    print(f"final parameters within {worst:.2e} of the undisturbed run's")

logs = {role: T.role_log(dump, role)
        for role in ("assigner", "trainer-0", "trainer-1", "evaluator", "loader-0")}
# what each role says about the garbage it got
expect = {
    "assigner": [r"refused \(.*\): .*\[\d+ refused so far\]"],
    "trainer-0": [r"loader client: (malformed message dropped|bad message from \S+ dropped)",
                  r"gradient ring \(rank 0\): dropped .*frame"],
    "trainer-1": [r"loader client: (malformed message dropped|bad message from \S+ dropped)",
                  r"gradient ring \(rank 1\): dropped .*frame"],
    "evaluator": [r"loader client: (malformed message dropped|bad message from \S+ dropped)"],
}
for role, patterns in expect.items():
    for pat in patterns:
        check(re.search(pat, logs[role]),
              f"{role}.log does not name the garbage ({pat}):\n" + logs[role][-2500:])
T.show("".join(logs.values()), "dropped", "refused (", "malformed", "unexpected")
for role, text in logs.items():
    errors = [l for l in text.splitlines() if " ERROR " in l]
    check(not errors, f"{role}.log has errors: {errors[:3]}")
print(f"garbage: {done} steps on {NPROC} ranks with garbage on {len(said)} endpoints")
T.finish("test_garbage", tmp)
