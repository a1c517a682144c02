"""`modal run` of real app files: functions run in containers built from the app's images."""

import json
import re
from pathlib import Path

APPS = Path(__file__).parent / "apps"


def modal_run(server, app_file, *args, timeout=900):
    return server.modal("run", str(app_file), *args, timeout=timeout)


def test_modal_run_functions(runner):
    out = modal_run(runner, APPS / "basic.py", "--n", "12")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "remote 49" in text
    assert f"map {[i * i for i in range(12)]}" in text
    assert f"unordered {[i * i for i in range(12)]}" in text
    assert "starmap [4, 9]" in text
    assert "exceptions ['ValueError', 'ValueError']" in text
    assert "caught remote failure" in text
    # The remote traceback comes back with the exception.
    assert 'raise ValueError(message)' in text
    env = re.search(r"env (\{.*\})", text).group(1)
    assert "'cwd': '/root'" in env and "'remote': '1'" in env and "'python': '3.11" in env
    assert "secret s3cr3t" in text
    # Container output is streamed to `modal run`, stdout and stderr alike.
    assert "squaring 7" in text and "to stderr" in text
    # A line the container printed while running an input shows before the input's answer.
    assert out.stdout.index("squaring 7") < out.stdout.index("remote 49"), out.stdout


def test_host_files_are_invisible(runner, tmp_path):
    secret = tmp_path / "host-only.txt"
    secret.write_text("host data")
    code = f"""
import modal
from isolation import app, exists
with app.run():
    print("visible " + str(exists.remote({str(secret)!r})))
    print("etc " + str(exists.remote("/etc/debian_version")))
"""
    out = runner.python(code, PYTHONPATH=str(APPS), timeout=600)
    assert out.returncode == 0, out.stderr
    assert "visible False" in out.stdout and "etc True" in out.stdout


def test_memory_limit_is_enforced(runner):
    code = """
import modal
from isolation import app, hog
with app.run():
    print("small " + str(hog.remote(16)))
    try:
        hog.remote(512)
        print("no error")
    except Exception as e:
        print("error " + type(e).__name__ + " " + str(e))
"""
    out = runner.python(code, PYTHONPATH=str(APPS), timeout=600)
    assert out.returncode == 0, out.stderr
    assert "small 16" in out.stdout
    assert "error" in out.stdout and "out of memory" in out.stdout, out.stdout


def test_classes_spawn_retries_timeouts(runner):
    out = modal_run(runner, APPS / "features.py")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    for expected in [
        "add 5",
        "entered True",
        "param 301",
        "map [101, 102, 103]",
        "options 201",
        "spawned 42",
        "gather [0, 2, 4]",
        "flaky 3",
        "flaky map [3, 3, 3]",
        "failed map ['never works 1', 'never works 2']",
        "gave up never works",
        "quick 0.1",
        "timeout Function timed out after 2 seconds",
        "timed out status TIMEOUT",
        "timed out stream ended",
    ]:
        assert expected in text, f"missing {expected!r} in:\n{text}"
    # @modal.exit runs when the app stops (the container is sent kill_switch first).
    assert "EXIT ran for 0" in text
    # Standby containers run the modal runtime as `python -m` would, without runpy's warning
    # about a module imported before it ran.
    assert "RuntimeWarning" not in text, text


def test_deploy_then_call_from_other_processes(runner):
    out = runner.modal("deploy", str(APPS / "deployed.py"))
    assert out.returncode == 0, out.stdout + out.stderr
    code = """
import modal
print("double " + str(modal.Function.from_name("ferry-deployed", "double").remote(21)))
print("marker " + modal.Function.from_name("ferry-deployed", "marker").remote())
Model = modal.Cls.from_name("ferry-deployed", "Model")
print("predict " + str(Model().predict.remote(4)))
"""
    out = runner.python(code, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "double 42" in out.stdout and "marker deployed1.16.0" in out.stdout and "predict 40" in out.stdout
    # Redeploying keeps the app and its functions reachable.
    out = runner.modal("deploy", str(APPS / "deployed.py"))
    assert out.returncode == 0, out.stdout + out.stderr
    out = runner.python(code, timeout=600)
    assert out.returncode == 0 and "double 42" in out.stdout, out.stderr
    # A handle taken before `modal app stop` starts nothing afterwards.
    held = """
import subprocess, sys
import modal
f = modal.Function.from_name("ferry-deployed", "double")
print("before " + str(f.remote(1)), flush=True)
subprocess.run([sys.executable, "-m", "modal", "app", "stop", "ferry-deployed", "--yes"], check=True)
for call in (lambda: f.remote(2), lambda: f.spawn(3).get()):
    try:
        call()
        print("after ran")
    except modal.exception.NotFoundError as e:
        print("after refused: " + str(e))
"""
    out = runner.python(held, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "before 2" in out.stdout and "after ran" not in out.stdout, out.stdout
    assert out.stdout.count("after refused: ") == 2 and "has stopped" in out.stdout, out.stdout
    out = runner.python(code, timeout=120)
    assert out.returncode != 0 and "not found" in out.stderr


def test_block_network(runner):
    port = runner.url.rsplit(":", 1)[1]
    code = f"""
import modal
from isolation import app, reach
with app.run():
    print("network " + reach.remote({port}))
"""
    out = runner.python(code, PYTHONPATH=str(APPS), timeout=600)
    assert out.returncode == 0, out.stderr
    assert "network blocked" in out.stdout


def test_autoscaler_overrides_and_current_stats(runner):
    out = runner.modal("deploy", str(APPS / "autoscale.py"))
    assert out.returncode == 0, out.stdout + out.stderr
    code = """
import json, time, warnings
import modal
warnings.simplefilter("ignore")
f = modal.Function.from_name("ferry-autoscale", "hello")
before = f.get_current_stats()
s = f.update_autoscaler(min_containers=1, scaledown_window=30)
deadline = time.time() + 300
while f.get_current_stats().num_total_runners < 1 and time.time() < deadline:
    time.sleep(0.5)
warm = f.get_current_stats()
value = f.remote(1)
settings = f.autoscaler.settings()
try:
    f.autoscaler.update(min_containers=3, max_containers=2)
    bad = "accepted"
except Exception as e:
    bad = f"{type(e).__name__}: {e}"
after = f.autoscaler.update(max_containers=None, min_containers=0)
print("RESULT " + json.dumps(dict(
    before=[before.backlog, before.num_total_runners], set_min=s.min_containers, set_window=s.scaledown_window,
    warm=warm.num_total_runners, value=value, min=settings.min_containers, window=settings.scaledown_window,
    bad=bad, after_min=after.min_containers, after_max=after.max_containers)))
"""
    res = runner.python(code, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads(res.stdout.split("RESULT ", 1)[1])
    assert r["before"] == [0, 0]
    assert (r["set_min"], r["set_window"]) == (1, 30)
    assert r["warm"] == 1, "min_containers=1 started a container without any call"
    assert r["value"] == 2
    assert (r["min"], r["window"]) == (1, 30), "the override is kept"
    assert "min_containers (3) cannot be greater than max_containers (2)" in r["bad"]
    assert (r["after_min"], r["after_max"]) == (0, None)
    # A new deployment goes back to what the decorator says.
    out = runner.modal("deploy", str(APPS / "autoscale.py"))
    assert out.returncode == 0, out.stdout + out.stderr
    res = runner.python(
        "import modal\nprint('MIN', modal.Function.from_name('ferry-autoscale', 'hello').autoscaler.settings().min_containers)",
        timeout=120,
    )
    assert res.returncode == 0 and "MIN 0" in res.stdout, res.stdout + res.stderr
    runner.modal("app", "stop", "ferry-autoscale", "--yes")


def test_call_graph_of_calls_made_inside_inputs(runner):
    out = runner.modal("deploy", str(APPS / "callgraph.py"))
    assert out.returncode == 0, out.stdout + out.stderr
    code = """
import json
import modal
parent = modal.Function.from_name("ferry-callgraph", "parent")
fc = parent.spawn(20)
inside = fc.get()
graph = fc.get_call_graph()
root = graph[0]
kids = [(c.function_name, c.status.name, len(c.children)) for c in root.children]
print("RESULT " + json.dumps(dict(inside=inside, roots=len(graph), root=[root.function_name, root.status.name, root.function_call_id == fc.object_id, root.task_id.startswith("ta-")], kids=kids)))
try:
    modal.FunctionCall.from_id("fc-doesnotexist").get_call_graph()
    missing = "found"
except Exception as e:
    missing = type(e).__name__
print("MISSING " + missing)
"""
    res = runner.python(code, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads(res.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert r["inside"] == {"root_function": "parent", "root_status": "PENDING", "child_call_is_fc": True, "value": 41}
    assert r["roots"] == 1
    assert r["root"] == ["parent", "SUCCESS", True, True]
    assert r["kids"] and r["kids"][0][:2] == ["child", "SUCCESS"]
    assert "MISSING NotFoundError" in res.stdout
    runner.modal("app", "stop", "ferry-callgraph", "--yes")
