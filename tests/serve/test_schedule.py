"""Schedules (`modal.Period`, `modal.Cron`) and deployments (versions, `--tag`, strategies,
history, rollback, stop) through the real modal CLI and SDK."""

import json
import time

from conftest import unique
from test_functions import APPS

SCHEDULED = str(APPS / "scheduled.py")
VERSIONED = str(APPS / "versioned.py")


def run_times(server, dict_name: str) -> list[float]:
    """The times the scheduled function ran, from its Dict."""
    code = f"""
import modal
d = modal.Dict.from_name({dict_name!r}, create_if_missing=True)
print(sorted(float(k) for k in d.keys()))
"""
    out = server.python(code)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def deploy(server, app_file, name, *args, **env):
    out = server.modal("deploy", "--name", name, *args, app_file, timeout=600, **env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def call(server, app_name, fn, *args):
    code = f"""
import modal
print("result", modal.Function.from_name({app_name!r}, {fn!r}).remote(*{list(args)!r}))
"""
    out = server.python(code, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("result ", 1)[1].strip()


def test_period_fires_on_a_deployed_app_and_survives_a_restart(runner):
    name, ticks = unique("sched"), unique("ticks")
    deploy(runner, SCHEDULED, name, TICKS_DICT=ticks)
    deployed = time.time()
    apps = json.loads(runner.modal("app", "list", "--json").stdout)
    app_id = next(a["app_id"] for a in apps if a["description"] == name and a["state"] == "deployed")

    # The Cron is accepted with its time zone and listed with the app's functions.
    info = runner.modal("app", "info", name)
    assert info.returncode == 0, info.stderr
    assert "30 6 * * 1-5 (America/New_York)" in info.stdout, info.stdout
    assert "Every 2 seconds" in info.stdout, info.stdout

    time.sleep(8)
    before = run_times(runner, ticks)
    assert len(before) >= 2, before
    assert all(t >= deployed - 1 for t in before)
    logs = runner.modal("app", "logs", name)
    assert "scheduled tick ran" in logs.stdout + logs.stderr

    # Down for 7 s (three or four missed ticks): they fire once, as one run, then the
    # schedule goes on every 2 s. Firing every missed tick would add three more runs.
    runner.stop()
    stopped = time.time()
    time.sleep(7)
    runner.start()
    restarted = time.time()
    # The deployment's warm container (min_containers=1) comes back with the server.
    warm = []
    while not warm and time.time() < restarted + 4:
        rows = json.loads(runner.modal("container", "list", "--json").stdout)
        warm = [r for r in rows if r["app_id"] == app_id]
    assert warm, "the deployed app's min_containers did not start again"
    time.sleep(max(0.0, restarted + 4.5 - time.time()))

    # Redeploying without the schedule ends it at once.
    deploy(runner, SCHEDULED, name, TICKS_DICT=ticks, TICKS_SCHEDULE="off")
    redeployed = time.time()
    time.sleep(1.5)
    times = run_times(runner, ticks)
    during = [t for t in times if stopped + 0.5 < t < restarted]
    after = [t for t in times if t >= restarted]
    assert not during, times
    # One run for all the missed ticks, plus the grid ticks since the restart (at most one
    # per 2 s, plus one for the window's edge); firing every missed tick would add three more.
    assert 2 <= len(after) <= 2 + (redeployed - restarted) / 2, (after, restarted, redeployed)
    time.sleep(3)
    assert run_times(runner, ticks) == times, "the schedule fired after it was deployed away"
    assert runner.modal("app", "stop", name, "--yes").returncode == 0


def test_period_fires_while_an_ephemeral_run_lasts(runner):
    ticks = unique("ticks")
    out = runner.modal("run", SCHEDULED, "--wait", "8", timeout=600, TICKS_DICT=ticks)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    n = int(text.split("ticks while running: ", 1)[1].split()[0])
    assert n >= 2, text
    assert "scheduled tick ran" in text
    # Once the run ends, so does its schedule.
    time.sleep(1)
    ended = run_times(runner, ticks)
    time.sleep(3)
    assert run_times(runner, ticks) == ended


def test_an_invalid_schedule_refuses_the_deploy(runner, tmp_path):
    app_file = tmp_path / "bad_cron.py"
    app_file.write_text(
        "import modal\n"
        "app = modal.App('ferry-bad-cron')\n"
        "@app.function(schedule=modal.Cron('0 6 * * *', timezone='Mars/Olympus'))\n"
        "def f():\n"
        "    pass\n"
    )
    out = runner.modal("deploy", "--name", unique("bad"), str(app_file))
    assert out.returncode != 0
    assert "Mars/Olympus" in out.stdout + out.stderr


def test_versions_tags_strategies_rollback_and_stop(runner):
    name = unique("versioned")
    deploy(runner, VERSIONED, name, "--tag", "first", APP_VERSION="1")
    assert call(runner, name, "version") == "1"

    # Rolling (the default): a call in flight on a v1 container finishes there, new calls
    # reach v2.
    spawn = f"""
import modal
print("call", modal.Function.from_name({name!r}, "slow").spawn(6).object_id)
"""
    out = runner.python(spawn)
    assert out.returncode == 0, out.stderr
    call_id = out.stdout.split("call ", 1)[1].strip()
    time.sleep(2)
    deploy(runner, VERSIONED, name, APP_VERSION="2")
    assert call(runner, name, "version") == "2"
    get = f"""
import modal
print("result", modal.FunctionCall.from_id({call_id!r}).get(timeout=120))
"""
    out = runner.python(get, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "result 1" in out.stdout

    # Recreate: the client stops the containers that predate the new version.
    text = deploy(runner, VERSIONED, name, "--strategy", "recreate", APP_VERSION="3")
    assert "Terminating running containers" in text, text
    assert call(runner, name, "version") == "3"

    out = runner.modal("app", "history", name, "--json")
    assert out.returncode == 0, out.stderr
    rows = [{k.lower(): v for k, v in row.items()} for row in json.loads(out.stdout)]
    assert [r["version"] for r in rows] == ["v3", "v2", "v1"], rows
    assert rows[2]["tag"] == "first" and not rows[0]["tag"], rows

    # Rolling back restores v2's definitions as a new version, v4.
    out = runner.modal("app", "rollback", name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert call(runner, name, "version") == "2"
    out = runner.modal("app", "rollback", name, "v1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert call(runner, name, "version") == "1"
    rows = json.loads(runner.modal("app", "history", name, "--json").stdout)
    assert [list(r.values())[0] for r in rows][:2] == ["v5", "v4"], rows
    out = runner.modal("app", "rollback", name, "v9")
    assert out.returncode != 0 and "v9" in out.stdout + out.stderr

    # A rollover is a new version with the same code and fresh containers.
    out = runner.modal("app", "rollover", name, "--strategy", "recreate")
    assert out.returncode == 0, out.stdout + out.stderr
    assert call(runner, name, "version") == "1"
    rows = json.loads(runner.modal("app", "history", name, "--json").stdout)
    assert list(rows[0].values())[0] == "v6", rows

    # Stopped: lookups by name fail with NotFoundError.
    assert runner.modal("app", "stop", name, "--yes").returncode == 0
    code = f"""
import modal
try:
    modal.Function.from_name({name!r}, "version").remote()
except modal.exception.NotFoundError as e:
    print("not found:", e)
"""
    out = runner.python(code)
    assert out.returncode == 0, out.stderr
    assert "not found:" in out.stdout, out.stdout
