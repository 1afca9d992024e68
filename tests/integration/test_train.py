#!/usr/bin/python3
"""A whole SwAV run on CPU through `swav train`: assigner, 2 loaders, trainer
ranks, real processes and sockets, on 160 Fashion-MNIST images.

Checks (issue "Trainer and launcher"):
  run A   3 epochs, queue from epoch 1: exit 0; the loss of the last epoch is
          below the first's; checkpoint.safetensors and ckp-N files appear;
          every image of each rank's shard is trained on exactly once per
          epoch (--trace_images), and the ranks' shards do not overlap.
  run B   the same flags in another folder: the same loss at every step
          (determinism; compared exactly, the CPU backend is deterministic).
  run C   the trainer is SIGKILLed mid-epoch 2; the launcher restarts the
          trainer group, which resumes from the epoch-1 checkpoint: the final
          parameters equal run A's (max abs difference <= 1e-5).
  run D   a loader and the assigner are SIGKILLed during the run: it still
          finishes, and the logs name what happened.
  run E   run A's latest checkpoint is overwritten with garbage and the run is
          started again: it falls back to the previous checkpoint, says so,
          and ends with run A's parameters.
Usage: test_train.py BUILD_DIR"""
import json, os, signal, struct, subprocess, sys, tempfile, time

build = sys.argv[1]
swav = os.path.join(build, "launcher", "swav")
fails = []

def check(cond, what):
    if not cond:
        print("FAIL:", what)
        fails.append(what)

def read_safetensors(path):
    import numpy as np
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64}[v["dtype"]]
        out[k] = np.frombuffer(data[a:b], dt).reshape(v["shape"])
    return out, hdr.get("__metadata__", {})

def losses(dump):
    with open(os.path.join(dump, "train.jsonl")) as f:
        return [(j["step"], j["loss"]) for j in map(json.loads, f)]

tmp = tempfile.mkdtemp(prefix="swav-it-")
data = os.path.join(tmp, "fm")
r = subprocess.run([swav, "prepare", "fashion-mnist", data, "--limit", "160"],
                   capture_output=True, text=True)
check(r.returncode == 0, "prepare: " + r.stderr)

EPOCHS, BS, NPROC = 3, 16, 2
flags = ["--data_path", os.path.join(data, "train"), "--arch", "resnet18", "--width", "8",
         "--small_stem", "true", "--nmb_crops", "2", "2", "--size_crops", "16", "8",
         "--min_scale_crops", "0.3", "0.1", "--max_scale_crops", "1", "0.3",
         "--batch_size", str(BS), "--epochs", str(EPOCHS), "--warmup_epochs", "0",
         "--base_lr", "0.6", "--final_lr", "0.006", "--nmb_prototypes", "20",
         "--feat_dim", "16", "--hidden_mlp", "32", "--queue_length", "64",
         "--epoch_queue_starts", "1", "--freeze_prototypes_niters", "2",
         "--checkpoint_freq", "1", "--threads", "1", "--nproc", str(NPROC),
         "--loaders", "2", "--workers", "1"]
steps_per_epoch = (160 // NPROC) // BS

def run(name, extra=(), killer=None):
    dump = os.path.join(tmp, name)
    cmd = [swav, "train", *flags, "--dump_path", dump,
           "--trace_images", os.path.join(tmp, name + ".trace"), *extra]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if killer:
        killer(dump)
    out, _ = p.communicate(timeout=600)
    return p.returncode, out, dump

def steps_done(dump):
    try:
        return len(losses(dump))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0

def wait_steps(dump, n, limit=300):
    t = time.time()
    while steps_done(dump) < n and time.time() - t < limit:
        time.sleep(0.2)

def pid_of(dump, name):
    with open(os.path.join(dump, "status.json")) as f:
        for p in json.load(f)["processes"]:
            if p["name"] == name:
                return p["pid"]
    return 0

# ---- A: the run, its checkpoints and its images --------------------------------
rc, out, A = run("A")
check(rc == 0, f"run A exit {rc}:\n{out[-3000:]}")
la = losses(A)
check(len(la) == EPOCHS * steps_per_epoch, f"run A: {len(la)} steps logged")
first = [l for s, l in la[:steps_per_epoch]]
last = [l for s, l in la[-steps_per_epoch:]]
check(sum(last) / len(last) < sum(first) / len(first),
      f"loss did not fall: first epoch {sum(first)/len(first):.4f}, last {sum(last)/len(last):.4f}")
for f in ["checkpoint.safetensors"] + [f"ckp-{e}.safetensors" for e in range(EPOCHS)]:
    check(os.path.exists(os.path.join(A, f)), f"run A: {f} missing")
seen = {}
for line in open(os.path.join(tmp, "A.trace")):
    e, it, *idx = map(int, line.split())
    seen.setdefault(e, []).extend(idx)
for e in range(EPOCHS):
    imgs = seen.get(e, [])
    check(len(imgs) == len(set(imgs)) == NPROC * steps_per_epoch * BS,
          f"epoch {e}: {len(imgs)} images trained, {len(set(imgs))} distinct")
print(f"A: {len(la)} steps, loss {sum(first)/len(first):.4f} -> {sum(last)/len(last):.4f}")

# ---- B: determinism -------------------------------------------------------------
rc, out, B = run("B")
check(rc == 0, f"run B exit {rc}")
check(losses(B) == la, "run B's losses differ from run A's")

# ---- C: SIGKILL a trainer mid-epoch, the group resumes from the checkpoint ----
def kill_trainer(dump):
    wait_steps(dump, steps_per_epoch + steps_per_epoch // 2)
    pid = pid_of(dump, "trainer 1")
    if pid:
        os.kill(pid, signal.SIGKILL)
    else:
        check(False, "run C: no trainer 1 to kill")
rc, out, C = run("C", killer=kill_trainer)
check(rc == 0, f"run C exit {rc}:\n{out[-3000:]}")
check("restarting" in out, "run C: the launcher did not say it restarted the trainers")
pa, _ = read_safetensors(os.path.join(A, "checkpoint.safetensors"))
pc, mc = read_safetensors(os.path.join(C, "checkpoint.safetensors"))
worst = max(float(abs(pa[k].astype("float64") - pc[k]).max()) for k in pa)
check(set(pa) == set(pc) and worst <= 1e-5, f"run C: parameters differ from run A's by {worst}")
print(f"C: resumed run's parameters within {worst:.2e} of the uninterrupted run's")

# ---- D: kill the assigner and a loader; the run goes on -------------------------
# A longer run (8 epochs), so that the kills land mid-run on a fast machine too.
EPOCHS_D = 8
def kill_others(dump):
    wait_steps(dump, steps_per_epoch + 1)
    for name in ("assigner", "loader 0"):
        pid = pid_of(dump, name)
        check(pid != 0, f"run D: no {name} to kill")
        if pid:
            os.kill(pid, signal.SIGKILL)
    check(steps_done(dump) < EPOCHS_D * steps_per_epoch, "run D: the run ended before the kills")
rc, out, D = run("D", extra=("--epochs", str(EPOCHS_D), "--codes_timeout_ms", "5000"),
                 killer=kill_others)
check(rc == 0, f"run D exit {rc}:\n{out[-3000:]}")
check("loader 0 ended: killed by signal 9" in out, "run D: the loader's death is not named")
check("assigner ended: killed by signal 9" in out, "run D: the assigner's death is not named")
check(steps_done(D) >= EPOCHS_D * steps_per_epoch, "run D: not every step was trained")

# ---- E: a damaged latest checkpoint: fall back to the previous one ------------
# Run A's last checkpoint is overwritten with garbage; `swav train` again in
# the same folder falls back to checkpoint.prev (end of epoch 2), says so,
# trains the last epoch again and ends with run A's parameters.
with open(os.path.join(A, "checkpoint.safetensors"), "wb") as f:
    f.write(b"this is not a checkpoint" * 10)
rc, out, _ = run("A")
log = open(os.path.join(A, "logs", "trainer-0.log")).read()
check(rc == 0, f"run E exit {rc}:\n{out[-3000:]}")
check("falling back to the previous checkpoint" in log, "run E: no fallback message")
pe, _ = read_safetensors(os.path.join(A, "checkpoint.safetensors"))
worst = max(float(abs(pa[k].astype("float64") - pe[k]).max()) for k in pa)
check(worst <= 1e-5, f"run E: parameters after the fallback differ by {worst}")
print(f"E: fell back to the previous checkpoint; final parameters within {worst:.2e}")

if fails:
    print(f"{len(fails)} checks failed; logs in {tmp}")
    sys.exit(1)
subprocess.run(["rm", "-rf", tmp])
print("test_train: ok")
