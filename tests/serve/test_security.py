"""The hostile-input surface: scoped tokens, rate and size limits, TLS beyond loopback, the
secret key's permissions and rotation, and a protocol-level fuzzer that sends mutated real
client requests to a running server.

Real `modal` CLI/SDK for what a user does; grpclib with the client's own stubs (or raw bytes)
for exact statuses and malformed traffic."""

import asyncio
import hashlib
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from grpclib import GRPCError, Status
from grpclib.client import Channel
from grpclib.const import Cardinality
from google.protobuf.empty_pb2 import Empty
from grpclib.encoding.base import CodecBase
from modal_proto import api_grpc, api_pb2

from conftest import PY, REPO, Ferry, ferry_bin, unique

APPS = Path(__file__).parent / "apps"
CORPUS = REPO / "crates" / "fuzz" / "corpus"
VERSION = "1.6.4"


def metadata(token_id: str, secret: str) -> dict:
    return {"x-modal-token-id": token_id, "x-modal-token-secret": secret, "x-modal-client-version": VERSION}


def host_port(url: str):
    rest = url.split("://", 1)[1]
    host, port = rest.rsplit(":", 1)
    return host.strip("[]"), int(port)


def create_token(server: Ferry, *flags: str):
    out = server.ferry("token", "create", *flags)
    assert out.returncode == 0, out.stderr
    vals = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return vals["MODAL_TOKEN_ID"], vals["MODAL_TOKEN_SECRET"]


async def call(server: Ferry, token, rpc: str, request, timeout: float = 10):
    host, port = host_port(server.url)
    channel = Channel(host, port)
    try:
        stub = api_grpc.ModalClientStub(channel)
        return await getattr(stub, rpc)(request, metadata=metadata(*token), timeout=timeout)
    finally:
        channel.close()


def status_of(server: Ferry, token, rpc: str, request) -> Status:
    try:
        asyncio.run(call(server, token, rpc, request))
        return Status.OK
    except GRPCError as e:
        return e.status


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Ferry(tmp_path_factory.mktemp("security") / "data", "--no-modal-profile").start()
    yield s
    s.stop()


# --- scoped tokens -------------------------------------------------------------------------


def test_read_only_token_reads_and_looks_up_but_cannot_write(server):
    name = unique("ro-dict")
    r = server.python(f"import modal; d = modal.Dict.from_name({name!r}, create_if_missing=True); d['k'] = 'v'")
    assert r.returncode == 0, r.stderr
    ro = create_token(server, "--read-only", "--label", "ci-reader")

    # Reads and lookups work through the real client.
    env = {"MODAL_TOKEN_ID": ro[0], "MODAL_TOKEN_SECRET": ro[1]}
    r = server.python(f"import modal; print(modal.Dict.from_name({name!r})['k'])", **env)
    assert r.returncode == 0 and r.stdout.strip() == "v", r.stderr
    r = server.modal("dict", "list", **env)
    assert r.returncode == 0 and name in r.stdout, r.stderr

    # Writes and creations are refused with PERMISSION_DENIED and a message that says why.
    r = server.python(f"import modal; modal.Dict.from_name({name!r})['k2'] = 1", **env)
    assert r.returncode != 0 and "read-only" in r.stderr and "DictUpdate" in r.stderr, r.stderr
    r = server.python("import modal; modal.Queue.from_name('ro-new-queue', create_if_missing=True).hydrate()", **env)
    assert r.returncode != 0 and "read-only" in r.stderr, r.stderr
    assert status_of(server, ro, "DictClear", api_pb2.DictClearRequest(dict_id="di-x")) == Status.PERMISSION_DENIED
    # QueueGet removes items: a write.
    assert status_of(server, ro, "QueueGet", api_pb2.QueueGetRequest(queue_id="qu-x")) == Status.PERMISSION_DENIED
    # Nothing changed.
    r = server.python(f"import modal; print(sorted(modal.Dict.from_name({name!r}).keys()))")
    assert r.stdout.strip() == "['k']", r.stderr

    listing = server.ferry("token", "list").stdout
    line = next(l for l in listing.splitlines() if l.startswith(ro[0]))
    assert "read-only" in line and "ci-reader" in line and " - " not in line.split("read-only")[0][-30:], line


def test_environment_token_is_limited_to_its_environment(server):
    env_name = unique("staging")
    assert server.modal("environment", "create", env_name).returncode == 0
    main_dict = unique("main-dict")
    r = server.python(f"import modal; d = modal.Dict.from_name({main_dict!r}, create_if_missing=True); d['k'] = 1; print(d.object_id)")
    assert r.returncode == 0, r.stderr
    main_dict_id = r.stdout.strip()

    out = server.ferry("token", "create", "--environment", env_name)
    assert out.returncode == 0 and f"MODAL_ENVIRONMENT={env_name}" in out.stdout, out.stdout + out.stderr
    vals = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    tok = (vals["MODAL_TOKEN_ID"], vals["MODAL_TOKEN_SECRET"])
    env = {"MODAL_TOKEN_ID": tok[0], "MODAL_TOKEN_SECRET": tok[1]}

    # In its environment it may do everything.
    r = server.python(
        "import modal; d = modal.Dict.from_name('scoped', create_if_missing=True); d['a'] = 2; print(d['a'])",
        MODAL_ENVIRONMENT=env_name,
        **env,
    )
    assert r.returncode == 0 and r.stdout.strip() == "2", r.stderr

    # Another environment (here the default one) is refused, naming the way out.
    r = server.python("import modal; modal.Dict.from_name('scoped', create_if_missing=True)['a'] = 1", **env)
    assert r.returncode != 0 and f"MODAL_ENVIRONMENT={env_name}" in r.stderr, r.stderr
    r = server.modal("dict", "list", "-e", "main", **env)
    assert r.returncode != 0 and "limited to environment" in (r.stdout + r.stderr)
    # An object of another environment, named by id, is refused too.
    assert status_of(server, tok, "DictGet", api_pb2.DictGetRequest(dict_id=main_dict_id, key=b"k")) == Status.PERMISSION_DENIED
    assert status_of(server, tok, "DictClear", api_pb2.DictClearRequest(dict_id=main_dict_id)) == Status.PERMISSION_DENIED
    # Workspace-wide changes are not its to make.
    assert status_of(server, tok, "EnvironmentCreate", api_pb2.EnvironmentCreateRequest(name="x")) == Status.PERMISSION_DENIED
    r = server.python(f"import modal; print(modal.Dict.from_name({main_dict!r})['k'])")
    assert r.stdout.strip() == "1"


def test_token_use_is_logged_by_id_never_by_secret(server):
    tok = create_token(server, "--read-only")
    assert status_of(server, tok, "DictList", api_pb2.DictListRequest()) == Status.OK
    assert status_of(server, tok, "DictClear", api_pb2.DictClearRequest(dict_id="di-x")) == Status.PERMISSION_DENIED
    time.sleep(0.3)
    server.log.flush()
    log = re.sub(r"\x1b\[[0-9;]*m", "", Path(server.log.name).read_text())
    assert re.search(rf'token used token_id="{tok[0]}" rpc="DictList" scope=read-only', log), log[-2000:]
    assert re.search(rf'refused a call outside the token\'s scope token_id="{tok[0]}" rpc=DictClear', log), log[-2000:]
    assert tok[1] not in log
    for line in (server.data_dir / "client.env").read_text().splitlines():
        if line.startswith("MODAL_TOKEN_SECRET="):
            assert line.split("=", 1)[1] not in log
    listing = server.ferry("token", "list").stdout
    line = next(l for l in listing.splitlines() if l.startswith(tok[0]))
    assert re.search(r"\d{4}-\d\d-\d\d.*\d{4}-\d\d-\d\d", line), line  # created and last used


# --- rate and size limits ------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    s = Ferry(
        tmp_path_factory.mktemp("limited") / "data", "--no-modal-profile", "--rate-limit", "5", "--rate-burst", "10",
        "--max-request-mib", "1",
    ).start()
    yield s
    s.stop()


def test_rate_limit_answers_resource_exhausted_with_a_retry_policy(limited):
    tok = (limited.client_env()["MODAL_TOKEN_ID"], limited.client_env()["MODAL_TOKEN_SECRET"])

    from modal._utils.grpc_utils import custom_detail_codec, get_server_retry_policy

    async def burst():
        host, port = host_port(limited.url)
        # The client's own decoder of status details.
        channel = Channel(host, port, status_details_codec=custom_detail_codec)
        stub = api_grpc.ModalClientStub(channel)
        results = []
        for _ in range(30):
            try:
                await stub.DictList(api_pb2.DictListRequest(), metadata=metadata(*tok))
                results.append(("ok", None))
            except GRPCError as e:
                results.append((e.status, e))
        channel.close()
        return results

    time.sleep(2.5)  # a full bucket
    results = asyncio.run(burst())
    refused = [e for s, e in results if s == Status.RESOURCE_EXHAUSTED]
    assert 10 <= sum(1 for s, _ in results if s == "ok") <= 13, results
    assert refused and len(refused) + sum(1 for s, _ in results if s == "ok") == 30
    e = refused[0]
    assert "rate limit" in e.message and "--rate-limit" in e.message, e.message
    # Modal's server-side retry instruction, as the client reads it (`get_server_retry_policy`).
    policy = get_server_retry_policy(e)
    assert policy is not None and 0 <= policy.retry_after_secs <= 1, e.details

    # The real client waits as told and succeeds at the allowed pace: no storm, no failure.
    time.sleep(2.5)
    t0 = time.time()
    r = limited.python(
        "import modal\nd = modal.Dict.from_name('paced', create_if_missing=True)\n"
        "for i in range(25): d[i] = i\nprint(d.len())",
        timeout=120,
    )
    took = time.time() - t0
    assert r.returncode == 0 and r.stdout.strip().endswith("25"), r.stderr
    assert took >= 2, took
    assert limited.proc.poll() is None


def test_request_size_limit_answers_resource_exhausted_and_keeps_serving(limited):
    time.sleep(2.5)
    r = limited.python(
        "import modal\nd = modal.Dict.from_name('big', create_if_missing=True)\n"
        "try:\n    d['x'] = b'x' * (2 * 1024 * 1024)\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
        "d['small'] = 1\nprint('small', d['small'])",
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "larger than this server accepts" in r.stdout and "--max-request-mib" in r.stdout, r.stdout
    assert "small 1" in r.stdout
    tok = (limited.client_env()["MODAL_TOKEN_ID"], limited.client_env()["MODAL_TOKEN_SECRET"])
    time.sleep(0.5)
    big = api_pb2.DictUpdateRequest(dict_id="di-x", updates=[api_pb2.DictEntry(key=b"k", value=b"v" * (3 * 1024 * 1024))])
    assert status_of(limited, tok, "DictUpdate", big) == Status.RESOURCE_EXHAUSTED
    assert limited.proc.poll() is None


# --- TLS beyond loopback -------------------------------------------------------------------


def non_loopback_ipv4() -> str | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the route's source
        ip = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if ip.startswith("127.") else ip


def test_tls_by_default_beyond_loopback_and_the_client_trusts_the_printed_settings(tmp_path):
    ip = non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    server = Ferry(tmp_path / "data", "--no-modal-profile", "--host", ip).start()
    try:
        assert server.url.startswith(f"https://{ip}:"), server.url
        import ssl

        server.log.flush()
        banner = Path(server.log.name).read_text()
        m = re.search(r"authority (\S+) \(SHA-256 ([0-9A-F:]+)\)", banner)
        assert m, banner
        ca = Path(m.group(1))
        assert ca == server.data_dir / "tls" / "ca.pem"
        der = ssl.PEM_cert_to_DER_cert(ca.read_text())
        assert m.group(2) == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        assert "python -m certifi" in banner
        assert stat.S_IMODE((server.data_dir / "tls" / "ca.key").stat().st_mode) == 0o600

        # The client's transport (grpclib, certifi's bundle) refuses the certificate until the
        # authority is trusted; a context trusting ca.pem gets answers; plain h2c gets none.
        tok = (server.client_env()["MODAL_TOKEN_ID"], server.client_env()["MODAL_TOKEN_SECRET"])
        host, port = host_port(server.url)

        async def hello(ssl_arg):
            channel = Channel(host, port, ssl=ssl_arg)
            try:
                stub = api_grpc.ModalClientStub(channel)
                return await stub.ClientHello(Empty(), metadata=metadata(*tok), timeout=10)
            finally:
                channel.close()

        with pytest.raises(ssl.SSLCertVerificationError):
            asyncio.run(hello(True))
        trusting = ssl.create_default_context(cafile=str(ca))
        trusting.set_alpn_protocols(["h2"])
        assert asyncio.run(hello(trusting)) is not None
        with pytest.raises(Exception):
            asyncio.run(hello(None))

        # A client environment whose certifi bundle holds the authority, made by the printed
        # command (in a venv of its own layered over the suite's, so the suite's stays as it is).
        venv = tmp_path / "client-venv"
        subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next(venv.glob("lib/python*/site-packages"))
        shared = next(Path(PY).parent.parent.glob("lib/python*/site-packages"))
        shutil.copytree(shared / "certifi", site / "certifi")
        (site / "suite.pth").write_text(str(shared) + "\n")
        vpy = venv / "bin" / "python"
        subprocess.run(["bash", "-c", f'cat {ca} >> "$({vpy} -m certifi)"'], check=True)
        r = subprocess.run(
            [str(vpy), "-c", "import modal; d = modal.Dict.from_name('tls', create_if_missing=True); d['k'] = 7; print(d['k'])"],
            env=server.env(), capture_output=True, text=True, timeout=120,
        )
        assert r.returncode == 0 and r.stdout.strip() == "7", r.stderr

        # A restart keeps the authority, so clients keep trusting it.
        server.stop()
        server.start()
        r = subprocess.run(
            [str(vpy), "-m", "modal", "dict", "list"], env=server.env(), capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0 and "tls" in r.stdout, r.stderr
    finally:
        server.stop()


def test_loopback_stays_plain_h2c(server):
    assert server.url.startswith("http://127.0.0.1:")
    # The API answers the cleartext HTTP/2 preface with its SETTINGS frame: no TLS. (The data
    # dir's own authority may exist: sandbox tunnels with encrypted_ports use it.)
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        head = s.recv(9)
    assert len(head) == 9 and head[3] == 0x4, head


# --- the secret key ------------------------------------------------------------------------


def test_a_key_file_others_can_read_is_refused_at_start(tmp_path):
    s = Ferry(tmp_path / "data", "--no-modal-profile").start()
    s.stop()
    key = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key.chmod(0o644)
    with pytest.raises(RuntimeError) as e:
        s.start()
    assert "chmod 600" in str(e.value) and "secret.key" in str(e.value)
    key.chmod(0o600)
    s.start()
    s.stop()


def wait_ready(data: Path):
    if not (data / ".ready").exists():
        pytest.skip(f"{data} is not prepared (no .ready): containers need the base image")


def test_secret_key_rotate_keeps_every_secret_readable_in_a_container(tmp_path):
    data = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
    wait_ready(data)
    server = Ferry(data, "--no-modal-profile").start()
    value = f"v-{random.getrandbits(64):x}"
    try:
        # The value goes through the environment, never through a command line.
        r = server.python(
            "import os, modal\n"
            "modal.Secret.objects.create('ferry-security-rotated', {'ROTATED_KEY': 'old'}, allow_existing=True)\n"
            "modal.Secret.from_name('ferry-security-rotated').update({'ROTATED_KEY': os.environ['V']})",
            V=value,
        )
        assert r.returncode == 0, r.stderr
        r = server.python("import os, modal; modal.Secret.from_dict({'ANON_KEY': os.environ['V']}).hydrate()", V=value)
        assert r.returncode == 0, r.stderr

        # Rotation refuses while the server holds the old key.
        out = subprocess.run([ferry_bin(), "secret-key", "rotate", "--data-dir", str(data)], capture_output=True, text=True)
        assert out.returncode != 0 and "stop it first" in out.stderr, out.stderr
        server.stop()
        before = (data / "secret.key").read_bytes()
        out = subprocess.run([ferry_bin(), "secret-key", "rotate", "--data-dir", str(data)], capture_output=True, text=True)
        assert out.returncode == 0 and re.search(r"re-sealed \d+ secret", out.stdout), out.stderr
        assert (data / "secret.key").read_bytes() != before
        assert stat.S_IMODE((data / "secret.key").stat().st_mode) == 0o600
        server.start()

        # A container reads the value back; meanwhile no host process carries it in its
        # command line, and the server's log never names it.
        proc = subprocess.Popen(
            [str(Path(PY).parent / "modal"), "run", str(APPS / "secret_named.py"), "--delay", "4"],
            env=server.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        seen_in_ps = []
        while proc.poll() is None:
            ps = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True).stdout
            seen_in_ps += [l for l in ps.splitlines() if value in l]
            time.sleep(0.3)
        out = proc.stdout.read()
        assert proc.returncode == 0, out
        assert f"sha256 {hashlib.sha256(value.encode()).hexdigest()}" in out, out
        assert not seen_in_ps, seen_in_ps
        server.log.flush()
        assert value not in Path(server.log.name).read_text()
    finally:
        server.stop()


# --- protocol-level fuzzing ----------------------------------------------------------------

SPAWNING = {
    "ImageGetOrCreate", "SandboxCreate", "SandboxCreateV2", "SandboxContainerCreateV2", "PersistentSandboxCreate",
    "PersistentSandboxResume", "SandboxRestore", "SandboxRestoreV2", "ContainerExec", "FunctionStartPtyShell",
}


class RawCodec(CodecBase):
    """Sends and receives request and reply messages as bytes, untouched."""

    __content_subtype__ = "proto"

    def encode(self, message, message_type):
        return message

    def decode(self, data, message_type):
        return data


def mutate(rng: random.Random, data: bytes, pool: list) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
        elif op == 2:
            i = rng.randint(0, len(b))
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and b:
            i = rng.randrange(len(b))
            del b[i : i + rng.randint(1, 32)]
        elif op == 4 and pool:
            other = rng.choice(pool)
            if other:
                i = rng.randrange(len(other))
                b[rng.randint(0, len(b)) : 0] = other[i : i + rng.randint(1, 64)]
        elif op == 5 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 6:
            b += bytes([rng.randint(1, 15) << 3 | rng.choice([0, 2, 5]), rng.randint(0, 127)]) + rng.randbytes(rng.randint(0, 20))
        else:
            b = bytearray(rng.randbytes(rng.randint(0, 40)))
    return bytes(b)


def test_protocol_fuzzer_keeps_the_server_serving_valid_statuses(tmp_path):
    """Mutated real client requests (the seed corpus) sent to a running server over HTTP/2 with
    the real transport; every answer must be a gRPC status, and the server must keep serving."""
    seeds = {p.name: [f.read_bytes() for f in sorted(p.glob("*.bin"))] for p in CORPUS.iterdir() if p.is_dir()}
    assert len(seeds) >= 20
    pool = [s for v in seeds.values() for s in v]
    methods = [m.name for m in api_pb2.DESCRIPTOR.services_by_name["ModalClient"].methods if m.name not in SPAWNING]
    budget = float(os.environ.get("FERRY_FUZZ_SECS", "20"))
    seed = int(os.environ.get("FERRY_FUZZ_SEED", time.time_ns()))
    rng = random.Random(seed)
    server = Ferry(tmp_path / "data", "--no-modal-profile").start()
    tok = (server.client_env()["MODAL_TOKEN_ID"], server.client_env()["MODAL_TOKEN_SECRET"])
    host, port = host_port(server.url)
    tally: dict = {}
    bad = []

    async def run():
        channel = Channel(host, port, codec=RawCodec())
        deadline = time.time() + budget
        n = 0
        while time.time() < deadline:
            method = rng.choice(list(seeds)) if rng.random() < 0.6 else rng.choice(methods)
            base = rng.choice(seeds[method]) if method in seeds else b""
            msg = mutate(rng, base, pool)
            md = metadata(*tok)
            if rng.random() < 0.1:
                md[rng.choice(list(md))] = rng.choice(["x", "ak-" + "x" * 300, "0.0.1", "%00", "as-wrong"])
            if rng.random() < 0.1:
                md["x-idempotency-key"] = str(rng.randrange(20))
            try:
                async with channel.request(
                    f"/modal.client.ModalClient/{method}", Cardinality.UNARY_STREAM,
                    bytes, bytes, metadata=md, timeout=3,
                ) as stream:
                    await stream.send_message(msg, end=True)
                    async for _ in stream:
                        pass
                tally["OK"] = tally.get("OK", 0) + 1
            except GRPCError as e:
                if not isinstance(e.status, Status):
                    bad.append((method, msg.hex(), e))
                # A request that does not decode is the caller's fault, not a server fault the
                # client would retry.
                undecodable = ("failed to decode Protobuf message", "Unexpected EOF decoding stream", "Missing request message")
                if e.status == Status.INTERNAL and any(t in (e.message or "") for t in undecodable):
                    bad.append((method, msg.hex(), e.message))
                tally[e.status.name] = tally.get(e.status.name, 0) + 1
            except asyncio.TimeoutError:
                tally["timeout"] = tally.get("timeout", 0) + 1  # a long poll on a valid request
            except Exception as e:  # a reset stream, a dropped connection: not a gRPC answer
                bad.append((method, msg.hex(), repr(e)))
                channel.close()
                channel = Channel(host, port, codec=RawCodec())
            n += 1
        channel.close()
        return n

    try:
        n = asyncio.run(run())
        print(f"protocol fuzzer: {n} requests (FERRY_FUZZ_SEED={seed}): {tally}")
        assert server.proc.poll() is None, "the server died"
        assert not bad, f"FERRY_FUZZ_SEED={seed}: answers that were not gRPC statuses: {bad[:5]}"
        # Still serving real clients.
        r = server.modal("dict", "list")
        assert r.returncode == 0, r.stderr
        assert n > 50 or budget < 5
        # The HTTP ports (web endpoints, dashboard) take garbage and keep answering.
        text = Path(server.log.name).read_text()
        ports = [int(m) for m in re.findall(r"http://127\.0\.0\.1:(\d+)", text)]
        for p in set(ports) - {port}:
            for _ in range(15):
                junk = mutate(rng, b"GET /ferry--x-y/a?b=c HTTP/1.1\r\nHost: ferry--x-y.localhost\r\n\r\n", [])
                try:
                    with socket.create_connection(("127.0.0.1", p), timeout=0.3) as c:
                        c.sendall(junk)
                        c.recv(100)
                except OSError:
                    pass
            with socket.create_connection(("127.0.0.1", p), timeout=5) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                assert c.recv(12).startswith(b"HTTP/1.1"), p
        assert server.proc.poll() is None
    finally:
        server.stop()
