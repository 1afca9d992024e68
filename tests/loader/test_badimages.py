#!/usr/bin/env python3
"""Decoding over a corpus of good and bad files generated here (PIL + raw
bytes): nothing crashes, every bad file gets its own status, every good file
decodes to PIL's pixels (Image.open(f).convert("RGB"), the reference's
loader).

Usage: test_badimages.py LOADER_OPS

Tolerance for good files: PIL and we both use Debian's libjpeg-turbo with the
accurate integer IDCT and fancy upsampling, and libpng, so the pixels are
expected identical: mean |d| <= 0.01 levels and max |d| <= 1 (2 for CMYK).
Under AddressSanitizer (meson setup -Db_sanitize=address,undefined) a memory
error aborts loader-ops, which this test reports as a crash."""
import io
import atexit
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
from PIL import Image

ops_bin = sys.argv[1]
tmp = tempfile.mkdtemp(prefix="swav-badimages-")
atexit.register(shutil.rmtree, tmp, ignore_errors=True)
failures = []
rng = np.random.default_rng(5)


def photo(w, h):
    small = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    a = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    a += rng.normal(0, 10, size=a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def enc(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def png_chunk(typ, data):
    return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", zlib.crc32(typ + data))


def png_with_size(w, h):
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_with_size(data, w, h):
    b = bytearray(data)
    i = 2
    while i < len(b):
        assert b[i] == 0xFF
        marker = b[i + 1]
        seglen = (b[i + 2] << 8) | b[i + 3]
        if marker in (0xC0, 0xC1, 0xC2):
            b[i + 5:i + 7] = struct.pack(">H", h)
            b[i + 7:i + 9] = struct.pack(">H", w)
            return bytes(b)
        i += 2 + seglen
    raise RuntimeError("no SOF")


base = photo(203, 151)
good = {
    "baseline_420.jpg": enc(base, "JPEG", quality=90),
    "baseline_444.jpg": enc(base, "JPEG", quality=95, subsampling=0),
    "baseline_422.jpg": enc(base, "JPEG", quality=75, subsampling=1),
    "progressive.jpg": enc(base, "JPEG", quality=90, progressive=True),
    "odd_size_1x1.jpg": enc(photo(1, 1).resize((1, 1)), "JPEG"),
    "odd_size_17x3.jpg": enc(photo(17, 3), "JPEG", quality=80),
    "grayscale.jpg": enc(base.convert("L"), "JPEG", quality=90),
    "cmyk.jpg": enc(base.convert("CMYK"), "JPEG", quality=90),
    "png_named.jpg": enc(base, "PNG"),
    "png_rgba.JPEG": enc(base.convert("RGBA"), "PNG"),
    "png_gray.jpg": enc(base.convert("L"), "PNG"),
    "png_gray_alpha.jpg": enc(base.convert("LA"), "PNG"),
    "png_palette.jpg": enc(base.convert("P"), "PNG"),
    "png_1bit.png": enc(base.convert("1"), "PNG"),
    "jpeg_named.png": enc(base, "JPEG", quality=85),
    # 16-bit gray: PIL's mode "I", convert("RGB") clamps to 255
    "png_gray16.png": enc(Image.fromarray((np.arange(203 * 151).reshape(151, 203) % 700)
                                          .astype(np.uint16)), "PNG"),
    "png_rgb48.png": None,  # filled below
}
# 16-bit RGB (PIL reads "RGB;16B": the high bytes), written by hand
_rgb48 = (np.arange(20 * 13 * 3).reshape(13, 20, 3) * 97 % 65536).astype(">u2")
_raw = b"".join(b"\0" + _rgb48[y].tobytes() for y in range(13))
good["png_rgb48.png"] = (b"\x89PNG\r\n\x1a\n" +
                         png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20, 13, 16, 2, 0, 0, 0)) +
                         png_chunk(b"IDAT", zlib.compress(_raw)) + png_chunk(b"IEND", b""))
jpg = good["baseline_420.jpg"]
pngb = good["png_named.jpg"]
flipped = bytearray(jpg)
for k in range(40):
    flipped[len(flipped) // 2 + k * 7] ^= 0x5A
bad = {
    # name: (bytes, allowed statuses)
    "zero_bytes.jpg": (b"", {"empty"}),
    "text.jpg": (b"this is not an image\n" * 20, {"format"}),
    "random.jpg": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), {"format"}),
    "elf_binary.jpg": (open(sys.executable, "rb").read(4096), {"format"}),
    "gzip.jpg": (zlib.compress(b"x" * 1000), {"format"}),
    "jpeg_magic_random.jpg": (b"\xff\xd8\xff" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
                              {"corrupt", "truncated"}),
    "jpeg_truncated_half.jpg": (jpg[: len(jpg) // 2], {"truncated"}),
    "jpeg_truncated_header.jpg": (jpg[:100], {"truncated", "corrupt"}),
    "jpeg_soi_only.jpg": (jpg[:3], {"truncated", "corrupt"}),
    "progressive_truncated.jpg": (good["progressive.jpg"][: len(good["progressive.jpg"]) * 2 // 3],
                                  {"truncated"}),
    "jpeg_huge_header.jpg": (jpeg_with_size(jpg, 65000, 65000), {"too_large"}),
    "png_truncated.png": (pngb[: len(pngb) // 2], {"truncated"}),
    "png_sig_only.png": (pngb[:8], {"truncated"}),
    "png_huge_header.png": (png_with_size(100000, 100000), {"too_large"}),
    "png_over_libpng_limit.png": (png_with_size(2000000, 10), {"corrupt", "too_large"}),
    "png_zero_size.png": (png_with_size(0, 10), {"corrupt"}),
    "png_bad_crc.png": (pngb[:20] + bytes([pngb[20] ^ 1]) + pngb[21:], {"corrupt"}),
    "png_small_idat.png": (png_with_size(50, 50), {"truncated", "corrupt"}),
    # bit flips in the entropy-coded data: any status, but no crash
    "jpeg_bitflips.jpg": (bytes(flipped), {"ok", "corrupt", "truncated"}),
}


def decode(name, data):
    p = os.path.join(tmp, name)
    with open(p, "wb") as f:
        f.write(data)
    out = p + ".rgb"
    r = subprocess.run([ops_bin, "decode", p, out], capture_output=True, text=True)
    if r.returncode != 0:
        failures.append(f"{name}: loader-ops exited {r.returncode} (crash?) {r.stderr[-400:]}")
        return None, None, r.stderr
    code, st, w, h = r.stdout.split()
    arr = None
    if st == "ok":
        arr = np.fromfile(out, dtype=np.uint8).reshape(int(h), int(w), 3)
    return st, arr, r.stderr.strip()


for name, data in good.items():
    st, arr, msg = decode(name, data)
    if st != "ok":
        failures.append(f"{name}: status {st} ({msg})")
        print(f"FAIL {name}: {st} {msg}")
        continue
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if arr.shape != ref.shape:
        failures.append(f"{name}: shape {arr.shape} vs PIL {ref.shape}")
        continue
    d = np.abs(arr.astype(np.int16) - ref.astype(np.int16))
    tol = 2 if "cmyk" in name else 1
    ok = d.mean() <= 0.01 and d.max() <= tol
    print(f"{'ok  ' if ok else 'FAIL'} good {name:28s} {arr.shape[1]}x{arr.shape[0]} mean|d|={d.mean():.4f} max={d.max()}")
    if not ok:
        failures.append(f"{name}: differs from PIL (mean {d.mean():.4f}, max {d.max()})")

for name, (data, allowed) in bad.items():
    st, arr, msg = decode(name, data)
    if st is None:
        continue
    ok = st in allowed
    print(f"{'ok  ' if ok else 'FAIL'} bad  {name:28s} -> {st:10s} {msg[:90]}")
    if not ok:
        failures.append(f"{name}: status {st}, expected one of {sorted(allowed)} ({msg})")

if failures:
    print("FAIL:", *failures, sep="\n  ")
    sys.exit(1)
print(f"{len(good)} good and {len(bad)} bad files: all as expected")
