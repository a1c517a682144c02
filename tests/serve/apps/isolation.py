"""Isolation: the host's files are not visible, the memory limit holds."""

import modal

app = modal.App("ferry-isolation")
image = modal.Image.debian_slim()


@app.function(image=image)
def exists(path):
    import os

    return os.path.exists(path)


@app.function(image=image, memory=128)
def hog(mib):
    blocks = []
    for _ in range(mib):
        blocks.append(bytearray(1024 * 1024))
    return len(blocks)


@app.function(image=image, block_network=True)
def reach(port):
    """With block_network the container has only its own loopback: the host's ports are gone,
    yet the function runs (it talks to Ferry through a socket bound into it)."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return "reachable"
    except OSError:
        return "blocked"
