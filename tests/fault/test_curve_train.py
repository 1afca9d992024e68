#!/usr/bin/python3
"""CURVE on every link of a `swav train` run (issue 9): `swav train
--curve_keys KEYS` with --nproc 2 and --eval-data, so the gradient ring, the
checkpoint announcements (--pub / --sub) and the evaluator's loader endpoint
are CURVE too, besides the assigner and the trainers' loader endpoints.
While the run goes, tests/fault/curve_probe connects to its ipc:// sockets:
  - with a key of the same `swav keygen` that no role allows (intruder.key):
    refused (ZAP status 400) on the ring (trainer 1's ring-1), on --pub, on
    the evaluator's loader endpoint, on the assigner and on a trainer's loader
    endpoint; the role that refused names the intruder's public key (ring,
    --pub, evaluator) or counts the refusal (assigner, trainer loader
    endpoint) in its log;
  - without CURVE: the handshake fails on every one of those endpoints (no
    plain link is left);
  - with the trainer keypair on --pub (the evaluator's key): let in, so the
    refusals are the keys', not the probe's.
Then the run must finish (exit 0) with every image once per epoch on the
two ranks (--trace_images), knn and linear records of the last checkpoint in
eval.jsonl, and the evaluator's log showing the CURVE --sub handshake and the
announcements that came through it.
Usage: test_curve_train.py BUILD_DIR CURVE_PROBE"""
import os, re, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinyrun as T

bins = T.Bins(sys.argv[1])
probe_bin = sys.argv[2]
check = T.check

EPOCHS = 40  # ~20 s on 2 loaded cores: the probes take about a second
NPROC = 2

tmp = tempfile.mkdtemp(prefix="swav-curvetrain-")
keys = os.path.join(tmp, "keys")
r = subprocess.run([bins.swav, "keygen", keys, "assigner", "trainer", "loader", "intruder"],
                   capture_output=True, text=True)
check(r.returncode == 0, "keygen: " + r.stderr)
K = lambda n: os.path.join(keys, n)
intruder_pub = T.read(K("intruder.pub")).split()[1]

data = T.prepare_data(bins, tmp, "fm", 160)
train = os.path.join(data, "train")
dump = os.path.join(tmp, "run")
out = os.path.join(tmp, "swav.out")
trace = os.path.join(tmp, "trace")

# a missing key stops the launcher at once, naming the file
r = subprocess.run([bins.swav, "train", "--data_path", train, "--dump_path", dump,
                    "--curve_keys", os.path.join(tmp, "nokeys")], capture_output=True, text=True)
check(r.returncode == 2 and "swav keygen" in r.stderr,
      f"--curve_keys of a missing folder: exit {r.returncode}: {r.stderr}")


def probe(kind, ep, server_pub, client_kp):
    r = subprocess.run([probe_bin, kind, ep, server_pub, client_kp, "10"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return "probe failed: " + r.stderr.strip()
    return r.stdout.strip()


run = T.swav_train(bins, train, dump, EPOCHS, out, trace=trace, nproc=NPROC, loaders=1,
                   extra=["--eval-data", data, "--eval_size", "16", "--eval_resize", "16",
                          "--curve_keys", keys])
try:
    check(T.wait_for(lambda: re.search(r"sockets in (\S+), CURVE on every link", T.read(out)), 30),
          "swav train did not say CURVE is on:\n" + T.read(out)[-2000:])
    sock = re.search(r"sockets in (\S+), CURVE on every link", T.read(out)).group(1)
    names = ["assigner", "loader-0", "loader-1", "ring-0", "ring-1", "checkpoints", "eval-loader"]
    check(T.wait_for(lambda: all(os.path.exists(os.path.join(sock, n)) for n in names), 60),
          f"not every endpoint was bound in {sock}: {os.listdir(sock) if os.path.isdir(sock) else '-'}")
    ep = {n: f"ipc://{sock}/{n}" for n in names}
    kind = {"assigner": "dealer", "loader-0": "dealer", "loader-1": "dealer", "ring-0": "push",
            "ring-1": "push", "checkpoints": "sub", "eval-loader": "dealer"}
    server = {"assigner": K("assigner.pub")}
    results = {}
    for n in names:
        results[n] = (probe(kind[n], ep[n], server.get(n, K("trainer.pub")), K("intruder.key")),
                      probe(kind[n], ep[n], "-", "-"))
    good = probe("sub", ep["checkpoints"], K("trainer.pub"), K("trainer.key"))
    check(run.poll() is None, "the run ended before the probes were done (raise EPOCHS)")
    for n, (intruder, plain) in results.items():
        print(f"  {n}: intruder key -> {intruder}; no CURVE -> {plain}")
        check(intruder == "refused 400", f"{n}: a client with an unknown key got '{intruder}'")
        check(plain.startswith("protocol-error") or plain == "closed",
              f"{n}: a client without CURVE got '{plain}'")
    print(f"  checkpoints: the evaluator's (trainer) key -> {good}")
    check(good == "ok", f"--pub refused the trainer keypair: '{good}'")

    # the roles that refused say so; the new links name the key
    logs = {"ring": ("trainer-1", rf"gradient ring \(rank 1, {re.escape(ep['ring-1'])}\): refused "
                     rf"a connection from .*: CURVE key {re.escape(intruder_pub)} is not in "
                     rf"{re.escape(K('trainer.key'))}"),
            "ring-0": ("trainer-0", rf"gradient ring \(rank 0, {re.escape(ep['ring-0'])}\): "
                       rf"refused a connection from .*: CURVE key {re.escape(intruder_pub)}"),
            "pub": ("trainer-0", rf"--pub {re.escape(ep['checkpoints'])}: refused a connection "
                    rf"from .*: CURVE key {re.escape(intruder_pub)} is not in "
                    rf"{re.escape(K('trainer.pub'))}"),
            "evaluator": ("evaluator", rf"--loader_bind {re.escape(ep['eval-loader'])}: refused a "
                          rf"connection from .*: CURVE key {re.escape(intruder_pub)} is not in "
                          rf"{re.escape(K('loader.pub'))}"),
            "assigner": ("assigner", r"refused \d+ connection\(s\): CURVE key not in "
                         rf"--curve_allow {re.escape(K('trainer.pub'))}"),
            "trainer loaders": ("trainer-0", rf"refused \d+ connection\(s\) on "
                                rf"{re.escape(ep['loader-0'])}: CURVE key not in --curve_allow")}
    for what, (role, pattern) in logs.items():
        check(T.wait_for(lambda: re.search(pattern, T.role_log(dump, role)), 60),
              f"{what}: {role}.log does not log the refused intruder:\n" +
              T.role_log(dump, role)[-2000:])
    T.show(T.role_log(dump, "trainer-0") + T.role_log(dump, "trainer-1") +
           T.role_log(dump, "evaluator"), "refused a connection")

    rc = T.exit_code(run, 240)
    check(rc == 0, f"swav train exit {rc}:\n" + T.read(out)[-3000:])
finally:
    T.stop([run])

for problem in T.trace_check(trace, EPOCHS, (160 // (T.BS * NPROC)) * T.BS * NPROC):
    check(False, problem)
steps = T.steps_done(dump)
check(steps == EPOCHS * 160 // (T.BS * NPROC), f"{steps} steps in train.jsonl")
last = EPOCHS * 160 // (T.BS * NPROC)
probes = {r["probe"] for r in T.records(dump) if not r["baseline"] and r["step"] == last}
check({"knn", "linear"} <= probes, f"eval.jsonl records of the last checkpoint: {sorted(probes)}")
elog = T.role_log(dump, "evaluator")
check("(CURVE)" in elog and f"--sub ipc://{sock}/checkpoints: connected (CURVE)" in elog,
      "the evaluator's log does not show its CURVE endpoints:\n" + elog[-2000:])
check(re.search(r"announced: \S+ \(epoch \d+, step \d+\)", elog),
      "no announcement reached the evaluator over the CURVE --sub:\n" + elog[-2000:])
for role in ("trainer-0", "trainer-1", "evaluator", "loader-0", "assigner"):
    errors = [l for l in T.role_log(dump, role).splitlines() if " ERROR " in l]
    check(not errors, f"{role}.log has errors: {errors[:3]}")
print(f"curve_train: {steps} steps on {NPROC} ranks and the evaluation over CURVE; "
      f"intruders refused on {len(results)} endpoints")
T.finish("test_curve_train", tmp)
