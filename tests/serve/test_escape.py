"""Escape attempts through the real client, as a user would make them, against functions and
sandboxes: host loopback services, host files, another container's files and environment,
pid 1's memory, mounts, kernel modules, the host's hostname and clock, and pids, memory and
disk exhaustion. Every attempt must fail and the server must keep serving."""

import json
import socket
import sys
import threading
from pathlib import Path

from conftest import unique

APPS = Path(__file__).parent / "apps"

DENIED = ["loopback", "gateway", "host_file", "init_mem", "init_environ", "ptrace_init", "mount", "module", "hostname", "clock", "mknod", "sysrq"]


class HostService:
    """A listener on the host's loopback (a stand-in for a Redis or a database), counting the
    connections it gets."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()


def host_state():
    return socket.gethostname(), Path("/proc/sys/kernel/hostname").read_text()


def user_namespaces(server) -> bool:
    """Whether the server runs containers in user namespaces: its one isolation line says
    `full` or `reduced` (a kernel without idmapped layers, or FERRY_USERNS=0)."""
    text = Path(server.log.name).read_text()
    assert "container isolation: " in text, "the server logs its isolation level at start"
    return "container isolation: full" in text


def check_probe(result: dict, what: str, userns: bool = True):
    for key in DENIED:
        assert result[key] == "denied", f"{what}: {key} was allowed: {result}"
    if userns:
        assert result["uid"] == 0 and int(result["host_uid"]) >= 0x40000000, f"{what}: {result}"


def test_function_escapes_fail(runner, tmp_path):
    service = HostService()
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only")
    before = host_state()
    marker = unique("marker")
    code = f"""
import json, modal
from escape import app, probe, leave_secret, look_for, ok, pooled_probe, Snapped
with app.run():
    print("PROBE " + json.dumps(probe.remote({service.port}, {str(secret)!r})))
    leave_secret.remote({marker!r})
    print("FOUND " + json.dumps(look_for.remote({marker!r})))
    print("OK " + str(ok.remote(1)))
    print("POOLED " + json.dumps(pooled_probe.remote({service.port}, {str(secret)!r})))
    print("SNAP " + json.dumps(Snapped().probe.remote({service.port}, {str(secret)!r})))
"""
    out = runner.python(code, PYTHONPATH=str(APPS), timeout=600)
    service.close()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    lines = {l.split(" ", 1)[0]: l.split(" ", 1)[1] for l in out.stdout.splitlines() if " " in l}
    userns = user_namespaces(runner)
    check_probe(json.loads(lines["PROBE"]), "function", userns)
    # Standby and memory-snapshot containers are isolated exactly as fresh ones.
    for key, what in (("POOLED", "pooled function"), ("SNAP", "memory-snapshot child")):
        result = json.loads(lines[key])
        check_probe(result, what, userns)
        assert result["net"] == ["eth0", "lo"], f"{what}: {result}"
    assert json.loads(lines["FOUND"]) == [], "another container's file or environment was visible"
    assert lines["OK"] == "2"
    assert service.connections == 0
    assert host_state() == before


def test_function_exhaustion_fails_its_own_input(runner):
    code = """
import modal
from escape import app, fork_bomb, fill_disk, hog, ok
with app.run():
    print("FORK " + fork_bomb.remote())
    print("OK " + str(ok.remote(1)))
    for name, f in [("DISK", fill_disk), ("MEMORY", hog)]:
        try:
            print(name + " no error " + str(f.remote()))
        except Exception as e:
            print(name + " " + type(e).__name__ + ": " + str(e).splitlines()[0])
        print("OK " + str(ok.remote(1)))
"""
    out = runner.python(code, PYTHONPATH=str(APPS), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    text = out.stdout
    assert "FORK stopped after" in text and "errno 11" in text.split("FORK ", 1)[1].splitlines()[0], text
    assert "ephemeral disk" in text.split("DISK ", 1)[1].splitlines()[0], text
    assert "out of memory" in text.split("MEMORY ", 1)[1].splitlines()[0], text
    assert text.count("OK 2") == 3, text


SANDBOX = """
import json, modal
app = modal.App.lookup(APP_NAME, create_if_missing=True)
image = modal.Image.debian_slim()
PROBES = open(PROBES_FILE).read()
BOMB = open(BOMB_FILE).read()
"""


def test_sandbox_escapes_fail(runner, tmp_path):
    service = HostService()
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only")
    before = host_state()
    probes = tmp_path / "probes.py"
    # The probe code of the function app, run by `python -c` inside each sandbox.
    sys.path.insert(0, str(APPS))
    import escape

    probes.write_text(escape.PROBES)
    bomb = tmp_path / "bomb.py"
    bomb.write_text(escape.BOMB)
    code = SANDBOX.replace("APP_NAME", repr(unique("escape"))).replace("PROBES_FILE", repr(str(probes))).replace("BOMB_FILE", repr(str(bomb))) + f"""
a = modal.Sandbox.create("sleep", "300", app=app, image=image)
b = modal.Sandbox.create("sleep", "300", app=app, image=image)
p = a.exec("python", "-c", PROBES + "\\nimport json\\nprint(json.dumps(probe({service.port}, {str(secret)!r})))")
print("PROBE " + p.stdout.read().strip())
print("PROBEERR " + json.dumps(p.stderr.read()[-2000:]))
p.wait()
w = a.exec("sh", "-c", "echo hidden > /tmp/escape-secret; ESCAPE_SECRET=sbx-marker sleep 60 >/dev/null 2>&1 & echo started")
w.stdout.read()
look = b.exec("sh", "-c", "cat /tmp/escape-secret 2>/dev/null; grep -l sbx-marker /proc/[0-9]*/environ 2>/dev/null; echo done")
print("FOUND " + json.dumps(look.stdout.read().split()))
bomb = b.exec("python", "-c", BOMB)
print("FORK " + bomb.stdout.read().strip())
echo = a.exec("echo", "still-serving")
print("OK " + echo.stdout.read().strip())
a.terminate(); b.terminate()
"""
    out = runner.python(code, timeout=600)
    service.close()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    lines = {l.split(" ", 1)[0]: l.split(" ", 1)[1] for l in out.stdout.splitlines() if " " in l}
    assert lines["PROBE"], out.stdout[-3000:] + out.stderr[-3000:]
    check_probe(json.loads(lines["PROBE"]), "sandbox", user_namespaces(runner))
    assert json.loads(lines["FOUND"]) == ["done"], "another sandbox's file or environment was visible"
    assert lines["FORK"].startswith("stopped after") and lines["FORK"].endswith("errno 11"), lines["FORK"]
    assert lines["OK"] == "still-serving"
    assert service.connections == 0
    assert host_state() == before
