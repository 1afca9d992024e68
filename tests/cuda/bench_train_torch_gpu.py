"""The PyTorch side of scripts/bench-train-gpu: one SwAV step (main_swav.py's
train loop body) with PyTorch's best single-GPU configuration: bf16
autocast, channels_last, cudnn.benchmark.

  bench_train_torch_gpu.py DEPTH BATCH CROPS STEPS HIDDEN FEAT K [--device cpu]

Model: torchvision's ResNet (fc removed) + projection head (Linear, BN1d,
ReLU, Linear) + prototypes (Linear, no bias), multi-crop forward grouped by
resolution as src/resnet50.py does; Sinkhorn (3 iterations, eps 0.05) on
crops 0 and 1 in fp32; swapped-prediction loss at temperature 0.1; SGD
(momentum 0.9, wd 1e-6) with LARC (trust 0.001, clip False) done with
foreach kernels (norms and updates, no Python loop per parameter), 3 warm-up
steps.  Synthetic uint8 crops normalized on the device each step.
Prints "images/s X" and "sinkhorn_ms X" (4096 x K).  --device cpu (or no
GPU) runs the same code on the CPU: a rehearsal, not a measurement.
"""
import sys
import time

import torch
import torch.nn as nn
import torchvision


def sinkhorn(out, eps=0.05, iters=3):
    q = torch.exp(out / eps).t()
    B = q.shape[1]
    K = q.shape[0]
    q /= torch.sum(q)
    for _ in range(iters):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= K
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= B
    q *= B
    return q.t()


class SwAV(nn.Module):
    def __init__(self, depth, hidden, feat, k):
        super().__init__()
        net = getattr(torchvision.models, "resnet%d" % depth)()
        dim = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, feat))
        self.prototypes = nn.Linear(feat, k, bias=False)

    def forward(self, groups):
        feats = torch.cat([self.backbone(x) for x in groups])
        z = nn.functional.normalize(self.head(feats), dim=1, p=2)
        return z, self.prototypes(z)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    depth, batch = int(args[0]), int(args[1])
    crops = [tuple(int(v) for v in c.split("x")) for c in args[2].split(",")]
    steps, hidden, feat, k = int(args[3]), int(args[4]), int(args[5]), int(args[6])
    dev = "cuda" if torch.cuda.is_available() and "--device" not in sys.argv else "cpu"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = SwAV(depth, hidden, feat, k).to(dev).to(memory_format=torch.channels_last)
    params = list(model.parameters())
    # the decay is folded into LARC's update below (apex zeroes the group's weight
    # decay around its step), so SGD's own is 0; foreach SGD
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.0, foreach=True)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.228, 0.224, 0.225], device=dev).view(1, 3, 1, 1) * 255
    raw = [torch.randint(0, 256, (n * batch, s, s, 3), dtype=torch.uint8, device=dev) for n, s in crops]
    n_crops = sum(n for n, _ in crops)
    amp = torch.bfloat16

    def step():
        with torch.no_grad():
            w = model.prototypes.weight
            w.copy_(nn.functional.normalize(w, dim=1, p=2))
        groups = [((r.permute(0, 3, 1, 2).float() - mean) / std).contiguous(memory_format=torch.channels_last)
                  for r in raw]
        with torch.autocast(device_type=dev, dtype=amp):
            _, out = model(groups)
        out = out.float()
        loss = 0
        for i, ci in enumerate([0, 1]):
            with torch.no_grad():
                q = sinkhorn(out[batch * ci:batch * (ci + 1)].detach())
            sub = 0
            for v in range(n_crops):
                if v == ci:
                    continue
                x = out[batch * v:batch * (v + 1)] / 0.1
                sub -= torch.mean(torch.sum(q * nn.functional.log_softmax(x, dim=1), dim=1))
            loss += sub / (n_crops - 1)
        loss /= 2
        opt.zero_grad(set_to_none=False)
        loss.backward()
        # LARC (apex semantics, clip False): g = (g + wd p) * trust ||p|| / (||g|| + wd ||p|| + eps)
        # batched over the parameters (foreach kernels), not a Python loop per tensor
        with torch.no_grad():
            grads = [p.grad for p in params]
            a = torch.stack(torch._foreach_norm(params))
            b = torch.stack(torch._foreach_norm(grads))
            rate = torch.where((a != 0) & (b != 0), 0.001 * a / (b + a * 1e-6 + 1e-8),
                               torch.ones_like(a))
            torch._foreach_add_(grads, params, alpha=1e-6)
            torch._foreach_mul_(grads, list(rate.unbind()))
        opt.step()
        return loss

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: cudnn.benchmark picks algorithms; clocks settle
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    dt = time.perf_counter() - t0
    print("loss %.4f device %s" % (float(loss), dev))
    print("images/s %.3f" % (steps * batch / dt))
    s = torch.randn(4096 if dev == "cuda" else 256, k, device=dev) * 0.05
    sinkhorn(s)
    sync()
    reps = 20 if dev == "cuda" else 2
    t0 = time.perf_counter()
    for _ in range(reps):
        sinkhorn(s)
    sync()
    print("sinkhorn_ms %.3f" % ((time.perf_counter() - t0) * 1e3 / reps))


if __name__ == "__main__":
    main()
