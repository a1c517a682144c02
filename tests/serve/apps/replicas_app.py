"""Functions for the replica tests: two `ferry serve` replicas on one database and bucket."""

import time

import modal

app = modal.App("ferry-replicas")
image = modal.Image.debian_slim()


@app.function(image=image, max_containers=2)
def slow_square(x):
    time.sleep(0.3)
    return x * x


@app.function(image=image, max_containers=2)
def later(x, seconds):
    time.sleep(seconds)
    return x + 1000


@app.function(image=image, max_containers=1)
def held(seconds):
    """Records the container it runs in, then holds it."""
    import os

    modal.Dict.from_name("ferry-replicas-held", create_if_missing=True)["task"] = os.environ["MODAL_TASK_ID"]
    time.sleep(seconds)
