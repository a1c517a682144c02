"""Cold starts: standby containers and memory snapshots, with the real client and binary.

- A pooled (standby) container runs a task with the task's own environment, secrets and
  files, and never sees what another task wrote or set.
- The pool refills after a take and shrinks when its image is idle (`--pool-idle-secs`).
- `enable_memory_snapshot=True`: the `@modal.enter(snap=True)` method runs once for ten
  containers, `@modal.enter()` once per container, and new code gets a new snapshot.
"""

import json
import os
from pathlib import Path

import pytest
from conftest import unique, wait_for

APPS = Path(__file__).parent / "apps"
DATA = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))


def descendants(pid: int) -> list[int]:
    """Host pids of every process below `pid`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def standby_drivers(server) -> int:
    """Standby containers of this server still waiting for a task."""
    n = 0
    for pid in descendants(server.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(a.endswith(b"/standby.py") for a in argv) or b"FERRY_ZYGOTE=1" in environ:
            continue
        # A standby that took a task has its container arguments; a waiting one not yet.
        if not Path(f"/proc/{pid}/root/__ferry/in/container_arguments.pb").exists():
            n += 1
    return n


def user_namespaces(server) -> bool:
    """Whether the server's containers get user namespaces (its isolation line says `full`)."""
    return "container isolation: full" in Path(server.log.name).read_text()


@pytest.fixture(scope="module")
def pooled():
    from conftest import Ferry

    server = Ferry(DATA, "--no-modal-profile", "--pool-per-image", "1", "--pool-max", "2", "--pool-idle-secs", "4").start()
    yield server
    server.stop()


PROBE = """
import json, modal
from coldstart import app, probe
with app.run():
    print("RESULT " + json.dumps(probe.remote({token!r})))
"""


def probe_once(server, token: str) -> dict:
    out = server.python(PROBE.format(token=token), PYTHONPATH=str(APPS), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_pooled_containers_never_see_another_tasks_state(pooled):
    # The first task on this image creates demand; the pool then keeps a standby ready.
    first = probe_once(pooled, "first")
    assert first["secret"] == "cold-s3cr3t" and first["app_file"], first
    results = []
    for token in ("alpha", "beta"):
        wait_for(lambda: standby_drivers(pooled) >= 1, 120, "a standby container")
        results.append(probe_once(pooled, token))
    for r in results:
        # Served by a standby container, with the task's own secret and app file ...
        assert r["standby"] is True, r
        assert r["secret"] == "cold-s3cr3t" and r["app_file"], r
        # ... and nothing of the other tasks: neither their files nor their variables.
        assert r["found"] == [], r
        assert r["env"] is None, r
        # ... isolated as a fresh task container: its own network namespace and user namespace.
        assert r["net"] == ["eth0", "lo"], r
        assert not user_namespaces(pooled) or r["host_uid"] >= 0x40000000, r
    tasks = {first["task"], results[0]["task"], results[1]["task"]}
    assert len(tasks) == 3


def test_pool_shrinks_when_idle(pooled):
    probe_once(pooled, "gamma")
    # Refilled after the take ...
    wait_for(lambda: standby_drivers(pooled) >= 1, 120, "the pool to refill")
    # ... and emptied once the image saw no task for --pool-idle-secs (4 s).
    wait_for(lambda: standby_drivers(pooled) == 0, 30, "the idle pool to shrink")


def write_snapshot_app(path: Path, app_name: str, dict_name: str, version: str):
    text = (APPS / "snapshot_template.py").read_text()
    path.write_text(text.replace("@VERSION@", version).replace("@APP@", app_name).replace("@DICT@", dict_name))


SNAP_CALLS = """
import json, modal
Snapper = modal.Cls.from_name({app!r}, "Snapper")
results = list(Snapper().info.map(range({n})))
counts = modal.Dict.from_name({dict!r})
print("RESULT " + json.dumps({{"results": results, "keys": list(counts.keys())}}))
"""


def snapshot_calls(server, app_name: str, dict_name: str, n: int) -> dict:
    out = server.python(SNAP_CALLS.format(app=app_name, dict=dict_name, n=n), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_memory_snapshot_enter_runs_once_for_ten_cold_starts(pooled, tmp_path):
    runner = pooled
    app_name, dict_name = unique("ferry-snap"), unique("ferry-snap-counts")
    app_file = tmp_path / "snapshot_app.py"
    write_snapshot_app(app_file, app_name, dict_name, "1")
    out = runner.modal("deploy", str(app_file), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr

    got = snapshot_calls(runner, app_name, dict_name, 10)
    results, keys = got["results"], got["keys"]
    assert sorted(r["i"] for r in results) == list(range(10))
    tasks = {r["task"] for r in results}
    # Ten inputs of 1.5 s with max_containers=10 start several containers at once.
    assert len(tasks) >= 3, results
    # Every container starts with the snap=True state already there ...
    assert all(r["loaded"] == "1" for r in results), results
    # ... which ran exactly once, in the zygote, not in any task's own process.
    snaps = [k for k in keys if k.startswith("snap-1-")]
    assert len(snaps) == 1, keys
    assert all(r["pid"] != r["snap_pid"] for r in results), results
    # The zygote, and so every child, is isolated as a task container is.
    assert all(r["net"] == ["eth0", "lo"] for r in results), results
    assert not user_namespaces(runner) or all(r["host_uid"] >= 0x40000000 for r in results), results
    # The plain @modal.enter() ran once per container.
    enters = {k.removeprefix("enter-1-") for k in keys if k.startswith("enter-1-")}
    assert enters == tasks, (enters, tasks)

    # New code, new snapshot: the next container starts from version 2's.
    write_snapshot_app(app_file, app_name, dict_name, "2")
    out = runner.modal("deploy", str(app_file), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    got = snapshot_calls(runner, app_name, dict_name, 1)
    assert got["results"][0]["loaded"] == "2" and got["results"][0]["version"] == "2", got
    assert len([k for k in got["keys"] if k.startswith("snap-2-")]) == 1, got["keys"]
    assert len([k for k in got["keys"] if k.startswith("snap-1-")]) == 1, got["keys"]
