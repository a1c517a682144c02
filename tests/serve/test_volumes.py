"""Volumes through the real client: the `modal volume` CLI, the SDK, containers that commit and
reload, a 1 GiB round trip with bounded server memory, and a kill -9 right after a put."""

import hashlib
import io
import os
import re
import threading
import time
from pathlib import Path

import pytest

from conftest import unique

APPS = Path(__file__).parent / "apps"


def ok(out):
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def blocks_on_disk(server) -> int:
    root = server.data_dir / "volumes" / "blocks"
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


# --- CLI -------------------------------------------------------------------------------


def test_cli_commands(ferry, tmp_path):
    name = unique("clivol")
    ok(ferry.modal("volume", "create", name))
    assert name in ok(ferry.modal("volume", "list", "--json"))
    again = ferry.modal("volume", "create", name)
    assert again.returncode != 0 and "already exists" in (again.stdout + again.stderr)

    src = tmp_path / "hello.txt"
    src.write_text("hello volume\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b" * 10000)
    ok(ferry.modal("volume", "put", name, str(src), "/docs/hello.txt"))
    ok(ferry.modal("volume", "put", name, str(tree), "/tree"))
    # Without --force an existing file is not replaced.
    again = ferry.modal("volume", "put", name, str(src), "/docs/hello.txt")
    assert again.returncode != 0 and "already exists" in (again.stdout + again.stderr)
    ok(ferry.modal("volume", "put", "--force", name, str(src), "/docs/hello.txt"))

    listing = ok(ferry.modal("volume", "ls", name, "/"))
    assert sorted(listing.split()) == ["docs", "tree"]
    assert ok(ferry.modal("volume", "ls", name, "/tree")).split() == ["tree/a.txt", "tree/sub"]
    assert '"dir"' in ok(ferry.modal("volume", "ls", "--json", name, "/tree"))

    out = tmp_path / "out"
    out.mkdir()
    ok(ferry.modal("volume", "get", name, "/docs/hello.txt", str(out / "hello.txt")))
    assert (out / "hello.txt").read_text() == "hello volume\n"
    ok(ferry.modal("volume", "get", name, "/tree", str(out)))
    assert (out / "tree" / "sub" / "b.txt").read_text() == "b" * 10000
    # "-" writes the file to stdout (the CLI then prints its own completion line).
    assert ok(ferry.modal("volume", "get", name, "/tree/a.txt", "-")).startswith("a\u2713")

    ok(ferry.modal("volume", "cp", name, "/docs/hello.txt", "/docs/copy.txt"))
    ok(ferry.modal("volume", "cp", "-r", name, "/tree", "/tree2"))
    assert ok(ferry.modal("volume", "get", name, "/tree2/sub/b.txt", "-")).startswith("b" * 10000 + "\u2713")
    no_r = ferry.modal("volume", "cp", name, "/tree", "/tree3")
    assert no_r.returncode != 0 and "recursive" in (no_r.stdout + no_r.stderr)

    not_empty = ferry.modal("volume", "rm", name, "/tree")
    assert not_empty.returncode != 0 and "non-empty directory" in (not_empty.stdout + not_empty.stderr)
    ok(ferry.modal("volume", "rm", "-r", name, "/tree"))
    ok(ferry.modal("volume", "rm", name, "/docs/copy.txt"))
    assert sorted(ok(ferry.modal("volume", "ls", name, "/")).split()) == ["docs", "tree2"]
    missing = ferry.modal("volume", "rm", name, "/nope")
    assert missing.returncode != 0

    renamed = unique("renamed")
    ok(ferry.modal("volume", "rename", "--yes", name, renamed))
    listed = ok(ferry.modal("volume", "list", "--json"))
    assert renamed in listed and f'"{name}"' not in listed
    ok(ferry.modal("volume", "delete", "--yes", renamed))
    assert renamed not in ok(ferry.modal("volume", "list", "--json"))
    gone = ferry.modal("volume", "ls", renamed)
    assert gone.returncode != 0 and "not found" in (gone.stdout + gone.stderr).lower()


# --- SDK -------------------------------------------------------------------------------


def test_sdk_files(ferry, tmp_path):
    import modal

    name = unique("sdkvol")
    vol = modal.Volume.from_name(name, create_if_missing=True)
    # Three 8 MiB blocks: one with a zero tail (the client leaves trailing zeros out of
    # blocks), one all zeros, one short; the same content twice is stored once.
    big = os.urandom(5 << 20) + bytes(3 << 20) + bytes(8 << 20) + os.urandom(1234)
    (tmp_path / "big.bin").write_bytes(big)
    d = tmp_path / "dir"
    (d / "deep").mkdir(parents=True)
    (d / "one.txt").write_text("1")
    (d / "deep" / "two.txt").write_text("22")
    before = blocks_on_disk(ferry)
    with vol.batch_upload() as batch:
        batch.put_file(str(tmp_path / "big.bin"), "/big.bin")
        batch.put_file(io.BytesIO(big), "/same/big.bin")
        batch.put_file(io.BytesIO(b"bytes"), "/bytes.txt", mode=0o600)
        batch.put_directory(str(d), "/dir")
    # big.bin has 3 distinct blocks (5 MiB random, all zeros, 1234 random); its copy adds
    # none; "bytes", "1" and "22" add three.
    assert blocks_on_disk(ferry) - before == 6

    assert b"".join(vol.read_file("big.bin")) == big
    buf = io.BytesIO()
    assert vol.read_file_into_fileobj("/same/big.bin", buf) == len(big)
    assert buf.getvalue() == big
    assert b"".join(vol.read_file("/dir/deep/two.txt")) == b"22"

    entries = {e.path: e for e in vol.listdir("/", recursive=True)}
    assert set(entries) == {"big.bin", "same", "same/big.bin", "bytes.txt", "dir", "dir/one.txt", "dir/deep", "dir/deep/two.txt"}
    assert entries["big.bin"].size == len(big)
    assert entries["dir"].type == modal.volume.FileEntryType.DIRECTORY
    assert [e.path for e in vol.listdir("/dir")] == ["dir/deep", "dir/one.txt"]
    assert [e.path for e in vol.listdir("/bytes.txt")] == ["bytes.txt"]

    vol.copy_files(["/dir/one.txt", "/bytes.txt"], "/same")
    assert sorted(e.path for e in vol.listdir("/same")) == ["same/big.bin", "same/bytes.txt", "same/one.txt"]
    vol.copy_files(["/dir"], "/dir-copy", recursive=True)
    assert b"".join(vol.read_file("/dir-copy/deep/two.txt")) == b"22"

    with pytest.raises(Exception, match="non-empty directory"):
        vol.remove_file("/dir")
    vol.remove_file("/dir", recursive=True)
    with pytest.raises(FileNotFoundError):
        b"".join(vol.read_file("/dir/one.txt"))
    with pytest.raises(FileExistsError):
        with vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"again"), "/bytes.txt")
    with vol.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"again"), "/bytes.txt")
    assert b"".join(vol.read_file("/bytes.txt")) == b"again"

    same = modal.Volume.from_id(vol.object_id)
    assert b"".join(same.read_file("/bytes.txt")) == b"again"
    assert same.info().name == name

    with modal.Volume.ephemeral() as eph:
        assert eph.listdir("/") == []
        with eph.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"temp"), "/t.txt")
        assert b"".join(eph.read_file("t.txt")) == b"temp"
        eph_id = eph.object_id
    assert eph_id.startswith("vo-")
    modal.Volume.objects.delete(name)


def test_bad_paths_and_names(ferry):
    import modal
    from modal.exception import InvalidError

    name = unique("badvol")
    vol = modal.Volume.from_name(name, create_if_missing=True)
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"inside"), "/inside.txt")
    for path in ["../outside.txt", "/a/../../etc/passwd"]:
        with pytest.raises(InvalidError, match="leave the volume"):
            with vol.batch_upload() as batch:
                batch.put_file(io.BytesIO(b"x"), path)
    with pytest.raises(InvalidError, match="leave the volume"):
        vol.listdir("/../..")
    with pytest.raises(InvalidError, match="leave the volume"):
        b"".join(vol.read_file("../../etc/passwd"))
    with pytest.raises(InvalidError, match="leave the volume"):
        vol.copy_files(["/inside.txt"], "/../x")
    assert [e.path for e in vol.listdir("/", recursive=True)] == ["inside.txt"]
    # Names are checked by the server as by Modal.
    with pytest.raises(InvalidError, match="Invalid Volume name"):
        modal.Volume.rename(name, "no spaces allowed")
    modal.Volume.objects.delete(name)


# --- large files, memory, crashes ----------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_one_gib_round_trip_keeps_server_memory_bounded(ferry, tmp_path):
    name = unique("bigvol")
    src = tmp_path / "big.bin"
    h = hashlib.sha256()
    with open(src, "wb") as f:
        for i in range(128):  # 128 distinct 8 MiB blocks
            chunk = os.urandom(1 << 20) * 8
            h.update(chunk)
            f.write(chunk)
    want = h.hexdigest()
    pid = ferry.proc.pid
    base = rss_kib(pid)
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        ok(ferry.modal("volume", "create", name))
        ok(ferry.modal("volume", "put", name, str(src), "/big.bin", timeout=600))
        src.unlink()
        ok(ferry.modal("volume", "get", name, "/big.bin", str(tmp_path / "back.bin"), timeout=600))
    finally:
        done.set()
        sampler.join()
    h = hashlib.sha256()
    with open(tmp_path / "back.bin", "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == want
    grown_mib = (peak[0] - base) / 1024
    print(f"server RSS grew by {grown_mib:.1f} MiB during a 1 GiB put and get")
    assert grown_mib < 100, f"server RSS grew by {grown_mib:.1f} MiB"
    ok(ferry.modal("volume", "delete", "--yes", name))


def test_kill_9_right_after_put_loses_nothing(fresh_ferry, tmp_path):
    server = fresh_ferry()
    payload = os.urandom(9 << 20)
    code = f"""
import io, modal
vol = modal.Volume.from_name("crashvol", create_if_missing=True)
with vol.batch_upload() as batch:
    batch.put_file(io.BytesIO(bytes.fromhex({payload[:64].hex()!r}) * 1), "/small.bin")
    batch.put_file({str(tmp_path / "p.bin")!r}, "/big.bin")
vol.copy_files(["/big.bin"], "/copy.bin")
print("committed")
"""
    (tmp_path / "p.bin").write_bytes(payload)
    out = server.python(code)
    assert out.returncode == 0 and "committed" in out.stdout, out.stderr
    server.proc.kill()  # SIGKILL, right after the calls returned
    server.proc.wait()
    server.start()
    check = """
import hashlib, modal
vol = modal.Volume.from_name("crashvol")
for p in ["/big.bin", "/copy.bin"]:
    print(p, hashlib.sha256(b"".join(vol.read_file(p))).hexdigest())
"""
    out = server.python(check)
    assert out.returncode == 0, out.stderr
    want = hashlib.sha256(payload).hexdigest()
    assert out.stdout.split() == ["/big.bin", want, "/copy.bin", want]


# --- containers --------------------------------------------------------------------------


def wait_ready(runner):
    assert (runner.data_dir / ".ready").exists() or os.environ.get("FERRY_TEST_DATA_DIR") is None


def test_containers_commit_and_reload(runner):
    volume = unique("ctrvol")
    queue = unique("ctrq")
    code = f"""
import time, modal
import volumes as appmod
q = modal.Queue.from_name({queue!r}, create_if_missing=True)
vol = appmod.vol
with appmod.app.run():
    reader = appmod.reader.spawn({queue!r})
    writer = appmod.writer.spawn({queue!r})
    assert q.get(partition="out", timeout=300) == "written"
    q.put("look", partition="reader")
    print("before commit:", q.get(partition="out", timeout=300))
    q.put("commit", partition="writer")
    assert q.get(partition="out", timeout=300) == "committed"
    q.put("look", partition="reader")
    print("after commit, no reload:", q.get(partition="out", timeout=300))
    q.put("reload", partition="reader")
    print("after reload:", q.get(partition="out", timeout=300))
    q.put("stop", partition="reader")
    reader.get(timeout=300); writer.get(timeout=300)
    print("client sees:", b"".join(vol.read_file("shared.txt")).decode())

    print("exit writer:", appmod.exit_writer.remote("at-exit.txt"))

    start = time.time() + 8
    tags = sorted(appmod.committer.starmap([("aaa", start, 20), ("bbb", start, 20)]))
    print("committers:", tags)

    print("escape:", appmod.escape.remote())
    print("read-only:", appmod.read_only_probe.remote())

# The commit at container exit lands once the app's containers stop.
deadline = time.time() + 60
while time.time() < deadline and "at-exit.txt" not in [e.path for e in vol.listdir("/")]:
    time.sleep(0.5)
print("after exit:", b"".join(vol.read_file("at-exit.txt")).decode())
race = {{e.path: e.size for e in vol.listdir("/race")}}
print("race files:", len(race))
print("race sizes ok:", all(race[f"race/{{t}}-{{i}}.bin"] == 3 * (1000 + i) for t in ("aaa", "bbb") for i in range(20)))
print("shared:", b"".join(vol.read_file("race/shared.txt")).decode()[:3], race["race/shared.txt"])
print("top:", sorted(e.path for e in vol.listdir("/")))
modal.Volume.objects.delete({volume!r})
"""
    out = runner.python(code, PYTHONPATH=str(APPS), FERRY_TEST_VOLUME=volume, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "before commit: <missing>" in text
    assert "after commit, no reload: <missing>" in text
    assert "after reload: from the writer" in text
    assert "client sees: from the writer" in text
    assert "after exit: written before exit" in text
    # The writer was root inside; with user namespaces on, an unprivileged uid of the host
    # (its file still landed in the volume, read and committed by the server).
    host_uid = int(re.search(r"exit writer: ok uid 0 host (\d+)", text).group(1))
    if "container isolation: full" in Path(runner.log.name).read_text():
        assert host_uid >= 0x40000000, text
    assert "committers: ['aaa', 'bbb']" in text
    assert "race files: 41" in text and "race sizes ok: True" in text
    assert "shared: aaa 300" in text or "shared: bbb 300" in text
    assert "escape: InvalidError" in text and "points outside the volume" in text
    # The read-only mount lists the committed files and refuses a write (EROFS is 30); the
    # exit writer's file is not there yet: its container commits when it exits.
    assert "read-only: (['race', 'shared.txt'], 'refused 30')" in text
    # Nothing of the refused commit or the read-only probe landed.
    assert "top: ['at-exit.txt', 'race', 'shared.txt']" in text
