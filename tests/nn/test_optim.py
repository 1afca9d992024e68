#!/usr/bin/python3
"""LARC + SGD parity with the reference (main_swav.py + apex.parallel.LARC).

apex is not installed here, so apex's LARC.step is written out below from its
semantics (apex/parallel/LARC.py): per parameter with a gradient,
    param_norm = ||p||, grad_norm = ||g||
    if param_norm != 0 and grad_norm != 0:
        adaptive_lr = trust * param_norm / (grad_norm + param_norm * wd + eps)
        if clip: adaptive_lr = min(adaptive_lr / lr, 1)
        g += wd * p; g *= adaptive_lr
with the group's weight_decay set to 0 around the inner torch.optim.SGD step.
The training loop mirrors main_swav.train(): prototypes normalized at the
start of each step, prototype gradients set to None while iteration <
freeze_prototypes_niters.

For each case this script writes the initial parameters, the gradients of
every step and the expected parameters and momentum buffers after the last
step, then runs tests/nn/test_optim (argv[1]) on them; that program runs
nn_optim with 1 and 3 threads and compares.  Tolerance (stated in the C
program): per tensor, max |ours - torch| <= 1e-6 * max |torch| (+1e-12).
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F


def larc_step(optim, trust_coefficient=0.001, clip=False, eps=1e-8):
    """apex.parallel.LARC.step, written out."""
    with torch.no_grad():
        weight_decays = []
        for group in optim.param_groups:
            weight_decay = group['weight_decay'] if 'weight_decay' in group else 0
            weight_decays.append(weight_decay)
            group['weight_decay'] = 0
            for p in group['params']:
                if p.grad is None:
                    continue
                param_norm = torch.norm(p.data)
                grad_norm = torch.norm(p.grad.data)
                if param_norm != 0 and grad_norm != 0:
                    adaptive_lr = trust_coefficient * (param_norm) / (
                        grad_norm + param_norm * weight_decay + eps)
                    if clip:
                        adaptive_lr = min(adaptive_lr / group['lr'], 1)
                    p.grad.data += weight_decay * p.data
                    p.grad.data *= adaptive_lr
    optim.step()
    for i, group in enumerate(optim.param_groups):
        group['weight_decay'] = weight_decays[i]


# name, shape, init, flags (1 = prototypes), group
TENSORS = [
    ("conv1.weight", (8, 3, 3, 3), "normal", 0, 0),
    ("bn1.weight", (8,), "ones", 0, 0),
    ("bn1.bias", (8,), "zeros", 0, 0),           # ||p|| = 0 on the first step
    ("layer1.0.conv1.weight", (64, 300), "normal", 0, 0),  # several norm chunks
    ("still.weight", (5, 5), "normal", 0, 0),     # gradient always zero
    ("projection_head.0.weight", (16, 32), "normal", 0, 1),
    ("projection_head.0.bias", (16,), "normal", 0, 1),
    ("prototypes.weight", (20, 16), "normal", 1, 1),
]


def run_case(exe, tmp, name, larc, nesterov, wd, freeze, clip, steps, group_lrs_fn, seed):
    g = torch.Generator().manual_seed(seed)
    params = []
    for (n, shape, init, flags, grp) in TENSORS:
        if init == "normal":
            t = torch.randn(shape, generator=g) * 0.1
        elif init == "ones":
            t = torch.ones(shape)
        else:
            t = torch.zeros(shape)
        params.append(torch.nn.Parameter(t))
    init = torch.cat([p.detach().reshape(-1).clone() for p in params])
    groups = [{"params": [p for p, t in zip(params, TENSORS) if t[4] == k]} for k in (0, 1)]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=wd, nesterov=nesterov)
    grads_all = []
    lrs = []
    proto = [i for i, t in enumerate(TENSORS) if t[3] & 1][0]
    for it in range(steps):
        glr = group_lrs_fn(it)
        lrs.append(glr)
        for k, grp in enumerate(opt.param_groups):
            grp["lr"] = glr[k]
        if larc:  # main_swav.train(): normalize the prototypes first
            with torch.no_grad():
                w = params[proto].data.clone()
                w = F.normalize(w, dim=1, p=2)
                params[proto].copy_(w)
        step_grads = []
        for (n, shape, _, _, _), p in zip(TENSORS, params):
            gr = torch.randn(shape, generator=g)
            if n == "still.weight":
                gr.zero_()
            step_grads.append(gr.reshape(-1).clone())
            p.grad = gr.clone()
        grads_all.append(torch.cat(step_grads))
        if it < freeze:
            for (n, *_), p in zip(TENSORS, params):
                if "prototypes" in n:
                    p.grad = None
        if larc:
            larc_step(opt, clip=clip)
        else:
            opt.step()
    final = torch.cat([p.detach().reshape(-1) for p in params])
    moms = []
    for p in params:
        st = opt.state.get(p, {})
        buf = st.get("momentum_buffer")
        moms.append((buf if buf is not None else torch.zeros_like(p)).reshape(-1))
    mom = torch.cat(moms)

    d = os.path.join(tmp, name)
    os.makedirs(d)
    spec = {
        "names": [t[0] for t in TENSORS],
        "shapes": [list(t[1]) for t in TENSORS],
        "flags": [t[3] for t in TENSORS],
        "groups": [t[4] for t in TENSORS],
        "steps": steps,
        "lrs": lrs,
        "weight_decay": wd,
        "momentum": 0.9,
        "larc": larc,
        "clip": clip,
        "nesterov": nesterov,
        "freeze_prototypes_niters": freeze,
        "normalize_prototypes": larc,
    }
    with open(os.path.join(d, "spec.json"), "w") as f:
        json.dump(spec, f)
    init.numpy().astype("<f4").tofile(os.path.join(d, "init.bin"))
    torch.stack(grads_all).numpy().astype("<f4").tofile(os.path.join(d, "grads.bin"))
    final.numpy().astype("<f4").tofile(os.path.join(d, "expect_params.bin"))
    mom.numpy().astype("<f4").tofile(os.path.join(d, "expect_mom.bin"))
    print(f"case {name}: larc={larc} clip={clip} nesterov={nesterov} wd={wd} "
          f"freeze={freeze} steps={steps}", flush=True)
    r = subprocess.run([exe, d])
    return r.returncode


def main():
    exe = sys.argv[1]
    torch.set_num_threads(1)
    rc = 0
    with tempfile.TemporaryDirectory() as tmp:
        # pretraining: LARC, freeze 3 of 7 steps, the schedule's kind of lr
        rc |= run_case(exe, tmp, "larc", True, False, 1e-2, 3, False, 7,
                       lambda it: [0.3 + 0.6 * it, 0.3 + 0.6 * it], 0)
        # the reference's default wd, prototypes never frozen past step 0
        rc |= run_case(exe, tmp, "larc_wd1e-6", True, False, 1e-6, 1, False, 5,
                       lambda it: [4.8 * math.cos(it / 10), 4.8 * math.cos(it / 10)], 1)
        # LARC with clip (apex option), lr small enough for the clip to act sometimes
        rc |= run_case(exe, tmp, "larc_clip", True, False, 1e-4, 0, True, 4,
                       lambda it: [1e-4 * (it + 1), 2e-4 * (it + 1)], 2)
        # plain SGD (eval_linear: nesterov option; eval_semisup: two lr groups)
        rc |= run_case(exe, tmp, "sgd_nesterov", False, True, 1e-4, 0, False, 5,
                       lambda it: [0.3, 0.3], 3)
        rc |= run_case(exe, tmp, "sgd_groups", False, False, 0.0, 0, False, 5,
                       lambda it: [0.01 * 0.2 ** (it // 2), 0.2 * 0.2 ** (it // 2)], 4)
    print("FAILED" if rc else "all cases ok")
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
