"""Fixtures for the model-serving tests: the real server binary on a free port with a temp data
dir, driven by the official openai SDK with the credentials the server writes to DIR/llm.env.

The binary is `$FERRY_BIN llm serve` when that binary has the `llm` subcommand, else the
stand-alone `ferry-llm serve` from target/release (or $CARGO_TARGET_DIR/release).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import json
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("FERRY_LLM_TEST_MODEL", ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"))


def server_command() -> list[str]:
    ferry = os.environ.get("FERRY_BIN")
    if ferry and Path(ferry).exists():
        probe = subprocess.run([ferry, "llm", "--help"], capture_output=True)
        if probe.returncode == 0:
            return [ferry, "llm"]
    candidates = [os.environ.get("FERRY_LLM_BIN"), ROOT / "target" / "release" / "ferry-llm"]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "ferry-llm")
    for c in candidates:
        if c and Path(c).exists():
            return [str(c)]
    pytest.fail("no server binary: build with `cargo build --release -p ferry-llm` or set FERRY_BIN")


def raw(method: str, url: str, body: bytes | None, key: str | None = None) -> tuple[int, dict]:
    """A plain HTTP call, for what the SDK will not send (broken JSON, no key)."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def read_env(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


class Server:
    """One `llm serve` process; `restart()` keeps the data dir."""

    def __init__(self, data_dir: Path, extra: list[str] | None = None):
        self.data_dir = data_dir
        self.extra = extra or []
        self.proc = None
        self.start()

    def start(self):
        if not MODEL.exists():
            pytest.fail(f"test model {MODEL} is missing: run tools/setup.d/llm.sh")
        env_file = self.data_dir / "llm.env"
        if env_file.exists():
            env_file.unlink()
        cmd = server_command() + ["serve", "--model", str(MODEL), "--port", "0", "--data-dir", str(self.data_dir), *self.extra]
        self.log = open(self.data_dir / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not env_file.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}: {(self.data_dir / 'server.log').read_text()[-2000:]}")
            if time.time() > deadline:
                self.stop()
                pytest.fail("server did not become ready in 120 s")
            time.sleep(0.1)
        env = read_env(env_file)
        self.base_url = env["OPENAI_BASE_URL"]
        self.api_key = env["OPENAI_API_KEY"]
        self.client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=120)
        self.model = self.client.models.list().data[0].id

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def restart(self):
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def server():
    d = Path(tempfile.mkdtemp(prefix="ferry-llm-test-"))
    s = Server(d)
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def fresh_server():
    """A server of its own, for tests that restart it."""
    d = Path(tempfile.mkdtemp(prefix="ferry-llm-test-"))
    s = Server(d)
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def client(server):
    return server.client


@pytest.fixture(scope="session")
def model(server):
    return server.model
