"""A function that runs for a long time, for stopping apps and containers."""

import time

import modal

app = modal.App("ferry-sleeper")
image = modal.Image.debian_slim()


@app.function(image=image, timeout=600)
def long_sleep(seconds):
    time.sleep(seconds)
    return "slept"


@app.cls(image=image, timeout=600)
class Napper:
    @modal.method()
    def nap(self, seconds):
        time.sleep(seconds)
        return "napped"

    @modal.exit()
    def bye(self):
        print("EXIT ran on stop", flush=True)


@app.local_entrypoint()
def main():
    print("started", flush=True)
    long_sleep.remote(300)
