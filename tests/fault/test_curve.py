#!/usr/bin/python3
"""CURVE on the TCP links of a tiny run (issue 9): `swav keygen` writes the
keys (secret 0600, public 0644, never overwritten); swav-assigner and
swav-trainer bind tcp://127.0.0.1 ports as CURVE servers with allow-lists,
the trainer talks CURVE to the assigner, and:
  - a trainer whose key is not in the assigner's --curve_allow is refused
    (the assigner logs it, the trainer gets no welcome);
  - a loader whose key is not in the trainer's --curve_allow is refused:
    its log says so, the trainer's log counts the refusal, no step is trained;
  - a loader without CURVE fails the handshake (its log names it);
  - a loader with the right keys makes batches flow: the run finishes, every
    image once per epoch (--trace_images).
Usage: test_curve.py BUILD_DIR"""
import os, re, stat, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinyrun as T

bins = T.Bins(sys.argv[1])
check = T.check

tmp = tempfile.mkdtemp(prefix="swav-curve-")
keys = os.path.join(tmp, "keys")
r = subprocess.run([bins.swav, "keygen", keys, "assigner", "trainer", "loader", "intruder"],
                   capture_output=True, text=True)
check(r.returncode == 0, "keygen: " + r.stderr)
for n in ("assigner", "trainer", "loader", "intruder"):
    k, p = os.path.join(keys, n + ".key"), os.path.join(keys, n + ".pub")
    check(stat.S_IMODE(os.stat(k).st_mode) == 0o600, f"{k} is not mode 0600")
    check(stat.S_IMODE(os.stat(p).st_mode) == 0o644, f"{p} is not mode 0644")
    check(T.read(p).startswith("public ") and "secret" not in T.read(p), f"{p}: not a public key")
check(stat.S_IMODE(os.stat(keys).st_mode) == 0o700, "key folder is not mode 0700")
before = T.read(os.path.join(keys, "loader.key"))
r = subprocess.run([bins.swav, "keygen", keys, "loader"], capture_output=True, text=True)
check(r.returncode == 0 and T.read(os.path.join(keys, "loader.key")) == before,
      "a second keygen changed an existing key")
r = subprocess.run([bins.swav, "keygen", keys, "../x"], capture_output=True, text=True)
check(r.returncode != 0, "keygen accepted a name with a slash")

train = T.prepare(bins, tmp)
EPOCHS = 2
dump = os.path.join(tmp, "run")
os.makedirs(dump)
pa, pl = T.free_port(), T.free_port()
K = lambda n: os.path.join(keys, n)
procs = []
try:
    assigner = T.start([bins.assigner, f"--endpoint=tcp://127.0.0.1:{pa}", "--run=curve",
                        "--threads=1", "--curve_secret", K("assigner.key"),
                        "--curve_allow", K("trainer.pub")], os.path.join(tmp, "assigner.log"))
    procs.append(assigner)
    # a trainer with a key the assigner does not allow: refused, both say so
    bad_log = os.path.join(tmp, "bad-trainer.log")
    bad = T.start([bins.trainer, *T.TINY, "--epochs=1", "--rank=0", "--world_size=1",
                   "--run=curve", "--data_path", train, "--dump_path", os.path.join(tmp, "bad"),
                   f"--assigner=tcp://127.0.0.1:{pa}", "--assigner_public", K("assigner.pub"),
                   "--hello_timeout_ms=1000", f"--loader_bind=tcp://127.0.0.1:{T.free_port()}",
                   "--curve_secret", K("intruder.key")], bad_log)
    procs.append(bad)
    alog = os.path.join(tmp, "assigner.log")
    check(T.wait_for(lambda: "CURVE key not in --curve_allow" in T.read(alog), 30),
          "the assigner did not log the refused trainer:\n" + T.read(alog)[-2000:])
    check(T.wait_for(lambda: "no welcome from the assigner" in T.read(bad_log), 30),
          "the refused trainer did not say it got no welcome:\n" + T.read(bad_log)[-2000:])
    T.stop([bad])
    trace = os.path.join(tmp, "trace")
    trainer = T.start([bins.trainer, *T.TINY, "--epochs", str(EPOCHS), "--rank=0",
                       "--world_size=1", "--run=curve", "--data_path", train,
                       "--dump_path", dump, "--trace_images", trace,
                       f"--assigner=tcp://127.0.0.1:{pa}", "--assigner_public", K("assigner.pub"),
                       f"--loader_bind=tcp://127.0.0.1:{pl}", "--curve_secret", K("trainer.key"),
                       "--curve_allow", K("loader.pub")], os.path.join(tmp, "trainer.log"))
    procs.append(trainer)
    loader_cmd = [bins.loader, f"--connect=tcp://127.0.0.1:{pl}", "--data_path", train,
                  "--dump_path", dump, "--run=curve", "--workers=1"]
    intruder_log = os.path.join(tmp, "intruder.log")
    intruder = T.start([*loader_cmd, "--loader_id=intruder", "--curve_secret", K("intruder.key"),
                        "--curve_server_public", K("trainer.pub")], intruder_log)
    plain_log = os.path.join(tmp, "plain.log")
    plain = T.start([*loader_cmd, "--loader_id=plain"], plain_log)
    procs += [intruder, plain]
    trainer_log = os.path.join(tmp, "trainer.log")
    check(T.wait_for(lambda: "refused this loader's CURVE key" in T.read(intruder_log), 60),
          "the refused loader did not log its refusal:\n" + T.read(intruder_log)[-2000:])
    check(T.wait_for(lambda: "CURVE key not in --curve_allow" in T.read(trainer_log), 20),
          "the trainer did not log the refusal:\n" + T.read(trainer_log)[-2000:])
    check(T.wait_for(lambda: re.search(r"handshake with \S+ failed", T.read(plain_log)), 20),
          "the loader without CURVE did not log a failed handshake:\n" + T.read(plain_log)[-2000:])
    time.sleep(1.0)
    check(T.steps_done(dump) == 0, "steps were trained without a good loader")
    T.stop([intruder, plain])
    good = T.start([*loader_cmd, "--loader_id=good", "--curve_secret", K("loader.key"),
                    "--curve_server_public", K("trainer.pub")], os.path.join(tmp, "good.log"))
    procs.append(good)
    rc = T.exit_code(trainer, 240)
    check(rc == 0, f"trainer exit {rc}:\n" + T.read(trainer_log)[-3000:])
    for p in T.trace_check(trace, EPOCHS, (160 // T.BS) * T.BS):
        check(False, p)
    print(f"curve: {T.steps_done(dump)} steps trained over CURVE; intruder refused")
finally:
    T.stop(procs)

T.finish("test_curve", tmp)
