"""Ferry's Dict and Queue against Redis, in one run on one machine.

Starts the real `ferry serve` and two local `redis-server`s on free loopback ports, each with its
own temporary directory on the same filesystem:

- Redis with `--appendonly yes --appendfsync always`: the like-for-like baseline, since Ferry's
  default durability (`full`) fsyncs every commit;
- Redis with its defaults (periodic RDB snapshots, no AOF): the baseline most deployments know.

Ferry is driven through the real pinned `modal` SDK (modal.Dict / modal.Queue .from_name), Redis
through redis-py, with the same pickled payloads (~100 bytes) and the same number of sequential
calls after a warm-up; one row gets a larger value (1 KiB by default), where a response no longer
fits one small TCP segment. Then N client processes do Dict puts and gets at once against each server.
The servers take turns in interleaved rounds and each figure is the median round.

Prints a table of ops/s and ratios (Ferry / Redis), the client's and the server's CPU time per
operation, the machine and the command line, and the same as markdown at the end.

Usage: .venv/bin/python bench/objects/bench_objects.py [--ops 2000] [--procs 8]
(bench/objects/run.sh installs redis-server and the redis client first when they are missing.)
"""

import argparse
import datetime
import json
import os
import pickle
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve()


class BenchTimeout(Exception):
    pass


def payload(i: int) -> dict:
    # Pickles to ~104 bytes, with modal's serializer and with plain pickle alike.
    return {"id": i, "body": "x" * 70}


# --------------------------------------------------------------------------------------------
# Clients: one method per measured operation, same shape for both servers.


class FerryObjects:
    """modal.Dict and modal.Queue through the real SDK, pointed at Ferry by MODAL_* env vars."""

    def __init__(self, tag: str):
        import modal

        self.d = modal.Dict.from_name(f"bench-{tag}", create_if_missing=True)
        self.q = modal.Queue.from_name(f"bench-{tag}", create_if_missing=True)

    def dict_put(self, k, v):
        self.d.put(k, v)

    def dict_get(self, k):
        return self.d.get(k)

    def dict_contains(self, k):
        return self.d.contains(k)

    def queue_put(self, v):
        self.q.put(v)

    def queue_get(self):
        return self.q.get(block=False)

    def queue_put_many(self, vs):
        self.q.put_many(vs)

    def queue_get_many(self, n):
        return self.q.get_many(n, block=False)


class RedisObjects:
    """The Redis equivalents: SET/GET/EXISTS for the Dict, RPUSH/LPOP for the Queue, with the
    values pickled and unpickled on the client as the modal SDK does."""

    def __init__(self, tag: str, port: int):
        import redis

        self.r = redis.Redis(host="127.0.0.1", port=port)
        self.dk = f"bench-{tag}:d:"
        self.qk = f"bench-{tag}:q"

    def dict_put(self, k, v):
        self.r.set(self.dk + k, pickle.dumps(v))

    def dict_get(self, k):
        raw = self.r.get(self.dk + k)
        return None if raw is None else pickle.loads(raw)

    def dict_contains(self, k):
        return self.r.exists(self.dk + k) == 1

    def queue_put(self, v):
        self.r.rpush(self.qk, pickle.dumps(v))

    def queue_get(self):
        raw = self.r.lpop(self.qk)
        return None if raw is None else pickle.loads(raw)

    def queue_put_many(self, vs):
        self.r.rpush(self.qk, *[pickle.dumps(v) for v in vs])

    def queue_get_many(self, n):
        return [pickle.loads(raw) for raw in (self.r.lpop(self.qk, n) or [])]


def make_client(backend: str, tag: str, redis_port: int | None):
    if backend == "ferry":
        return FerryObjects(tag)
    return RedisObjects(tag, redis_port)


# --------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen | None):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def ferry_bin() -> Path:
    env = os.environ.get("FERRY_BIN")
    if env:
        return Path(env)
    for build in ("release", "debug"):
        p = ROOT / "target" / build / "ferry"
        if p.exists():
            return p
    raise SystemExit("no ferry binary: run `cargo build --release -p ferry` or set FERRY_BIN")


class FerryServer:
    def __init__(self, binary: Path, tmp: Path):
        self.binary = binary
        self.data_dir = tmp / "ferry-data"
        self.log_path = tmp / "ferry.log"
        self.config_path = tmp / "modal.toml"
        self.proc = None

    def start(self, timeout: float = 30):
        self.data_dir.mkdir(parents=True)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--data-dir", str(self.data_dir), "--port", "0", "--no-modal-profile"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, MODAL_CONFIG_PATH=str(self.config_path)),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text()
            if any(line.startswith("Ferry is serving the Modal API at ") for line in text.splitlines()):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferry serve exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise RuntimeError(f"ferry serve did not become ready in {timeout}s:\n{self.log_path.read_text()}")

    def export_client_env(self):
        """Points the modal SDK of this process and of the processes it starts at this server.
        Must run before `import modal`: the SDK reads its config at import."""
        for k in [k for k in os.environ if k.startswith("MODAL_")]:
            del os.environ[k]
        for line in (self.data_dir / "client.env").read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                os.environ[k.strip()] = v.strip()
        os.environ["MODAL_CONFIG_PATH"] = str(self.config_path)

    def stop(self):
        stop(self.proc)


class RedisServer:
    def __init__(self, name: str, tmp: Path, extra: list[str]):
        self.name = name
        self.dir = tmp / name
        self.log_path = tmp / f"{name}.log"
        self.extra = extra
        self.port = free_port()
        self.proc = None

    def start(self, timeout: float = 15):
        import redis

        self.dir.mkdir(parents=True)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
             "--daemonize", "no", "--protected-mode", "yes", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping():
                    return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not become ready:\n{self.log_path.read_text()}")

    def stop(self):
        stop(self.proc)


# --------------------------------------------------------------------------------------------
# Measurements. The servers are measured in interleaved rounds (Ferry, Redis always, Redis default,
# then the next round in a rotated order) and each figure is the median over the rounds, so that a
# burst of load from elsewhere on the machine lands on all of them rather than on one.


class Meter:
    """Wall time, this process's CPU time (all threads: the modal SDK runs its event loop on a
    thread of its own) and the server process's CPU time over one timed section."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid

    def __enter__(self):
        self.cpu0 = time.process_time()
        self.srv0 = proc_cpu_s(self.server_pid)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0
        self.srv = proc_cpu_s(self.server_pid) - self.srv0


def check(cond: bool, what: str):
    if not cond:
        raise AssertionError(f"wrong result: {what}")


def median_of(samples: list) -> tuple:
    """From rounds of (units, wall s, client CPU s, server CPU s): (median units/s, client CPU
    µs/unit, server CPU µs/unit). CPU is summed over the rounds: /proc counts in 10 ms ticks."""
    units = sum(s[0] for s in samples)
    return (statistics.median(s[0] / s[1] for s in samples),
            sum(s[2] for s in samples) / units * 1e6, sum(s[3] for s in samples) / units * 1e6)


def warm_up(c, warmup: int, batch: int):
    """Connections, hydration of the objects, the server's caches and prepared statements."""
    for i in range(warmup):
        c.dict_put(f"w{i}", payload(i))
        c.dict_get(f"w{i}")
        c.dict_contains(f"w{i}")
        c.queue_put(payload(i))
    for i in range(warmup):
        check(c.queue_get() is not None, "warm-up queue get")
    c.queue_put_many([payload(i) for i in range(batch)])
    check(len(c.queue_get_many(batch)) == batch, "warm-up get_many")
    check(c.queue_get() is None, "queue is empty after the warm-up")


def sequential(targets: list, args) -> dict:
    """Each operation args.ops times in a row per server, split into args.rounds interleaved
    rounds. targets: [(label, client, server pid)]. Returns {label: {operation: median_of(...)}}."""
    rounds, n, batch = args.rounds, args.ops // args.rounds * args.rounds, args.batch
    per, big_per, batches_per = n // rounds, max(1, args.big_ops // rounds), max(1, args.batches // rounds)
    vals = [payload(i) for i in range(n)]
    big = [{"id": i, "body": "x" * args.big_bytes} for i in range(big_per * rounds)]
    chunks = [[payload(j * batch + i) for i in range(batch)] for j in range(batches_per * rounds)]
    out = {label: {} for label, _, _ in targets}

    def phase(name, units, body):
        samples = {label: [] for label, _, _ in targets}
        for r in range(rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for label, c, pid in order:
                with Meter(pid) as m:
                    body(c, r)
                samples[label].append((units, m.wall, m.cpu, m.srv))
        for label in samples:
            out[label][name] = median_of(samples[label])

    def span(r, size):
        return range(r * size, (r + 1) * size)

    def dict_put(c, r):
        for i in span(r, per):
            c.dict_put(f"k{i}", vals[i])

    def dict_get(c, r):
        for i in span(r, per):
            v = c.dict_get(f"k{i}")
            check(v is not None and v["id"] == i, f"dict get k{i}")

    def dict_contains(c, r):
        for i in span(r, per):
            check(c.dict_contains(f"k{i}"), f"dict contains k{i}")

    def dict_get_big(c, r):
        for i in span(r, big_per):
            v = c.dict_get(f"b{i}")
            check(v is not None and v["id"] == i, f"dict get b{i}")

    def queue_put(c, r):
        for i in span(r, per):
            c.queue_put(vals[i])

    def queue_get(c, r):
        for i in span(r, per):
            v = c.queue_get()
            check(v is not None and v["id"] == i, f"queue get #{i}")

    def queue_put_many(c, r):
        for j in span(r, batches_per):
            c.queue_put_many(chunks[j])

    def queue_get_many(c, r):
        for _ in range(batches_per):
            check(len(c.queue_get_many(batch)) == batch, "get_many batch size")

    for label, c, _ in targets:
        warm_up(c, args.warmup, batch)
    phase("Dict put", per, dict_put)
    phase("Dict get", per, dict_get)
    phase("Dict contains", per, dict_contains)
    if args.big_ops:
        for _, c, _ in targets:
            for i, v in enumerate(big):
                c.dict_put(f"b{i}", v)
        phase(f"Dict get, {args.big_bytes} B value ({big_per * rounds} calls)", big_per, dict_get_big)
    phase("Queue put", per, queue_put)
    phase("Queue get (non-blocking)", per, queue_get)
    phase(f"Queue put_many({batch}), items", batch * batches_per, queue_put_many)
    phase(f"Queue get_many({batch}), items", batch * batches_per, queue_get_many)
    for _, c, _ in targets:
        check(c.queue_get() is None, "queue is empty at the end")
    return out


def worker(args):
    """One of the concurrent client processes: warms up and says `ready`; then for each `go` line
    on stdin alternates Dict put and get on keys of its own and prints its start and end times."""
    c = make_client(args.worker, args.tag, args.redis_port)
    me = args.worker_index
    for i in range(10):
        c.dict_put(f"w{me}-{i}", payload(i))
        c.dict_get(f"w{me}-{i}")
    print("ready", flush=True)
    for r, line in enumerate(sys.stdin):
        if line.strip() != "go":
            return
        t0 = time.monotonic()
        for i in range(args.worker_ops // 2):
            key = f"c{me}-{r}-{i}"
            c.dict_put(key, payload(i))
            v = c.dict_get(key)
            check(v is not None and v["id"] == i, f"concurrent get {key}")
        t1 = time.monotonic()
        print(json.dumps({"t0": t0, "t1": t1, "ops": (args.worker_ops // 2) * 2}), flush=True)


class WorkerPool:
    """N client processes for one server, started and warmed up once, run round after round."""

    def __init__(self, backend: str, redis_port: int | None, server_pid: int, procs: int, ops_each: int):
        self.backend, self.server_pid = backend, server_pid
        tag = f"conc-{time.time_ns()}"
        self.workers = []
        for k in range(procs):
            cmd = [sys.executable, str(SCRIPT), "--worker", backend, "--worker-index", str(k), "--tag", tag,
                   "--worker-ops", str(ops_each)]
            if redis_port:
                cmd += ["--redis-port", str(redis_port)]
            self.workers.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))

    def wait_ready(self):
        for w in self.workers:
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a {self.backend} worker failed to start (exit {w.wait()})")

    def round(self) -> tuple:
        """All processes at once; aggregate ops/s = all their ops / (last end - first start)."""
        srv0 = proc_cpu_s(self.server_pid)
        for w in self.workers:
            w.stdin.write("go\n")
            w.stdin.flush()
        results = []
        for w in self.workers:
            line = w.stdout.readline().strip()
            if not line:
                raise RuntimeError(f"a {self.backend} worker failed (exit {w.wait()})")
            results.append(json.loads(line))
        srv = proc_cpu_s(self.server_pid) - srv0
        total = sum(r["ops"] for r in results)
        wall = max(r["t1"] for r in results) - min(r["t0"] for r in results)
        return (total, wall, float("nan"), srv)

    def close(self):
        for w in self.workers:
            if w.stdin and not w.stdin.closed:
                try:
                    w.stdin.close()
                except OSError:
                    pass
        for w in self.workers:
            stop(w)


def concurrent(targets: list, args, pools: list) -> dict:
    """targets: [(label, backend, redis port, server pid)]. Pools are appended to `pools` as they
    start, so that the caller stops them whatever happens."""
    for label, backend, port, pid in targets:
        pools.append(WorkerPool(backend, port, pid, args.procs, args.conc_ops))
    for p in pools:
        p.wait_ready()
    samples = {label: [] for label, *_ in targets}
    for r in range(args.conc_rounds):
        order = list(zip(targets, pools))
        order = order[r % len(order):] + order[:r % len(order)]
        for (label, *_), pool in order:
            samples[label].append(pool.round())
    return {label: median_of(s) for label, s in samples.items()}


# --------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem": f"{mem_kb / 2**20:.0f} GiB", "kernel": platform.release()}


def versions(ferry: Path) -> dict:
    import modal
    import redis

    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:
            return "?"

    return {
        "ferry": f"{ferry} ({first_line([str(ferry), '--version'])})",
        "redis-server": first_line(["redis-server", "--version"]),
        "modal": modal.__version__,
        "redis-py": redis.__version__,
        "python": platform.python_version(),
    }


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_us(x: float) -> str:
    return "-" if x != x else f"{x:,.0f}"


def report(rows: list, header: dict):
    cols = ["Operation", "Ferry ops/s", "Redis (fsync always) ops/s", "Ferry / Redis (always)",
            "Redis (default) ops/s", "Ferry / Redis (default)"]
    table = [[name, fmt_rate(f[0]), fmt_rate(ra[0]), f"{f[0] / ra[0]:.2f}", fmt_rate(rd[0]), f"{f[0] / rd[0]:.2f}"]
             for name, f, ra, rd in rows]
    cpu_cols = ["Operation", "Ferry: client CPU µs/op", "Ferry: server CPU µs/op",
                "Redis (always): client CPU µs/op", "Redis (always): server CPU µs/op"]
    cpu_table = [[name, fmt_us(f[1]), fmt_us(f[2]), fmt_us(ra[1]), fmt_us(ra[2])] for name, f, ra, rd in rows]

    def text(cols, table):
        widths = [max(len(str(r[i])) for r in [cols, *table]) for i in range(len(cols))]
        lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in [cols, *table]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def md(cols, table):
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in table]
        return "\n".join(lines)

    head = [f"{k}: {v}" for k, v in header.items()]
    print()
    print("\n".join(head))
    print()
    print(text(cols, table))
    print()
    print("CPU time per operation (client: the benchmark process, all threads; server: the server process)")
    print(text(cpu_cols, cpu_table))
    print()
    print("----- markdown -----")
    print("\n".join(f"- {h}" for h in head))
    print()
    print(md(cols, table))
    print()
    print(md(cpu_cols, cpu_table))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=2000, help="sequential calls per operation and server")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds the sequential calls are split into")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up calls per operation")
    ap.add_argument("--batch", type=int, default=100, help="items per put_many/get_many call")
    ap.add_argument("--batches", type=int, default=50, help="put_many/get_many calls")
    ap.add_argument("--big-bytes", type=int, default=1024, help="value size for the larger-value Dict get row")
    ap.add_argument("--big-ops", type=int, default=200, help="calls for the larger-value Dict get row (0: skip it)")
    ap.add_argument("--procs", type=int, default=8, help="client processes in the concurrent case")
    ap.add_argument("--conc-ops", type=int, default=200, help="Dict ops (half puts, half gets) per concurrent process and round")
    ap.add_argument("--conc-rounds", type=int, default=3, help="interleaved rounds of the concurrent case")
    ap.add_argument("--time-limit", type=int, default=290, help="seconds before the run gives up (servers are stopped)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    # Internal: the concurrent case's client processes.
    ap.add_argument("--worker", choices=["ferry", "redis"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--worker-ops", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="", help=argparse.SUPPRESS)
    ap.add_argument("--redis-port", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    command = shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable,
                          os.path.relpath(SCRIPT, ROOT), *sys.argv[1:]])
    binary = ferry_bin()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found: run bench/objects/run.sh (installs the Debian package redis-server)")

    def on_alarm(*_):
        raise BenchTimeout(f"the run took over {args.time_limit}s")

    def on_term(*_):
        raise SystemExit("interrupted")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.time_limit)

    tmp = Path(tempfile.mkdtemp(prefix="ferry-bench-objects-"))
    servers, pools = [], []
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()[0]
    try:
        # Each server joins `servers` before it starts, so a failed start is stopped too.
        ferry = FerryServer(binary, tmp)
        redis_always = RedisServer("redis-always", tmp, ["--appendonly", "yes", "--appendfsync", "always"])
        redis_default = RedisServer("redis-default", tmp, [])
        for s in (ferry, redis_always, redis_default):
            servers.append(s)
            s.start()
        ferry.export_client_env()
        if "debug" in binary.parts:
            print(f"note: {binary} is a debug build; release figures need `cargo build --release -p ferry`", file=sys.stderr)

        labels = ["Ferry", "Redis (fsync always)", "Redis (default)"]
        backends = [("ferry", None, ferry.proc.pid), ("redis", redis_always.port, redis_always.proc.pid),
                    ("redis", redis_default.port, redis_default.proc.pid)]
        print(f"sequential: {args.ops} calls per operation and server in {args.rounds} rounds ...", file=sys.stderr, flush=True)
        tag = f"seq-{time.time_ns()}"
        seq = sequential([(label, make_client(b, tag, port), pid) for label, (b, port, pid) in zip(labels, backends)], args)
        print(f"concurrent: {args.procs} processes x {args.conc_ops} Dict puts/gets, {args.conc_rounds} rounds ...",
              file=sys.stderr, flush=True)
        conc = concurrent([(label, *b) for label, b in zip(labels, backends)], args, pools)
        for label in labels:
            seq[label][f"Dict put+get, {args.procs} processes (aggregate)"] = conc[label]
        f, ra, rd = (seq[label] for label in labels)
        rows = [(name, f[name], ra[name], rd[name]) for name in f]
        m = machine()
        header = {
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{m['nproc']} CPUs ({m['cpu']}), {m['mem']} RAM, Linux {m['kernel']}; "
                       f"load average before the run: {load_before:.2f}",
            "command": command,
            **versions(binary),
            "setup": (f"payload ~{len(pickle.dumps(payload(0)))} B pickled; {args.ops} sequential calls per op and server "
                      f"after {args.warmup} warm-up, median of {args.rounds} interleaved rounds; batches: {args.batches} x "
                      f"{args.batch} items; concurrent: {args.procs} processes x {args.conc_ops} ops, median of "
                      f"{args.conc_rounds} rounds; all servers on 127.0.0.1, data on the same filesystem; "
                      f"Ferry with its default durability (fsync every commit)"),
        }
        report(rows, header)
    finally:
        signal.alarm(0)
        for p in pools:
            p.close()
        for s in reversed(servers):
            s.stop()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except BenchTimeout as e:
        sys.exit(f"bench_objects: {e}; servers stopped")
