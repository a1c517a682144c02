//! Task containers for real: the prepared base and client runtime, root, the kernel's
//! namespaces and cgroups. The first run installs modal from PyPI (about a minute); later
//! runs reuse `$FERRY_TEST_DATA_DIR` (default /var/tmp/ferry-test) and take seconds.

use std::path::PathBuf;
use std::time::Duration;

use ferry_runtime::{ImageStore, LayerId, LogLine};
use ferry_worker::{Signal, Stream, Task, TaskSpec, Worker, CONTAINER_ARGUMENTS_PATH, DEFAULT_CLIENT_VERSION};

fn data_dir() -> PathBuf {
    std::env::var_os("FERRY_TEST_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp/ferry-test"))
}

/// A worker with the 3.11 base and the pinned client prepared, or `None` (with the reason
/// printed) where containers cannot run.
async fn worker() -> Option<(Worker, LayerId)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: task containers need root (namespaces, mounts, cgroups)");
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LogLine>();
    let printer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            eprintln!("prepare: {}", line.text);
        }
    });
    let started = std::time::Instant::now();
    let client = ferry_worker::prepare(&data_dir(), "3.11", DEFAULT_CLIENT_VERSION, &tx).await.expect("preparing base and client");
    drop(tx);
    let _ = printer.await;
    eprintln!("client runtime {} ready after {:.1}s", client.dir.display(), started.elapsed().as_secs_f64());
    let store = ImageStore::open(data_dir()).unwrap();
    let base = ferry_runtime::base_layer_id("3.11").unwrap();
    Some((Worker::new(&data_dir(), store), base))
}

fn spec(base: &LayerId, command: &[&str]) -> TaskSpec {
    let mut spec = TaskSpec::new("ta-test", base.clone(), b"\x0a\x02ta\xff\x00args".to_vec(), "http://127.0.0.1:9", "s3cret-42");
    spec.command = Some(command.iter().map(|s| s.to_string()).collect());
    spec
}

/// (stdout, stderr) and the exit, within 60 s.
async fn output(task: &mut Task) -> (String, String, ferry_worker::TaskExit) {
    let mut logs = task.logs().expect("logs");
    let (mut out, mut err) = (String::new(), String::new());
    let collect = async {
        while let Some(line) = logs.recv().await {
            let buf = match line.stream {
                Stream::Stdout => &mut out,
                _ => &mut err,
            };
            buf.push_str(&line.text);
            buf.push('\n');
        }
        task.wait().await.expect("wait")
    };
    let exit = tokio::time::timeout(Duration::from_secs(60), collect).await.expect("task finished within 60 s");
    (out, err, exit)
}

#[tokio::test]
async fn client_runtime_serves_the_entrypoints_imports() {
    let Some((worker, base)) = worker().await else { return };
    let script = "import modal, grpclib, synchronicity, google.protobuf, sys\n\
                  import modal._container_entrypoint\n\
                  print(modal.__version__)\n\
                  print(modal.__file__)\n\
                  print(grpclib.__file__)\n\
                  print('/__modal/deps' in sys.path and sys.path.index('/__modal/deps') > max(i for i, p in enumerate(sys.path) if 'packages' in p and p != '/__modal/deps'))\n";
    let mut task = worker.start(spec(&base, &["python", "-c", script])).await.unwrap();
    let (out, err, exit) = output(&mut task).await;
    assert!(exit.success(), "exit {exit:?}\nstderr:\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, [DEFAULT_CLIENT_VERSION, "/pkg/modal/__init__.py", "/__modal/deps/grpclib/__init__.py", "True"], "stderr:\n{err}");
}

#[tokio::test]
async fn task_sees_its_environment_arguments_and_files() {
    let Some((worker, base)) = worker().await else { return };
    let host = std::env::temp_dir().join(format!("ferry-worker-app-{}.py", std::process::id()));
    std::fs::write(&host, "VALUE = 'from the app file'\n").unwrap();
    let script = r#"
import os, sys
from modal.config import config
print("cwd", os.getcwd())
for k in ["MODAL_SERVER_URL", "MODAL_IS_REMOTE", "MODAL_TASK_ID", "MODAL_ENVIRONMENT", "PYTHONUNBUFFERED", "SECRET_VAR", "LANG"]:
    print(k, os.environ.get(k))
print("headers", sorted(config.get("override_headers").items()))
print("server", config.get("server_url"))
path = os.environ["MODAL_CONTAINER_ARGUMENTS_PATH"]
print("args", path, open(path, "rb").read().hex())
try:
    open(path, "ab")
    print("args writable")
except OSError:
    print("args read-only")
import app
print("app", app.VALUE)
print("stderr line", file=sys.stderr)
"#;
    let mut s = spec(&base, &["python", "-c", script]);
    s.files.push((host.clone(), "/root/app.py".into()));
    s.env.push(("SECRET_VAR".into(), "hunter2".into()));
    s.environment_name = "dev".into();
    let mut task = worker.start(s).await.unwrap();
    assert_eq!(task.id(), "ta-test");
    let (out, err, exit) = output(&mut task).await;
    std::fs::remove_file(&host).unwrap();
    assert!(exit.success(), "exit {exit:?}\nstderr:\n{err}");
    let expected = format!(
        "cwd /root\n\
         MODAL_SERVER_URL http://127.0.0.1:9\n\
         MODAL_IS_REMOTE 1\n\
         MODAL_TASK_ID ta-test\n\
         MODAL_ENVIRONMENT dev\n\
         PYTHONUNBUFFERED 1\n\
         SECRET_VAR hunter2\n\
         LANG C.UTF-8\n\
         headers [('x-modal-task-id', 'ta-test'), ('x-modal-task-secret', 's3cret-42')]\n\
         server http://127.0.0.1:9\n\
         args {CONTAINER_ARGUMENTS_PATH} 0a027461ff0061726773\n\
         args read-only\n\
         app from the app file\n"
    );
    assert_eq!(out, expected, "stderr:\n{err}");
    assert_eq!(err, "stderr line\n");
}

#[tokio::test]
async fn memory_limit_ends_in_an_oom_kill() {
    let Some((worker, base)) = worker().await else { return };
    let mut s = spec(&base, &["python", "-c", "b = b'x' * (512 << 20); print(len(b))"]);
    s.memory_mib = Some(64);
    let mut task = worker.start(s).await.unwrap();
    let (out, err, exit) = output(&mut task).await;
    assert!(exit.oom_killed, "exit {exit:?}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(!exit.success());
}

#[tokio::test]
async fn kill_ends_a_task_from_another_task() {
    let Some((worker, base)) = worker().await else { return };
    // The entrypoint's own way out: SIGINT becomes KeyboardInterrupt in the program.
    let mut task = worker.start(spec(&base, &["python", "-c", "import time\ntry:\n    print('up', flush=True); time.sleep(600)\nexcept KeyboardInterrupt:\n    print('interrupted')"])).await.unwrap();
    let mut logs = task.logs().unwrap();
    assert_eq!(logs.recv().await.unwrap().text, "up");
    task.kill(Signal::Interrupt).unwrap();
    assert_eq!(logs.recv().await.unwrap().text, "interrupted");
    let exit = tokio::time::timeout(Duration::from_secs(20), task.wait()).await.expect("exited").unwrap();
    assert_eq!((exit.code, exit.signal), (0, None));

    // SIGKILL through a killer handle while another task awaits `wait`.
    let mut task = worker.start(spec(&base, &["sleep", "600"])).await.unwrap();
    let killer = task.killer();
    let waiter = tokio::spawn(async move { task.wait().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    killer.kill(Signal::Kill).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(20), waiter).await.expect("exited").unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    killer.kill(Signal::Terminate).expect("signalling an ended task is not an error");
}

#[tokio::test]
async fn programs_start_with_every_signal_at_its_default_action() {
    let Some((worker, base)) = worker().await else { return };
    // As in a server started in a shell's background (`nohup ferry serve &`): SIGHUP and
    // SIGQUIT ignored in this process, whose children inherit that across exec.
    let before = unsafe { [libc::signal(libc::SIGHUP, libc::SIG_IGN), libc::signal(libc::SIGQUIT, libc::SIG_IGN)] };
    let started = worker.start(spec(&base, &["grep", "SigIgn", "/proc/self/status"])).await;
    unsafe {
        libc::signal(libc::SIGHUP, before[0]);
        libc::signal(libc::SIGQUIT, before[1]);
    }
    let mut task = started.unwrap();
    let mut logs = task.logs().unwrap();
    let line = tokio::time::timeout(Duration::from_secs(30), logs.recv()).await.expect("a line").unwrap().text;
    let mask = u64::from_str_radix(line.split_whitespace().last().unwrap(), 16).unwrap();
    let inherited = (1u64 << (libc::SIGHUP - 1)) | (1u64 << (libc::SIGQUIT - 1));
    assert_eq!(mask & inherited, 0, "the program inherited ignored signals: {line}");
    let exit = tokio::time::timeout(Duration::from_secs(20), task.wait()).await.expect("exited").unwrap();
    assert_eq!(exit.code, 0);
}

#[tokio::test]
async fn credentials_the_client_cannot_send_are_refused() {
    let Some((worker, base)) = worker().await else { return };
    let mut s = spec(&base, &["true"]);
    s.task_secret = "a,b".into();
    let err = worker.start(s).await.unwrap_err();
    assert!(matches!(err, ferry_worker::Error::BadCredential { .. }), "{err}");
}

#[tokio::test]
async fn image_workdir_is_the_cwd_and_root_stays_importable() {
    let Some((worker, base)) = worker().await else { return };
    let store = ImageStore::open(data_dir()).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let layer = ferry_runtime::ImageBuilder::new(store)
        .build(&ferry_runtime::LayerSpec::on(&base, &["WORKDIR /app", "ENV PYTHONPATH=/opt/lib"]), &tx)
        .await
        .unwrap()
        .id;
    let host = std::env::temp_dir().join(format!("ferry-worker-mod-{}.py", std::process::id()));
    std::fs::write(&host, "VALUE = 42\n").unwrap();
    let mut s = spec(&layer, &["python", "-c", "import os, mod; print(os.getcwd(), mod.VALUE, os.environ['PYTHONPATH'])"]);
    s.files.push((host.clone(), "/root/mod.py".into()));
    let mut task = worker.start(s).await.unwrap();
    let (out, err, exit) = output(&mut task).await;
    std::fs::remove_file(&host).unwrap();
    assert!(exit.success(), "exit {exit:?}\nstderr:\n{err}");
    assert_eq!(out, "/app 42 /pkg:/root:/opt/lib\n");
}

/// `block_network` tasks reach Ferry through a unix socket passed in `files`, read-only
/// like every file: connecting needs no write access to the mount.
#[tokio::test]
async fn blocked_network_task_reaches_a_socket_from_files() {
    use tokio::io::AsyncReadExt;
    let Some((worker, base)) = worker().await else { return };
    let sock = std::env::temp_dir().join(format!("ferry-worker-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let client = "import socket\n\
                  s = socket.socket(socket.AF_UNIX); s.connect('/run/ferry/api.sock'); s.sendall(b'hello')\n\
                  print([name for _, name in socket.if_nameindex()])\n";
    let mut s = spec(&base, &["python", "-c", client]);
    s.server_url = "unix:///run/ferry/api.sock".into();
    s.block_network = true;
    s.files.push((sock.clone(), "/run/ferry/api.sock".into()));
    let mut task = worker.start(s).await.unwrap();
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept()).await.expect("connection").unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello");
    let (out, err, exit) = output(&mut task).await;
    std::fs::remove_file(&sock).unwrap();
    assert!(exit.success(), "exit {exit:?}\nstderr:\n{err}");
    assert_eq!(out, "['lo']\n", "only loopback in a blocked network");
}

#[tokio::test]
async fn sweep_removes_what_dead_workers_left() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: sweeping cgroups needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ferry-worker-sweep-{}", std::process::id()));
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let _ = { dead }.wait();
    let left = [
        dir.join(format!("tasks/{dead_pid}-0-ta_1")),
        dir.join(format!("runtime/.staging-{dead_pid}-modal-1.6.4-py3.11/pkg")),
    ];
    let kept = dir.join(format!("tasks/{}-0-ta_2", std::process::id()));
    for d in left.iter().chain([&kept]) {
        std::fs::create_dir_all(d).unwrap();
    }
    let worker = Worker::new(&dir, ImageStore::open(&dir).unwrap());
    assert!(worker.sweep_stale() >= 2);
    assert!(!left[0].exists() && !left[1].parent().unwrap().exists());
    assert!(kept.exists(), "a live worker's task directory is kept");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The driver libraries a GPU task gets reach the image's loader cache. There is no GPU here:
/// a made-up `libcuda.so.1` (a fake, an empty shared object) stands in for the driver's.
#[tokio::test]
async fn gpu_tasks_put_the_driver_libraries_in_the_loader_cache() {
    let Some((worker, base)) = worker().await else { return };
    let dir = std::env::temp_dir().join(format!("ferry-worker-fake-driver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("empty.c"), "int ferry_fake_cuda;\n").unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(dir.join("libcuda.so.1"))
        .arg(dir.join("empty.c"))
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!("skipping: no C compiler to make the fake driver library");
        return;
    }
    std::fs::remove_file(dir.join("empty.c")).unwrap();
    let probe = vec!["sh".to_string(), "-c".to_string(), "ldconfig -p | grep libcuda.so.1".to_string()];
    let mut s = spec(&base, &[]);
    s.command = Some(ferry_worker::refresh_ldcache_then(probe));
    s.files.push((dir.clone(), ferry_runtime::DRIVER_LIB_DIR.into()));
    let mut task = worker.start(s).await.unwrap();
    let (out, err, exit) = output(&mut task).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(exit.success(), "exit {exit:?}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("libcuda.so.1") && out.contains("=> /usr/local/nvidia/lib64/libcuda.so.1"), "{out}");
}
