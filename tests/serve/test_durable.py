"""Function calls survive a `kill -9` of the server: the real client keeps waiting across the
restart and gets every answer exactly once; cancellation is recorded in the call's state."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import POSTGRES, Ferry, database_env, psql, wait_for

APPS = Path(__file__).parent / "apps"
DATA = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))


def free_port_pair() -> int:
    """A port whose next one (the web endpoints' port) is free too."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


class FixedPortFerry(Ferry):
    """`ferry serve` on a fixed port, so a client survives the server's restart."""

    def __init__(self, data_dir: Path, port: int):
        super().__init__(data_dir, "--no-modal-profile", "--no-dashboard")
        self.port = port

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / f"serve-{time.time_ns()}.log"
        self.log = open(log_path, "w+")
        from conftest import ferry_bin

        env = dict(os.environ, MODAL_CONFIG_PATH=str(self.data_dir / "modal.toml"), **database_env(self.data_dir))

        self.proc = subprocess.Popen(
            [ferry_bin(), "serve", "--data-dir", str(self.data_dir), "--port", str(self.port), *self.extra],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            text = log_path.read_text()
            if "Ferry is serving the Modal API at " in text:
                self.url = f"http://127.0.0.1:{self.port}"
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferry serve exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        raise RuntimeError(f"ferry serve did not become ready:\n{log_path.read_text()}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def db(self, sql: str, *args):
        if POSTGRES:
            quoted = ["'" + str(a).replace("'", "''") + "'" for a in args]
            return psql(database_env(self.data_dir)["FERRY_DATABASE"], sql.replace("?", "%s") % tuple(quoted))
        con = sqlite3.connect(f"file:{self.data_dir / 'ferry.db'}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def client(self, code: str, **env) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", code],
            env=self.env(PYTHONPATH=str(APPS), **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture()
def server():
    s = FixedPortFerry(DATA, free_port_pair()).start()
    yield s
    s.stop()




def done_answers(server, function_tag):
    return server.db(
        "SELECT COUNT(*) FROM function_inputs i JOIN functions f ON f.id = i.function_id "
        "WHERE f.tag = ? AND i.state = 'done'",
        function_tag,
    )[0][0]


def test_kill_9_mid_map_loses_nothing(server):
    before = done_answers(server, "slow_square")
    client = server.client(
        """
from durable import app, slow_square
with app.run():
    print("RESULT", list(slow_square.map(range(40))), flush=True)
"""
    )
    # Kill the server once part of the map is answered.
    wait_for(lambda: done_answers(server, "slow_square") - before >= 8, 300, "the first answers")
    server.kill9()
    time.sleep(0.5)
    server.start()
    out, err = client.communicate(timeout=300)
    assert client.returncode == 0, err
    # Every output exactly once, in order.
    assert f"RESULT {[i * i for i in range(40)]}" in out, out + err
    # The map's answers were read once and are gone from the store.
    wait_for(lambda: done_answers(server, "slow_square") == before, 20, "the map's answers to be cleared")


def test_kill_9_with_spawned_calls_pending(server):
    deployed = server.modal("deploy", str(APPS / "durable.py"), timeout=600)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    spawn = server.python(
        """
import modal
tick = modal.Function.from_name("ferry-durable", "tick")
print("IDS", ",".join(tick.spawn(i).object_id for i in range(30)))
"""
    )
    assert spawn.returncode == 0, spawn.stderr
    ids = spawn.stdout.split("IDS ", 1)[1].split()[0].split(",")
    assert len(ids) == 30
    wait_for(lambda: server.db("SELECT COUNT(*) FROM function_inputs WHERE state = 'done' AND call_id IN (%s)" % ",".join("?" * 30), *ids)[0][0] >= 3, 300, "some answers")
    server.kill9()
    server.start()
    got = server.python(
        f"""
import modal
ids = {ids!r}
print("VALUES", [modal.FunctionCall.from_id(i).get() for i in ids])
print("AGAIN", modal.FunctionCall.from_id(ids[0]).get())
""",
        timeout=300,
    )
    assert got.returncode == 0, got.stderr
    assert f"VALUES {[i + 1000 for i in range(30)]}" in got.stdout
    # Spawned results stay readable (kept until they expire) ...
    assert "AGAIN 1000" in got.stdout
    # ... and each input was answered exactly once.
    rows = server.db("SELECT state, COUNT(*) FROM function_inputs WHERE call_id IN (%s) GROUP BY state" % ",".join("?" * 30), *ids)
    assert rows == [("done", 30)]


def start_hold(server, key, seconds=300):
    mark = server.python(
        f"""
import modal
d = modal.Dict.from_name("ferry-durable-marks", create_if_missing=True)
d.pop({key!r}, None)
hold = modal.Function.from_name("ferry-durable", "hold")
print("ID", hold.spawn({key!r}, {seconds}).object_id)
"""
    )
    assert mark.returncode == 0, mark.stderr
    call_id = mark.stdout.split("ID ", 1)[1].split()[0]
    started = f"""
import modal, time
d = modal.Dict.from_name("ferry-durable-marks", create_if_missing=True)
deadline = time.time() + 300
while d.get({key!r}) != "started" and time.time() < deadline:
    time.sleep(0.2)
print("MARK", d.get({key!r}))
"""
    out = server.python(started, timeout=330)
    assert "MARK started" in out.stdout, out.stdout + out.stderr
    return call_id


GET_CANCELLED = """
import modal, time
t = time.time()
try:
    modal.FunctionCall.from_id({call_id!r}).get(timeout=60)
    print("NO ERROR")
except Exception as e:
    print("RAISED", type(e).__name__, str(e).splitlines()[0] if str(e) else "", round(time.time() - t, 1))
"""


@pytest.mark.parametrize("terminate", [False, True])
def test_cancel_is_recorded_and_survives_a_restart(server, terminate):
    deployed = server.modal("deploy", str(APPS / "durable.py"), timeout=600)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    key = f"cancel-{terminate}-{time.time_ns()}"
    call_id = start_hold(server, key)
    cancel = server.python(
        f"""
import modal
modal.FunctionCall.from_id({call_id!r}).cancel(terminate_containers={terminate})
"""
    )
    assert cancel.returncode == 0, cancel.stderr
    got = server.python(GET_CANCELLED.format(call_id=call_id))
    assert "RAISED" in got.stdout and "was cancelled" in got.stdout, got.stdout + got.stderr
    # The cancellation is durable.
    # The reason recorded says how it was cancelled (another replica reads it to terminate too).
    reason = "FunctionCall.cancel(terminate_containers=True)" if terminate else "FunctionCall.cancel()"
    assert server.db("SELECT cancel_reason FROM function_calls WHERE id = ?", call_id) == [(reason,)]
    assert server.db("SELECT state FROM function_inputs WHERE call_id = ?", call_id) == [("cancelled",)]
    if terminate:
        # The container running it was killed: `modal container list` empties.
        wait_for(lambda: "ferry-durable" not in server.modal("container", "list").stdout, 30, "the container to go")
    else:
        # The container is told at its next heartbeat and stops the input, but stays up.
        time.sleep(3)
        assert "ferry-durable" in server.modal("container", "list").stdout
    server.kill9()
    server.start()
    got = server.python(GET_CANCELLED.format(call_id=call_id))
    assert "RAISED" in got.stdout and "was cancelled" in got.stdout, got.stdout + got.stderr
    mark = server.python(
        f"""
import modal
print("MARK", modal.Dict.from_name("ferry-durable-marks").get({key!r}))
"""
    )
    assert "MARK started" in mark.stdout, "the cancelled input never finished"


def test_ctrl_c_of_modal_run_cancels_its_calls(server):
    cli = str(Path(sys.executable).parent / "modal")
    run = subprocess.Popen(
        [cli, "run", str(APPS / "durable.py"), "--seconds", "300"],
        env=server.env(PYTHONPATH=str(APPS)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    call_id = None
    deadline = time.time() + 300
    while time.time() < deadline and call_id is None:
        line = run.stdout.readline()
        if line.startswith("CALL "):
            call_id = line.split()[1]
    assert call_id, "modal run never spawned its call"
    wait_for(lambda: server.db("SELECT COUNT(*) FROM function_calls WHERE id = ?", call_id)[0][0] == 1, 30, "the call")
    time.sleep(2)
    run.send_signal(signal.SIGINT)
    run.communicate(timeout=60)
    wait_for(lambda: server.db("SELECT state FROM function_inputs WHERE call_id = ?", call_id) == [("cancelled",)], 30, "the cancellation")
    assert server.db("SELECT cancel_reason FROM function_calls WHERE id = ?", call_id) == [("its app stopped",)]


def test_many_spawned_inputs_with_bounded_memory(server):
    """A bounded version of bench/functions' 100,000-input run: spawned no-op calls queue and
    complete while the server's resident memory stays small."""
    deployed = server.modal("deploy", str(APPS / "durable.py"), timeout=600)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    n = 5000
    code = f"""
import asyncio, modal
noop = modal.Function.from_name("ferry-durable", "noop")
async def main():
    sem = asyncio.Semaphore(64)
    async def one(i):
        async with sem:
            return await noop.spawn.aio(i)
    calls = await asyncio.gather(*(one(i) for i in range({n})))
    async def get(c):
        async with sem:
            return await c.get.aio()
    values = await asyncio.gather(*(get(c) for c in calls))
    print("SUM", sum(values), len(values))
asyncio.run(main())
"""
    client = server.client(code)
    peak = 0
    while client.poll() is None:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
        peak = max(peak, rss_kb)
        time.sleep(0.2)
    out, err = client.communicate()
    assert client.returncode == 0, err
    assert f"SUM {sum(range(n))} {n}" in out
    assert peak < 300 * 1024, f"server RSS peaked at {peak // 1024} MiB"
    print(f"peak RSS {peak // 1024} MiB for {n} spawned inputs")
