#!/usr/bin/python3
"""LR schedules against the reference's own code, whole runs, bit for bit.

main_swav.py's schedule is rebuilt here with the reference's numpy lines; the
evaluators' schedules are torch's CosineAnnealingLR / MultiStepLR stepped
once per epoch on a real optimizer, as eval_linear.py and eval_semisup.py do.
Tolerance: |ours - reference| <= 1e-12 * |reference| (float64 rounding); the
values are in fact expected to be identical.  argv[1]: tests/nn/test_schedule.
"""
import math
import subprocess
import sys

import numpy as np
import torch

TOL = 1e-12


def reference_swav(base_lr, final_lr, start_warmup, n, epochs, warmup_epochs):
    # main_swav.py, lines 178-182, with len(train_loader) = n
    warmup_lr_schedule = np.linspace(start_warmup, base_lr, n * warmup_epochs)
    iters = np.arange(n * (epochs - warmup_epochs))
    cosine_lr_schedule = np.array([final_lr + 0.5 * (base_lr - final_lr) * (1 + \
                         math.cos(math.pi * t / (n * (epochs - warmup_epochs)))) for t in iters])
    return np.concatenate((warmup_lr_schedule, cosine_lr_schedule))


def reference_torch(kind, base, epochs, **kw):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base, momentum=0.9)
    if kind == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, kw["t_max"], eta_min=kw["eta_min"])
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, kw["milestones"], gamma=kw["gamma"])
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


def ours(exe, *args):
    r = subprocess.run([exe] + [str(a) for a in args], capture_output=True, text=True, check=True)
    return np.array([float.fromhex(x) for x in r.stdout.split()])


def compare(name, got, want):
    if got.shape != want.shape:
        print(f"FAIL {name}: {got.shape[0]} values, reference has {want.shape[0]}")
        return 1
    diff = np.abs(got - want)
    bad = diff > TOL * np.abs(want)
    nexact = int(np.sum(got == want))
    print(f"{name}: {len(want)} values, {nexact} identical, max |diff| {diff.max() if len(diff) else 0:.3g}")
    if bad.any():
        i = int(np.argmax(bad))
        print(f"FAIL {name}: first mismatch at {i}: ours {got[i]!r}, reference {want[i]!r}")
        return 1
    return 0


def main():
    exe = sys.argv[1]
    rc = 0
    # (base_lr, final_lr, start_warmup, iters/epoch, epochs, warmup_epochs)
    for cfg in [(4.8, 0.0048, 0.0, 97, 100, 10),     # the paper's 100-epoch run, small loader
                (4.8, 0.0048, 0.3, 50, 800, 10),     # 800 epochs, warmup from 0.3
                (0.6, 0.0006, 0.0, 313, 100, 0),     # no warmup
                (1.2, 0.0, 0.3, 1, 5, 5),            # warmup only
                (0.6, 0.0006, 0.6, 20, 30, 2),       # flat warmup (step 0)
                (2.4, 0.0024, 0.0, 1, 400, 1),       # one-iteration epochs (linspace of 1)
                (4.8, 0.0048, 0.0, 5005, 4, 1)]:     # ImageNet-sized epoch at bs 256
        rc |= compare(f"swav{cfg}", ours(exe, "swav", *cfg), reference_swav(*cfg))
    for base, eta, t_max, epochs in [(0.3, 0.0, 100, 100), (0.3, 0.001, 20, 60), (0.05, 0.0, 7, 30)]:
        rc |= compare(f"cosine{(base, eta, t_max, epochs)}", ours(exe, "cosine", base, eta, t_max, epochs),
                      reference_torch("cosine", base, epochs, t_max=t_max, eta_min=eta))
    for base, gamma, epochs, ms in [(0.3, 0.1, 100, [60, 80]), (0.01, 0.2, 20, [12, 16]),
                                    (0.2, 0.2, 20, [12, 16]), (0.1, 0.5, 30, [20, 5, 5])]:
        rc |= compare(f"multistep{(base, gamma, epochs, ms)}", ours(exe, "multistep", base, gamma, epochs, *ms),
                      reference_torch("multistep", base, epochs, milestones=ms, gamma=gamma))
    print("FAILED" if rc else "all schedules match")
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
