"""Helpers of the fault tests: a tiny SwAV run with the roles started
directly (no launcher), so a test can put them where it likes (network
namespaces, CURVE keys, signals).  The flags are those of
tests/integration/test_train.py's tiny run on `swav prepare fashion-mnist
DIR --limit 160` data."""
import os, socket, subprocess, time

BS = 16
TINY = ["--arch", "resnet18", "--width", "8", "--small_stem", "true",
        "--nmb_crops", "2", "2", "--size_crops", "16", "8",
        "--min_scale_crops", "0.3", "0.1", "--max_scale_crops", "1", "0.3",
        "--batch_size", str(BS), "--warmup_epochs", "0",
        "--base_lr", "0.6", "--final_lr", "0.006", "--nmb_prototypes", "20",
        "--feat_dim", "16", "--hidden_mlp", "32", "--queue_length", "64",
        "--epoch_queue_starts", "1", "--freeze_prototypes_niters", "2",
        "--checkpoint_freq", "1", "--threads", "1"]


class Bins:
    def __init__(self, build):
        self.swav = os.path.join(build, "launcher", "swav")
        self.loader = os.path.join(build, "loader", "swav-loader")
        self.trainer = os.path.join(build, "trainer", "swav-trainer")
        self.assigner = os.path.join(build, "assigner", "swav-assigner")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def prepare(bins, tmp, limit=160):
    data = os.path.join(tmp, "fm")
    if not os.path.isdir(os.path.join(data, "train")):
        r = subprocess.run([bins.swav, "prepare", "fashion-mnist", data, "--limit", str(limit)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("swav prepare: " + r.stderr)
    return os.path.join(data, "train")


def start(cmd, log, prefix=()):
    """Start cmd (optionally under prefix, e.g. ip netns exec NS), its
    stdout and stderr to the file log."""
    f = open(log, "ab")
    return subprocess.Popen([*prefix, *cmd], stdout=f, stderr=subprocess.STDOUT)


def stop(procs, timeout=10):
    for p in procs:
        if p and p.poll() is None:
            p.terminate()
    t = time.time()
    for p in procs:
        if not p:
            continue
        try:
            p.wait(max(0.1, timeout - (time.time() - t)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def trace_check(trace, epochs, n_images):
    """Every image exactly once per epoch; returns a list of problems."""
    seen = {}
    for line in read(trace).splitlines():
        e, it, *idx = map(int, line.split())
        seen.setdefault(e, []).extend(idx)
    bad = []
    for e in range(epochs):
        imgs = seen.get(e, [])
        if not (len(imgs) == len(set(imgs)) == n_images):
            bad.append(f"epoch {e}: {len(imgs)} images trained, {len(set(imgs))} distinct, "
                       f"want {n_images}")
    return bad


def steps_done(dump):
    return len(read(os.path.join(dump, "train.jsonl")).splitlines())


def wait_for(cond, limit):
    t = time.time()
    while time.time() - t < limit:
        if cond():
            return True
        time.sleep(0.1)
    return cond()
