"""An app to deploy and call from other processes."""

import modal

app = modal.App("ferry-deployed")
image = modal.Image.debian_slim().pip_install("six==1.16.0").run_commands("echo deployed > /marker.txt")


@app.function(image=image)
def double(x):
    return 2 * x


@app.function(image=image)
def marker():
    import six  # installed by the image's pip_install

    return open("/marker.txt").read().strip() + six.__version__


@app.cls(image=image)
class Model:
    @modal.enter()
    def load(self):
        self.weight = 10

    @modal.method()
    def predict(self, x):
        return self.weight * x
