#!/usr/bin/python3
"""The live swav-evaluator with real processes (suite 'integration').

A tiny labeled ImageFolder (4 classes of coloured blobs, 16x16 JPEG, 200
train + 80 test images) is generated here with PIL; live_tool writes
checkpoints of a tiny SwAV model (resnet18, width 8, small stem, with the
projection head and prototypes the trainer saves); one swav-loader serves
both data sets (--dataset eval_train=... --dataset eval_val=...).

  A  --once on a run folder with ckp-1: eval.jsonl gets knn + linear for
     epoch 1 and knn + linear of the random-init network (baseline: true),
     n_train = --eval_train_limit (120 of 200), n_val 80, kNN top-1 well
     above chance (25%: the blobs' colours separate even random features);
     report.html written and well formed, with the checkpoint's run config.
  B  --once again, with a random-bytes ckp-9 and a truncated ckp-8 newer
     than ckp-1 in the folder: they are skipped (logged), ckp-1 is found
     done, nothing is redone (eval.jsonl is the memory).  A data
     set tag no loader serves: --once exits 1 naming it, records nothing.
  C  --pretrained with a "module."-prefixed checkpoint without config
     metadata (like the converted published weights): architecture from the
     tensors, a knn record in another folder.
  D  watch mode with --sub: a PUB socket here announces ckp-2 (outside the
     scanned folder) among garbage, a checkpoint of another run and one
     naming a missing file: ckp-2 is evaluated, nothing else (orders of 16
     images, the last one short); SIGTERM: exit 0.
  F  --pretrained runs the linear probe in full mode (RandomResizedCrop +
     flip crops through the backbone every epoch; record config mode
     "full"): top-1 >= 75 on the blobs; on a folder of random-colour blobs
     filed under random classes (200 + 200) top-1 stays within 15 of
     chance (25).
  E  with a slow loader, SIGTERM the watching evaluator in the middle of
     evaluating ckp-3 (exit 0 within 5 s, no record); SIGKILL it in the middle of
     evaluating ckp-3, write ckp-4, restart (--once): ckp-4 is evaluated,
     stale ckp-3 skipped, finished ones not redone (one record each).

  G  semi-supervised fine-tuning: --pretrained --probes semisup on the
     blobs (10%: 20 evenly spaced images, 20 epochs): record semisup10,
     top-1 >= 60, in the report; --once --probes knn,linear,semisup on the
     watched folder adds semisup10 for the newest checkpoint and the
     baseline only (no features extracted, nothing redone); with
     --semisup_data on the random folder (unique names) a stratified draw
     (round(0.1 n_class) per class) is saved as semisup-10percent.txt, and a
     run from that --subset_file gives the same list and the same accuracy.

usage: test_live.py SWAV_EVALUATOR SWAV_LOADER LIVE_TOOL [--keep DIR]"""
import html.parser
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

from PIL import Image, ImageDraw

EVAL, LOADER, TOOL = sys.argv[1], sys.argv[2], sys.argv[3]
KEEP = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--keep" else None
fails = []
T_START = time.time()


def check(cond, what):
    if not cond:
        fails.append(what)
        print("FAIL:", what)
    return cond


COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40)]


def make_folder(root, per_class, seed):
    rng = random.Random(seed)
    for c, col in enumerate(COLOURS):
        d = os.path.join(root, "class%d" % c)
        os.makedirs(d)
        for i in range(per_class):
            bg = tuple(rng.randrange(60, 120) for _ in range(3))
            im = Image.new("RGB", (16, 16), bg)
            dr = ImageDraw.Draw(im)
            x, y, r = rng.randrange(3, 13), rng.randrange(3, 13), rng.randrange(3, 6)
            dr.ellipse([x - r, y - r, x + r, y + r], fill=tuple(
                max(0, min(255, v + rng.randrange(-20, 21))) for v in col))
            im.save(os.path.join(d, "%03d.jpg" % i), quality=95)


def make_random_folder(root, per_class, seed):
    """Blobs of random colours filed under random classes: nothing to learn."""
    rng = random.Random(seed)
    for c in range(len(COLOURS)):
        os.makedirs(os.path.join(root, "class%d" % c))
    for i in range(per_class * len(COLOURS)):
        bg = tuple(rng.randrange(60, 120) for _ in range(3))
        im = Image.new("RGB", (16, 16), bg)
        dr = ImageDraw.Draw(im)
        x, y, r = rng.randrange(3, 13), rng.randrange(3, 13), rng.randrange(3, 6)
        dr.ellipse([x - r, y - r, x + r, y + r], fill=COLOURS[rng.randrange(len(COLOURS))])
        im.save(os.path.join(root, "class%d" % rng.randrange(len(COLOURS)), "%04d.jpg" % i),
                quality=95)


PROCS = []  # every process started, killed at the end if still running (a failed check
             # or an exception must not leave loaders behind)


class Proc:
    def __init__(self, args, log):
        self.args = args
        self.logpath = log
        self.logf = open(log, "w")
        self.p = subprocess.Popen(args, stdout=self.logf, stderr=subprocess.STDOUT)
        PROCS.append(self.p)

    def wait(self, timeout):
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return "timeout"

    def log(self):
        self.logf.flush()
        with open(self.logpath, errors="replace") as f:
            return f.read()


def records(dump):
    p = os.path.join(dump, "eval.jsonl")
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]


def count(recs, probe, epoch=None, baseline=False):
    return sum(1 for r in recs if r["probe"] == probe and r["baseline"] == baseline and
               (epoch is None or r["epoch"] == epoch))


def wait_for(pred, timeout):
    t = time.time()
    while time.time() - t < timeout:
        if pred():
            return True
        time.sleep(0.1)
    return False


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Checker(html.parser.HTMLParser):
    VOID = {"meta", "br", "img", "input", "hr", "link", "col", "wbr", "source", "area", "base"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append("</%s> with open %s" % (tag, self.stack[-3:]))
        else:
            self.stack.pop()


def ckpt(path, epoch, step, seed, *extra):
    r = subprocess.run([TOOL, "ckpt", path, str(epoch), str(step), str(seed)] + list(extra),
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, "live_tool ckpt %s: %s" % (path, r.stderr))


def main(tmp):
    train, test = os.path.join(tmp, "train"), os.path.join(tmp, "test")
    make_folder(train, 50, 1)
    make_folder(test, 20, 2)
    dump = os.path.join(tmp, "run")
    os.makedirs(dump)
    ckpt(os.path.join(dump, "ckp-1.safetensors"), 1, 10, 1)
    ep = "ipc://%s/ev.sock" % tmp
    common = ["--dump_path", dump, "--loader_bind", ep, "--size", "16", "--resize", "16",
              "--threads", "1", "--batch_size", "32", "--epochs", "20",
              "--eval_train_limit", "120", "--wait_s", "30"]

    def loader(name, extra=()):
        return Proc([LOADER, "--connect", ep, "--dataset", "eval_train=" + train,
                     "--dataset", "eval_val=" + test, "--dump_path", os.path.join(tmp, "ldump"),
                     "--workers", "1", "--beat_ms", "200", "--report_s", "0"] + list(extra),
                    os.path.join(tmp, name + ".log"))

    ld = loader("loader")
    # A: --once
    ev = Proc([EVAL, "--once", "true"] + common, os.path.join(tmp, "a.log"))
    rc = ev.wait(60)
    recs = records(dump)
    check(rc == 0, "A: exit %s\n%s" % (rc, ev.log()[-3000:]))
    for probe in ("knn", "linear"):
        check(count(recs, probe, 1) == 1, "A: one %s record for epoch 1: %s" % (probe, recs))
        check(count(recs, probe, baseline=True) == 1, "A: one %s baseline record" % probe)
    for r in recs:
        check(r["n_train"] == 120 and r["n_val"] == 80,
              "A: %s n_train %s n_val %s (want 120, 80)" % (r["probe"], r["n_train"], r["n_val"]))
        check(r["config"].get("arch") == "resnet18 width 8 small stem" and
              r["config"].get("train_total") == 200, "A: config %s" % r["config"])
        if not r["baseline"]:
            check(r["step"] == 10 and r["checkpoint"].endswith("ckp-1.safetensors"),
                  "A: epoch 1 record: %s" % r)
    knn1 = [r for r in recs if r["probe"] == "knn" and not r["baseline"]]
    if knn1:
        check(knn1[0]["top1"] >= 60.0, "A: kNN top-1 %.2f >= 60 (chance 25)" % knn1[0]["top1"])
    print("A:", [(r["probe"], r["epoch"], r["baseline"], r["top1"], r["top5"]) for r in recs])
    rep = os.path.join(dump, "report.html")
    if check(os.path.exists(rep), "A: report.html written"):
        with open(rep) as f:
            page = f.read()
        c = Checker()
        c.feed(page)
        check(not c.errors and not c.stack, "A: report.html well formed: %s %s" %
              (c.errors[:3], c.stack))
        check(page.count("<svg") >= 2 and "%.2f" % knn1[0]["top1"] in page if knn1 else False,
              "A: report has the probe plots and the kNN top-1")
        check("nmb_prototypes" in page, "A: report shows the checkpoint's run config")

    # B: again, with a garbage and a truncated checkpoint newer than ckp-1: nothing redone
    with open(os.path.join(dump, "ckp-9.safetensors"), "wb") as f:
        f.write(os.urandom(5000))
    with open(os.path.join(dump, "ckp-1.safetensors"), "rb") as f:
        whole = f.read()
    with open(os.path.join(dump, "ckp-8.safetensors"), "wb") as f:
        f.write(whole[:len(whole) // 2])
    ev = Proc([EVAL, "--once", "true"] + common, os.path.join(tmp, "b.log"))
    rc = ev.wait(60)
    check(rc == 0 and "already evaluated" in ev.log(), "B: exit %s\n%s" % (rc, ev.log()[-2000:]))
    check(len(records(dump)) == 4, "B: still 4 records, got %d" % len(records(dump)))

    # B2: a data set no loader serves: --once fails naming it, records nothing
    bad = os.path.join(tmp, "bad")
    os.makedirs(bad)
    ckpt(os.path.join(bad, "ckp-1.safetensors"), 1, 10, 1)
    ev = Proc([EVAL, "--once", "true", "--eval_val", "nosuch"] + common[:1] + [bad] + common[2:],
              os.path.join(tmp, "b2.log"))
    rc = ev.wait(60)
    check(rc == 1 and "no data set 'nosuch'" in ev.log() and not records(bad),
          "B2: unknown tag: exit %s, records %s\n%s" % (rc, records(bad), ev.log()[-1500:]))

    # C: standalone, converted-like checkpoint
    other = os.path.join(tmp, "pre")
    os.makedirs(other)
    pre = os.path.join(other, "converted.safetensors")
    ckpt(pre, 0, 0, 7, "module")
    ev = Proc([EVAL, "--pretrained", pre, "--probes", "knn"] + common[:1] + [other] + common[2:],
              os.path.join(tmp, "c.log"))
    rc = ev.wait(60)
    crec = records(other)
    check(rc == 0 and len(crec) == 1 and crec[0]["probe"] == "knn" and
          crec[0]["checkpoint"] == pre and crec[0]["config"]["init_seed"] == 31,
          "C: --pretrained: exit %s, records %s\n%s" % (rc, crec, ev.log()[-2000:]))

    # F: --pretrained runs the linear probe in full mode (eval_linear.py: new
    # RandomResizedCrop + flip crops through the backbone every epoch): it
    # learns the blobs; on a folder whose labels are random it stays at chance
    full = os.path.join(tmp, "full")
    os.makedirs(full)
    ev = Proc([EVAL, "--pretrained", os.path.join(dump, "ckp-1.safetensors"), "--probes",
               "linear"] + common[:1] + [full] + common[2:], os.path.join(tmp, "f.log"))
    rc = ev.wait(120)
    frec = records(full)
    ok = check(rc == 0 and len(frec) == 1 and frec[0]["config"].get("mode") == "full" and
               "full mode" in ev.log(), "F: full mode: exit %s, records %s\n%s" %
               (rc, frec, ev.log()[-2000:]))
    if ok:
        check(frec[0]["top1"] >= 75.0, "F: full-mode linear top-1 %.2f >= 75 (chance 25)" %
              frec[0]["top1"])
        print("F: full-mode linear on the blobs: top-1 %.2f top-5 %.2f (%.1f s)" %
              (frec[0]["top1"], frec[0]["top5"], frec[0]["seconds"]))
    rnd = os.path.join(tmp, "random")
    make_random_folder(os.path.join(rnd, "train"), 50, 5)
    make_random_folder(os.path.join(rnd, "test"), 50, 6)
    ep_r = "ipc://%s/evr.sock" % tmp
    ldr = Proc([LOADER, "--connect", ep_r, "--dataset", "eval_train=" + os.path.join(rnd, "train"),
                "--dataset", "eval_val=" + os.path.join(rnd, "test"), "--dump_path",
                os.path.join(tmp, "ldump"), "--workers", "1", "--beat_ms", "200",
                "--report_s", "0"], os.path.join(tmp, "loader-random.log"))
    ev = Proc([EVAL, "--pretrained", os.path.join(dump, "ckp-1.safetensors"), "--probes",
               "linear", "--dump_path", rnd, "--loader_bind", ep_r] + common[4:],
              os.path.join(tmp, "f2.log"))
    rc = ev.wait(120)
    rrec = records(rnd)
    if check(rc == 0 and len(rrec) == 1, "F: random labels: exit %s, records %s\n%s" %
             (rc, rrec, ev.log()[-2000:])):
        # best of 20 epochs over 200 val images: chance 25 +- 3 per epoch
        check(abs(rrec[0]["top1"] - 25.0) <= 15.0, "F: random labels: top-1 %.2f within 15 of "
              "chance (25)" % rrec[0]["top1"])
        print("F: full-mode linear on random labels: top-1 %.2f" % rrec[0]["top1"])
    ldr.p.send_signal(signal.SIGTERM)
    ldr.wait(20)

    # D: watch mode, announcement over PUB/SUB
    sub_ep = "tcp://127.0.0.1:%d" % free_port()
    os.makedirs(os.path.join(tmp, "elsewhere"))
    c2 = os.path.join(tmp, "elsewhere", "ckp-2.safetensors")
    ckpt(c2, 2, 20, 2)
    ev = Proc([EVAL, "--sub", sub_ep, "--rescan_s", "1000", "--feature_batch", "16"] + common,
              os.path.join(tmp, "d.log"))
    pub = Proc([TOOL, "pub", sub_ep, "swav", c2, "2", "20", "20"], os.path.join(tmp, "pub.log"))
    ok = wait_for(lambda: count(records(dump), "linear", 2) == 1, 40)
    check(ok, "D: ckp-2 evaluated after its announcement\n%s" % ev.log()[-3000:])
    pub.p.kill()
    pub.wait(10)
    check(ev.p.poll() is None, "D: the evaluator survived the garbage")
    ev.p.send_signal(signal.SIGTERM)
    rc = ev.wait(20)
    check(rc == 0, "D: SIGTERM exit %s" % rc)
    recs = records(dump)
    check(count(recs, "knn", 2) == 1 and count(recs, "knn", 102) == 0 and len(recs) == 6,
          "D: records %s" % [(r["probe"], r["epoch"], r["baseline"]) for r in recs])
    log = ev.log()
    check("bad announcement" in log and "not a readable file" in log,
          "D: garbage and the missing file were logged and ignored")

    # E: SIGKILL mid-evaluation, restart picks the newest
    ld.p.send_signal(signal.SIGTERM)
    ld.wait(20)
    slow = loader("slow", ["--delay_ms", "15"])
    ckpt(os.path.join(dump, "ckp-3.safetensors"), 3, 30, 3)
    # SIGTERM in the middle of the features: exit 0 soon, nothing recorded
    ev = Proc([EVAL, "--sub", sub_ep] + common, os.path.join(tmp, "e0.log"))
    check(wait_for(lambda: "evaluating " in ev.log() and "ckp-3" in ev.log(), 30),
          "E: evaluation of ckp-3 started\n%s" % ev.log()[-2000:])
    time.sleep(0.3)
    t0 = time.time()
    ev.p.send_signal(signal.SIGTERM)
    rc = ev.wait(20)
    check(rc == 0 and time.time() - t0 < 5, "E: SIGTERM mid-run: exit %s after %.1f s" %
          (rc, time.time() - t0))
    check(count(records(dump), "knn", 3) == 0, "E: nothing recorded for ckp-3 after SIGTERM")
    ev = Proc([EVAL, "--sub", sub_ep] + common, os.path.join(tmp, "e1.log"))
    check(wait_for(lambda: "evaluating " in ev.log() and "ckp-3" in ev.log(), 30),
          "E: evaluation of ckp-3 started\n%s" % ev.log()[-2000:])
    time.sleep(0.5)
    ev.p.kill()
    ev.wait(10)
    check(count(records(dump), "linear", 3) == 0, "E: killed before ckp-3's linear record")
    slow.p.send_signal(signal.SIGTERM)
    slow.wait(20)
    ld = loader("loader2")
    time.sleep(1.1)  # a newer mtime for ckp-4
    ckpt(os.path.join(dump, "ckp-4.safetensors"), 4, 40, 4)
    ev = Proc([EVAL, "--once", "true"] + common, os.path.join(tmp, "e2.log"))
    rc = ev.wait(60)
    recs = records(dump)
    check(rc == 0, "E: restart exit %s\n%s" % (rc, ev.log()[-2000:]))
    check(count(recs, "knn", 4) == 1 and count(recs, "linear", 4) == 1,
          "E: ckp-4 evaluated after the restart")
    check(count(recs, "linear", 3) == 0, "E: stale ckp-3 skipped")
    for probe in ("knn", "linear"):
        check(count(recs, probe, 1) == 1 and count(recs, probe, 2) == 1 and
              count(recs, probe, baseline=True) == 1, "E: %s: nothing redone" % probe)
    print("E:", [(r["probe"], r["epoch"], r["baseline"]) for r in recs])

    # G: semi-supervised fine-tuning (eval_semisup.py): standalone on 10% of the
    # blobs (evenly spaced subset); in the watched folder with --once next to
    # the finished knn/linear records; a stratified draw saved in SimCLR format
    # and the same run again from that list
    semi = os.path.join(tmp, "semi")
    os.makedirs(semi)
    sflags = ["--probes", "semisup", "--semisup_batch_size", "8"]
    ev = Proc([EVAL, "--pretrained", os.path.join(dump, "ckp-1.safetensors")] + sflags +
              common[:1] + [semi] + common[2:], os.path.join(tmp, "g1.log"))
    rc = ev.wait(120)
    grec = records(semi)
    if check(rc == 0 and len(grec) == 1 and grec[0]["probe"] == "semisup10",
             "G: semisup --pretrained: exit %s, records %s\n%s" % (rc, grec, ev.log()[-2000:])):
        g = grec[0]
        check(g["n_train"] == 20 and g["n_val"] == 80 and g["config"]["subset"] == "even" and
              g["config"]["n_classes"] == 4 and g["config"]["epochs"] == 20,
              "G: semisup record: %s" % g)
        check(g["top1"] >= 60.0, "G: fine-tuned on 20 labels: top-1 %.2f >= 60 (chance 25)" %
              g["top1"])
        with open(os.path.join(semi, "report.html")) as f:
            check("semisup10" in f.read(), "G: the report shows the semisup10 probe")
        print("G: semisup10 from ckp-1: top-1 %.2f top-5 %.2f (%.1f s)" %
              (g["top1"], g["top5"], g["seconds"]))
    ev = Proc([EVAL, "--once", "true", "--probes", "knn,linear,semisup", "--semisup_epochs", "4",
               "--semisup_batch_size", "8"] + common, os.path.join(tmp, "g2.log"))
    rc = ev.wait(120)
    recs = records(dump)
    check(rc == 0 and count(recs, "semisup10", 4) == 1 and
          count(recs, "semisup10", baseline=True) == 1 and len(recs) == 10 and
          count(recs, "knn", 4) == 1 and count(recs, "linear", 4) == 1,
          "G: --once with semisup: the newest and the baseline get semisup10, nothing else "
          "redone: exit %s %s\n%s" % (rc, [(r["probe"], r["epoch"], r["baseline"]) for r in recs],
                                        ev.log()[-2000:]))
    check("features eval_train" not in ev.log(), "G: no features extracted for semisup alone")
    ld.p.send_signal(signal.SIGTERM)
    check(ld.wait(20) == 0, "loader exit 0 on SIGTERM")
    # unique file names (SimCLR lists name files by base name): the random folder
    ldr = Proc([LOADER, "--connect", ep_r, "--dataset", "eval_train=" + os.path.join(rnd, "train"),
                "--dataset", "eval_val=" + os.path.join(rnd, "test"), "--dump_path",
                os.path.join(tmp, "ldump"), "--workers", "1", "--beat_ms", "200",
                "--report_s", "0"], os.path.join(tmp, "loader-random2.log"))
    lists = []
    for k, extra in enumerate([[], ["--subset_file", os.path.join(tmp, "semi-list", "0",
                                                                  "semisup-10percent.txt")]]):
        out = os.path.join(tmp, "semi-list", str(k))
        os.makedirs(out)
        ev = Proc([EVAL, "--pretrained", os.path.join(dump, "ckp-1.safetensors"),
                   "--semisup_data", os.path.join(rnd, "train"), "--semisup_epochs", "3",
                   "--dump_path", out, "--loader_bind", ep_r] + sflags + extra + common[4:],
                  os.path.join(tmp, "g3-%d.log" % k))
        rc = ev.wait(120)
        lst = os.path.join(out, "semisup-10percent.txt")
        r = records(out)
        if check(rc == 0 and len(r) == 1 and os.path.exists(lst),
                 "G: --semisup_data run %d: exit %s\n%s" % (k, rc, ev.log()[-1500:])):
            with open(lst) as f:
                names = f.read().split()
            lists.append((names, r[0]["top1"], r[0]["top5"], r[0]["config"]["subset"]))
    if len(lists) == 2:
        names = lists[0][0]
        per_class = {}
        for c in os.listdir(os.path.join(rnd, "train")):
            n_c = len(os.listdir(os.path.join(rnd, "train", c)))
            per_class[c] = (sum(1 for nm in names if os.path.exists(
                os.path.join(rnd, "train", c, nm))), max(1, round(0.1 * n_c)))
        check(all(a == b for a, b in per_class.values()) and len(set(names)) == len(names),
              "G: stratified 10%% draw, round(0.1 n_class) per class: %s" % per_class)
        check(lists[0][3] == "stratified" and lists[1][3] == "list", "G: subset kinds %s %s" %
              (lists[0][3], lists[1][3]))
        check(lists[1][0] == names and lists[1][1:3] == lists[0][1:3],
              "G: the saved list gives the same subset and result: %s vs %s" %
              (lists[0][1:], lists[1][1:]))
    ldr.p.send_signal(signal.SIGTERM)
    ldr.wait(20)


def run_main(tmp):
    try:
        main(tmp)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()


if KEEP:
    os.makedirs(KEEP, exist_ok=True)
    run_main(KEEP)
else:
    with tempfile.TemporaryDirectory() as d:
        run_main(d)
print("test_live: %d failures, %.1f s" % (len(fails), time.time() - T_START))
sys.exit(1 if fails else 0)
