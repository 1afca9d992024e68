#!/usr/bin/python3
"""The example configurations (issue 9) use our binaries' real flags: every
command line of scripts/examples/*.sh, scripts/slurm/*.sbatch,
scripts/supervisord/swav.conf and scripts/systemd/*.service goes through its
binary's flag parser (the command line plus a final --help: each flag before
it is parsed and its value checked, then the binary prints its usage and
exits 0; an unknown flag or bad value exits 2).  The `swav train` examples
keep the reference scripts' flags line by line (/work/ref/scripts, when
present).  A copy with a misspelled flag must fail the same check.
Usage: test_examples.py BUILD_DIR SOURCE_DIR"""
import configparser, json, os, re, shlex, subprocess, sys, tempfile

build, src = sys.argv[1], sys.argv[2]
BIN = {"swav": "launcher/swav", "swav-trainer": "trainer/swav-trainer",
       "swav-loader": "loader/swav-loader", "swav-assigner": "assigner/swav-assigner",
       "swav-evaluator": "evaluator/swav-evaluator"}
LAUNCHER_OWN = {"--nproc", "--loaders", "--workers", "--eval-data", "--eval_data", "--eval_size",
                "--eval-size", "--eval_resize", "--eval-resize", "--trainer_retries"}
fails = []
checked = []
quiet = False
ref_flags = 0

def check(cond, what):
    if not cond:
        if not quiet:
            print("FAIL:", what)
        fails.append(what)
    return cond

def parses(argv, where):
    """argv[0] names a role binary (any folder); run it with --help."""
    name = os.path.basename(argv[0])
    if not check(name in BIN, f"{where}: unknown program {argv[0]}"):
        return False
    r = subprocess.run([os.path.join(build, BIN[name]), *argv[1:], "--help"],
                       capture_output=True, text=True)
    checked.append(f"{where}: {name}")
    return check(r.returncode == 0, f"{where}: {name} refuses its flags: {r.stderr.strip()[:300]}")

def swav_train_lines(script, tmp):
    """Run a `swav train` example with $SWAV a shim that records its argv."""
    shim, out = os.path.join(tmp, "shim"), os.path.join(tmp, "argv.json")
    with open(shim, "w") as f:
        f.write(f"#!/usr/bin/python3\nimport json, sys\njson.dump(sys.argv[1:], open({out!r}, 'w'))\n")
    os.chmod(shim, 0o755)
    env = dict(os.environ, SWAV=shim, DATASET_PATH=tmp, EXPERIMENT_PATH=os.path.join(tmp, "exp"))
    r = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    if not check(r.returncode == 0, f"{script}: exit {r.returncode}: {r.stderr}"):
        return None
    return json.load(open(out))

def check_swav_train(script, tmp, ref=None):
    argv = swav_train_lines(script, tmp)
    if argv is None:
        return
    where = os.path.relpath(script, src)
    if not check(argv[0] == "train", f"{where}: not `swav train`"):
        return
    rest, i = [], 1
    while i < len(argv):
        if argv[i] in LAUNCHER_OWN:
            i += 2
            continue
        rest.append(argv[i])
        i += 1
    check("--data_path" in rest, f"{where}: no --data_path")
    parses(["swav-trainer", *rest], where)
    if ref and os.path.exists(ref):
        # line by line: each "--flag value" of the reference, but --dist_url
        # (the launcher wires the ranks) and the two paths
        ours = " ".join(argv)
        for line in open(ref):
            m = re.match(r"^(--\w+)\s+([^\\$]*?)\s*\\?$", line.strip())
            if m and m.group(1) not in ("--dist_url", "--data_path", "--dump_path"):
                global ref_flags
                ref_flags += 1
                check(f"{m.group(1)} {m.group(2)}" in ours,
                      f"{where}: the reference's '{m.group(1)} {m.group(2)}' is not kept")

def check_sbatch(script, tmp):
    env = dict(os.environ, SWAV_CHECK="1", SWAV_BIN=build, SWAV_HOSTS="node0 node1",
               EXPERIMENT_PATH=os.path.join(tmp, "exp"), DATASET_PATH=tmp)
    r = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    where = os.path.relpath(script, src)
    n = r.stdout.count("parses:")
    check(r.returncode == 0 and n >= 9,
          f"{where}: exit {r.returncode}, {n} command lines parsed: {r.stderr.strip()[-500:]}")
    checked.extend(f"{where}: {l[8:]}" for l in r.stdout.splitlines() if l.startswith("parses:"))
    check(os.path.exists(os.path.join(tmp, "exp", "keys", "trainer.key")),
          f"{where}: no keys made")

def check_supervisord(conf):
    cp = configparser.RawConfigParser()
    cp.read(conf)
    where = os.path.relpath(conf, src)
    n = 0
    for sec in cp.sections():
        if not sec.startswith("program:"):
            continue
        cmd = cp.get(sec, "command")
        for num in range(int(cp.get(sec, "numprocs", fallback="1"))):
            parses(shlex.split(cmd.replace("%(process_num)d", str(num))), f"{where} [{sec}]")
            n += 1
    check(n >= 5, f"{where}: {n} programs")

def check_systemd(folder):
    env = {}
    for line in open(os.path.join(folder, "swav.env")):
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            env[k] = v
    units = sorted(f for f in os.listdir(folder) if f.endswith(".service"))
    check(units == ["swav-assigner.service", "swav-evaluator.service", "swav-loader@.service",
                    "swav-trainer@.service"], f"systemd units: {units}")
    for u in units:
        text = open(os.path.join(folder, u)).read().replace("\\\n", " ")
        m = re.search(r"^ExecStart=(.*)$", text, re.M)
        if not check(m, f"{u}: no ExecStart"):
            continue
        line = m.group(1).replace("%i", "1").replace("%H", "host")
        # systemd: ${X} is one word, $X splits on white space
        line = re.sub(r"\$\{(\w+)\}", lambda g: shlex.quote(env.get(g.group(1), "")), line)
        line = re.sub(r"\$(\w+)", lambda g: env.get(g.group(1), ""), line)
        parses(shlex.split(line), u)

with tempfile.TemporaryDirectory(prefix="swav-examples-") as tmp:
    ex = os.path.join(src, "scripts", "examples")
    check_swav_train(os.path.join(ex, "swav_200ep_bs256.sh"), tmp,
                     "/work/ref/scripts/swav_200ep_bs256_pretrain.sh")
    check_swav_train(os.path.join(ex, "swav_800ep.sh"), tmp,
                     "/work/ref/scripts/swav_800ep_pretrain.sh")
    check_sbatch(os.path.join(src, "scripts", "slurm", "swav_800ep_64gpu.sbatch"), tmp)
    check_supervisord(os.path.join(src, "scripts", "supervisord", "swav.conf"))
    check_systemd(os.path.join(src, "scripts", "systemd"))
    # the check can fail: a misspelled flag in a copy of an example
    bad = os.path.join(tmp, "bad.sh")
    with open(bad, "w") as f:
        f.write(open(os.path.join(ex, "swav_800ep.sh")).read().replace("--epochs 800", "--epochz 800"))
    nfails = len(fails)
    quiet = True
    check_swav_train(bad, tmp)
    quiet = False
    check(len(fails) == nfails + 1, "a misspelled flag was not caught")
    if len(fails) == nfails + 1:
        fails.pop()
        print("(a copy with --epochz was refused, as it should be)")

print(f"{len(checked)} command lines parsed; {ref_flags} reference flag lines kept")
check(len(checked) >= 20, "too few command lines checked")
if fails:
    print(f"{len(fails)} checks failed")
    sys.exit(1)
print("test_examples: ok")
