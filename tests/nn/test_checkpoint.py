#!/usr/bin/python3
"""Checkpoints cross the border to PyTorch both ways.

  (a) C writes a checkpoint (tests/nn/test_checkpoint write): this script
      parses the safetensors file by hand (struct + json + torch.frombuffer),
      loads it with load_state_dict(strict=True) into SmallNet, a module with
      the reference's names (conv1/bn1 of src/resnet50.py, its projection_head
      Linear-BatchNorm1d-ReLU-Linear, prototypes), and checks every value, the
      int64 num_batches_tracked, the momentum entries and the metadata, then
      runs the module forward (eval mode) against a second copy built from
      the raw values.
  (b) torch writes {'epoch', 'state_dict': {"module." + name: ...},
      'optimizer'} with torch.save, as main_swav.py does;
      scripts/torch-to-safetensors converts it (keeping, then stripping,
      "module."; with --optimizer), and the C side loads it strictly and
      compares every value with what torch had: all exactly equal.

argv: test_checkpoint executable, scripts/torch-to-safetensors.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn

DT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
      "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.projection_head = nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(inplace=True), nn.Linear(16, 4))
        self.prototypes = nn.Linear(4, 5, bias=False)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        x = nn.functional.normalize(self.projection_head(x), dim=1, p=2)
        return x, self.prototypes(x)


def read_safetensors(path):
    """The format by hand: u64 LE header length, JSON header, data."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = bytearray(raw[8 + n:])
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        dt = DT[e["dtype"]]
        if end == b:
            t = torch.empty(e["shape"], dtype=dt)
        else:
            t = torch.frombuffer(data, dtype=dt, count=(end - b) // torch.empty(0, dtype=dt).element_size(),
                                 offset=b).reshape(e["shape"]).clone()
        out[name] = t
    return out, meta


def part_a(exe, tmp):
    ck = os.path.join(tmp, "from_c.safetensors")
    raw_path = os.path.join(tmp, "from_c.raw")
    subprocess.run([exe, "write", ck, raw_path], check=True)
    tensors, meta = read_safetensors(ck)
    model = SmallNet()
    sd = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    model.load_state_dict(sd, strict=True)  # raises on any missing/unexpected/mis-shaped name

    raw = torch.from_numpy(np.fromfile(raw_path, dtype="<f4"))
    params = list(model.named_parameters())
    buffers = list(model.named_buffers())
    np_ = sum(p.numel() for _, p in params)
    nb = sum(b.numel() for _, b in buffers)
    assert raw.numel() == 2 * np_ + nb, (raw.numel(), np_, nb)
    bad = 0
    off = 0
    ref = SmallNet()
    ref_sd = {}
    for name, p in params:
        want = raw[off:off + p.numel()].reshape(p.shape)
        mom = raw[np_ + nb + off:np_ + nb + off + p.numel()].reshape(p.shape)
        ref_sd[name] = want
        if not torch.equal(p.detach(), want):
            print(f"FAIL (a) {name}: values differ"); bad += 1
        m = tensors.get(f"optimizer.{name}.momentum_buffer")
        if m is None or not torch.equal(m, mom):
            print(f"FAIL (a) optimizer.{name}.momentum_buffer missing or different"); bad += 1
        off += p.numel()
    for name, b in buffers:
        want = raw[off:off + b.numel()].reshape(b.shape)
        if b.dtype == torch.int64:
            if tensors[name].dtype != torch.int64:
                print(f"FAIL (a) {name}: dtype {tensors[name].dtype}, want int64"); bad += 1
            want = want.long()
        ref_sd[name] = want
        if not torch.equal(b, want):
            print(f"FAIL (a) {name}: values differ"); bad += 1
        off += b.numel()
    ref.load_state_dict(ref_sd, strict=True)
    if meta.get("epoch") != "3" or meta.get("step") != "300" or meta.get("format") != "pt" \
            or json.loads(meta.get("config", "null")) != {"arch": "small"}:
        print(f"FAIL (a) metadata {meta}"); bad += 1
    model.eval(); ref.eval()
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        e1, s1 = model(x)
        e2, s2 = ref(x)
    if not (torch.equal(e1, e2) and torch.equal(s1, s2)):
        print("FAIL (a) outputs differ"); bad += 1
    print(f"(a) C checkpoint -> torch strict load: {len(tensors)} tensors, "
          f"{'ok' if not bad else 'FAILED'}")
    return bad


def part_b(exe, conv, tmp):
    torch.manual_seed(1)
    model = SmallNet()
    with torch.no_grad():  # non-trivial running statistics, as after training
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_()
                m.bias.normal_()
                m.num_batches_tracked.fill_(77)
    # one SGD step so that the optimizer holds momentum buffers
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    model.train()
    e, s = model(torch.randn(4, 3, 9, 9))
    (s.square().sum() + e.sum()).backward()
    opt.step()
    state = {"module." + k: v for k, v in model.state_dict().items()}
    pth = os.path.join(tmp, "checkpoint.pth.tar")
    torch.save({"epoch": 5, "state_dict": state, "optimizer": opt.state_dict()}, pth)

    flat = [p.detach().reshape(-1) for _, p in model.named_parameters()]
    flat += [b.detach().float().reshape(-1) for _, b in model.named_buffers()]
    flat += [opt.state[p]["momentum_buffer"].reshape(-1) for p in model.parameters()]
    raw_path = os.path.join(tmp, "torch.raw")
    torch.cat(flat).numpy().astype("<f4").tofile(raw_path)

    bad = 0
    for extra in ([], ["--strip-module"]):
        out = os.path.join(tmp, "converted.safetensors")
        subprocess.run([sys.executable, conv, pth, out, "--optimizer"] + extra, check=True)
        tensors, meta = read_safetensors(out)
        has_module = any(k.startswith("module.") for k in tensors)
        if has_module == bool(extra) or meta.get("epoch") != "5":
            print(f"FAIL (b) converter {extra}: module. prefix {has_module}, meta {meta}"); bad += 1
        r = subprocess.run([exe, "load", out, raw_path])
        bad += r.returncode != 0
    print(f"(b) torch.save -> torch-to-safetensors -> C strict load: {'ok' if not bad else 'FAILED'}")
    return bad


def main():
    exe, conv = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bad = part_a(exe, tmp) + part_b(exe, conv, tmp)
    print("FAILED" if bad else "all ok")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
