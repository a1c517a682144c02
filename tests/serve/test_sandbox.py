"""`modal.Sandbox` through the real client: lifecycle on the control plane, exec and stdio
through the separate TaskCommandRouter service, tunnels, the filesystem API, snapshots and
isolation from the host."""

import hashlib
import json
import os
import subprocess
import textwrap

from conftest import Ferry, unique

PRELUDE = """
import json, os, sys, time
import modal
app = modal.App.lookup(APP_NAME, create_if_missing=True)
image = modal.Image.debian_slim()
def out(**kw):
    print("RESULT " + json.dumps(kw), flush=True)
def fetch_in_function(url):
    # A function container started now fetches `url` with Python's default trust store.
    fapp = modal.App(APP_NAME + "-fn")
    @fapp.function(image=image, serialized=True)
    def fetch(url):
        import urllib.request
        return urllib.request.urlopen(url, timeout=5).read().decode().strip()
    with fapp.run():
        return fetch.remote(url)
"""


def run(server, body: str, timeout: float = 600, prefix: str = "", **env) -> dict:
    """Runs client code in a fresh interpreter; returns the merged RESULT lines."""
    code = prefix + f"APP_NAME = {unique('sbx')!r}\n" + PRELUDE + textwrap.dedent(body)
    proc = server.python(code, timeout=timeout, **env)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            results.update(json.loads(line[len("RESULT "):]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return results


def test_exec_stdio_and_exit_codes(runner):
    r = run(runner, """
        sb = modal.Sandbox.create(app=app, image=image, workdir="/tmp", env={"GREETING": "hi"},
                                  secrets=[modal.Secret.from_dict({"CREATE_SECRET": "c1"})])
        sec = sb.exec("sh", "-c", "echo $CREATE_SECRET $EXEC_SECRET", secrets=[modal.Secret.from_dict({"EXEC_SECRET": "e1"})])
        secrets_seen = sec.stdout.read()
        p = sb.exec("sh", "-c", "echo out-$GREETING; echo err >&2; pwd; exit 3")
        stdout, stderr = p.stdout.read(), p.stderr.read()
        code = p.wait()
        b = sb.exec("printf", "\\\\x00\\\\xff", text=False)
        raw = b.stdout.read()
        b.wait()
        cat = sb.exec("cat")
        cat.stdin.write(b"from stdin\\n")
        cat.stdin.write_eof()
        cat.stdin.drain()
        echoed = cat.stdout.read()
        cat.wait()
        w = sb.exec("sh", "-c", "pwd; echo $X", workdir="/etc", env={"X": "y"})
        wd = w.stdout.read()
        w.wait()
        # Many execs at once.
        procs = [sb.exec("sh", "-c", f"sleep 0.3; echo {i}") for i in range(8)]
        many = sorted(int(p.stdout.read()) for p in procs)
        slow = sb.exec("sleep", "30", timeout=1)
        t0 = time.time(); slow_rc = slow.wait(); slow_s = time.time() - t0
        poll_before = sb.exec("sleep", "5").poll()
        missing = sb.exec("/no/such/program")
        missing_rc = missing.wait()
        out(secrets_seen=secrets_seen, stdout=stdout, stderr=stderr, code=code, raw=list(raw), echoed=echoed, wd=wd, many=many,
            slow_rc=slow_rc, slow_s=slow_s, poll_before=poll_before, missing_rc=missing_rc)
        sb.terminate()
    """)
    assert r["secrets_seen"] == "c1 e1\n"
    assert r["stdout"] == "out-hi\n/tmp\n"
    assert r["stderr"] == "err\n"
    assert r["code"] == 3
    assert r["raw"] == [0, 255]
    assert r["echoed"] == "from stdin\n"
    assert r["wd"] == "/etc\ny\n"
    assert r["many"] == list(range(8))
    assert r["slow_s"] < 10 and r["slow_rc"] != 0
    assert r["poll_before"] is None
    assert r["missing_rc"] != 0


INTERPRETER = """
import contextlib, io, json, sys
scope = {}
for line in sys.stdin:
    code = json.loads(line)["code"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(code, scope)
        except Exception as e:
            print(type(e).__name__ + ": " + str(e), file=err)
    print(json.dumps({"stdout": out.getvalue(), "stderr": err.getvalue()}), flush=True)
"""


def test_code_interpreter_keeps_one_python_process(runner):
    r = run(runner, f"""
        DRIVER = {INTERPRETER!r}
        sb = modal.Sandbox.create(app=app, image=image)
        p = sb.exec("python", "-c", DRIVER, bufsize=1)
        lines = iter(p.stdout)
        def run_code(code):
            p.stdin.write(json.dumps({{"code": code}}) + "\\n")
            p.stdin.drain()
            return json.loads(next(lines))
        answers = [run_code(c) for c in ["x = 40", "x += 2", "print(x)", "import os; print(os.getpid())", "1/0", "print(os.getpid())"]]
        p.stdin.write_eof(); p.stdin.drain()
        rc = p.wait()
        out(answers=answers, rc=rc)
        sb.terminate()
    """)
    a = r["answers"]
    assert a[2]["stdout"] == "42\n"
    assert "ZeroDivisionError" in a[4]["stderr"]
    assert a[3]["stdout"] == a[5]["stdout"], "one interpreter serves every statement"
    assert r["rc"] == 0


def test_main_process_stdio_wait_and_returncode(runner):
    r = run(runner, """
        sb = modal.Sandbox.create("python", "-c", "import sys; print('main says hi'); print(sys.stdin.readline().upper(), end=''); sys.exit(7)", app=app, image=image)
        sb.stdin.write(b"shout\\n")
        sb.stdin.drain()
        sb.wait(raise_on_termination=False)
        out(stdout=sb.stdout.read(), rc=sb.returncode, poll=sb.poll())
    """)
    assert r["stdout"] == "main says hi\nSHOUT\n"
    assert r["rc"] == 7 and r["poll"] == 7


def test_terminate_timeout_and_idle_timeout(runner):
    r = run(runner, """
        sb = modal.Sandbox.create(app=app, image=image)
        t0 = time.time(); before = sb.poll(); sb.terminate(); sb.wait(raise_on_termination=False)
        term_rc = sb.returncode
        again = modal.Sandbox.from_id(sb.object_id)
        again.wait(raise_on_termination=False)
        late = None
        try:
            sb2 = modal.Sandbox.from_id(sb.object_id)
            sb2.exec("true").wait()
        except Exception as e:
            late = type(e).__name__
        short = modal.Sandbox.create(app=app, image=image, timeout=2)
        try:
            short.wait()
            timeout_error = None
        except Exception as e:
            timeout_error = type(e).__name__
        idle = modal.Sandbox.create(app=app, image=image, idle_timeout=2)
        t1 = time.time(); idle.wait(raise_on_termination=False); idle_s = time.time() - t1
        out(before=before, term_rc=term_rc, again_rc=again.returncode, late=late, timeout_error=timeout_error,
            short_rc=short.returncode, idle_s=idle_s, idle_rc=idle.returncode)
    """)
    assert r["before"] is None
    assert r["term_rc"] == 137 and r["again_rc"] == 137
    assert r["late"] is not None, "exec into a finished sandbox fails"
    assert r["timeout_error"] == "SandboxTimeoutError" and r["short_rc"] == 124
    assert 1.5 < r["idle_s"] < 20


def test_names_tags_list_and_lookup(runner):
    r = run(runner, """
        a = modal.Sandbox.create(app=app, image=image, name="web", tags={"team": "red"})
        b = modal.Sandbox.create(app=app, image=image, tags={"team": "blue"})
        try:
            modal.Sandbox.create(app=app, image=image, name="web")
            dup = None
        except Exception as e:
            dup = type(e).__name__
        found = modal.Sandbox.from_name(APP_NAME, "web")
        red = [s.object_id for s in modal.Sandbox.list(app_id=app.app_id, tags={"team": "red"})]
        everyone = sorted(s.object_id for s in modal.Sandbox.list(app_id=app.app_id))
        b.set_tags({"team": "green", "x": "1"})
        tags = modal.Sandbox.from_id(b.object_id).get_tags()
        p = found.exec("echo", "via from_name")
        via = p.stdout.read()
        a.detach()
        a2 = modal.Sandbox.from_id(a.object_id)
        after_detach = a2.exec("echo", "still").stdout.read()
        try:
            modal.Sandbox.from_name(APP_NAME, "nobody")
            missing = None
        except Exception as e:
            missing = type(e).__name__
        for s in (a2, b):
            s.terminate()
        out(dup=dup, same=found.object_id == a.object_id, red=red, a=a.object_id, everyone=everyone,
            expected=sorted([a.object_id, b.object_id]), tags=tags, via=via, after_detach=after_detach, missing=missing)
    """)
    assert r["dup"] == "AlreadyExistsError"
    assert r["same"] and r["red"] == [r["a"]]
    assert r["everyone"] == r["expected"]
    assert r["tags"] == {"team": "green", "x": "1"}
    assert r["via"] == "via from_name\n" and r["after_detach"] == "still\n"
    assert r["missing"] == "NotFoundError"


def test_tunnel_reaches_a_web_server_from_the_host(runner):
    r = run(runner, """
        import urllib.request
        sb = modal.Sandbox.create("python", "-m", "http.server", "8000", app=app, image=image,
                                  unencrypted_ports=[8000], readiness_probe=modal.Probe.with_tcp(8000))
        sb.wait_until_ready(timeout=60)
        sb.exec("sh", "-c", "echo tunnelled > /index.html").wait()
        host, port = sb.tunnels()[8000].tcp_socket
        body = urllib.request.urlopen(f"http://{host}:{port}/index.html", timeout=10).read().decode()
        # encrypted_ports on a plain-http server: TLS with the data dir's own authority.
        import ssl
        sb2 = modal.Sandbox.create("python", "-m", "http.server", "8443", app=app, image=image,
                                   encrypted_ports=[8443], readiness_probe=modal.Probe.with_tcp(8443))
        sb2.wait_until_ready(timeout=60)
        sb2.exec("sh", "-c", "echo encrypted > /index.html").wait()
        url = sb2.tunnels()[8443].url
        ctx = ssl.create_default_context(cafile=CA)
        secure = urllib.request.urlopen(url + "/index.html", timeout=10, context=ctx).read().decode()
        try:
            urllib.request.urlopen(url + "/index.html", timeout=10).read()
            unverified = "accepted"
        except Exception as e:
            unverified = type(e).__name__
        sb.terminate(); sb2.terminate()
        out(host=host, body=body, url=url, secure=secure, unverified=unverified)
    """, prefix=f"CA = {str(runner.data_dir / 'tls' / 'ca.pem')!r}\n")
    assert r["body"] == "tunnelled\n"
    assert r["url"].startswith("https://")
    assert r["secure"] == "encrypted\n"
    assert r["unverified"] == "URLError", "the certificate is not one a default trust store accepts"


def test_tunnel_url_works_from_other_containers(runner):
    """A tunnel's URL names the server's loopback; it works from inside a sandbox that was
    already running when the tunnel opened and from a function container started after, not
    from a sandbox without network, and no longer once the tunnel's sandbox is gone."""
    r = run(runner, """
        FETCH = ("import sys, urllib.request\\n"
                 "try:\\n"
                 "    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())\\n"
                 "except Exception as e:\\n"
                 "    print('failed', type(e).__name__)\\n")
        def fetch_in(sb, url):
            p = sb.exec("python", "-c", FETCH, url)
            text = p.stdout.read().strip()
            p.wait()
            return text
        before = modal.Sandbox.create("sleep", "600", app=app, image=image)
        offline = modal.Sandbox.create("sleep", "600", app=app, image=image, block_network=True)
        server = modal.Sandbox.create("python", "-m", "http.server", "8000", app=app, image=image,
                                      unencrypted_ports=[8000], readiness_probe=modal.Probe.with_tcp(8000))
        server.wait_until_ready(timeout=60)
        server.exec("sh", "-c", "echo shared > /index.html").wait()
        host, port = server.tunnels()[8000].tcp_socket
        url = f"http://{host}:{port}/index.html"
        from_sandbox = fetch_in(before, url)
        from_offline = fetch_in(offline, url)
        from_function = fetch_in_function(url)
        server.terminate()
        server.wait(raise_on_termination=False)
        after = fetch_in(before, url)
        before.terminate(); offline.terminate()
        out(host=host, from_sandbox=from_sandbox, from_offline=from_offline, from_function=from_function, after=after)
    """)
    assert r["host"] == "127.0.0.1", r
    assert r["from_sandbox"] == "shared" and r["from_function"] == "shared", r
    assert r["from_offline"].startswith("failed"), r
    assert r["after"].startswith("failed"), r


def test_encrypted_tunnels_are_trusted_inside_containers(runner):
    """On a server without a certificate of its own, `encrypted_ports` tunnels are signed by the
    data dir's authority. Code in sandboxes and function containers verifies them with its
    default trust store (Python's `ssl`, and so urllib, aiohttp and httpx; `requests` through
    REQUESTS_CA_BUNDLE), which still holds the image's public roots."""
    r = run(runner, """
        FETCH = ("import os, ssl, sys, urllib.request\\n"
                 "try:\\n"
                 "    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())\\n"
                 "except Exception as e:\\n"
                 "    print('failed', type(e).__name__, e)\\n")
        server = modal.Sandbox.create("python", "-m", "http.server", "8443", app=app, image=image,
                                      encrypted_ports=[8443], readiness_probe=modal.Probe.with_tcp(8443))
        server.wait_until_ready(timeout=60)
        server.exec("sh", "-c", "echo private-ca > /index.html").wait()
        url = server.tunnels()[8443].url + "/index.html"
        client = modal.Sandbox.create("sleep", "600", app=app, image=image)
        p = client.exec("python", "-c", FETCH, url)
        from_sandbox = p.stdout.read().strip()
        p.wait()
        p = client.exec("sh", "-c", "echo $SSL_CERT_FILE $REQUESTS_CA_BUNDLE; grep -c 'BEGIN CERTIFICATE' $SSL_CERT_FILE")
        trust = p.stdout.read().split()
        p.wait()
        from_function = fetch_in_function(url)
        server.terminate(); client.terminate()
        out(url=url, from_sandbox=from_sandbox, from_function=from_function, trust=trust)
    """)
    assert r["url"].startswith("https://"), r
    assert r["from_sandbox"] == "private-ca", r
    assert r["from_function"] == "private-ca", r
    bundle, requests_bundle, certificates = r["trust"]
    assert bundle == requests_bundle == "/etc/ssl/certs/ca-certificates.crt", r
    # The image's public roots (over a hundred in Debian's bundle) and Ferry's authority.
    assert int(certificates) > 100, r


def test_filesystem_round_trip_of_a_large_file(runner, tmp_path):
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for i in range(100):
            f.write(hashlib.sha256(str(i).encode()).digest() * (1024 * 1024 // 32))
    dst = tmp_path / "back.bin"
    marker = unique("m")
    r = run(runner, f"""
        sb = modal.Sandbox.create(app=app, image=image)
        fs = sb.filesystem
        t0 = time.time()
        fs.copy_from_local({str(src)!r}, "/data/in/big.bin")
        up = time.time() - t0
        remote_sum = sb.exec("sha256sum", "/data/in/big.bin").stdout.read().split()[0]
        t0 = time.time()
        fs.copy_to_local("/data/in/big.bin", {str(dst)!r})
        down = time.time() - t0
        fs.write_text("hello", "/data/a/b/hello.txt")
        text = fs.read_text("/data/a/b/hello.txt")
        fs.write_bytes(b"\\x00\\x01", "/data/bytes.bin")
        data = list(fs.read_bytes("/data/bytes.bin"))
        fs.make_directory("/data/dir/sub")
        names = sorted(e.name for e in fs.list_files("/data"))
        st = fs.stat("/data/a/b/hello.txt")
        fs.remove("/data/a", recursive=True)
        after = sorted(e.name for e in fs.list_files("/data"))
        try:
            fs.read_text("/data/nope")
            missing = None
        except Exception as e:
            missing = type(e).__name__
        # A symlink inside the sandbox that points at an absolute path resolves inside it.
        sb.exec("sh", "-c", "echo inside > /only-in-sandbox-{marker} && ln -s /only-in-sandbox-{marker} /data/link").wait()
        via_link = fs.read_text("/data/link").strip()
        sb.terminate()
        out(up=up, down=down, remote_sum=remote_sum, text=text, data=data, names=names, size=st.size,
            is_file=st.is_file(), after=after, missing=missing, via_link=via_link)
    """)
    local_sum = hashlib.sha256(src.read_bytes()).hexdigest()
    assert r["remote_sum"] == local_sum
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == local_sum
    assert r["text"] == "hello" and r["data"] == [0, 1]
    assert r["names"] == ["a", "bytes.bin", "dir", "in"]
    assert r["size"] == 5 and r["is_file"]
    assert r["after"] == ["bytes.bin", "dir", "in"]
    assert r["missing"] == "SandboxFilesystemNotFoundError"
    assert r["via_link"] == "inside", "the symlink resolved inside the sandbox, not on the host"
    print(f"100 MB up {r['up']:.2f}s, down {r['down']:.2f}s")


def test_snapshot_then_start_from_it(runner):
    r = run(runner, """
        sb = modal.Sandbox.create(app=app, image=image)
        sb.exec("sh", "-c", "mkdir -p /work && echo remembered > /work/state.txt").wait()
        snap = sb.snapshot_filesystem()
        sb.terminate()
        sb2 = modal.Sandbox.create(app=app, image=snap)
        content = sb2.exec("cat", "/work/state.txt").stdout.read()
        sb2.terminate()
        out(image_id=snap.object_id, content=content)
    """)
    assert r["image_id"].startswith("im-")
    assert r["content"] == "remembered\n"


def test_local_files_of_the_image_are_in_the_sandbox(runner, tmp_path):
    """`add_local_dir`/`add_local_file` without copy=True reach a Sandbox as mounts, as they
    reach a function."""
    src = tmp_path / "proj"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "data.txt").write_text("from the laptop\n")
    (src / "pkg" / "mod.py").write_text("VALUE = 42\n")
    single = tmp_path / "one.cfg"
    single.write_text("single file\n")
    r = run(runner, f"""
        img = image.add_local_dir({str(src / "pkg")!r}, "/opt/pkg").add_local_file({str(single)!r}, "/etc/one.cfg")
        sb = modal.Sandbox.create(app=app, image=img)
        data = sb.exec("cat", "/opt/pkg/data.txt").stdout.read()
        value = sb.exec("python", "-c", "import sys; sys.path.insert(0, '/opt'); from pkg.mod import VALUE; print(VALUE)").stdout.read()
        cfg = sb.exec("cat", "/etc/one.cfg").stdout.read()
        sb.terminate()
        out(data=data, value=value, cfg=cfg)
    """)
    assert r == {"data": "from the laptop\n", "value": "42\n", "cfg": "single file\n"}


def test_rm_rf_inside_leaves_host_and_other_sandboxes_intact(runner, tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("still here")
    r = run(runner, f"""
        victim = modal.Sandbox.create(app=app, image=image)
        bystander = modal.Sandbox.create(app=app, image=image)
        seen = victim.exec("sh", "-c", "test -e {canary} && echo visible || echo invisible").stdout.read()
        from urllib.parse import urlparse
        api_port = urlparse(os.environ["MODAL_SERVER_URL"]).port
        probe = "import socket, sys; s = socket.socket(); s.settimeout(2); print(s.connect_ex((sys.argv[1], int(sys.argv[2]))))"
        host_lo = [victim.exec("python", "-c", probe, h, str(api_port)).stdout.read().strip() for h in ("127.0.0.1", "10.0.2.2")]
        p = victim.exec("rm", "-rf", "/", "--no-preserve-root")
        rc = p.wait()
        fine = bystander.exec("cat", "/etc/debian_version").stdout.read()
        victim.terminate(); bystander.terminate()
        fresh = modal.Sandbox.create(app=app, image=image)
        fresh_ok = fresh.exec("ls", "/bin/sh").stdout.read()
        fresh.terminate()
        out(seen=seen, rc=rc, fine=fine, fresh_ok=fresh_ok, host_lo=host_lo)
    """)
    assert r["seen"] == "invisible\n"
    assert all(code != "0" for code in r["host_lo"]), "the host's loopback services are out of reach"
    assert canary.read_text() == "still here"
    assert os.path.exists("/bin/sh") and os.path.exists("/etc/debian_version")
    assert r["fine"].strip(), "another sandbox still works"
    assert r["fresh_ok"] == "/bin/sh\n", "the image itself is untouched"


def test_block_network_and_private_network(runner):
    r = run(runner, """
        blocked = modal.Sandbox.create(app=app, image=image, block_network=True)
        ifaces = blocked.exec("python", "-c", "import socket; print(sorted(n for _, n in socket.if_nameindex()))").stdout.read()
        blocked.terminate()
        # Outside the allow-list, connections are refused inside the sandbox's own namespace
        # (198.51.100.1 is TEST-NET-2: nothing leaves the machine).
        allowed = modal.Sandbox.create(app=app, image=image, outbound_cidr_allowlist=["192.0.2.0/24"])
        probe = "import socket; s = socket.socket(); s.settimeout(3); print(s.connect_ex(('198.51.100.1', 80)))"
        outside = allowed.exec("python", "-c", probe).stdout.read().strip()
        allowed.terminate()
        try:
            modal.Sandbox.create(app=app, image=image, outbound_domain_allowlist=["example.com"])
            allow = None
        except Exception as e:
            allow = type(e).__name__
        try:
            modal.Sandbox.create(app=app, image=image, volumes={"/v": modal.Volume.from_id("vo-123")})
            vol = None
        except Exception as e:
            vol = type(e).__name__
        out(ifaces=ifaces, allow=allow, vol=vol, outside=outside)
    """)
    assert r["ifaces"].strip() == "['lo']"
    assert r["outside"] == "111", "outside the CIDR allow-list a connection is refused"
    assert r["allow"] == "UnimplementedError"
    assert r["vol"] is not None


def test_router_token_of_one_sandbox_is_refused_by_another(runner):
    r = run(runner, """
        import asyncio
        from grpclib import GRPCError
        from grpclib.client import Channel
        from urllib.parse import urlparse
        from modal_proto import api_pb2, task_command_router_pb2 as sr
        from modal_proto.task_command_router_grpc import TaskCommandRouterStub
        a = modal.Sandbox.create(app=app, image=image)
        b = modal.Sandbox.create(app=app, image=image)
        from modal_proto.api_grpc import ModalClientStub
        async def access(sb):
            u = urlparse(os.environ["MODAL_SERVER_URL"])
            ch = Channel(u.hostname, u.port)
            md = {"x-modal-token-id": os.environ["MODAL_TOKEN_ID"], "x-modal-token-secret": os.environ["MODAL_TOKEN_SECRET"],
                  "x-modal-client-version": modal.__version__}
            try:
                return await ModalClientStub(ch).SandboxGetCommandRouterAccess(
                    api_pb2.SandboxGetCommandRouterAccessRequest(sandbox_id=sb.object_id), metadata=md)
            finally:
                ch.close()
        acc_a = asyncio.run(access(a))
        task_a = a._get_task_id()
        task_b = b._get_task_id()
        async def attempt(jwt, task):
            u = urlparse(acc_a.url)
            ch = Channel(u.hostname, u.port)
            stub = TaskCommandRouterStub(ch)
            try:
                await stub.TaskExecStart(sr.TaskExecStartRequest(task_id=task, exec_id="x-" + task, command_args=["true"]),
                                         metadata={"authorization": "Bearer " + jwt})
                return "ok"
            except GRPCError as e:
                return e.status.name
            finally:
                ch.close()
        own = asyncio.run(attempt(acc_a.jwt, task_a))
        other = asyncio.run(attempt(acc_a.jwt, task_b))
        forged = asyncio.run(attempt(acc_a.jwt[:-4] + "AAAA", task_a))
        a.terminate(); b.terminate()
        out(own=own, other=other, forged=forged, url=acc_a.url)
    """)
    assert r["own"] == "ok"
    assert r["other"] == "PERMISSION_DENIED"
    assert r["forged"] == "UNAUTHENTICATED"


def test_v1_protocol(runner):
    r = run(runner, """
        sb = modal.Sandbox.create("sh", "-c", "read line; echo got $line", app=app, image=image)
        sb.stdin.write(b"v1\\n"); sb.stdin.drain()
        sb.wait()
        main_out = sb.stdout.read()
        sb2 = modal.Sandbox.create(app=app, image=image, name="one")
        p = sb2.exec("echo", "exec v1")
        ex = p.stdout.read()
        found = [s.object_id for s in modal.Sandbox.list(app_id=app.app_id)]
        sb2.terminate()
        out(main_out=main_out, rc=sb.returncode, ex=ex, found=found, sb2=sb2.object_id)
    """, MODAL_SANDBOX_V2="0")
    assert r["main_out"] == "got v1\n" and r["rc"] == 0
    assert r["ex"] == "exec v1\n"
    assert r["sb2"] in r["found"]


def test_modal_shell_and_container_exec_into_a_running_sandbox(runner):
    r = run(runner, """
        sb = modal.Sandbox.create(app=app, image=image, timeout=120)
        out(sandbox_id=sb.object_id, task_id=sb._get_task_id())
    """)
    try:
        shell = runner.modal("shell", r["sandbox_id"], "--no-pty", "-c", "sh -c 'echo hi from $(hostname)'")
        assert shell.returncode == 0, shell.stdout + shell.stderr
        assert "hi from sandbox" in shell.stdout
        ex = runner.modal("container", "exec", "--no-pty", r["task_id"], "--", "sh", "-c", "echo via container exec; exit 0")
        assert ex.returncode == 0, ex.stdout + ex.stderr
        assert "via container exec" in ex.stdout
        # Without a REF, `modal shell` starts a sandbox of its own from the default image.
        fresh = runner.modal("shell", "--no-pty", "-c", "sh -c 'echo from-image-shell; cat /etc/debian_version'")
        assert fresh.returncode == 0, fresh.stdout + fresh.stderr
        assert "from-image-shell" in fresh.stdout
    finally:
        run(runner, f"""
            modal.Sandbox.from_id({r['sandbox_id']!r}).terminate()
        """)


def test_exec_with_a_pty(runner):
    r = run(runner, """
        sb = modal.Sandbox.create(app=app, image=image)
        p = sb.exec("sh", "-c", "tty; stty size; echo err >&2; read x; echo got $x", pty=True, text=False)
        p.stdin.write(b"typed\\n")
        p.stdin.drain()
        data = p.stdout.read().decode()
        rc = p.wait()
        sb.terminate()
        out(data=data, rc=rc)
    """, TERM="xterm-256color")
    lines = r["data"].replace("\r", "").splitlines()
    assert any(line.startswith("/dev/pts/") for line in lines), lines
    assert "err" in lines, "stderr shares the terminal"
    assert "typed" in lines, "the terminal echoes input"
    assert lines[-1] == "got typed"
    assert r["rc"] == 0


def test_main_process_on_a_pty(runner):
    r = run(runner, """
        sb = modal.Sandbox.create("sh", "-c", "test -t 0 && echo on-a-terminal; read x; echo got $x", app=app, image=image, pty=True)
        sb.stdin.write(b"line\\n")
        sb.stdin.drain()
        sb.wait()
        out(data=sb.stdout.read(), rc=sb.returncode)
    """)
    lines = r["data"].replace("\r", "").splitlines()
    assert "on-a-terminal" in lines and "got line" in lines, lines
    assert r["rc"] == 0

def test_records_survive_a_restart(runner):
    r = run(runner, """
        sb = modal.Sandbox.create(app=app, image=image, name="keeper", tags={"k": "v"})
        out(sandbox_id=sb.object_id, app_name=APP_NAME)
    """)
    # The container ends with the server; its record, name and tags stay, with an outcome.
    runner.stop()
    runner.start()
    r2 = run(runner, f"""
        sb = modal.Sandbox.from_id({r['sandbox_id']!r})
        sb.wait(raise_on_termination=False)
        tags = sb.get_tags()
        again = modal.Sandbox.create(app=modal.App.lookup({r['app_name']!r}), image=image, name="keeper")
        last = modal.Sandbox.from_name({r['app_name']!r}, "keeper").object_id
        again.terminate()
        out(rc=sb.returncode, tags=tags, again=again.object_id, last=last)
    """)
    assert r2["rc"] is not None
    assert r2["tags"] == {"k": "v"}
    assert r2["last"] == r2["again"], "the name is free once its sandbox has ended"


def test_exec_through_a_tls_server(runner, tmp_path):
    """With --tls-cert/--tls-key the router serves https too, with the API's certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    runner.stop()
    server = Ferry(runner.data_dir, "--no-modal-profile", "--tls-cert", str(cert), "--tls-key", str(key)).start()
    try:
        assert server.url.startswith("https://")
        # The client trusts the API's certificate through certifi's bundle (see the README).
        trust = f"import certifi; certifi.where = lambda: {str(cert)!r}\n"
        r = run(server, f"""
            import ssl, urllib.request
            sb = modal.Sandbox.create("python", "-m", "http.server", "8000", app=app, image=image,
                                      encrypted_ports=[8000], readiness_probe=modal.Probe.with_tcp(8000))
            p = sb.exec("echo", "over tls")
            text = p.stdout.read()
            sb.wait_until_ready(timeout=60)
            sb.exec("sh", "-c", "echo secure > /index.html").wait()
            url = sb.tunnels()[8000].url
            ctx = ssl.create_default_context(cafile={str(cert)!r})
            body = urllib.request.urlopen(url + "/index.html", context=ctx, timeout=10).read().decode()
            sb.terminate()
            out(text=text, url=url, body=body)
        """, prefix=trust)
        assert r["text"] == "over tls\n"
        assert r["url"].startswith("https://127.0.0.1:")
        assert r["body"] == "secure\n"
    finally:
        server.stop()
        runner.start()
