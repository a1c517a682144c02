"""Patterns from real Modal apps (modal-labs/modal-examples), written as our own small app
(apps/examples.py) and run through the real client: web apps that build URLs from
`request.url` behind path-based endpoint URLs, NetworkFileSystems, and `modal.forward`."""

import http.client
import json
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import unique

APPS = Path(__file__).parent / "apps"


@pytest.fixture(scope="module")
def examples(runner):
    out = runner.modal("deploy", str(APPS / "examples.py"), timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    return runner


def url_of(server, tag: str) -> str:
    code = f"import modal; print(modal.Function.from_name('ferry-examples', {tag!r}).get_web_url())"
    out = server.python(code)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def get(url: str):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_app_urls_and_redirects_stay_under_the_endpoint(examples):
    base = url_of(examples, "site")
    label_path = urlsplit(base).path  # /<label>
    # request.url is the URL the caller used, prefix included.
    status, _, body = get(base + "/")
    assert status == 200, body
    ws_url = body.decode().split('data-ws="')[1].split('"')[0]
    assert ws_url == base.replace("http", "ws", 1) + "/ws"
    # A redirect built from request.url, and one to an absolute path, land inside the app.
    status, headers, _ = get(base + "/submit?n=21")
    assert status == 307 and urlsplit(headers["location"]).path == f"{label_path}/result", headers
    status, _, body = get(headers["location"])
    assert status == 200 and json.loads(body)["n"] == 42
    status, headers, _ = get(base + "/bounce")
    assert (status, headers["location"]) == (307, f"{label_path}/result?n=7")
    # A root-relative form target on a page of the endpoint goes back under it (307 keeps the
    # POST and its body); without the page as Referer it names no endpoint.
    parts = urlsplit(base)
    def post(path, headers):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        conn.request("POST", path, body=b"a=1", headers=headers)
        resp = conn.getresponse()
        out = resp.status, resp.getheader("location"), resp.read()
        conn.close()
        return out
    status, location, _ = post("/process?x=2", {"Referer": base + "/"})
    assert (status, location) == (307, f"{label_path}/process?x=2")
    status, _, body = post(location, {"Referer": base + "/"})
    assert status == 200 and json.loads(body)["got"] == "a=1", body
    assert post("/process", {})[0] == 404
    # The WebSocket URL the page hands out works.
    code = f"""
import asyncio, aiohttp
async def main():
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect({ws_url!r}) as ws:
            await ws.send_str("hi")
            print((await ws.receive()).data)
asyncio.run(main())
"""
    out = examples.python(code)
    assert out.stdout.strip() == "echo hi", out.stderr


def test_network_file_system_is_shared_at_once(examples):
    name = unique("nfs")
    code = f"""
import io, modal
write = modal.Function.from_name("ferry-examples", "nfs_write")
read = modal.Function.from_name("ferry-examples", "nfs_read")
# A container's write is visible to the next container and to the client, with no commit.
write.remote("runs/{name}/a.txt", "from a container")
print(read.remote("runs/{name}/a.txt"))
nfs = modal.NetworkFileSystem.from_name("ferry-examples-nfs")
print(b"".join(nfs.read_file("runs/{name}/a.txt")).decode())
nfs.write_file("runs/{name}/b.txt", io.BytesIO(b"from the client"))
print(read.remote("runs/{name}/b.txt"))
print(sorted(e.path for e in nfs.listdir("runs/{name}")))
print(sorted(e.path for e in nfs.listdir("runs/{name}/*.txt")))
nfs.remove_file("runs/{name}/a.txt")
try:
    b"".join(nfs.read_file("runs/{name}/a.txt"))
except FileNotFoundError:
    print("removed")
big = bytes(range(256)) * (5 * 4096 + 3)
nfs.write_file("runs/{name}/big.bin", io.BytesIO(big))
print(b"".join(nfs.read_file("runs/{name}/big.bin")) == big)
with modal.NetworkFileSystem.ephemeral() as tmp:
    tmp.write_file("x", io.BytesIO(b"1"))
    print([e.path for e in tmp.listdir("/")])
"""
    out = examples.python(code, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "from a container",
        "from a container",
        "from the client",
        "['a.txt', 'b.txt']",
        f"['runs/{name}/a.txt', 'runs/{name}/b.txt']",
        "removed",
        "True",
        "['x']",
    ]
    listed = examples.modal("nfs", "list")
    assert "ferry-examples-nfs" in listed.stdout, listed.stdout + listed.stderr
    # A symlink a container plants in the share cannot lead a client outside it.
    code = f"""
import io, modal
modal.Function.from_name("ferry-examples", "nfs_link").remote("runs/{name}/escape", "/etc")
nfs = modal.NetworkFileSystem.from_name("ferry-examples-nfs")
for attempt in (lambda: b"".join(nfs.read_file("runs/{name}/escape/hostname")),
                lambda: nfs.write_file("runs/{name}/escape/planted", io.BytesIO(b"x")),
                lambda: b"".join(nfs.read_file("../client.env"))):
    try:
        attempt()
        print("allowed")
    except Exception as e:
        print(type(e).__name__)
"""
    out = examples.python(code, timeout=120)
    assert out.stdout.split() == ["InvalidError"] * 3, out.stdout + out.stderr
    assert not Path("/etc/planted").exists()


def test_network_file_system_in_a_sandbox(examples):
    name = unique("nfs-sb")
    code = f"""
import io, modal
nfs = modal.NetworkFileSystem.from_name("ferry-examples-nfs")
nfs.write_file("runs/{name}/in.txt", io.BytesIO(b"from the client"))
sb = modal.Sandbox.create("sh", "-c", "cat /shared/runs/{name}/in.txt; echo -n back > /shared/runs/{name}/out.txt",
                          app=modal.App.lookup("ferry-examples"), network_file_systems={{"/shared": nfs}})
sb.wait()
print(sb.stdout.read())
print(b"".join(nfs.read_file("runs/{name}/out.txt")).decode())
"""
    out = examples.python(code, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["from the client", "back"]


def test_with_options_volumes(examples):
    name = unique("stage")
    code = f"""
import modal
vol = modal.Volume.from_name("ferry-examples-out", create_if_missing=True)
stage = modal.Function.from_name("ferry-examples", "stage_write").with_options(volumes={{"/out": vol}})
stage.remote("/out/{name}.txt", "staged")
print(b"".join(vol.read_file("{name}.txt")).decode())
"""
    out = examples.python(code, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "staged"


def test_forward_exposes_a_container_port(examples):
    name = unique("fwd")
    code = f"""
import modal
q = modal.Queue.from_name({name!r}, create_if_missing=True)
call = modal.Function.from_name("ferry-examples", "forwarded").spawn({name!r})
print(call.object_id)
print(q.get(partition="address", timeout=120))
"""
    out = examples.python(code, timeout=180)
    assert out.returncode == 0, out.stderr
    call_id, address = out.stdout.splitlines()[:2]
    host, port = json.loads(address.replace("'", '"'))
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"ping")
        assert s.recv(1024) == b"echo ping"
    code = f"""
import modal
modal.Queue.from_name({name!r}).put("done", partition="done")
print(modal.FunctionCall.from_id({call_id!r}).get(timeout=120))
"""
    out = examples.python(code, timeout=180)
    assert out.returncode == 0, out.stderr
    # Without a server certificate an encrypted forward uses the data dir's own authority.
    assert out.stdout.strip() == "opened", out.stdout
    # The forward closed with the container's `with` block.
    time.sleep(1)
    with pytest.raises(OSError):
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"ping")
            if not s.recv(1024):
                raise ConnectionResetError("closed")
