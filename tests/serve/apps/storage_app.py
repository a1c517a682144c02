"""An image with a layer of its own and a function and a Sandbox that read a volume: run on a
server whose bytes live in a bucket, then on a second server with a fresh data dir."""

import hashlib
import os

import modal

app = modal.App("ferry-storage")
VOLUME = os.environ.get("FERRY_STORAGE_VOLUME", "ferry-storage-vol")
vol = modal.Volume.from_name(VOLUME)
image = modal.Image.debian_slim().run_commands("echo layer-marker-42 > /marker && head -c 3000000 /dev/zero > /zeros")


@app.function(image=image, volumes={"/vol": vol})
def inspect() -> str:
    marker = open("/marker").read().strip()
    data = open("/vol/big.bin", "rb").read()
    return f"{marker} {len(data)} {hashlib.sha256(data).hexdigest()}"


@app.local_entrypoint()
def main():
    print("function", inspect.remote())
    sb = modal.Sandbox.create("sha256sum", "/vol/big.bin", image=image, volumes={"/vol": vol}, app=app)
    sb.wait()
    print("sandbox", sb.stdout.read().split()[0])
