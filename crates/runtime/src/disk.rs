//! The ephemeral disk limit (`Limits::disk_mib`) of a writable layer on disk.
//!
//! The data dir's file system (ext4 without project quotas, as on most hosts) has no per-
//! directory quota, so a watcher sums the layer's allocated blocks at an interval that grows
//! with the tree's size (0.25 s for a small tree; about 2% of one core for a 20k-file tree)
//! and kills the container once it is over the limit. A tmpfs layer (`Scratch::Memory`) is
//! capped by its size instead.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct DiskWatch {
    exceeded: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl DiskWatch {
    /// Watches `upper`; over `limit` bytes, SIGKILLs the container whose init is `pid`.
    pub(crate) fn start(upper: PathBuf, limit: u64, pid: i32) -> Option<Self> {
        // SAFETY: pidfd_open on a pid; the fd is ours.
        let pidfd = unsafe {
            let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
            if fd < 0 {
                return None;
            }
            OwnedFd::from_raw_fd(fd)
        };
        let exceeded = Arc::new(AtomicBool::new(false));
        let flag = exceeded.clone();
        let task = tokio::spawn(async move {
            let mut interval = Duration::from_millis(250);
            loop {
                tokio::time::sleep(interval).await;
                let dir = upper.clone();
                let started = Instant::now();
                let Ok(used) = tokio::task::spawn_blocking(move || usage(&dir, limit)).await else { return };
                interval = (started.elapsed() * 50).clamp(Duration::from_millis(250), Duration::from_secs(5));
                if used > limit {
                    flag.store(true, Ordering::SeqCst);
                    // SAFETY: a valid pidfd, a signal number, no siginfo.
                    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0) };
                    return;
                }
            }
        });
        Some(DiskWatch { exceeded, task })
    }

    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Allocated bytes under `dir` (not following links); stops counting past `stop_after`.
pub(crate) fn usage(dir: &Path, stop_after: u64) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
            if total > stop_after {
                return total;
            }
        }
    }
    total
}
