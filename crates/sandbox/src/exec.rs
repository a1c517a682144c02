//! Processes started in a running sandbox (`sb.exec`), with their output, stdin and exit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_runtime::{Container, ExecSpec, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use crate::error::{Result, SandboxError};
use crate::fs_tools;
use crate::output::{OutputBuffer, Overflow};
use crate::stdin::Stdin;

/// Unread exec output held per stream before the process is made to wait.
const EXEC_WINDOW: usize = 16 * 1024 * 1024;
/// stdin bytes buffered between the router and a process.
const STDIN_PIPE: usize = 1024 * 1024;

/// Where an exec's stream goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTo {
    Pipe,
    DevNull,
    /// stderr folded into stdout.
    Stdout,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    pub exec_id: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub timeout: Option<Duration>,
    pub stdout: StreamTo,
    pub stderr: StreamTo,
    /// Run on a terminal of (rows, columns); its output arrives as stdout.
    pub tty: Option<(u16, u16)>,
}

/// How an exec ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecExit {
    Code(i32),
    Signal(i32),
}

pub(crate) struct Exec {
    pub stdout: Arc<OutputBuffer>,
    pub stderr: Arc<OutputBuffer>,
    pub stdin: Stdin,
    exit: watch::Receiver<Option<ExecExit>>,
}

impl Exec {
    /// Starts `req` in `container` (whose init is host pid `pid`).
    pub(crate) async fn start(container: &Container, pid: u32, req: ExecRequest) -> Result<Arc<Exec>> {
        let program = req.command.first().ok_or_else(|| SandboxError::Invalid("exec needs a command".into()))?;
        let stdout = Arc::new(OutputBuffer::new(EXEC_WINDOW, Overflow::Block));
        let stderr = Arc::new(OutputBuffer::new(EXEC_WINDOW, Overflow::Block));
        let (exit_tx, exit) = watch::channel(None);

        if program == fs_tools::FS_TOOLS_PATH {
            let (ours, theirs) = tokio::io::duplex(STDIN_PIPE);
            let exec = Arc::new(Exec { stdout: stdout.clone(), stderr: stderr.clone(), stdin: Stdin::new(Some(Box::new(ours))), exit });
            let args = req.command.clone();
            tokio::spawn(async move {
                let code = fs_tools::run(pid, &args, theirs, stdout, stderr).await;
                let _ = exit_tx.send(Some(ExecExit::Code(code)));
            });
            return Ok(exec);
        }

        let mut spec = ExecSpec::new(req.command.clone());
        spec.env = req.env.clone();
        spec.workdir = req.workdir.clone();
        spec.stdin = req.tty.is_none();
        spec.raw_output = true;
        spec.tty = req.tty;
        let mut process = match container.exec(spec).await {
            Ok(p) => p,
            // As a shell would: a program that cannot be started is exit code 127 (126 when it
            // is not executable) with the reason on stderr, not a failed RPC.
            Err(ferry_runtime::Error::Spawn { program, source }) => {
                let code = if source.kind() == std::io::ErrorKind::PermissionDenied { 126 } else { 127 };
                stderr.push(Bytes::from(format!("{program}: {source}\n"))).await;
                stdout.close();
                stderr.close();
                let _ = exit_tx.send(Some(ExecExit::Code(code)));
                return Ok(Arc::new(Exec { stdout, stderr, stdin: Stdin::new(None), exit }));
            }
            Err(e) => return Err(e.into()),
        };
        let (stdin_pipe, pumps) = match process.pty() {
            Some(master) => {
                // One terminal carries both directions; reads end with EIO once every process
                // holding it has exited.
                let reader = tokio::fs::File::from_std(std::fs::File::from(master.try_clone().map_err(|e| SandboxError::Internal(e.to_string()))?));
                let writer = tokio::fs::File::from_std(std::fs::File::from(master));
                let out = tokio::spawn(pump(reader, Some(stdout.clone())));
                (Some(Box::new(writer) as crate::stdin::Pipe), vec![out])
            }
            None => {
                let raw = process.output().expect("raw output was asked for");
                let err_into = match req.stderr {
                    StreamTo::Pipe => Some(stderr.clone()),
                    StreamTo::Stdout => Some(stdout.clone()),
                    StreamTo::DevNull => None,
                };
                let out = tokio::spawn(pump(raw.stdout, (req.stdout != StreamTo::DevNull).then(|| stdout.clone())));
                let err = tokio::spawn(pump(raw.stderr, err_into));
                (process.stdin().map(|p| Box::new(p) as crate::stdin::Pipe), vec![out, err])
            }
        };
        let exec = Arc::new(Exec { stdout: stdout.clone(), stderr: stderr.clone(), stdin: Stdin::new(stdin_pipe), exit });
        let timeout = req.timeout;
        let is_tty = req.tty.is_some();
        tokio::spawn(async move {
            let status = match timeout {
                Some(t) => match tokio::time::timeout(t, process.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = process.kill(Signal::Kill);
                        process.wait().await
                    }
                },
                None => process.wait().await,
            };
            for p in pumps {
                if is_tty {
                    // A background job may keep the terminal open after the command exits.
                    let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
                } else {
                    let _ = p.await;
                }
            }
            stdout.close();
            stderr.close();
            let exit = match status {
                Ok(s) => match s.signal {
                    Some(sig) => ExecExit::Signal(sig),
                    None => ExecExit::Code(s.code),
                },
                Err(e) => {
                    tracing::warn!("waiting for an exec failed: {e}");
                    ExecExit::Code(255)
                }
            };
            let _ = exit_tx.send(Some(exit));
        });
        Ok(exec)
    }

    pub(crate) fn poll(&self) -> Option<ExecExit> {
        *self.exit.borrow()
    }

    /// Finished, and every byte of its output was taken by a reader (or dropped).
    pub(crate) fn is_spent(&self) -> bool {
        self.poll().is_some() && self.stdout.is_drained() && self.stderr.is_drained()
    }

    pub(crate) async fn wait(&self) -> ExecExit {
        let mut rx = self.exit.clone();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().unwrap_or(ExecExit::Code(255));
            }
        }
    }
}

/// Copies a pipe into a buffer (or discards it), until EOF.
pub(crate) async fn pump(pipe: impl AsyncRead + Unpin, into: Option<Arc<OutputBuffer>>) {
    pump_logged(pipe, into, None).await
}

/// [`pump`], copying what it reads into the app's log as stream `fd` as well.
pub(crate) async fn pump_logged(mut pipe: impl AsyncRead + Unpin, into: Option<Arc<OutputBuffer>>, log: Option<(crate::applog::AppLog, i32)>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some((log, fd)) = &log {
                    log.copy(*fd, &buf[..n]);
                }
                if let Some(b) = &into {
                    b.push(Bytes::copy_from_slice(&buf[..n])).await;
                }
            }
        }
    }
}
