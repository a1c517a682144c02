"""Bytes of every kind in one app: an image with a layer of its own, a mounted 6 MiB file, a
5 MiB argument and result (blobs), and a function and a Sandbox that read a volume. Run on a
server whose bytes live in a bucket, then on a second server with a fresh data dir."""

import hashlib
import os
import random

import modal

app = modal.App("ferry-storage")
vol = modal.Volume.from_name("ferry-storage-vol")
# The local file to mount; only read on the machine that runs `modal run`.
BIG_FILE = os.environ.get("FERRY_BLOB_FILE", "/nonexistent/big.bin")
layered = modal.Image.debian_slim().run_commands("echo layer-marker-42 > /marker")
image = layered.add_local_file(BIG_FILE, "/data/big.bin")


@app.function(image=image, volumes={"/vol": vol})
def inspect(arg: bytes) -> tuple[str, bytes]:
    marker = open("/marker").read().strip()
    data = open("/vol/big.bin", "rb").read()
    mounted = open("/data/big.bin", "rb").read()
    summary = f"{marker} {len(data)} {hashlib.sha256(data).hexdigest()} mounted {len(mounted)} {hashlib.sha256(mounted).hexdigest()}"
    return summary, arg[::-1]


@app.local_entrypoint()
def main():
    arg = random.Random(1).randbytes(5 * 1024 * 1024)
    summary, result = inspect.remote(arg)
    print("function", summary)
    print(f"result {len(result)} {hashlib.sha256(result).hexdigest()}")
    sb = modal.Sandbox.create("sha256sum", "/vol/big.bin", image=layered, volumes={"/vol": vol}, app=app)
    sb.wait()
    print("sandbox", sb.stdout.read().split()[0])
