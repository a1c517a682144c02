"""min_containers: a container is up before the first call."""

import modal

app = modal.App("ferry-warm")


@app.function(image=modal.Image.debian_slim(), min_containers=1)
def warm():
    return "warm"
