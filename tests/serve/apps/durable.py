"""Functions for the durability tests: calls that outlive a `kill -9` of the server."""

import time

import modal

app = modal.App("ferry-durable")
image = modal.Image.debian_slim()


@app.function(image=image, max_containers=2)
def slow_square(x):
    time.sleep(0.3)
    return x * x


@app.function(image=image, max_containers=1)
def tick(x):
    time.sleep(0.2)
    return x + 1000


@app.function(image=image, max_containers=1, timeout=600)
def hold(key, seconds):
    """Marks itself started in a Dict, then sleeps: the tests cancel it meanwhile."""
    d = modal.Dict.from_name("ferry-durable-marks", create_if_missing=True)
    d[key] = "started"
    time.sleep(seconds)
    d[key] = "finished"
    return seconds


@app.function(image=image, max_containers=4)
def noop(x):
    return x


@app.local_entrypoint()
def main(seconds: int = 120):
    call = hold.spawn("ctrl-c", seconds)
    print(f"CALL {call.object_id}", flush=True)
    print(call.get())
