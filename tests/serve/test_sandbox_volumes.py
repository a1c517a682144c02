"""Volumes mounted into `modal.Sandbox`: writes land in the volume when the sandbox ends, or at
once with `sync PATH` (Volumes v2), read-only mounts refuse writes, and what a sandbox wrote is
read by the client and by the next sandbox."""

from test_sandbox import run


def test_sandbox_writes_reach_the_volume_when_it_ends(runner):
    r = run(runner, """
        vol = modal.Volume.from_name(APP_NAME + "-vol", create_if_missing=True)
        with vol.batch_upload() as b:
            b.put_file(__import__("io").BytesIO(b"from the client"), "/given.txt")
        sb = modal.Sandbox.create(app=app, image=image, volumes={"/data": vol})
        seen = sb.exec("cat", "/data/given.txt").stdout.read()
        w = sb.exec("sh", "-c", "mkdir -p /data/out && echo written-inside > /data/out/new.txt && rm /data/given.txt")
        w.wait()
        before = sorted(e.path for e in vol.listdir("/", recursive=True))
        sb.terminate()
        sb.wait(raise_on_termination=False)
        after = sorted(e.path for e in vol.listdir("/", recursive=True))
        content = b"".join(vol.read_file("out/new.txt")).decode()
        # The next sandbox sees the committed tree.
        sb2 = modal.Sandbox.create(app=app, image=image, volumes={"/data": vol})
        again = sb2.exec("cat", "/data/out/new.txt").stdout.read()
        sb2.terminate()
        out(seen=seen, before=before, after=after, content=content, again=again)
    """)
    assert r["seen"] == "from the client"
    assert r["before"] == ["given.txt"], "nothing is committed while the sandbox runs"
    assert r["after"] == ["out", "out/new.txt"]
    assert r["content"] == "written-inside\n"
    assert r["again"] == "written-inside\n"


def test_sync_commits_while_the_sandbox_runs_and_read_only_refuses(runner):
    r = run(runner, """
        vol = modal.Volume.from_name(APP_NAME + "-sync", create_if_missing=True)
        ro = modal.Volume.from_name(APP_NAME + "-ro", create_if_missing=True)
        with ro.batch_upload() as b:
            b.put_file(__import__("io").BytesIO(b"keep"), "/keep.txt")
        sb = modal.Sandbox.create(app=app, image=image, volumes={"/mnt/v": vol, "/mnt/ro": ro.read_only()})
        sb.exec("sh", "-c", "echo one > /mnt/v/one.txt").wait()
        rc = sb.exec("sync", "/mnt/v").wait()
        mid = b"".join(vol.read_file("one.txt")).decode()
        # Writing after a sync keeps working, and is committed at the end too.
        sb.exec("sh", "-c", "echo two > /mnt/v/two.txt").wait()
        p = sb.exec("sh", "-c", "echo x > /mnt/ro/new.txt")
        ro_rc = p.wait()
        ro_err = p.stderr.read()
        kept = sb.exec("cat", "/mnt/ro/keep.txt").stdout.read()
        sb.terminate()
        sb.wait(raise_on_termination=False)
        final = sorted(e.path for e in vol.listdir("/"))
        ro_final = sorted(e.path for e in ro.listdir("/"))
        out(rc=rc, mid=mid, ro_rc=ro_rc, ro_err=ro_err, kept=kept, final=final, ro_final=ro_final)
    """)
    assert r["rc"] == 0
    assert r["mid"] == "one\n", "sync committed the write while the sandbox ran"
    assert r["ro_rc"] != 0 and "Read-only" in r["ro_err"]
    assert r["kept"] == "keep"
    assert r["final"] == ["one.txt", "two.txt"]
    assert r["ro_final"] == ["keep.txt"]


def test_unknown_volume_is_a_clear_error(runner):
    r = run(runner, """
        try:
            modal.Sandbox.create(app=app, image=image, volumes={"/v": modal.Volume.from_id("vo-doesnotexist0000000000")})
            err = None
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
        ok = modal.Sandbox.create(app=app, image=image)
        alive = ok.exec("echo", "alive").stdout.read()
        ok.terminate()
        out(err=err, alive=alive)
    """)
    assert r["err"] is not None and "vo-doesnotexist" in r["err"]
    assert r["alive"] == "alive\n"
