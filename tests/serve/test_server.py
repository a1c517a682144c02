"""The server as an operator and the client see it: settings, auth, durability, errors."""

import asyncio
import os
import stat
import subprocess
import sys
import time
import uuid

import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from grpclib.const import Status
from google.protobuf.empty_pb2 import Empty

import modal
from modal_proto import api_grpc, api_pb2

from conftest import unique


def stub_for(server, token_id=None, token_secret=None, extra=None):
    env = server.client_env()
    url = env["MODAL_SERVER_URL"].removeprefix("http://")
    host, port = url.rsplit(":", 1)
    channel = Channel(host, int(port))
    md = {
        "x-modal-client-version": modal.__version__,
        "x-modal-client-type": str(api_pb2.CLIENT_TYPE_CLIENT),
        "x-modal-token-id": token_id or env["MODAL_TOKEN_ID"],
        "x-modal-token-secret": token_secret or env["MODAL_TOKEN_SECRET"],
    }
    md.update(extra or {})
    return channel, api_grpc.ModalClientStub(channel), md


def test_client_env_and_profile(fresh_ferry, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "modal.toml").write_text('[default]\ntoken_id = "mine"\ntoken_secret = "keep"\nactive = true\n')
    server = fresh_ferry(data_dir=data)
    lines = (data / "client.env").read_text().splitlines()
    assert [line.split("=")[0] for line in lines] == ["MODAL_SERVER_URL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"]
    assert lines[0] == f"MODAL_SERVER_URL={server.url}"
    assert stat.S_IMODE(os.stat(data / "client.env").st_mode) == 0o600
    profile = (data / "modal.toml").read_text()
    assert 'token_id = "mine"' in profile and 'token_secret = "keep"' in profile and "active = true" in profile
    assert "[ferry]" in profile and server.url in profile
    # The profile alone is enough for the CLI.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(MODAL_PROFILE="ferry", MODAL_CONFIG_PATH=str(data / "modal.toml"))
    modal_cli = os.path.join(os.path.dirname(sys.executable), "modal")
    out = subprocess.run([modal_cli, "dict", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_missing_and_wrong_tokens_are_refused(ferry):
    out = ferry.python("import modal; modal.Dict.from_name('x', create_if_missing=True).hydrate()", MODAL_TOKEN_SECRET="as-wrong")
    assert out.returncode != 0
    assert "AuthError" in out.stderr and "not valid" in out.stderr

    async def no_token():
        channel, stub, md = stub_for(ferry)
        del md["x-modal-token-id"], md["x-modal-token-secret"]
        try:
            with pytest.raises(GRPCError) as e:
                await stub.DictList(api_pb2.DictListRequest(), metadata=md)
            assert e.value.status == Status.UNAUTHENTICATED
        finally:
            channel.close()

    asyncio.run(no_token())


def test_token_revoke_takes_effect(fresh_ferry):
    server = fresh_ferry()
    created = server.ferry("token", "create", "--label", "ci")
    assert created.returncode == 0, created.stderr
    creds = dict(line.split("=", 1) for line in created.stdout.split())
    code = "import modal; d = modal.Dict.from_name('t', create_if_missing=True); d['a'] = 1; print(d['a'])"
    ok = server.python(code, **creds)
    assert ok.returncode == 0 and ok.stdout.strip() == "1", ok.stderr
    listed = server.ferry("token", "list").stdout
    assert creds["MODAL_TOKEN_ID"] in listed and "ci" in listed
    assert server.ferry("token", "revoke", creds["MODAL_TOKEN_ID"]).returncode == 0
    time.sleep(6)  # verified tokens are cached for at most 5 s
    refused = server.python(code, **creds)
    assert refused.returncode != 0 and "AuthError" in refused.stderr
    assert "revoked" in server.ferry("token", "list").stdout


def test_unimplemented_rpc_names_itself(ferry):
    async def call():
        channel, stub, md = stub_for(ferry)
        try:
            with pytest.raises(GRPCError) as e:
                await stub.WorkspaceMembersList(Empty(), metadata=md)
            assert e.value.status == Status.UNIMPLEMENTED
            assert e.value.message == "Ferry does not implement WorkspaceMembersList yet"
        finally:
            channel.close()

    asyncio.run(call())


def test_wrong_client_version_is_refused(ferry):
    async def call():
        channel, stub, md = stub_for(ferry, extra={"x-modal-client-version": "0.64.0"})
        try:
            with pytest.raises(GRPCError) as e:
                await stub.DictList(api_pb2.DictListRequest(), metadata=md)
            assert e.value.status == Status.FAILED_PRECONDITION
            assert "modal==1.6.4" in e.value.message
        finally:
            channel.close()

    asyncio.run(call())


def test_malformed_requests_are_invalid_argument(ferry):
    async def call():
        channel, stub, md = stub_for(ferry)
        try:
            cases = [
                stub.DictGet(api_pb2.DictGetRequest(dict_id="not-an-id", key=b"k"), metadata=md),
                stub.QueueGet(api_pb2.QueueGetRequest(queue_id="", timeout=1), metadata=md),
                stub.QueueGet(api_pb2.QueueGetRequest(queue_id="qu-abc", timeout=-5), metadata=md),
                stub.QueuePut(api_pb2.QueuePutRequest(queue_id="qu-abc", values=[b"x"], partition_key=b"p" * 100), metadata=md),
                stub.DictGetOrCreate(api_pb2.DictGetOrCreateRequest(deployment_name="bad name!", object_creation_type=1), metadata=md),
                stub.QueueNextItems(api_pb2.QueueNextItemsRequest(queue_id="qu-abc", last_entry_id="zzz"), metadata=md),
            ]
            for coro in cases:
                with pytest.raises(GRPCError) as e:
                    await coro
                assert e.value.status == Status.INVALID_ARGUMENT, e.value.message
        finally:
            channel.close()

    asyncio.run(call())
    # The server is still serving.
    d = modal.Dict.from_name(unique("alive"), create_if_missing=True)
    d["k"] = 1
    assert d["k"] == 1


def test_retried_put_is_applied_once(ferry):
    """The client retries unary calls with the same x-idempotency-key; a retry must replay."""
    q = modal.Queue.from_name(unique("idem"), create_if_missing=True)
    q.hydrate()

    async def call():
        key = str(uuid.uuid4())
        channel, stub, md = stub_for(ferry, extra={"x-idempotency-key": key})
        try:
            req = api_pb2.QueuePutRequest(queue_id=q.object_id, values=[b"\x80\x04K\x07."], partition_ttl_seconds=60)
            await stub.QueuePut(req, metadata={**md, "x-retry-attempt": "0"})
            await stub.QueuePut(req, metadata={**md, "x-retry-attempt": "1"})
            created = api_pb2.DictGetOrCreateRequest(deployment_name=unique("idem-d"), object_creation_type=api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS)
            md2 = {**md, "x-idempotency-key": str(uuid.uuid4())}
            first = await stub.DictGetOrCreate(created, metadata=md2)
            second = await stub.DictGetOrCreate(created, metadata=md2)
            assert first.dict_id == second.dict_id
        finally:
            channel.close()

    asyncio.run(call())
    assert q.len() == 1
    assert q.get() == 7


def test_logs_stream_ends_with_app_done(ferry):
    async def call():
        channel, stub, md = stub_for(ferry)
        try:
            app = await stub.AppCreate(api_pb2.AppCreateRequest(description="logs", app_state=api_pb2.APP_STATE_EPHEMERAL), metadata=md)
            await stub.AppClientDisconnect(api_pb2.AppClientDisconnectRequest(app_id=app.app_id), metadata=md)
            batches = await stub.AppGetLogs(api_pb2.AppGetLogsRequest(app_id=app.app_id, timeout=10), metadata=md)
            assert batches and batches[-1].app_done
        finally:
            channel.close()

    asyncio.run(call())


def test_named_objects_survive_restart(fresh_ferry, tmp_path):
    data = tmp_path / "data"
    server = fresh_ferry(data_dir=data)
    name = unique("durable")
    write = f"""
import modal
d = modal.Dict.from_name("{name}", create_if_missing=True)
d["k"] = {{"v": 1}}
q = modal.Queue.from_name("{name}", create_if_missing=True)
q.put_many([1, 2, 3])
q.put("p", partition="part")
modal.Secret.objects.create("{name}", {{"KEY": "value"}})
"""
    out = server.python(write)
    assert out.returncode == 0, out.stderr
    server.stop()
    server = fresh_ferry(data_dir=data)
    read = f"""
import modal
d = modal.Dict.from_name("{name}")
q = modal.Queue.from_name("{name}")
print(d["k"], q.get_many(5), q.get(partition="part"))
print(modal.Secret.from_name("{name}", required_keys=["KEY"]).info().name)
"""
    out = server.python(read)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["{'v': 1} [1, 2, 3] p", name]


def test_eight_processes_share_one_queue(ferry):
    """8 producers and 8 consumers at once: every item arrives exactly once."""
    name = unique("shared")
    modal.Queue.objects.create(name)
    per_producer = 150
    producer = f"""
import sys, modal
q = modal.Queue.from_name("{name}")
i = int(sys.argv[1])
for j in range(0, {per_producer}, 10):
    q.put_many([(i, k) for k in range(j, j + 10)])
"""
    consumer = f"""
import sys, queue, modal
q = modal.Queue.from_name("{name}")
got = []
while True:
    try:
        got.extend(q.get_many(7, timeout=3))
    except queue.Empty:
        break
print(repr(got))
"""
    procs = [subprocess.Popen([sys.executable, "-c", producer, str(i)], env=ferry.env(), stderr=subprocess.PIPE, text=True) for i in range(8)]
    procs += [subprocess.Popen([sys.executable, "-c", consumer], env=ferry.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    got = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        if out:
            got.extend(eval(out))
    got.extend(modal.Queue.from_name(name).get_many(5000, block=False))
    expected = [(i, k) for i in range(8) for k in range(per_producer)]
    assert len(got) == len(expected), "items lost or duplicated"
    assert sorted(got) == expected


def test_tls(fresh_ferry, tmp_path):
    """With --tls-cert/--tls-key the API is served over https:// (checked with the client's
    own gRPC library and stubs, trusting the test's certificate)."""
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server = fresh_ferry("--tls-cert", str(cert), "--tls-key", str(key))
    env = server.client_env()
    assert env["MODAL_SERVER_URL"].startswith("https://127.0.0.1:")
    port = int(env["MODAL_SERVER_URL"].rsplit(":", 1)[1])

    async def call():
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.set_alpn_protocols(["h2"])
        channel = Channel("127.0.0.1", port, ssl=ctx)
        stub = api_grpc.ModalClientStub(channel)
        md = {
            "x-modal-client-version": modal.__version__,
            "x-modal-token-id": env["MODAL_TOKEN_ID"],
            "x-modal-token-secret": env["MODAL_TOKEN_SECRET"],
        }
        try:
            resp = await stub.EnvironmentGetOrCreate(api_pb2.EnvironmentGetOrCreateRequest(), metadata=md)
            assert resp.metadata.settings.image_builder_version == "2025.06"
        finally:
            channel.close()
        # Plaintext h2c is refused on the TLS port.
        plain = Channel("127.0.0.1", port)
        try:
            with pytest.raises(Exception):
                await api_grpc.ModalClientStub(plain).EnvironmentGetOrCreate(api_pb2.EnvironmentGetOrCreateRequest(), metadata=md, timeout=5)
        finally:
            plain.close()

    asyncio.run(call())

