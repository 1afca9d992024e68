#!/usr/bin/python3
"""SIGKILL of the evaluator inside a real `swav train` run (issues 6 and 7:
"killing the evaluator mid-probe and restarting it: it picks up the newest
checkpoint; the trainer never notices"; "SIGKILL the evaluator during a run:
the run finishes, with clear log lines, nothing lost").

A tiny run (tests/fault/tinyrun.py's flags, 160 Fashion-MNIST images, 24
epochs, a checkpoint every epoch) with --eval-data on 1500 + 1500 other
Fashion-MNIST images (so that one evaluation takes about a second or more).
As soon as the evaluator's log says it is evaluating a checkpoint that has no
complete record, the evaluator (its pid from status.json) gets SIGKILL; the
kill counts as mid-probe when eval.jsonl still lacks a probe of that
checkpoint right after it (else the next evaluation is tried, at most 5).
Then:
  - the launcher names the death (`evaluator ended: killed by signal 9
    (Killed); restarting`) and starts it again (status.json: another pid, 1 restart);
  - the restarted evaluator's first evaluation is of a checkpoint at least as
    new as the newest in the folder when it was killed (it skips to the
    newest: the killed checkpoint is redone only when nothing newer exists);
  - the run finishes (exit 0) with knn and linear records of the last
    checkpoint, no (epoch, step, probe) recorded twice;
  - the trainer never notices: train.jsonl has every step 1..N once, in order
    (no gap, no restart), the trainer was never restarted, and its log has no
    error line.
Usage: test_eval_kill.py BUILD_DIR"""
import json, os, re, signal, struct, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinyrun as T

bins = T.Bins(sys.argv[1])
check, records, status = T.check, T.records, T.status


def done_probes(dump, epoch, step):
    return {r["probe"] for r in records(dump)
            if not r["baseline"] and r["epoch"] == epoch and r["step"] == step}


def ckpt_epochs(dump):
    """Epochs (metadata) of the ckp-N files in the folder."""
    eps = []
    for name in os.listdir(dump):
        if not re.fullmatch(r"ckp-\d+\.safetensors", name):
            continue
        try:
            with open(os.path.join(dump, name), "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                eps.append(int(json.loads(f.read(n))["__metadata__"]["epoch"]))
        except (OSError, ValueError, KeyError, struct.error):
            pass
    return eps


EVALUATING = re.compile(r"evaluating (\S+): .*, epoch (\d+), step (\d+)")

tmp = tempfile.mkdtemp(prefix="swav-evalkill-")
train = T.prepare(bins, tmp)
evdata = T.prepare_data(bins, tmp, "fmeval", 1500)
EPOCHS = 24
steps_per_epoch = 160 // T.BS
dump = os.path.join(tmp, "run")
out_path = os.path.join(tmp, "swav.out")
run = T.start([bins.swav, "train", *T.TINY, "--epochs", str(EPOCHS), "--data_path", train,
               "--dump_path", dump, "--nproc", "1", "--loaders", "1", "--workers", "1",
               "--eval-data", evdata, "--eval_size", "16", "--eval_resize", "16"], out_path)
elog = os.path.join(dump, "logs", "evaluator.log")
tlog = os.path.join(dump, "logs", "trainer-0.log")
try:
    killed = None  # (epoch, step) evaluated when killed
    newest_at_kill = 0
    old_pid = 0
    seen = 0
    for attempt in range(5):
        # the next "evaluating" line of a checkpoint without a complete record
        target = None
        t0 = time.time()
        while time.time() - t0 < 120 and run.poll() is None:
            lines = EVALUATING.findall(T.read(elog))
            for path, e, s in lines[seen:]:
                seen += 1
                if len(done_probes(dump, int(e), int(s))) < 2:
                    target = (int(e), int(s))
            if target:
                break
            time.sleep(0.02)
        if not check(target, "no evaluation started (attempt %d):\n%s" %
                     (attempt, T.read(elog)[-2000:])):
            break
        old_pid = status(dump).get("evaluator", {}).get("pid", 0)
        if not check(old_pid, "no evaluator pid in status.json"):
            break
        os.kill(old_pid, signal.SIGKILL)
        got = done_probes(dump, *target)
        newest_at_kill = max(ckpt_epochs(dump) or [0])
        if len(got) < 2:
            killed = target
            print("killed the evaluator (pid %d) evaluating epoch %d step %d, records then %s; "
                  "newest checkpoint epoch %d; %d training steps done" %
                  (old_pid, target[0], target[1], sorted(got), newest_at_kill,
                   T.steps_done(dump)))
            break
        print("attempt %d: the evaluation of epoch %d finished before the kill; again" %
              (attempt, target[0]))
        T.wait_for(lambda: status(dump).get("evaluator", {}).get("pid", old_pid) != old_pid, 30)
        seen = len(EVALUATING.findall(T.read(elog)))
    check(killed, "could not kill the evaluator mid-probe in 5 attempts")
    if killed:
        check(T.wait_for(lambda: re.search(r"evaluator ended: killed by signal 9 .*; restarting",
                                           T.read(out_path)), 30),
              "the launcher did not name the evaluator's death:\n" + T.read(out_path)[-2000:])
        check(T.wait_for(lambda: status(dump).get("evaluator", {}).get("pid", 0) not in
                         (0, old_pid), 30), "the evaluator was not restarted: %s" % status(dump))
        # the restarted instance's first evaluation
        first = None
        t0 = time.time()
        while time.time() - t0 < 120 and first is None:
            lines = EVALUATING.findall(T.read(elog))
            if len(lines) > seen:
                first = (int(lines[seen][1]), int(lines[seen][2]))
            time.sleep(0.05)
        if check(first, "the restarted evaluator evaluated nothing:\n" + T.read(elog)[-2000:]):
            print("restarted evaluator: first evaluation epoch %d step %d" % first)
            check(first[0] >= newest_at_kill,
                  "the restarted evaluator started with epoch %d, older than the newest "
                  "checkpoint at the kill (epoch %d)" % (first[0], newest_at_kill))
    rc = T.exit_code(run, 600)
    out = T.read(out_path)
    check(rc == 0, "swav train exit %s:\n%s" % (rc, out[-3000:]))
    st = status(dump)
    check(st.get("evaluator", {}).get("restarts") == 1 and
          st.get("trainer 0", {}).get("restarts") == 0,
          "restarts: evaluator %s, trainer %s" % (st.get("evaluator", {}).get("restarts"),
                                                  st.get("trainer 0", {}).get("restarts")))
    check(out.count("started evaluator (pid") == 2, "the launcher started the evaluator twice")
    # nothing lost: the last checkpoint evaluated by both probes, nothing twice
    recs = [r for r in records(dump) if not r["baseline"]]
    last_epoch = max(ckpt_epochs(dump) or [0])
    check(last_epoch == EPOCHS, "last checkpoint epoch %d, want %d" % (last_epoch, EPOCHS))
    last = {r["probe"] for r in recs if r["epoch"] == EPOCHS}
    check(last == {"knn", "linear"}, "probes of the last checkpoint: %s" % sorted(last))
    keys = [(r["epoch"], r["step"], r["probe"]) for r in recs]
    check(len(keys) == len(set(keys)), "a record written twice: %s" % keys)
    print("records: %s" % sorted({(r["epoch"], r["probe"]) for r in recs}))
    # the trainer never noticed
    steps = [json.loads(l)["step"] for l in T.read(os.path.join(dump, "train.jsonl")).splitlines()]
    want = list(range(1, EPOCHS * steps_per_epoch + 1))
    if steps and steps[0] == 0:
        want = [s - 1 for s in want]
    check(steps == want, "train.jsonl steps: %d lines, %s ... %s (want %d in order, no gap)" %
          (len(steps), steps[:3], steps[-3:], len(want)))
    bad = [l for l in T.read(tlog).splitlines() if " ERROR " in l or "evaluator" in l]
    check(not bad, "the trainer's log has errors or mentions the evaluator: %s" % bad[:5])
    check("loaders connect to" in T.read(elog) and
          T.read(elog).count("loaders connect to") == 2, "evaluator.log shows both starts")
finally:
    T.stop([run], 30)

T.finish("test_eval_kill", tmp)
