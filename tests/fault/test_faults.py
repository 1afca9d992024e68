#!/usr/bin/python3
"""Faults during a real tiny `swav train` run (issue 9), each with its
outcome checked:
  - a slow loader (swav-loader --delay_ms, started beside the launcher's
    loaders on the trainer's endpoint) holds its orders: the trainer waits
    and says so (`no batch for N s`), the run goes on;
  - loader 0 is frozen (SIGSTOP) for longer than the trainer's silence limit,
    then thawed (SIGCONT): its orders are re-issued to another loader
    (`loader loader-0 silent for N ms: taking back its K orders`) and it
    comes back (`loader loader-0 is back`);
the run finishes, every image is trained on exactly once per epoch
(--trace_images), and the failures are named in dump_path/logs/trainer-0.log.
Usage: test_faults.py BUILD_DIR"""
import os, re, signal, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinyrun as T

bins = T.Bins(sys.argv[1])
check = T.check

tmp = tempfile.mkdtemp(prefix="swav-faults-")
train = T.prepare(bins, tmp)
EPOCHS = 4
n_img = (160 // T.BS) * T.BS
dump = os.path.join(tmp, "run")
trace = os.path.join(tmp, "trace")
out_path = os.path.join(tmp, "swav.out")
run = T.start([bins.swav, "train", *T.TINY, "--epochs", str(EPOCHS), "--data_path", train,
               "--dump_path", dump, "--trace_images", trace, "--nproc", "1", "--loaders", "2",
               "--workers", "1", "--batch_warn_ms", "1000"], out_path)
tlog = os.path.join(dump, "logs", "trainer-0.log")
extra = []

stopped = 0
try:
    check(T.wait_for(lambda: re.search(r"sockets in (\S+)", T.read(out_path)), 30),
          "swav train did not start:\n" + T.read(out_path))
    sock = re.search(r"sockets in (\S+)", T.read(out_path)).group(1)
    # the slow loader: 200 ms per image, 3.2 s per order of 16
    slow_log = os.path.join(tmp, "slow.log")
    slow = T.start([bins.loader, f"--connect=ipc://{sock}/loader-0", "--data_path", train,
                    "--run=swav", "--workers=1", "--loader_id=slow", "--delay_ms=200"], slow_log)
    extra.append(slow)
    check(T.wait_for(lambda: "no batch for" in T.read(tlog), 60),
          "the trainer did not say it waited for the slow loader:\n" + T.read(tlog)[-2000:])
    check(T.wait_for(lambda: "loader slow connected" in T.read(tlog), 5),
          "the slow loader never connected")
    T.stop([slow], 20)
    print(f"slow loader: stopped at step {T.steps_done(dump)}; " +
          (re.findall(r"no batch for .*", T.read(tlog)) or ["?"])[0])
    # freeze loader 0
    check(T.wait_for(lambda: T.pid_of(dump, "loader 0"), 30), "no loader 0 in status.json")
    stopped = T.pid_of(dump, "loader 0")
    at = T.steps_done(dump)
    os.kill(stopped, signal.SIGSTOP)
    t0 = time.time()
    check(T.wait_for(lambda: "loader loader-0 silent for" in T.read(tlog), 20),
          "the trainer did not notice the frozen loader:\n" + T.read(tlog)[-2000:])
    T.wait_for(lambda: T.steps_done(dump) >= at + 3, 15)
    os.kill(stopped, signal.SIGCONT)
    print(f"loader 0 frozen {time.time() - t0:.1f} s from step {at} to {T.steps_done(dump)}")
    stopped = 0
    check(T.wait_for(lambda: "loader loader-0 is back" in T.read(tlog)
                     or T.read(tlog).count("loader loader-0 connected") >= 2, 30),
          "loader 0 did not come back after SIGCONT")
    rc = T.exit_code(run, 180)
    check(rc == 0, f"swav train exit {rc}:\n" + T.read(out_path)[-3000:])
    for p in T.trace_check(trace, EPOCHS, n_img):
        check(False, p)
    print(f"faults: {T.steps_done(dump)} steps, every image once in each of {EPOCHS} epochs")
finally:
    if stopped:
        os.kill(stopped, signal.SIGCONT)
    T.stop(extra + [run], 30)

T.finish("test_faults", tmp)
