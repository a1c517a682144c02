"""Classes, spawn, retries and timeouts."""

import time

import modal

app = modal.App("ferry-features")
image = modal.Image.debian_slim()
attempts = modal.Dict.from_name("ferry-features-attempts", create_if_missing=True)


@app.cls(image=image)
class Counter:
    start: int = modal.parameter(default=0)

    @modal.enter()
    def setup(self):
        self.entered = True
        self.base = self.start * 100

    @modal.method()
    def add(self, x):
        return self.base + x

    @modal.method()
    def was_entered(self):
        return self.entered

    @modal.exit()
    def teardown(self):
        print(f"EXIT ran for {self.start}")


@app.function(image=image)
def slow_double(x):
    time.sleep(0.5)
    return 2 * x


@app.function(image=image, retries=modal.Retries(max_retries=2, initial_delay=0.1, backoff_coefficient=1.0))
def flaky(key):
    n = attempts.get(key, 0) + 1
    attempts[key] = n
    if n < 3:
        raise RuntimeError(f"attempt {n} fails")
    return n


@app.function(image=image, retries=1)
def always_fails():
    raise RuntimeError("never works")


@app.function(image=image, retries=1)
def fails_in_a_map(x):
    raise RuntimeError(f"never works {x}")


@app.function(image=image, timeout=2)
def sleeper(seconds):
    time.sleep(seconds)
    return seconds


@app.local_entrypoint()
def main():
    c = Counter()
    print(f"add {c.add.remote(5)}")
    print(f"entered {c.was_entered.remote()}")
    print(f"param {Counter(start=3).add.remote(1)}")
    print(f"map {list(Counter(start=1).add.map([1, 2, 3]))}")
    print(f"options {Counter.with_options(timeout=30)(start=2).add.remote(1)}")
    call = slow_double.spawn(21)
    print(f"spawned {modal.FunctionCall.from_id(call.object_id).get()}")
    calls = [slow_double.spawn(i) for i in range(3)]
    print(f"gather {modal.FunctionCall.gather(*calls)}")
    key = f"k{time.time_ns()}"
    print(f"flaky {flaky.remote(key)}")
    # A map whose inputs are retried on the server: each answer reaches the caller's map.
    keys = [f"{key}-{i}" for i in range(3)]
    print(f"flaky map {list(flaky.map(keys))}")
    failed = sorted(str(e) for e in fails_in_a_map.map([1, 2], return_exceptions=True))
    print(f"failed map {failed}")
    try:
        always_fails.remote()
    except RuntimeError as e:
        print(f"gave up {e}")
    print(f"quick {sleeper.remote(0.1)}")
    try:
        sleeper.remote(30)
    except modal.exception.FunctionTimeoutError as e:
        print(f"timeout {e}")
    # A spawned call that times out: recorded as a timeout, apart from failures.
    late = sleeper.spawn(30)
    try:
        late.get()
    except modal.exception.FunctionTimeoutError:
        pass
    print(f"timed out status {late.get_call_graph()[0].status.name}")
    # Its log stream ends, the call being over (FunctionCallGetInfo counts the timeout).
    list(late.logs.stream())
    print("timed out stream ended")
