#!/usr/bin/python3
"""The PyTorch side of scripts/bench-train-cpu: the same SwAV step as
tests/nn/bench_train.c on the same model (the reference architecture, as
built in tests/nn/test_parity.py), same crops, same threads.

usage: bench_train_torch.py DEPTH WIDTH BATCH CROPS STEPS THREADS HIDDEN FEAT K
A step: normalize prototypes, multi-crop forward, Sinkhorn (3 iterations,
epsilon 0.05) on crops 0 and 1, swapped-prediction loss, backward, SGD
(momentum 0.9, wd 1e-6) wrapped by LARC (trust 0.001, clip off) written out as
apex does it.  Prints "images/s X" (images = batch)."""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_parity import Net, sinkhorn  # noqa: E402


def main():
    depth, width, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    crops = [tuple(int(v) for v in c.split("x")) for c in sys.argv[4].split(",")]
    steps, threads = int(sys.argv[5]), int(sys.argv[6])
    hidden, feat, k = int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = Net(depth, width, 0, hidden, feat, k)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    inputs = [torch.randn(n * batch, 3, s, s) for n, s in crops]
    n_crops = sum(n for n, _ in crops)
    assign = [0, 1]
    t0 = None
    for it in range(steps + 1):
        if it == 1:
            t0 = time.perf_counter()
            c0 = time.process_time()
        with torch.no_grad():
            w = net.prototypes.weight.data.clone()
            net.prototypes.weight.copy_(F.normalize(w, dim=1, p=2))
        emb, out = net(inputs)
        loss = 0
        for i, crop_id in enumerate(assign):
            with torch.no_grad():
                q = sinkhorn(out[batch * crop_id: batch * (crop_id + 1)].detach())
            sub = 0
            for v in np.delete(np.arange(n_crops), crop_id):
                x = out[batch * v: batch * (v + 1)] / 0.1
                sub -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
            loss += sub / (n_crops - 1)
        loss /= len(assign)
        opt.zero_grad()
        loss.backward()
        # LARC (apex.parallel.LARC, clip=False), then the SGD step
        with torch.no_grad():
            wd = opt.param_groups[0]["weight_decay"]
            for p in net.parameters():
                if p.grad is None:
                    continue
                pn, gn = torch.norm(p.data), torch.norm(p.grad.data)
                if pn != 0 and gn != 0:
                    a = 0.001 * pn / (gn + pn * wd + 1e-8)
                    p.grad.data += wd * p.data
                    p.grad.data *= a
            opt.param_groups[0]["weight_decay"] = 0
            opt.step()
            opt.param_groups[0]["weight_decay"] = wd
    dt = time.perf_counter() - t0
    dc = time.process_time() - c0
    print("loss %.4f" % loss.item())
    print("images/s %.3f" % (steps * batch / dt))
    print("cpu_seconds_per_image %.3f" % (dc / (steps * batch)))


if __name__ == "__main__":
    main()
