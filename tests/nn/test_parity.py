#!/usr/bin/python3
"""PyTorch parity of the nn/ model (suite 'reference').

Builds the reference architecture in torch (src/resnet50.py semantics:
ZeroPad2d(1) + conv7x7/2 pad 2 stem, BasicBlock/Bottleneck, projection head
Linear-BN1d-ReLU-Linear, L2 normalize, prototypes Linear without bias),
randomizes every parameter and BN buffer, and hands the same weights and
inputs to nn_ref_tool (argv[1]) as raw float32 files in state-dict order as
the C side lists it (the names must match the reference's exactly).

Torch runs in float32 (Debian's python3-torch: the parity) and in float64
(the truth).  Error of a tensor: max |x - t| / max |t| (for a gradient, a
momentum buffer or a step the scale is floored at 1e-3 of the largest one:
a Linear bias before BatchNorm has a true gradient of 0).  Checked per case:
  (a) eval-mode and train-mode forward, embedding and scores:
        error of C against torch fp32      <= FWD_TOL = 1e-4
        error of C against torch float64   <= max(FWD_TOL, ACC_SLACK x the
                                              error of torch fp32), ACC_SLACK 1.5
      The second bound is relative because fp32 itself is not within 1e-4
      of float64 for a ResNet-50 in train mode: torch fp32 is at ~1e-4 on
      these inputs (its convolutions' fp32 accumulation, amplified by every
      train-mode BatchNorm); C must be as accurate as torch fp32, within 50%.
  (b) a whole SwAV step: multi-crop (2 large + 4 small crops), queue off, q
      from the reference's Sinkhorn (3 iterations, epsilon 0.05) on the
      assign crops, then
        the loss                             relative 1e-5
        EVERY parameter gradient             <= max(GRAD_TOL, SLACK x torch fp32's)
        BN running stats after the step      relative 1e-4; num_batches_tracked exact
        one optimizer step as main_swav.py's: SGD(momentum 0.9, weight_decay
        WD) wrapped by apex's LARC(trust 0.001, clip False, eps 1e-8) at lr
        LR (apex's LARC.step written out in test_optim.py), on C's side
        nn_optim_config_swav:
          every momentum buffer after it     <= max(GRAD_TOL, SLACK x torch fp32's)
          every parameter after it, error measured against the size of the
          step (p_after - p_before)          <= max(STEP_TOL, SLACK x torch fp32's)
      with GRAD_TOL = STEP_TOL = 1e-4, SLACK 10.  (A step here is ~5e-3 of
      a weight, so an fp32 parameter's own rounding is ~1e-5 of a step.)
  ReLU kinks: a ReLU input within rounding distance of 0 can fall on the
  other side in C than in float64, and its gradient then differs for real.
  nn_ref_tool therefore writes the ReLU masks of its train-mode forward, and
  for (b) both torch runs take the same branches (relu(x) = x * mask_C):
  the gradients are compared along one path.  The number of ReLU inputs
  whose sign differs between C and float64 is printed.

--device DEV (default cpu; scripts/gpu-check gives cuda): nn_ref_tool runs
the model on that backend (nn/device.h) and torch computes on the same
device (float32 with TF32 off for convolutions and matmuls, and float64),
from the same weights and inputs (drawn on the CPU as above, then moved).
Exit 77 (a skip) when either side has no such device.  On a GPU the
tolerances above hold with these changes, because the CUDA backend picks
each convolution's fastest fp32 algorithm (cudnnFind: Winograd and FFT
variants too), whose rounding differs from PyTorch's heuristic choice:
  ACC_SLACK 4 instead of 1.5 (C's forward may be 4x as far from float64 as
  torch fp32's), and C against torch fp32 directly <= max(FWD_TOL,
  (1 + ACC_SLACK) x torch fp32's error) (both within their bounds of
  float64, so within the sum of each other);
  the loss <= max(1e-5, SLACK x torch fp32's relative loss error);
  running stats <= max(1e-3, SLACK x torch fp32's) (1e-3 is the bound on
  running variance that tests/cuda/test_cuda_layers holds the CUDA
  backend's BatchNorm to against the CPU's).
Gradients, momentum and steps keep max(1e-4, SLACK x torch fp32's error).
"""
import copy
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_optim import larc_step  # noqa: E402  (apex's LARC.step, written out)

FWD_TOL = 1e-4
ACC_SLACK = 1.5
GRAD_TOL = 1e-4
STEP_TOL = 1e-4
SLACK = 10.0
DEVICE = "cpu"  # --device; the tolerances for a GPU are set in main()
RSTAT_TOL = 1e-4
LR = 4.8   # main_swav.py's base_lr
WD = 1e-6  # and its wd
torch.set_num_threads(2)

# (group, name) -> C's ReLU mask (1 where C's output is > 0), while a run
# follows C's branches; the head is group -1
MASKS = {}
CUR_GROUP = [0]
FLIPS = [0]


def relu(x, name):
    m = MASKS.get((CUR_GROUP[0], name))
    if m is None:
        return F.relu(x)
    m = m.reshape(x.shape)  # on x's device (read_masks)
    if x.dtype == torch.float64:
        FLIPS[0] += int(((x > 0) != (m > 0)).sum())
    return x * m.to(x.dtype)


class NamedReLU(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.name = name

    def forward(self, x):
        return relu(x, self.name)


def conv(cin, cout, k, stride=1, pad=0):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False)


class Basic(nn.Module):
    expansion = 1

    def __init__(self, name, cin, planes, stride, down):
        super().__init__()
        self.name = name
        self.conv1 = conv(cin, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = down

    def forward(self, x):
        y = relu(self.bn1(self.conv1(x)), self.name + ".bn1")
        y = self.bn2(self.conv2(y))
        return relu(y + (self.downsample(x) if self.downsample is not None else x), self.name)


class Bottle(nn.Module):
    expansion = 4

    def __init__(self, name, cin, planes, stride, down):
        super().__init__()
        self.name = name
        self.conv1 = conv(cin, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = down

    def forward(self, x):
        y = relu(self.bn1(self.conv1(x)), self.name + ".bn1")
        y = relu(self.bn2(self.conv2(y)), self.name + ".bn2")
        y = self.bn3(self.conv3(y))
        return relu(y + (self.downsample(x) if self.downsample is not None else x), self.name)


class Net(nn.Module):
    def __init__(self, depth, width, small_stem, hidden, feat, k):
        super().__init__()
        block = Basic if depth < 50 else Bottle
        counts = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
        self.small_stem = small_stem
        if small_stem:
            self.conv1 = conv(3, width, 3, 1, 1)
        else:
            self.padding = nn.ConstantPad2d(1, 0.0)
            self.conv1 = conv(3, width, 7, 2, 2)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, planes = width, width
        for s in range(4):
            if s:
                planes *= 2
            blocks = []
            for j in range(counts[s]):
                stride = 2 if s and j == 0 else 1
                down = None
                if stride != 1 or cin != planes * block.expansion:
                    down = nn.Sequential(conv(cin, planes * block.expansion, 1, stride),
                                         nn.BatchNorm2d(planes * block.expansion))
                blocks.append(block("layer%d.%d" % (s + 1, j), cin, planes, stride, down))
                cin = planes * block.expansion
            setattr(self, "layer%d" % (s + 1), nn.Sequential(*blocks))
        if hidden:
            self.projection_head = nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden),
                                                 NamedReLU("projection_head.1"),
                                                 nn.Linear(hidden, feat))
        else:
            self.projection_head = nn.Linear(cin, feat)
        self.prototypes = nn.Linear(feat, k, bias=False)

    def backbone(self, x):
        if not self.small_stem:
            x = self.padding(x)
        x = relu(self.bn1(self.conv1(x)), "bn1")
        if not self.small_stem:
            x = self.maxpool(x)
        for s in range(4):
            x = getattr(self, "layer%d" % (s + 1))(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, groups):
        feats = []
        for gi, g in enumerate(groups):
            CUR_GROUP[0] = gi
            feats.append(self.backbone(g))
        CUR_GROUP[0] = -1
        emb = F.normalize(self.projection_head(torch.cat(feats)), dim=1, p=2)
        return emb, self.prototypes(emb)


def sinkhorn(out, eps=0.05, iters=3):
    Q = torch.exp(out / eps).t()
    B, K = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(iters):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def rel(a, b, floor=1e-30):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), floor))


def make_net(seed, depth, width, small_stem, hidden, feat, k):
    torch.manual_seed(seed)
    net = Net(depth, width, small_stem, hidden, feat, k)
    with torch.no_grad():
        for n_, p in net.named_parameters():
            if p.dim() > 1:
                fan = p[0].numel()
                p.normal_(0, (2.0 / fan) ** 0.5)
            else:
                p.uniform_(0.5, 1.5) if n_.endswith("weight") else p.uniform_(-0.2, 0.2)
        for n_, b in net.named_buffers():
            if n_.endswith("running_mean"):
                b.uniform_(-0.1, 0.1)
            elif n_.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif n_.endswith("num_batches_tracked"):
                b.fill_(5)
        w = net.prototypes.weight
        w.copy_(F.normalize(w, dim=1, p=2))
    return net


def read_masks(d):
    data = np.fromfile(os.path.join(d, "relu_masks.bin"), dtype=np.uint8)
    masks, off = {}, 0
    for line in open(os.path.join(d, "relu_masks.txt")):
        g, name, n = line.split()
        masks[(int(g), name)] = torch.from_numpy(data[off: off + int(n)].astype(np.float64)).to(DEVICE)
        off += int(n)
    assert off == data.size
    return masks


def run_case(tool, name, depth, width, small_stem, hidden, feat, k, batch, groups, assign,
             with_loss, seed=7):
    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(n * batch, 3, s, s, generator=g) for n, s in groups]
    net = make_net(seed, depth, width, small_stem, hidden, feat, k).to(DEVICE)
    failures = 0
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "cfg.txt"), "w") as f:
            f.write("depth %d\nwidth %d\nsmall_stem %d\nhidden_mlp %d\nfeat_dim %d\n"
                    "nmb_prototypes %d\nbatch %d\nthreads 2\ntemperature 0.1\n" %
                    (depth, width, small_stem, hidden, feat, k, batch))
            for n, s in groups:
                f.write("group %d %d\n" % (n, s))
            f.write("assign %s\n" % " ".join(str(a) for a in assign))
            if with_loss:
                f.write("lr %r\nwd %r\n" % (LR, WD))
        names = subprocess.run([tool, "names", d, DEVICE], check=True, capture_output=True,
                               text=True).stdout.split("\n")
        sd = net.state_dict()
        params, buffers = [], []
        for line in names:
            if not line:
                continue
            parts = line.split()
            kind, nm, shape = parts[0], parts[1], [int(x) for x in parts[2:]]
            if nm not in sd:
                print("FAIL %s: C name %s is not in the reference state dict" % (name, nm))
                return 1
            if list(sd[nm].shape) != shape:
                print("FAIL %s: %s shape %s vs torch %s" % (name, nm, shape, list(sd[nm].shape)))
                return 1
            (params if kind == "P" else buffers).append(nm)
        if set(params) | set(buffers) != set(sd.keys()):
            print("FAIL %s: names differ: %s" % (name, set(sd.keys()) ^ (set(params) | set(buffers))))
            return 1
        cat = lambda lst: np.concatenate([sd[n].detach().float().reshape(-1).cpu().numpy() for n in lst])
        cat(params).astype(np.float32).tofile(os.path.join(d, "params.bin"))
        cat(buffers).astype(np.float32).tofile(os.path.join(d, "buffers.bin"))
        for i, x in enumerate(inputs):
            x.numpy().astype(np.float32).tofile(os.path.join(d, "input%d.bin" % i))
        n_crops = sum(n for n, _ in groups)
        # C first without q: its forward outputs and ReLU masks
        subprocess.run([tool, "run", d, DEVICE], check=True)
        masks = read_masks(d) if with_loss else {}

        # torch, float64 (truth) and float32: eval forward, then train forward
        # (along C's ReLU branches), loss, backward and one LARC step; q from
        # the float64 scores, shared by all sides
        def torch_run(model, dtype, q_in):
            xs = [x.to(DEVICE, dtype) for x in inputs]
            model.eval()
            with torch.no_grad():
                e_emb, e_sc = model(xs)
            model.train()
            MASKS.clear()
            MASKS.update(masks)
            FLIPS[0] = 0
            emb, sc = model(xs)
            MASKS.clear()
            out = {"eval": (e_emb.detach(), e_sc.detach()), "train": (emb.detach(), sc.detach()),
                   "flips": FLIPS[0]}
            if not with_loss:
                return out, None
            qs = q_in
            if qs is None:
                with torch.no_grad():
                    qs = [sinkhorn(sc[batch * c: batch * (c + 1)].detach()) for c in assign]
            loss = 0
            for i, crop_id in enumerate(assign):
                qi = qs[i].to(dtype)
                sub = 0
                for v in np.delete(np.arange(n_crops), crop_id):
                    x = sc[batch * v: batch * (v + 1)] / 0.1
                    sub -= torch.mean(torch.sum(qi * F.log_softmax(x, dim=1), dim=1))
                loss += sub / (n_crops - 1)
            loss /= len(assign)
            model.zero_grad()
            loss.backward()
            flat = lambda ts: {n_: t.detach().double().reshape(-1).cpu().numpy().copy()
                                  for n_, t in ts}
            out["loss"] = loss.item()
            out["grads"] = flat((n_, p.grad) for n_, p in model.named_parameters())
            out["buffers"] = flat(model.state_dict().items())
            before = flat(model.named_parameters())
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=WD)
            larc_step(opt)
            out["after"] = flat(model.named_parameters())
            out["step"] = {n_: out["after"][n_] - before[n_] for n_ in before}
            out["momentum"] = flat((n_, opt.state[p]["momentum_buffer"])
                                   for n_, p in model.named_parameters())
            return out, qs
        net64 = copy.deepcopy(net).double()
        t64, q = torch_run(net64, torch.float64, None)
        t32, _ = torch_run(net, torch.float32, q)
        rd = lambda f: np.fromfile(os.path.join(d, f), dtype=np.float32).astype(np.float64)
        ne = t64["train"][0].numel()
        for tag, got in (("eval", rd("eval_out.bin")), ("train", rd("train_out.bin"))):
            for j, (what, c) in enumerate((("embedding", got[:ne]), ("scores", got[ne:]))):
                truth = t64[tag][j].reshape(-1).cpu().numpy()
                t32v = t32[tag][j].double().reshape(-1).cpu().numpy()
                e32, ec, et = rel(c, t32v), rel(c, truth), rel(t32v, truth)
                tol = max(FWD_TOL, ACC_SLACK * et)
                # on the CPU as close to torch fp32 as FWD_TOL; on a GPU (main()) the sum
                # of both bounds against float64
                tol32 = FWD_TOL if DEVICE == "cpu" else max(FWD_TOL, (1 + ACC_SLACK) * et)
                ok = e32 <= tol32 and ec <= tol
                failures += not ok
                print("%-36s %-5s %-9s C vs torch32 %.2e (tol %.1e); vs float64: C %.2e "
                      "torch32 %.2e (tol %.1e) %s" % (name, tag, what, e32, tol32, ec, et, tol,
                                                      "ok" if ok else "FAIL"))
        if not with_loss:
            return failures
        print("%-36s %d ReLU inputs on the other side of 0 in C than in float64 (C's taken)" %
              (name, t64["flips"]))
        torch.cat(q).cpu().numpy().astype(np.float32).tofile(os.path.join(d, "q.bin"))
        subprocess.run([tool, "run", d, DEVICE], check=True)
        closs = float(rd("loss.bin")[0])
        r = abs(closs - t64["loss"]) / abs(t64["loss"])
        r32 = abs(t32["loss"] - t64["loss"]) / abs(t64["loss"])
        ltol = 1e-5 if DEVICE == "cpu" else max(1e-5, SLACK * r32)
        ok = r <= ltol
        failures += not ok
        print("%-36s loss C %.7f torch64 %.7f rel %.2e (torch32 %.2e, tol %.1e) %s" %
              (name, closs, t64["loss"], r, r32, ltol, "ok" if ok else "FAIL"))

        def per_param(what, got, key, base_tol):
            gmax = max(np.max(np.abs(v)) for v in t64[key].values())
            off, worst, worst_name, bad = 0, 0.0, "", 0
            for nm in params:
                truth = t64[key][nm]
                c = got[off: off + truth.size]
                off += truth.size
                ec = rel(c, truth, 1e-3 * gmax)
                et = rel(t32[key][nm], truth, 1e-3 * gmax)
                tol = max(base_tol, SLACK * et)
                if ec / tol > worst:
                    worst, worst_name = ec / tol, "%s (C %.1e torch32 %.1e)" % (nm, ec, et)
                if ec > tol:
                    bad += 1
                    print("  FAIL %s %s: err C %.2e torch32 %.2e" % (what, nm, ec, et))
            print("%-36s %d %s, worst err/tol %.2f at %s %s" %
                  (name, len(params), what, worst, worst_name, "ok" if not bad else "FAIL"))
            return bad
        failures += per_param("parameter gradients", rd("grads.bin"), "grads", GRAD_TOL)
        after = rd("buffers_after.bin")
        off, worst, worst32 = 0, 0.0, 0.0
        for nm in buffers:
            truth = t64["buffers"][nm]
            c = after[off: off + truth.size]
            off += truth.size
            if nm.endswith("num_batches_tracked"):
                if c[0] != truth[0]:
                    failures += 1
                    print("  FAIL %s: C %g torch %g" % (nm, c[0], truth[0]))
            else:
                worst = max(worst, rel(c, truth))
                worst32 = max(worst32, rel(t32["buffers"][nm], truth))
        rtol = RSTAT_TOL if DEVICE == "cpu" else max(RSTAT_TOL, SLACK * worst32)
        ok = worst <= rtol
        failures += not ok
        print("%-36s running stats after train step: worst rel %.2e (torch32 %.2e, tol %.1e) %s" %
              (name, worst, worst32, rtol, "ok" if ok else "FAIL"))
        # one SGD + LARC step (lr LR, wd WD)
        failures += per_param("momentum buffers after LARC", rd("momentum_after.bin"),
                              "momentum", GRAD_TOL)
        p0 = rd("params.bin")  # (the torch fp32 run stepped `net` in place)
        failures += per_param("LARC steps (p_after - p_before)", rd("params_after.bin") - p0,
                              "step", STEP_TOL)
    return failures


def set_device(tool, device):
    """--device: both sides on it, or exit 77 naming the side that has none."""
    global DEVICE, ACC_SLACK, RSTAT_TOL
    DEVICE = device
    if device == "cpu":
        return
    r = subprocess.run([tool, "device", device], capture_output=True, text=True)
    if r.returncode != 0:
        print((r.stdout + r.stderr).strip() or "nn_ref_tool device %s: exit %d" % (device, r.returncode))
        sys.exit(77 if r.returncode == 77 else 1)
    if not device.startswith("cuda") or not torch.cuda.is_available():
        print("SKIP: torch %s has no usable %s device (nn_ref_tool: %s)" %
              (torch.__version__, device, r.stdout.strip()))
        sys.exit(77)
    os.environ.pop("SWAV_CUDA_TF32", None)  # nn_ref_tool: fp32 FMA math (nn/cuda)
    # TF32 off: the fp32_precision API where torch has it (2.9+: mixing it with the
    # legacy allow_tf32 flags is refused), the legacy flags before
    try:
        new_api = hasattr(torch.backends.cuda.matmul, "fp32_precision")
    except AssertionError:  # older torch: an unknown attribute asserts
        new_api = False
    if new_api:
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        tf32 = "matmul %s, cudnn conv %s" % (torch.backends.cuda.matmul.fp32_precision,
                                             torch.backends.cudnn.conv.fp32_precision)
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        tf32 = "allow_tf32 matmul %s, cudnn %s" % (torch.backends.cuda.matmul.allow_tf32,
                                                   torch.backends.cudnn.allow_tf32)
    ACC_SLACK = 4.0
    RSTAT_TOL = 1e-3
    print("device %s: nn_ref_tool backend %s; torch %s on %s (cuDNN %s), fp32 precision: %s" %
          (device, r.stdout.strip(), torch.__version__, torch.cuda.get_device_name(),
           torch.backends.cudnn.version(), tf32))


def main():
    args = sys.argv[1:]
    device = "cpu"
    if "--device" in args:
        i = args.index("--device")
        device = args[i + 1]
        del args[i: i + 2]
    tool = args[0]
    set_device(tool, device)
    f = 0
    # (a) forward parity of the full-size backbones, small inputs
    f += run_case(tool, "resnet50 w64 b4 2x64 (fwd)", 50, 64, 0, 2048, 128, 3000, 4, [(2, 64)], [0], False)
    f += run_case(tool, "resnet18 w64 b4 2x64 (fwd)", 18, 64, 0, 512, 128, 100, 4, [(2, 64)], [0], False)
    # (b) loss, every gradient, one LARC step: multi-crop 2 large + 4 small
    f += run_case(tool, "resnet18 w16 2x64+4x32 (step)", 18, 16, 0, 64, 16, 20, 4,
                  [(2, 64), (4, 32)], [0, 1], True, seed=42)
    # bottlenecks, small stem, one-Linear head, plain NCHW layout (width 12);
    # 12-pixel small crops: layer4 still 2x2 (at 8 pixels its BatchNorms
    # normalize 4 values, and fp32 itself is off by 1e-3 there)
    f += run_case(tool, "resnet50 w12 small-stem 2x16+4x12", 50, 12, 1, 0, 16, 20, 2,
                  [(2, 16), (4, 12)], [0, 1], True, seed=22)
    print("%s: %d failing checks" % ("FAIL" if f else "PASS", f))
    return 1 if f else 0


if __name__ == "__main__":
    sys.exit(main())
