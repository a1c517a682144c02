"""A warm web endpoint through Ferry's gateway against the same FastAPI app under uvicorn.

Starts the real `ferry serve` (loopback, free ports) on the data dir that keeps built images
(`FERRY_TEST_DATA_DIR`, default /var/tmp/ferry-test), deploys `bench/web/hello_app.py` (a
`@modal.fastapi_endpoint` returning a small JSON object, `@modal.concurrent(max_inputs=64)`) with
the real `modal` CLI, and warms it. Then starts uvicorn (one worker, no access log) serving the
very same FastAPI app the container builds around the handler (`hello_app.uvicorn_app`).

For each, on the same machine, with the same load generator (asyncio, raw HTTP/1.1 keep-alive
connections, in this process):
- latency: one connection, N sequential GETs: p50 and p99;
- throughput: C connections for T seconds: requests/s, p50 and p99.

Prints a table with Ferry / uvicorn ratios and the targets (from the issue: throughput at least
0.5x uvicorn's, p50 overhead at most 2 ms), and the same as markdown. Targets are stated, not
asserted.

Usage: .venv/bin/python bench/web/bench_web.py [--requests 2000] [--connections 16] [--seconds 10]
"""

import argparse
import asyncio
import datetime
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def pct(xs: list, q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ferry_bin() -> str:
    env = os.environ.get("FERRY_BIN")
    if env:
        return env
    return str(ROOT / "target" / "release" / "ferry")


# --------------------------------------------------------------------------------------------
# Load generator


async def one_connection(host: str, port: int, path: str, host_header: str, count: int | None, until: float | None, lat: list):
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nAccept: */*\r\n\r\n".encode()
    done = 0
    try:
        while (count is None or done < count) and (until is None or time.perf_counter() < until):
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise RuntimeError(f"response without content-length: {head!r}")
            await reader.readexactly(length)
            if status != 200:
                raise RuntimeError(f"status {status}")
            lat.append(time.perf_counter() - t0)
            done += 1
    finally:
        writer.close()


def cpu_of(pid: int) -> float:
    """utime + stime of one process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list:
    """A process and its descendants."""
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [pid], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cpu_split(pid: int) -> tuple:
    """CPU seconds of the server process itself and of its descendants (the containers)."""
    procs = tree(pid)
    return cpu_of(pid), sum(cpu_of(p) for p in procs[1:])


def measure(url: str, requests: int, connections: int, seconds: float, server_pid: int | None = None) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    path = (parts.path or "/").rstrip("/") + "/?name=bench"
    host_header = parts.netloc

    async def run():
        # Warm-up, then sequential latency, then throughput.
        await one_connection(host, port, path, host_header, 200, None, [])
        seq: list = []
        await one_connection(host, port, path, host_header, requests, None, seq)
        loaded: list = []
        cpu_before = cpu_split(server_pid) if server_pid else (0.0, 0.0)
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(one_connection(host, port, path, host_header, None, until, loaded) for _ in range(connections)))
        elapsed = time.perf_counter() - started
        cpu_after = cpu_split(server_pid) if server_pid else (0.0, 0.0)
        return seq, loaded, elapsed, [a - b for a, b in zip(cpu_after, cpu_before)]

    seq, loaded, elapsed, cpu = asyncio.run(run())
    return {
        "seq_p50": pct(seq, 50) * 1000,
        "seq_p99": pct(seq, 99) * 1000,
        "rps": len(loaded) / elapsed,
        "load_p50": pct(loaded, 50) * 1000,
        "load_p99": pct(loaded, 99) * 1000,
        "n": len(loaded),
        # CPU milliseconds per request under load: the server process, and its descendants.
        "cpu_server_ms": cpu[0] * 1000 / max(1, len(loaded)),
        "cpu_children_ms": cpu[1] * 1000 / max(1, len(loaded)),
    }


# --------------------------------------------------------------------------------------------
# The two servers


def start_ferry(data_dir: Path, log_dir: Path):
    log = open(log_dir / "ferry.log", "w+")
    config = log_dir / "modal.toml"
    proc = subprocess.Popen(
        [ferry_bin(), "serve", "--data-dir", str(data_dir), "--port", "0", "--web-port", "0", "--no-modal-profile"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, MODAL_CONFIG_PATH=str(config), FERRY_LOG="warn"),
    )
    deadline = time.time() + 60
    url = None
    while time.time() < deadline:
        text = (log_dir / "ferry.log").read_text()
        for line in text.splitlines():
            if line.startswith("Ferry is serving the Modal API at "):
                url = line.split(" at ", 1)[1].split(" ")[0]
        if url:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"ferry serve exited:\n{text}")
        time.sleep(0.1)
    if not url:
        raise RuntimeError("ferry serve did not start")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(dict(line.split("=", 1) for line in (data_dir / "client.env").read_text().splitlines()))
    env["MODAL_SERVER_URL"] = url
    env["MODAL_CONFIG_PATH"] = str(config)
    return proc, env


def deploy(env: dict) -> str:
    modal = str(Path(sys.executable).parent / "modal")
    out = subprocess.run([modal, "deploy", str(HERE / "hello_app.py")], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"modal deploy failed:\n{out.stdout}\n{out.stderr}")
    code = 'import modal; print(modal.Function.from_name("ferry-bench-web", "hello").get_web_url())'
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout.strip()


def start_uvicorn(port: int):
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "hello_app:uvicorn_app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--no-access-log", "--log-level", "warning"],
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("uvicorn did not start")


def stop(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests for latency")
    ap.add_argument("--connections", type=int, default=16, help="concurrent connections for throughput")
    ap.add_argument("--seconds", type=float, default=10, help="length of the throughput run")
    args = ap.parse_args()

    data_dir = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
    results = {}
    with tempfile.TemporaryDirectory(prefix="ferry-bench-web-") as tmp:
        ferry, env = start_ferry(data_dir, Path(tmp))
        try:
            url = deploy(env)
            print(f"ferry endpoint: {url}", flush=True)
            # The first request waits for a container; the measures start warm.
            measure(url, 50, 1, 0.1)
            results["ferry"] = measure(url, args.requests, args.connections, args.seconds, ferry.pid)
        finally:
            stop(ferry)
        port = free_port()
        uv = start_uvicorn(port)
        try:
            results["uvicorn"] = measure(f"http://127.0.0.1:{port}", args.requests, args.connections, args.seconds, uv.pid)
        finally:
            stop(uv)

    f, u = results["ferry"], results["uvicorn"]
    rows = [
        ("sequential p50 (ms)", f["seq_p50"], u["seq_p50"], "{:.2f}"),
        ("sequential p99 (ms)", f["seq_p99"], u["seq_p99"], "{:.2f}"),
        (f"{args.connections} connections, requests/s", f["rps"], u["rps"], "{:,.0f}"),
        (f"{args.connections} connections, p50 (ms)", f["load_p50"], u["load_p50"], "{:.2f}"),
        (f"{args.connections} connections, p99 (ms)", f["load_p99"], u["load_p99"], "{:.2f}"),
    ]
    print()
    print(f"{'measure':<34} {'Ferry':>10} {'uvicorn':>10} {'Ferry/uvicorn':>14}")
    for name, a, b, fmt in rows:
        print(f"{name:<34} {fmt.format(a):>10} {fmt.format(b):>10} {a / b:>14.2f}")
    print()
    print(f"throughput ratio: {f['rps'] / u['rps']:.2f}x uvicorn's (target >= 0.5x)")
    print(f"p50 overhead: {f['seq_p50'] - u['seq_p50']:.2f} ms (target <= 2 ms)")
    print(
        f"CPU per request under load: Ferry server {f['cpu_server_ms']:.2f} ms + containers {f['cpu_children_ms']:.2f} ms; "
        f"uvicorn {u['cpu_server_ms'] + u['cpu_children_ms']:.2f} ms"
    )
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; {datetime.date.today()}")
    print(f"command: {' '.join(shlex.quote(a) for a in sys.argv)}")
    print()
    print("| Measure | Ferry | uvicorn | Ferry / uvicorn |")
    print("|---|---:|---:|---:|")
    for name, a, b, fmt in rows:
        print(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
