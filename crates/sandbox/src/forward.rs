//! `modal.forward`: a port of a function's container exposed on the host while the container
//! asks for it. The host listens (with TLS when the server has a certificate, and plain TCP for
//! `unencrypted=True`) and connects every accepted connection to the port on the container's
//! own loopback, inside its network namespace (as sandbox tunnels do, see [`crate::net`]), so
//! it works whether the container shares the host's network or has its own.
//!
//! The container is found by its task id: its processes carry `MODAL_TASK_ID` in their
//! environment. A forward ends when the container asks (`TunnelStop`), when its handle is
//! dropped, or by itself once that container's network namespace is gone.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use crate::net::open_tunnel;
use crate::{Result, SandboxError, Sandboxes};

/// Where a forwarded port is reachable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// The host name clients use, and the port of the TLS listener (or of the plain one when
    /// the server has no certificate and plain TCP was asked for).
    pub host: String,
    pub port: u16,
    /// The plain TCP listener, for `unencrypted=True`.
    pub unencrypted_port: Option<u16>,
}

/// An open forward; its listeners close when it is dropped.
pub struct Forward {
    watcher: tokio::task::JoinHandle<()>,
}

impl Forward {
    /// Whether the container is still there (the listeners are open).
    pub fn is_open(&self) -> bool {
        !self.watcher.is_finished()
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The lowest process id whose environment has `MODAL_TASK_ID=<task_id>`.
pub fn task_process(task_id: &str) -> Option<u32> {
    let needle = format!("MODAL_TASK_ID={task_id}");
    let mut pids: Vec<u32> = std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    pids.into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
    })
}

/// The inode of a process's network namespace (it changes, or vanishes, when the process goes).
fn netns(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino())
}

impl Sandboxes {
    /// Forwards `port` of the container of `task_id` to the host.
    pub async fn forward(&self, task_id: &str, port: u16, unencrypted: bool) -> Result<(Forwarded, Forward)> {
        if port == 0 {
            return Err(SandboxError::Invalid("port 0 cannot be forwarded".into()));
        }
        if !unencrypted && self.inner.tls.is_none() {
            return Err(SandboxError::Unimplemented(format!(
                "modal.forward({port}) serves TLS and needs a certificate: start `ferry serve` with --tls-cert/--tls-key, or use modal.forward({port}, unencrypted=True) and its tcp_socket"
            )));
        }
        let task = task_id.to_string();
        let pid = tokio::task::spawn_blocking(move || task_process(&task))
            .await
            .ok()
            .flatten()
            .ok_or_else(|| SandboxError::NotFound(format!("no running container of task {task_id}")))?;
        let ns = netns(pid).ok_or_else(|| SandboxError::NotFound(format!("the container of task {task_id} has exited")))?;
        let bind = self.inner.config.tunnel_bind;
        let noop: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {});
        let mut tunnels = Vec::new();
        let tls_port = match &self.inner.tls {
            Some(acceptor) => {
                let t = open_tunnel(bind, pid, port, Some(acceptor.clone()), noop.clone())
                    .await
                    .map_err(|e| SandboxError::Internal(format!("cannot listen for the forward of port {port}: {e}")))?;
                let p = t.host_port;
                tunnels.push(t);
                Some(p)
            }
            None => None,
        };
        let plain_port = if unencrypted {
            let t = open_tunnel(bind, pid, port, None, noop)
                .await
                .map_err(|e| SandboxError::Internal(format!("cannot listen for the forward of port {port}: {e}")))?;
            let p = t.host_port;
            tunnels.push(t);
            Some(p)
        } else {
            None
        };
        let info = Forwarded {
            host: self.inner.config.tunnel_host.clone(),
            port: tls_port.or(plain_port).unwrap_or_default(),
            unencrypted_port: plain_port,
        };
        // The watcher owns the listeners: they close when the container's namespace goes,
        // or when the forward is dropped (which aborts the watcher).
        let watcher = tokio::spawn(async move {
            let _tunnels = tunnels;
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if netns(pid) != Some(ns) {
                    return;
                }
            }
        });
        Ok((info, Forward { watcher }))
    }
}
