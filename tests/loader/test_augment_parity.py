#!/usr/bin/env python3
"""Parity of each augmentation op with torchvision 0.14 on PIL (Debian's),
op by op, on the same image with the same parameters.

Usage: test_augment_parity.py LOADER_OPS

Tolerance: every op must agree within a mean absolute difference of 2/255
(the issue's bound) AND, because each op is written to reproduce PIL's own
arithmetic, at least 99.9% of the bytes must be identical (the rest may differ
by one level where float rounding of an intermediate could go either way)
and no byte may differ by more than 2 levels."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageFilter
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode

MEAN_TOL = 2.0  # levels of 255, i.e. 2/255
EXACT_MIN = 0.999
MAX_TOL = 2

ops_bin = sys.argv[1]
tmp = tempfile.mkdtemp(prefix="swav-parity-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)
failures = []


def make_image(w, h, seed):
    rng = np.random.default_rng(seed)
    # smooth color fields + edges + noise, like a photograph's statistics
    small = rng.integers(0, 256, size=(h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    base[..., 0] += 40 * np.sin(xx / 7.0)
    base[..., 1] += 30 * ((yy // 20) % 2)
    base += rng.normal(0, 12, size=base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def run_op(arr, op, *args):
    h, w, _ = arr.shape
    src = os.path.join(tmp, "in.rgb")
    dst = os.path.join(tmp, "out.rgb")
    arr.tofile(src)
    subprocess.run([ops_bin, op, str(w), str(h), src, dst] + [str(a) for a in args], check=True)
    return np.fromfile(dst, dtype=np.uint8)


def compare(name, ours, ref):
    ref = np.asarray(ref, dtype=np.uint8).reshape(-1)
    if ours.size != ref.size:
        failures.append(f"{name}: size {ours.size} != {ref.size}")
        print(f"FAIL {name}: size {ours.size} != {ref.size}")
        return
    d = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    mean, mx, exact = float(d.mean()), int(d.max()), float((d == 0).mean())
    ok = mean <= MEAN_TOL and exact >= EXACT_MIN and mx <= MAX_TOL
    print(f"{'ok  ' if ok else 'FAIL'} {name:42s} mean|d|={mean:.5f} max={mx} exact={exact:.5f}")
    if not ok:
        failures.append(name)


def f32(x):
    return float(np.float32(x))


for (w, h, seed) in [(317, 241, 1), (96, 128, 2), (500, 375, 3)]:
    arr = make_image(w, h, seed)
    img = Image.fromarray(arr)
    tag = f"{w}x{h}"
    # RandomResizedCrop's crop + resize (bilinear, PIL antialias), up and down
    for (top, left, ch, cw, out) in [(10, 20, h // 2, w // 2, 96), (0, 0, h, w, 224),
                                     (5, 7, 31, 40, 224), (h // 3, w // 4, h // 2, w // 3, 32),
                                     (1, 2, h - 3, w - 5, 16), (3, w - 3, 5, 3, 24),
                                     (0, w - 40, 40, 40, 40), (0, 0, 50, 2, 7)]:
        ref = F.resized_crop(img, top, left, ch, cw, [out, out], InterpolationMode.BILINEAR)
        compare(f"{tag} resized_crop {top},{left},{ch}x{cw}->{out}",
                run_op(arr, "resize", top, left, ch, cw, out, out), ref)
        compare(f"{tag} resized_crop+hflip {top},{left},{ch}x{cw}->{out}",
                run_op(arr, "resize", top, left, ch, cw, out, out, 1), F.hflip(ref))
    # Resize(256) of the whole image (eval): non-square output
    rs = F.resize(img, 256, InterpolationMode.BILINEAR)
    compare(f"{tag} resize short side 256", run_op(arr, "resize", 0, 0, h, w, rs.size[0], rs.size[1]), rs)
    compare(f"{tag} hflip", run_op(arr, "flip"), F.hflip(img))
    for f in [0.2, 0.55, 1.0, 1.37, 1.8]:
        f = f32(f)
        compare(f"{tag} brightness {f:.4f}", run_op(arr, "brightness", repr(f)), F.adjust_brightness(img, f))
        compare(f"{tag} contrast {f:.4f}", run_op(arr, "contrast", repr(f)), F.adjust_contrast(img, f))
        compare(f"{tag} saturation {f:.4f}", run_op(arr, "saturation", repr(f)), F.adjust_saturation(img, f))
    for hf in [-0.2, -0.113, -0.001, 0.0, 0.05, 0.2]:
        hf = f32(hf)
        compare(f"{tag} hue {hf:.4f}", run_op(arr, "hue", repr(hf)), F.adjust_hue(img, hf))
    compare(f"{tag} grayscale", run_op(arr, "gray"), F.rgb_to_grayscale(img, num_output_channels=3))
    for r in [0.1, 0.5, 1.0, 1.4142, 2.0]:
        compare(f"{tag} gaussian blur r={r}", run_op(arr, "blur", repr(f32(r))),
                img.filter(ImageFilter.GaussianBlur(radius=f32(r))))

# an image with every hue / saturation corner: the HSV round trip
cube = np.stack(np.meshgrid(np.arange(0, 256, 5), np.arange(0, 256, 5), np.arange(0, 256, 5),
                            indexing="ij"), -1).reshape(-1, 52, 3).astype(np.uint8)
cimg = Image.fromarray(cube)
for hf in [-0.2, 0.1, 0.2]:
    hf = f32(hf)
    compare(f"rgb cube hue {hf:.4f}", run_op(cube, "hue", repr(hf)), F.adjust_hue(cimg, hf))
compare("rgb cube saturation 1.8", run_op(cube, "saturation", repr(f32(1.8))), F.adjust_saturation(cimg, f32(1.8)))

# evaluation transform Resize(resize) + CenterCrop(S) end to end from a JPEG
# (no randomness): loader-ops crops ... mode 2, against torchvision on PIL's decode
from torchvision import transforms as T
for (w, h, resize, S) in [(500, 375, 256, 224), (375, 500, 256, 224), (28, 28, 36, 32),
                          (28, 28, 28, 32), (31, 29, 27, 30), (64, 40, 40, 32)]:
    arr = make_image(w, h, w * h)
    jpg = os.path.join(tmp, "eval.jpg")
    Image.fromarray(arr).save(jpg, quality=92)
    ref = T.Compose([T.Resize(resize), T.CenterCrop(S)])(Image.open(jpg).convert("RGB"))
    out = os.path.join(tmp, "eval.rgb")
    subprocess.run([ops_bin, "crops", jpg, "2", "1", "0", "0", out, "1", "1", str(S), "0", "0",
                    str(resize)], check=True)
    compare(f"eval_val {w}x{h} Resize({resize}) CenterCrop({S})", np.fromfile(out, dtype=np.uint8), ref)

if failures:
    print(f"{len(failures)} op comparisons failed: {failures}")
    sys.exit(1)
print("all ops within tolerance")
