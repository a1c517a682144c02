"""Web endpoints of every kind, deployed once and called over HTTP by test_web.py."""

import asyncio
import hashlib

import modal

app = modal.App("ferry-web")
image = (
    modal.Image.debian_slim()
    .pip_install("fastapi[standard]")
    .run_commands("mkdir -p /srv && echo served by a web_server > /srv/index.html")
)
WEB_SERVER_PORT = 18765
CLASS_WEB_SERVER_PORT = 18766


@app.function(image=image)
@modal.fastapi_endpoint()
def hello(name: str = "world"):
    return {"hello": name}


@app.function(image=image)
@modal.fastapi_endpoint(method="POST", docs=True)
def add(item: dict):
    return {"sum": item["a"] + item["b"]}


@app.function(image=image)
@modal.fastapi_endpoint(requires_proxy_auth=True)
def guarded():
    return {"guarded": True}


@app.function(image=image)
@modal.fastapi_endpoint(label="ferry-labelled")
def labelled():
    return "labelled"


@app.function(image=image)
@modal.fastapi_endpoint()
def fails():
    raise ValueError("web failure marker")


@app.function(image=image)
@modal.concurrent(max_inputs=20)
@modal.asgi_app()
def api():
    from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
    from fastapi.responses import StreamingResponse

    web = FastAPI()

    @web.post("/upload")
    async def upload(request: Request):
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        return {"bytes": size, "sha256": digest.hexdigest()}

    @web.get("/events")
    async def events(n: int = 5):
        async def gen():
            for i in range(n):
                yield f"data: event {i}\n\n"
                await asyncio.sleep(0.3)

        return StreamingResponse(gen(), media_type="text/event-stream")

    @web.get("/sleep")
    async def sleep(seconds: float = 1.0):
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @web.get("/download")
    def download(mb: int = 1):
        from fastapi.responses import Response

        # One message larger than a data chunk may carry inline: it travels as a blob.
        return Response(hashlib.sha256(b"ferry").digest() * (mb * 32768), media_type="application/octet-stream")

    @web.get("/where")
    def where(request: Request):
        return {"path": request.url.path, "root_path": request.scope.get("root_path"), "query": str(request.query_params)}

    @web.websocket("/ws")
    async def ws(socket: WebSocket):
        await socket.accept()
        try:
            while True:
                text = await socket.receive_text()
                await socket.send_text(text.upper())
        except WebSocketDisconnect:
            pass

    return web


@app.function(image=image)
@modal.wsgi_app()
def plain_wsgi():
    def wsgi(environ, start_response):
        body = f"wsgi {environ['REQUEST_METHOD']} {environ['PATH_INFO']} {environ['QUERY_STRING']}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return wsgi


@app.function(image=image)
@modal.web_server(WEB_SERVER_PORT, startup_timeout=60)
def files():
    import subprocess

    subprocess.Popen(["python", "-m", "http.server", str(WEB_SERVER_PORT), "--bind", "0.0.0.0", "--directory", "/srv"])


@app.function(image=image)
def fetch(url: str):
    """An endpoint's URL from inside a container, as a function calling another app would."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.read().decode()


@app.cls(image=image)
class Greeter:
    @modal.enter()
    def load(self):
        self.greeting = "hi"

    @modal.fastapi_endpoint()
    def greet(self, name: str = "you"):
        return {"greeting": f"{self.greeting} {name}"}


@app.cls(image=image)
class Site:
    @modal.web_server(CLASS_WEB_SERVER_PORT, startup_timeout=60)
    def serve(self):
        import subprocess

        subprocess.Popen(["python", "-m", "http.server", str(CLASS_WEB_SERVER_PORT), "--bind", "0.0.0.0", "--directory", "/srv"])
