"""Object storage: `ferry serve --storage s3://…` keeps blobs, mount files, volume blocks and
image layers in an S3-compatible bucket (a real SeaweedFS), so a second server with a fresh
data dir and the same database serves the same volumes and images."""

import hashlib
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from conftest import Ferry

APPS = Path(__file__).parent / "apps"
DATA = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def copy_database(src: Path, dst: Path):
    """What a replica shares with the first server: the database (and the keys that go with it)."""
    dst.mkdir(parents=True)
    for name in ("ferry.db", "ferry.db-wal", "ferry.db-shm", "secret.key", "client.env"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def run_app(server: Ferry, big: Path, vol_data: bytes) -> str:
    out = server.modal("run", str(APPS / "storage_app.py"), timeout=900, FERRY_BLOB_FILE=str(big))
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    want = hashlib.sha256(vol_data).hexdigest()
    mounted = big.read_bytes()
    # The image's own layer, the volume's file and the mounted file, seen by the function.
    summary = f"layer-marker-42 {len(vol_data)} {want} mounted {len(mounted)} {hashlib.sha256(mounted).hexdigest()}"
    assert f"function {summary}" in text, text
    # A 5 MiB argument and result (blobs) made the round trip whole.
    arg = random.Random(1).randbytes(5 * 1024 * 1024)
    assert f"result {len(arg)} {hashlib.sha256(arg[::-1]).hexdigest()}" in text, text
    # A Sandbox reads the same volume.
    assert f"sandbox {want}" in text, text
    return text


def test_bucket_holds_the_bytes_and_a_fresh_server_uses_them(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FERRY_BASE_SEED", str(DATA))
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    storage = s3_server.storage_url()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * 1024 * 1024))
    vol_data = random.Random(3).randbytes(20 * 1024 * 1024)
    (tmp_path / "vol.bin").write_bytes(vol_data)
    first = Ferry(tmp_path / "a", "--no-modal-profile", "--storage", storage).start()
    try:
        # A volume with a multi-MiB file (three 8 MiB blocks), through the CLI.
        assert first.modal("volume", "create", "ferry-storage-vol").returncode == 0
        put = first.modal("volume", "put", "ferry-storage-vol", str(tmp_path / "vol.bin"), "/big.bin")
        assert put.returncode == 0, put.stdout + put.stderr
        got = first.modal("volume", "get", "ferry-storage-vol", "/big.bin", str(tmp_path / "back.bin"))
        assert got.returncode == 0, got.stdout + got.stderr
        assert (tmp_path / "back.bin").read_bytes() == vol_data
        run_app(first, big, vol_data)
        # None of those bytes is in the data dir: blobs and blocks went to the bucket.
        assert not any(p.name.startswith("bl-") for p in files_under(first.data_dir / "blobs"))
        assert files_under(first.data_dir / "volumes" / "blocks") == []
    finally:
        first.stop()

    # A second server: fresh data dir and caches, the same database and bucket.
    second_dir = tmp_path / "b"
    copy_database(first.data_dir, second_dir)
    second = Ferry(second_dir, "--no-modal-profile", "--storage", storage).start()
    try:
        got = second.modal("volume", "get", "ferry-storage-vol", "/big.bin", str(tmp_path / "again.bin"))
        assert got.returncode == 0, got.stdout + got.stderr
        assert (tmp_path / "again.bin").read_bytes() == vol_data
        text = run_app(second, big, vol_data)
        # The image was not built again: its layer came from the bucket.
        log = "".join(p.read_text() for p in second_dir.glob("serve-*.log"))
        assert "fetched from object store bucket" in log, log[-3000:]
        assert "echo layer-marker-42" not in text, text
        # And the mounted file from the bucket into this host's cache.
        assert files_under(second_dir / "files"), "the mount file was not fetched into the cache"
    finally:
        second.stop()


def test_a_dead_object_store_is_a_clear_error(s3_server, tmp_path, monkeypatch):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    # A wrong endpoint stops the start with a message naming the bucket and the endpoint.
    dead_port = __import__("s3").free_port()
    bad = Ferry(tmp_path / "bad", "--storage", f"s3://ferry-test?endpoint=http://127.0.0.1:{dead_port}&timeout=2")
    with pytest.raises(RuntimeError) as failed:
        bad.start()
    text = str(failed.value)
    assert "ferry-test" in text and f"127.0.0.1:{dead_port}" in text, text
    assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in text
    # A store that goes away while serving: the client gets UNAVAILABLE naming the bucket,
    # promptly, and the server keeps running.
    from s3 import SeaweedS3

    own = SeaweedS3(bucket="ferry-gone").start()
    server = Ferry(tmp_path / "c", "--storage", own.storage_url(timeout=3)).start()
    try:
        own.stop()
        started = time.time()
        out = server.python(
            "import modal\n"
            "vol = modal.Volume.from_name('gone-vol', create_if_missing=True)\n"
            "with vol.batch_upload() as b:\n"
            "    b.put_file(__import__('io').BytesIO(b'x' * 1000), '/f')\n",
            timeout=120,
        )
        elapsed = time.time() - started
        text = out.stdout + out.stderr
        assert out.returncode != 0, text
        assert "ferry-gone" in text and ("unavailable" in text.lower() or "did not answer" in text), text
        assert elapsed < 60, elapsed
        assert server.proc.poll() is None
    finally:
        server.stop()
