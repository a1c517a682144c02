"""Local stand-ins for what image builds reach on a real machine, all on loopback and started by
the tests themselves: a PEP 503 package index with wheels the test makes, and a real OCI
registry (Debian's `docker-registry`) with images the test assembles and pushes with skopeo."""

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


# --- a package index ---------------------------------------------------------------------------

def make_wheel(dest: Path, name: str, version: str, body: str = "") -> Path:
    """A pure-Python wheel whose module reports its own version."""
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n{body}",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: ferry-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def outside_address() -> str:
    """This machine's address on its default route (not loopback): what a container's NAT
    reaches, as it would reach an index on another host. Nothing is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("198.51.100.1", 9))
        return s.getsockname()[0]


class PackageIndex:
    """`python -m http.server` over a directory: `<root>/<index>/simple/<name>/` lists wheels,
    which pip and uv read as a simple index; `<root>/links/` serves as a find-links page."""

    def __init__(self, root: Path):
        self.root = root
        self.proc = None
        self.port = None

    def add(self, index: str, name: str, version: str):
        make_wheel(self.root / index / "simple" / name, name, version)

    def add_link(self, name: str, version: str):
        make_wheel(self.root / "links", name, version)

    def url(self, index: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{index}/simple"

    def links_url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/links/"

    def start(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            # Every address of this machine: build steps reach the operator's index on the
            # loopback (served into their namespace) and a user's index on the host's address.
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "0.0.0.0", "--directory", str(self.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, "package index")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# --- a registry --------------------------------------------------------------------------------

class Registry:
    """Debian's docker-registry on a free loopback port with its storage in a temp dir;
    optionally with an htpasswd user."""

    def __init__(self, root: Path, user: tuple[str, str] | None = None):
        self.root = root
        self.user = user
        self.proc = None
        self.port = None

    def start(self):
        if not shutil.which("docker-registry") or not shutil.which("skopeo"):
            raise RuntimeError("docker-registry and skopeo are needed: run tools/setup.d/images.sh")
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.user:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt

            hashed = crypt.crypt(self.user[1], crypt.mksalt(crypt.METHOD_BLOWFISH))
            (self.root / "htpasswd").write_text(f"{self.user[0]}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: ferry-test\n    path: {self.root / 'htpasswd'}\n"
        (self.root / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n{auth}"
        )
        self.log = open(self.root / "registry.log", "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.root / "config.yml")], stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, "docker-registry")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, layout: Path, tag: str, repo: str, all_arches: bool = False) -> float:
        """Copies an OCI layout into the registry; returns the seconds skopeo took."""
        args = ["skopeo", "copy", "--dest-tls-verify=false", "--quiet"]
        if all_arches:
            args.append("--all")
        if self.user:
            args += ["--dest-creds", f"{self.user[0]}:{self.user[1]}"]
        started = time.time()
        subprocess.run(args + [f"oci:{layout}:{tag}", f"docker://127.0.0.1:{self.port}/{repo}"], check=True, capture_output=True, timeout=600)
        return time.time() - started

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class OciLayout:
    """An OCI image layout on disk, written by hand: blobs, manifests, an index."""

    def __init__(self, path: Path):
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.manifests = []

    def blob(self, data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (self.path / "blobs" / "sha256" / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    def blob_file(self, src: Path) -> tuple[str, int]:
        h = hashlib.sha256()
        with open(src, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        shutil.move(str(src), self.path / "blobs" / "sha256" / digest)
        return f"sha256:{digest}", (self.path / "blobs" / "sha256" / digest).stat().st_size

    def image(self, layers: list[tuple[str, int, str, str]], env: list[str], arch: str = "amd64", cmd=None) -> dict:
        """`layers`: (digest, size, media type, diff id). Returns the manifest descriptor."""
        config = {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": env, "Cmd": cmd or ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [l[3] for l in layers]},
        }
        cdigest, csize = self.blob(json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
            "layers": [{"mediaType": l[2], "digest": l[0], "size": l[1]} for l in layers],
        }
        mdigest, msize = self.blob(json.dumps(manifest).encode())
        return {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": mdigest,
            "size": msize,
            "platform": {"architecture": arch, "os": "linux"},
        }

    def tag(self, tag: str, descriptors: list[dict]):
        """Tags one manifest, or several as a multi-arch index."""
        if len(descriptors) == 1:
            desc = dict(descriptors[0])
        else:
            index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descriptors}
            digest, size = self.blob(json.dumps(index).encode())
            desc = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": size}
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.manifests.append(desc)
        (self.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.manifests}))


def tar_layer(entries: list[tuple[str, str, bytes | str | None]]) -> tuple[bytes, str]:
    """A gzip layer from (kind, path, data) entries: kind is file, dir, link (symlink) or
    whiteout; returns (gzip bytes, diff id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for kind, path, data in entries:
            info = tarfile.TarInfo(path)
            info.mtime = 1700000000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, data
                t.addfile(info)
            else:
                payload = data if isinstance(data, bytes) else (data or "").encode()
                info.size, info.mode = len(payload), 0o755 if kind == "exe" else 0o644
                t.addfile(info, io.BytesIO(payload))
    raw_bytes = raw.getvalue()
    return gzip.compress(raw_bytes, mtime=0), "sha256:" + hashlib.sha256(raw_bytes).hexdigest()


BUSYBOX_APPLETS = ["sh", "cat", "ls", "mkdir", "rm", "cp", "date", "test", "dirname", "echo", "grep", "true"]


def busybox_layout(path: Path, tag: str = "1") -> OciLayout:
    """A two-layer busybox image, as a multi-arch index (the arm64 entry has other content):
    layer 2 deletes a file of layer 1 (a whiteout) and replaces a directory (opaque)."""
    busybox = Path("/bin/busybox").read_bytes()
    layout = OciLayout(path)
    descs = []
    for arch in ("arm64", "amd64"):
        base = [("dir", "bin", None), ("exe", "bin/busybox", busybox)]
        base += [("link", f"bin/{a}", "busybox") for a in BUSYBOX_APPLETS]
        base += [
            ("dir", "etc", None), ("file", "etc/arch", arch + "\n"),
            ("dir", "data", None), ("file", "data/old.txt", "old\n"), ("file", "data/keep.txt", "keep\n"),
            ("dir", "cache", None), ("file", "cache/stale.txt", "stale\n"),
            ("dir", "tmp", None),
        ]
        l1, d1 = tar_layer(base)
        l2, d2 = tar_layer([
            ("dir", "data", None), ("whiteout", "data/.wh.old.txt", ""),
            ("dir", "cache", None), ("whiteout", "cache/.wh..wh..opq", ""), ("file", "cache/fresh.txt", "fresh\n"),
            ("file", "etc/marker", f"from-registry-{arch}\n"),
        ])
        layers = []
        for data, diff in ((l1, d1), (l2, d2)):
            digest, size = layout.blob(data)
            layers.append((digest, size, "application/vnd.oci.image.layer.v1.tar+gzip", diff))
        descs.append(layout.image(layers, ["PATH=/bin", "FERRY_FROM_REGISTRY=1"], arch=arch))
    layout.tag(tag, descs)
    return layout


def rootfs_layout(path: Path, rootfs: Path, tag: str = "1", gzip_layer: bool = False) -> OciLayout:
    """A one-layer image of a whole root filesystem (e.g. Ferry's Debian base), made with tar."""
    layout = OciLayout(path)
    tmp = path / "layer.tar"
    subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tmp), "."], check=True)
    h = hashlib.sha256()
    with open(tmp, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    diff = "sha256:" + h.hexdigest()
    media = "application/vnd.oci.image.layer.v1.tar"
    if gzip_layer:
        subprocess.run(["gzip", "-1", str(tmp)], check=True)
        tmp = path / "layer.tar.gz"
        media += "+gzip"
    digest, size = layout.blob_file(tmp)
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
    layout.tag(tag, [layout.image([(digest, size, media, diff)], env, cmd=["python3"])])
    return layout


def base_rootfs(data_dir: Path, series: str = "3.11") -> Path:
    """The root filesystem of Ferry's Debian base for `series` in a data dir."""
    for layer in (data_dir / "images" / "layers").iterdir():
        meta = layer / "layer.json"
        if meta.exists():
            origin = json.loads(meta.read_text()).get("origin", {})
            if origin.get("kind") == "base" and origin.get("python_series") == series:
                return layer / "fs"
    raise RuntimeError(f"no Python {series} base in {data_dir}; run `ferry images prepare`")
