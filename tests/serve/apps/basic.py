"""A plain Modal app: functions on debian_slim, local entrypoint with CLI arguments."""

import os
import sys

import modal

app = modal.App("ferry-basic")
image = modal.Image.debian_slim()


@app.function(image=image)
def square(x):
    print(f"squaring {x}")
    return x * x


@app.function(image=image)
def fail(message):
    raise ValueError(message)


@app.function(image=image)
def environment():
    return {"cwd": os.getcwd(), "python": sys.version.split()[0], "remote": os.environ.get("MODAL_IS_REMOTE")}


@app.function(image=image, secrets=[modal.Secret.from_dict({"FERRY_TEST_SECRET": "s3cr3t"})])
def read_secret():
    return os.environ.get("FERRY_TEST_SECRET")


@app.function(image=image)
def stderr_line():
    print("to stderr", file=sys.stderr)
    return True


@app.local_entrypoint()
def main(n: int = 10):
    print(f"remote {square.remote(7)}")
    print(f"map {list(square.map(range(n)))}")
    print(f"unordered {sorted(square.map(range(n), order_outputs=False))}")
    print(f"starmap {list(square.starmap([(2,), (3,)]))}")
    names = [type(r).__name__ for r in fail.map(["a", "b"], return_exceptions=True)]
    print(f"exceptions {names}")
    try:
        fail.remote("remote failure")
    except ValueError as e:
        print(f"caught {e}")
    print(f"env {environment.remote()}")
    print(f"secret {read_secret.remote()}")
    print(f"stderr {stderr_line.remote()}")
