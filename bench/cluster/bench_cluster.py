"""Functions on the cluster topology against the single-node embedded default, on one machine,
in one run.

- single node: `ferry serve` on its data dir (SQLite, local bytes), containers on its own host;
- cluster: `ferry serve` on PostgreSQL (a throwaway cluster with fsync on) and a SeaweedFS
  bucket, running no containers itself (`--no-local-containers`), and one `ferry worker` in a
  network namespace of its own with its own address (tests/serve/hosts.py), fetching the image's
  layer from the bucket, as a separate worker host would.

Both serve the same no-op app (bench/functions/noop_app.py) to the real pinned `modal` SDK:

- cold start: K fresh client interpreters, each with a new `app.run()`; the first `.remote()`
  (a new container for an image that is already built) is timed;
- `.map` throughput over M inputs after a warm-up map, in one client.

Measures alternate between the two topologies so that other load on the machine hits both;
the figure of each is the median. Prints a table with the cluster / single-node ratios (target
for throughput: ≥ 0.8×). Needs root (network namespaces), PostgreSQL and `weed`
(`make setup`), and a prepared test data dir (FERRY_TEST_DATA_DIR, default /var/tmp/ferry-test).

    .venv/bin/python bench/cluster/bench_cluster.py [--map 2000] [--cold 5] [--rounds 2]
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "serve"))

from conftest import Ferry, ferry_bin  # noqa: E402
from hosts import Hosts, Worker, free_port  # noqa: E402
from s3 import SeaweedS3  # noqa: E402

DATA = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))

COLD = r"""
import json, sys, time
t0 = time.perf_counter()
from noop_app import app, noop
with app.run():
    t1 = time.perf_counter()
    assert noop.remote(7) == 7
    t2 = time.perf_counter()
print("RESULT " + json.dumps({"setup_s": t1 - t0, "first_call_s": t2 - t1}))
"""

MAP = r"""
import json, sys, time
from noop_app import app, noop
n = int(sys.argv[1])
with app.run():
    assert list(noop.map(range(50))) == list(range(50))
    t = time.perf_counter()
    out = list(noop.map(range(n)))
    took = time.perf_counter() - t
    assert out == list(range(n))
print("RESULT " + json.dumps({"inputs_per_s": n / took}))
"""


def client(server: Ferry, code: str, *args: str, timeout: float = 600) -> dict:
    env = server.env(PYTHONPATH=str(REPO / "bench" / "functions"))
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"client failed on {server.url}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])


def postgres() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        ["bash", str(REPO / "tools" / "pg-test-cluster.sh"), "run"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ, FERRY_PG_DURABLE="1"),
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("postgres://"):
        raise RuntimeError("tools/pg-test-cluster.sh did not start PostgreSQL (tools/setup.d/postgres.sh installs it)")
    return proc, url


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--map", type=int, default=2000)
    ap.add_argument("--cold", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_cluster: needs root (network namespaces for the worker host)")
    if not (DATA / "runtime").exists():
        sys.exit(f"bench_cluster: {DATA} has no prepared client runtime (`ferry images prepare --data-dir {DATA}`)")

    root = Path(tempfile.mkdtemp(prefix="ferry-bench-cluster-"))
    hosts = Hosts(1)
    pg_proc, pg_url = postgres()
    bucket = None
    servers, workers = [], []
    saved = dict(os.environ)
    try:
        hosts.up()
        bucket = SeaweedS3(ip=hosts.host_ip).start()
        os.environ.update(FERRY_BASE_SEED=str(DATA), **bucket.env())
        storage = bucket.storage_url()

        single = Ferry(root / "single", "--no-modal-profile").start()
        servers.append(single)
        fleet_port = free_port(hosts.host_ip)
        cluster = Ferry(
            root / "control", "--no-modal-profile", "--host", hosts.host_ip, "--no-tls", "--storage", storage,
            "--database", pg_url, "--fleet-port", str(fleet_port), "--no-local-containers",
        ).start()
        servers.append(cluster)
        made = subprocess.run(
            [ferry_bin(), "token", "create", "--worker", "--label", "bench", "--data-dir", str(cluster.data_dir)],
            capture_output=True, text=True, timeout=60, env=dict(os.environ, FERRY_DATABASE=pg_url),
        )
        if made.returncode != 0:
            raise RuntimeError(made.stderr)
        token = re.search(r"FERRY_WORKER_TOKEN=(\S+)", made.stdout).group(1)
        worker = Worker(hosts, 0, "bench-w1", root / "w1", f"http://{hosts.host_ip}:{fleet_port}", token, storage, dict(os.environ))
        workers.append(worker.start())

        # First runs build nothing (the image is in the seed) but fetch and unpack the layer on
        # the worker and start the first containers: not measured.
        for s in (single, cluster):
            client(s, COLD)
        cold = {"single": [], "cluster": []}
        rate = {"single": [], "cluster": []}
        for r in range(args.rounds):
            for i in range(args.cold):
                for name, s in (("single", single), ("cluster", cluster)) if i % 2 == 0 else (("cluster", cluster), ("single", single)):
                    cold[name].append(client(s, COLD)["first_call_s"] * 1000)
            for name, s in (("single", single), ("cluster", cluster)) if r % 2 == 0 else (("cluster", cluster), ("single", single)):
                rate[name].append(client(s, MAP, str(args.map))["inputs_per_s"])
            print(f"round {r + 1}/{args.rounds}: cold p50 single {statistics.median(cold['single']):.0f} ms, "
                  f"cluster {statistics.median(cold['cluster']):.0f} ms; map single {rate['single'][-1]:.0f}/s, "
                  f"cluster {rate['cluster'][-1]:.0f}/s", flush=True)
    finally:
        for w in workers:
            w.stop()
        for s in servers:
            s.stop()
        if bucket:
            bucket.stop()
        hosts.down()
        pg_proc.stdin.close()
        pg_proc.wait(60)
        os.environ.clear()
        os.environ.update(saved)

    cs, cc = statistics.median(cold["single"]), statistics.median(cold["cluster"])
    ms, mc = statistics.median(rate["single"]), statistics.median(rate["cluster"])
    load = os.getloadavg()[0]
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}; "
          f"command: {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    print("| measure | single node | cluster | cluster / single | target |")
    print("|---|---:|---:|---:|---|")
    print(f"| cold start p50, first `.remote()` of a new app (ms, {len(cold['single'])} samples each) | {cs:.0f} | {cc:.0f} | {cc / cs:.2f}× (time) | |")
    print(f"| `.map` over {args.map} no-op inputs (inputs/s, median of {args.rounds}) | {ms:.0f} | {mc:.0f} | {mc / ms:.2f}× | ≥ 0.8× |")


if __name__ == "__main__":
    main()
