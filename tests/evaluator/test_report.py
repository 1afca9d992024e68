"""swav-evaluator end to end on raw feature files, and the report it writes.

Writes a train.jsonl like the trainer's (epoch, step, loss, lr per line, one
garbage line) and a config.json into a dump folder, runs the kNN probe on the
random-init-like features (--baseline true) and on three "checkpoints" whose
features get more separable, and the linear probe once, then regenerates
the report with --report and checks that report.html:
  - parses with html.parser with every element closed in order (void HTML
    elements aside; SVG elements self-closed or closed),
  - has one inline <svg> per plot (loss, lr, one per probe) with polylines,
    the baseline as a dashed line, and no script or external asset,
  - shows the values: each result's top-1 (%.2f), the last loss, the config.
usage: test_report.py SWAV_EVALUATOR [--keep DIR]
"""
import html.parser
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

exe = sys.argv[1]
keep = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--keep" else None
failures = 0


def fail(msg):
    global failures
    failures += 1
    print("FAIL:", msg)


VOID = {"meta", "br", "img", "input", "hr", "link", "col", "wbr", "source", "area", "base"}


class Checker(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.count, self.text = [], [], {}, []
        self.attrs = []

    def handle_starttag(self, tag, attrs):
        self.count[tag] = self.count.get(tag, 0) + 1
        self.attrs.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.count[tag] = self.count.get(tag, 0) + 1
        self.attrs.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def run(args):
    p = subprocess.run([exe] + args, capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"{' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p.stdout


def main(d):
    rng = np.random.default_rng(3)
    # the trainer's progress file: 3 epochs x 50 steps
    loss_last = None
    with open(os.path.join(d, "train.jsonl"), "w") as f:
        for step in range(150):
            epoch = step // 50
            loss = 8.0 * math.exp(-step / 60.0) + 0.5 + 0.05 * rng.standard_normal()
            lr = 0.6 * 0.5 * (1 + math.cos(math.pi * step / 150))
            f.write(json.dumps({"time": 1764288000.0 + step, "epoch": epoch, "step": step,
                                "loss": loss, "lr": lr, "images_per_s": 200.0}) + "\n")
            loss_last = loss
        f.write("{not json\n")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"arch": "resnet18", "nmb_prototypes": 300, "base_lr": 0.6,
                   "nmb_crops": [2, 6], "dump_path": d}, f)

    D, C, NT, NV = 32, 10, 2000, 1000
    means = rng.normal(0, 1, (C, D)).astype(np.float32)
    yt = rng.integers(0, C, NT).astype(np.int32)
    yv = rng.integers(0, C, NV).astype(np.int32)
    yt.tofile(os.path.join(d, "yt.i32"))
    yv.tofile(os.path.join(d, "yv.i32"))
    common = ["--labels_train", os.path.join(d, "yt.i32"), "--labels_val",
              os.path.join(d, "yv.i32"), "--dim", str(D), "--dump_path", d]
    for epoch, scale in [(0, 0.15), (1, 0.25), (2, 0.4), (3, 0.6)]:
        xt = (scale * means[yt] + rng.normal(0, 1, (NT, D))).astype(np.float32)
        xv = (scale * means[yv] + rng.normal(0, 1, (NV, D))).astype(np.float32)
        ft, fv = os.path.join(d, f"xt{epoch}.f32"), os.path.join(d, f"xv{epoch}.f32")
        xt.tofile(ft)
        xv.tofile(fv)
        args = common + ["--features_train", ft, "--features_val", fv, "--epoch", str(epoch),
                         "--step", str(epoch * 50),
                         "--checkpoint", f"{d}/ckp-{epoch}.safetensors"]
        out = run(args + ["--probe", "knn", "--baseline", "true" if epoch == 0 else "false"])
        print(out.strip())
        if not out.startswith("knn top1 "):
            fail(f"unexpected stdout {out!r}")
        if epoch in (0, 3):
            print(run(args + ["--probe", "linear", "--epochs", "3", "--batch_size", "64",
                              "--baseline", "true" if epoch == 0 else "false"]).strip())
    # a bad flag exits 2, a missing file exits 1
    p = subprocess.run([exe, "--probe", "svm"], capture_output=True, text=True)
    if p.returncode != 2:
        fail(f"--probe svm exited {p.returncode}")
    p = subprocess.run([exe] + common + ["--features_train", "/nonexistent", "--features_val",
                                         "/nonexistent"], capture_output=True, text=True)
    if p.returncode != 1:
        fail(f"missing features exited {p.returncode}")
    os.remove(os.path.join(d, "report.html"))
    run(["--report", d])

    results = [json.loads(l) for l in open(os.path.join(d, "eval.jsonl"))]
    if len(results) != 6:
        fail(f"{len(results)} results, want 6")
    page = open(os.path.join(d, "report.html"), encoding="utf-8").read()
    ck = Checker()
    ck.feed(page)
    ck.close()
    if ck.errors or ck.stack:
        fail(f"not well-formed: {ck.errors[:5]} unclosed {ck.stack}")
    n_svg = ck.count.get("svg", 0)
    print(f"report: {len(page)} bytes, {n_svg} svg, {ck.count.get('polyline', 0)} polylines, "
          f"{ck.count.get('circle', 0)} markers, {ck.count.get('tr', 0)} table rows")
    if n_svg != 4:  # loss, lr, knn, linear
        fail(f"{n_svg} svg plots, want 4")
    if ck.count.get("polyline", 0) < 6:
        fail("too few polylines")
    dashed = [a for t, a in ck.attrs if t == "line" and "stroke-dasharray" in a
              and a.get("y1") == a.get("y2")]
    if len(dashed) < 2:
        fail("no horizontal dashed baseline line")
    low = page.lower()
    for bad in ("<script", "src=", "href=", "@import", "url("):
        if bad in low:
            fail(f"report contains {bad!r}")
    text = " ".join(ck.text)
    for r in results:
        v = f"{r['top1']:.2f}"
        if v not in text:
            fail(f"top-1 {v} of {r['probe']} epoch {r['epoch']} not on the page")
    if f"{loss_last:.4f}" not in text:
        fail(f"last loss {loss_last:.4f} not on the page")
    for s in ("random init", "nmb_prototypes", "resnet18", "Skipped unreadable lines: 1"):
        if s not in text:
            fail(f"{s!r} not on the page")
    # the knn baseline value appears as the dashed line's legend
    base = [r for r in results if r["baseline"] and r["probe"] == "knn"][0]
    if f"{base['top1']:.4g}" not in text:
        fail("baseline value not in the legend")


if keep:
    os.makedirs(keep, exist_ok=True)
    main(keep)
else:
    with tempfile.TemporaryDirectory() as tmp:
        main(tmp)
if failures:
    print(f"{failures} failure(s)")
    sys.exit(1)
print("ok")
