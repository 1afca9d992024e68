#!/usr/bin/python3
"""Determinism across loader processes (suite 'integration').

The same orders (2 epochs of a 60-image folder, batch 8, crops 2x32+2x16,
shuffled by the seed) go through swav-loadcount and
  A: one swav-loader (2 workers),
  B: three swav-loader processes (1 worker each), all of them serving;
the per-step hashes of every frame (crops of each group, labels) and the
per-image notes must be identical.  One image is corrupted after indexing,
so the substitution path (a deterministic other image, noted and counted)
is part of what must agree.  Real processes, real ZeroMQ over ipc://.

usage: test_determinism.py SWAV_LOADER SWAV_LOADCOUNT"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_loader_proc_common as tc  # noqa: E402

LOADER, LOADCOUNT = sys.argv[1], sys.argv[2]
check, fails = tc.check, tc.fails


def run(tmp, name, n_loaders, workers):
    ep = "ipc://%s/%s.sock" % (tmp, name)
    hashes = os.path.join(tmp, name + ".txt")
    lc = tc.start_loadcount(LOADCOUNT, ep, DATA, DUMP, hashes, os.path.join(tmp, name + "_lc.log"),
                            ["--epochs", "2", "--batch_size", "8", "--window", "8",
                             "--seed", "1234", "--wait_loaders", str(n_loaders)])
    loaders = [tc.start_loader(LOADER, ep, DATA, DUMP, os.path.join(tmp, "%s_l%d.log" % (name, i)),
                               workers=workers) for i in range(n_loaders)]
    rc, out = lc.wait(120)
    check(rc == 0, "%s: loadcount exit %s\n%s\n%s" % (name, rc, out, lc.log()[-2000:]))
    codes = tc.stop(loaders)
    check(codes == [0] * n_loaders, "%s: loaders' exit codes %s (SIGTERM must give 0)" % (name, codes))
    served = []
    for l in loaders:
        m = re.search(r"served (\d+) images", l.log())
        served.append(int(m.group(1)) if m else -1)
    return tc.read_lines(hashes), out, served


with tempfile.TemporaryDirectory() as tmp:
    DATA = os.path.join(tmp, "data")
    DUMP = os.path.join(tmp, "dump")
    paths = tc.make_dataset(DATA)
    # Index once (cache in DUMP), then break one indexed file: run-time failure.
    r = subprocess.run([LOADER, "--data_path", DATA, "--dump_path", DUMP, "--index_only"],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 0 and "1 file left out" in r.stderr,
          "index_only: rc %d, stderr %s" % (r.returncode, r.stderr))
    tc.corrupt_keep_stat(paths[25])

    a, out_a, served_a = run(tmp, "one", 1, 2)
    b, out_b, served_b = run(tmp, "three", 3, 1)
    print("one loader:", out_a.strip().splitlines()[0] if out_a.strip() else "?")
    print("three loaders:", out_b.strip().splitlines()[0] if out_b.strip() else "?", "served", served_b)
    check(len(a) == 16, "16 steps (2 epochs x 60 images / 8, last batch 4): got %d" % len(a))
    check(a == b, "batches differ between 1 and 3 loaders:\n" +
          "\n".join("  %s\n  %s" % (x, y) for x, y in zip(a, b) if x != y))
    check(all(s > 0 for s in served_b), "each of the 3 loaders served images: %s" % served_b)
    check(sum(served_b) == 120 and served_a == [120], "served %s / %s" % (served_a, served_b))
    # The corrupted image: substituted once per epoch, noted, counted.
    notes = [l for l in a if "notes 0" not in l]
    check(len(notes) == 2 and all(":1]" in l for l in notes), "substitution notes: %s" % notes)
    for out in (out_a, out_b):
        check("substituted 2," in out, "loadcount counts 2 substitutions: %s" % out)
    # The first epoch and the second differ (the epoch keys the crops).
    check(len(set(l.split(" g0 ")[1] for l in a)) == len(a), "every step has its own crops")

print("test_determinism: %d failures" % len(fails))
sys.exit(1 if fails else 0)
