"""Functions for the cluster suite: two replicas, two worker hosts. Each answer names the
container (task) that ran it and what it saw of its image: a layer built on a replica, an
environment variable of the image, and a file of the app that the worker fetched from the
bucket."""

import os
import time
from pathlib import Path

import modal

app = modal.App("ferry-cluster")
image = (
    modal.Image.debian_slim()
    .run_commands("echo cluster-layer-3 > /marker")
    .env({"CLUSTER_MARK": "env-9"})
    .add_local_file(Path(__file__).parent / "cluster_files" / "note.txt", "/data/note.txt")
)


@app.function(image=image, max_containers=4)
def square(x: int, pause: float = 0.0) -> tuple[int, str, str]:
    print(f"squaring {x} on a worker", flush=True)
    time.sleep(pause)
    seen = f"{open('/marker').read().strip()}|{os.environ.get('CLUSTER_MARK')}|{open('/data/note.txt').read().strip()}"
    return x * x, os.environ["MODAL_TASK_ID"], seen


@app.function(image=image, max_containers=2)
def later(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x + 1000


@app.function(image=image)
def record(dict_name: str, queue_name: str, n: int) -> str:
    """Writes to a Dict and a Queue from a container on a worker host."""
    d = modal.Dict.from_name(dict_name, create_if_missing=True)
    q = modal.Queue.from_name(queue_name, create_if_missing=True)
    d["from-worker"] = os.environ["MODAL_TASK_ID"]
    d.update({f"k{i}": i * 10 for i in range(n)})
    q.put_many(list(range(n)))
    return d["from-worker"]
