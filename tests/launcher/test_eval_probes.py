#!/usr/bin/python3
"""swav train --eval_probes (and the semisup flags it passes to the evaluator).

Refusals, before anything starts (exit 2, the message names the bad value,
no dump folder made): an unknown probe, an empty entry, --eval_labels_perc 5,
a semisup flag without semisup in the list, --eval_probes without
--eval-data, a missing --eval_subset_file.

Then three tiny runs (tests/fault/tinyrun.py's model, 160 Fashion-MNIST
images, 2 epochs, a checkpoint every epoch) with --eval-data of 200 + 200
other images at 16 pixels.  Each must exit 0 with the launcher's line that
every probe asked for has its result of the last checkpoint (the end-of-run
wait counts the probes asked for: with a fixed count of two, the knn-only
run would wait its 10 minutes and the test would time out), and eval.jsonl
must hold those probes and no other:
  A  --eval_probes knn: only knn records, the last checkpoint's among them;
  B  --eval_probes semisup --eval_labels_perc 1 --eval_semisup_epochs 2:
     only semisup1 records, config labels_perc 1, epochs 2, subset
     "stratified" (the launcher passes eval-data/train as --semisup_data),
     n_train 10 (1% of 10 classes: at least one per class), and
     semisup-1percent.txt lists 10 files of eval-data/train;
  C  --eval_probes knn,linear,semisup --eval_subset_file LIST (4 names)
     --eval_semisup_epochs 1: knn, linear and semisup10 of the last
     checkpoint, semisup10 with n_train 4 and subset "list".
Usage: test_eval_probes.py BUILD_DIR"""
import os, subprocess, sys, tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fault"))
import tinyrun as T

bins = T.Bins(sys.argv[1])
check = T.check


tmp = tempfile.mkdtemp(prefix="swav-evalprobes-")
train = T.prepare(bins, tmp)
evdata = T.prepare_data(bins, tmp, "fmeval", 200)
EPOCHS = 2
EVAL = ["--eval-data", evdata, "--eval_size", "16", "--eval_resize", "16"]

# ---- refusals ----------------------------------------------------------------
for extra, want in [
        (["--eval_probes", "knn,foo"], "'foo' is not knn, linear or semisup"),
        (["--eval_probes", "knn,"], "an empty entry in 'knn,'"),
        (["--eval-probes=linear,semisup", "--eval_labels_perc", "5"], "'5' is not 1 or 10"),
        (["--eval_probes", "knn", "--eval_labels_perc", "1"], "need semisup in --eval_probes"),
        (["--eval_semisup_epochs", "3"], "need semisup in --eval_probes (now 'knn,linear')"),
        (["--eval_probes", "semisup", "--eval_subset_file", os.path.join(tmp, "nolist")],
         "nolist: No such file"),
        (["--device", "gpu"], "--device gpu: not one of cpu, cuda, cuda:N"),
        (["--device", "cuda:1", "--nproc", "2"], "names one GPU for 2 ranks"),
        (["--eval_device", "tpu"], "--eval_device tpu: not one of cpu, cuda, cuda:N"),
]:
    dump = os.path.join(tmp, "refused")
    r = subprocess.run([bins.swav, "train", *T.TINY, "--epochs", "1", "--data_path", train,
                        "--dump_path", dump, *EVAL, *extra], capture_output=True, text=True,
                       timeout=30)
    check(r.returncode == 2 and want in r.stderr and not os.path.exists(dump),
          "%s: exit %d, want 2 and '%s' in: %s" % (extra, r.returncode, want, r.stderr))
r = subprocess.run([bins.swav, "train", *T.TINY, "--data_path", train, "--dump_path",
                    os.path.join(tmp, "refused"), "--eval_probes", "knn"],
                   capture_output=True, text=True, timeout=30)
check(r.returncode == 2 and "need --eval-data DIR" in r.stderr,
      "--eval_probes without --eval-data: exit %d: %s" % (r.returncode, r.stderr))


# ---- runs ----------------------------------------------------------------------
def run(name, extra, want_probes):
    """A tiny run with EVAL + extra; checks the exit, the launcher's line and
    that eval.jsonl has exactly want_probes, each for the last checkpoint.
    Returns the records."""
    dump = os.path.join(tmp, name)
    log = os.path.join(tmp, name + ".out")
    p = T.swav_train(bins, train, dump, EPOCHS, log, extra=[*EVAL, *extra], loaders=1)
    rc = T.exit_code(p, 300)
    T.stop([p], 30)
    out = T.read(log)
    check(rc == 0, "%s: swav train exit %s:\n%s" % (name, rc, out[-3000:]))
    line = "evaluator: %s of the last checkpoint in eval.jsonl" % ", ".join(want_probes)
    check(line in out, "%s: no '%s' in the launcher's output:\n%s" % (name, line, out[-2000:]))
    recs = T.records(dump)
    probes = {r["probe"] for r in recs}
    check(probes == set(want_probes), "%s: probes in eval.jsonl %s, want %s" %
          (name, sorted(probes), sorted(want_probes)))
    last = {r["probe"] for r in recs if not r["baseline"] and r["epoch"] == EPOCHS}
    check(last == set(want_probes), "%s: probes of the last checkpoint %s, want %s" %
          (name, sorted(last), sorted(want_probes)))
    print("%s: %s" % (name, sorted((r["epoch"], r["probe"], r["top1"]) for r in recs)))
    return dump, recs


run("knn_only", ["--eval_probes", "knn"], ["knn"])

dump, recs = run("semisup1", ["--eval_probes", "semisup", "--eval_labels_perc", "1",
                              "--eval_semisup_epochs", "2"], ["semisup1"])
for r in recs:
    c = r.get("config", {})
    check(c.get("labels_perc") == 1 and c.get("epochs") == 2 and
          c.get("subset") == "stratified" and r["n_train"] == 10,
          "semisup1 record: labels_perc %s epochs %s subset %s n_train %s" %
          (c.get("labels_perc"), c.get("epochs"), c.get("subset"), r["n_train"]))
names = T.read(os.path.join(dump, "semisup-1percent.txt")).split()
ours = {f for _, _, fs in os.walk(os.path.join(evdata, "train")) for f in fs}
check(len(names) == 10 and set(names) <= ours,
      "semisup-1percent.txt: %d names %s, want 10 of eval-data/train" % (len(names), names))

# four files of four classes of eval-data/train, as a SimCLR list
classes = sorted(os.listdir(os.path.join(evdata, "train")))[:4]
listed = [sorted(os.listdir(os.path.join(evdata, "train", c)))[0] for c in classes]
subset = os.path.join(tmp, "subset.txt")
with open(subset, "w") as f:
    f.write("\n".join(listed) + "\n")
dump, recs = run("three", ["--eval_probes", "knn,linear,semisup", "--eval_subset_file", subset,
                           "--eval_semisup_epochs", "1"], ["knn", "linear", "semisup10"])
for r in recs:
    if r["probe"] == "semisup10":
        check(r["n_train"] == 4 and r.get("config", {}).get("subset") == "list",
              "semisup10 record: n_train %s subset %s, want 4 and list" %
              (r["n_train"], r.get("config", {}).get("subset")))

T.finish("test_eval_probes", tmp)
