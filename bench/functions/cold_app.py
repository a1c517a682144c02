"""The apps the cold-start benchmark runs on Ferry (bench/functions/bench_coldstart.py).

`started_at` returns the wall-clock time at which user code began to run, so a fresh client
can tell how long its input took from being sent to running in a container no one started.
`Snap` is the same with `enable_memory_snapshot=True`, deployed once and called cold again
after each scale-down.
"""

import os
import time

import modal

app = modal.App(os.environ.get("FERRY_BENCH_COLD_APP", "ferry-bench-cold"))
image = modal.Image.debian_slim()


@app.function(image=image)
def started_at():
    return time.time()


@app.cls(image=image, enable_memory_snapshot=True, scaledown_window=2)
class Snap:
    @modal.enter(snap=True)
    def load(self):
        self.ready = True

    @modal.method()
    def started_at(self):
        return time.time()
