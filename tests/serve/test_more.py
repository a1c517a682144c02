"""Generators, async, concurrency and batching; containers as an operator sees them."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path


from test_functions import APPS


def test_generators_async_concurrency_batching(runner):
    out = runner.modal("run", str(APPS / "more.py"), timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "gen [0, 10, 20, 30, 40]" in text
    assert "async 5" in text
    assert "overlap True" in text, "4 inputs should run at once in one container"
    assert "batched True" in text


def test_aio_from_a_client_program(runner):
    code = "import asyncio, more; asyncio.run(more.run_async())"
    out = runner.python(code, PYTHONPATH=str(APPS), timeout=600)
    assert out.returncode == 0, out.stderr
    assert "aio 9" in out.stdout


def running_containers(server, app_id=None):
    args = ["container", "list", "--json"]
    out = server.modal(*args)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    return [r for r in rows if app_id is None or r["app_id"] == app_id]


def test_ctrl_c_stops_the_app_and_its_containers(runner):
    env = runner.env()
    modal_cli = str(Path(sys.executable).parent / "modal")
    proc = subprocess.Popen([modal_cli, "run", str(APPS / "sleeper.py")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    app_rows = []
    while time.time() < deadline and not app_rows:
        time.sleep(1)
        app_rows = [r for r in running_containers(runner) if r["app_name"] == "ferry-sleeper"]
    assert app_rows, "the function's container never started"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    app_id = app_rows[0]["app_id"]
    deadline = time.time() + 60
    while time.time() < deadline and running_containers(runner, app_id):
        time.sleep(1)
    assert not running_containers(runner, app_id), "containers outlived their stopped app"
    apps = json.loads(runner.modal("app", "list", "--json").stdout)
    assert next(a for a in apps if a["app_id"] == app_id)["state"] == "stopped"


def test_container_stop_reruns_its_input(runner):
    """`modal container stop` interrupts the container (SIGINT, as on Modal): its `@exit` runs,
    and the input it ran runs again in another container."""
    code = """
import modal
from sleeper import app, Napper
with app.run():
    call = Napper().nap.spawn(8)
    print("result " + call.get(timeout=300), flush=True)
"""
    env = runner.env(PYTHONPATH=str(APPS))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    deadline = time.time() + 300
    while time.time() < deadline and first is None:
        time.sleep(1)
        rows = [r for r in running_containers(runner) if r["app_name"] == "ferry-sleeper"]
        first = rows[0]["container_id"] if rows else None
    assert first, "no container started"
    # Exec into a function's container is not served; the answer says so (not "not found").
    out = runner.modal("container", "exec", "--no-pty", first, "--", "echo", "hi")
    assert out.returncode != 0 and "exec works into Sandboxes" in out.stdout + out.stderr, out.stdout + out.stderr
    out = runner.modal("container", "stop", first, "--yes")
    assert out.returncode == 0, out.stderr
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "result napped" in stdout
    logs = runner.modal("container", "logs", first)
    assert "EXIT ran on stop" in logs.stdout + logs.stderr, logs.stdout + logs.stderr


def test_min_containers_are_started_with_the_app(runner):
    code = """
import json, subprocess, sys, time, os
import modal
from warm import app, warm
with app.run() as running:
    deadline = time.time() + 120
    seen = []
    while time.time() < deadline and not seen:
        out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "modal"), "container", "list", "--json"],
                             capture_output=True, text=True)
        seen = [r for r in json.loads(out.stdout) if r["app_id"] == running.app_id]
        time.sleep(0.5)
    print("warm before call", bool(seen))
    print("call", warm.remote())
"""
    out = runner.python(code, PYTHONPATH=str(APPS), timeout=600)
    assert out.returncode == 0, out.stderr
    assert "warm before call True" in out.stdout and "call warm" in out.stdout


def detached_apps(runner) -> dict[str, str]:
    out = runner.modal("app", "list", "--json")
    assert out.returncode == 0, out.stderr
    return {a["app_id"]: a["state"] for a in json.loads(out.stdout) if a["description"] == "ferry-detached"}


def test_app_tags_are_kept_set_and_checked(runner, tmp_path):
    """`App(tags=...)` on a run and a deploy, `App.set_tags` (replacing them) and
    `App.get_tags`, from the same client and from a later one; the server refuses a tag the
    client's own check would, when another client sends it."""
    name = f"ferry-tags-{time.time_ns()}"
    app_file = tmp_path / "tagged.py"
    app_file.write_text(f"""
import modal
app = modal.App({name!r}, tags={{"team": "ml", "cost-center": "a.1"}})

@app.function()
def f():
    return 1
""")
    out = runner.modal("deploy", str(app_file), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    code = f"""
import modal
deployed = modal.App.lookup({name!r})
print("DEPLOYED", sorted(deployed.get_tags().items()))
deployed.set_tags({{"team": "infra"}})
print("SET", sorted(modal.App.lookup({name!r}).get_tags().items()))
app = modal.App("ferry-tags-run", tags={{"run": "1"}})
with app.run():
    print("RUN", sorted(app.get_tags().items()))
    # Past the client's own check, as another client could send it.
    import modal.app as app_module
    app_module.check_tag_dict = lambda tags: None
    try:
        app.set_tags({{"bad key!": "x"}})
        print("BAD accepted")
    except Exception as e:
        print("BAD", type(e).__name__, str(e)[:200])
"""
    out = runner.python(code, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DEPLOYED [('cost-center', 'a.1'), ('team', 'ml')]" in out.stdout, out.stdout + out.stderr
    assert "SET [('team', 'infra')]" in out.stdout, out.stdout
    assert "RUN [('run', '1')]" in out.stdout, out.stdout
    assert "BAD" in out.stdout and "BAD accepted" not in out.stdout and "invalid tag key" in out.stdout, out.stdout + out.stderr


def test_function_from_id_and_info(runner, tmp_path):
    """`modal.Function.from_id` in a later client calls the deployed function, `.info()` reads
    its settings, and an id that names nothing is a NotFoundError."""
    name = f"ferry-from-id-{time.time_ns()}"
    app_file = tmp_path / "by_id.py"
    app_file.write_text(f"""
import modal
app = modal.App({name!r})

@app.function(cpu=0.5, memory=256, schedule=modal.Period(days=1))
def double(x=0):
    return 2 * x
""")
    out = runner.modal("deploy", str(app_file), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    out = runner.python(f"""
import modal
fid = modal.Function.from_name({name!r}, "double").hydrate().object_id
f = modal.Function.from_id(fid)
print("CALL", f.remote(21))
info = f.info()
print("INFO", info.cpu, info.memory_mib, info.schedule is not None)
try:
    modal.Function.from_id("fu-" + "x" * 22).remote(1)
    print("MISSING found")
except modal.exception.NotFoundError as e:
    print("MISSING", type(e).__name__)
""", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "CALL 42" in out.stdout, out.stdout + out.stderr
    assert "INFO 0.5 256 True" in out.stdout, out.stdout + out.stderr
    assert "MISSING NotFoundError" in out.stdout, out.stdout + out.stderr
    assert runner.modal("app", "stop", name, "--yes").returncode == 0


def test_detached_run_outlives_the_client_and_stops_when_done(runner):
    before = detached_apps(runner)
    key = f"k{time.time_ns()}"
    # The spawned call outlasts the client's wait for the app's last logs (10 s).
    out = runner.modal("run", "--detach", str(APPS / "detached.py"), "--key", key, "--seconds", "15", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "spawned" in out.stdout, out.stdout + out.stderr
    # The client's log stream ended as it left, not by its timeout, and the app runs on.
    assert "Timed out waiting for final app logs" not in out.stdout + out.stderr, out.stdout + out.stderr
    [app_id] = [a for a in detached_apps(runner) if a not in before]
    assert detached_apps(runner)[app_id] != "stopped"
    code = f"""
import time, modal
d = modal.Dict.from_name("ferry-detached-results", create_if_missing=True)
deadline = time.time() + 120
while time.time() < deadline and d.get({key!r}) is None:
    time.sleep(0.5)
print("value " + str(d.get({key!r})))
"""
    # The spawned call finishes although the client left right after spawning it.
    check = runner.python(code, timeout=180)
    assert check.returncode == 0, check.stderr
    assert "value done" in check.stdout
    # Its last call done, the app stops by itself.
    deadline = time.time() + 60
    while time.time() < deadline and detached_apps(runner)[app_id] != "stopped":
        time.sleep(0.5)
    assert detached_apps(runner)[app_id] == "stopped"

    # An entrypoint that waited for its work: the app stops as the client leaves (or at the
    # next check, while the last answer commits), and the client gets the app's last logs
    # instead of timing out on them.
    key = f"w{time.time_ns()}"
    before = detached_apps(runner)
    out = runner.modal("run", "--detach", str(APPS / "detached.py"), "--key", key, "--wait", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "finished" in out.stdout and "Timed out waiting for final app logs" not in out.stdout + out.stderr, out.stdout + out.stderr
    [app_id] = [a for a in detached_apps(runner) if a not in before]
    deadline = time.time() + 30
    while time.time() < deadline and detached_apps(runner)[app_id] != "stopped":
        time.sleep(0.5)
    assert detached_apps(runner)[app_id] == "stopped"


def test_logs_of_a_call_a_function_and_a_sandbox(runner, tmp_path):
    """The logs API of the client: `FunctionCall.logs` holds only that call's lines (fetch, and a
    stream that ends when the call is over, through FunctionCallGetInfo), `Function.logs` and
    `App.logs` all of them with their call and input, filters by source and text, and
    `Sandbox.logs` the output of a sandbox's command."""
    app_file = tmp_path / "logged.py"
    app_file.write_text("""
import sys, time
import modal
app = modal.App("ferry-logs")

@app.function()
def shout(tag: str):
    print(f"hello from {tag}")
    print(f"warning from {tag}", file=sys.stderr)
    time.sleep(0.3)
    print(f"bye from {tag}")
    return tag
""")
    code = """
import sys, time
from datetime import datetime, timezone, timedelta
import modal
from logged import app, shout

def lines(entries):
    return [(e.message.strip(), e.source) for e in entries]

since = datetime.now(timezone.utc) - timedelta(seconds=5)
with app.run():
    a, b = shout.spawn("A"), shout.spawn("B")
    assert (a.get(), b.get()) == ("A", "B")
    time.sleep(1)
    print("CALL A", sorted(lines(a.logs.fetch(since=since))))
    print("CALL B STREAM", sorted(lines(b.logs.stream(timeout=20))))
    entries = list(shout.logs.fetch(since=since))
    print("FUNCTION", sorted(e.message.strip() for e in entries))
    calls = {e.message.strip(): e.context_ids[0] for e in entries}
    print("CALL IDS", calls["hello from A"] == a.object_id, calls["bye from B"] == b.object_id)
    print("STDERR", sorted(lines(shout.logs.fetch(since=since, source="stderr"))))
    print("SEARCH", sorted(lines(app.logs.fetch(since=since, search_text="bye"))))
    sb = modal.Sandbox.create("sh", "-c", "echo sandbox out; echo sandbox err >&2; printf 'no newline'", app=app)
    sb.wait()
    deadline = time.time() + 20
    while True:
        got = sorted(lines(sb.logs.fetch(since=since)))
        if len(got) >= 3 or time.time() > deadline:
            break
        time.sleep(0.5)
    print("SANDBOX", got)
"""
    out = runner.python(code, PYTHONPATH=str(tmp_path), timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "CALL A [('bye from A', 'stdout'), ('hello from A', 'stdout'), ('warning from A', 'stderr')]" in text, text
    assert "CALL B STREAM [('bye from B', 'stdout'), ('hello from B', 'stdout'), ('warning from B', 'stderr')]" in text, text
    assert "FUNCTION ['bye from A', 'bye from B', 'hello from A', 'hello from B', 'warning from A', 'warning from B']" in text, text
    assert "CALL IDS True True" in text, text
    assert "STDERR [('warning from A', 'stderr'), ('warning from B', 'stderr')]" in text, text
    assert "SEARCH [('bye from A', 'stdout'), ('bye from B', 'stdout')]" in text, text
    assert "SANDBOX [('no newline', 'stdout'), ('sandbox err', 'stderr'), ('sandbox out', 'stdout')]" in text, text


def test_bound_variants_are_shared_between_callers(runner, tmp_path):
    """`FunctionBindParams` gives every caller binding the same variant the same function: a
    parametrized class's warm container serves the next process too, and a `with_options`
    variant's `max_containers` holds across callers."""
    name = f"ferry-bind-{time.time_ns()}"
    (tmp_path / "bound.py").write_text(f"""
import os
import modal
app = modal.App({name!r})

@app.cls(scaledown_window=120)
class Model:
    size: int = modal.parameter(default=1)

    @modal.enter()
    def load(self):
        self.loaded = os.environ["MODAL_TASK_ID"]

    @modal.method()
    def task(self):
        return self.loaded

@app.function()
def slow(i):
    return os.environ["MODAL_TASK_ID"]
""")
    out = runner.modal("deploy", str(tmp_path / "bound.py"), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    code = f"""
import modal
model = modal.Cls.from_name({name!r}, "Model")(size=3)
variant = modal.Function.from_name({name!r}, "slow").with_options(max_containers=1)
variant.hydrate()
print("RESULT", model.task.remote(), variant.object_id, variant.remote(0))
"""
    seen = []
    for _ in range(2):
        out = runner.python(code, timeout=300)
        assert out.returncode == 0, out.stderr
        seen.append(next(line.split()[1:] for line in out.stdout.splitlines() if line.startswith("RESULT")))
    (task_a, variant_a, slow_a), (task_b, variant_b, slow_b) = seen
    assert task_a == task_b, "the second process should reach the warm container of Model(size=3)"
    assert variant_a == variant_b and slow_a == slow_b, seen
    other = runner.python(f"import modal; print('OTHER', modal.Cls.from_name({name!r}, 'Model')(size=4).task.remote())", timeout=300)
    assert other.returncode == 0, other.stderr
    assert task_a not in other.stdout, "other parameters are another container"
    runner.modal("app", "stop", name)


def test_sandboxes_are_listed_as_containers(runner):
    """`modal container list` shows a running sandbox's container, `modal app list` counts it,
    `modal container stop` of it terminates the sandbox, and `modal container logs` shows its
    output after it has finished."""
    code = """
import json, subprocess, sys, time
import modal
app = modal.App.lookup("ferry-sandbox-containers", create_if_missing=True)
sb = modal.Sandbox.create("sh", "-c", "echo started; sleep 300", app=app)
task_id = sb._get_task_id()
assert next(iter(sb.stdout)).strip() == "started"
listed = json.loads(subprocess.run([sys.executable, "-m", "modal", "container", "list", "--json"], capture_output=True, text=True, check=True).stdout)
print("LISTED", any(r["container_id"] == task_id for r in listed))
apps = json.loads(subprocess.run([sys.executable, "-m", "modal", "app", "list", "--json"], capture_output=True, text=True, check=True).stdout)
print("COUNTED", [a["tasks"] for a in apps if a["app_id"] == app.app_id])
subprocess.run([sys.executable, "-m", "modal", "container", "stop", "--yes", task_id], capture_output=True, text=True, check=True)
sb.wait(raise_on_termination=False)
print("STOPPED", sb.poll())
logs = subprocess.run([sys.executable, "-m", "modal", "container", "logs", task_id], capture_output=True, text=True)
print("LOGS", logs.returncode, "started" in logs.stdout, repr(logs.stdout[-300:]), logs.stderr[-300:])
"""
    out = runner.python(code, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "LISTED True" in out.stdout, out.stdout
    assert "COUNTED ['1']" in out.stdout, out.stdout
    assert "STOPPED 137" in out.stdout, out.stdout
    assert "LOGS 0 True" in out.stdout, out.stdout


def test_experimental_spawn_map_results_by_index(runner):
    """`Function.experimental_spawn_map` sends its inputs, then `FunctionFinishInputs`; its
    call's results are read by index, in order, and through `FunctionCall.from_id`."""
    code = """
import modal
from basic import app, square
with app.run():
    fc = square.experimental_spawn_map(range(20))
    print("third", fc.get(index=3))
    print("all", list(fc.iter()))
    print("slice", list(fc.iter(start=5, end=8)))
    again = modal.FunctionCall.from_id(fc.object_id)
    print("count", again.num_inputs())
    print("again", list(again.iter(start=18)))
    try:
        list(again.iter(end=21))
        print("range accepted")
    except ValueError as e:
        print("range refused")
"""
    out = runner.python(code, PYTHONPATH=str(APPS), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines["third"] == "9", out.stdout
    assert lines["all"] == str([i * i for i in range(20)]), out.stdout
    assert lines["slice"] == "[25, 36, 49]", out.stdout
    assert lines["count"] == "20", out.stdout
    assert lines["again"] == "[324, 361]", out.stdout
    assert lines["range"] == "refused", out.stdout
