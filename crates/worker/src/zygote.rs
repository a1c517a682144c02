//! Memory-snapshot zygotes: one container per function definition whose Python has imported
//! the user's code and run the `@modal.enter(snap=True)` methods once, then forks one child
//! process per task (`py/ferry_zygote.py`).
//!
//! What a child gets of its own: its process and (copy-on-write) memory, its environment (task
//! id, credential, secrets), its container arguments and app files, its stdout/stderr (two
//! FIFOs in its own directory, read here as the task's logs), its exit status. What siblings
//! share: the zygote container itself, i.e. its filesystem (overlay upper: a file one child
//! writes, another can read), its cgroup (limits apply to the children together, scaled by
//! [`CHILD_SHARE`]), its pid, ipc and uts namespaces and its network. All children of a zygote
//! run the same function of the same app; docs/memory-snapshots.md says this plainly.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_runtime::{BindMount, Container, ContainerSpec, ExitStatus, LogLine, Stream};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{Error, Result, TaskDir, TaskSpec};

/// A zygote's cgroup limits are the task's times this: its children share them.
pub const CHILD_SHARE: u64 = 8;
/// How long a zygote may take to import the user's code and run the snap=True enter methods.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
const MARK: &str = "\u{1e}ferry-zygote ";
/// Output lines of the zygote itself kept for the error message when it fails.
const TAIL_LINES: usize = 40;

#[derive(Debug, Clone)]
enum Phase {
    Starting,
    Ready,
    Failed(String),
}

#[derive(Debug)]
struct Child {
    started: Option<oneshot::Sender<std::result::Result<u32, String>>>,
    exit: Option<oneshot::Sender<ExitStatus>>,
}

#[derive(Debug)]
pub(crate) struct Zygote {
    phase: watch::Receiver<Phase>,
    orders: mpsc::UnboundedSender<Vec<u8>>,
    children: Mutex<HashMap<String, Child>>,
    last_used: Mutex<Instant>,
    container_id: String,
    pid: u32,
    dir: TaskDir,
    /// Dropping the zygote kills its container (and with it every child).
    _container: Mutex<Option<Container>>,
}

/// The zygotes of this worker, by function definition and container shape.
#[derive(Debug, Default)]
pub(crate) struct Zygotes {
    map: tokio::sync::Mutex<HashMap<String, Arc<Zygote>>>,
    reaper: std::sync::atomic::AtomicBool,
}

/// A task running as a zygote's child.
#[derive(Debug)]
pub(crate) struct ChildTask {
    zygote: Arc<Zygote>,
    task_id: String,
    logs: Option<mpsc::UnboundedReceiver<LogLine>>,
    exit: Option<oneshot::Receiver<ExitStatus>>,
    status: Option<ExitStatus>,
}

impl ChildTask {
    pub fn container_id(&self) -> &str {
        &self.zygote.container_id
    }

    pub fn pid(&self) -> u32 {
        self.zygote.pid
    }

    pub fn logs(&mut self) -> Option<mpsc::UnboundedReceiver<LogLine>> {
        self.logs.take()
    }

    pub fn killer(&self) -> (Weak<Zygote>, String) {
        (Arc::downgrade(&self.zygote), self.task_id.clone())
    }

    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let status = match self.exit.take() {
            Some(rx) => rx.await.unwrap_or(ExitStatus { code: 137, signal: Some(9), oom_killed: false, peak_memory_bytes: None, disk_exceeded: false }),
            None => ExitStatus { code: 137, signal: Some(9), oom_killed: false, peak_memory_bytes: None, disk_exceeded: false },
        };
        self.status = Some(status);
        *self.zygote.last_used.lock().unwrap() = Instant::now();
        status
    }
}

impl Drop for ChildTask {
    fn drop(&mut self) {
        if self.status.is_none() {
            kill(&self.zygote, &self.task_id, libc::SIGKILL);
        }
        self.zygote.children.lock().unwrap().remove(&self.task_id);
        *self.zygote.last_used.lock().unwrap() = Instant::now();
    }
}

/// Signals one child through its zygote (which is its parent).
pub(crate) fn kill(zygote: &Zygote, task_id: &str, signal: i32) {
    let mut line = serde_json::to_vec(&serde_json::json!({ "kill": task_id, "signal": signal })).expect("plain JSON");
    line.push(b'\n');
    let _ = zygote.orders.send(line);
}

impl Zygotes {
    /// Runs `spec`'s task as a child of the zygote for `key`, starting the zygote first if
    /// there is none (the task's own container arguments and credential are then the
    /// zygote's: its output goes to this task's logs).
    pub async fn start_child(&self, worker: &crate::Worker, key: String, spec: &TaskSpec, env: Vec<(String, String)>, template: ContainerSpec) -> Result<(ChildTask, TaskDir)> {
        let (zygote, first_logs) = {
            let mut map = self.map.lock().await;
            let alive = map.get(&key).filter(|z| !matches!(&*z.phase.borrow(), Phase::Failed(_))).cloned();
            match alive {
                Some(z) => (z, None),
                None => {
                    let (z, logs) = start_zygote(worker, spec, template).await?;
                    map.insert(key.clone(), z.clone());
                    (z, Some(logs))
                }
            }
        };
        if !self.reaper.swap(true, std::sync::atomic::Ordering::SeqCst) {
            start_reaper(worker);
        }
        *zygote.last_used.lock().unwrap() = Instant::now();
        let mut phase = zygote.phase.clone();
        let ready = tokio::time::timeout(READY_TIMEOUT, async { phase.wait_for(|p| !matches!(p, Phase::Starting)).await.map(|p| p.clone()) }).await;
        let failure = match ready {
            Err(_) => Some("the memory snapshot's set-up did not finish in time".to_string()),
            Ok(Err(_)) => Some("the memory snapshot's container ended".to_string()),
            Ok(Ok(Phase::Failed(m))) => Some(m),
            Ok(Ok(_)) => None,
        };
        if let Some(message) = failure {
            let mut map = self.map.lock().await;
            if map.get(&key).is_some_and(|z| Arc::ptr_eq(z, &zygote)) {
                map.remove(&key);
            }
            return Err(Error::Io { context: "the memory snapshot".into(), path: zygote.dir.0.clone(), source: std::io::Error::other(message) });
        }
        fork_child(zygote, spec, env, first_logs).await
    }

    /// Drops zygotes without children that nobody used within `idle`.
    async fn shrink(&self, idle: Duration) {
        let mut map = self.map.lock().await;
        map.retain(|_, z| {
            let busy = !z.children.lock().unwrap().is_empty();
            let failed = matches!(&*z.phase.borrow(), Phase::Failed(_));
            !failed && (busy || z.last_used.lock().unwrap().elapsed() < idle)
        });
    }
}

fn start_reaper(worker: &crate::Worker) {
    let idle = worker.inner.pool.as_ref().map(|p| p.config.idle).unwrap_or(Duration::from_secs(300));
    let period = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    let weak = Arc::downgrade(&worker.inner);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(inner) = weak.upgrade() else { return };
            inner.zygotes.shrink(idle).await;
        }
    });
}

async fn start_zygote(worker: &crate::Worker, spec: &TaskSpec, mut template: ContainerSpec) -> Result<(Arc<Zygote>, mpsc::UnboundedReceiver<LogLine>)> {
    let dir = worker.new_task_dir("zygote")?;
    let args = dir.0.join("zygote_arguments.pb");
    std::fs::write(&args, &spec.container_arguments).map_err(|source| Error::Io { context: "writing the container arguments".into(), path: args.clone(), source })?;
    template.mounts.push(BindMount::read_only(&args, crate::CONTAINER_ARGUMENTS_PATH));
    template.mounts.extend(spec.files.iter().map(|(host, target)| BindMount::read_only(host, target.as_str())));
    template.mounts.push(BindMount::read_only(&dir.0, crate::pool::INPUT_MOUNT));
    template.env.push(("FERRY_ZYGOTE".into(), "1".into()));
    // The zygote is isolated as every task container is (the template's own network
    // namespace, forwards, user namespace, seccomp); its children share it.
    template.stdin = true;
    template.limits.memory_mib = template.limits.memory_mib.map(|m| m * CHILD_SHARE);
    template.limits.cpu_cores = template.limits.cpu_cores.map(|c| c * CHILD_SHARE as f64);
    template.limits.pids = template.limits.pids.map(|p| p * CHILD_SHARE);
    let mut container = worker.inner.runtime.spawn(template).await?;
    let mut stdin = container.stdin().ok_or_else(|| Error::Io { context: "the zygote has no stdin".into(), path: dir.0.clone(), source: std::io::Error::other("no stdin") })?;
    let mut logs = container.logs().expect("fresh container");
    let (orders, mut order_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(line) = order_rx.recv().await {
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                return;
            }
        }
        // Every sender gone: the zygote is being dropped; closing stdin ends it.
    });
    let (phase_tx, phase) = watch::channel(Phase::Starting);
    let zygote = Arc::new(Zygote {
        phase,
        orders,
        children: Mutex::new(HashMap::new()),
        last_used: Mutex::new(Instant::now()),
        container_id: container.id().to_string(),
        pid: container.pid(),
        dir,
        _container: Mutex::new(Some(container)),
    });
    let (first_tx, first_rx) = mpsc::unbounded_channel::<LogLine>();
    let weak = Arc::downgrade(&zygote);
    tokio::spawn(async move {
        let mut tail: VecDeque<String> = VecDeque::new();
        while let Some(line) = logs.recv().await {
            let Some(event) = line.text.strip_prefix(MARK) else {
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.text.clone());
                let _ = first_tx.send(line);
                continue;
            };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(event) else { continue };
            let Some(z) = weak.upgrade() else { break };
            if event.get("ready").is_some() {
                let _ = phase_tx.send(Phase::Ready);
            } else if let Some(task) = event.get("child").and_then(|t| t.as_str()) {
                let pid = event.get("pid").and_then(|p| p.as_u64()).unwrap_or(0) as u32;
                if let Some(c) = z.children.lock().unwrap().get_mut(task) {
                    if let Some(tx) = c.started.take() {
                        let _ = tx.send(Ok(pid));
                    }
                }
            } else if let Some(task) = event.get("refused").and_then(|t| t.as_str()) {
                let why = event.get("error").and_then(|e| e.as_str()).unwrap_or("refused").to_string();
                if let Some(c) = z.children.lock().unwrap().get_mut(task) {
                    if let Some(tx) = c.started.take() {
                        let _ = tx.send(Err(why));
                    }
                }
            } else if let Some(task) = event.get("exit").and_then(|t| t.as_str()) {
                let code = event.get("code").and_then(|c| c.as_i64()).unwrap_or(1) as i32;
                let signal = event.get("signal").and_then(|s| s.as_i64()).map(|s| s as i32);
                if let Some(c) = z.children.lock().unwrap().get_mut(task) {
                    if let Some(tx) = c.exit.take() {
                        let _ = tx.send(ExitStatus { code, signal, oom_killed: false, peak_memory_bytes: None, disk_exceeded: false });
                    }
                }
            } else if let Some(why) = event.get("failed").and_then(|f| f.as_str()) {
                let mut message = why.to_string();
                if !tail.is_empty() {
                    message = format!("{}\n{message}", Vec::from(tail.clone()).join("\n"));
                }
                let _ = phase_tx.send(Phase::Failed(message));
            }
        }
        // The zygote's output ended: it is gone, and so are its children.
        let message = if tail.is_empty() { "the memory snapshot's container exited".to_string() } else { format!("the memory snapshot's container exited; its last output:\n{}", Vec::from(tail).join("\n")) };
        let _ = phase_tx.send_if_modified(|p| {
            if matches!(p, Phase::Ready | Phase::Starting) {
                *p = Phase::Failed(message);
                true
            } else {
                false
            }
        });
        if let Some(z) = weak.upgrade() {
            for (_, c) in z.children.lock().unwrap().iter_mut() {
                if let Some(tx) = c.started.take() {
                    let _ = tx.send(Err("the memory snapshot's container exited".into()));
                }
                if let Some(tx) = c.exit.take() {
                    let _ = tx.send(ExitStatus { code: 137, signal: Some(9), oom_killed: false, peak_memory_bytes: None, disk_exceeded: false });
                }
            }
        }
    });
    Ok((zygote, first_rx))
}

async fn fork_child(zygote: Arc<Zygote>, spec: &TaskSpec, env: Vec<(String, String)>, first_logs: Option<mpsc::UnboundedReceiver<LogLine>>) -> Result<(ChildTask, TaskDir)> {
    let name = format!("child-{}", crate::next_seq());
    let dir = TaskDir(zygote.dir.0.join(&name));
    let inside = format!("{}/{name}", crate::pool::INPUT_MOUNT);
    std::fs::create_dir_all(&dir.0).map_err(|source| Error::Io { context: "creating a snapshot task's directory".into(), path: dir.0.clone(), source })?;
    // The app files are the zygote's (bound when it started): a definition with other code
    // has another key, hence another zygote.
    let args = dir.0.join("container_arguments.pb");
    std::fs::write(&args, &spec.container_arguments).map_err(|source| Error::Io { context: "writing the container arguments".into(), path: args.clone(), source })?;
    let mut env = env;
    for (k, v) in env.iter_mut() {
        if k == "MODAL_CONTAINER_ARGUMENTS_PATH" {
            *v = format!("{inside}/container_arguments.pb");
        }
    }
    let mut readers = Vec::new();
    for stream in ["stdout", "stderr"] {
        let path = dir.0.join(stream);
        mkfifo(&path)?;
        let rx = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(&path)
            .map_err(|source| Error::Io { context: "opening a snapshot task's output".into(), path: path.clone(), source })?;
        readers.push(rx);
    }
    let (started_tx, started_rx) = oneshot::channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    zygote.children.lock().unwrap().insert(spec.task_id.clone(), Child { started: Some(started_tx), exit: Some(exit_tx) });
    let env: serde_json::Map<String, serde_json::Value> = env.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    let order = serde_json::json!({
        "task": spec.task_id,
        "env": env,
        "stdout": format!("{inside}/stdout"),
        "stderr": format!("{inside}/stderr"),
    });
    let mut line = serde_json::to_vec(&order).expect("plain JSON");
    line.push(b'\n');
    let sent = zygote.orders.send(line).is_ok();
    let started = if sent { started_rx.await.unwrap_or_else(|_| Err("the memory snapshot's container exited".into())) } else { Err("the memory snapshot's container exited".into()) };
    if let Err(why) = started {
        zygote.children.lock().unwrap().remove(&spec.task_id);
        return Err(Error::Io { context: "starting a task from the memory snapshot".into(), path: dir.0.clone(), source: std::io::Error::other(why) });
    }
    let (tx, rx) = mpsc::unbounded_channel::<LogLine>();
    for (rx_pipe, stream) in readers.into_iter().zip([Stream::Stdout, Stream::Stderr]) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(rx_pipe).lines();
            while let Ok(Some(text)) = lines.next_line().await {
                let _ = tx.send(LogLine { stream, text });
            }
        });
    }
    if let Some(mut first) = first_logs {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(line) = first.recv().await {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    Ok((ChildTask { zygote, task_id: spec.task_id.clone(), logs: Some(rx), exit: Some(exit_rx), status: None }, dir))
}

fn mkfifo(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| Error::Io { context: "a FIFO path".into(), path: path.to_path_buf(), source: std::io::Error::other(e) })?;
    // SAFETY: a NUL-terminated path and a mode.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o622) } != 0 {
        return Err(Error::Io { context: "creating a FIFO".into(), path: path.to_path_buf(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}
