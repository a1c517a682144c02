"""Cold starts on Ferry against Ray's first call, in one run on one machine.

A cold start here is a call for which no container exists, on an image already built:

- `pool off`: `ferry serve --pool-per-image 0`, every task starts a fresh container whose
  Python imports the modal container runtime (what Ferry did before standby containers);
- `standby`: the default `ferry serve` (one standby container per image and resource shape,
  its Python already past `import modal._container_entrypoint`);
- `snapshot`: a deployed `enable_memory_snapshot=True` class, called again after each
  scale-down, so every sample is a child forked from the function's zygote.

Each sample is a fresh interpreter with the real modal SDK. `queued → user code` is the
container's `time.time()` when the function body starts minus the client's just before
`.remote()` (so it includes the client's own `FunctionMap` RPC, ~1-3 ms); `first call` is the
whole `.remote()` as the caller sees it. Ray: `ray.init(num_cpus=2)`, then fresh drivers that
join it and make their first call (bench_functions.py's `ray-cold`).

Usage: .venv/bin/python bench/functions/bench_coldstart.py [--cold 20] [--ray-cold 10]
(`bash bench/functions/run.sh --coldstart` installs Ray into .venv first when missing.)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_functions as bf  # noqa: E402

TARGET = "≤ 50 ms and ≤ 0.1× Ray"


def child_sample(a):
    """One cold call of `started_at` in a new app."""
    from cold_app import app, started_at

    with app.run():
        t0 = time.time()
        t_user = started_at.remote()
        t1 = time.time()
    bf.emit({"queued_to_user_s": t_user - t0, "first_s": t1 - t0})


def child_snap_sample(a):
    """One call of the deployed snapshot class, after its containers scaled down."""
    import modal

    Snap = modal.Cls.from_name(a.app, "Snap")
    obj = Snap()
    t0 = time.time()
    t_user = obj.started_at.remote()
    t1 = time.time()
    bf.emit({"queued_to_user_s": t_user - t0, "first_s": t1 - t0})


def child_ray(a):
    ray = bf.ray_init(num_cpus=2)
    try:
        address = ray.get_runtime_context().gcs_address
        firsts, errors = [], []
        for _ in range(a.ray_cold):
            r = bf.run_child("ray-cold", ["--address", address], None, timeout=120)
            if "error" in r:
                errors.append(r["error"])
                continue
            firsts.append(r["first_s"])
        bf.emit({"cold": bf.summary(firsts), "errors": errors, "version": ray.__version__})
    finally:
        ray.shutdown()


def run_child(role: str, args: list, env: dict | None, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        bf.kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        return {"error": f"{role}: over its {timeout:.0f} s limit", "stderr": stderr[-2000:]}
    finally:
        bf.kill_group(proc.pid)
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": f"{role}: exit {proc.returncode}", "stderr": (stderr or stdout)[-2000:]}


class Server(bf.FerryServer):
    def __init__(self, binary, data_dir, log_dir, extra):
        super().__init__(binary, data_dir, log_dir)
        self.extra = extra

    def start(self, timeout: float = 60):
        self.log_path = self.log_dir / "ferry-serve.log"
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--data-dir", str(self.data_dir), "--port", "0", "--no-modal-profile", "--no-dashboard", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, MODAL_CONFIG_PATH=str(self.log_dir / "modal.toml")),
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in self.log_path.read_text().splitlines():
                if line.startswith("Ferry is serving the Modal API at "):
                    self.url = line.split(" at ", 1)[1].split(" ")[0]
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferry serve exited:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        raise RuntimeError("ferry serve did not become ready")


def standbys_ready(server) -> int:
    n = 0
    for pid in bf.descendants(server.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"/standby.py" in argv and b"FERRY_ZYGOTE=1" not in environ and not Path(f"/proc/{pid}/root/__ferry/in/container_arguments.pb").exists():
            n += 1
    return n


def containers_of(server) -> int:
    """Task containers of this server still running: fresh ones, standbys that took a task,
    and children of a snapshot zygote."""
    n = 0
    for pid in bf.descendants(server.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            parent_env = Path(f"/proc/{ppid}/environ").read_bytes()
        except (OSError, ValueError):
            continue
        if b"_container_entrypoint" in argv:
            n += 1
        elif b"FERRY_ZYGOTE=1" in environ:
            n += b"FERRY_ZYGOTE=1" in parent_env
        elif b"/standby.py" in argv and Path(f"/proc/{pid}/root/__ferry/in/container_arguments.pb").exists():
            n += 1
    return n


def measure(binary, data_dir, extra, n, mode, errors) -> dict:
    with tempfile.TemporaryDirectory(prefix="ferry-bench-cold-") as tmp:
        server = Server(binary, data_dir, Path(tmp), extra)
        try:
            server.start()
            env = server.client_env()
            app_name = f"ferry-bench-cold-{time.time_ns()}"
            env["FERRY_BENCH_COLD_APP"] = app_name
            if mode == "snapshot":
                out = subprocess.run([str(Path(sys.executable).parent / "modal"), "deploy", str(HERE / "cold_app.py")], env=env, capture_output=True, text=True, timeout=900)
                if out.returncode != 0:
                    errors.append({"error": "deploy", "stderr": out.stderr[-2000:]})
                    return {}
            # One call first: builds nothing new (the image exists) but creates the demand that
            # fills the pool, or the zygote.
            warm = run_child("snap" if mode == "snapshot" else "sample", ["--app", app_name], env, timeout=600)
            if "error" in warm:
                errors.append(warm)
            user, first = [], []
            for _ in range(n):
                deadline = time.time() + 60
                # A cold start: no container of the function left (the app of the last sample
                # is stopped; the snapshot class scales down after 2 s) and, with the pool, a
                # standby ready.
                while time.time() < deadline:
                    busy = containers_of(server)
                    ready = mode != "standby" or standbys_ready(server) >= 1
                    if busy <= 0 and ready:
                        break
                    time.sleep(0.2)
                time.sleep(0.5)
                r = run_child("snap" if mode == "snapshot" else "sample", ["--app", app_name], env, timeout=300)
                if "error" in r:
                    errors.append(r)
                    continue
                user.append(r["queued_to_user_s"])
                first.append(r["first_s"])
            return {"user": bf.summary(user), "first": bf.summary(first)}
        finally:
            server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", type=int, default=20)
    ap.add_argument("--ray-cold", type=int, default=10)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--ray-path", default=os.environ.get("FERRY_BENCH_RAY_PATH"), help="a directory with Ray installed (pip --target), put on PYTHONPATH for Ray's children only")
    ap.add_argument("--modes", default="pool-off,standby,snapshot")
    ap.add_argument("--data-dir", default=os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--app", help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        {"sample": child_sample, "snap": child_snap_sample, "ray": child_ray}[a.child](a)
        return

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    binary = bf.ferry_bin()
    data_dir = Path(a.data_dir)
    subprocess.run([str(binary), "images", "prepare", "--data-dir", str(data_dir)], check=True, timeout=1800)
    errors, results = [], {}
    flags = {"pool-off": ["--pool-per-image", "0"], "standby": [], "snapshot": ["--pool-per-image", "0"]}
    for mode in a.modes.split(","):
        print(f"ferry ({mode}): {a.cold} cold starts ...", flush=True)
        results[mode] = measure(binary, data_dir, flags[mode], a.cold, mode, errors)
    ray = {}
    if not a.skip_ray:
        print(f"ray: {a.ray_cold} fresh drivers ...", flush=True)
        ray_env = dict(os.environ, PYTHONPATH=a.ray_path) if a.ray_path else None
        ray = run_child("ray", ["--ray-cold", str(a.ray_cold)], ray_env, timeout=600)
        if "error" in ray:
            errors.append(ray)
    ray_p50 = bf.get(ray, "cold", "p50")

    rows = []
    for mode, r in results.items():
        for q in ("p50", "p90"):
            u, f = bf.get(r, "user", q), bf.get(r, "first", q)
            rows.append((f"{mode}: queued → user code {q} (ms)", bf.ms(u), bf.ratio(u, ray_p50) if q == "p50" else "", TARGET if q == "p50" else ""))
            rows.append((f"{mode}: first call {q} (ms)", bf.ms(f), bf.ratio(f, ray_p50) if q == "p50" else "", ""))
    rows.append(("ray: first call of a fresh driver p50 (ms)", bf.ms(ray_p50), "1.00", ""))
    m = bf.machine()
    print(f"\n{m['nproc']} CPUs ({m['cpu']}), load {m['load']}; ray {ray.get('version')}; {bf.versions(binary)}")
    print("command: " + " ".join([sys.executable, *sys.argv]))
    print("\n| Measure | Ferry | / Ray p50 | Target |\n|---|---:|---:|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    for e in errors:
        print("error:", json.dumps(e)[:1500], file=sys.stderr)


if __name__ == "__main__":
    main()
