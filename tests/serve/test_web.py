"""Web endpoints over real HTTP: one deployed app with every kind of endpoint (apps/web.py),
called with the standard library's HTTP client (and aiohttp for WebSockets)."""

import asyncio
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import Ferry

APPS = Path(__file__).parent / "apps"
REDIRECT_SECS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def web():
    """A server with a short redirect limit and a fixed web port (so URLs survive a restart),
    on the data dir that keeps built images, with apps/web.py deployed."""
    data = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
    server = Ferry(data, "--no-modal-profile", "--web-port", str(free_port()), "--web-redirect-secs", str(REDIRECT_SECS)).start()
    try:
        out = server.modal("deploy", str(APPS / "web.py"), timeout=900)
        text = out.stdout + out.stderr
        assert out.returncode == 0, text
        server.deploy_output = text
        yield server
    finally:
        server.stop()


def url_of(server, tag: str) -> str:
    code = f"""
import modal
f = modal.Function.from_name("ferry-web", {tag!r})
print(f.get_web_url())
"""
    out = server.python(code)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def request(url: str, method="GET", body=None, headers=None, timeout=300):
    """(status, headers, body) of one request, without following redirects."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=body is not None and not isinstance(body, (bytes, str)))
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def test_deploy_prints_web_urls(web):
    hello = url_of(web, "hello")
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/ferry--ferry-web-hello", hello), hello
    assert hello in web.deploy_output
    assert url_of(web, "labelled").endswith("/ferry--ferry-labelled")


def test_fastapi_endpoint_get_and_post(web):
    status, _, body = request(url_of(web, "hello") + "?name=ferry")
    assert (status, json.loads(body)) == (200, {"hello": "ferry"})
    status, _, body = request(url_of(web, "add"), "POST", json.dumps({"a": 2, "b": 40}), {"Content-Type": "application/json"})
    assert (status, json.loads(body)) == (200, {"sum": 42})
    # docs=True serves the OpenAPI schema and the docs page, which finds it under the route's prefix.
    status, _, body = request(url_of(web, "add") + "/openapi.json")
    assert status == 200 and "paths" in json.loads(body)
    status, _, body = request(url_of(web, "add") + "/docs")
    assert status == 200 and b"/ferry--ferry-web-add/openapi.json" in body
    status, _, body = request(url_of(web, "labelled"))
    assert (status, json.loads(body)) == (200, "labelled")


def test_endpoint_urls_work_from_containers(web):
    """`get_web_url()` names the server's loopback; a container reaches that port on its own."""
    code = """
import modal
url = modal.Function.from_name("ferry-web", "hello").get_web_url()
print("FETCHED", modal.Function.from_name("ferry-web", "fetch").remote(url + "?name=inside"))
"""
    out = web.python(code, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'FETCHED (200, \'{"hello":"inside"}\')' in out.stdout, out.stdout


def test_host_based_url(web):
    url = url_of(web, "hello")
    port = urlsplit(url).port
    status, _, body = request(f"http://127.0.0.1:{port}/?name=host", headers={"Host": f"ferry--ferry-web-hello.localhost:{port}"})
    assert (status, json.loads(body)) == (200, {"hello": "host"})


def test_asgi_app_paths_and_sse(web):
    base = url_of(web, "api")
    status, _, body = request(base + "/where?x=1")
    assert status == 200
    # The app is mounted at the route's prefix (its root_path): it routes on its own paths, and
    # request.url is the URL the caller used.
    assert json.loads(body) == {"path": "/ferry--ferry-web-api/where", "root_path": "/ferry--ferry-web-api", "query": "x=1"}
    # Server-sent events arrive one by one while the app is still producing them.
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("GET", parts.path + "/events?n=4")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    arrivals = []
    while True:
        line = resp.readline()
        if not line:
            break
        if line.startswith(b"data:"):
            arrivals.append((line.strip().decode(), time.monotonic()))
    conn.close()
    assert [a for a, _ in arrivals] == [f"data: event {i}" for i in range(4)]
    assert arrivals[-1][1] - arrivals[0][1] > 0.6, "events were buffered instead of streamed"


def test_large_upload_streams_through(web):
    size = 100 * 1024 * 1024
    block = hashlib.sha256(b"ferry").digest() * 32768  # 1 MiB
    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)

    def body():
        for _ in range(size // len(block)):
            yield block

    started = time.monotonic()
    status, _, data = request(url_of(web, "api") + "/upload", "POST", body(), {"Content-Type": "application/octet-stream"})
    assert status == 200, data
    assert json.loads(data) == {"bytes": size, "sha256": digest.hexdigest()}
    assert time.monotonic() - started < 120


def test_large_download(web):
    status, headers, data = request(url_of(web, "api") + "/download?mb=50")
    assert status == 200
    assert len(data) == 50 * 1024 * 1024
    assert data == hashlib.sha256(b"ferry").digest() * (50 * 32768)


def test_wsgi_and_web_server(web):
    status, _, body = request(url_of(web, "plain_wsgi") + "/a/b?c=d", "PUT", b"x")
    assert (status, body) == (200, b"wsgi PUT /a/b c=d")
    status, _, body = request(url_of(web, "files") + "/index.html")
    assert (status, body) == (200, b"served by a web_server\n")


def test_class_web_method(web):
    code = """
import modal
Greeter = modal.Cls.from_name("ferry-web", "Greeter")
print(Greeter().greet.get_web_url())
"""
    out = web.python(code)
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    assert url.endswith("/ferry--ferry-web-greeter-greet"), url
    assert "ferry--ferry-web-greeter-greet" in web.deploy_output
    status, _, body = request(url + "?name=ferry")
    assert (status, json.loads(body)) == (200, {"greeting": "hi ferry"})
    # A web_server on a class method.
    status, _, body = request(url.replace("greeter-greet", "site-serve") + "/index.html")
    assert (status, body) == (200, b"served by a web_server\n")


def test_proxy_auth(web):
    url = url_of(web, "guarded")
    assert request(url)[0] == 401
    assert request(url, headers={"Modal-Key": "wk-nope", "Modal-Secret": "ws-nope"})[0] == 401
    out = web.ferry("proxy-token", "create", "--label", "test")
    assert out.returncode == 0, out.stderr
    creds = dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())
    status, _, body = request(url, headers=creds)
    assert (status, json.loads(body)) == (200, {"guarded": True})
    assert creds["Modal-Key"] in web.ferry("proxy-token", "list").stdout
    assert web.ferry("proxy-token", "revoke", creds["Modal-Key"]).returncode == 0
    assert request(url, headers=creds)[0] == 401


def test_app_error_is_500_with_traceback_in_logs(web):
    status, _, body = request(url_of(web, "fails"))
    assert status == 500
    assert b"web failure marker" not in body
    deadline = time.time() + 30
    while time.time() < deadline:
        out = web.modal("app", "logs", "ferry-web", timeout=60)
        if "web failure marker" in out.stdout + out.stderr:
            assert "Traceback" in out.stdout + out.stderr
            return
        time.sleep(1)
    pytest.fail("the app's traceback never reached its logs:\n" + out.stdout + out.stderr)


def test_slow_request_redirects_to_its_result(web):
    url = url_of(web, "api") + f"/sleep?seconds={REDIRECT_SECS * 2 + 1}"
    status, headers, _ = request(url)
    assert status == 303
    assert "__modal_function_call_id=fc-" in headers["location"]
    # A client that follows redirects gets the result.
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=120) as resp:
        assert json.loads(resp.read()) == {"slept": REDIRECT_SECS * 2 + 1}
    assert time.monotonic() - started >= REDIRECT_SECS * 2


def test_websocket(web):
    import aiohttp

    url = url_of(web, "api") + "/ws"

    async def talk():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as ws:
                await ws.send_str("hello")
                first = await ws.receive_str(timeout=30)
                await ws.send_str("again")
                second = await ws.receive_str(timeout=30)
                return first, second

    assert asyncio.run(talk()) == ("HELLO", "AGAIN")


def test_unknown_endpoint_is_404(web):
    base = url_of(web, "hello").rsplit("/", 1)[0]
    status, _, body = request(base + "/ferry--no-such-endpoint/")
    assert status == 404 and b"ferry--no-such-endpoint" in body


def test_custom_domains_are_refused(web, tmp_path):
    app = tmp_path / "domains.py"
    app.write_text(
        "import modal\napp = modal.App('ferry-web-domains')\n"
        "@app.function()\n@modal.fastapi_endpoint(custom_domains=['api.example.com'])\ndef f():\n    return 1\n"
    )
    out = web.modal("deploy", str(app), timeout=300)
    assert out.returncode != 0
    assert "custom domains" in out.stdout + out.stderr


def test_modal_serve_picks_up_edits(web, tmp_path):
    app = tmp_path / "served.py"
    source = (APPS / "web_serve.py").read_text()
    app.write_text(source)
    proc = subprocess.Popen(
        [str(Path(__import__("sys").executable).parent / "modal"), "serve", str(app)],
        env=web.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # The edit must come after the file watcher started.
        deadline = time.time() + 600
        while time.time() < deadline and not any("Watching" in line for line in output) and proc.poll() is None:
            time.sleep(0.2)
        urls = re.findall(r"http://\S+/ferry--ferry-web-serve-version-dev", "".join(output))
        assert urls and any("Watching" in line for line in output), "".join(output)
        url = urls[0]

        def version():
            try:
                status, _, body = request(url, timeout=120)
                return json.loads(body) if status == 200 else status
            except OSError:
                return None

        assert version() == "v1"
        app.write_text(source.replace('"v1"', '"v2"'))
        deadline = time.time() + 180
        while time.time() < deadline and version() != "v2":
            time.sleep(1)
        assert version() == "v2", "".join(output)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Ctrl-C stopped the ephemeral app: its endpoint is gone.
    assert request(url)[0] == 404


def test_endpoint_answers_after_restart(web):
    url = url_of(web, "hello")
    web.stop()
    web.start()
    status, _, body = request(url + "?name=again")
    assert (status, json.loads(body)) == (200, {"hello": "again"})


def test_redeploy_drops_removed_endpoints_and_stop_drops_all(web, tmp_path):
    app = tmp_path / "gone.py"
    source = (
        "import modal\n"
        "app = modal.App('ferry-web-gone')\n"
        "image = modal.Image.debian_slim().pip_install('fastapi[standard]')"
        ".run_commands('mkdir -p /srv && echo served by a web_server > /srv/index.html')\n"
        "@app.function(image=image)\n@modal.fastapi_endpoint()\ndef kept():\n    return 'kept'\n"
    )
    app.write_text(source + "@app.function(image=image)\n@modal.fastapi_endpoint()\ndef dropped():\n    return 'dropped'\n")
    out = web.modal("deploy", str(app), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    base = url_of(web, "hello").rsplit("/", 1)[0]
    assert request(base + "/ferry--ferry-web-gone-dropped")[0] == 200
    app.write_text(source)
    out = web.modal("deploy", str(app), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert request(base + "/ferry--ferry-web-gone-dropped")[0] == 404
    status, _, body = request(base + "/ferry--ferry-web-gone-kept")
    assert (status, json.loads(body)) == (200, "kept")
    # A stopped app's endpoints stop answering.
    out = web.modal("app", "stop", "ferry-web-gone", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert request(base + "/ferry--ferry-web-gone-kept")[0] == 404


def test_http_server_class_serves_its_own_port(runner):
    """`@modal.experimental.http_server`: the URL answers 503 while no container is ready and
    starts one; then requests (GET with query, POST with a body) reach the container's server."""
    out = runner.modal("deploy", str(APPS / "flash.py"))
    assert out.returncode == 0, out.stdout + out.stderr
    code = """
import json, time, urllib.error, urllib.request
import modal, modal.experimental
Server = modal.Cls.from_name("ferry-flash", "Server")
url = Server._experimental_get_flash_urls()[0]
statuses = []
deadline = time.time() + 300
while time.time() < deadline:
    try:
        body = urllib.request.urlopen(url + "/hello%20there?x=1", timeout=30).read().decode()
        break
    except urllib.error.HTTPError as e:
        statuses.append(e.code)
        time.sleep(0.5)
posted = urllib.request.urlopen(urllib.request.Request(url + "/echo", data=b"payload", method="POST"), timeout=30).read().decode()
containers = [(c.task_id, c.host, c.port) for c in modal.experimental.flash_get_containers("ferry-flash", "Server")]
print("RESULT " + json.dumps(dict(url=url, statuses=sorted(set(statuses)), body=body, posted=posted, containers=containers)))
"""
    res = runner.python(code, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads(res.stdout.split("RESULT ", 1)[1])
    assert r["url"].startswith("http")
    assert set(r["statuses"]) <= {503}, "only 'not ready yet' before the first container answers"
    assert r["body"].startswith("GET /hello%20there?x=1 from ta-"), r["body"]
    assert r["posted"] == "POST /echo payload"
    assert len(r["containers"]) == 1 and r["body"].endswith(r["containers"][0][0])
    runner.modal("app", "stop", "ferry-flash", "--yes")


def test_http_server_sessions_stick_to_one_container(runner):
    """Requests with the same `Modal-Session-Id` go to one container of an http_server class
    (rendezvous hashing over the live containers); without it they spread over all of them."""
    out = runner.modal("deploy", str(APPS / "flash_sticky.py"))
    assert out.returncode == 0, out.stdout + out.stderr
    code = """
import json, time, urllib.error, urllib.request
import modal
url = modal.Cls.from_name("ferry-flash-sticky", "Server")._experimental_get_flash_urls()[0]
def get(session=None):
    headers = {"Modal-Session-Id": session} if session else {}
    return urllib.request.urlopen(urllib.request.Request(url + "/", headers=headers), timeout=30).read().decode()
seen = set()
deadline = time.time() + 300
while len(seen) < 2 and time.time() < deadline:
    try:
        seen.add(get())
    except urllib.error.HTTPError:
        time.sleep(0.5)
sessions = {s: sorted({get(s) for _ in range(8)}) for s in ["alice", "bob", "carol", "dave", "erin", "frank"]}
spread = sorted({get() for _ in range(8)})
print("RESULT " + json.dumps(dict(seen=sorted(seen), sessions=sessions, spread=spread)))
"""
    try:
        res = runner.python(code, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        r = json.loads(res.stdout.split("RESULT ", 1)[1])
        assert len(r["seen"]) == 2, r
        for session, tasks in r["sessions"].items():
            assert len(tasks) == 1, f"session {session} reached {tasks}"
        # Round robin without a session reaches both containers.
        assert r["spread"] == r["seen"], r
    finally:
        runner.modal("app", "stop", "ferry-flash-sticky", "--yes")
