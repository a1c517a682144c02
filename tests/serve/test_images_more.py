"""Named images and the `modal image` subcommands with the real client: publish, from_name,
names list/history/delete, `modal image build -t`, `modal image pull --name`, `modal image
logs` (one layer and all of them), names surviving a restart, and the AWS ECR error."""

import json
import os
import re
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Ferry
from imagekit import BUSYBOX_APPLETS, OciLayout, Registry, busybox_layout, tar_layer

DATA = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("named")
    registry = Registry(root / "registry").start()
    busybox_layout(root / "busybox")
    registry.push(root / "busybox", "1", "ferrytest/busybox:1", all_arches=True)
    # The test's registry stands for Docker Hub (`default`) and for a named registry host
    # (`modal image pull` wants a host in the reference).
    server = Ferry(DATA, "--no-modal-profile", "--registry-mirror", f"default={registry.url}", "--registry-mirror", f"registry.ferry.invalid={registry.url}").start()
    yield {"server": server, "registry": registry, "root": root}
    server.stop()
    registry.stop()


def run(server, code: str, timeout: float = 600):
    out = server.python(textwrap.dedent(code), timeout=timeout)
    return out.returncode, out.stdout + out.stderr


def test_publish_from_name_history_and_delete(kit):
    server = kit["server"]
    stamp = time.time_ns()
    name = f"named-{stamp}"
    rc, text = run(server, f"""
    import modal
    app = modal.App("ferry-named-publish")
    first = modal.Image.debian_slim().run_commands("echo first-{stamp} > /named")
    second = modal.Image.debian_slim().run_commands("echo second-{stamp} > /named")
    with app.run():
        first.build(app)
        first.publish("{name}:v1")
        first.publish("{name}")
        second.build(app)
        second.publish("{name}:v1")
        print("IDS", first.object_id, second.object_id)
    """)
    assert rc == 0, text[-3000:]
    first_id, second_id = text.split("IDS ", 1)[1].split()[:2]

    # from_name resolves to the newest publish, and a function runs on it.
    rc, text = run(server, f"""
    import modal
    app = modal.App("ferry-named-use")

    @app.function(image=modal.Image.from_name("{name}:v1"))
    def read():
        return open("/named").read().strip()

    with app.run():
        print("READ", read.remote())
    """)
    assert rc == 0, text[-3000:]
    assert f"READ second-{stamp}" in text, text[-3000:]

    out = server.modal("image", "names", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["tag"]: r["image_id"] for r in json.loads(out.stdout)}
    assert rows[f"{name}:v1"] == second_id and rows[f"{name}:latest"] == first_id, rows
    out = server.modal("image", "names", "list", "--prefix", f"{name}:l")
    assert out.returncode == 0 and f"{name}:latest" in out.stdout and f"{name}:v1" not in out.stdout, out.stdout

    out = server.modal("image", "names", "history", f"{name}:v1", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["image_id"] for r in json.loads(out.stdout)] == [second_id, first_id]

    # Names are durable: a restarted server still resolves them.
    server.stop()
    server.start()
    rc, text = run(server, f"""
    import modal
    app = modal.App("ferry-named-restart")
    with app.run():
        image = modal.Image.from_name("{name}")
        image.build(app)
        print("RESOLVED", image.object_id)
    """)
    assert rc == 0 and f"RESOLVED {first_id}" in text, text[-3000:]

    out = server.modal("image", "names", "delete", f"{name}:v1", "--yes")
    assert out.returncode == 0, out.stderr
    out = server.modal("image", "names", "list", "--json")
    assert f"{name}:v1" not in {r["tag"] for r in json.loads(out.stdout)}
    rc, text = run(server, f"""
    import modal
    app = modal.App("ferry-named-gone")
    with app.run():
        modal.Image.from_name("{name}:v1").build(app)
    """)
    assert rc != 0 and "not found" in text.lower() and f"{name}:v1" in text, text[-3000:]
    # Deleting it again is a clear not-found; a bad name is refused.
    out = server.modal("image", "names", "delete", f"{name}:v1", "--yes")
    assert out.returncode != 0 and "not found" in (out.stdout + out.stderr).lower()
    rc, text = run(server, f"""
    import modal
    app = modal.App("ferry-named-unbuilt")
    with app.run():
        img = modal.Image.debian_slim().run_commands("echo x-{stamp}")
        img.build(app)
        img.publish("bad name!")
    """)
    assert rc != 0 and "name" in text.lower(), text[-3000:]


def test_cli_build_pull_and_logs(kit, tmp_path):
    server = kit["server"]
    stamp = time.time_ns()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text(f"hello-{stamp}\n")
    (ctx / "Dockerfile").write_text(textwrap.dedent(f"""
        FROM python:3.11-slim-bookworm
        COPY hello.txt /hello.txt
        RUN echo build-step-{stamp} && cat /hello.txt
        """))
    out = server.modal("image", "build", "-t", f"cli-{stamp}:v1", str(ctx), timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert f"cli-{stamp}:v1" in text
    rows = {r["tag"]: r["image_id"] for r in json.loads(server.modal("image", "names", "list", "--json").stdout)}
    image_id = rows[f"cli-{stamp}:v1"]

    # The build's log, kept per layer: the last layer by default (the Dockerfile's own steps
    # are the layer below it), more with --layers N, every layer with --all.
    out = server.modal("image", "logs", image_id)
    assert out.returncode == 0, out.stderr
    assert "ferry: built layer" in out.stdout and f"build-step-{stamp}" not in out.stdout, out.stdout
    for flags in (["--layers", "2"], ["--all"]):
        out = server.modal("image", "logs", image_id, *flags)
        assert out.returncode == 0, out.stderr
        assert f"RUN echo build-step-{stamp}" in out.stdout and f"hello-{stamp}" in out.stdout, out.stdout
        assert out.stdout.index("COPY hello.txt") < out.stdout.index(f"hello-{stamp}\n"), out.stdout

    # `modal image pull` through the configured mirror, published under a name.
    out = server.modal("image", "pull", "registry.ferry.invalid/ferrytest/busybox:1", "--name", f"bb-{stamp}:v1", timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert f"bb-{stamp}:v1" in text
    tags = {r["tag"] for r in json.loads(server.modal("image", "names", "list", "--json").stdout)}
    assert f"bb-{stamp}:v1" in tags
    out = server.modal("image", "logs", "im-doesnotexist000")
    assert out.returncode != 0 and "not found" in (out.stdout + out.stderr).lower()


def test_aws_ecr_names_the_setting(kit):
    rc, text = run(kit["server"], """
    import modal
    app = modal.App("ferry-ecr")
    aws = modal.Secret.from_dict({"AWS_ACCESS_KEY_ID": "AKIAFERRYTEST", "AWS_SECRET_ACCESS_KEY": "ferry-not-a-key", "AWS_REGION": "us-east-1"})
    image = modal.Image.from_aws_ecr("000000000000.dkr.ecr.us-east-1.amazonaws.com/team/app:1", secret=aws)
    with app.run():
        image.build(app)
    """)
    assert rc != 0, text[-3000:]
    assert "--registry-mirror 000000000000.dkr.ecr.us-east-1.amazonaws.com=URL" in text, text[-3000:]
    assert "AWS" in text and "ferry-not-a-key" not in text


def test_python_without_a_ferry_base_is_installed_from_the_image(kit, tmp_path):
    """A registry image whose Python is a series Ferry has no base for (3.12 here, as
    `python:3.12-slim` says in PYTHON_VERSION) gets the client installed with the image's own
    Python; this image has none, so the call fails saying which Python and why."""
    busybox = Path("/bin/busybox").read_bytes()
    entries = [("dir", "bin", None), ("exe", "bin/busybox", busybox), ("dir", "tmp", None)]
    entries += [("link", f"bin/{a}", "busybox") for a in BUSYBOX_APPLETS]
    layer, diff = tar_layer(entries)
    layout = OciLayout(tmp_path / "py312")
    digest, size = layout.blob(layer)
    desc = layout.image([(digest, size, "application/vnd.oci.image.layer.v1.tar+gzip", diff)], ["PATH=/bin", "PYTHON_VERSION=3.12.7"])
    layout.tag("1", [desc])
    kit["registry"].push(tmp_path / "py312", "1", "ferrytest/py312:1")
    rc, text = run(kit["server"], """
    import modal
    app = modal.App("ferry-py312-registry")

    @app.function(image=modal.Image.from_registry("ferrytest/py312:1"))
    def hello():
        return "hi"

    with app.run():
        hello.remote()
    """, timeout=300)
    assert rc != 0, text[-3000:]
    assert "Python is 3.12" in text and "image's own Python" in text and "3.11, 3.13" in text, text[-3000:]


def test_volume_in_a_build_step(kit):
    """`run_commands(..., volumes=...)`: the step reads the volume, its writes are committed,
    and the volume's files are not part of the layer."""
    stamp = time.time_ns()
    rc, text = run(kit["server"], f"""
    import io, modal
    vol = modal.Volume.from_name("build-vol-{stamp}", create_if_missing=True)
    with vol.batch_upload() as b:
        b.put_file(io.BytesIO(b"seed-{stamp}"), "/seed")
    app = modal.App("ferry-build-volume")
    image = modal.Image.debian_slim().run_commands(
        "cat /vol/seed > /from-volume && echo written-{stamp} > /vol/written", volumes={{"/vol": vol}}
    )

    @app.function(image=image)
    def look():
        import os
        return open("/from-volume").read() + " " + str(os.path.exists("/vol/seed"))

    with app.run():
        print("LOOK", look.remote())
    print("WRITTEN", b"".join(vol.read_file("written")).decode().strip())
    """)
    assert rc == 0, text[-3000:]
    assert f"LOOK seed-{stamp} False" in text, text[-3000:]
    assert f"WRITTEN written-{stamp}" in text, text[-3000:]


def test_add_python_on_an_image_without_python(kit, tmp_path):
    """`add_python="3.11"` on a registry image with no Python and no libc (static busybox):
    Ferry's standalone Python runs there, with pip, and so do functions."""
    busybox = Path("/bin/busybox").read_bytes()
    entries = [("dir", "bin", None), ("exe", "bin/busybox", busybox), ("dir", "tmp", None), ("dir", "root", None)]
    entries += [("link", f"bin/{a}", "busybox") for a in BUSYBOX_APPLETS + ["ln", "env"]]
    layer, diff = tar_layer(entries)
    layout = OciLayout(tmp_path / "nopython")
    digest, size = layout.blob(layer)
    path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    desc = layout.image([(digest, size, "application/vnd.oci.image.layer.v1.tar+gzip", diff)], [path])
    layout.tag("1", [desc])
    kit["registry"].push(tmp_path / "nopython", "1", "ferrytest/nopython:1")
    stamp = time.time_ns()
    rc, text = run(kit["server"], f"""
    import modal
    app = modal.App("ferry-add-python")
    image = modal.Image.from_registry("ferrytest/nopython:1", add_python="3.11").run_commands(
        "python -m pip --version > /pip-version", "echo {stamp}"
    )

    @app.function(image=image)
    def where():
        import ctypes, json, sqlite3, ssl, sys
        return sys.executable + " " + sys.version.split()[0] + " " + open("/pip-version").read().split()[0]

    with app.run():
        print("WHERE", where.remote())
    """, timeout=900)
    assert rc == 0, text[-4000:]
    assert re.search(r"WHERE /usr/local/bin/python 3\.11\.\d+ pip", text), text[-4000:]


def test_export_round_trips_through_a_registry(kit, tmp_path):
    """`ferry images export` writes an image as an OCI layout of zstd layers; pushed to a
    registry with skopeo and pulled back by `from_registry`, it runs functions, and a file the
    build deleted stays deleted (whiteouts survive the round trip)."""
    server = kit["server"]
    stamp = time.time_ns()
    rc, text = run(server, f"""
    import modal
    app = modal.App("ferry-export")
    image = modal.Image.debian_slim().run_commands("echo exported-{stamp} > /exported && rm /etc/debian_version")
    with app.run():
        image.build(app)
        image.publish("exp-{stamp}:v1")
    """)
    assert rc == 0, text[-3000:]
    layout = tmp_path / "oci"
    out = server.ferry("images", "export", f"exp-{stamp}:v1", "--out", str(layout), "--tag", "v1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "exported" in out.stdout and "sha256:" in out.stdout, out.stdout
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_text())
    assert {l["mediaType"] for l in manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    kit["registry"].push(layout, "v1", f"exported/app:{stamp}")
    rc, text = run(server, f"""
    import os, modal
    app = modal.App("ferry-export-pull")

    @app.function(image=modal.Image.from_registry("exported/app:{stamp}"))
    def read():
        return open("/exported").read().strip() + " " + str(os.path.exists("/etc/debian_version"))

    with app.run():
        print("READ", read.remote())
    """)
    assert rc == 0, text[-3000:]
    assert f"READ exported-{stamp} False" in text, text[-3000:]
