"""Escape attempts, each run inside a function container: every probe reports what happened
instead of raising, so one test call shows the whole picture."""

import modal

app = modal.App("ferry-escape")
image = modal.Image.debian_slim()

PROBES = r'''
import ctypes, os, socket, time

libc = ctypes.CDLL(None, use_errno=True)


def attempt(action):
    try:
        r = action()
        if r is False:
            return "denied"
        return "allowed"
    except Exception:
        return "denied"


def check(r):
    if r != 0:
        raise OSError(ctypes.get_errno(), "refused")


def connect(host, port):
    socket.create_connection((host, port), timeout=3).close()


def probe(port, host_file):
    out = {}
    out["uid"] = os.getuid()
    out["host_uid"] = open("/proc/self/uid_map").read().split()[1]
    out["loopback"] = attempt(lambda: connect("127.0.0.1", port))
    out["gateway"] = attempt(lambda: connect("10.0.2.2", port))
    out["host_file"] = attempt(lambda: open(host_file).read())
    out["init_mem"] = attempt(lambda: open("/proc/1/mem", "rb").read(1))
    out["init_environ"] = attempt(lambda: open("/proc/1/environ", "rb").read())
    out["ptrace_init"] = attempt(lambda: check(libc.ptrace(16, 1, 0, 0)))
    out["mount"] = attempt(lambda: check(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)))
    out["module"] = attempt(lambda: check(libc.syscall(313, 0, b"", 0)))
    out["hostname"] = attempt(lambda: socket.sethostname("evil"))
    ts = (ctypes.c_long * 2)(0, 0)
    out["clock"] = attempt(lambda: check(libc.clock_settime(0, ts)))
    out["mknod"] = attempt(lambda: os.mknod("/tmp/disk", 0o60600, os.makedev(8, 0)))
    out["sysrq"] = attempt(lambda: open("/proc/sysrq-trigger", "w").write("h"))
    out["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return out
'''


@app.function(image=image)
def probe(port: int, host_file: str):
    ns = {}
    exec(PROBES, ns)
    return ns["probe"](port, host_file)


@app.function(image=image)
def leave_secret(marker: str):
    """Writes a file and keeps a process with a secret in its environment for a while."""
    import os, subprocess

    open("/tmp/escape-secret", "w").write(marker)
    env = dict(os.environ, ESCAPE_SECRET=marker)
    subprocess.Popen(["sleep", "20"], env=env)
    return os.uname().nodename


@app.function(image=image)
def look_for(marker: str):
    """Looks for another container's file and process environment."""
    import os

    found = []
    if os.path.exists("/tmp/escape-secret"):
        found.append("file")
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in open(f"/proc/{pid}/environ", "rb").read():
                    found.append("environ " + pid)
            except OSError:
                pass
    return found


BOMB = r'''
import os
n = 0
try:
    while True:
        quiet = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_WRONLY, 0) for fd in (1, 2)]
        os.posix_spawn("/bin/sleep", ["sleep", "60"], os.environ, file_actions=quiet)
        n += 1
except OSError as e:
    print(f"stopped after {n} processes: errno {e.errno}")
'''


@app.function(image=image)
def fork_bomb():
    """Starts processes until the container's pids limit says no."""
    import contextlib, io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(BOMB, {})
    return buf.getvalue().strip()


@app.function(image=image, ephemeral_disk=200)
def fill_disk():
    import time

    for i in range(1000):
        open(f"/tmp/fill-{i}", "wb").write(b"x" * (1 << 20))
    time.sleep(30)
    return "filled 1000 MiB"


@app.function(image=image, memory=128)
def hog():
    blocks = []
    while True:
        blocks.append(b"x" * (16 << 20))


@app.function(image=image)
def ok(x: int):
    return x + 1


@app.function(image=image)
def pooled_probe(port: int, host_file: str):
    """The probe again, from a function whose image already has demand: the standby pool
    serves it when a standby is ready (`standby` says which)."""
    import os

    ns = {}
    exec(PROBES, ns)
    out = ns["probe"](port, host_file)
    out["standby"] = os.path.isdir("/__ferry/in")
    out["net"] = sorted(os.listdir("/sys/class/net"))
    return out


@app.cls(image=image, enable_memory_snapshot=True)
class Snapped:
    """The probe in a task forked from a memory-snapshot zygote."""

    @modal.enter(snap=True)
    def load(self):
        self.ns = {}
        exec(PROBES, self.ns)

    @modal.method()
    def probe(self, port: int, host_file: str):
        import os

        out = self.ns["probe"](port, host_file)
        out["net"] = sorted(os.listdir("/sys/class/net"))
        return out
