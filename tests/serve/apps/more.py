"""Generators, async functions, concurrency, batching, long-running work."""

import asyncio
import time

import modal

app = modal.App("ferry-more")
image = modal.Image.debian_slim()


@app.function(image=image)
def count(n):
    for i in range(n):
        yield i * 10


@app.function(image=image)
async def async_add(a, b):
    await asyncio.sleep(0.05)
    return a + b


@app.function(image=image, max_containers=1)
@modal.concurrent(max_inputs=4)
async def overlapping(i):
    start = time.time()
    await asyncio.sleep(1.0)
    return (start, time.time())


@app.function(image=image)
@modal.batched(max_batch_size=4, wait_ms=500)
def batch_sizes(xs):
    return [len(xs)] * len(xs)


@app.local_entrypoint()
def main():
    print(f"gen {list(count.remote_gen(5))}")
    print(f"async {async_add.remote(2, 3)}")
    spans = list(overlapping.map(range(4)))
    latest_start = max(s for s, _ in spans)
    earliest_end = min(e for _, e in spans)
    print(f"overlap {latest_start < earliest_end}")
    sizes = list(batch_sizes.map(range(8)))
    print(f"batched {max(sizes) > 1}")


async def run_async():
    async with app.run():
        print(f"aio {await async_add.remote.aio(4, 5)}")
