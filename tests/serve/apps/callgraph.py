"""`FunctionCall.get_call_graph()`: a call made inside a running input is its child."""

import time

import modal

app = modal.App("ferry-callgraph")
image = modal.Image.debian_slim()


@app.function(image=image)
def leaf(x: int) -> int:
    return x * 2


@app.function(image=image)
def child(x: int) -> int:
    return leaf.remote(x) + 1


@app.function(image=image)
def parent(n: int) -> dict:
    fc = child.spawn(n)
    while len(fc.get_call_graph()) == 0:
        time.sleep(0.1)
    root = fc.get_call_graph()[0]
    return {
        "root_function": root.function_name,
        "root_status": root.status.name,
        "child_call_is_fc": root.children[0].function_call_id == fc.object_id,
        "value": fc.get(),
    }
