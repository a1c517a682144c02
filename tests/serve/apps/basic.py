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
    print("remote", square.remote(7))
    print("map", list(square.map(range(n))))
    print("unordered", sorted(square.map(range(n), order_outputs=False)))
    print("starmap", list(square.starmap([(2,), (3,)])))
    print("exceptions", [type(r).__name__ for r in fail.map(["a", "b"], return_exceptions=True)])
    try:
        fail.remote("remote failure")
    except ValueError as e:
        print("caught", e)
    print("env", environment.remote())
    print("secret", read_secret.remote())
    print("stderr", stderr_line.remote())
