"""An app to deploy and call from other processes."""

import modal

app = modal.App("ferry-deployed")
image = modal.Image.debian_slim().run_commands("echo deployed > /marker.txt")


@app.function(image=image)
def double(x):
    return 2 * x


@app.function(image=image)
def marker():
    return open("/marker.txt").read().strip()


@app.cls(image=image)
class Model:
    @modal.enter()
    def load(self):
        self.weight = 10

    @modal.method()
    def predict(self, x):
        return self.weight * x
