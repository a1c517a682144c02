"""Volume transfers and mounts: `modal volume put/get` of a 1 GiB file against `cp` of the same
file on the same disk, and the time for a container to see a committed 1 GiB file.

Starts the real `ferry serve` (loopback, a free port) on the data dir that keeps built images
(`FERRY_TEST_DATA_DIR`, default /var/tmp/ferry-test; its Debian base must be prepared), with the
scratch files in a temporary directory next to it (same filesystem), and drives it with the real
pinned `modal` CLI and SDK:

- transfers, `--rounds` times: `cp SRC DST`, `cp SRC DST && sync DST` (put fsyncs what it
  stores), `modal volume put VOL SRC /big-<r>.bin` and `modal volume get VOL /big-<r>.bin DST`.
  Each round changes one byte in every 8 MiB block of SRC, so no block is already stored. The
  figure is the median round; the ratio is cp's time over Ferry's (throughput ratio, >1 is
  faster than cp). The first get is checked byte for byte.
- mounts: a container writes a 1 GiB file into a volume and commits it; then, each in a fresh
  `app.run()` (a new container), the first `probe.remote()` (cold start, mount, open, read one
  byte) on that volume and on an empty one. The difference is what mounting 1 GiB costs; no
  data is copied (the committed file is hard-linked into the container's lower layer). A file
  put through the CLI is joined from its blocks once, on its first mount: that is timed apart.

Usage: .venv/bin/python bench/volumes/bench_volumes.py [--mib 1024] [--rounds 3] [--mounts 3]
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BLOCK = 8 << 20


def ferry_bin() -> str:
    env = os.environ.get("FERRY_BIN")
    if env:
        return env
    for build in ("release", "debug"):
        p = ROOT / "target" / build / "ferry"
        if p.exists():
            return str(p)
    sys.exit("no ferry binary: run `cargo build --release` or set FERRY_BIN")


class Server:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.log_path = data_dir / f"bench-volumes-{time.time_ns()}.log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [ferry_bin(), "serve", "--data-dir", str(data_dir), "--port", "0", "--no-modal-profile"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        self.url = None
        while time.time() < deadline and self.url is None:
            for line in self.log_path.read_text().splitlines():
                if line.startswith("Ferry is serving the Modal API at "):
                    self.url = line.split(" at ", 1)[1].split(" ")[0]
            if self.proc.poll() is not None:
                sys.exit(f"ferry serve exited:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        if self.url is None:
            sys.exit("ferry serve did not become ready")

    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
        for line in (self.data_dir / "client.env").read_text().splitlines():
            k, v = line.split("=", 1)
            env[k] = v
        env["MODAL_SERVER_URL"] = self.url
        env.update(extra)
        return env

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def timed(cmd, env=None, timeout=900) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return dt


def make_source(path: Path, mib: int):
    with open(path, "wb") as f:
        for _ in range(mib // 8):
            f.write(os.urandom(1 << 20) * 8)


def perturb(path: Path, round_no: int):
    """Makes every block of the file new to the block store."""
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        for off in range(0, size, BLOCK):
            f.seek(off)
            f.write(bytes([round_no + 1]))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


PROBE = """
import json, os, sys, time
sys.path.insert(0, {here!r})
import app as bench
with bench.app.run():
    t0 = time.perf_counter()
    size = bench.probe.remote()
    print(json.dumps({{"seconds": time.perf_counter() - t0, "size": size}}))
"""

WRITE = """
import json, sys
sys.path.insert(0, {here!r})
import app as bench
with bench.app.run():
    w, c = bench.write.remote({mib})
    print(json.dumps({{"write": w, "commit": c}}))
"""


def run_py(server, code, volume, timeout=900) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=server.env(FERRY_BENCH_VOLUME=volume),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench app failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mounts", type=int, default=3)
    args = ap.parse_args()
    data = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
    modal_cli = str(Path(sys.executable).parent / "modal")
    scratch = Path(tempfile.mkdtemp(prefix="ferry-bench-volumes-", dir=data.parent))
    server = Server(data)
    stamp = time.strftime("%H%M%S")
    xfer_vol, big_vol, put_vol, empty_vol = (f"bench-{k}-{stamp}" for k in ("xfer", "big", "put", "empty"))
    res = {"cp": [], "cp_sync": [], "put": [], "get": []}
    mounts = {}
    try:
        env = server.env()
        src, dst = scratch / "src.bin", scratch / "dst.bin"
        make_source(src, args.mib)
        timed([modal_cli, "volume", "create", xfer_vol], env)
        for r in range(args.rounds):
            perturb(src, r)
            res["cp"].append(timed(["cp", str(src), str(dst)]))
            dst.unlink()
            res["cp_sync"].append(timed(["sh", "-c", f"cp {src} {dst} && sync {dst}"]))
            dst.unlink()
            res["put"].append(timed([modal_cli, "volume", "put", xfer_vol, str(src), f"/big-{r}.bin"], env))
            res["get"].append(timed([modal_cli, "volume", "get", xfer_vol, f"/big-{r}.bin", str(dst)], env))
            if r == 0 and sha256(dst) != sha256(src):
                raise RuntimeError("the file got back differs from the one put")
            dst.unlink()
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in res.items()), flush=True)

        here = str(HERE)
        w = run_py(server, WRITE.format(here=here, mib=args.mib), big_vol)
        mounts["write"], mounts["commit"] = w["write"], w["commit"]
        mounts["big"] = []
        mounts["empty"] = []
        for _ in range(args.mounts):
            p = run_py(server, PROBE.format(here=here), big_vol)
            assert p["size"] == args.mib << 20, p
            mounts["big"].append(p["seconds"])
            p = run_py(server, PROBE.format(here=here), empty_vol)
            assert p["size"] == -1, p
            mounts["empty"].append(p["seconds"])
        timed([modal_cli, "volume", "create", put_vol], env)
        timed([modal_cli, "volume", "put", put_vol, str(src), "/big.bin"], env)
        mounts["put_first"] = run_py(server, PROBE.format(here=here), put_vol)["seconds"]
        mounts["put_again"] = run_py(server, PROBE.format(here=here), put_vol)["seconds"]
        for v in (xfer_vol, big_vol, put_vol, empty_vol):
            subprocess.run([modal_cli, "volume", "delete", "--yes", v], env=env, capture_output=True)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in res.items()}
    gib = args.mib / 1024
    rate = lambda s: f"{args.mib / s:,.0f} MiB/s"  # noqa: E731
    load = os.getloadavg()[0]
    print()
    print(f"# Volumes, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, load {load:.2f}; {gib:g} GiB file, median of {args.rounds} rounds")
    print()
    print("| Transfer | time | throughput | baseline | ratio (baseline time / Ferry time) |")
    print("|---|---:|---:|---|---:|")
    print(f"| `cp` | {med['cp']:.2f} s | {rate(med['cp'])} | | |")
    print(f"| `cp` + fsync | {med['cp_sync']:.2f} s | {rate(med['cp_sync'])} | | |")
    print(f"| `modal volume put` | {med['put']:.2f} s | {rate(med['put'])} | `cp` + fsync | {med['cp_sync'] / med['put']:.2f} |")
    print(f"| `modal volume get` | {med['get']:.2f} s | {rate(med['get'])} | `cp` | {med['cp'] / med['get']:.2f} |")
    print()
    print("| Container | time |")
    print("|---|---:|")
    print(f"| write {gib:g} GiB in a container / its `commit()` | {mounts['write']:.2f} s / {mounts['commit']:.2f} s |")
    print(f"| first `.remote()` in a fresh container, volume with the committed {gib:g} GiB file (median) | {statistics.median(mounts['big']):.3f} s |")
    print(f"| the same, empty volume (median) | {statistics.median(mounts['empty']):.3f} s |")
    print(f"| the same, file put through the CLI: first mount (joins its blocks) / next | {mounts['put_first']:.3f} s / {mounts['put_again']:.3f} s |")


if __name__ == "__main__":
    main()
