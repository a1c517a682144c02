"""Dict and Queue operations per second with Ferry's state on PostgreSQL against the embedded
SQLite default, on the same machine, in the same run.

Starts a throwaway PostgreSQL cluster with fsync on (tools/pg-test-cluster.sh with
FERRY_PG_DURABLE=1, the like-for-like of SQLite's `--durability full`), then two real
`ferry serve` processes: one on a data dir's SQLite database, one with `FERRY_DATABASE` on the
cluster. Each round runs every operation through the pinned `modal` SDK in a fresh client
process per server, alternating between the servers, so load elsewhere on the machine hits
both; the figure is the median round. Every result is checked.

    .venv/bin/python bench/store/bench_store.py [--ops 500] [--rounds 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CLIENT = r"""
import json, sys, time
import modal

n = int(sys.argv[1])
tag = sys.argv[2]
out = {}
d = modal.Dict.from_name(f"bench-{tag}", create_if_missing=True)
q = modal.Queue.from_name(f"bench-{tag}", create_if_missing=True)
value = {"i": 0, "pad": "x" * 80}
for i in range(20):  # warm-up: connections, prepared statements
    d[f"w{i}"] = value
    assert d[f"w{i}"] == value

def timed(name, units, body):
    t = time.perf_counter()
    body()
    out[name] = units / (time.perf_counter() - t)

def dict_put():
    for i in range(n):
        d[f"k{i}"] = {"i": i, "pad": "x" * 80}
def dict_get():
    for i in range(n):
        assert d[f"k{i}"]["i"] == i
def dict_contains():
    for i in range(n):
        assert f"k{i}" in d
def queue_put():
    for i in range(n):
        q.put(i)
def queue_get():
    for i in range(n):
        assert q.get(block=False) == i
def queue_put_many():
    for r in range(n // 100):
        q.put_many(list(range(100)))
def queue_get_many():
    for r in range(n // 100):
        got = q.get_many(100, block=False)
        assert got == list(range(100)), got[:5]

timed("Dict put", n, dict_put)
timed("Dict get", n, dict_get)
timed("Dict contains", n, dict_contains)
timed("Queue put", n, queue_put)
timed("Queue get (non-blocking)", n, queue_get)
timed("Queue put_many(100), items", (n // 100) * 100, queue_put_many)
timed("Queue get_many(100), items", (n // 100) * 100, queue_get_many)
d.clear()
print(json.dumps(out))
"""


def ferry_bin() -> str:
    if os.environ.get("FERRY_BIN"):
        return os.environ["FERRY_BIN"]
    return str(REPO / "target" / "release" / "ferry")


class Server:
    def __init__(self, name: str, data_dir: Path, env: dict):
        self.name, self.data_dir, self.env = name, data_dir, env
        self.proc = None

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "serve.log"
        self.proc = subprocess.Popen(
            [ferry_bin(), "serve", "--data-dir", str(self.data_dir), "--port", "0", "--no-modal-profile", "--no-dashboard"],
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            env={**{k: v for k, v in os.environ.items() if k != "FERRY_DATABASE"}, **self.env},
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            for line in log.read_text().splitlines():
                if line.startswith("Ferry is serving the Modal API at "):
                    self.url = line.split(" at ", 1)[1].split(" ")[0]
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: ferry serve exited:\n{log.read_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: ferry serve did not start")

    def client_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
        env.update(dict(line.split("=", 1) for line in (self.data_dir / "client.env").read_text().splitlines()))
        env["MODAL_SERVER_URL"] = self.url
        env["MODAL_CONFIG_PATH"] = str(self.data_dir / "modal.toml")
        return env

    def run_round(self, n: int, round_no: int) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", CLIENT, str(n), f"{round_no}"], env=self.client_env(), capture_output=True, text=True, timeout=600
        )
        if out.returncode != 0:
            raise RuntimeError(f"{self.name}: client failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=500, help="operations of each kind per round (default 500)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per server; the median is reported (default 3)")
    args = ap.parse_args()

    cluster = subprocess.Popen(
        ["bash", str(REPO / "tools" / "pg-test-cluster.sh"), "run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, FERRY_PG_DURABLE="1"),
    )
    servers = []
    try:
        url = cluster.stdout.readline().strip()
        if not url.startswith("postgres://"):
            raise RuntimeError("tools/pg-test-cluster.sh did not start PostgreSQL (tools/setup.d/postgres.sh installs it)")
        with tempfile.TemporaryDirectory(prefix="ferry-bench-store-") as tmp:
            sqlite = Server("SQLite", Path(tmp) / "sqlite", {}).start()
            postgres = Server("PostgreSQL", Path(tmp) / "postgres", {"FERRY_DATABASE": url}).start()
            servers = [sqlite, postgres]
            results = {s.name: [] for s in servers}
            for r in range(args.rounds):
                for s in servers if r % 2 == 0 else reversed(servers):
                    results[s.name].append(s.run_round(args.ops, r))
                    print(f"round {r + 1}/{args.rounds} {s.name}: done", file=sys.stderr)
            print(f"\n{args.ops} operations of each kind per round, median of {args.rounds} rounds\n")
            print("| Operation | SQLite ops/s | PostgreSQL ops/s | PostgreSQL / SQLite |")
            print("|---|---:|---:|---:|")
            for op in results["SQLite"][0]:
                a = statistics.median(x[op] for x in results["SQLite"])
                b = statistics.median(x[op] for x in results["PostgreSQL"])
                print(f"| {op} | {a:,.0f} | {b:,.0f} | {b / a:.2f} |")
    finally:
        for s in servers:
            s.stop()
        cluster.stdin.close()
        cluster.wait(60)


if __name__ == "__main__":
    main()
