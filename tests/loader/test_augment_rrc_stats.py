#!/usr/bin/env python3
"""RandomResizedCrop statistics: our crop boxes (loader_rrc_params, drawn from
the Philox streams) against torchvision 0.14's RandomResizedCrop.get_params
sampled here, for the same image size and scale range.

Usage: test_augment_rrc_stats.py LOADER_OPS

For each configuration, two-sample Kolmogorov-Smirnov tests on the area
fraction, the log aspect ratio (log w/h) and the normalized crop center, plus
the rate of the center-crop fallback.  Tolerance: KS statistic below the
alpha = 1e-4 critical value c * sqrt((n + m) / (n m)), c = 2.15 (fails at
random once in ten thousand runs per statistic if the law is the same); the
fallback rates within 4 standard errors + 0.2 %.  N = 12000 samples a side."""
import math
import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

N = 12000
C_ALPHA = 2.15
ops_bin = sys.argv[1]
failures = []


def ks(a, b):
    a = np.sort(a)
    b = np.sort(b)
    allv = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, allv, side="right") / a.size
    cdf_b = np.searchsorted(b, allv, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def stats(boxes, W, H):
    t, l, h, w = boxes.T.astype(np.float64)
    area = h * w / (W * H)
    logr = np.log(w / h)
    cy = (t + h / 2) / H
    cx = (l + w / 2) / W
    # the fallback returns a centered box whose aspect is clamped or the whole image
    return {"area": area, "log_ratio": logr, "center_x": cx, "center_y": cy}


torch.manual_seed(1234)
for (W, H, smin, smax) in [(500, 375, 0.14, 1.0), (500, 375, 0.05, 0.14), (32, 32, 0.14, 1.0),
                           (28, 28, 0.05, 0.14), (640, 120, 0.08, 1.0), (96, 300, 0.3, 0.9)]:
    out = subprocess.run([ops_bin, "rrc", str(W), str(H), str(smin), str(smax), str(N), "77"],
                         check=True, capture_output=True, text=True).stdout
    ours = np.array([[int(v) for v in line.split()] for line in out.splitlines()])
    img = Image.new("RGB", (W, H))
    ref = np.array([transforms.RandomResizedCrop.get_params(img, [smin, smax], [3 / 4, 4 / 3])
                    for _ in range(N)])
    # every box inside the image
    if not (np.all(ours[:, 0] >= 0) and np.all(ours[:, 1] >= 0) and
            np.all(ours[:, 0] + ours[:, 2] <= H) and np.all(ours[:, 1] + ours[:, 3] <= W) and
            np.all(ours[:, 2] > 0) and np.all(ours[:, 3] > 0)):
        failures.append(f"{W}x{H}: box outside the image")
    so, sr = stats(ours, W, H), stats(ref, W, H)
    crit = C_ALPHA * math.sqrt(2.0 / N)
    line = [f"{W}x{H} scale=({smin},{smax}):"]
    for k in so:
        d = ks(so[k], sr[k])
        line.append(f"{k} D={d:.4f}")
        if d > crit:
            failures.append(f"{W}x{H} ({smin},{smax}) {k}: KS D={d:.4f} > {crit:.4f}")
    # fallback: box centered with clamped ratio; detect via exact fallback geometry
    def fallback_rate(b):
        in_ratio = W / H
        if in_ratio < 3 / 4:
            fw, fh = W, int(round(W / (3 / 4)))
        elif in_ratio > 4 / 3:
            fh, fw = H, int(round(H * 4 / 3))
        else:
            fw, fh = W, H
        m = (b[:, 2] == fh) & (b[:, 3] == fw) & (b[:, 0] == (H - fh) // 2) & (b[:, 1] == (W - fw) // 2)
        return float(m.mean())
    fo, fr = fallback_rate(ours), fallback_rate(ref)
    se = math.sqrt(max(fr * (1 - fr), 1e-6) * 2 / N)
    line.append(f"fallback {fo:.4f} vs {fr:.4f}")
    if abs(fo - fr) > 4 * se + 0.002:
        failures.append(f"{W}x{H}: fallback rate {fo:.4f} vs reference {fr:.4f}")
    print(" ".join(line), f"(critical D {crit:.4f})")

if failures:
    print("FAIL:", *failures, sep="\n  ")
    sys.exit(1)
print("crop scale / ratio / position distributions match torchvision's get_params")
