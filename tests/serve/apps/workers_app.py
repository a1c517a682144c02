"""Functions for the worker-host tests: each answer names the container (task) that ran it, and
reads a file of the image's own layer, which a worker host fetched from the bucket."""

import os
import sys
import time

import modal

app = modal.App("ferry-workers")
image = modal.Image.from_registry("python:3.11-slim-bookworm").run_commands("echo worker-layer-7 > /marker")


@app.function(image=image)
def where(x: int, pause: float = 0.0) -> tuple[int, str, str]:
    print(f"squaring {x} on a worker", flush=True)
    time.sleep(pause)
    return x * x, os.environ["MODAL_TASK_ID"], open("/marker").read().strip()


@app.function(image=image)
def reach(port: int) -> list[str]:
    """Whether the container gets to a port on its worker host's loopback (it must not)."""
    import socket

    seen = []
    for host in ("127.0.0.1", "10.0.2.2"):  # its own loopback; slirp's way to the host's
        try:
            socket.create_connection((host, port), timeout=2).close()
            seen.append(f"{host}:open")
        except OSError:
            seen.append(f"{host}:closed")
    return seen


@app.function(image=image, block_network=True)
def offline(port: int) -> str:
    """Runs on a worker with no network at all: it answers through the worker's relay socket."""
    import errno
    import socket

    try:
        socket.create_connection(("10.0.2.2", port), timeout=2).close()
        return "reached"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


@app.function(image=image, gpu="A100")
def on_gpu() -> tuple[str, str]:
    """Runs on a worker host whose (made-up) A100 it leases."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", ""), os.environ["MODAL_TASK_ID"]


@app.function(image=image, gpu="H100")
def on_h100() -> str:
    return "no worker has an H100"


def say(*parts):
    """One line in one write: the containers' log lines `modal run` prints go between writes."""
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


@app.local_entrypoint()
def main(n: int = 0, pause: float = 0.0, probe_port: int = 0, gpu: bool = False):
    if gpu:
        say("GPU", *on_gpu.remote())
        try:
            say("H100", on_h100.remote())
        except Exception as e:
            say("NOGPU", type(e).__name__, str(e).replace("\n", " "))
        return
    if probe_port:
        say("REACH", " ".join(reach.remote(probe_port)))
        say("OFFLINE", offline.remote(probe_port))
    square, task, marker = where.remote(7)
    say("REMOTE", square, task, marker)
    for square, task, marker in where.map(range(n), kwargs={"pause": pause}):
        say("OUT", square, task, marker)
    say("DONE")
