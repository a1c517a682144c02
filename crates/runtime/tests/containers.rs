//! Containers from the prepared base: isolation, limits, env, logs, signals.

mod common;

use common::{argv, base, run};
use ferry_runtime::{BindMount, ContainerRuntime, ContainerSpec, Error, ExecSpec, Network, Scratch, Signal};

#[tokio::test]
async fn python_runs_in_a_container() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let spec = ContainerSpec::new(base, argv(&["python", "-c", "import os, sys; print(os.getpid(), sys.version_info[:2]); print('to err', file=sys.stderr)"]));
    let mut c = runtime.spawn(spec).await.expect("spawn");
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "2 (3, 11)", "python is pid 2 under Ferry's init");
    assert_eq!(err.trim(), "to err");
}

#[tokio::test]
async fn host_files_are_invisible_and_binds_are_exact() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let secret_dir = tempdir("secret");
    let secret = secret_dir.join("host-only.txt");
    std::fs::write(&secret, "host secret").unwrap();
    let shared = tempdir("shared");
    std::fs::write(shared.join("in.txt"), "from host").unwrap();
    let out_dir = tempdir("out");

    let script = format!(
        r#"
import os
print(os.path.exists({secret:?}), os.path.exists({secret_dir:?}))
print(open('/data/in/in.txt').read())
try:
    open('/data/in/new.txt', 'w')
    print('ro-write-allowed')
except OSError as e:
    print('ro', e.errno)
open('/data/out/result.txt', 'w').write('from container')
print(sorted(os.listdir('/')))
"#,
        secret = secret.to_str().unwrap(),
        secret_dir = secret_dir.to_str().unwrap()
    );
    let mut spec = ContainerSpec::new(base, argv(&["python", "-c", &script]));
    spec.mounts.push(BindMount::read_only(&shared, "/data/in"));
    spec.mounts.push(BindMount::read_write(&out_dir, "/data/out"));
    let mut c = runtime.spawn(spec).await.expect("spawn");
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "False False", "the host's temp files must not be visible");
    assert_eq!(lines[1], "from host");
    assert_eq!(lines[2], "ro 30", "a read-only bind refuses writes with EROFS");
    assert!(!lines[3].contains("tmp/ferry-rt-test"), "{}", lines[3]);
    assert_eq!(std::fs::read_to_string(out_dir.join("result.txt")).unwrap(), "from container");
    for d in [secret_dir, shared, out_dir] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[tokio::test]
async fn writable_layer_is_discarded() {
    for scratch in [Scratch::Disk, Scratch::Memory] {
        writable_layer_is_discarded_with(scratch).await;
    }
}

async fn writable_layer_is_discarded_with(scratch: Scratch) {
    let Some((store, base)) = base().await else { return };
    let layer_fs = store.layer_fs(&base);
    let runtime = ContainerRuntime::new(store);
    let write = "open('/etc/ferry-scratch', 'w').write('x'); open('/tmp/t', 'w').write('y'); import os; os.remove('/etc/debian_version')";
    let mut spec = ContainerSpec::new(base.clone(), argv(&["python", "-c", write]));
    spec.scratch = scratch;
    let mut c = runtime.spawn(spec).await.unwrap();
    let scratch_dir = runtime.store().root().join("run").join(c.id());
    let (_, err, status) = run(&mut c).await;
    assert!(!scratch_dir.exists(), "{scratch:?} scratch removed after exit");
    assert_eq!(status.code, 0, "stderr: {err}");
    assert!(!layer_fs.join("etc/ferry-scratch").exists(), "writes must not reach the image layer");
    assert!(layer_fs.join("etc/debian_version").exists(), "deletes must not reach the image layer");

    let check = "import os; print(os.path.exists('/etc/ferry-scratch'), os.path.exists('/tmp/t'), os.path.exists('/etc/debian_version'))";
    let mut c = runtime.spawn(ContainerSpec::new(base, argv(&["python", "-c", check]))).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(out.trim(), "False False True");
}

#[tokio::test]
async fn env_workdir_hostname_and_user_apply() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let script = "import os, socket; print(os.environ['GREETING'], os.environ['LANG'], os.getcwd(), socket.gethostname(), os.getuid())";
    let mut spec = ContainerSpec::new(base.clone(), argv(&["python", "-c", script]));
    spec.env.push(("GREETING".into(), "hello world".into()));
    spec.workdir = Some("/root/app".into());
    spec.hostname = "task-1".into();
    let mut c = runtime.spawn(spec).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(out.trim(), "hello world C.UTF-8 /root/app task-1 0");

    let mut spec = ContainerSpec::new(base, argv(&["python", "-c", "import os; print(os.getuid(), os.getgid())"]));
    spec.user = Some("nobody".into());
    let mut c = runtime.spawn(spec).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(out.trim(), "65534 65534");
}

#[tokio::test]
async fn memory_limit_kills_with_oom() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let hog = "import sys; chunks = []\nfor i in range(400):\n    chunks.append(bytearray(1024 * 1024))\nprint('survived', flush=True)";
    let mut spec = ContainerSpec::new(base.clone(), argv(&["python", "-c", hog]));
    spec.limits.memory_mib = Some(64);
    let mut c = runtime.spawn(spec).await.unwrap();
    let (out, _, status) = run(&mut c).await;
    assert!(status.oom_killed, "allocating 400 MiB under a 64 MiB limit must be OOM-killed: {status:?}");
    assert_eq!(status.signal, Some(9), "{status:?}");
    assert!(!out.contains("survived"));

    // The same program fits under a larger limit.
    let mut spec = ContainerSpec::new(base, argv(&["python", "-c", hog]));
    spec.limits.memory_mib = Some(1024);
    let mut c = runtime.spawn(spec).await.unwrap();
    let (out, _, status) = run(&mut c).await;
    assert!(status.success() && !status.oom_killed, "{status:?}");
    assert_eq!(out.trim(), "survived");
    assert!(status.peak_memory_bytes.unwrap() > 400 << 20, "peak memory covers the 400 MiB: {status:?}");
}

#[tokio::test]
async fn cpu_limit_is_a_cfs_quota() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let mut spec = ContainerSpec::new(base, argv(&["python", "-c", "import time; time.sleep(30)"]));
    spec.limits.cpu_cores = Some(0.5);
    let mut c = runtime.spawn(spec).await.unwrap();
    let v1 = format!("/sys/fs/cgroup/cpu/ferry/{}/cpu.cfs_quota_us", c.id());
    let v2 = format!("/sys/fs/cgroup/ferry/{}/cpu.max", c.id());
    let quota = std::fs::read_to_string(&v1).or_else(|_| std::fs::read_to_string(&v2)).expect("container cpu cgroup");
    assert!(quota.trim() == "50000" || quota.trim() == "50000 100000", "{quota}");
    c.kill(Signal::Kill).unwrap();
    let status = c.wait().await.unwrap();
    assert_eq!(status.signal, Some(9));
    assert!(!std::path::Path::new(&v1).exists() && !std::path::Path::new(&v2).exists(), "cgroup removed after wait");
}

#[tokio::test]
async fn signals_reach_the_program() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let program = "import signal, sys, time\nprint('ready', flush=True)\ntime.sleep(60)";
    for (signal, expect) in [(Signal::Terminate, 15), (Signal::Interrupt, 2)] {
        let mut c = runtime.spawn(ContainerSpec::new(base.clone(), argv(&["python", "-c", program]))).await.unwrap();
        let mut logs = c.logs().unwrap();
        assert_eq!(logs.recv().await.unwrap().text, "ready");
        c.kill(signal).unwrap();
        let status = c.wait().await.unwrap();
        assert_eq!((status.signal, status.code), (Some(expect), 128 + expect), "{signal:?}: {status:?}");
    }
}

#[tokio::test]
async fn exit_codes_and_missing_programs() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let mut c = runtime.spawn(ContainerSpec::new(base.clone(), argv(&["sh", "-c", "exit 7"]))).await.unwrap();
    let status = c.wait().await.unwrap();
    assert_eq!((status.code, status.signal, status.oom_killed), (7, None, false));

    let err = runtime.spawn(ContainerSpec::new(base.clone(), argv(&["no-such-program"]))).await.unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("no-such-program"), "{err}");

    // Set-up failures say which step failed, not just an errno.
    let mut spec = ContainerSpec::new(base.clone(), argv(&["true"]));
    spec.workdir = Some("/etc/hostname/sub".into());
    let err = runtime.spawn(spec).await.unwrap_err().to_string();
    assert!(err.contains("chdir to workdir") && err.contains("Not a directory"), "{err}");
    let mut spec = ContainerSpec::new(base, argv(&["true"]));
    spec.user = Some("no-such-user".into());
    let err = runtime.spawn(spec).await.unwrap_err().to_string();
    assert!(err.contains("no-such-user") && err.contains("/etc/passwd"), "{err}");
}

#[tokio::test]
async fn blocked_network_has_only_loopback() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    // A service on the host's loopback, started by this test.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = format!(
        r#"
import os, socket
print(sorted(os.listdir('/sys/class/net')))
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print('loopback ok')
for host in ('127.0.0.1', '192.0.2.1'):
    try:
        socket.create_connection((host, {port}), timeout=3)
        print(host, 'reached')
    except OSError:
        print(host, 'blocked')
"#
    );
    let mut spec = ContainerSpec::new(base.clone(), argv(&["python", "-c", &probe]));
    spec.network = Network::Blocked;
    let mut c = runtime.spawn(spec).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["['lo']", "loopback ok", "127.0.0.1 blocked", "192.0.2.1 blocked"]);

    // The host network (kept for callers that ask for it) shares the host's loopback.
    let mut c = runtime.spawn(ContainerSpec::new(base, argv(&["python", "-c", &probe]))).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert!(out.contains("127.0.0.1 reached"), "{out}");
}

#[tokio::test]
async fn gpu_requests_are_refused_without_gpus() {
    let Some((store, base)) = base().await else { return };
    if !ferry_runtime::detect_gpus().is_empty() {
        eprintln!("skipping: this host has GPUs");
        return;
    }
    let runtime = ContainerRuntime::new(store);
    let mut spec = ContainerSpec::new(base, argv(&["true"]));
    spec.gpus = vec![ferry_runtime::GpuDevice { minor: 0, uuid: None }];
    let err = runtime.spawn(spec).await.unwrap_err();
    assert!(matches!(err, Error::GpuUnavailable { requested: 1, available: 0 }), "{err}");
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-rt-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn dropping_a_running_container_kills_it() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let c = runtime.spawn(ContainerSpec::new(base, argv(&["sleep", "600"]))).await.unwrap();
    let pid = c.pid() as i32;
    let cgroup = format!("/sys/fs/cgroup/memory/ferry/{}", c.id());
    drop(c);
    assert!(!std::path::Path::new(&cgroup).exists(), "the dropped container's cgroup is removed");
    let gone = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(pid, 0) != 0 }
    });
    assert!(gone, "init {pid} still alive after the handle was dropped");
}

#[tokio::test]
async fn exec_joins_a_running_container_and_stdin_is_piped() {
    use tokio::io::AsyncWriteExt;
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    // The main program echoes stdin lines until EOF, after leaving a file for the exec to find.
    let main = "import sys\nopen('/tmp/marker', 'w').write('made by main')\nprint('ready', flush=True)\nfor line in sys.stdin:\n    print('echo', line.strip(), flush=True)";
    let mut spec = ContainerSpec::new(base, argv(&["python", "-c", main]));
    spec.stdin = true;
    spec.env.push(("FROM_SPAWN".into(), "inherited".into()));
    let mut c = runtime.spawn(spec).await.unwrap();
    let mut logs = c.logs().unwrap();
    assert_eq!(logs.recv().await.unwrap().text, "ready");

    let probe = "import os; print(open('/tmp/marker').read(), os.environ['FROM_SPAWN'], os.environ['EXTRA'], os.getcwd(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[:2])";
    let mut exec = ExecSpec::new(argv(&["python", "-c", probe]));
    exec.env.push(("EXTRA".into(), "x".into()));
    exec.workdir = Some("/srv".into());
    let mut p = c.exec(exec).await.expect("exec");
    let (out, err, status) = {
        let mut lines = p.logs().unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        while let Some(l) = lines.recv().await {
            let buf = if l.stream == ferry_runtime::Stream::Stdout { &mut out } else { &mut err };
            buf.push_str(&l.text);
        }
        (out, err, p.wait().await.unwrap())
    };
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(out, "made by main inherited x /srv [1, 2]", "exec sees the container's files, env and pid namespace");

    let mut stdin = c.stdin().unwrap();
    stdin.write_all(b"one\ntwo\n").await.unwrap();
    drop(stdin);
    let mut echoed = Vec::new();
    while let Some(l) = logs.recv().await {
        echoed.push(l.text);
    }
    assert_eq!(echoed, ["echo one", "echo two"]);
    assert_eq!(c.wait().await.unwrap().code, 0);
    assert!(matches!(c.exec(ExecSpec::new(argv(&["true"]))).await, Err(Error::ContainerExited(_))));
}

/// Many containers started at once from several runtime threads: forks from a
/// multi-threaded process must neither deadlock nor mix up outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_containers_keep_their_own_output() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let runtime = runtime.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut spec = ContainerSpec::new(base, argv(&["python", "-c", &format!("print('container {i}')")]));
            spec.limits.memory_mib = Some(128);
            let mut c = runtime.spawn(spec).await.expect("spawn");
            let (out, err, status) = run(&mut c).await;
            assert_eq!(status.code, 0, "stderr: {err}");
            assert_eq!(out.trim(), format!("container {i}"));
        }));
    }
    let all = tokio::time::timeout(std::time::Duration::from_secs(60), futures_join(tasks)).await;
    assert!(all.is_ok(), "16 concurrent containers did not finish within 60 s");
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.await.expect("container task panicked");
    }
}

/// The recipe a worker can use for builder ≥ 2025.06 images, which do not contain the modal
/// client: install it once into a host directory with a throw-away container, then mount that
/// directory read-only into task containers and put it on PYTHONPATH. Needs PyPI, so it only
/// runs on request: `cargo test -p ferry-runtime --test containers -- --ignored client_dir`.
#[tokio::test]
#[ignore]
async fn client_dir_installed_by_one_container_serves_another() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let deps = tempdir("client-deps");
    let mut install = ContainerSpec::new(base.clone(), argv(&["python", "-m", "pip", "install", "--no-cache-dir", "--target", "/out", "modal==1.6.4"]));
    install.mounts.push(BindMount::read_write(&deps, "/out"));
    let mut c = runtime.spawn(install).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stdout: {out}\nstderr: {err}");

    let mut task = ContainerSpec::new(base, argv(&["python", "-c", "import modal, grpclib; print(modal.__version__)"]));
    task.mounts.push(BindMount::read_only(&deps, "/__modal/deps"));
    task.env.push(("PYTHONPATH".into(), "/__modal/deps".into()));
    let mut c = runtime.spawn(task).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(out.trim(), "1.6.4");
    std::fs::remove_dir_all(deps).unwrap();
}

/// Run by `containers_die_with_the_worker` in a child process, which it then SIGKILLs.
#[tokio::test]
#[ignore]
async fn lifeline_child() {
    if std::env::var_os("FERRY_LIFELINE_CHILD").is_none() {
        return;
    }
    let Some((store, base)) = base().await else { return };
    let c = ContainerRuntime::new(store).spawn(ContainerSpec::new(base, argv(&["sleep", "600"]))).await.unwrap();
    println!("init-pid={}", c.pid());
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
}

#[tokio::test]
async fn containers_die_with_the_worker() {
    use tokio::io::AsyncBufReadExt;
    let Some(_) = base().await else { return };
    let mut worker = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lifeline_child", "--ignored", "--nocapture"])
        .env("FERRY_LIFELINE_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let worker_pid = worker.id().unwrap();
    let mut lines = tokio::io::BufReader::new(worker.stdout.take().unwrap()).lines();
    let mut init = None;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(pid) = line.strip_prefix("init-pid=") {
            init = Some(pid.parse::<i32>().unwrap());
            break;
        }
    }
    let init = init.expect("the child worker started a container");
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(init, 0) }, 0, "container running while its worker lives");
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    let gone = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        // SAFETY: as above.
        unsafe { libc::kill(init, 0) != 0 }
    });
    assert!(gone, "container init {init} outlived its SIGKILLed worker");

    let runtime = ContainerRuntime::new(ferry_runtime::ImageStore::open(common::data_dir()).unwrap());
    assert!(runtime.sweep_stale() >= 2, "the dead worker's cgroup and scratch directory are swept");
    let leftovers: Vec<_> = std::fs::read_dir(runtime.store().root().join("run"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&format!("-{}-", worker_pid)))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A `block_network` container still has to reach Ferry: a bind-mounted unix socket works
/// (the modal client accepts `MODAL_SERVER_URL=unix:///path`).
#[tokio::test]
async fn blocked_network_reaches_a_bound_unix_socket() {
    use tokio::io::AsyncReadExt;
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let dir = tempdir("sock");
    let listener = tokio::net::UnixListener::bind(dir.join("ferry.sock")).unwrap();
    let client = "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/ferry.sock'); s.sendall(b'hello from a sealed container')";
    let mut spec = ContainerSpec::new(base, argv(&["python", "-c", client]));
    spec.network = Network::Blocked;
    spec.mounts.push(BindMount::read_write(dir.join("ferry.sock"), "/run/ferry.sock"));
    let mut c = runtime.spawn(spec).await.unwrap();
    let (mut conn, _) = tokio::time::timeout(std::time::Duration::from_secs(20), listener.accept()).await.expect("connection").unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello from a sealed container");
    let (_, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn containers_cannot_reach_the_host_kernel_or_disks() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let probe = r#"
import os, stat, ctypes
caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]
print('caps', caps)
for name, action in [
    ('mknod', lambda: os.mknod('/tmp/disk', stat.S_IFBLK | 0o600, os.makedev(254, 0))),
    ('sysctl', lambda: open('/proc/sys/kernel/core_pattern', 'w').write('|/tmp/x')),
    ('mount', lambda: (ctypes.CDLL(None, use_errno=True).mount(b'none', b'/mnt', b'tmpfs', 0, None) == 0) or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'mount'))),
    ('hostname', lambda: __import__('socket').sethostname('evil')),
]:
    try:
        action()
        print(name, 'allowed')
    except OSError as e:
        print(name, 'denied')
print('kallsyms', repr(open('/proc/kallsyms').read(64)))
"#;
    let mut c = runtime.spawn(ContainerSpec::new(base.clone(), argv(&["python", "-c", probe]))).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["caps 00000000a00405fb", "mknod denied", "sysctl denied", "mount denied", "hostname denied", "kallsyms ''"],
    );
    // Exec'd processes get the same treatment.
    let mut c = runtime.spawn(ContainerSpec::new(base, argv(&["sleep", "30"]))).await.unwrap();
    let mut p = c.exec(ExecSpec::new(argv(&["grep", "CapEff", "/proc/self/status"]))).await.unwrap();
    let mut lines = p.logs().unwrap();
    assert_eq!(lines.recv().await.unwrap().text, "CapEff:\t00000000a00405fb");
    p.wait().await.unwrap();
    c.kill(Signal::Kill).unwrap();
    c.wait().await.unwrap();
}

#[tokio::test]
async fn snapshots_turn_a_containers_writes_into_layers() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store.clone());
    // A running container: snapshot what it has written so far, while it keeps running.
    let program = "import os, sys\nopen('/etc/snap-marker', 'w').write('one')\nos.remove('/etc/debian_version')\nprint('written', flush=True)\nsys.stdin.read()";
    let mut spec = ContainerSpec::new(base.clone(), argv(&["python", "-c", program]));
    spec.stdin = true;
    let mut c = runtime.spawn(spec).await.unwrap();
    let mut logs = c.logs().unwrap();
    assert_eq!(logs.recv().await.unwrap().text, "written");
    let snap = c.snapshot().await.expect("snapshot");
    drop(c.stdin());
    assert_eq!(c.wait().await.unwrap().code, 0);
    assert_eq!(store.layer(&snap).unwrap().parent, Some(base.clone()));

    let check = "import os; print(open('/etc/snap-marker').read(), os.path.exists('/etc/debian_version'))";
    let mut c = runtime.spawn(ContainerSpec::new(snap.clone(), argv(&["python", "-c", check]))).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(out.trim(), "one False", "the snapshot keeps files and deletions");

    // A build function: run to completion, then everything it wrote is the new layer.
    let mut c = runtime.spawn(ContainerSpec::new(snap.clone(), argv(&["sh", "-c", "echo two > /etc/snap-marker"]))).await.unwrap();
    let (status, layer) = c.wait_into_layer().await.unwrap();
    assert_eq!(status.code, 0);
    assert_eq!(std::fs::read_to_string(store.layer_fs(&layer).join("etc/snap-marker")).unwrap(), "two\n");
    assert!(!store.root().join("run").join(c.id()).exists(), "scratch removed");

    let mut memory = ContainerSpec::new(base, argv(&["true"]));
    memory.scratch = Scratch::Memory;
    let mut c = runtime.spawn(memory).await.unwrap();
    assert!(matches!(c.wait_into_layer().await, Err(Error::NoSnapshot(_))));
    c.wait().await.unwrap();
    for id in [layer, snap] {
        store.remove(&id).unwrap();
    }
}

/// Moves this test's thread (and the threads and processes it starts from now on, slirp4netns
/// included) into a network namespace of its own whose loopback also answers on 192.0.2.1
/// and 192.0.2.2 (TEST-NET-1): "the internet" for a private container, made by the test.
fn enter_test_network() -> bool {
    if ferry_runtime::find_tool("slirp4netns").is_none() || ferry_runtime::find_tool("ip").is_none() {
        eprintln!("skipping: slirp4netns and ip are needed (tools/setup.d/runtime.sh installs them)");
        return false;
    }
    // SAFETY: unshare of the network namespace affects only the calling thread.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "{}", std::io::Error::last_os_error());
    for args in [&["link", "set", "lo", "up"][..], &["addr", "add", "192.0.2.1/32", "dev", "lo"], &["addr", "add", "192.0.2.2/32", "dev", "lo"]] {
        assert!(std::process::Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    }
    true
}

/// A listener that answers every connection with `reply`.
fn answering_listener(addr: &str, reply: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut conn, reply.as_bytes());
        }
    });
    port
}

#[tokio::test]
async fn private_network_has_outbound_but_not_the_hosts_loopback() {
    let Some((store, base)) = base().await else { return };
    if !enter_test_network() {
        return;
    }
    let runtime = ContainerRuntime::new(store);
    let outside = answering_listener("192.0.2.1:0", "outside");
    // A service on the (test's) host loopback that a private container must not reach.
    let local = answering_listener("127.0.0.1:0", "local");
    let probe = format!(
        r#"
import os, socket
print(sorted(os.listdir('/sys/class/net')))
print(socket.create_connection(('192.0.2.1', {outside}), timeout=10).recv(100).decode())
for host in ('127.0.0.1', '10.0.2.2'):
    try:
        socket.create_connection((host, {local}), timeout=3).recv(100)
        print(host, 'reached')
    except OSError:
        print(host, 'unreachable')
"#
    );
    let mut spec = ContainerSpec::new(base, argv(&["python", "-c", &probe]));
    spec.network = Network::Private;
    let mut c = runtime.spawn(spec).await.expect("spawn with a private network");
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["['eth0', 'lo']", "outside", "127.0.0.1 unreachable", "10.0.2.2 unreachable"]);
}

#[tokio::test]
async fn cidr_allowlist_limits_outbound() {
    let Some((store, base)) = base().await else { return };
    if ferry_runtime::find_tool("nft").is_none() {
        eprintln!("skipping: nft is not installed (tools/setup.d/runtime.sh installs nftables)");
        return;
    }
    if !enter_test_network() {
        return;
    }
    let runtime = ContainerRuntime::new(store);
    let allowed = answering_listener("192.0.2.1:0", "allowed");
    let other = answering_listener("192.0.2.2:0", "other");
    let probe = format!(
        r#"
import socket
for host, port in (('192.0.2.1', {allowed}), ('192.0.2.2', {other})):
    try:
        print(socket.create_connection((host, port), timeout=3).recv(100).decode())
    except OSError as e:
        print(host, 'refused')
"#
    );
    let mut spec = ContainerSpec::new(base.clone(), argv(&["python", "-c", &probe]));
    spec.network = Network::Private;
    spec.allowed_cidrs = Some(vec!["192.0.2.1/32".into()]);
    let mut c = runtime.spawn(spec).await.expect("spawn with an allow-list");
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["allowed", "192.0.2.2 refused"]);

    let mut spec = ContainerSpec::new(base, argv(&["true"]));
    spec.network = Network::Private;
    spec.allowed_cidrs = Some(vec!["not-a-cidr".into()]);
    let err = runtime.spawn(spec).await.unwrap_err().to_string();
    assert!(err.contains("not-a-cidr") && err.contains("CIDR"), "{err}");
}

/// A container in its own network namespace reaches exactly the host ports served into it.
#[tokio::test]
async fn forwarded_ports_reach_the_host_and_nothing_else() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let api = answering_listener("127.0.0.1:0", "control plane");
    let other = answering_listener("127.0.0.1:0", "other");
    let probe = format!(
        r#"
import socket
print(socket.create_connection(('127.0.0.1', {api}), timeout=10).recv(100).decode())
try:
    socket.create_connection(('127.0.0.1', {other}), timeout=3).recv(100)
    print('other reached')
except OSError:
    print('other unreachable')
"#
    );
    for network in [Network::Blocked, Network::Private] {
        if network == Network::Private && ferry_runtime::find_tool("slirp4netns").is_none() {
            continue;
        }
        let mut spec = ContainerSpec::new(base.clone(), argv(&["python", "-c", &probe]));
        spec.network = network;
        spec.forwards = vec![ferry_runtime::PortForward { port: api, target: format!("127.0.0.1:{api}").parse().unwrap() }];
        let mut c = runtime.spawn(spec).await.unwrap();
        let (out, err, status) = run(&mut c).await;
        assert_eq!(status.code, 0, "{network:?} stderr: {err}");
        assert_eq!(out.lines().collect::<Vec<_>>(), ["control plane", "other unreachable"], "{network:?}");
    }
}

/// Root inside is an unprivileged id range on the host; pid 1 is Ferry's small init, not a
/// copy of the worker, and the container cannot read or trace it.
#[tokio::test]
async fn root_inside_is_unprivileged_outside_and_init_is_sealed() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let probe = r#"
import ctypes, os
print('uid', os.getuid(), open('/proc/self/uid_map').read().split()[:2])
print('init', open('/proc/1/cmdline').read().split('\0')[0])
for name, action in [
    ('mem', lambda: open('/proc/1/mem', 'rb').read(1)),
    ('environ', lambda: open('/proc/1/environ', 'rb').read()),
    ('ptrace', lambda: (ctypes.CDLL(None, use_errno=True).ptrace(16, 1, 0, 0) == 0) or (_ for _ in ()).throw(OSError(ctypes.get_errno(), 'ptrace'))),
]:
    try:
        action()
        print(name, 'allowed')
    except OSError:
        print(name, 'denied')
os.kill(1, 9)
import time; time.sleep(0.3)
print('init survived SIGKILL')
open('/root/written-by-root', 'w').write('x')
print('nnp', [l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0])
"#;
    let spec = ContainerSpec::new(base, argv(&["python", "-c", probe]));
    let mut c = runtime.spawn(spec).await.unwrap();
    let host_status = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).unwrap();
    let host_uid: u32 = host_status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(host_uid >= 0x4000_0000, "init runs as host uid {host_uid}");
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stdout: {out}\nstderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("uid 0 ['0', '{host_uid}']"));
    assert_eq!(&lines[1..], ["init ferry-init", "mem denied", "environ denied", "ptrace denied", "init survived SIGKILL", "nnp 1"]);
}

#[tokio::test]
async fn disk_pids_and_memory_limits_stop_their_own_container() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    // A disk filler: 64 MiB allowed, 400 MiB written in small files.
    let filler = "import os\nfor i in range(400):\n    open(f'/tmp/f{i}', 'wb').write(b'x' * (1 << 20))\nimport time; time.sleep(20)";
    let mut spec = ContainerSpec::new(base.clone(), argv(&["python", "-c", filler]));
    spec.limits.disk_mib = Some(64);
    let mut c = runtime.spawn(spec).await.unwrap();
    let started = std::time::Instant::now();
    let (out, _, status) = run(&mut c).await;
    assert!(status.disk_exceeded && status.signal == Some(9), "{status:?} {out}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));

    // A fork bomb meets the pids limit inside its own container.
    let bomb = "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            import time; time.sleep(30)\n        n += 1\nexcept OSError as e:\n    print('stopped', e.errno, n < 100)";
    let mut spec = ContainerSpec::new(base.clone(), argv(&["python", "-c", bomb]));
    spec.limits.pids = Some(64);
    let mut c = runtime.spawn(spec).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "{err}");
    assert_eq!(out.trim(), "stopped 11 True");

    // A memory hog is OOM-killed in its own cgroup; the next container runs as usual.
    let hog = "b = []\nwhile True:\n    b.append(b'x' * (16 << 20))";
    let mut spec = ContainerSpec::new(base.clone(), argv(&["python", "-c", hog]));
    spec.limits.memory_mib = Some(128);
    let mut c = runtime.spawn(spec).await.unwrap();
    let (_, _, status) = run(&mut c).await;
    assert!(status.oom_killed, "{status:?}");
    let mut c = runtime.spawn(ContainerSpec::new(base, argv(&["true"]))).await.unwrap();
    assert!(run(&mut c).await.2.success());
}

/// Runs only on hosts with NVIDIA GPUs (none here; the device machines have them).
#[tokio::test]
async fn gpu_containers_get_the_device_nodes() {
    let Some((store, base)) = base().await else { return };
    if ferry_runtime::detect_gpus().is_empty() {
        eprintln!("skipping: no NVIDIA GPUs on this host");
        return;
    }
    let runtime = ContainerRuntime::new(store);
    let mut spec = ContainerSpec::new(base, argv(&["sh", "-c", "ls /dev/nvidiactl /dev/nvidia0 && echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"]));
    spec.gpus = vec![ferry_runtime::GpuDevice { minor: 0, uuid: None }];
    let mut c = runtime.spawn(spec).await.expect("GPU container");
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert!(out.contains("/dev/nvidia0") && out.contains("CUDA_VISIBLE_DEVICES=0"), "{out}");
}

#[tokio::test]
async fn seccomp_refuses_unnamespaced_kernel_interfaces() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let probe = r#"
import ctypes, os, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
print([l.strip() for l in open('/proc/self/status') if l.startswith('Seccomp:')][0])
def errno_of(nr, *args):
    r = libc.syscall(nr, *args)
    return 'ok' if r >= 0 else os.strerror(ctypes.get_errno())
print('io_uring_setup', errno_of(425, 1, ctypes.create_string_buffer(120)))
print('keyctl', errno_of(250, 0, 0))
print('unshare_user', errno_of(272, 0x10000000))
print('unshare_uts', errno_of(272, 0x04000000))
t = threading.Thread(target=lambda: None); t.start(); t.join()
print('threads ok', subprocess.run(['true']).returncode)
"#;
    let mut c = runtime.spawn(ContainerSpec::new(base, argv(&["python", "-c", probe]))).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "Seccomp:\t2",
            "io_uring_setup Operation not permitted",
            "keyctl Operation not permitted",
            "unshare_user Operation not permitted",
            // Refused by the missing capability rather than the filter: the same answer.
            "unshare_uts Operation not permitted",
            "threads ok 0",
        ]
    );
}

#[tokio::test]
async fn the_workers_open_files_do_not_leak_into_containers() {
    let Some((store, base)) = base().await else { return };
    // A descriptor without O_CLOEXEC, as C libraries in the worker may open them.
    // SAFETY: plain open(2) of a path we own; closed below.
    let leaked = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
    assert!(leaked > 2);
    let runtime = ContainerRuntime::new(store);
    let probe = "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))";
    let mut c = runtime.spawn(ContainerSpec::new(base.clone(), argv(&["python", "-c", probe]))).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    // 0-2 are stdio; 3 is the directory listdir itself opened.
    assert_eq!(out.trim(), "[0, 1, 2, 3]", "descriptor {leaked} must not be inherited");

    let mut c = runtime.spawn(ContainerSpec::new(base, argv(&["sleep", "30"]))).await.unwrap();
    let mut p = c.exec(ExecSpec::new(argv(&["ls", "/proc/self/fd"]))).await.unwrap();
    let (out, _, _) = {
        let mut lines = p.logs().unwrap();
        let mut out = Vec::new();
        while let Some(l) = lines.recv().await {
            out.push(l.text);
        }
        (out, (), p.wait().await.unwrap())
    };
    assert_eq!(out, ["0", "1", "2", "3"], "exec'd processes inherit nothing either");
    c.kill(Signal::Kill).unwrap();
    c.wait().await.unwrap();
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(leaked) };
}
