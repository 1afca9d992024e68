"""Linear probe and kNN probe against PyTorch (Debian's torch, CPU).

Generates features and labels, runs linear_ref_tool (our C probes), then
replays the same training in PyTorch with the tool's init weights and its
per-epoch orders: nn.Linear + nn.CrossEntropyLoss + torch.optim.SGD(momentum
0.9, weight_decay, nesterov) + CosineAnnealingLR / MultiStepLR stepped per
epoch, as eval_linear.py does.  Tolerances (float32 both sides, different
summation orders):
  - learning rate per step: 1e-12 relative,
  - loss per step: |diff| <= 2e-5 + 2e-5 * loss,
  - weights after the last step: max |diff| <= 1e-4 * max(1, max |w|),
  - validation top-1 of the final weights: equal within 1 sample,
  - kNN (DINO's weighted kNN, k=20, T=0.07): top-1 / top-5 counts within 2
    samples (float similarity ties at the k-th neighbour).
usage: test_linear_ref.py TOOL
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
tool = sys.argv[1]
failures = 0


def fail(msg):
    global failures
    failures += 1
    print("FAIL:", msg)


def knn_torch(xt, yt, xv, yv, C, k=20, T=0.07):
    xt = F.normalize(torch.from_numpy(xt), dim=1)
    xv = F.normalize(torch.from_numpy(xv), dim=1)
    yt = torch.from_numpy(yt).long()
    yv = torch.from_numpy(yv).long()
    sim = xv @ xt.t()
    d, idx = sim.topk(k, largest=True, sorted=True)
    cand = yt.view(1, -1).expand(xv.shape[0], -1).gather(1, idx)
    onehot = torch.zeros(xv.shape[0] * k, C)
    onehot.scatter_(1, cand.reshape(-1, 1), 1)
    probs = (onehot.view(xv.shape[0], k, C) * (d / T).exp().view(xv.shape[0], k, 1)).sum(1)
    _, pred = probs.sort(1, True)
    correct = pred.eq(yv.view(-1, 1))
    return int(correct[:, :1].sum()), int(correct[:, :min(5, k)].sum())


def case(name, D, C, NT, NV, epochs, batch, lr, wd, final_lr, nesterov, sched, milestone, gamma,
         seed):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 0.2, (C, D)).astype(np.float32)
    yt = rng.integers(0, C, NT).astype(np.int32)
    yv = rng.integers(0, C, NV).astype(np.int32)
    xt = (means[yt] + rng.normal(0, 1, (NT, D))).astype(np.float32)
    xv = (means[yv] + rng.normal(0, 1, (NV, D))).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        xt.tofile(os.path.join(d, "xt.f32"))
        yt.tofile(os.path.join(d, "yt.i32"))
        xv.tofile(os.path.join(d, "xv.f32"))
        yv.tofile(os.path.join(d, "yv.i32"))
        out = subprocess.run([tool, d, str(D), str(C), str(NT), str(NV), str(epochs), str(batch),
                              repr(lr), repr(wd), repr(final_lr), str(int(nesterov)), sched,
                              str(milestone), repr(gamma), str(seed)],
                             check=True, capture_output=True, text=True).stdout
        res = json.loads(out)
        init = np.fromfile(os.path.join(d, "init.f32"), np.float32)
        order = np.fromfile(os.path.join(d, "order.u32"), np.uint32).reshape(epochs, NT)
        closs = np.fromfile(os.path.join(d, "loss.f32"), np.float32)
        clr = np.fromfile(os.path.join(d, "lr.f64"), np.float64)
        final = np.fromfile(os.path.join(d, "final.f32"), np.float32)

    # the init is N(0, 0.01) weights and zero bias
    w0, b0 = init[:C * D], init[C * D:]
    if not (abs(w0.std() - 0.01) < 0.002 and abs(w0.mean()) < 0.002 and not b0.any()):
        fail(f"{name}: init weight mean {w0.mean():.5f} std {w0.std():.5f}, bias nonzero: {b0.any()}")
    for e in range(epochs):
        if sorted(order[e].tolist()) != list(range(NT)):
            fail(f"{name}: epoch {e} order is not a permutation")

    lin = nn.Linear(D, C)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w0.reshape(C, D)))
        lin.bias.copy_(torch.from_numpy(b0))
    opt = torch.optim.SGD(lin.parameters(), lr=lr, momentum=0.9, weight_decay=wd,
                          nesterov=nesterov)
    if sched == "cosine":
        sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=final_lr)
    else:
        sch = torch.optim.lr_scheduler.MultiStepLR(opt, [milestone], gamma=gamma)
    crit = nn.CrossEntropyLoss()
    X, Y = torch.from_numpy(xt), torch.from_numpy(yt).long()
    tloss, tlr = [], []
    for e in range(epochs):
        for i0 in range(0, NT, batch):
            idx = torch.from_numpy(order[e, i0:i0 + batch].astype(np.int64))
            loss = crit(lin(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            tlr.append(opt.param_groups[0]["lr"])
            opt.step()
            tloss.append(loss.item())
        sch.step()
    tloss = np.array(tloss)
    tlr = np.array(tlr)
    if len(tloss) != len(closs):
        fail(f"{name}: {len(closs)} steps, torch {len(tloss)}")
        return
    lr_err = np.max(np.abs(clr - tlr) / np.maximum(np.abs(tlr), 1e-30))
    loss_err = np.abs(closs - tloss)
    loss_bad = loss_err > 2e-5 + 2e-5 * np.abs(tloss)
    tw = np.concatenate([lin.weight.detach().numpy().ravel(), lin.bias.detach().numpy()])
    w_err = np.max(np.abs(final - tw))
    w_tol = 1e-4 * max(1.0, np.max(np.abs(tw)))
    with torch.no_grad():
        logits = lin(torch.from_numpy(xv))
    t_top1 = 100.0 * float((logits.argmax(1).numpy() == yv).mean())
    kc1, kc5 = knn_torch(xt, yt, xv, yv, C)
    print(f"{name}: {len(closs)} steps; loss first C {closs[0]:.6f} torch {tloss[0]:.6f}, "
          f"last C {closs[-1]:.6f} torch {tloss[-1]:.6f}; max |loss diff| {loss_err.max():.3g}; "
          f"max lr rel diff {lr_err:.3g}; max |w diff| {w_err:.3g} (tol {w_tol:.3g}); "
          f"val top1 C {res['last_top1']:.2f} torch {t_top1:.2f}; "
          f"knn C {res['knn_correct1']}/{res['knn_correct5']} torch {kc1}/{kc5}")
    if lr_err > 1e-12:
        fail(f"{name}: lr differs by {lr_err:.3g} (relative)")
    if loss_bad.any():
        i = int(np.argmax(loss_bad))
        fail(f"{name}: loss at step {i}: C {closs[i]:.7f} torch {tloss[i]:.7f}")
    if w_err > w_tol:
        fail(f"{name}: final weights differ by {w_err:.3g} > {w_tol:.3g}")
    if abs(res["last_top1"] - t_top1) > 100.0 / NV + 1e-9:
        fail(f"{name}: val top1 C {res['last_top1']:.3f} torch {t_top1:.3f}")
    if abs(res["knn_correct1"] - kc1) > 2 or abs(res["knn_correct5"] - kc5) > 2:
        fail(f"{name}: knn C {res['knn_correct1']}/{res['knn_correct5']} torch {kc1}/{kc5}")


case("cosine", D=48, C=7, NT=600, NV=300, epochs=4, batch=32, lr=0.3, wd=1e-6, final_lr=0.001,
     nesterov=False, sched="cosine", milestone=0, gamma=0.1, seed=31)
case("step+nesterov", D=40, C=12, NT=500, NV=250, epochs=3, batch=50, lr=0.1, wd=1e-4,
     final_lr=0.0, nesterov=True, sched="step", milestone=2, gamma=0.1, seed=5)
if failures:
    print(f"{failures} failure(s)")
    sys.exit(1)
print("ok")
