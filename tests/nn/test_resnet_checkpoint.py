#!/usr/bin/python3
"""Test (d): torchvision resnet50 (random init, randomized BatchNorm statistics
and affine parameters so that every tensor matters) saved with torch.save
the way the published SwAV weights are ("module." names), converted with
scripts/torch-to-safetensors, loaded by our ResNet-50: the 2048-d features
(after the average pool, eval mode) equal torch's within
    max |ours - torch| <= 1e-4 * max |torch|.
The SwAV stem (ConstantPad2d(1) + conv 7x7 pad 2) pads like torchvision's
(pad 3), so the two networks compute the same function.
argv: test_resnet_checkpoint executable, scripts/torch-to-safetensors.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision

TOL = 1e-4
BATCH, SIZE = 2, 96


def main():
    exe, conv = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.num_batches_tracked.fill_(1000)
    model.eval()
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        want = model(x).numpy()
    model.fc = torch.nn.Linear(2048, 1000)  # saved like torchvision's, fc included
    with tempfile.TemporaryDirectory() as tmp:
        pth = os.path.join(tmp, "resnet50.pth")
        torch.save({"module." + k: v for k, v in model.state_dict().items()}, pth)
        out = os.path.join(tmp, "resnet50.safetensors")
        subprocess.run([sys.executable, conv, pth, out], check=True)
        inp = os.path.join(tmp, "input.bin")
        x.numpy().astype("<f4").tofile(inp)
        feats = os.path.join(tmp, "feats.bin")
        r = subprocess.run([exe, out, inp, feats, str(BATCH), str(SIZE)])
        if r.returncode != 0:
            print("FAILED: the C side refused the checkpoint")
            return 1
        got = np.fromfile(feats, dtype="<f4").reshape(BATCH, 2048)
    diff = np.abs(got - want).max()
    ref = np.abs(want).max()
    print(f"features {got.shape}: max |diff| {diff:.3g}, max |torch| {ref:.3g}, "
          f"relative {diff / ref:.3g} (tolerance {TOL})")
    if not diff <= TOL * ref:
        print("FAILED")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
