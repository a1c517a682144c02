"""Ferry's functions against Ray and a local process pool, in one run on one machine.

Starts the real `ferry serve` (loopback, a free port) on the data dir that keeps built images
(`FERRY_TEST_DATA_DIR`, default /var/tmp/ferry-test) after `ferry images prepare`, and drives it
with the real pinned `modal` SDK through `bench/functions/noop_app.py` (a no-op function on
`modal.Image.debian_slim()`):

- warm round trip: inside `with app.run():`, one call to warm, then N sequential `.remote()`;
- throughput: `.map` over M inputs after a warm-up map;
- cold start: K fresh interpreters, each with a new `app.run()`; the first `.remote()` (a new
  container for an image that is already built) is timed apart from the `app.run()` set-up.

The same measures, side by side:
- Ray: `ray.init(num_cpus=2)` on loopback, a `@ray.remote` no-op: `ray.get(f.remote())` in turn,
  `ray.get([f.remote(i) for i in range(M)])`, and a cold start as a fresh driver process that
  connects to the running Ray instance (`ray.init(address=...)`) and makes its first call, which
  starts a worker process for the new job;
- a local `concurrent.futures.ProcessPoolExecutor(2)` (fork): the floor of a Python call handed
  to another process; cold start is the first call to a fresh one-process pool.

Each backend runs in a child process of its own (no shared client state, each with a time
limit). For Ferry it also counts CPU seconds of the client, of the server process and of the
containers (the server's descendant processes), to tell where the time goes.

Prints a table with the Ferry / Ray ratio and the targets, the machine and the command line, and
the same as markdown at the end. Targets are stated, not asserted.

Usage: .venv/bin/python bench/functions/bench_functions.py [--calls 200] [--map 10000] [--cold 20]
(bench/functions/run.sh installs Ray into .venv first when it is missing.)
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SCRIPT = Path(__file__).resolve()

# From the issue; printed next to the figures.
TARGETS = {
    "warm_p50": "≤ Ray",
    "map_rate": "≥ 5,000/s",
    "cold_p50": "≤ 300 ms",
}


# --------------------------------------------------------------------------------------------
# Small helpers


def pct(xs: list, q: float) -> float:
    """Nearest-rank percentile."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def summary(xs: list) -> dict:
    return {"p50": pct(xs, 50), "p90": pct(xs, 90), "mean": sum(xs) / len(xs) if xs else float("nan"), "n": len(xs)}


def cpu_of(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list:
    children = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def is_container_python(pid: int) -> bool:
    """The function's Python process in a container (the server's other descendants are its
    own helper processes around each container)."""
    try:
        return b"_container_entrypoint" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class CpuMeter:
    """CPU seconds of this process (the client), of the server and of its descendants (the
    containers), over a block. Containers started inside the block count from their start;
    those that exit inside it are missed, which the warm measures avoid by warming first."""

    def __init__(self, server_pid: int | None):
        self.server_pid = server_pid

    def sample(self) -> dict:
        if not self.server_pid:
            return {"client": time.process_time(), "server": 0.0, "containers": {}}
        return {
            "client": time.process_time(),
            "server": cpu_of(self.server_pid),
            "containers": {p: cpu_of(p) for p in descendants(self.server_pid)},
        }

    def __enter__(self):
        self.t0, self.s0 = time.perf_counter(), self.sample()
        return self

    def __exit__(self, *exc):
        s1 = self.sample()
        self.wall = time.perf_counter() - self.t0
        self.client = s1["client"] - self.s0["client"]
        self.server = s1["server"] - self.s0["server"]
        self.containers = sum(v - self.s0["containers"].get(p, 0.0) for p, v in s1["containers"].items())
        self.n_containers = sum(1 for p in s1["containers"] if is_container_python(p))

    def as_dict(self) -> dict:
        return {"wall": self.wall, "client": self.client, "server": self.server, "containers": self.containers}


def emit(obj: dict):
    """A child's result: one JSON line on stdout, found by its prefix among the SDK's output."""
    print("RESULT " + json.dumps(obj), flush=True)


def run_child(role: str, args: list, env: dict | None, timeout: float) -> dict:
    """Runs one child in a session of its own, so that whatever it started (Ray's raylet and
    workers, a process pool) is ended with it, at its time limit too."""
    cmd = [sys.executable, str(SCRIPT), "--child", role, *args]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        return {"error": f"{role}: over its {timeout:.0f} s limit", "stderr": stderr[-3000:]}
    finally:
        kill_group(proc.pid)
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[len("RESULT "):])
            out["child_wall"] = time.perf_counter() - t
            return out
    return {"error": f"{role}: exit {proc.returncode}", "stderr": (stderr or stdout)[-3000:]}


def kill_group(pgid: int):
    """Ends what is left of a child's process group: TERM, then KILL after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# Children: each measures one backend and prints one RESULT line.


def child_ferry(a):
    """Warm round trips and .map through the SDK, inside one `app.run()`."""
    from noop_app import app, noop

    server_pid = int(os.environ["BENCH_FERRY_PID"])
    out = {}
    t = time.perf_counter()
    with app.run():
        out["setup_s"] = time.perf_counter() - t
        t = time.perf_counter()
        noop.remote()
        out["first_s"] = time.perf_counter() - t
        for _ in range(5):
            noop.remote()
        lat = []
        with CpuMeter(server_pid) as m:
            for _ in range(a.calls):
                t = time.perf_counter()
                noop.remote()
                lat.append(time.perf_counter() - t)
        out["warm"] = summary(lat)
        out["warm_cpu"] = m.as_dict()

        # Warm-up map: starts the containers the real map will use.
        assert list(noop.map(range(min(2000, a.map)))) == list(range(min(2000, a.map)))
        with CpuMeter(server_pid) as m:
            got = list(noop.map(range(a.map)))
        assert got == list(range(a.map)), "map returned wrong results"
        out["map_s"] = m.wall
        out["map_cpu"] = m.as_dict()
        out["map_containers"] = m.n_containers
    emit(out)


def child_ferry_cold(a):
    """One cold-start sample: a new App in a fresh interpreter, its first call."""
    from noop_app import app, noop

    t0 = time.perf_counter()
    with app.run():
        t1 = time.perf_counter()
        noop.remote()
        t2 = time.perf_counter()
    emit({"setup_s": t1 - t0, "first_s": t2 - t1, "teardown_s": time.perf_counter() - t2})


def ray_init(**kw):
    import ray

    # Loopback only, no dashboard, no usage reporting.
    ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1", **kw)
    return ray


def child_ray(a):
    t = time.perf_counter()
    ray = ray_init(num_cpus=2)
    out = {"init_s": time.perf_counter() - t}

    @ray.remote
    def noop(x=None):
        return x

    try:
        t = time.perf_counter()
        ray.get(noop.remote())
        out["first_s"] = time.perf_counter() - t
        for _ in range(5):
            ray.get(noop.remote())
        lat = []
        with CpuMeter(None) as m:
            for _ in range(a.calls):
                t = time.perf_counter()
                ray.get(noop.remote())
                lat.append(time.perf_counter() - t)
        out["warm"] = summary(lat)
        assert ray.get([noop.remote(i) for i in range(min(2000, a.map))]) == list(range(min(2000, a.map)))
        t = time.perf_counter()
        got = ray.get([noop.remote(i) for i in range(a.map)])
        out["map_s"] = time.perf_counter() - t
        assert got == list(range(a.map))

        # Cold start: fresh drivers joining this Ray instance.
        address = ray.get_runtime_context().gcs_address
        setups, firsts, errors = [], [], []
        deadline = time.time() + a.ray_cold_budget
        for _ in range(a.ray_cold):
            if time.time() > deadline:
                break
            r = run_child("ray-cold", ["--address", address], None, timeout=120)
            if "error" in r:
                errors.append(r["error"] + "\n" + r.get("stderr", "")[-500:])
                continue
            setups.append(r["setup_s"])
            firsts.append(r["first_s"])
        out["cold"] = summary(firsts)
        out["cold_setup"] = summary(setups)
        out["cold_errors"] = errors
    finally:
        ray.shutdown()
    emit(out)


def child_ray_cold(a):
    t0 = time.perf_counter()
    ray = ray_init(address=a.address)

    @ray.remote
    def noop(x=None):
        return x

    t1 = time.perf_counter()
    ray.get(noop.remote())
    t2 = time.perf_counter()
    emit({"setup_s": t1 - t0, "first_s": t2 - t1})
    ray.shutdown()


def _noop(x=None):
    return x


def child_pool(a):
    from concurrent.futures import ProcessPoolExecutor

    out = {}
    with ProcessPoolExecutor(2) as ex:
        for f in [ex.submit(_noop) for _ in range(10)]:
            f.result()
        lat = []
        for _ in range(a.calls):
            t = time.perf_counter()
            ex.submit(_noop).result()
            lat.append(time.perf_counter() - t)
        out["warm"] = summary(lat)
        list(ex.map(_noop, range(min(2000, a.map))))
        t = time.perf_counter()
        got = list(ex.map(_noop, range(a.map)))  # chunksize 1: one message per input
        out["map_s"] = time.perf_counter() - t
        assert got == list(range(a.map))
    setups, firsts = [], []
    for _ in range(a.cold):
        t0 = time.perf_counter()
        with ProcessPoolExecutor(1) as ex:
            t1 = time.perf_counter()
            ex.submit(_noop).result()
            t2 = time.perf_counter()
        setups.append(t1 - t0)
        firsts.append(t2 - t1)
    out["cold"] = summary(firsts)
    out["cold_setup"] = summary(setups)
    emit(out)


# --------------------------------------------------------------------------------------------
# Ferry server


def ferry_bin() -> Path:
    env = os.environ.get("FERRY_BIN")
    if env:
        return Path(env)
    for build in ("release", "debug"):
        p = ROOT / "target" / build / "ferry"
        if p.exists():
            return p
    sys.exit("no ferry binary: run `cargo build --release -p ferry` or set FERRY_BIN")


class FerryServer:
    def __init__(self, binary: Path, data_dir: Path, log_dir: Path, extra: list | None = None):
        self.binary, self.data_dir, self.log_dir = binary, data_dir, log_dir
        self.extra = extra or []
        self.proc = None
        self.url = None

    def start(self, timeout: float = 60):
        self.log_path = self.log_dir / "ferry-serve.log"
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--data-dir", str(self.data_dir), "--port", "0", "--no-modal-profile", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, MODAL_CONFIG_PATH=str(self.log_dir / "modal.toml")),
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in self.log_path.read_text().splitlines():
                if line.startswith("Ferry is serving the Modal API at "):
                    self.url = line.split(" at ", 1)[1].split(" ")[0]
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferry serve exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"ferry serve did not become ready:\n{self.log_path.read_text()}")

    def client_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
        for line in (self.data_dir / "client.env").read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
        # Another server may share the data dir and rewrite client.env: keep our own URL.
        env["MODAL_SERVER_URL"] = self.url
        env["MODAL_CONFIG_PATH"] = str(self.log_dir / "modal.toml")
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["BENCH_FERRY_PID"] = str(self.proc.pid)
        return env

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {"nproc": nproc, "cpu": cpu, "mem": f"{mem_kb / 2**20:.0f} GiB", "kernel": platform.release(), "load": " ".join(load)}


def versions(binary: Path, ray_path: str | None = None) -> dict:
    import modal

    try:
        import ray

        ray_v = ray.__version__
    except ImportError:
        found = sorted(Path(ray_path).glob("ray-*.dist-info")) if ray_path else []
        ray_v = found[0].name[len("ray-"):-len(".dist-info")] if found else "not installed"
    return {"ferry": str(binary), "modal": modal.__version__, "ray": ray_v, "python": platform.python_version()}


def ms(x) -> str:
    return "-" if x is None or x != x else (f"{x * 1e3:,.1f}" if x * 1e3 < 100 else f"{x * 1e3:,.0f}")


def rate(x) -> str:
    return "-" if x is None or x != x else f"{x:,.0f}"


def ratio(a, b) -> str:
    return "-" if a is None or b is None or a != a or b != b or not b else f"{a / b:.2f}"


def get(d: dict, *path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def rows_of(fe: dict, cold: dict, ry: dict, pool: dict, a) -> list:
    def map_rate(d):
        return a.map / d["map_s"] if d.get("map_s") else None

    rows = []
    for q in ("p50", "p90", "mean"):
        f, r, p = get(fe, "warm", q), get(ry, "warm", q), get(pool, "warm", q)
        rows.append((f"warm round trip {q} (ms)", ms(f), ms(r), ms(p), ratio(f, r), TARGETS["warm_p50"] if q == "p50" else ""))
    f, r, p = map_rate(fe), map_rate(ry), map_rate(pool)
    rows.append((f"map over {a.map:,} inputs (inputs/s)", rate(f), rate(r), rate(p), ratio(f, r), TARGETS["map_rate"]))
    for q in ("p50", "p90"):
        f, r, p = get(cold, "cold", q), get(ry, "cold", q), get(pool, "cold", q)
        rows.append((f"cold start, first call {q} (ms)", ms(f), ms(r), ms(p), ratio(f, r), TARGETS["cold_p50"] if q == "p50" else ""))
    for q in ("p50", "p90"):
        f, r, p = get(cold, "cold_setup", q), get(ry, "cold_setup", q), get(pool, "cold_setup", q)
        rows.append((f"cold start, set-up {q} (ms)", ms(f), ms(r), ms(p), ratio(f, r), ""))
    return rows


def where_time_goes(fe: dict, a) -> list:
    """Ferry's CPU per call / per input, by process, against wall time."""
    out = []
    for key, label, n in (("warm_cpu", "warm round trip, per call", a.calls), ("map_cpu", f"map, per input ({get(fe, 'map_containers')} containers)", a.map)):
        c = fe.get(key)
        if not c:
            continue
        out.append((label, f"{c['wall'] / n * 1e6:,.0f}", f"{c['client'] / n * 1e6:,.0f}", f"{c['server'] / n * 1e6:,.0f}", f"{c['containers'] / n * 1e6:,.0f}"))
    return out


def table_text(cols, rows) -> str:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(cols)]
    line = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def table_md(cols, rows) -> str:
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|", *("| " + " | ".join(map(str, r)) + " |" for r in rows)])


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=200, help="sequential warm calls")
    ap.add_argument("--map", type=int, default=10_000, help="inputs in the timed map")
    ap.add_argument("--cold", type=int, default=20, help="cold-start samples (fresh apps)")
    ap.add_argument("--ray-cold", type=int, default=10, help="cold-start samples for Ray (fresh drivers, ~1-2 s each)")
    ap.add_argument("--ray-cold-budget", type=float, default=90, help="seconds at most for Ray's cold starts")
    ap.add_argument("--cold-budget", type=float, default=240, help="seconds at most for Ferry's cold starts")
    ap.add_argument("--max-containers", type=int, default=0, help="max_containers of Ferry's function (0: the server's default)")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--durability", choices=["full", "normal"], help="`ferry serve --durability` (default: the server's, full)")
    ap.add_argument("--ray-path", default=os.environ.get("FERRY_BENCH_RAY_PATH"), help="a directory with Ray installed (pip --target), put on PYTHONPATH for Ray's children only")
    ap.add_argument("--data-dir", default=os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child:
        {"ferry": child_ferry, "ferry-cold": child_ferry_cold, "ray": child_ray, "ray-cold": child_ray_cold, "pool": child_pool}[a.child](a)
        return

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    binary = ferry_bin()
    data_dir = Path(a.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"ferry: {binary}\ndata dir: {data_dir}", flush=True)
    t = time.perf_counter()
    subprocess.run([str(binary), "images", "prepare", "--data-dir", str(data_dir)], check=True, timeout=1800)
    print(f"images prepare: {time.perf_counter() - t:.1f} s", flush=True)

    errors = []
    with tempfile.TemporaryDirectory(prefix="ferry-bench-functions-") as tmp:
        server = FerryServer(binary, data_dir, Path(tmp), ["--durability", a.durability] if a.durability else [])
        try:
            server.start()
            print(f"serving at {server.url}", flush=True)
            env = server.client_env()
            if a.max_containers:
                env["FERRY_BENCH_MAX_CONTAINERS"] = str(a.max_containers)

            print("ferry: warm round trips and map ...", flush=True)
            fe = run_child("ferry", ["--calls", str(a.calls), "--map", str(a.map)], env, timeout=600)
            if "error" in fe:
                errors.append(fe)

            print(f"ferry: {a.cold} cold starts ...", flush=True)
            setups, firsts, teardowns = [], [], []
            deadline = time.time() + a.cold_budget
            for i in range(a.cold):
                if time.time() > deadline:
                    errors.append({"error": f"ferry cold starts: budget spent after {i} samples"})
                    break
                r = run_child("ferry-cold", [], env, timeout=120)
                if "error" in r:
                    errors.append(r)
                    continue
                setups.append(r["setup_s"])
                firsts.append(r["first_s"])
                teardowns.append(r["teardown_s"])
            cold = {"cold": summary(firsts), "cold_setup": summary(setups), "teardown": summary(teardowns)}
        finally:
            server.stop()
            serve_log = server.log_path.read_text()[-3000:] if getattr(server, "log_path", None) else ""

    ry = {}
    if not a.skip_ray:
        print("ray: round trips, map and cold starts ...", flush=True)
        ray_env = dict(os.environ, PYTHONPATH=a.ray_path) if a.ray_path else None
        ry = run_child("ray", ["--calls", str(a.calls), "--map", str(a.map), "--ray-cold", str(a.ray_cold), "--ray-cold-budget", str(a.ray_cold_budget)], ray_env, timeout=420)
        if "error" in ry:
            errors.append(ry)
        for e in ry.get("cold_errors", []):
            errors.append({"error": "ray cold start", "stderr": e})

    print("process pool: round trips, map and cold starts ...", flush=True)
    pool = run_child("pool", ["--calls", str(a.calls), "--map", str(a.map), "--cold", str(a.cold)], None, timeout=300)
    if "error" in pool:
        errors.append(pool)

    cols = ["Measure", "Ferry", "Ray", "ProcessPool(2)", "Ferry / Ray", "Target"]
    rows = rows_of(fe, cold, ry, pool, a)
    cpu_cols = ["Ferry, µs per unit", "wall", "client CPU", "server CPU", "containers CPU"]
    cpu_rows = where_time_goes(fe, a)
    info = machine()
    ver = versions(binary, a.ray_path)
    cmd = " ".join(shlex.quote(x) for x in [os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable, os.path.relpath(SCRIPT, ROOT), *sys.argv[1:]])
    notes = [
        f"Ferry app.run() set-up in the warm child: {ms(fe.get('setup_s'))} ms, its first call {ms(fe.get('first_s'))} ms; "
        f"cold-start app teardown p50 {ms(get(cold, 'teardown', 'p50'))} ms; Ray init {ms(ry.get('init_s'))} ms, first call {ms(ry.get('first_s'))} ms.",
        f"Cold samples: Ferry {get(cold, 'cold', 'n')}, Ray {get(ry, 'cold', 'n')} (fresh drivers), ProcessPool {get(pool, 'cold', 'n')}.",
        "Ferry / Ray: for latencies above 1 is slower than Ray, for inputs/s below 1 is slower.",
    ]

    print()
    print(table_text(cols, rows))
    if cpu_rows:
        print()
        print(table_text(cpu_cols, cpu_rows))
    print()
    for n in notes:
        print(n)
    print(f"\ncommand: {cmd}")
    print(f"machine: nproc {info['nproc']}, {info['cpu']}, {info['mem']}, kernel {info['kernel']}, load avg at end {info['load']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    print(f"whole run: {time.perf_counter() - started:.0f} s")
    for e in errors:
        print(f"\nERROR {e.get('error')}\n{e.get('stderr', '')}", file=sys.stderr)
    if errors and serve_log:
        print(f"\nferry serve log (tail):\n{serve_log}", file=sys.stderr)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print("\n--- markdown ---\n")
    print(f"{date}; `nproc` {info['nproc']}, {info['cpu']}; modal {ver['modal']}, ray {ver['ray']}, Python {ver['python']}.\n")
    print(f"```\n{cmd}\n```\n")
    print(table_md(cols, rows))
    if cpu_rows:
        print()
        print(table_md(cpu_cols, cpu_rows))
    print()
    for n in notes:
        print(f"- {n}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
