"""A function that reads a named Secret (the security tests rotate the key sealing it)."""

import os
import time

import modal

app = modal.App("ferry-secret-named")


@app.function(image=modal.Image.debian_slim(), secrets=[modal.Secret.from_name("ferry-security-rotated")])
def read(delay: float = 0.0):
    time.sleep(delay)
    return os.environ["ROTATED_KEY"]


@app.local_entrypoint()
def main(delay: float = 0.0):
    value = read.remote(delay)
    print(f"sha256 {__import__('hashlib').sha256(value.encode()).hexdigest()}")
