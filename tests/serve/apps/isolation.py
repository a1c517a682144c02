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
