#!/usr/bin/python3
"""Loader faults (suite 'fault'): nothing lost, nothing twice, step order kept.

Reference: 2 epochs (60 images, batch 4, 30 steps) through one swav-loader.
Fault run, with slow loaders (--delay_ms 30 per image) so that the epoch
takes a few seconds and each loader holds orders most of the time:
  - loaders L1 and L2 serve; after 5 steps L1 is killed with SIGKILL (its
    orders in hand are lost: the consumer must re-issue them);
  - after 10 steps L3 starts; once it is connected L2 gets SIGTERM and must
    finish the orders in hand and exit 0;
  - L3 serves the rest.
The consumer must receive every step, in order, with batches byte-identical
to the reference (so every image of each epoch exactly once).  Then the
consumer restarts on the same endpoint: L3 reconnects and serves a new epoch.

usage: test_loader_fault.py SWAV_LOADER SWAV_LOADCOUNT"""
import os
import re
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_loader_proc_common as tc  # noqa: E402

LOADER, LOADCOUNT = sys.argv[1], sys.argv[2]
check, fails = tc.check, tc.fails


ARGS = ["--epochs", "2", "--batch_size", "4", "--window", "4", "--seed", "99",
        "--silence_ms", "800"]

with tempfile.TemporaryDirectory() as tmp:
    DATA = os.path.join(tmp, "data")
    DUMP = os.path.join(tmp, "dump")
    tc.make_dataset(DATA)

    # Reference run.
    ep = "ipc://%s/ref.sock" % tmp
    ref_h = os.path.join(tmp, "ref.txt")
    lc = tc.start_loadcount(LOADCOUNT, ep, DATA, DUMP, ref_h, os.path.join(tmp, "ref_lc.log"),
                            ARGS + ["--wait_loaders", "1"])
    l0 = tc.start_loader(LOADER, ep, DATA, DUMP, os.path.join(tmp, "ref_l.log"), workers=2)
    rc, out = lc.wait(120)
    check(rc == 0, "reference run: rc %s %s" % (rc, lc.log()[-1500:]))
    check(tc.stop([l0]) == [0], "reference loader exit code")
    ref = tc.read_lines(ref_h)
    check(len(ref) == 30, "reference has 30 steps: %d" % len(ref))

    # Fault run.
    ep = "ipc://%s/fault.sock" % tmp
    h = os.path.join(tmp, "fault.txt")
    lc = tc.start_loadcount(LOADCOUNT, ep, DATA, DUMP, h, os.path.join(tmp, "fault_lc.log"),
                            ARGS + ["--wait_loaders", "2"])
    slow = ["--delay_ms", "30"]
    l1 = tc.start_loader(LOADER, ep, DATA, DUMP, os.path.join(tmp, "l1.log"), extra=slow)
    l2 = tc.start_loader(LOADER, ep, DATA, DUMP, os.path.join(tmp, "l2.log"), extra=slow)
    ok = tc.wait_for(lambda: len(tc.read_lines(h)) >= 5, 60, "5 steps")
    check(ok and lc.alive(), "consumer still running when L1 is killed")
    l1.signal(signal.SIGKILL)
    l1.wait(10)
    ok = tc.wait_for(lambda: len(tc.read_lines(h)) >= 10, 60, "10 steps")
    check(ok and lc.alive(), "consumer still running when L3 starts")
    l3 = tc.start_loader(LOADER, ep, DATA, DUMP, os.path.join(tmp, "l3.log"), extra=slow)
    ok = tc.wait_for(lambda: "connected to" in l3.log(), 30, "L3 connected")
    check(ok and lc.alive(), "consumer still running when L2 is stopped")
    n_at_term = len(tc.read_lines(h))
    check(tc.stop([l2]) == [0], "L2 exits 0 on SIGTERM after finishing its orders")
    rc, out = lc.wait(120)
    print("fault run:", out.strip())
    check(rc == 0, "fault run: loadcount rc %s\n%s" % (rc, lc.log()[-3000:]))
    got = tc.read_lines(h)
    check(got == ref, "fault run differs from the reference:\n" +
          "\n".join("  got  %s\n  want %s" % (x, y) for x, y in zip(got, ref) if x != y) +
          "\n  (%d vs %d steps)" % (len(got), len(ref)))
    check(n_at_term < 30, "L2 was stopped mid-epoch (%d steps done)" % n_at_term)
    m = re.search(r"reissued (\d+)", out)
    check(m is not None and int(m.group(1)) >= 1,
          "the orders L1 held when it was killed were re-issued: %s" % out)
    print("L2:", [l for l in l2.log().splitlines() if "stopping" in l])

    # The consumer restarts on the same endpoint: L3 (still running) reconnects.
    h2 = os.path.join(tmp, "again.txt")
    lc2 = tc.start_loadcount(LOADCOUNT, ep, DATA, DUMP, h2, os.path.join(tmp, "again_lc.log"),
                             ARGS[:1] + ["1"] + ARGS[2:] + ["--wait_loaders", "1"])
    rc, out = lc2.wait(120)
    check(rc == 0, "restarted consumer: rc %s %s" % (rc, lc2.log()[-1500:]))
    check(tc.read_lines(h2) == ref[:15], "restarted consumer gets the reference epoch 0")
    codes = tc.stop([l3])
    check(codes == [0], "L3 exit code %s" % codes)
    served = re.search(r"served (\d+) images", l3.log())
    check(served is not None and int(served.group(1)) >= 60, "L3 served the rest and the new epoch")

print("test_loader_fault: %d failures" % len(fails))
sys.exit(1 if fails else 0)
