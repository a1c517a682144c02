"""GPU requests through every path of the real client, driven by tests/serve/test_gpu.py.

`refusals()` tries each `gpu=` form on functions, classes and `with_options`, printing one
`REFUSED|ACCEPTED <case> <exception type>: <message>` line per case (the app starts, with a
warning, and the call fails), then shows that CPU work still runs. The `fake_*` functions run on a server started with `--fake-gpus` (made-up cards:
containers see only `CUDA_VISIBLE_DEVICES` naming them).
"""

import os
import time
import warnings

import modal

image = modal.Image.debian_slim()
app = modal.App("ferry-gpus", image=image)


@app.function()
def double(x):
    return 2 * x


@app.cls()
class Model:
    @modal.method()
    def visible(self):
        return os.environ.get("CUDA_VISIBLE_DEVICES")


# Only for a server with made-up cards (`--fake-gpus`).
fake_app = modal.App("ferry-gpus-fake", image=image)


@fake_app.function(gpu=["H100", "A100"], scaledown_window=2)
def fake_ranked():
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@fake_app.function(scaledown_window=2)
def fake_cpu():
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@fake_app.cls(scaledown_window=2)
class FakeModel:
    @modal.method()
    def visible(self):
        return os.environ.get("CUDA_VISIBLE_DEVICES")


@fake_app.function(gpu="T4", scaledown_window=2, max_containers=3)
def fake_t4_hold(seconds):
    start = time.time()
    time.sleep(seconds)
    return os.environ["MODAL_TASK_ID"], os.environ.get("CUDA_VISIBLE_DEVICES"), start, time.time()


def outcome(case, thunk):
    try:
        thunk()
        print(f"ACCEPTED {case}", flush=True)
    except Exception as e:  # noqa: BLE001 - the type is what the test checks
        message = str(e).replace("\n", " ")
        print(f"REFUSED {case} {type(e).__name__}: {message}", flush=True)


def define(kind, gpu):
    """A one-off app with a single GPU function or class: it starts (with a warning from the
    server, printed as `WARNED <case> <message>`), and its call fails."""

    def run():
        one = modal.App(f"ferry-gpu-{kind}", image=image)
        if kind == "function":

            @one.function(gpu=gpu, serialized=True)
            def on_gpu():
                return 1

            call = lambda: on_gpu.remote()  # noqa: E731
        else:

            @one.cls(gpu=gpu, serialized=True)
            class OnGpu:
                @modal.method()
                def run(self):
                    return 1

            call = lambda: OnGpu().run.remote()  # noqa: E731

        label = gpu if isinstance(gpu, str) else "+".join(gpu)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with one.run():
                for w in seen:
                    print(f"WARNED {kind}:{label} {str(w.message)}", flush=True)
                call()

    return run


def image_build(gpu):
    """An app whose image has a build step with `gpu=` and a CPU function on it."""

    def run():
        one = modal.App("ferry-gpu-image", image=modal.Image.debian_slim().run_commands("true", gpu=gpu))

        @one.function(serialized=True)
        def cpu():
            return 1

        with one.run():
            assert cpu.remote() == 1

    return run


GPUS = ["T4", "any", "A10G:2", ["H100", "A100"]]


def refusals():
    for kind in ("function", "class"):
        for gpu in GPUS:
            label = gpu if isinstance(gpu, str) else "+".join(gpu)
            outcome(f"{kind}:{label}", define(kind, gpu))
    outcome("image:T4", image_build("T4"))
    with app.run():
        for gpu in ["T4", "any", "A10G:2"]:
            outcome(f"cls.with_options:{gpu}", lambda: Model.with_options(gpu=gpu)().visible.remote())
            outcome(f"function.with_options:{gpu}", lambda: double.with_options(gpu=gpu).remote(1))
        print("cpu", double.remote(21), double.with_options(cpu=0.5).remote(4), Model().visible.remote(), flush=True)


def fake():
    with fake_app.run():
        print("ranked", fake_ranked.remote(), flush=True)
        print("class", FakeModel.with_options(gpu="A100-80GB")().visible.remote(), flush=True)
        print("function", fake_cpu.with_options(gpu="t4").remote(), fake_cpu.remote(), flush=True)
        outcome("fake:L4", lambda: fake_cpu.with_options(gpu="L4").remote())
        calls = [fake_t4_hold.spawn(3) for _ in range(3)]
        for task_id, visible, start, end in (c.get() for c in calls):
            print("hold", task_id, visible, start, end, flush=True)
