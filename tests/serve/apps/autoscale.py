"""An app whose autoscaler is changed at run time (`update_autoscaler`, `autoscaler.update`)."""

import modal

app = modal.App("ferry-autoscale")


@app.function(image=modal.Image.debian_slim(), scaledown_window=5)
def hello(x: int) -> int:
    return x + 1
