"""An app for the dashboard test: a map with one failing input, then a function that keeps
printing until its container is stopped or the run is interrupted."""

import time

import modal

app = modal.App("ferry-dash-demo")
image = modal.Image.debian_slim()


@app.function(image=image)
def work(i: int) -> int:
    print(f"dash-work {i}", flush=True)
    if i == 3:
        raise ValueError("dash boom at input 3")
    return i * 2


@app.function(image=image, timeout=600)
def ticker(n: int) -> int:
    for k in range(n):
        print(f"dash-tick {k}", flush=True)
        time.sleep(0.5)
    return n


@app.local_entrypoint()
def main():
    results = list(work.map(range(5), return_exceptions=True))
    print("results", [type(r).__name__ if isinstance(r, Exception) else r for r in results], flush=True)
    ticker.remote(240)
