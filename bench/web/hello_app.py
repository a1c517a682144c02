"""The endpoint bench_web.py measures: one FastAPI handler, served by Ferry as a
`@modal.fastapi_endpoint` and by uvicorn as the very same FastAPI app (`uvicorn_app`)."""

import modal

app = modal.App("ferry-bench-web")
image = modal.Image.debian_slim().pip_install("fastapi[standard]")


def hello(name: str = "world"):
    return {"hello": name}


handler = hello
hello = app.function(image=image, scaledown_window=600)(modal.concurrent(max_inputs=64)(modal.fastapi_endpoint()(hello)))


def uvicorn_app():
    """The app the container builds around the handler (FastAPI + CORS middleware), for uvicorn."""
    from modal._runtime.asgi import magic_fastapi_app

    return magic_fastapi_app(handler, "GET", False)
