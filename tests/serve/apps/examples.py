"""Patterns everyday Modal apps use, deployed once by test_examples.py: an ASGI app that builds
URLs and redirects from `request.url`, a NetworkFileSystem shared by functions and the client,
and `modal.forward` from inside a container."""

import socket
import threading

import modal

app = modal.App("ferry-examples")
image = modal.Image.debian_slim().pip_install("fastapi[standard]")
nfs = modal.NetworkFileSystem.from_name("ferry-examples-nfs", create_if_missing=True)

FORWARD_PORT = 18977


@app.function(image=image)
@modal.asgi_app()
def site():
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import HTMLResponse, RedirectResponse

    web_app = FastAPI()

    @web_app.get("/")
    async def index(request: Request):
        # A page that links to its own WebSocket, as chat and notebook apps do.
        ws_url = str(request.url).replace("http", "ws", 1) + "ws"
        return HTMLResponse(f'<a data-ws="{ws_url}">ws</a>')

    @web_app.get("/submit")
    async def submit(request: Request, n: int):
        # The "poll for a delayed result" pattern: redirect to another path of this app.
        return RedirectResponse(request.url.replace(path="/result", query=f"n={n * 2}"))

    @web_app.get("/bounce")
    async def bounce():
        return RedirectResponse("/result?n=7")

    @web_app.get("/result")
    async def result(request: Request, n: int):
        return {"n": n, "url": str(request.url)}

    @web_app.post("/process")
    async def process(request: Request):
        # The target of a page's `<form action="/process">`, a root-relative path.
        return {"got": (await request.body()).decode(), "url": str(request.url)}

    @web_app.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(f"echo {text}")
        await websocket.close()

    return web_app


@app.function(network_file_systems={"/shared": nfs})
def nfs_write(path: str, text: str) -> None:
    import os

    os.makedirs(os.path.dirname(f"/shared/{path}") or "/shared", exist_ok=True)
    with open(f"/shared/{path}", "w") as f:
        f.write(text)


@app.function(network_file_systems={"/shared": nfs})
def nfs_read(path: str) -> str:
    # No reload or commit: what any writer wrote is there.
    with open(f"/shared/{path}") as f:
        return f.read()


@app.function(network_file_systems={"/shared": nfs})
def nfs_link(path: str, target: str) -> None:
    import os

    os.symlink(target, f"/shared/{path}")


@app.function()
def stage_write(path: str, text: str) -> None:
    """A pipeline stage whose volume comes from `with_options(volumes=...)`."""
    with open(path, "w") as f:
        f.write(text)
    modal.Volume.from_name("ferry-examples-out").commit()


def _echo_server(port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()

    def serve():
        while True:
            conn, _ = srv.accept()
            with conn:
                data = conn.recv(1024)
                conn.sendall(b"echo " + data)

    threading.Thread(target=serve, daemon=True).start()


@app.function()
def forwarded(queue_name: str) -> str:
    """Serves a TCP echo on a port of its own loopback, forwards it, hands the address to the
    test through the queue and keeps the forward open until the test is done with it."""
    q = modal.Queue.from_name(queue_name)
    _echo_server(FORWARD_PORT)
    try:
        with modal.forward(FORWARD_PORT + 1):
            pass
        tls = "opened"
    except Exception as e:  # the forward could not open: say why
        tls = f"{type(e).__name__}: {e}"
    with modal.forward(FORWARD_PORT, unencrypted=True) as tunnel:
        q.put(list(tunnel.tcp_socket), partition="address")
        q.get(partition="done", timeout=120)
    return tls
