"""The app of bench/volumes: a writer that commits a large file, a probe that opens it."""

import os

import modal

app = modal.App("ferry-bench-volumes")
image = modal.Image.debian_slim()
vol = modal.Volume.from_name(os.environ.get("FERRY_BENCH_VOLUME", "ferry-bench-volume"), create_if_missing=True)


@app.function(image=image, volumes={"/data": vol}, timeout=900)
def write(mib: int):
    """Writes `mib` MiB (distinct 8 MiB blocks) to /data/big.bin; returns (write s, commit s)."""
    import time

    t0 = time.time()
    block = os.urandom(1 << 20) * 8
    with open("/data/big.bin", "wb") as f:
        for i in range(mib // 8):
            f.write(i.to_bytes(8, "little") + block[8:])
    t1 = time.time()
    vol.commit()
    return t1 - t0, time.time() - t1


@app.function(image=image, volumes={"/data": vol})
def probe():
    """Size of /data/big.bin and the first byte, as the container sees them."""
    path = "/data/big.bin"
    if not os.path.exists(path):
        return -1
    with open(path, "rb") as f:
        f.read(1)
    return os.path.getsize(path)
