"""Volumes in containers: writes invisible until commit, reload, commit at exit, read-only."""

import os

import modal

app = modal.App("ferry-volumes")
image = modal.Image.debian_slim()
vol = modal.Volume.from_name(os.environ.get("FERRY_TEST_VOLUME", "ferry-test-volume"), create_if_missing=True)


@app.function(image=image, volumes={"/data": vol})
def writer(queue_name):
    """Writes, reports, commits when told to."""
    q = modal.Queue.from_name(queue_name)
    with open("/data/shared.txt", "w") as f:
        f.write("from the writer")
    q.put("written", partition="out")
    assert q.get(partition="writer", timeout=120) == "commit"
    vol.commit()
    q.put("committed", partition="out")


@app.function(image=image, volumes={"/data": vol})
def reader(queue_name):
    """Answers what it sees at /data/shared.txt, reloading when told to."""
    q = modal.Queue.from_name(queue_name)
    while True:
        cmd = q.get(partition="reader", timeout=120)
        if cmd == "stop":
            return
        if cmd == "reload":
            vol.reload()
        path = "/data/shared.txt"
        q.put(open(path).read() if os.path.exists(path) else "<missing>", partition="out")


@app.function(image=image, volumes={"/data": vol})
def exit_writer(name):
    """Writes without committing: the commit at container exit keeps it."""
    with open(f"/data/{name}", "w") as f:
        f.write("written before exit")
    # Who wrote it: root inside, and which uid that is on the host.
    return f"ok uid {os.getuid()} host {open('/proc/self/uid_map').read().split()[1]}"


@app.function(image=image, volumes={"/data": vol})
def committer(tag, start_at, n):
    """Writes its own files and one shared file, then commits at the same moment as another."""
    import time

    os.makedirs("/data/race", exist_ok=True)
    for i in range(n):
        with open(f"/data/race/{tag}-{i}.bin", "wb") as f:
            f.write(tag.encode() * (1000 + i))
    with open("/data/race/shared.txt", "w") as f:
        f.write(tag * 100)
    while time.time() < start_at:
        time.sleep(0.01)
    vol.commit()
    return tag


@app.function(image=image, volumes={"/data": vol.read_only()})
def read_only_probe():
    """Reads through a read-only mount and tries to write."""
    seen = sorted(os.listdir("/data"))
    try:
        with open("/data/new.txt", "w") as f:
            f.write("x")
        wrote = "wrote"
    except OSError as e:
        wrote = f"refused {e.errno}"
    return seen, wrote


@app.function(image=image, volumes={"/data": vol})
def escape():
    """A symlink pointing out of the volume is refused at commit, and nothing is committed."""
    with open("/data/innocent.txt", "w") as f:
        f.write("x")
    os.symlink("/etc/passwd", "/data/evil")
    try:
        vol.commit()
        result = "committed"
    except Exception as e:
        result = f"{type(e).__name__}: {e}"
    os.remove("/data/evil")
    os.remove("/data/innocent.txt")
    return result


@app.function(image=image, volumes={"/data": vol})
def checksum(path):
    """The SHA-256 of a committed file as the container sees it, and how long opening took."""
    import hashlib
    import time

    t0 = time.time()
    h = hashlib.sha256()
    with open(f"/data/{path}", "rb") as f:
        first = time.time() - t0
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest(), first
