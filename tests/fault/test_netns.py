#!/usr/bin/python3
"""Many hosts on one machine (issue 9): two swav-loader processes, each in
its own network namespace joined to this one by a veth pair (addresses
10.200.N.0/24, the project's own test hosts, inside these links only), feed
a swav-trainer (with its swav-assigner on loopback) over TCP with CURVE on
every link.  Mid-run the link of loader 0 is cut (ip link set down) for
longer than the trainer's silence limit, then restored: the trainer takes
loader 0's orders back and gives them to loader 1, loader 0 comes back, the
run finishes and every image is trained on exactly once per epoch
(--trace_images).

Needs root (CAP_NET_ADMIN) and iproute2's `ip`; exits 77 (skipped) with the
reason otherwise.  The namespaces and links are removed however it ends.
Usage: test_netns.py BUILD_DIR"""
import atexit, os, shutil, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinyrun as T

IP = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)
if IP is None:
    print("SKIP: no `ip` (iproute2) to make network namespaces")
    sys.exit(77)
if os.geteuid() != 0:
    print("SKIP: network namespaces need root (CAP_NET_ADMIN); run as root to test many hosts")
    sys.exit(77)

bins = T.Bins(sys.argv[1])
tag = f"swf{os.getpid() % 100000}"
NS = [f"{tag}n{i}" for i in range(2)]
VETH = [(f"{tag}h{i}", f"{tag}p{i}") for i in range(2)]  # (this side, namespace side)
HOST = [f"10.200.{i + 1}.1" for i in range(2)]
PEER = [f"10.200.{i + 1}.2" for i in range(2)]
made = []
procs = []

def ip(*args, ns=None, check=True):
    cmd = [IP, *(["netns", "exec", ns, IP] if ns else []), *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r

def cleanup():
    T.stop(procs, 5)
    for host, _ in VETH:
        subprocess.run([IP, "link", "del", host], capture_output=True)
    for ns in made:
        subprocess.run([IP, "netns", "del", ns], capture_output=True)
    made.clear()

atexit.register(cleanup)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, lambda *_: sys.exit(1))

try:
    for i, ns in enumerate(NS):
        ip("netns", "add", ns)
        made.append(ns)
        host, peer = VETH[i]
        ip("link", "add", host, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", ns)
        ip("addr", "add", f"{HOST[i]}/24", "dev", host)
        ip("link", "set", host, "up")
        ip("addr", "add", f"{PEER[i]}/24", "dev", peer, ns=ns)
        ip("link", "set", peer, "up", ns=ns)
        ip("link", "set", "lo", "up", ns=ns)
        # the trainer binds HOST[0]: a local address of this namespace,
        # reached from namespace 1 through its own link
        if i > 0:
            ip("route", "add", "10.200.1.0/24", "via", HOST[i], ns=ns)
except RuntimeError as e:
    cleanup()
    print(f"SKIP: cannot make network namespaces here: {e}")
    sys.exit(77)

check = T.check

tmp = tempfile.mkdtemp(prefix="swav-netns-")
keys = os.path.join(tmp, "keys")
K = lambda n: os.path.join(keys, n)
r = subprocess.run([bins.swav, "keygen", keys], capture_output=True, text=True)
if r.returncode != 0:
    print("FAIL: keygen:", r.stderr)
    sys.exit(1)
train = T.prepare(bins, tmp)
EPOCHS = 4
n_img = (160 // T.BS) * T.BS
dump = os.path.join(tmp, "run")
os.makedirs(dump)
trace = os.path.join(tmp, "trace")
pa, pl = T.free_port(), T.free_port()
try:
    procs.append(T.start([bins.assigner, f"--endpoint=tcp://127.0.0.1:{pa}", "--run=netns",
                          "--threads=1", "--curve_secret", K("assigner.key"),
                          "--curve_allow", K("trainer.pub")], os.path.join(tmp, "assigner.log")))
    trainer_log = os.path.join(tmp, "trainer.log")
    trainer = T.start([bins.trainer, *T.TINY, "--epochs", str(EPOCHS), "--rank=0",
                       "--world_size=1", "--run=netns", "--data_path", train, "--dump_path", dump,
                       "--trace_images", trace, f"--assigner=tcp://127.0.0.1:{pa}",
                       "--assigner_public", K("assigner.pub"),
                       f"--loader_bind=tcp://{HOST[0]}:{pl}", "--curve_secret", K("trainer.key"),
                       "--curve_allow", K("loader.pub")], trainer_log)
    procs.append(trainer)
    loader_logs = []
    for i, ns in enumerate(NS):
        log = os.path.join(tmp, f"loader-{i}.log")
        loader_logs.append(log)
        # --delay_ms: the run lasts long enough (~10 s) to cut a link in it
        procs.append(T.start([bins.loader, f"--connect=tcp://{HOST[0]}:{pl}", "--data_path", train,
                              "--run=netns", "--workers=1", f"--loader_id=ns{i}", "--delay_ms=25",
                              "--heartbeat_ms=500", "--heartbeat_timeout_ms=2000",
                              "--curve_secret", K("loader.key"),
                              "--curve_server_public", K("trainer.pub")], log,
                             prefix=[IP, "netns", "exec", ns]))
    check(T.wait_for(lambda: all("connected to" in T.read(l) for l in loader_logs), 30),
          "the loaders in the namespaces did not connect")
    spe = n_img // T.BS
    check(T.wait_for(lambda: T.steps_done(dump) >= spe // 2, 60), "no steps trained")
    cut_at = T.steps_done(dump)
    ip("link", "set", VETH[0][0], "down")
    t0 = time.time()
    # the trainer declares loader 0 silent after 5 s and re-issues its orders
    check(T.wait_for(lambda: "loader ns0 silent" in T.read(trainer_log), 20),
          "the trainer did not notice the cut link:\n" + T.read(trainer_log)[-2000:])
    silent_at = T.steps_done(dump)
    # loader 1 alone carries the run for a while
    T.wait_for(lambda: T.steps_done(dump) >= silent_at + 3, 15)
    during = T.steps_done(dump)
    ip("link", "set", VETH[0][0], "up")
    print(f"link of loader 0 down for {time.time() - t0:.1f} s at step {cut_at}; "
          f"{during - cut_at} steps trained meanwhile through loader 1")
    check(during > cut_at, "no step was trained while loader 0's link was down")
    check(T.wait_for(lambda: "loader ns0 is back" in T.read(trainer_log)
                     or T.read(trainer_log).count("loader ns0 connected") >= 2, 40),
          "loader 0 did not come back after the link was restored")
    rc = T.exit_code(trainer, 120)
    check(rc == 0, f"trainer exit {rc}:\n" + T.read(trainer_log)[-3000:])
    for p in T.trace_check(trace, EPOCHS, n_img):
        check(False, p)
    print(f"netns: {T.steps_done(dump)} steps, {EPOCHS} epochs of {n_img} images each once")
finally:
    cleanup()

T.finish("test_netns", tmp)
