//! One running sandbox: its container, the main process's stdio, its execs, tunnels, probe,
//! and the supervisor that enforces `timeout` and `idle_timeout` and records the outcome.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_runtime::{Container, Signal};
use ferry_store::Store;
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};

use crate::error::{Result, SandboxError};
use crate::exec::{Exec, ExecRequest};
use crate::net::{self, Tunnel};
use crate::output::{OutputBuffer, Overflow};
use crate::stdin::Stdin;
use crate::{Probe, Status};

/// Main-process output kept in memory per stream (older output is dropped, never blocks).
const MAIN_WINDOW: usize = 4 * 1024 * 1024;

/// Why a sandbox is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    Terminated,
    Timeout,
    IdleTimeout,
}

pub(crate) struct LiveSandbox {
    pub id: String,
    pub task_id: String,
    pub pid: u32,
    pub container: tokio::sync::Mutex<Container>,
    pub stdout: Arc<OutputBuffer>,
    pub stderr: Arc<OutputBuffer>,
    pub stdin: Stdin,
    /// The last numbered V1 stdin write applied.
    pub v1_stdin_index: Mutex<u32>,
    pub execs: Mutex<HashMap<String, Arc<Exec>>>,
    pub tunnels: Mutex<Vec<Tunnel>>,
    pub ready_at: watch::Sender<Option<f64>>,
    pub has_probe: bool,
    stop: Mutex<Option<StopReason>>,
    stop_requested: Notify,
    pub finished: watch::Sender<bool>,
    last_activity: Mutex<Instant>,
    /// Volumes mounted in the sandbox.
    pub volumes: Vec<crate::VolumeMount>,
}

impl LiveSandbox {
    pub(crate) fn new(id: String, task_id: String, mut container: Container, has_probe: bool, volumes: Vec<crate::VolumeMount>, app_log: Option<crate::applog::AppLog>) -> Arc<LiveSandbox> {
        let pid = container.pid();
        let stdout = Arc::new(OutputBuffer::new(MAIN_WINDOW, Overflow::DropOldest));
        let stderr = Arc::new(OutputBuffer::new(MAIN_WINDOW, Overflow::DropOldest));
        let mut stdin_pipe = container.stdin().map(|p| Box::new(p) as crate::stdin::Pipe);
        if let Some(master) = container.pty() {
            // The terminal carries stdin and both outputs; stderr stays empty.
            if let Ok(reader) = master.try_clone() {
                let (o, log) = (stdout.clone(), app_log.clone());
                tokio::spawn(async move {
                    crate::exec::pump_logged(tokio::fs::File::from_std(std::fs::File::from(reader)), Some(o.clone()), log.map(|l| (l, 1))).await;
                    o.close();
                });
            }
            stderr.close();
            stdin_pipe = Some(Box::new(tokio::fs::File::from_std(std::fs::File::from(master))) as crate::stdin::Pipe);
        }
        let stdin = Stdin::new(stdin_pipe);
        if let Some(raw) = container.output() {
            let (o, e) = (stdout.clone(), stderr.clone());
            let (log_out, log_err) = (app_log.clone().map(|l| (l, 1)), app_log.map(|l| (l, 2)));
            tokio::spawn(async move {
                crate::exec::pump_logged(raw.stdout, Some(o.clone()), log_out).await;
                o.close();
            });
            tokio::spawn(async move {
                crate::exec::pump_logged(raw.stderr, Some(e.clone()), log_err).await;
                e.close();
            });
        }
        Arc::new(LiveSandbox {
            id,
            task_id,
            pid,
            container: tokio::sync::Mutex::new(container),
            stdout,
            stderr,
            stdin,
            v1_stdin_index: Mutex::new(0),
            execs: Mutex::new(HashMap::new()),
            tunnels: Mutex::new(Vec::new()),
            ready_at: watch::channel(None).0,
            has_probe,
            stop: Mutex::new(None),
            stop_requested: Notify::new(),
            finished: watch::channel(false).0,
            last_activity: Mutex::new(Instant::now()),
            volumes,
        })
    }

    pub(crate) fn is_finished(&self) -> bool {
        *self.finished.borrow()
    }

    /// Something used the sandbox: the idle timeout starts over.
    pub(crate) fn touch(&self) {
        *self.last_activity.lock().unwrap() = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        let running = self.execs.lock().unwrap().values().any(|e| e.poll().is_none());
        if running {
            return Duration::ZERO;
        }
        self.last_activity.lock().unwrap().elapsed()
    }

    /// Asks the supervisor to stop the sandbox (the first reason wins).
    pub(crate) fn request_stop(&self, reason: StopReason) {
        let mut stop = self.stop.lock().unwrap();
        if stop.is_none() {
            *stop = Some(reason);
        }
        drop(stop);
        self.stop_requested.notify_one();
    }

    pub(crate) async fn exec(&self, req: ExecRequest) -> Result<Arc<Exec>> {
        if self.is_finished() {
            return Err(SandboxError::Conflict(format!("Sandbox {} has already finished", self.id)));
        }
        self.touch();
        if let Some(e) = self.execs.lock().unwrap().get(&req.exec_id) {
            // A retried start: the process already runs.
            return Ok(e.clone());
        }
        let exec_id = req.exec_id.clone();
        {
            // Finished execs whose output was read are kept a while for late `wait`/`poll`
            // calls, but not forever: a long-lived sandbox runs many.
            let mut execs = self.execs.lock().unwrap();
            if execs.len() > 256 {
                execs.retain(|_, e| !e.is_spent());
            }
        }
        let exec = {
            let container = self.container.lock().await;
            Exec::start(&container, self.pid, req).await?
        };
        self.execs.lock().unwrap().insert(exec_id, exec.clone());
        Ok(exec)
    }

    pub(crate) fn get_exec(&self, exec_id: &str) -> Result<Arc<Exec>> {
        self.touch();
        self.execs.lock().unwrap().get(exec_id).cloned().ok_or_else(|| SandboxError::NotFound(format!("no exec {exec_id} in Sandbox {}", self.id)))
    }

    pub(crate) async fn open_tunnels(self: &Arc<Self>, bind: IpAddr, ports: &[crate::PortSpec], tls: Option<&tokio_rustls::TlsAcceptor>) -> Result<()> {
        for spec in ports {
            let port = spec.port;
            let acceptor = if spec.tls {
                Some(tls.cloned().ok_or_else(|| {
                    SandboxError::Unimplemented(format!(
                        "encrypted_ports need a TLS certificate: start `ferry serve` with --tls-cert/--tls-key, or expose port {port} with unencrypted_ports"
                    ))
                })?)
            } else {
                None
            };
            let weak = Arc::downgrade(self);
            let on_conn: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                if let Some(s) = weak.upgrade() {
                    s.touch();
                }
            });
            let t = net::open_tunnel(bind, self.pid, port, acceptor, on_conn)
                .await
                .map_err(|e| SandboxError::Internal(format!("cannot open a tunnel to port {port}: {e}")))?;
            self.tunnels.lock().unwrap().push(t);
        }
        Ok(())
    }

    /// Runs the readiness probe until it passes or the sandbox ends.
    pub(crate) fn start_probe(self: &Arc<Self>, probe: Probe) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let interval = Duration::from_millis(probe.interval_ms().max(10) as u64);
            loop {
                let Some(s) = weak.upgrade() else { return };
                if s.is_finished() {
                    return;
                }
                let ok = match &probe {
                    Probe::Tcp { port, .. } => net::connect_in(s.pid, *port).await.is_ok(),
                    Probe::Exec { argv, .. } => {
                        let req = ExecRequest {
                            exec_id: format!("probe-{}", ferry_store::new_id("ex")),
                            command: argv.clone(),
                            env: vec![],
                            workdir: None,
                            timeout: Some(Duration::from_secs(60)),
                            stdout: crate::exec::StreamTo::DevNull,
                            stderr: crate::exec::StreamTo::DevNull,
                            tty: None,
                        };
                        let started = {
                            let c = s.container.lock().await;
                            Exec::start(&c, s.pid, req).await
                        };
                        match started {
                            Ok(e) => e.wait().await == crate::exec::ExecExit::Code(0),
                            Err(_) => false,
                        }
                    }
                };
                if ok {
                    s.ready_at.send_replace(Some(ferry_store::now()));
                    return;
                }
                drop(s);
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// Waits until the probe passed; `Ok(None)` if the sandbox finished first.
    pub(crate) async fn wait_ready(&self, timeout: Duration) -> Result<f64> {
        if !self.has_probe {
            return Err(SandboxError::Conflict("this Sandbox was created without a readiness_probe".into()));
        }
        let mut ready = self.ready_at.subscribe();
        let mut finished = self.finished.subscribe();
        let wait = async {
            loop {
                if let Some(t) = *ready.borrow_and_update() {
                    return Ok(t);
                }
                if *finished.borrow_and_update() {
                    return Err(SandboxError::Conflict(format!("Sandbox {} finished before it was ready", self.id)));
                }
                tokio::select! {
                    _ = ready.changed() => {}
                    _ = finished.changed() => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| Err(SandboxError::DeadlineExceeded("the Sandbox did not become ready in time".into())))
    }
}

/// Watches the sandbox until its main process exits, stopping it on terminate, `timeout` or
/// `idle_timeout`, then records the outcome in the store.
pub(crate) async fn supervise(s: Arc<LiveSandbox>, store: Store, timeout: Duration, idle_timeout: Option<Duration>, volumes: &ferry_volumes::Volumes) {
    let started = Instant::now();
    let exited = wait_for_exit(s.pid);
    tokio::pin!(exited);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut killed = false;
    loop {
        tokio::select! {
            _ = &mut exited => break,
            _ = s.stop_requested.notified() => {}
            _ = tick.tick() => {
                if started.elapsed() >= timeout {
                    s.request_stop(StopReason::Timeout);
                } else if idle_timeout.is_some_and(|t| s.idle_for() >= t) {
                    s.request_stop(StopReason::IdleTimeout);
                }
            }
        }
        if !killed && s.stop.lock().unwrap().is_some() {
            killed = true;
            let _ = s.container.lock().await.kill(Signal::Kill);
        }
    }
    let exit = s.container.lock().await.wait().await;
    let reason = *s.stop.lock().unwrap();
    let (status, code, message) = match (reason, exit) {
        (Some(StopReason::Terminated), _) => (Status::Terminated, None, String::new()),
        (Some(StopReason::Timeout), _) => (Status::Timeout, None, format!("Sandbox ran past its timeout of {}s", timeout.as_secs())),
        (Some(StopReason::IdleTimeout), _) => (Status::IdleTimeout, None, "Sandbox was idle past its idle_timeout".to_string()),
        (None, Ok(e)) if e.oom_killed => (Status::OutOfMemory, Some(e.code), "Sandbox ran out of memory".to_string()),
        (None, Ok(e)) if e.code == 0 => (Status::Success, Some(0), String::new()),
        (None, Ok(e)) => (Status::Failure, Some(e.code), String::new()),
        (None, Err(e)) => (Status::Failure, Some(255), e.to_string()),
    };
    s.tunnels.lock().unwrap().clear();
    // Volume writes are committed when the sandbox ends, before its outcome is visible, so a
    // caller that waited on the sandbox reads them.
    volumes.task_exited(&s.task_id);
    let mut committed = std::collections::HashSet::new();
    for v in s.volumes.iter().filter(|v| !v.read_only) {
        if committed.insert(v.volume_id.clone()) {
            if let Err(e) = volumes.commit_task(&s.task_id, &v.volume_id).await {
                tracing::warn!(sandbox = %s.id, volume = %v.volume_id, "committing the Sandbox's volume writes failed: {e}");
            }
        }
    }
    volumes.release_task(&s.task_id).await;
    if let Err(e) = store.finish_sandbox(&s.id, status as i32, code, &message).await {
        tracing::warn!(sandbox = %s.id, "recording the outcome failed: {e}");
    }
    s.finished.send_replace(true);
    tracing::info!(sandbox = %s.id, ?status, ?code, "sandbox finished");
}

/// Resolves when process `pid` has exited (a pidfd becomes readable then).
async fn wait_for_exit(pid: u32) {
    // SAFETY: pidfd_open takes a pid and flags; the fd it returns is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as RawFd;
    if fd < 0 {
        // Already gone.
        return;
    }
    // SAFETY: a fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns `fd`, which stays open (and the same) until it is dropped.
    match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
        Ok(a) => {
            let _ = a.readable().await;
        }
        Err(_) => loop {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        },
    }
}
