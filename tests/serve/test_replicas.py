"""Two `ferry serve` replicas on one PostgreSQL database and one bucket (a real SeaweedFS),
behind one address: a TCP proxy that sends each new connection to the first live replica, as a
load balancer with health checks would. The real client carries on through the other replica
when the one serving it is killed mid-map, a call spawned on one is read through the other,
and nothing is lost when everything restarts (docs/cluster.md)."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PY, _pg_server, psql, wait_for
from hosts import Proxy, Replica, seed_images

APPS = Path(__file__).parent / "apps"
DATA = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
LEASE = "3"


@pytest.fixture()
def cluster(s3_server, tmp_path, monkeypatch):
    """A database of the test's own, the module's bucket, two replicas and the proxy."""
    monkeypatch.setenv("FERRY_BASE_SEED", str(DATA))
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    server = _pg_server()
    name = f"ferry_replicas_{os.getpid()}_{time.time_ns() % 10**9}"
    psql(server, f"CREATE DATABASE {name}")
    database = server.rsplit("/", 1)[0] + "/" + name
    args = ["--no-modal-profile", "--no-dashboard", "--database", database, "--storage", s3_server.storage_url(),
            "--replica-lease-secs", LEASE]
    seed_images(tmp_path / "a")
    seed_images(tmp_path / "b")
    a = Replica(tmp_path / "a", *args).start()
    # Every replica seals Secrets with the same key.
    shutil.copy2(a.data_dir / "secret.key", tmp_path / "b" / "secret.key")
    b = Replica(tmp_path / "b", *args).start()
    proxy = Proxy()
    proxy.backends = [a.address, b.address]
    c = type("Cluster", (), {})()
    c.a, c.b, c.proxy, c.database = a, b, proxy, database
    # The client's settings (its token is in the shared database) with the proxy's address.
    c.env = a.env(MODAL_SERVER_URL=proxy.url, PYTHONPATH=str(APPS))
    yield c
    proxy.stop()
    for r in (a, b):
        r.stop()
    try:
        psql(server, f"DROP DATABASE {name} WITH (FORCE)")
    except RuntimeError:
        pass


def run(env, code, timeout=300, **extra):
    return subprocess.run([PY, "-c", code], env=dict(env, **extra), capture_output=True, text=True, timeout=timeout)


def deploy(c):
    cli = str(Path(PY).parent / "modal")
    out = subprocess.run([cli, "deploy", str(APPS / "replicas_app.py")], env=c.env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def log_of(r: Replica) -> str:
    return "".join(p.read_text() for p in sorted(r.data_dir.glob("serve-*.log")))


def test_replicas_are_interchangeable_and_a_dead_one_loses_nothing(cluster):
    c = cluster
    deploy(c)
    owners = psql(c.database, "SELECT id, adopted_by IS NULL FROM replicas ORDER BY started_at")
    assert len(owners) == 2 and all(alive == "t" for _, alive in owners), owners

    # A call spawned on replica A, read through replica B (both alive: B watches A's call).
    spawn = run(c.a.env(PYTHONPATH=str(APPS)), """
import modal
later = modal.Function.from_name("ferry-replicas", "later")
print("IDS", ",".join(later.spawn(i, 1).object_id for i in range(3)))
""")
    assert spawn.returncode == 0, spawn.stderr
    ids = spawn.stdout.split("IDS ", 1)[1].split()[0].split(",")
    got = run(c.b.env(PYTHONPATH=str(APPS)), f"""
import modal
print("VALUES", [modal.FunctionCall.from_id(i).get(timeout=120) for i in {ids!r}])
""")
    assert got.returncode == 0, got.stderr
    assert "VALUES [1000, 1001, 1002]" in got.stdout, got.stdout + got.stderr
    # Run by A's containers only: B never queued them.
    assert "adopted replicas" not in log_of(c.b)

    # A call of A's cancelled through B: A, its owner, answers it TERMINATED, and B serves that.
    spawn = run(c.a.env(PYTHONPATH=str(APPS)), """
import modal
print("ID", modal.Function.from_name("ferry-replicas", "later").spawn(99, 120).object_id)
""")
    assert spawn.returncode == 0, spawn.stderr
    cancelled = spawn.stdout.split("ID ", 1)[1].split()[0]
    cancel = run(c.b.env(), f"""
import modal, time
fc = modal.FunctionCall.from_id({cancelled!r})
fc.cancel()
t = time.time()
try:
    print("NO ERROR", fc.get(timeout=60))
except Exception as e:
    print("RAISED", type(e).__name__, round(time.time() - t, 1))
""")
    assert "RAISED" in cancel.stdout, cancel.stdout + cancel.stderr
    assert float(cancel.stdout.split()[-1]) < 30, cancel.stdout
    assert psql(c.database, f"SELECT state FROM function_inputs WHERE call_id = '{cancelled}'") == [("cancelled",)]

    # The same with terminate_containers=True: A kills the container running the input.
    spawn = run(c.a.env(PYTHONPATH=str(APPS)), """
import modal
print("ID", modal.Function.from_name("ferry-replicas", "held").spawn(300).object_id)
""")
    assert spawn.returncode == 0, spawn.stderr
    held = spawn.stdout.split("ID ", 1)[1].split()[0]
    task = run(c.b.env(), """
import modal, time
d = modal.Dict.from_name("ferry-replicas-held", create_if_missing=True)
for _ in range(600):
    if "task" in d:
        print("TASK", d["task"]); break
    time.sleep(0.2)
""")
    assert "TASK " in task.stdout, task.stdout + task.stderr
    task_id = task.stdout.split("TASK ", 1)[1].split()[0]
    listed = lambda: task_id in c.a.modal("container", "list", "--json").stdout
    assert listed()
    cancel = run(c.b.env(), f"""
import modal
modal.FunctionCall.from_id({held!r}).cancel(terminate_containers=True)
""")
    assert cancel.returncode == 0, cancel.stderr
    wait_for(lambda: not listed(), 30, "replica A to terminate the container of the call cancelled through B")

    # A Dict and a Queue written through one replica, read through the other.
    put = run(c.a.env(), """
import modal
d = modal.Dict.from_name("ferry-replicas-d", create_if_missing=True)
d["k"] = "from A"
q = modal.Queue.from_name("ferry-replicas-q", create_if_missing=True)
q.put_many([1, 2, 3])
print("OK")
""")
    assert "OK" in put.stdout, put.stderr
    read = run(c.b.env(), """
import modal
d = modal.Dict.from_name("ferry-replicas-d")
q = modal.Queue.from_name("ferry-replicas-q")
print("GOT", d["k"], q.get_many(3, timeout=10))
""")
    assert "GOT from A [1, 2, 3]" in read.stdout, read.stdout + read.stderr

    # A map through the proxy (served by A); A dies mid-map; the client carries on through B.
    n = 60
    client = subprocess.Popen([PY, "-c", f"""
import modal
f = modal.Function.from_name("ferry-replicas", "slow_square")
print("RESULT", list(f.map(range({n}))), flush=True)
"""], env=c.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = lambda: psql(c.database, "SELECT COUNT(*) FROM function_inputs i JOIN functions f ON f.id = i.function_id "
                                     "WHERE f.tag = 'slow_square' AND i.state = 'done'")[0][0]
    wait_for(lambda: done() >= 10, 240, "the first answers on replica A")
    c.a.kill9()
    out, err = client.communicate(timeout=240)
    assert client.returncode == 0, err[-3000:]
    # Every output arrived, once each, in order.
    assert f"RESULT {[i * i for i in range(n)]}" in out, out + err[-3000:]
    log_b = log_of(c.b)
    assert "adopted replicas" in log_b, log_b[-3000:]
    # The dead replica is recorded as adopted by the live one.
    rows = psql(c.database, "SELECT adopted_by FROM replicas WHERE adopted_by IS NOT NULL")
    assert rows, "replica A was not adopted"

    # Restart everything (kill -9 both, with spawned calls in flight): nothing is lost.
    spawn = run(c.env, """
import modal
later = modal.Function.from_name("ferry-replicas", "later")
print("IDS", ",".join(later.spawn(i, 2).object_id for i in range(10, 14)))
""")
    assert spawn.returncode == 0, spawn.stderr
    pending = spawn.stdout.split("IDS ", 1)[1].split()[0].split(",")
    c.b.kill9()
    c.a.start()
    c.b.start()
    c.proxy.backends = [c.a.address, c.b.address]
    after = run(c.env, f"""
import modal
print("VALUES", [modal.FunctionCall.from_id(i).get(timeout=180) for i in {pending!r}])
print("OLD", [modal.FunctionCall.from_id(i).get(timeout=60) for i in {ids!r}])
print("DICT", modal.Dict.from_name("ferry-replicas-d")["k"])
""")
    assert after.returncode == 0, after.stderr[-3000:]
    assert "VALUES [1010, 1011, 1012, 1013]" in after.stdout, after.stdout + after.stderr[-3000:]
    assert "OLD [1000, 1001, 1002]" in after.stdout
    assert "DICT from A" in after.stdout
    # Each spawned input was answered once.
    quoted = ",".join(f"'{i}'" for i in pending)
    assert psql(c.database, f"SELECT state, COUNT(*) FROM function_inputs WHERE call_id IN ({quoted}) GROUP BY state") == [("done", 4)]
    # Two live replicas again, the earlier ones adopted.
    live = psql(c.database, "SELECT COUNT(*) FROM replicas WHERE adopted_by IS NULL")[0][0]
    assert live == 2, psql(c.database, "SELECT id, name, adopted_by FROM replicas")
