"""Image builds on Ferry against the package tools and registry client run by hand on the same
machine, in the same run:

1. `uv_pip_install` of a fixed package set (a new layer each round) against raw
   `uv pip install --target <fresh dir> --no-cache --compile-bytecode` of the same set with the
   same uv binary (the one in Ferry's base image), both with a cold cache.
2. A cached rebuild: `image.build()` of an image whose layers are all built (client wall time,
   which bounds the server's share).
3. `Image.from_registry` of a ~100 MB image (Ferry's Debian base as one gzip layer, in a local
   `docker-registry`) into an empty data dir, against `skopeo copy` of the same image to an OCI
   layout (download only) and `skopeo copy` plus unpacking the layer with tar.

Ratios are Ferry / baseline (lower is better). Every server and registry is stopped at the end.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "serve"))

from conftest import Ferry  # noqa: E402
from imagekit import Registry, base_rootfs, rootfs_layout  # noqa: E402

PACKAGES = ["requests==2.32.3", "attrs==24.2.0", "packaging==24.1"]


def client(server: Ferry, code: str, timeout: float = 900) -> str:
    out = server.python(textwrap.dedent(code), timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stdout + out.stderr)
    return out.stdout


def timed_build(server: Ferry, image_expr: str) -> float:
    out = client(server, f"""
    import time, modal
    app = modal.App("bench-images")
    image = {image_expr}
    with app.run():
        t = time.perf_counter()
        image.build(app)
        print("SECONDS", time.perf_counter() - t)
    """)
    return float(out.split("SECONDS")[-1].strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data-dir", default=os.environ.get("FERRY_BENCH_DATA_DIR", "/var/tmp/ferry-bench-images"))
    ap.add_argument("--seed", default=os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"), help="data dir with a prepared base")
    args = ap.parse_args()
    os.environ["FERRY_BASE_SEED"] = args.seed
    data = Path(args.data_dir)
    tmp = Path(tempfile.mkdtemp(prefix="ferry-bench-images-"))
    servers, registries = [], []
    try:
        server = Ferry(data, "--no-modal-profile").start()
        servers.append(server)
        base = 'modal.Image.from_registry("python:3.11-slim-bookworm")'
        timed_build(server, base)  # the base layer, prepared or copied from the seed

        # 1. uv_pip_install against raw uv.
        uv = tmp / "uv"
        shutil.copy(base_rootfs(data) / "usr/local/bin/uv", uv)
        python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        pkgs = ", ".join(repr(p) for p in PACKAGES)
        ferry_uv, raw_uv = [], []
        nonce = time.time_ns()
        for r in range(args.rounds):
            ferry_uv.append(timed_build(server, f'{base}.env({{"BENCH": "{nonce}-{r}"}}).uv_pip_install({pkgs})'))
            target = tmp / f"target-{r}"
            t = time.perf_counter()
            subprocess.run([str(uv), "pip", "install", "--quiet", "--no-cache", "--compile-bytecode", "--python", python, "--target", str(target), *PACKAGES], check=True)
            raw_uv.append(time.perf_counter() - t)

        # 2. A cached rebuild of the last image.
        cached = [timed_build(server, f'{base}.env({{"BENCH": "{nonce}-0"}}).uv_pip_install({pkgs})') for _ in range(args.rounds)]

        # 3. from_registry against skopeo.
        registry = Registry(tmp / "registry").start()
        registries.append(registry)
        rootfs_layout(tmp / "layout", base_rootfs(data), gzip_layer=True)
        registry.push(tmp / "layout", "1", "bench/debian:1")
        size = sum(f.stat().st_size for f in (tmp / "layout" / "blobs" / "sha256").iterdir())
        ferry_pull, skopeo_pull, skopeo_unpack = [], [], []
        for r in range(args.rounds):
            pull_server = Ferry(tmp / f"pull-{r}", "--no-modal-profile", "--registry-mirror", f"default={registry.url}").start()
            servers.append(pull_server)
            ferry_pull.append(timed_build(pull_server, 'modal.Image.from_registry("bench/debian:1")'))
            pull_server.stop()
            shutil.rmtree(tmp / f"pull-{r}", ignore_errors=True)
            dest = tmp / f"copy-{r}"
            t = time.perf_counter()
            subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://127.0.0.1:{registry.port}/bench/debian:1", f"oci:{dest}:1"], check=True)
            skopeo_pull.append(time.perf_counter() - t)
            layer = max((dest / "blobs" / "sha256").iterdir(), key=lambda f: f.stat().st_size)
            (dest / "fs").mkdir()
            subprocess.run(["tar", "-xzf", str(layer), "-C", str(dest / "fs")], check=True)
            skopeo_unpack.append(time.perf_counter() - t)
            shutil.rmtree(dest, ignore_errors=True)

        med = statistics.median
        print(f"\nImage builds, median of {args.rounds} rounds (packages: {' '.join(PACKAGES)}; image {size / 1e6:.0f} MB compressed)")
        print(f"{'measure':<44} {'Ferry':>9} {'baseline':>9} {'ratio':>7}")
        print(f"{'uv_pip_install vs raw uv pip install':<44} {med(ferry_uv):>8.2f}s {med(raw_uv):>8.2f}s {med(ferry_uv) / med(raw_uv):>7.2f}")
        print(f"{'cached rebuild (image.build, client wall)':<44} {med(cached) * 1000:>7.0f}ms {'':>9} {'':>7}")
        print(f"{'from_registry vs skopeo copy':<44} {med(ferry_pull):>8.2f}s {med(skopeo_pull):>8.2f}s {med(ferry_pull) / med(skopeo_pull):>7.2f}")
        print(f"{'from_registry vs skopeo copy + tar -x':<44} {med(ferry_pull):>8.2f}s {med(skopeo_unpack):>8.2f}s {med(ferry_pull) / med(skopeo_unpack):>7.2f}")
    finally:
        for s in servers:
            s.stop()
        for r in registries:
            r.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
