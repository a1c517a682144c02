"""An image with an `Image.run_function` build step. FERRY_RF_TOKEN makes the step's arguments
(and so its image) unique to a test run; FERRY_RF_FAIL=1 swaps in a build function that raises."""

import json
import os

import modal

app = modal.App("ferry-run-function")
TOKEN = os.environ.get("FERRY_RF_TOKEN", "none")
FAIL = os.environ.get("FERRY_RF_FAIL") == "1"


def write_file(word: str):
    import os
    import time

    os.makedirs("/opt/rf", exist_ok=True)
    print(f"baking {word}", flush=True)
    with open("/opt/rf/word", "w") as f:
        f.write(word)
    with open("/opt/rf/secret", "w") as f:
        f.write(os.environ["RF_SECRET"])
    with open("/opt/rf/stamp", "w") as f:
        f.write(str(time.time_ns()))


def explode(word: str):
    print(f"about to fail {word}", flush=True)
    raise RuntimeError(f"bake failed for {word}")


image = modal.Image.debian_slim().run_function(
    explode if FAIL else write_file,
    secrets=[modal.Secret.from_dict({"RF_SECRET": "from-secret-" + TOKEN})],
    kwargs={"word": "word-" + TOKEN},
)


@app.function(image=image)
def read_back():
    return {name: open(f"/opt/rf/{name}").read() for name in ("word", "secret", "stamp")}


@app.local_entrypoint()
def main():
    print("RESULT " + json.dumps(read_back.remote()))
