#!/usr/bin/python3
"""The disk fills up under a real tiny `swav train` run (issue 9).

dump_path lives on a small tmpfs (mounted here: needs root; exit 77, skipped,
where mount is impossible).  The queue is made large (4096 rows, a 512 KiB
queue file) so that both writes of a checkpoint fail:
  1. `swav train --stop_after_steps 10` writes the epoch-1 checkpoint
     (iteration 10) and stops.
  2. A filler file leaves 256 KiB free; `swav train --trainer_retries 1`
     resumes, trains epoch 1 and fails at its end: the assigner cannot write
     state-20.queue and the trainer cannot write checkpoint.safetensors, both
     say ENOSPC and name the file; the trainer exits 1, the launcher restarts
     the group once (which fails the same way), then stops with exit 1.
     checkpoint.safetensors is byte for byte the one of step 1 and loads; no
     partial file is left in the folder (atomic writes, common/fileio.h).
     Then not a byte is left: the same once more (no restart), the
     progress lines that cannot be written are dropped whole, and the
     launcher says that status.json cannot be written.
  3. The filler is removed and `swav train` is run again with the same
     dump_path: it resumes from iteration 10, trains every image once in each
     remaining epoch, every line of train.jsonl is JSON, and it ends with the parameters of an undisturbed run of
     the same flags (max abs difference <= 1e-5, as integration/train_run's
     resume check; the CPU backend is deterministic, so 0 is expected).
Usage: test_disk_full.py BUILD_DIR"""
import hashlib, json, os, re, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinyrun as T

bins = T.Bins(sys.argv[1])
check = T.check

def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()

def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize

def run(dump, log, extra=(), trace=None, limit=120):
    p = T.swav_train(bins, train, dump, EPOCHS, log, extra=[*BIG_QUEUE, *extra], trace=trace)
    rc = T.exit_code(p, limit)
    T.stop([p])
    return rc

tmp = tempfile.mkdtemp(prefix="swav-diskfull-")
mnt = os.path.join(tmp, "mnt")
os.makedirs(mnt)
r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", mnt],
                   capture_output=True, text=True)
if r.returncode != 0:
    print(f"skipped: cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    subprocess.run(["rm", "-rf", tmp])
    sys.exit(77)

EPOCHS = 3
BIG_QUEUE = ["--queue_length", "4096"]
n_img = (160 // T.BS) * T.BS
try:
    train = T.prepare(bins, tmp)
    # the undisturbed run, on the ordinary disk
    ref = os.path.join(tmp, "ref")
    rc = run(ref, os.path.join(tmp, "ref.out"))
    check(rc == 0, f"undisturbed run: exit {rc}:\n" + T.read(os.path.join(tmp, "ref.out"))[-2000:])

    dump = os.path.join(mnt, "run")
    out1, out2, out3 = (os.path.join(tmp, f"swav{i}.out") for i in (1, 2, 3))
    tlog = os.path.join(dump, "logs", "trainer-0.log")
    alog = os.path.join(dump, "logs", "assigner.log")
    ckpt = os.path.join(dump, "checkpoint.safetensors")

    # 1. the first epoch and its checkpoint
    rc = run(dump, out1, ["--stop_after_steps", "10"])
    check(rc == 0 and os.path.exists(ckpt), f"first epoch: exit {rc}:\n" + T.read(out1)[-2000:])
    good = sha(ckpt)
    size = os.path.getsize(ckpt)
    queue_bytes = 2 * 4096 * 16 * 4
    # 2. the disk fills up: 256 KiB left, less than the queue file and the checkpoint
    filler = os.path.join(mnt, "filler")
    with open(filler, "wb") as f:
        chunk = b"\0" * 65536
        while free_bytes(mnt) > 256 * 1024 + len(chunk):
            f.write(chunk)
            f.flush()
    left = free_bytes(mnt)
    print(f"checkpoint {size} bytes, queue file {queue_bytes} bytes; {left} bytes left on {mnt}")
    check(left < min(size, queue_bytes), "the filler left too much room")
    rc = run(dump, out2, ["--trainer_retries", "1"])
    log, alog_text, swav_out = T.read(tlog), T.read(alog), T.read(out2)
    check(rc == 1, f"full disk: swav train exit {rc}, expected 1:\n" + swav_out[-3000:])
    m = re.search(r"checkpoint not written: cannot write (\S+): No space left on device", log)
    check(m and os.path.basename(m.group(1)).startswith("checkpoint.safetensors.tmp"),
          "the trainer did not name the checkpoint file and ENOSPC:\n" + log[-3000:])
    check(re.search(r"the assigner did not save its queue for iteration 20: .*cannot write \S*"
                    r"state-20\.queue\S*: No space left on device", log),
          "the trainer did not report the queue file that could not be written:\n" + log[-3000:])
    check(re.search(r"save refused: cannot write \S*state-20\.queue\S*: No space left on device",
                    alog_text), "the assigner did not say why the queue was not saved:\n" +
          alog_text[-2000:])
    check(log.count("checkpoint not written") == 2,
          f"expected the save to fail twice (first try and one restart), "
          f"saw {log.count('checkpoint not written')}")
    check("trainer 0 ended: exit 1; restarting" in swav_out and
          "the trainers failed after 1 restarts" in swav_out,
          "the launcher did not restart the trainers once and then stop:\n" + swav_out[-3000:])
    # the previous checkpoint: intact, loadable, and nothing half-written beside it
    check(sha(ckpt) == good, "checkpoint.safetensors changed while the disk was full")
    try:
        tensors, meta = T.read_safetensors(ckpt)
        check(meta.get("epoch") == "1" and meta.get("step") == "10" and len(tensors) > 0,
              f"checkpoint metadata after the failures: {meta.get('epoch')} {meta.get('step')}")
    except (ValueError, KeyError) as e:
        check(False, f"checkpoint.safetensors does not load: {e}")
    # temporaries of the atomic writes (NAME.tmp.PID.N) are partial files: none may stay
    leftovers = [f for f in os.listdir(dump) if ".tmp." in f or f == "state-20.queue"]
    check(not leftovers, f"left behind on the full disk: {leftovers}")
    # checkpoint.prev.safetensors.tmp is the trainer's hard link of the current
    # checkpoint, made before each save and renamed onto .prev; after a failed
    # save both names are one file, rename(2) between them does nothing, and
    # the trainer must remove the link itself (trainer/main.c, save_checkpoint)
    prev_tmp = ckpt.replace("checkpoint.safetensors", "checkpoint.prev.safetensors.tmp")
    check(not os.path.exists(prev_tmp),
          f"{os.path.basename(prev_tmp)} left behind after the second failed save")
    check(m and log.count("(checkpoint write failed); the previous one stays") == 2,
          "the failed checkpoint writes are not reported as 'checkpoint write failed':\n" +
          log[-3000:])
    for line in re.findall(r".*(?:checkpoint not written|did not save its queue).*", log)[:2]:
        print("  " + line)

    # 2b. not a byte left: the progress lines cannot be written either; none
    # may be left half-written (the next line would continue it)
    filler2 = os.path.join(mnt, "filler2")
    fd = os.open(filler2, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    os.close(fd)
    print(f"then {free_bytes(mnt)} bytes left")
    rc = run(dump, os.path.join(tmp, "swav2b.out"), ["--trainer_retries", "0"])
    check(rc == 1, f"disk without a byte: swav train exit {rc}, expected 1:\n" +
          T.read(os.path.join(tmp, "swav2b.out"))[-3000:])
    out2b = T.read(os.path.join(tmp, "swav2b.out"))
    check(re.search(r"cannot write \S*status\.json\S*: No space left on device; swav status "
                    r"shows the last state written", out2b),
          "the launcher did not say that status.json cannot be written:\n" + out2b[-2000:])
    check(sha(ckpt) == good, "checkpoint.safetensors changed while the disk was full")
    leftovers = [f for f in os.listdir(dump) if ".tmp." in f]
    check(not leftovers, f"left behind on the full disk: {leftovers}")
    os.unlink(filler2)

    # 3. room again: the same command resumes from the last good checkpoint
    os.unlink(filler)
    trace = os.path.join(tmp, "trace")
    before = len(T.read(tlog))
    rc = run(dump, out3, trace=trace)
    check(rc == 0, f"after freeing space: exit {rc}:\n" + T.read(out3)[-3000:])
    check(f"resuming from {ckpt}: epoch 1, iteration 10" in T.read(tlog)[before:],
          "after freeing space: the run did not resume from the epoch-1 checkpoint")
    bad = []
    for i, line in enumerate(T.read(os.path.join(dump, "train.jsonl")).splitlines()):
        try:
            json.loads(line)
        except ValueError:
            bad.append(f"line {i + 1}: {line[:80]}...{line[-40:]}")
    check(not bad, "train.jsonl has lines that are not JSON (half-written on the full disk):\n"
          + "\n".join(bad))
    for p in T.trace_check(trace, EPOCHS, n_img, first=1):
        check(False, "after freeing space: " + p)
    if rc == 0:
        worst = T.max_param_diff(os.path.join(ref, "checkpoint.safetensors"), ckpt)
        check(worst <= 1e-5, f"final parameters differ from the undisturbed run's by {worst}")
        print(f"resumed after the disk was freed; final parameters within {worst:.2e} of the "
              f"undisturbed run's")
finally:
    if T.fails and os.path.isdir(os.path.join(mnt, "run", "logs")):
        subprocess.run(["cp", "-r", os.path.join(mnt, "run", "logs"), os.path.join(tmp, "logs")])
    subprocess.run(["umount", mnt])
    if subprocess.run(["mountpoint", "-q", mnt]).returncode == 0:
        subprocess.run(["umount", "-l", mnt])

T.finish("test_disk_full", tmp, where=f"{tmp} (the run's logs copied to {tmp}/logs)")
