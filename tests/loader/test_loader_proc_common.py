"""Shared helpers of the loader process tests (test_determinism.py,
test_loader_fault.py): tiny JPEG image folders made at test time, starting
swav-loader / swav-loadcount processes, reading their hash files, and the
counted check."""
import os
import random
import signal
import subprocess
import time

from PIL import Image

fails = []


def check(cond, what):
    """A check: a failure is printed at once and kept in fails."""
    if not cond:
        fails.append(what)
        print("FAIL:", what)
    return cond


# Tiny crops keep the tests fast: 2x32 + 2x16.
CROPS = ["--nmb_crops", "2", "2", "--size_crops", "32", "16",
         "--min_scale_crops", "0.14", "0.05", "--max_scale_crops", "1", "0.14"]


def make_dataset(root, classes=("ant", "bee", "cat"), per_class=20, seed=1):
    """ImageFolder of small random JPEGs (40x40, a few other sizes, one
    grayscale, one PNG) plus one undecodable file that indexing leaves out."""
    rnd = random.Random(seed)
    paths = []
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            w, h = (40, 40) if i % 5 else (48, 36)
            mode = "L" if i == 7 else "RGB"
            im = Image.new(mode, (w, h))
            if mode == "L":
                im.putdata([rnd.randrange(256) for _ in range(w * h)])
            else:
                im.putdata([(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
                            for _ in range(w * h)])
            ext = "png" if i == 11 else "jpg"
            p = os.path.join(root, c, "%03d.%s" % (i, ext))
            im.save(p, "PNG" if ext == "png" else "JPEG", quality=90)
            paths.append(p)
    with open(os.path.join(root, classes[0], "broken.jpg"), "wb") as f:
        f.write(bytes(rnd.randrange(256) for _ in range(300)))
    return paths


def corrupt_keep_stat(path, seed=2):
    """Overwrite a file with garbage of the same size and restore its mtime,
    so that a cached index still lists it and the loader meets a decode
    failure at run time (the substitution path)."""
    st = os.stat(path)
    rnd = random.Random(seed)
    with open(path, "r+b") as f:
        f.write(bytes(rnd.randrange(256) for _ in range(st.st_size)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


class Proc:
    def __init__(self, args, log):
        self.log_path = log
        self.logf = open(log, "w")
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.logf, text=True)

    def wait(self, timeout):
        try:
            out, _ = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            out, _ = self.p.communicate()
            self.logf.close()
            return None, out
        self.logf.close()
        return self.p.returncode, out

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def signal(self, sig):
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def alive(self):
        return self.p.poll() is None


def start_loader(exe, endpoint, data, dump, log, workers=1, extra=()):
    return Proc([exe, "--connect", endpoint, "--data_path", data, "--dump_path", dump,
                 "--workers", str(workers), "--beat_ms", "200", "--heartbeat_ms", "500",
                 "--heartbeat_timeout_ms", "2000", "--report_s", "0"] + list(extra), log)


def start_loadcount(exe, endpoint, data, dump, hashes, log, extra=()):
    return Proc([exe, "--bind", endpoint, "--data_path", data, "--dump_path", dump,
                 "--hashes", hashes, "--timeout_s", "60"] + CROPS + list(extra), log)


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [l for l in f.read().splitlines() if l]


def wait_for(pred, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.02)
    print("timeout waiting for", what)
    return False


def stop(procs, timeout=20):
    """SIGTERM each loader; returns their exit codes (None: had to be killed)."""
    for p in procs:
        p.signal(signal.SIGTERM)
    return [p.wait(timeout)[0] for p in procs]
