"""Images with the real client: every Image method builds, build steps get the host's package
settings, registry images come from a real local registry, failures reach the client.

One server for the module on the shared test data dir (so the Debian base and the debian_slim
layer are reused), started with a package index and a registry of the test's own on loopback."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Ferry, ferry_bin
from imagekit import PackageIndex, Registry, base_rootfs, busybox_layout, outside_address, rootfs_layout

APPS = Path(__file__).parent / "apps"
DATA = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    index = PackageIndex(root / "www")
    for name in ["ferryhostpkg", "ferryhostpkg2", "ferryreqpkg", "ferryrequv", "ferrypyproj", "ferryoptpkg", "ferryuvsync"]:
        index.add("host", name, "1.0")
    for name in ["ferryuserpkg", "ferryuvpkg"]:
        index.add("user", name, "1.0")
        index.add("user", name, "2.0rc1")
    index.add_link("ferrylinkpkg", "1.0")
    index.add_link("ferrylinkuv", "1.0")
    index.start()
    registry = Registry(root / "registry").start()
    busybox_layout(root / "busybox")
    registry.push(root / "busybox", "1", "ferrytest/busybox:1", all_arches=True)

    files = root / "files"
    (files / "assets" / "sub").mkdir(parents=True)
    (files / "assets" / "a.txt").write_text("a")
    (files / "assets" / "b.skip").write_text("b")
    (files / "assets" / "sub" / "c.txt").write_text("c")
    (files / "local.txt").write_text("local file")
    (files / "src" / "ferrylocalmod").mkdir(parents=True)
    (files / "src" / "ferrylocalmod" / "__init__.py").write_text("ANSWER = 42\n")
    (files / "requirements.txt").write_text("ferryreqpkg\n")
    (files / "requirements-uv.txt").write_text("ferryrequv\n")
    (files / "pyproject.toml").write_text(textwrap.dedent("""
        [project]
        name = "ferry-pyproject-test"
        version = "0.1"
        dependencies = ["ferrypyproj"]
        [project.optional-dependencies]
        extra = ["ferryoptpkg"]
        """))
    (files / "uvproj").mkdir()
    (files / "uvproj" / "pyproject.toml").write_text(textwrap.dedent("""
        [project]
        name = "ferry-uv-sync-test"
        version = "0.1"
        requires-python = ">=3.11"
        dependencies = ["ferryuvsync"]
        """))
    (files / "poetryproj").mkdir()
    # Poetry reads its package sources from the project, not from pip's settings.
    (files / "poetryproj" / "pyproject.toml").write_text(textwrap.dedent(f"""
        [project]
        name = "ferry-poetry-test"
        version = "0.1"
        requires-python = ">=3.11,<4"
        dependencies = ["ferryhostpkg"]
        [tool.poetry]
        package-mode = false
        [[tool.poetry.source]]
        name = "local"
        url = "{index.url('host')}/"
        priority = "primary"
        """))
    (files / "docker" / "sub").mkdir(parents=True)
    (files / "docker" / "ctx.txt").write_text("from the context")
    (files / "docker" / "sub" / "nested.txt").write_text("nested")
    (files / "docker" / "unused.txt").write_text("not copied")
    (files / "docker" / "Dockerfile").write_text(textwrap.dedent("""
        FROM python:3.11-slim-bookworm
        ARG GREETING=hello
        WORKDIR /ctx
        COPY ctx.txt /ctx/ctx.txt
        COPY sub /ctx/sub
        RUN echo "$GREETING" > /ctx/greeting
        """))

    # The host's package settings, as an operator would have them, for this server only.
    saved = dict(os.environ)
    os.environ["PIP_EXTRA_INDEX_URL"] = index.url("host")
    try:
        server = Ferry(DATA, "--no-modal-profile", "--registry-mirror", f"default={registry.url}").start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    env = {
        "FERRY_IMG_DIR": str(files),
        # A user's own index and links page are elsewhere on the network, not on the host's
        # loopback (which build steps cannot reach): this machine's outside address.
        "FERRY_IMG_USER_INDEX": index.url("user", outside_address()),
        "FERRY_IMG_LINKS": index.links_url(outside_address()),
        "PYTHONPATH": f"{APPS}:{files / 'src'}",
    }
    yield {"server": server, "index": index, "registry": registry, "env": env, "root": root}
    server.stop()
    registry.stop()
    index.stop()


def run_client(kit, code: str, timeout: float = 900, **env):
    out = kit["server"].python(textwrap.dedent(code), timeout=timeout, **{**kit["env"], **env})
    return out.returncode, out.stdout + out.stderr


def test_serve_prints_what_builds_get(kit):
    text = Path(kit["server"].log.name).read_text()
    assert f"PIP_EXTRA_INDEX_URL={kit['index'].url('host')}" in text
    assert f"UV_EXTRA_INDEX_URL={kit['index'].url('host')}" in text
    assert f"default -> {kit['registry'].url}" in text


def test_every_image_method_builds(kit):
    code = """
    import json, modal
    from images import app, on_apt, on_host_index, on_user_options, on_requirements, on_pyproject, on_uv_sync
    from images import on_build_secret, on_config, on_copied, on_mounted, on_dockerfile, on_poetry
    V = "import importlib; result = {m: importlib.import_module(m).VERSION for m in %r}"
    checks = {
        "apt": (on_apt, "import subprocess; result = subprocess.run(['jq', '--version'], capture_output=True, text=True).stdout.strip()"),
        "host_index": (on_host_index, V % ["ferryhostpkg", "ferryhostpkg2"] + "; import six; result['six'] = bool(six.PY3)"),
        "user_options": (on_user_options, V % ["ferryuserpkg", "ferryuvpkg", "ferrylinkpkg", "ferrylinkuv"]),
        "requirements": (on_requirements, V % ["ferryreqpkg", "ferryrequv"]),
        "pyproject": (on_pyproject, V % ["ferrypyproj", "ferryoptpkg"]),
        "poetry": (on_poetry, "import ferryhostpkg, subprocess; result = [ferryhostpkg.VERSION, subprocess.run(['poetry', '--version'], capture_output=True, text=True).returncode]"),
        "uv_sync": (on_uv_sync, V % ["ferryuvsync"] + "; import sys; result['prefix'] = sys.prefix"),
        "build_secret": (on_build_secret, "import os; result = [open('/secret-ok').read().strip(), os.environ.get('FERRY_BUILD_SECRET')]"),
        "config": (on_config, "import os; result = [os.environ.get('FERRY_A'), os.environ.get('FERRY_B'), os.environ.get('FERRY_DC'), open('/work/dir/bash-version').read().strip() != '', open('/dc').read().strip()]"),
        "copied": (on_copied, "import os, ferrylocalmod; result = [open('/data/copy.txt').read(), sorted(os.listdir('/assets')), open('/assets/sub/c.txt').read(), ferrylocalmod.ANSWER, ferrylocalmod.__file__]"),
        "mounted": (on_mounted, "import os, ferrylocalmod; result = [open('/data/local.txt').read(), sorted(os.listdir('/assets')), ferrylocalmod.ANSWER]"),
        "dockerfile": (on_dockerfile, "import os; result = [open('/ctx/greeting').read().strip(), open('/ctx/ctx.txt').read(), open('/ctx/sub/nested.txt').read(), os.path.exists('/ctx/unused.txt')]"),
    }
    with modal.enable_output():
        with app.run():
            for name, (fn, script) in checks.items():
                print("RESULT " + name + " " + json.dumps(fn.remote(script)))
    """
    rc, text = run_client(kit, code, timeout=1500)
    assert rc == 0, text[-6000:]
    results = {m.group(1): json.loads(m.group(2)) for m in re.finditer(r"^RESULT (\w+) (.*)$", text, re.M)}
    assert results["apt"].startswith("jq-"), results
    assert results["host_index"] == {"ferryhostpkg": "1.0", "ferryhostpkg2": "1.0", "six": True}
    # index_url + pre for pip; extra_index_url without pre for uv; find_links for both.
    assert results["user_options"] == {"ferryuserpkg": "2.0rc1", "ferryuvpkg": "1.0", "ferrylinkpkg": "1.0", "ferrylinkuv": "1.0"}
    assert results["requirements"] == {"ferryreqpkg": "1.0", "ferryrequv": "1.0"}
    assert results["pyproject"] == {"ferrypyproj": "1.0", "ferryoptpkg": "1.0"}
    assert results["poetry"] == ["1.0", 0]
    assert results["uv_sync"]["ferryuvsync"] == "1.0" and results["uv_sync"]["prefix"] == "/.uv/.venv"
    # The secret was there for the build step only.
    assert results["build_secret"] == ["seen", None]
    # Values are quoted by the client, so `$HOME` stays literal, as in Docker.
    assert results["config"] == ["one two", "$HOME-x", "yes", True, "dc"]
    assert results["copied"][:4] == ["local file", ["a.txt", "sub"], "c", 42]
    assert results["mounted"] == ["local file", ["a.txt", "sub"], 42]
    assert results["dockerfile"] == ["ahoy", "from the context", "nested", False]


def test_prepare_builds_the_layer_the_client_asks_for(kit):
    # The client built Image.debian_slim() above; `ferry images prepare` builds the same layer,
    # so it finds it built (and a new data dir's first `modal run` finds prepare's layer).
    out = subprocess.run([ferry_bin(), "images", "prepare", "--data-dir", str(DATA)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert re.search(r'Image.debian_slim\(python_version="3.11"\) layer \w+ \(already built\)', out.stdout), out.stdout + out.stderr


def test_failing_build_reports_exit_code_and_log(kit, tmp_path):
    app = tmp_path / "failing.py"
    app.write_text(textwrap.dedent(f"""
        import modal
        app = modal.App("ferry-failing-image")
        image = modal.Image.debian_slim().run_commands("echo about-to-fail-{time.time_ns()}; echo on-stderr >&2; exit 7")

        @app.function(image=image)
        def f():
            return 1
        """))
    out = kit["server"].modal("run", str(app), timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "exit code 7" in text, text
    assert "about-to-fail" in text and "on-stderr" in text, text
    # The server keeps running and serves the next build.
    assert kit["server"].proc.poll() is None


def stamp_app(tmp_path: Path, name: str) -> Path:
    app = tmp_path / f"{name}.py"
    app.write_text(textwrap.dedent(f"""
        import modal
        app = modal.App("{name}")
        image = modal.Image.from_registry("python:3.11-slim-bookworm").run_commands("date +%s%N > /stamp")

        @app.function(image=image)
        def stamp():
            return open("/stamp").read().strip()

        @app.local_entrypoint()
        def main():
            print("STAMP", stamp.remote())
        """))
    return app


def stamp_of(out) -> str:
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    return re.search(r"STAMP (\d+)", text).group(1)


def test_cache_hit_force_build_and_ignore_cache(kit, tmp_path):
    app = stamp_app(tmp_path, f"ferry-stamp-{time.time_ns()}")
    server = kit["server"]
    first = stamp_of(server.modal("run", str(app), timeout=600))
    # Same definition: the layer is reused, so the file stamped at build time is the same.
    assert stamp_of(server.modal("run", str(app), timeout=600)) == first
    forced = stamp_of(server.modal("run", str(app), timeout=600, MODAL_FORCE_BUILD="1"))
    assert forced != first
    ignored = stamp_of(server.modal("run", str(app), timeout=600, MODAL_IGNORE_CACHE="1"))
    assert ignored not in (first, forced)


def test_concurrent_builds_run_once_and_stream_to_every_client(kit, tmp_path):
    app = tmp_path / "together.py"
    marker = f"together-{time.time_ns()}"
    app.write_text(textwrap.dedent(f"""
        import modal
        app = modal.App("ferry-together")
        image = modal.Image.from_registry("python:3.11-slim-bookworm").run_commands("echo {marker}; sleep 3; date +%s%N > /stamp")

        @app.function(image=image)
        def stamp():
            return open("/stamp").read().strip()

        @app.local_entrypoint()
        def main():
            print("STAMP", stamp.remote())
        """))
    server = kit["server"]
    env = server.env()
    cli = str(Path(sys.executable).parent / "modal")
    procs = [subprocess.Popen([cli, "run", str(app)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        # Both clients saw the one build's output live.
        assert marker in out, out[-3000:]
    # One build: both containers read the file it stamped.
    stamps = {re.search(r"STAMP (\d+)", out).group(1) for out in outs}
    assert len(stamps) == 1, stamps


def test_image_from_id(kit):
    rc, text = run_client(kit, f"""
    import modal
    app = modal.App("ferry-from-id")
    image = modal.Image.from_registry("python:3.11-slim-bookworm").run_commands("echo {time.time_ns()} > /id-stamp")
    with app.run():
        image.build(app)
        print("ID", image.object_id)
    """)
    assert rc == 0, text
    image_id = re.search(r"ID (im-\w+)", text).group(1)
    rc, text = run_client(kit, f"""
    import modal
    app = modal.App("ferry-from-id-use")
    image = modal.Image.from_id({image_id!r})

    @app.function(image=image)
    def read():
        return open("/id-stamp").read().strip()

    with app.run():
        print("READ", read.remote())
    """)
    assert rc == 0, text
    assert re.search(r"READ \d+", text), text
    rc, text = run_client(kit, """
    import modal
    app = modal.App("ferry-from-id-missing")

    @app.function(image=modal.Image.from_id("im-doesnotexist000000000000000000"))
    def f():
        pass

    with app.run():
        pass
    """)
    assert rc != 0 and "not found" in text.lower(), text


def test_a_python_ferry_does_not_make_runs_on_the_nearest_series(kit, tmp_path):
    """`python_version="3.12"`, which neither Ferry's Debian bases nor the test's registry have:
    the image builds on the 3.11 base, the build log says so, and functions run on it.
    `add_python="3.12"` gets the 3.11 standalone Python. `ferry serve --exact-python` refuses
    both, naming the series it makes."""
    rc, text = run_client(kit, """
    import modal
    app = modal.App("ferry-py312")

    def version():
        import sys
        return "%d.%d" % sys.version_info[:2]

    slim = app.function(image=modal.Image.debian_slim(python_version="3.12"), name="slim", serialized=True)(version)
    # Built again each run, so that its build log is shown.
    plain = app.function(image=modal.Image.from_registry("python:3.12-slim-bookworm", force_build=True), name="plain", serialized=True)(version)

    with modal.enable_output():
        with app.run():
            print("VERSIONS", slim.remote(), plain.remote())
    """)
    assert rc == 0, text[-4000:]
    assert "VERSIONS 3.11 3.11" in text, text[-4000:]
    assert "Python 3.12 is not one this Ferry host makes (it makes 3.11 and 3.13)" in text, text[-4000:]
    assert "runs on Ferry's Debian bookworm base with Python 3.11" in text and "--exact-python" in text, text[-4000:]

    rc, text = run_client(kit, f"""
    import modal
    app = modal.App("ferry-registry-add-python-stand-in")
    image = modal.Image.from_registry("ferrytest/busybox:1", add_python="3.12").run_commands(
        "echo {time.time_ns()}", "/usr/local/bin/python -c 'import sys; print(\\"ADDED %d.%d\\" % sys.version_info[:2])'"
    )
    with modal.enable_output():
        with app.run():
            image.build(app)
    """)
    assert rc == 0, text[-4000:]
    assert "ADDED 3.11" in text, text[-4000:]

    # The strict server: a data dir of its own, as refusing needs no image.
    strict = Ferry(tmp_path / "strict", "--no-modal-profile", "--exact-python", "--registry-mirror", f"default={kit['registry'].url}").start()
    try:
        for code in [
            'modal.Image.debian_slim(python_version="3.12")',
            'modal.Image.from_registry("ferrytest/busybox:1", add_python="3.12")',
        ]:
            out = strict.python(textwrap.dedent(f"""
            import modal
            app = modal.App("ferry-py312-strict")
            with app.run():
                {code}.build(app)
            """), timeout=300)
            text = out.stdout + out.stderr
            assert out.returncode != 0, text[-3000:]
            assert "3.12" in text and "3.11 (Debian bookworm)" in text and "3.13 (Debian trixie)" in text, text[-3000:]
    finally:
        strict.stop()


def test_registry_image_layers_whiteouts_and_arch(kit):
    # The busybox image has no Python: the build itself checks what the layers hold.
    checks = (
        'test "$(cat /etc/arch)" = amd64 && test ! -e /data/old.txt && test -e /data/keep.txt '
        '&& test ! -e /cache/stale.txt && test -e /cache/fresh.txt && test "$FERRY_FROM_REGISTRY" = 1 '
        '&& cat /etc/marker'
    )
    rc, text = run_client(kit, f"""
    import modal
    app = modal.App("ferry-registry-busybox")
    image = modal.Image.from_registry("ferrytest/busybox:1").run_commands({checks!r}, "echo {time.time_ns()}")
    with modal.enable_output():
        with app.run():
            image.build(app)
    """)
    assert rc == 0, text[-4000:]
    assert "from-registry-amd64" in text, text
    # A registry Ferry has no mirror for: the error names the setting.
    rc, text = run_client(kit, """
    import modal
    app = modal.App("ferry-registry-unconfigured")
    image = modal.Image.from_registry("unconfigured.invalid/team/app:1")
    with app.run():
        image.build(app)
    """)
    assert rc != 0
    assert "--registry-mirror unconfigured.invalid=URL" in text, text
    # A tag the registry does not have.
    rc, text = run_client(kit, """
    import modal
    app = modal.App("ferry-registry-missing")
    with app.run():
        modal.Image.from_registry("ferrytest/busybox:nope").build(app)
    """)
    assert rc != 0 and "ferrytest/busybox:nope" in text and "--registry-mirror" in text, text


def test_registry_image_runs_functions_and_private_registry(kit, tmp_path):
    # Ferry's own Debian base, pushed as a one-layer image into a registry that needs a login.
    private = Registry(tmp_path / "private", user=("ferry", "s3cret-pw")).start()
    try:
        rootfs_layout(tmp_path / "debian", base_rootfs(DATA))
        # A tag of its own per run: the layer cache is keyed by the reference as written.
        ref = f"team/debian-python:r{time.time_ns()}"
        private.push(tmp_path / "debian", "1", ref)
        server = Ferry(DATA, "--no-modal-profile", "--registry-mirror", f"default={private.url}").start()
        try:
            code = f"""
            import modal
            app = modal.App("ferry-registry-python")
            creds = modal.Secret.from_dict({{"REGISTRY_USERNAME": "ferry", "REGISTRY_PASSWORD": "s3cret-pw"}})
            image = modal.Image.from_registry("{ref}", secret=creds).run_commands("echo pulled > /pulled")

            @app.function(image=image)
            def where():
                import sys
                return open("/pulled").read().strip() + " " + sys.version.split()[0]

            with app.run():
                print("WHERE", where.remote())
            """
            out = server.python(textwrap.dedent(code), timeout=900)
            text = out.stdout + out.stderr
            assert out.returncode == 0, text[-4000:]
            assert re.search(r"WHERE pulled 3\.11\.\d+", text), text
            assert "s3cret-pw" not in Path(server.log.name).read_text()
            # Without the credentials the registry refuses, and the error says what to check.
            out = server.python(textwrap.dedent(f"""
            import modal
            app = modal.App("ferry-registry-nologin")
            with app.run():
                modal.Image.from_registry("{ref}").run_commands("true").build(app)
            """), timeout=300)
            text = out.stdout + out.stderr
            assert out.returncode != 0 and "REGISTRY_USERNAME" in text, text
        finally:
            server.stop()
    finally:
        private.stop()


def test_images_list_and_gc(kit, tmp_path, monkeypatch):
    # A data dir of its own (the base copied from the shared one) so collecting is safe.
    data = tmp_path / "data"
    monkeypatch.setenv("FERRY_BASE_SEED", str(DATA))
    server = Ferry(data, "--no-modal-profile").start()
    try:
        ids = []
        for n in (1, 2):
            out = server.python(textwrap.dedent(f"""
            import modal
            app = modal.App("ferry-gc-{n}")
            image = modal.Image.from_registry("python:3.11-slim-bookworm").run_commands("head -c 6000000 /dev/urandom > /big-{n}")
            with app.run():
                image.build(app)
                print("ID", image.object_id)
            """), timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
            ids.append(re.search(r"ID (im-\w+)", out.stdout).group(1))
            time.sleep(1.1)  # distinct last-use times
        ferry = lambda *a: subprocess.run([ferry_bin(), "images", *a, "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
        listed = ferry("list")
        assert listed.returncode == 0, listed.stderr
        assert "base: Debian bookworm, Python 3.11" in listed.stdout and "/big-1" in listed.stdout and "/big-2" in listed.stdout, listed.stdout
        total = float(re.search(r"layers, ([\d.]+) MiB in all", listed.stdout).group(1))
        # A budget 3 MiB under the total: only the least recently used layer (big-1) goes.
        gc = ferry("gc", "--budget", f"{int(total) - 3}M")
        assert gc.returncode == 0, gc.stderr
        assert gc.stdout.count("removed ") >= 2 and "removed 1 layers" in gc.stdout, gc.stdout
        listed = ferry("list").stdout
        assert "/big-1" not in listed and "/big-2" in listed and "base: Debian" in listed, listed
        # The image whose layer was collected builds again when asked for.
        out = server.python(textwrap.dedent("""
        import modal
        app = modal.App("ferry-gc-1")
        image = modal.Image.from_registry("python:3.11-slim-bookworm").run_commands("head -c 6000000 /dev/urandom > /big-1")
        with app.run():
            image.build(app)
        """), timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "/big-1" in ferry("list").stdout
    finally:
        server.stop()


def test_run_function_builds_a_layer(kit, tmp_path):
    app = tmp_path / "run_function_app.py"
    app.write_text(textwrap.dedent("""
        import modal
        app = modal.App("ferry-run-function")

        def bake(text):
            open("/baked", "w").write(text)

        image = modal.Image.debian_slim().run_function(bake, args=("baked by the build step",))

        @app.function(image=image)
        def f():
            return open("/baked").read()

        @app.local_entrypoint()
        def main():
            print("GOT", f.remote())
        """))
    out = kit["server"].modal("run", str(app), timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "GOT baked by the build step" in text, text
