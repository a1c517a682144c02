"""Blobs: large arguments, results and mount files go through `BlobCreate`/`BlobGet` and HTTP
PUT/GET on the server's blob port, as with S3 presigned URLs."""

import asyncio
import base64
import hashlib
import os
import random
from pathlib import Path

import aiohttp
import modal
import pytest
from grpclib import GRPCError, Status
from grpclib.client import Channel
from modal_proto import api_grpc, api_pb2


APPS = Path(__file__).parent / "apps"


def stub_for(server):
    env = server.client_env()
    host, port = env["MODAL_SERVER_URL"].removeprefix("http://").rsplit(":", 1)
    channel = Channel(host, int(port))
    md = {
        "x-modal-client-version": modal.__version__,
        "x-modal-client-type": str(api_pb2.CLIENT_TYPE_CLIENT),
        "x-modal-token-id": env["MODAL_TOKEN_ID"],
        "x-modal-token-secret": env["MODAL_TOKEN_SECRET"],
    }
    return channel, api_grpc.ModalClientStub(channel), md


def create_request(data: bytes) -> api_pb2.BlobCreateRequest:
    return api_pb2.BlobCreateRequest(
        content_md5=base64.b64encode(hashlib.md5(data).digest()).decode(),
        content_sha256_base64=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        content_length=len(data),
    )


def test_modal_run_with_large_payloads(runner, tmp_path):
    # Fresh bytes each run: the data dir is kept, and known file contents are not uploaded again.
    big = os.urandom(6 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(big)
    out = runner.modal("run", str(APPS / "blobs.py"), timeout=900, FERRY_BLOB_FILE=str(tmp_path / "big.bin"))
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    # A 5 MiB argument reached the function whole, and its 5 MiB result came back whole.
    arg = random.Random(1).randbytes(5 * 1024 * 1024)
    assert "received 5242880 bytes" in text
    assert f"result 5242880 {hashlib.sha256(arg[::-1]).hexdigest()}" in text
    # A spawned call's 100 KiB argument (over the 8 KiB inline limit for spawns).
    assert f"spawned {hashlib.sha256(random.Random(2).randbytes(100 * 1024)).hexdigest()}" in text
    # A mounted 6 MiB file (uploaded as a blob, then named by MountPutFile).
    assert f"mounted {len(big)} {hashlib.sha256(big).hexdigest()}" in text


def test_blob_urls_check_content_and_tokens(ferry):
    data = os.urandom(3 * 1024 * 1024 + 17)

    async def check():
        channel, stub, md = stub_for(ferry)
        try:
            async with aiohttp.ClientSession() as http:
                created = await stub.BlobCreate(create_request(data), metadata=md)
                (blob_id,) = created.blob_ids
                assert created.WhichOneof("upload_types_oneof") == "upload_urls"
                (put_url,) = created.upload_urls.items

                # Bytes other than the declared ones are refused with a reason, as is a short body.
                other = bytes(len(data))
                async with http.put(put_url, data=other) as resp:
                    assert resp.status == 400
                    assert "MD5" in await resp.text()
                async with http.put(put_url, data=data[:-1]) as resp:
                    assert resp.status == 400
                    assert "declared as" in await resp.text()

                # A tampered token, or a PUT URL used to GET, is forbidden.
                tampered = put_url[:-1] + ("0" if put_url[-1] != "0" else "1")
                async with http.put(tampered, data=data) as resp:
                    assert resp.status == 403
                async with http.get(put_url) as resp:
                    assert resp.status == 403

                # The declared bytes are accepted with their MD5 as the ETag.
                async with http.put(put_url, data=data) as resp:
                    assert resp.status == 200, await resp.text()
                    assert resp.headers["ETag"].strip('"') == hashlib.md5(data).hexdigest()

                got = await stub.BlobGet(api_pb2.BlobGetRequest(blob_id=blob_id), metadata=md)
                async with http.get(got.download_url) as resp:
                    assert resp.status == 200
                    assert await resp.read() == data

                # A blob that was created but never uploaded is not found over HTTP.
                pending = await stub.BlobCreate(create_request(b"never sent"), metadata=md)
                url = (await stub.BlobGet(api_pb2.BlobGetRequest(blob_id=pending.blob_ids[0]), metadata=md)).download_url
                async with http.get(url) as resp:
                    assert resp.status == 404

            with pytest.raises(GRPCError) as e:
                await stub.BlobGet(api_pb2.BlobGetRequest(blob_id="bl-doesnotexist"), metadata=md)
            assert e.value.status == Status.NOT_FOUND
        finally:
            channel.close()

    asyncio.run(check())


def test_multipart_upload_checks_parts(ferry):
    """Blobs over 1 GiB are uploaded in parts, joined by a completion request listing each
    part's ETag; these checks need no gigabyte of data."""
    size = (1 << 30) + 1

    async def check():
        channel, stub, md = stub_for(ferry)
        try:
            request = api_pb2.BlobCreateRequest(content_md5=base64.b64encode(bytes(16)).decode(), content_length=size)
            created = await stub.BlobCreate(request, metadata=md)
            assert created.WhichOneof("upload_types_oneof") == "multiparts"
            (upload,) = created.multiparts.items
            parts = -(size // -upload.part_length)
            assert len(upload.upload_urls) == parts
            async with aiohttp.ClientSession() as http:
                # The last part holds the one byte left over; a part of another length is refused.
                async with http.put(upload.upload_urls[-1], data=b"xy") as resp:
                    assert resp.status == 400
                async with http.put(upload.upload_urls[-1], data=b"x") as resp:
                    assert resp.status == 200
                    assert resp.headers["ETag"].strip('"') == hashlib.md5(b"x").hexdigest()
                # A part URL is good for its own part only.
                wrong_part = upload.upload_urls[0].replace("/parts/1?", "/parts/2?")
                async with http.put(wrong_part, data=b"x") as resp:
                    assert resp.status == 403

                def completion(numbers):
                    etag = hashlib.md5(b"x").hexdigest()
                    listed = "".join(f'<Part>\n<PartNumber>{n}</PartNumber>\n<ETag>"{etag}"</ETag>\n</Part>' for n in numbers)
                    return f"<CompleteMultipartUpload>{listed}</CompleteMultipartUpload>".encode()

                # Completion must list every part in order, and every part must be uploaded.
                async with http.post(upload.completion_url, data=completion(range(parts, 0, -1))) as resp:
                    assert resp.status == 400
                    assert "in order" in await resp.text()
                async with http.post(upload.completion_url, data=completion(range(1, parts + 1))) as resp:
                    assert resp.status == 400
                    assert "part 1 " in await resp.text() and "not uploaded" in await resp.text()
                # A token with one character changed (to another one: it may already end in "0").
                url = upload.completion_url
                tampered = url[:-1] + ("1" if url.endswith("0") else "0")
                async with http.post(tampered, data=completion(range(1, parts + 1))) as resp:
                    assert resp.status == 403
        finally:
            channel.close()

    asyncio.run(check())


def test_sdk_blob_upload_and_download(ferry):
    """The SDK's own blob code paths against the server: upload, then download by id."""
    code = """
import asyncio, hashlib, os
from modal.client import _Client
from modal._utils.blob_utils import blob_upload, blob_download

async def main():
    client = await _Client.from_env()
    data = os.urandom(5 * 1024 * 1024)
    blob_id = await blob_upload(data, client.stub)
    back = await blob_download(blob_id, client.stub)
    print(f"round trip {blob_id.startswith('bl-')} {back == data}")

asyncio.run(main())
"""
    out = ferry.python(code)
    assert out.returncode == 0, out.stderr
    assert "round trip True True" in out.stdout


def test_sdk_multipart_upload_and_download(ferry, tmp_path):
    """A blob over 1 GiB through the client's own multipart upload, with the placeholder MD5 the
    client declares for mount files that large; read back in a stream."""
    code = f"""
import asyncio, hashlib
from modal.client import _Client
from modal._utils.blob_utils import blob_upload_file, blob_iter

async def main():
    client = await _Client.from_env()
    size = (1 << 30) + (3 << 20) + 5
    path = {str(tmp_path / "big.bin")!r}
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: mostly zeros, with marks at both ends
        f.seek(12345); f.write(b"start"); f.seek(size - 5); f.write(b"final")
    with open(path, "rb") as f:
        want = hashlib.file_digest(f, "sha256").hexdigest()
        f.seek(0)
        blob_id = await blob_upload_file(f, client.stub, md5_hex="baadbaadbaadbaadbaadbaadbaadbaad")
    h, n = hashlib.sha256(), 0
    async for chunk in blob_iter(blob_id, client.stub):
        h.update(chunk)
        n += len(chunk)
    print("multipart", n == size, h.hexdigest() == want)

asyncio.run(main())
"""
    out = ferry.python(code, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "multipart True True" in out.stdout
