"""Payloads too large for a gRPC message: a 5 MiB argument and result, a 100 KiB `.spawn`
argument (spawned calls inline at most 8 KiB) and a 6 MiB mounted file all travel as blobs."""

import hashlib
import os
import random

import modal

app = modal.App("ferry-blobs")

# The local file to mount; only read on the machine that runs `modal run`.
BIG_FILE = os.environ.get("FERRY_BLOB_FILE", "/nonexistent/big.bin")
image = modal.Image.debian_slim().add_local_file(BIG_FILE, "/data/big.bin")

ARG_SIZE = 5 * 1024 * 1024
SPAWN_SIZE = 100 * 1024


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@app.function(image=image)
def reverse(data: bytes) -> bytes:
    print(f"received {len(data)} bytes")
    return data[::-1]


@app.function(image=image)
def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@app.function(image=image)
def mounted_file() -> tuple[int, str]:
    with open("/data/big.bin", "rb") as f:
        data = f.read()
    return len(data), hashlib.sha256(data).hexdigest()


@app.local_entrypoint()
def main():
    result = reverse.remote(payload(1, ARG_SIZE))
    print(f"result {len(result)} {hashlib.sha256(result).hexdigest()}")
    call = digest.spawn(payload(2, SPAWN_SIZE))
    print(f"spawned {call.get(timeout=300)}")
    size, sha = mounted_file.remote()
    print(f"mounted {size} {sha}")
