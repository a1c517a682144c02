"""A memory-snapshot class (tests/serve/test_coldstart.py writes it out with VERSION and the
names filled in, so that a new version is new code)."""

import os
import time

import modal

VERSION = "@VERSION@"
app = modal.App("@APP@")
counts = modal.Dict.from_name("@DICT@", create_if_missing=True)


@app.cls(image=modal.Image.debian_slim(), enable_memory_snapshot=True, max_containers=10, scaledown_window=2)
class Snapper:
    @modal.enter(snap=True)
    def load(self):
        self.loaded = VERSION
        self.snap_pid = os.getpid()
        counts[f"snap-{VERSION}-{time.time_ns()}"] = os.getpid()

    @modal.enter(snap=False)
    def warm(self):
        counts[f"enter-{VERSION}-{os.environ['MODAL_TASK_ID']}"] = os.getpid()

    @modal.method()
    def info(self, i: int):
        time.sleep(1.5)
        return {
            "i": i,
            "loaded": self.loaded,
            "version": VERSION,
            "task": os.environ["MODAL_TASK_ID"],
            "pid": os.getpid(),
            "snap_pid": self.snap_pid,
            "host_uid": int(open("/proc/self/uid_map").read().split()[1]),
            "net": sorted(os.listdir("/sys/class/net")),
        }
