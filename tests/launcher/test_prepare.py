#!/usr/bin/python3
"""swav prepare fashion-mnist: the folders hold the package's images and labels.

Runs `swav prepare fashion-mnist OUT --limit N`, then checks with PIL that every
image decodes to the IDX pixels (JPEG q95: mean absolute error <= 3 levels) and
sits in the folder of its label; that a second run leaves the folder alone;
that a bad flag and a missing source fail with a message naming them; and
that a failure after the train split leaves no temporary folder behind."""
import gzip, os, subprocess, sys, tempfile
import numpy as np
from PIL import Image

swav = sys.argv[1]
src = "/usr/share/datasets/fashion-mnist"
N = 200

def idx(path, images):
    d = gzip.open(path).read()
    n = int.from_bytes(d[4:8], "big")
    if images:
        return np.frombuffer(d[16:], np.uint8).reshape(n, 28, 28)
    return np.frombuffer(d[8:], np.uint8)

fails = 0
def check(cond, what):
    global fails
    if not cond:
        print("FAIL:", what)
        fails += 1

with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "fm")
    r = subprocess.run([swav, "prepare", "fashion-mnist", out, "--limit", str(N)],
                       capture_output=True, text=True)
    check(r.returncode == 0, f"prepare exit {r.returncode}: {r.stderr}")
    for split, prefix in (("train", "train"), ("test", "t10k")):
        imgs = idx(f"{src}/{prefix}-images-idx3-ubyte.gz", True)
        labs = idx(f"{src}/{prefix}-labels-idx1-ubyte.gz", False)
        classes = sorted(os.listdir(os.path.join(out, split)))
        check(len(classes) == 10, f"{split}: {len(classes)} class folders")
        seen = 0
        worst = 0.0
        for label, c in enumerate(classes):
            check(c.startswith(f"{label}_"), f"class folder {c} sorts at {label}")
            for f in os.listdir(os.path.join(out, split, c)):
                k = int(f.split(".")[0])
                check(labs[k] == label, f"{split}/{c}/{f}: label {labs[k]}")
                im = Image.open(os.path.join(out, split, c, f))
                check(im.size == (28, 28), f"{f} size {im.size}")
                a = np.asarray(im.convert("L"), np.float64)
                worst = max(worst, np.abs(a - imgs[k]).mean())
                seen += 1
        check(seen == N, f"{split}: {seen} images, expected {N}")
        check(worst <= 3.0, f"{split}: worst mean abs error {worst:.2f} > 3")
        print(f"{split}: {seen} images, worst mean abs error {worst:.2f}")
    r = subprocess.run([swav, "prepare", "fashion-mnist", out], capture_output=True, text=True)
    check(r.returncode == 0 and "already prepared" in r.stderr, "second run: " + r.stderr)
    r = subprocess.run([swav, "prepare", "fashion-mnist", out + "2", "--quality", "101"],
                       capture_output=True, text=True)
    check(r.returncode == 2 and "--quality" in r.stderr, "bad flag: " + r.stderr)
    r = subprocess.run([swav, "prepare", "fashion-mnist", out + "3", "--source", tmp + "/none"],
                       capture_output=True, text=True)
    check(r.returncode != 0 and "none" in r.stderr and not os.path.exists(out + "3"),
          "missing source: " + r.stderr)
    # the test split missing: the train split was written to the temporary
    # folder, which goes again (swav_rm_tree)
    half = os.path.join(tmp, "half")
    os.mkdir(half)
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        os.symlink(f"{src}/{f}", os.path.join(half, f))
    r = subprocess.run([swav, "prepare", "fashion-mnist", out + "4", "--source", half,
                        "--limit", "20"], capture_output=True, text=True)
    left = [f for f in os.listdir(tmp) if f.startswith("fm4")]
    check(r.returncode != 0 and "t10k-images" in r.stderr and "train: 20 images" in r.stderr
          and not left, f"missing test split: {r.stderr} left: {left}")
sys.exit(1 if fails else 0)
