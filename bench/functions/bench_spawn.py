"""Ferry under a large backlog: N `.spawn()`ed no-op inputs queue, then complete, while the
server's resident memory and CPU are sampled from /proc.

Starts the real `ferry serve` (loopback, a free port) on the data dir that keeps built images
(`FERRY_TEST_DATA_DIR`, default /var/tmp/ferry-test), deploys `noop_app.py` with the real `modal`
CLI, then one client process spawns N calls (`Function.spawn.aio`, 64 in flight) and reads each
result with `FunctionCall.get.aio()`. Prints the phases' wall time, the server's peak and final
RSS (VmRSS, sampled every 100 ms) and its CPU per input.

Usage: .venv/bin/python bench/functions/bench_spawn.py [--inputs 100000] [--max-containers 4]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_functions import FerryServer, cpu_of, ferry_bin  # noqa: E402

CLIENT = """
import asyncio, json, sys, time, modal
n = int(sys.argv[1])
noop = modal.Function.from_name("ferry-bench-functions", "noop")
async def main():
    sem = asyncio.Semaphore(64)
    t0 = time.time()
    async def one(i):
        async with sem:
            return await noop.spawn.aio(i)
    calls = await asyncio.gather(*(one(i) for i in range(n)))
    t1 = time.time()
    print(json.dumps({"phase": "spawned", "at": t1}), flush=True)
    async def get(c):
        async with sem:
            return await c.get.aio()
    values = await asyncio.gather(*(get(c) for c in calls))
    t2 = time.time()
    assert values == list(range(n)), "wrong results"
    print(json.dumps({"phase": "done", "spawn_s": t1 - t0, "get_s": t2 - t1}), flush=True)
asyncio.run(main())
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--max-containers", type=int, default=4)
    ap.add_argument("--data-dir", default=os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferry-bench-spawn-") as tmp:
        server = FerryServer(ferry_bin(), Path(a.data_dir), Path(tmp)).start()
        try:
            env = server.client_env()
            env["FERRY_BENCH_MAX_CONTAINERS"] = str(a.max_containers)
            cli = str(Path(sys.executable).parent / "modal")
            deploy = subprocess.run([cli, "deploy", str(HERE / "noop_app.py")], env=env, capture_output=True, text=True, timeout=600)
            if deploy.returncode != 0:
                sys.exit(deploy.stdout + deploy.stderr)
            pid = server.proc.pid
            samples = []
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    samples.append((time.time(), rss_kib(pid)))
                    time.sleep(0.1)

            threading.Thread(target=sample, daemon=True).start()
            rss0, cpu0, t0 = rss_kib(pid), cpu_of(pid), time.time()
            out = subprocess.run([sys.executable, "-c", CLIENT, str(a.inputs)], env=env, capture_output=True, text=True, timeout=3600)
            t1, cpu1 = time.time(), cpu_of(pid)
            time.sleep(40)  # calls leave memory 30 s after their last read
            rss_after = rss_kib(pid)
            stop.set()
            if out.returncode != 0:
                sys.exit(out.stdout + out.stderr)
            import json

            phases = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
            done = phases[-1]
            peak = max(r for _, r in samples)
            print(f"inputs: {a.inputs:,} spawned no-op calls, max_containers={a.max_containers}")
            print(f"spawn: {done['spawn_s']:.1f} s ({a.inputs / done['spawn_s']:,.0f}/s); all results: {done['get_s']:.1f} s more")
            print(f"server RSS: {rss0 // 1024} MiB before, peak {peak // 1024} MiB, {rss_after // 1024} MiB 40 s after the last result")
            print(f"server CPU: {cpu1 - cpu0:.1f} s, {(cpu1 - cpu0) / a.inputs * 1e6:,.0f} µs per input (spawn, run, get)")
            print(f"wall: {t1 - t0:.1f} s")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
