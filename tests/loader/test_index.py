#!/usr/bin/python3
"""Dataset index against torchvision's ImageFolder, and the bad-input cases.

Builds small folders in a temp dir (tiny JPEGs and PNGs made with PIL, plus
zero-byte, truncated, random-bytes, text, BMP and GIF files under image
names, nested folders, upper-case extensions), runs test_index (C) and checks:
  - the image order and labels are torchvision's ImageFolder samples with
    the bad files left out; widths/heights are PIL's;
  - each bad file is in the report file, and the count is on stderr;
  - a second run reuses the cache; touching a file rebuilds it;
  - a flat folder gets label -1;
  - a folder with no decodable image is an error, not a crash.
Exits 1 on any mismatch."""
import io
import os
import random
import re
import subprocess
import sys
import tempfile

from PIL import Image
import torchvision.datasets as datasets

EXE = sys.argv[1]
fails = []


def check(cond, what):
    if not cond:
        fails.append(what)
        print("FAIL:", what)


def jpeg(path, w, h, seed, mode="RGB"):
    rnd = random.Random(seed)
    im = Image.new(mode, (w, h))
    im.putdata([tuple(rnd.randrange(256) for _ in range(len(mode))) if len(mode) > 1
                else rnd.randrange(256) for _ in range(w * h)])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fmt = "PNG" if path.lower().endswith(".png") else "JPEG"
    im.save(path, fmt)


def run(root, cache):
    args = [EXE, root] + ([cache] if cache else [])
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def parse(out):
    summary = {}
    imgs = []
    for line in out.splitlines():
        if line.startswith("summary "):
            summary = dict(kv.split("=", 1) for kv in line.split()[1:])
        elif line.startswith("img "):
            _, i, label, w, h, fmt, size, path = line.split(" ", 7)
            imgs.append((path, int(label), int(w), int(h)))
    return summary, imgs


with tempfile.TemporaryDirectory() as tmp:
    root = os.path.join(tmp, "data")
    cache = os.path.join(tmp, "dump")
    sizes = {}
    good = [
        "cat/b.jpg", "cat/B.JPG", "cat/a.jpeg", "cat/a b.jpg", "cat/a/x.jpg", "cat/a/sub/y.png",
        "cat/a_/z.jpg", "dog/1.png", "dog/0.jpg", "dog/gray.jpg", "dog/deep/er/q.jpg",
        "zebra/only.JPEG", "Ant/first.jpg",
    ]
    for k, rel in enumerate(good):
        w, h = 20 + k, 30 + 2 * k
        jpeg(os.path.join(root, rel), w, h, k, "L" if "gray" in rel else "RGB")
        sizes[rel] = (w, h)
    # A PNG named .jpg is a good image (format sniffed from the bytes).
    im = Image.new("RGB", (17, 19), (1, 2, 3))
    im.save(os.path.join(root, "dog/png_named.jpg"), "PNG")
    sizes["dog/png_named.jpg"] = (17, 19)
    bad = {}
    open(os.path.join(root, "cat/zero.jpg"), "wb").close()
    bad["cat/zero.jpg"] = "empty"
    data = open(os.path.join(root, "cat/b.jpg"), "rb").read()
    open(os.path.join(root, "cat/trunc.jpg"), "wb").write(data[:40])
    bad["cat/trunc.jpg"] = "JPEG"
    open(os.path.join(root, "dog/random.png"), "wb").write(bytes(random.Random(5).randrange(256) for _ in range(500)))
    bad["dog/random.png"] = "not an image"
    open(os.path.join(root, "dog/notes.jpeg"), "w").write("this is text, not a JPEG\n")
    bad["dog/notes.jpeg"] = "not an image"
    Image.new("RGB", (8, 8)).save(os.path.join(root, "dog/pic.bmp"), "BMP")
    bad["dog/pic.bmp"] = "BMP"
    Image.new("P", (8, 8)).save(os.path.join(root, "zebra/anim.png"), "GIF")
    bad["zebra/anim.png"] = "GIF"
    png = io.BytesIO()
    Image.new("RGB", (9, 9)).save(png, "PNG")
    open(os.path.join(root, "zebra/half.png"), "wb").write(png.getvalue()[:20])
    bad["zebra/half.png"] = "PNG truncated"
    # Ignored as torchvision ignores them (no image extension).
    open(os.path.join(root, "cat/readme.txt"), "w").write("x")
    open(os.path.join(root, "top_level_file.jpg"), "w").write("x")

    ds = datasets.ImageFolder(root)
    want = [(os.path.relpath(p, root), l) for p, l in ds.samples if os.path.relpath(p, root) not in bad]

    rc, out, err = run(root, cache)
    check(rc == 0, f"exit code {rc}: {err}")
    summary, imgs = parse(out)
    got = [(p, l) for p, l, _, _ in imgs]
    check(got == want, f"order/labels differ from torchvision:\n got  {got}\n want {want}")
    for p, l, w, h in imgs:
        check(sizes.get(p) == (w, h), f"{p}: size {w}x{h}, want {sizes.get(p)}")
    check(summary.get("bad") == str(len(bad)), f"bad count {summary.get('bad')} want {len(bad)}")
    check(summary.get("classes") == str(len(ds.classes)), "class count")
    check(summary.get("ignored") == "2", f"ignored {summary.get('ignored')} want 2")
    check(summary.get("cached") == "0", "first run must build")
    m = re.search(r"(\d+) files left out", err)
    check(m is not None and int(m.group(1)) == len(bad), f"count on stderr: {err!r}")
    report = summary.get("report", "-")
    check(os.path.exists(report), f"report file {report}")
    if os.path.exists(report):
        lines = [l.split("\t") for l in open(report).read().splitlines() if not l.startswith("#")]
        listed = {l[0]: l[1] for l in lines}
        check(set(listed) == set(bad), f"report lists {sorted(listed)} want {sorted(bad)}")
        for p, why in bad.items():
            check(why in listed.get(p, ""), f"{p}: reason {listed.get(p)!r} should say {why!r}")

    # Cached: same result, from the cache file.
    rc, out2, err2 = run(root, cache)
    s2, imgs2 = parse(out2)
    check(rc == 0 and s2.get("cached") == "1", f"second run should reuse the cache: {out2[:200]}")
    check(imgs2 == imgs, "cached index differs")
    check(re.search(r"files left out", err2) is not None, "count on stderr on a cached run")
    # A changed folder is re-indexed.
    jpeg(os.path.join(root, "dog/new.jpg"), 11, 12, 99)
    rc, out3, _ = run(root, cache)
    s3, imgs3 = parse(out3)
    check(s3.get("cached") == "0" and len(imgs3) == len(imgs) + 1, "a new file must rebuild the index")
    # A damaged cache file is rebuilt, not trusted.
    for f in os.listdir(cache):
        if f.endswith(".bin"):
            with open(os.path.join(cache, f), "r+b") as fh:
                fh.seek(40)
                fh.write(b"\xff" * 64)
    rc, out4, err4 = run(root, cache)
    s4, imgs4 = parse(out4)
    check(rc == 0 and imgs4 == imgs3, f"damaged cache: rc {rc} {err4}")

    # Flat folder: label -1, sorted names.
    flat = os.path.join(tmp, "flat")
    for k, name in enumerate(["b.png", "a.jpg", "C.jpg", "z.txt"]):
        if name.endswith(".txt"):
            os.makedirs(flat, exist_ok=True)
            open(os.path.join(flat, name), "w").write("x")
        else:
            jpeg(os.path.join(flat, name), 10, 10, k)
    rc, out, err = run(flat, None)
    s, imgs = parse(out)
    check(rc == 0 and [(p, l) for p, l, _, _ in imgs] == [("C.jpg", -1), ("a.jpg", -1), ("b.png", -1)],
          f"flat folder: {imgs} {err}")
    check(s.get("classes") == "0" and s.get("ignored") == "1", f"flat summary {s}")

    # Nothing decodable: a clear error, no crash.
    empty = os.path.join(tmp, "bad_only")
    os.makedirs(empty)
    open(os.path.join(empty, "x.jpg"), "wb").write(b"garbage")
    rc, out, err = run(empty, None)
    check(rc == 1 and out.startswith("error") and "x.jpg" in err, f"bad-only folder: rc {rc} {out} {err}")
    rc, out, err = run(os.path.join(tmp, "missing"), None)
    check(rc == 1 and "missing" in err, f"missing folder: rc {rc} {err}")

print("test_index: %d failures" % len(fails))
sys.exit(1 if fails else 0)
