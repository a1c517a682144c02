"""Sandbox latency: Ferry through the real modal client against bubblewrap (and podman, when it
runs on this host) on the same Debian root filesystem, in one run.

- create to first exec output: `Sandbox.create()` + `exec("echo", ...)` until its output arrives,
  against `bwrap ... echo` (a bwrap run is a create and a first output at once) and
  `podman run --rm ... echo`.
- exec round trip: `sb.exec("echo", ...)` + read + wait in a running sandbox, against
  `nsenter` into a running bwrap sandbox (the same operation: a new process in existing
  namespaces) and `podman exec`.

Usage: python bench/sandbox/bench_sandbox.py [--rounds N] [--execs N]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "serve"))
from conftest import Ferry  # noqa: E402  (the tests' helper that runs `ferry serve`)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def fmt(xs):
    return f"p50 {statistics.median(xs) * 1000:7.1f} ms   p99 {pct(xs, 99) * 1000:7.1f} ms   (n={len(xs)})"


FERRY_SIDE = r"""
import json, sys, time
import modal
rounds, execs = int(sys.argv[1]), int(sys.argv[2])
app = modal.App.lookup("bench-sandbox", create_if_missing=True)
image = modal.Image.debian_slim()
warm = modal.Sandbox.create(app=app, image=image)   # builds/caches the image once
warm.exec("true").wait()
create = []
for _ in range(rounds):
    t0 = time.perf_counter()
    sb = modal.Sandbox.create(app=app, image=image)
    p = sb.exec("echo", "ready")
    assert p.stdout.read() == "ready\n"
    create.append(time.perf_counter() - t0)
    sb.terminate()
rt = []
for _ in range(execs):
    t0 = time.perf_counter()
    p = warm.exec("echo", "x")
    p.stdout.read()
    p.wait()
    rt.append(time.perf_counter() - t0)
warm.terminate()
print("RESULT " + json.dumps({"create": create, "exec": rt}))
"""


def ferry_side(server: Ferry, rounds: int, execs: int):
    import json

    proc = subprocess.run([sys.executable, "-c", FERRY_SIDE, str(rounds), str(execs)], env=server.env(),
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout + proc.stderr)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def base_rootfs(data_dir: Path) -> Path:
    """The Debian base layer Ferry's debian_slim image stands on (a complete root filesystem)."""
    layers = data_dir / "images" / "layers"
    for d in sorted(layers.iterdir()):
        fs = d / "fs"
        if (fs / "usr" / "bin" / "python3").exists() and (fs / "bin" / "sh").exists():
            return fs
    raise SystemExit(f"no base root filesystem under {layers}; run the tests or `ferry images prepare` first")


def bwrap_argv(rootfs: Path, *cmd: str):
    return ["bwrap", "--ro-bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--unshare-all", "--die-with-parent", "--new-session", *cmd]


def bwrap_side(rootfs: Path, rounds: int, execs: int):
    create = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = subprocess.run(bwrap_argv(rootfs, "echo", "ready"), capture_output=True, text=True, check=True).stdout
        assert out == "ready\n"
        create.append(time.perf_counter() - t0)
    # A long-running bwrap sandbox; exec = nsenter into its namespaces and root.
    holder = subprocess.Popen(bwrap_argv(rootfs, "sleep", "infinity"), stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    child = subprocess.run(["pgrep", "-P", str(holder.pid)], capture_output=True, text=True).stdout.split()
    pid = child[0] if child else str(holder.pid)
    rt = []
    try:
        for _ in range(execs):
            t0 = time.perf_counter()
            subprocess.run(["nsenter", "-t", pid, "-m", "-u", "-i", "-n", "-p", "-r", "-w", "echo", "x"],
                           capture_output=True, check=True)
            rt.append(time.perf_counter() - t0)
    finally:
        holder.kill()
        holder.wait()
    return {"create": create, "exec": rt}


def podman_side(rootfs: Path, rounds: int, execs: int):
    if not shutil.which("podman"):
        return None, "podman is not installed (apt-get install podman)"
    tag = "localhost/ferry-bench-rootfs"
    if subprocess.run(["podman", "image", "exists", tag]).returncode != 0:
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["podman", "import", "-", tag], stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        if imp.returncode != 0:
            return None, "podman import failed: " + imp.stderr.strip()[-300:]
    probe = subprocess.run(["podman", "run", "--rm", "--network=none", tag, "echo", "ready"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, "podman run fails on this host: " + probe.stderr.strip()[-300:]
    create = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(["podman", "run", "--rm", "--network=none", tag, "echo", "ready"], capture_output=True, check=True)
        create.append(time.perf_counter() - t0)
    name = f"ferry-bench-{os.getpid()}"
    subprocess.run(["podman", "run", "-d", "--rm", "--network=none", "--name", name, tag, "sleep", "infinity"], capture_output=True, check=True)
    rt = []
    try:
        for _ in range(execs):
            t0 = time.perf_counter()
            subprocess.run(["podman", "exec", name, "echo", "x"], capture_output=True, check=True)
            rt.append(time.perf_counter() - t0)
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
    return {"create": create, "exec": rt}, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--execs", type=int, default=200)
    ap.add_argument("--data-dir", default=os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
    args = ap.parse_args()
    data = Path(args.data_dir)
    with tempfile.TemporaryDirectory():
        server = Ferry(data, "--no-modal-profile").start()
        try:
            ferry = ferry_side(server, args.rounds, args.execs)
        finally:
            server.stop()
    rootfs = base_rootfs(data)
    bw = bwrap_side(rootfs, args.rounds, args.execs)
    pm, why = podman_side(rootfs, args.rounds, args.execs)

    print(f"\nSandbox create -> first exec output ({args.rounds} rounds)")
    print(f"  ferry (modal client)     {fmt(ferry['create'])}")
    print(f"  bwrap run                {fmt(bw['create'])}")
    if pm:
        print(f"  podman run               {fmt(pm['create'])}")
    print(f"\nExec round trip in a running sandbox ({args.execs} execs)")
    print(f"  ferry sb.exec (modal)    {fmt(ferry['exec'])}")
    print(f"  nsenter into bwrap       {fmt(bw['exec'])}")
    if pm:
        print(f"  podman exec              {fmt(pm['exec'])}")
    m = statistics.median
    print("\nRatios (ferry / baseline, p50; < 1 means Ferry is faster)")
    print(f"  create: vs bwrap {m(ferry['create']) / m(bw['create']):.2f}" + (f", vs podman {m(ferry['create']) / m(pm['create']):.2f}" if pm else ""))
    print(f"  exec:   vs nsenter {m(ferry['exec']) / m(bw['exec']):.2f}" + (f", vs podman exec {m(ferry['exec']) / m(pm['exec']):.2f}" if pm else ""))
    if why:
        print(f"\npodman: not measured: {why}")


if __name__ == "__main__":
    main()
