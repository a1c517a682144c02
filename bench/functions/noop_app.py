"""The app the function benchmark runs on Ferry: one no-op function on `debian_slim`.

Its own module (found through PYTHONPATH) so that a container imports it by name, the way it
imports any app file, and so that every cold-start sample is a fresh interpreter with a new App.
"""

import os

import modal

app = modal.App("ferry-bench-functions")
image = modal.Image.debian_slim()


# `--max-containers` of the benchmark; unset, the server's default applies.
MAX_CONTAINERS = int(os.environ.get("FERRY_BENCH_MAX_CONTAINERS", "0")) or None


@app.function(image=image, max_containers=MAX_CONTAINERS)
def noop(x=None):
    return x
