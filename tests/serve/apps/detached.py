"""`modal run --detach`: work spawned by the entrypoint outlives the client, and the app stops
once that work is done (at once when the entrypoint waited for it). The client's own log
stream ends when it leaves, however long the work takes."""

import time

import modal

app = modal.App("ferry-detached")
results = modal.Dict.from_name("ferry-detached-results", create_if_missing=True)


@app.function(image=modal.Image.debian_slim())
def finish_later(key, seconds=3.0):
    time.sleep(seconds)
    results[key] = "done"


@app.local_entrypoint()
def main(key: str, wait: bool = False, seconds: float = 3.0):
    if wait:
        finish_later.remote(key)
        print("finished", flush=True)
    else:
        finish_later.spawn(key, seconds)
        print("spawned", flush=True)
