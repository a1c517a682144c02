"""One image per Image method; each function runs a probe script in its image.

The local files and index URLs come from the test (FERRY_IMG_*); in containers the images are
not rebuilt, so the defaults there never matter."""

import os

import modal

D = os.environ.get("FERRY_IMG_DIR", "/nonexistent")
USER_INDEX = os.environ.get("FERRY_IMG_USER_INDEX", "http://127.0.0.1:9/simple")
LINKS = os.environ.get("FERRY_IMG_LINKS", "http://127.0.0.1:9/links/")

app = modal.App("ferry-images")
base = modal.Image.debian_slim()

apt = base.apt_install("jq")
# Package settings the host gives (an extra index with ferryhostpkg) reach pip and uv; six comes
# from the host's own configured index (through its CA bundle and proxy settings).
host_index = base.pip_install("ferryhostpkg").uv_pip_install("ferryhostpkg2", "six")
# The user's own options win over the host's. The user's index is plain http on another
# address than the loopback, which pip only reads when told to trust it.
TRUST = "--trusted-host " + USER_INDEX.split("/")[2].split(":")[0]
user_options = (
    base.pip_install("ferryuserpkg", index_url=USER_INDEX, pre=True, extra_options="--no-deps " + TRUST)
    .uv_pip_install("ferryuvpkg", extra_index_url=USER_INDEX)
    .pip_install("ferrylinkpkg", find_links=LINKS, extra_options=TRUST)
    .uv_pip_install("ferrylinkuv", find_links=LINKS)
)
requirements = base.pip_install_from_requirements(f"{D}/requirements.txt").uv_pip_install(requirements=[f"{D}/requirements-uv.txt"])
pyproject = base.pip_install_from_pyproject(f"{D}/pyproject.toml", optional_dependencies=["extra"])
uv_sync = base.uv_sync(f"{D}/uvproj")
# Poetry itself comes from the host's index; the project names its own package source.
poetry = base.poetry_install_from_file(f"{D}/poetryproj/pyproject.toml", ignore_lockfile=True)
build_secret = base.run_commands(
    'test "$FERRY_BUILD_SECRET" = hush && echo seen > /secret-ok',
    secrets=[modal.Secret.from_dict({"FERRY_BUILD_SECRET": "hush"})],
)
config = (
    base.env({"FERRY_A": "one two", "FERRY_B": "$HOME-x"})
    .workdir("/work/dir")
    .shell(["/bin/bash", "-c"])
    .run_commands("echo \"$BASH_VERSION\" > bash-version")
    .dockerfile_commands(["ENV FERRY_DC=yes", "RUN echo dc > /dc", "LABEL x=y"])
    .entrypoint([])
)
copied = (
    base.add_local_file(f"{D}/local.txt", "/data/local.txt", copy=True)
    .add_local_dir(f"{D}/assets", "/assets", copy=True, ignore=["*.skip"])
    .add_local_python_source("ferrylocalmod", copy=True)
    .run_commands("cat /data/local.txt > /data/copy.txt")
)
mounted = (
    base.add_local_dir(f"{D}/assets", "/assets", ignore=["*.skip"])
    .add_local_file(f"{D}/local.txt", "/data/local.txt")
    .add_local_python_source("ferrylocalmod")
)
dockerfile = modal.Image.from_dockerfile(f"{D}/docker/Dockerfile", context_dir=f"{D}/docker", build_args={"GREETING": "ahoy"})

with host_index.imports():
    import ferryhostpkg  # noqa: F401  (only in the image)


def probe(script: str):
    scope: dict = {}
    exec(script, scope)
    return scope.get("result")


@app.function(image=apt)
def on_apt(script: str):
    return probe(script)


@app.function(image=host_index)
def on_host_index(script: str):
    return probe(script)


@app.function(image=user_options)
def on_user_options(script: str):
    return probe(script)


@app.function(image=requirements)
def on_requirements(script: str):
    return probe(script)


@app.function(image=pyproject)
def on_pyproject(script: str):
    return probe(script)


@app.function(image=uv_sync)
def on_uv_sync(script: str):
    return probe(script)


@app.function(image=poetry)
def on_poetry(script: str):
    return probe(script)


@app.function(image=build_secret)
def on_build_secret(script: str):
    return probe(script)


@app.function(image=config)
def on_config(script: str):
    return probe(script)


@app.function(image=copied)
def on_copied(script: str):
    return probe(script)


@app.function(image=mounted)
def on_mounted(script: str):
    return probe(script)


@app.function(image=dockerfile)
def on_dockerfile(script: str):
    return probe(script)
