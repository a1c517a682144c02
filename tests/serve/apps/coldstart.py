"""Cold starts from standby containers (tests/serve/test_coldstart.py, bench/functions)."""

import os
import time

import modal

app = modal.App(os.environ.get("FERRY_COLD_APP", "ferry-coldstart"))
image = modal.Image.debian_slim()


@app.function(image=image, secrets=[modal.Secret.from_dict({"COLD_SECRET": "cold-s3cr3t"})])
def probe(token: str):
    """Reports what a task finds of earlier tasks, then leaves traces of its own."""
    found = sorted(n for n in os.listdir("/tmp") if n.startswith("probe-"))
    seen_env = os.environ.get("FERRY_PROBE")
    with open(f"/tmp/probe-{token}", "w") as f:
        f.write(token)
    os.environ["FERRY_PROBE"] = token
    return {
        "found": found,
        "env": seen_env,
        "standby": os.path.isdir("/__ferry/in"),
        "task": os.environ.get("MODAL_TASK_ID"),
        "secret": os.environ.get("COLD_SECRET"),
        "app_file": os.path.exists("/root/coldstart.py"),
        "host_uid": int(open("/proc/self/uid_map").read().split()[1]),
        "net": sorted(os.listdir("/sys/class/net")),
    }


@app.function(image=image)
def started_at():
    """When user code began to run (cold-start timing)."""
    return time.time()
