"""Hosts simulated on one machine for the cluster tests and benchmarks: a bridge with the
control plane's address and one network namespace per worker host (its own address, as a
separate host would have), `ferry worker` processes started inside them, control-plane
replicas and a TCP balancer in front of them."""

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import Ferry, ferry_bin

DATA = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {out.stderr.strip()}")
    return out


class Hosts:
    """A bridge with the control plane's address and one network namespace per worker host,
    each joined to the bridge by a veth pair."""

    def __init__(self, count: int):
        tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
        self.bridge = f"fwb{tag}"
        self.subnet = random.randrange(1, 250)
        self.host_ip = f"10.88.{self.subnet}.1"
        self.namespaces = [f"ferry-w{tag}-{i}" for i in range(count)]
        self.veths = [f"fwv{tag}{i}" for i in range(count)]

    def address(self, i: int) -> str:
        return f"10.88.{self.subnet}.{i + 2}"

    def up(self):
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, (ns, veth) in enumerate(zip(self.namespaces, self.veths)):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            sh("ip", "link", "set", f"{veth}p", "netns", ns)
            sh("ip", "link", "set", veth, "master", self.bridge, "up")
            inside = lambda *a: sh("ip", "-n", ns, *a)
            inside("addr", "add", f"{self.address(i)}/24", "dev", f"{veth}p")
            inside("link", "set", f"{veth}p", "up")
            inside("link", "set", "lo", "up")
            inside("route", "add", "default", "via", self.host_ip)

    def down(self):
        for ns, veth in zip(self.namespaces, self.veths):
            sh("ip", "link", "del", veth, check=False)
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


@contextlib.contextmanager
def namespaced_hosts(count: int):
    """`count` worker hosts on a bridge, for a module's fixture; skips where this machine cannot
    make network namespaces (root, `ip` and `nsenter` are needed)."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None:
        pytest.skip("worker hosts need root, `ip` and `nsenter` to make network namespaces")
    h = Hosts(count)
    try:
        h.up()
    except RuntimeError as e:
        h.down()
        pytest.skip(f"cannot make network namespaces here: {e}")
    try:
        yield h
    finally:
        h.down()


def worker_rows(listing: str) -> dict:
    """`ferry worker list` as name → its columns (the newest row of each name wins)."""
    rows = {}
    for line in listing.splitlines()[1:]:
        cols = line.split()
        rows[cols[1]] = {"id": cols[0], "address": cols[2], "state": cols[3], "gpus": int(cols[6]), "tasks": int(cols[7])}
    return rows


def placements_in(log: str) -> dict:
    """task id → worker name, from a control plane's log."""
    found = {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines():
        if "container placed on a worker host" in line:
            task = re.search(r'task_id="?([^"\s]+)', line).group(1)
            found[task] = re.search(r'worker="?([^"\s]+)', line).group(1)
    return found


class Worker:
    """One `ferry worker` in a host's network namespace (entered with nsenter, so the worker
    keeps the host's /sys and cgroups)."""

    def __init__(self, hosts: Hosts, i: int, name: str, data_dir: Path, server: str, token: str, storage: str, env: dict):
        self.hosts, self.i, self.name, self.data_dir = hosts, i, name, data_dir
        self.args = [
            "nsenter", f"--net=/run/netns/{hosts.namespaces[i]}", "--",
            ferry_bin(), "worker", "--server", server, "--token", token, "--data-dir", str(data_dir),
            "--name", name, "--label", f"region=r{i}", "--storage", storage,
        ]
        self.env = env
        self.proc = None

    def start(self):
        if not (self.data_dir / "runtime").exists():
            # What `ferry images prepare` leaves on a worker host: the modal client runtime (the
            # namespace has no route to a package index). Bases come from FERRY_BASE_SEED.
            self.data_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(DATA / "runtime", self.data_dir / "runtime", symlinks=True)
        self.log_path = self.data_dir / f"worker-{time.time_ns()}.log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            text = self.log_path.read_text()
            if "registered as" in text:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferry worker exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        raise RuntimeError(f"ferry worker did not register:\n{self.log_path.read_text()}")

    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text())

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class Proxy:
    """A TCP balancer on a free port of `ip`: each new connection goes to the first backend that
    accepts it (a health-checked layer-4 balancer); a connection whose backend dies is closed,
    and the client connects again."""

    def __init__(self, ip: str = "127.0.0.1"):
        self.backends: list[tuple[str, int]] = []
        self.ip = ip
        self.port = free_port(ip)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(asyncio.start_server(self._handle, self.ip, self.port))
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    async def _handle(self, reader, writer):
        upstream = None
        for host, port in list(self.backends):
            try:
                upstream = await asyncio.open_connection(host, port)
                break
            except OSError:
                continue
        if upstream is None:
            writer.close()
            return
        r2, w2 = upstream

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except Exception:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, w2), pipe(r2, writer), return_exceptions=True)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)


class Replica(Ferry):
    """A `ferry serve` control-plane replica."""

    def kill9(self):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.rsplit("//", 1)[1].rsplit(":", 1)
        return host, int(port)

    def log_text(self) -> str:
        text = "".join(p.read_text() for p in sorted(self.data_dir.glob("serve-*.log")))
        return re.sub(r"\x1b\[[0-9;]*m", "", text)


def seed_images(data_dir: Path):
    """Hard-links the prepared `debian_slim` layer and client runtime of the test data dir into
    a replica's fresh data dir, so that neither builds them (a minute each on a busy machine)."""
    out = subprocess.run([ferry_bin(), "images", "prepare", "--data-dir", str(DATA)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    layer = out.stdout.split("Image.debian_slim", 1)[1].split(" layer ", 1)[1].split()[0]
    (data_dir / "images" / "layers").mkdir(parents=True)
    while layer:
        src = DATA / "images" / "layers" / layer
        subprocess.run(["cp", "-al", str(src), str(data_dir / "images" / "layers" / layer)], check=True)
        layer = json.loads((src / "layer.json").read_text()).get("parent")
    if (DATA / "runtime").exists():
        subprocess.run(["cp", "-al", str(DATA / "runtime"), str(data_dir / "runtime")], check=True)
