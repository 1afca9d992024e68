"""Semi-supervised fine-tuning against PyTorch (Debian's torch, CPU).

semisup_ref_tool (our C loop, evaluator/semisup.h) fine-tunes a resnet18
(width 8, small stem, head Linear(64, C): resnet50(output_dim=C) of
src/resnet50.py at toy size) on generated 16x16 images; PyTorch replays the
same training from the tool's initial weights and BN buffers, with the
tool's per-epoch orders, as eval_semisup.py does it: model.train(),
nn.CrossEntropyLoss, torch.optim.SGD([trunk, {head, lr_last_layer}],
lr, momentum 0.9, weight_decay), MultiStepLR stepped per epoch, validation in
model.eval() after each epoch.

The truth is torch in float64; torch in float32 is run too, to measure how
well-conditioned each quantity is (train-mode BatchNorm over small batches
amplifies rounding, and a step moves the weights by lr x gradient).
Error of a tensor: max |x - t64| / max |t64|.  Checked:
  - learning rates of both groups at every step: 1e-12 relative;
  - loss at every step: |C - t64| <= max(LOSS_TOL, 10 x |t32 - t64|) with
    LOSS_TOL = 2e-5 * max(1, loss);
  - after the last step, the head weight and bias, and two trunk weights
    (conv1.weight, layer4.1.conv2.weight) and a BN running mean and
    variance: error of C <= max(W_TOL, 10 x error of torch fp32),
    W_TOL = 1e-4; num_batches_tracked exactly;
  - validation top-1 / top-5 of the last epoch: within 1 sample.
Each case uses the first data seed from its own that keeps every ReLU input of
the float64 replay at least KINK_GAP = 1e-7 from 0 (see below).
usage: test_semisup_ref.py TOOL
"""
import copy
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
W_TOL = 1e-4
SLACK = 10.0
# A ReLU input within rounding distance of 0 can fall on the other side in C
# than in float64 torch, and the gradients below it then differ for real (a
# kink, not a bug: seen once, conv1.weight off by 8e-5 after 3 steps with an
# input at 7e-10).  A case takes the first data seed from its own whose
# float64 replay has no ReLU input with |x| < KINK_GAP (tests/nn/test_parity.py
# does the same).
KINK_GAP = 1e-7
RELU_MIN = [float("inf")]


def relu(x):
    if x.dtype == torch.float64:
        RELU_MIN[0] = min(RELU_MIN[0], float(x.detach().abs().min()))
    return F.relu(x)


def fail(msg):
    global failures
    failures += 1
    print("FAIL:", msg)


def conv(cin, cout, k, stride=1, pad=0):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False)


class Basic(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = conv(cin, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(conv(cin, planes, 1, stride), nn.BatchNorm2d(planes))

    def forward(self, x):
        y = relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return relu(y + (self.downsample(x) if self.downsample is not None else x))


class Net(nn.Module):
    """src/resnet50.py's ResNet with BasicBlock [2, 2, 2, 2], a 3x3 stride-1
    stem without maxpool, and output_dim = C with hidden_mlp = 0 (one Linear
    head, no normalization, no prototypes)."""

    def __init__(self, width, C):
        super().__init__()
        self.conv1 = conv(3, width, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(width)
        cin, planes = width, width
        for s in range(4):
            if s:
                planes *= 2
            blocks = [Basic(cin, planes, 2 if s else 1), Basic(planes, planes, 1)]
            cin = planes
            setattr(self, "layer%d" % (s + 1), nn.Sequential(*blocks))
        self.projection_head = nn.Linear(cin, C)

    def forward(self, x):
        x = relu(self.bn1(self.conv1(x)))
        for s in range(4):
            x = getattr(self, "layer%d" % (s + 1))(x)
        return self.projection_head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def load(net, tables, params, buffers):
    sd = net.state_dict()
    names = set(sd)
    for kind, flat in (("params", params), ("buffers", buffers)):
        for e in tables[kind]:
            n = int(np.prod(e["shape"])) if e["shape"] else 1
            v = flat[e["offset"]:e["offset"] + n].reshape(e["shape"])
            t = sd[e["name"]]
            sd[e["name"]] = torch.from_numpy(v.copy()).to(t.dtype).reshape(t.shape)
            names.discard(e["name"])
    if names:
        fail("torch names the C tables lack: %s" % sorted(names))
    net.load_state_dict(sd, strict=True)


def replay(net, X, Y, NT, order, epochs, batch, lr, lr_last, wd, milestone, gamma):
    trunk = [p for n, p in net.named_parameters() if "head" not in n]
    head = [p for n, p in net.named_parameters() if "head" in n]
    opt = torch.optim.SGD([{"params": trunk}, {"params": head, "lr": lr_last}], lr=lr,
                          momentum=0.9, weight_decay=wd)
    sch = torch.optim.lr_scheduler.MultiStepLR(opt, [milestone], gamma=gamma)
    crit = nn.CrossEntropyLoss()
    losses, lrs, accs = [], [], []
    for e in range(epochs):
        net.train()
        for i0 in range(0, NT, batch):
            idx = torch.from_numpy(order[e, i0:i0 + batch].astype(np.int64))
            loss = crit(net(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            lrs.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
            opt.step()
            losses.append(loss.item())
        net.eval()
        with torch.no_grad():
            out = net(X[NT:])
        rank = (out > out.gather(1, Y[NT:].view(-1, 1))).sum(1)
        accs.append((100.0 * float((rank < 1).double().mean()),
                     100.0 * float((rank < 5).double().mean())))
        sch.step()
    return np.array(losses), np.array(lrs), accs


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def run_tool(S, C, NT, NV, epochs, batch, lr, lr_last, wd, milestone, gamma, seed):
    rng = np.random.default_rng(seed)
    # classes differ in their mean colour; noise on top
    means = rng.normal(0, 0.8, (C, 3, 1, 1)).astype(np.float32)
    y = np.concatenate([np.arange(NT) % C, rng.integers(0, C, NV)]).astype(np.int32)
    x = (means[y] + rng.normal(0, 1, (NT + NV, 3, S, S))).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        x.tofile(os.path.join(d, "x.f32"))
        y.tofile(os.path.join(d, "y.i32"))
        out = subprocess.run([tool, d, str(S), str(C), str(NT), str(NV), str(epochs), str(batch),
                              repr(lr), repr(lr_last), repr(wd), str(milestone), repr(gamma),
                              str(seed)], check=True, capture_output=True, text=True).stdout
        with open(os.path.join(d, "tables.json")) as f:
            tables = json.load(f)
        rd = lambda n, dt: np.fromfile(os.path.join(d, n), dt)
        files = {n: rd(n, dt) for n, dt in (
            ("init_params.f32", np.float32), ("init_buffers.f32", np.float32),
            ("final_params.f32", np.float32), ("final_buffers.f32", np.float32),
            ("order.u32", np.uint32), ("loss.f32", np.float32), ("lr.f64", np.float64))}
    return x, y, json.loads(out), tables, files


def case(name, S, C, NT, NV, epochs, batch, lr, lr_last, wd, milestone, gamma, seed0):
    for seed in range(seed0, seed0 + 16):
        x, y, res, tables, fl = run_tool(S, C, NT, NV, epochs, batch, lr, lr_last, wd,
                                          milestone, gamma, seed)
        p0, b0 = fl["init_params.f32"], fl["init_buffers.f32"]
        order = fl["order.u32"].reshape(epochs, NT)
        net32 = Net(8, C)
        load(net32, tables, p0, b0)
        net64 = copy.deepcopy(net32).double()
        X, Y = torch.from_numpy(x), torch.from_numpy(y).long()
        RELU_MIN[0] = float("inf")
        l64, lr64, acc64 = replay(net64, X.double(), Y, NT, order, epochs, batch, lr, lr_last,
                                  wd, milestone, gamma)
        if RELU_MIN[0] >= KINK_GAP:
            break
        print(f"{name}: seed {seed} puts a ReLU input at |x| = {RELU_MIN[0]:.3g}: next seed")
    else:
        fail(f"{name}: no seed in [{seed0}, {seed0 + 16}) keeps ReLU inputs {KINK_GAP} from 0")
        return
    l32, lr32, acc32 = replay(net32, X, Y, NT, order, epochs, batch, lr, lr_last, wd,
                              milestone, gamma)
    p1, b1 = fl["final_params.f32"], fl["final_buffers.f32"]
    closs = fl["loss.f32"].astype(np.float64)
    clr = fl["lr.f64"].reshape(-1, 2)
    name = f"{name} (seed {seed})"
    for e in range(epochs):
        if sorted(order[e].tolist()) != list(range(NT)):
            fail(f"{name}: epoch {e} order is not a permutation")
    if len(closs) != len(l64):
        fail(f"{name}: {len(closs)} steps, torch {len(l64)}")
        return
    lr_err = float(np.max(np.abs(clr - lr64) / np.abs(lr64)))
    loss_c, loss_t = np.abs(closs - l64), np.abs(l32 - l64)
    loss_tol = np.maximum(2e-5 * np.maximum(1.0, np.abs(l64)), SLACK * loss_t)
    print(f"{name}: {len(closs)} steps; loss first C {closs[0]:.6f} torch64 {l64[0]:.6f}, "
          f"last C {closs[-1]:.6f} torch64 {l64[-1]:.6f}; max |loss diff| C {loss_c.max():.3g} "
          f"torch32 {loss_t.max():.3g}; max lr rel diff {lr_err:.3g}")
    if lr_err > 1e-12:
        fail(f"{name}: learning rates differ by {lr_err:.3g} (relative)")
    if (loss_c > loss_tol).any():
        i = int(np.argmax(loss_c - loss_tol))
        fail(f"{name}: loss at step {i}: C {closs[i]:.7f} torch64 {l64[i]:.7f} torch32 "
             f"{l32[i]:.7f}")
    sd32, sd64 = net32.state_dict(), net64.state_dict()
    flat = {}
    for kind, arr in (("params", p1), ("buffers", b1)):
        for e in tables[kind]:
            n = int(np.prod(e["shape"])) if e["shape"] else 1
            flat[e["name"]] = arr[e["offset"]:e["offset"] + n].reshape(e["shape"])
    for nm in ("projection_head.weight", "projection_head.bias", "conv1.weight",
               "layer4.1.conv2.weight", "layer2.0.bn1.running_mean", "layer2.0.bn1.running_var",
               "bn1.weight"):
        t64 = sd64[nm].double().numpy().reshape(flat[nm].shape)
        t32 = sd32[nm].double().numpy().reshape(flat[nm].shape)
        ec, et = rel(flat[nm].astype(np.float64), t64), rel(t32, t64)
        e0 = [e for e in tables["params"] + tables["buffers"] if e["name"] == nm][0]
        init = (p0 if e0 in tables["params"] else b0)[e0["offset"]:e0["offset"] + t64.size]
        moved = \
            float(np.max(np.abs(t64 - init.reshape(t64.shape))) / max(np.max(np.abs(t64)), 1e-30))
        tol = max(W_TOL, SLACK * et)
        print(f"  {nm}: error C {ec:.3g}, torch fp32 {et:.3g} (tol {tol:.3g}); moved "
              f"{moved:.3g} from init")
        if ec > tol:
            fail(f"{name}: {nm} after training: error {ec:.3g} > {tol:.3g}")
    nbt = flat["bn1.num_batches_tracked"].item()
    if nbt != sd64["bn1.num_batches_tracked"].item():
        fail(f"{name}: num_batches_tracked C {nbt} torch {sd64['bn1.num_batches_tracked'].item()}")
    t1, t5 = acc64[-1]
    print(f"  val top-1/top-5 last epoch: C {res['last_top1']:.2f}/{res['last_top5']:.2f} "
          f"torch64 {t1:.2f}/{t5:.2f} torch32 {acc32[-1][0]:.2f}/{acc32[-1][1]:.2f}")
    if abs(res["last_top1"] - t1) > 100.0 / NV + 1e-9 or abs(res["last_top5"] - t5) > 100.0 / NV + 1e-9:
        fail(f"{name}: val accuracy C {res['last_top1']}/{res['last_top5']} torch {t1}/{t5}")


case("1 epoch of 3 steps", S=16, C=5, NT=40, NV=30, epochs=1, batch=16, lr=0.01,
     lr_last=0.2, wd=0.0, milestone=1, gamma=0.2, seed0=31)
case("3 epochs, decay after 2, weight decay", S=16, C=6, NT=36, NV=30, epochs=3, batch=12,
     lr=0.02, lr_last=0.1, wd=1e-4, milestone=2, gamma=0.2, seed0=7)
if failures:
    print(f"{failures} failure(s)")
    sys.exit(1)
print("ok")
