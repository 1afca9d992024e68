#!/usr/bin/python3
"""Parity of the assigner core with the PyTorch reference (main_swav.py).

W ranks are emulated in one process: each rank keeps its own tensors, and
dist.all_reduce is replaced by a sum over the ranks' tensors handed back to
every rank.  The reference's distributed_sinkhorn and the queue handling of
its train() loop are re-stated here step by step (same operations, same
order, float32, torch) and compared with the C core run through parity_tool.

  parity_reference.py TOOL single   W in 1, 2, 4, K=3000, D=128, one step
  parity_reference.py TOOL sequence W in 1, 2, 4, 50 steps, the queue created
                                    at epoch 2 (step 20 of 10-step epochs),
                                    used once full, epochs change mid-queue

Tolerance: every code within 1e-5 relative, |c - r| <= 1e-5 * |r| + 1e-12
(codes are probabilities; the absolute floor only covers underflowed ones).
Exits 1 on any mismatch, printing the worst element.
"""
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch

torch.set_num_threads(1)
REL, FLOOR = 1e-5, 1e-12


def all_reduce(tensors):
    total = tensors[0].clone()
    for t in tensors[1:]:
        total += t
    return [total.clone() for _ in tensors]


def sinkhorn_ranks(outs, epsilon, iters, world):
    """The reference's distributed_sinkhorn run on each rank's `out`,
    all_reduce emulated across the list.  Returns each rank's Q.t()."""
    Qs = [torch.exp(o / epsilon).t() for o in outs]
    B = Qs[0].shape[1] * world
    K = Qs[0].shape[0]
    sums = all_reduce([torch.sum(Q) for Q in Qs])
    for Q, s in zip(Qs, sums):
        Q /= s
    for _ in range(iters):
        rows = all_reduce([torch.sum(Q, dim=1, keepdim=True) for Q in Qs])
        for Q, r in zip(Qs, rows):
            Q /= r
            Q /= K
        for Q in Qs:
            Q /= torch.sum(Q, dim=0, keepdim=True)
            Q /= B
    for Q in Qs:
        Q *= B
    return [Q.t() for Q in Qs]


class RefRank:
    """One rank of the reference's train(): its queue and use_the_queue."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.queue = None
        self.use_the_queue = False


def unit(t):
    return torch.nn.functional.normalize(t, dim=1, p=2)


def run_case(tool, world, bs, K, D, ncrops, iters, eps, queue_length, eq_starts, epochs):
    """epochs: list of the epoch of every step.  Returns the worst relative
    error over all steps and a list of per-step queue use."""
    g = torch.Generator().manual_seed(1000 * world + len(epochs))
    ql = queue_length - queue_length % (bs * world)
    ranks = [RefRank(None) for _ in range(world)]
    steps = []
    for epoch in epochs:
        protos = unit(torch.randn(K, D, generator=g))
        embs = [unit(torch.randn(ncrops * bs, D, generator=g)) for _ in range(world)]
        steps.append((epoch, protos, embs))

    # ---- reference side -------------------------------------------------
    ref_codes, ref_used = [], []
    prev_epoch = None
    for epoch, protos, embs in steps:
        if epoch != prev_epoch:  # a new call of train(): flag reset, queue maybe created
            for rk in ranks:
                rk.use_the_queue = False
                if ql > 0 and epoch >= eq_starts and rk.queue is None:
                    rk.queue = torch.zeros(ncrops, ql // world, D)
            prev_epoch = epoch
        step_codes = [[None] * ncrops for _ in range(world)]
        used = False
        for i in range(ncrops):
            crop_id = i  # crops_for_assign = [0, 1, ...]: embeddings are the assign crops
            outs = []
            for r, rk in enumerate(ranks):
                emb = embs[r]
                out = emb[bs * crop_id: bs * (crop_id + 1)] @ protos.t()  # model output
                if rk.queue is not None:
                    if rk.use_the_queue or not torch.all(rk.queue[i, -1, :] == 0):
                        rk.use_the_queue = True
                        used = True
                        out = torch.cat((torch.mm(rk.queue[i], protos.t()), out))
                    rk.queue[i, bs:] = rk.queue[i, :-bs].clone()
                    rk.queue[i, :bs] = emb[crop_id * bs: (crop_id + 1) * bs]
                outs.append(out)
            qs = sinkhorn_ranks(outs, eps, iters, world)
            for r in range(world):
                step_codes[r][i] = qs[r][-bs:].contiguous()
        ref_codes.append(step_codes)
        ref_used.append(used)

    # ---- the C core -----------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        pin, pout = os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.bin")
        with open(pin, "wb") as f:
            f.write(struct.pack("<10i", world, bs, K, D, ncrops, iters, queue_length,
                                eq_starts, len(steps), 2))
            f.write(struct.pack("<f", eps))
            for epoch, protos, embs in steps:
                f.write(struct.pack("<i", epoch))
                f.write(protos.numpy().astype("<f4").tobytes())
                for r in range(world):
                    f.write(embs[r].numpy().astype("<f4").tobytes())
        res = subprocess.run([tool, pin, pout], stderr=subprocess.PIPE, text=True)
        if res.returncode != 0:
            print(res.stderr)
            raise SystemExit(f"parity_tool failed with {res.returncode}")
        raw = open(pout, "rb").read()

    per_step = 4 + world * ncrops * bs * K * 4
    assert len(raw) == per_step * len(steps), (len(raw), per_step * len(steps))
    worst, where = 0.0, None
    mismatched_use = []
    for s in range(len(steps)):
        chunk = raw[s * per_step:(s + 1) * per_step]
        (used,) = struct.unpack("<i", chunk[:4])
        if bool(used) != ref_used[s]:
            mismatched_use.append(s)
        got = np.frombuffer(chunk[4:], dtype="<f4").reshape(world, ncrops, bs, K)
        for r in range(world):
            for i in range(ncrops):
                ref = ref_codes[s][r][i].numpy().astype(np.float64)
                c = got[r, i].astype(np.float64)
                err = np.abs(c - ref) / (REL * np.abs(ref) + FLOOR)
                e = float(err.max()) * REL
                if e > worst:
                    idx = np.unravel_index(int(err.argmax()), err.shape)
                    worst, where = e, (s, r, i, idx, float(c[idx]), float(ref[idx]))
    return worst, where, ref_used, mismatched_use


def main():
    tool, mode = sys.argv[1], sys.argv[2]
    ok = True
    for world in (1, 2, 4):
        if mode == "single":
            worst, where, used, bad_use = run_case(tool, world, 64, 3000, 128, 2, 3, 0.05,
                                                   0, 15, [0])
        else:
            # 10-step epochs; the queue (48 rows per rank at W=2) is created at
            # epoch 2, i.e. step 20, and used once its last row is filled.
            bs = 32 // world
            worst, where, used, bad_use = run_case(tool, world, bs, 30, 16, 2, 3, 0.05,
                                                   100, 2, [s // 10 for s in range(50)])
        first_use = used.index(True) if True in used else None
        status = "ok" if worst <= REL and not bad_use else "MISMATCH"
        print(f"{mode} W={world}: worst |c-r|/(1e-5|r|+1e-12) * 1e-5 = {worst:.3g} "
              f"(tolerance {REL}); queue first used at step {first_use}; "
              f"queue-use disagreements {bad_use}; {status}")
        if where and worst > REL:
            print(f"  worst at step {where[0]} rank {where[1]} crop {where[2]} "
                  f"index {where[3]}: {where[4]!r} vs reference {where[5]!r}")
        ok = ok and status == "ok"
        if mode == "sequence" and first_use is None:
            print("  the queue was never used: the test would not test it")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
