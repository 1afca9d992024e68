"""Helpers of the fault tests: a tiny SwAV run with the roles started
directly (no launcher), so a test can put them where it likes (network
namespaces, CURVE keys, signals), or through `swav train`; and what every
such test does: checks that are counted and reported at the end, the run's
logs, status.json and eval.jsonl.  The flags are those of
tests/integration/test_train.py's tiny run on `swav prepare fashion-mnist
DIR --limit 160` data."""
import json, os, shutil, signal, socket, struct, subprocess, sys, time

BS = 16
TINY = ["--arch", "resnet18", "--width", "8", "--small_stem", "true",
        "--nmb_crops", "2", "2", "--size_crops", "16", "8",
        "--min_scale_crops", "0.3", "0.1", "--max_scale_crops", "1", "0.3",
        "--batch_size", str(BS), "--warmup_epochs", "0",
        "--base_lr", "0.6", "--final_lr", "0.006", "--nmb_prototypes", "20",
        "--feat_dim", "16", "--hidden_mlp", "32", "--queue_length", "64",
        "--epoch_queue_starts", "1", "--freeze_prototypes_niters", "2",
        "--checkpoint_freq", "1", "--threads", "1"]


fails = []


def check(cond, what):
    """A check: a failure is printed at once and counted for finish()."""
    if not cond:
        print("FAIL:", what)
        fails.append(what)
    return cond


def finish(name, tmp, where=None):
    """The end of a test: exit 1 with the number of failed checks and where
    the logs are kept (where, default tmp), else remove tmp and say ok."""
    if fails:
        print(f"{len(fails)} checks failed; logs in {where or tmp}")
        sys.exit(1)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"{name}: ok")


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


def prepare_data(bins, tmp, name, limit):
    """tmp/name with train/ and test/ of `limit` Fashion-MNIST images each
    (swav prepare; kept when there)."""
    data = os.path.join(tmp, name)
    if not os.path.isdir(os.path.join(data, "train")):
        r = subprocess.run([bins.swav, "prepare", "fashion-mnist", data, "--limit", str(limit)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("swav prepare: " + r.stderr)
    return data


def prepare(bins, tmp, limit=160):
    """The tiny run's training images: tmp/fm/train."""
    return os.path.join(prepare_data(bins, tmp, "fm", limit), "train")


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


def exit_code(proc, limit):
    """proc's exit code within limit seconds, None if it is still running."""
    try:
        return proc.wait(limit)
    except subprocess.TimeoutExpired:
        return None


def role_log(dump, role):
    """The log of a role of `swav train` ("trainer-0", "assigner")."""
    return read(os.path.join(dump, "logs", role + ".log"))


def show(text, *keys):
    """Prints the lines of text holding any of keys (what a test looked at)."""
    for line in text.splitlines():
        if any(k in line for k in keys):
            print("    " + line[:240])


def trace_check(trace, epochs, n_images, first=0):
    """Every image exactly once in each epoch first..epochs-1; returns a list
    of problems."""
    seen = {}
    for line in read(trace).splitlines():
        e, it, *idx = map(int, line.split())
        seen.setdefault(e, []).extend(idx)
    bad = []
    for e in range(first, epochs):
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


def swav_train(bins, train, dump, epochs, log, extra=(), trace=None, nproc=1, loaders=2):
    """`swav train` of the tiny model on `train`, its output to the file log."""
    cmd = [bins.swav, "train", *TINY, "--epochs", str(epochs), "--data_path", train,
           "--dump_path", dump, "--nproc", str(nproc), "--loaders", str(loaders),
           "--workers", "1", *extra]
    if trace:
        cmd += ["--trace_images", trace]
    return start(cmd, log)


def status(dump):
    """The processes of `swav train`'s status.json by name ({} when none)."""
    try:
        with open(os.path.join(dump, "status.json")) as f:
            return {p["name"]: p for p in json.load(f)["processes"]}
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


stopped = []  # pids a test froze with SIGSTOP: run_checked sends them SIGCONT


def trace_last_pass(trace):
    """Cuts the trace of a run whose trainer restarted from scratch to the
    lines after the last return to epoch 0 iteration 0."""
    lines = read(trace).splitlines()
    starts = [i for i, l in enumerate(lines) if l.startswith("0 0 ")]
    with open(trace, "w") as f:
        f.write("".join(l + "\n" for l in lines[starts[-1] if starts else 0:]))


def run_checked(bins, train, tmp, name, epochs, n_img, extra=(), during=None,
                last_pass=False):
    """`swav train` of the tiny model in tmp/name with --trace_images, its
    output in tmp/name.out; during(dump), when given, acts on the run while
    it goes (a kill, a freeze); the pids in `stopped` get SIGCONT whatever
    happens.  Checks exit 0 within 180 s and every image once per epoch (with
    last_pass: after the trainer's last restart from epoch 0).  Returns (exit
    status, dump, the output)."""
    dump = os.path.join(tmp, name)
    out = dump + ".out"
    p = swav_train(bins, train, dump, epochs, out, extra=extra, trace=dump + ".trace")
    try:
        if during:
            during(dump)
        rc = exit_code(p, 180)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        stopped.clear()
        stop([p])
    check(rc == 0, f"{name}: swav train exit {rc}:\n" + read(out)[-3000:])
    if last_pass:
        trace_last_pass(dump + ".trace")
    for problem in trace_check(dump + ".trace", epochs, n_img):
        check(False, f"{name}: {problem}")
    return rc, dump, read(out)


def pid_of(dump, name):
    """The pid of a running role of `swav train` (status.json), or 0."""
    p = status(dump).get(name, {})
    return p.get("pid", 0) if p.get("state") == "running" else 0


def records(dump):
    """The records of dump/eval.jsonl (a torn line left out)."""
    out = []
    for line in read(os.path.join(dump, "eval.jsonl")).splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def read_safetensors(path):
    """(tensors as numpy arrays, metadata) of a checkpoint; raises on a bad file."""
    import numpy as np
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        if b > len(data):
            raise ValueError(f"{path}: tensor {k} ends at {b}, past the data ({len(data)} bytes)")
        dt = {"F32": np.float32, "I64": np.int64}[v["dtype"]]
        out[k] = np.frombuffer(data[a:b], dt).reshape(v["shape"])
    return out, hdr.get("__metadata__", {})


def max_param_diff(path_a, path_b):
    """Largest absolute difference over all tensors of two checkpoints (inf
    when their tensor names differ)."""
    import numpy as np
    a, _ = read_safetensors(path_a)
    b, _ = read_safetensors(path_b)
    if set(a) != set(b):
        return float("inf")
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0
               for k in a)
