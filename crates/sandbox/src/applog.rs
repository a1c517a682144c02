//! A sandbox's main process output copied into its app's log (what `Sandbox.logs` and
//! `modal app logs` read), line by line, under the sandbox's container id. Copying never slows
//! the process: chunks the writer cannot take yet are dropped from the log (and counted in a
//! note), never from the sandbox's own stdout/stderr stream.

use bytes::Bytes;
use ferry_store::{NewLog, Store};
use tokio::sync::mpsc;

/// Chunks in flight to the writer before further ones are dropped from the log.
const CHUNKS: usize = 1024;
/// Longest line kept whole; a longer one is cut into pieces of this size.
const MAX_LINE: usize = 64 * 1024;
/// Most lines written in one commit.
const BATCH: usize = 512;

/// The sending side; one per sandbox, cloned for stdout and stderr.
#[derive(Clone)]
pub(crate) struct AppLog {
    tx: mpsc::Sender<(i32, Bytes)>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl AppLog {
    /// Starts the writer for a sandbox of `app_id` running as `task_id`.
    pub(crate) fn start(store: Store, app_id: String, task_id: String) -> AppLog {
        let (tx, rx) = mpsc::channel(CHUNKS);
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(write(store, app_id, task_id, rx, dropped.clone()));
        AppLog { tx, dropped }
    }

    /// Hands a chunk of stream `fd` (1 stdout, 2 stderr) to the writer, or drops it.
    pub(crate) fn copy(&self, fd: i32, data: &[u8]) {
        if self.tx.try_send((fd, Bytes::copy_from_slice(data))).is_err() {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

async fn write(store: Store, app_id: String, task_id: String, mut rx: mpsc::Receiver<(i32, Bytes)>, dropped: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    // Partial last lines per stream (index fd - 1).
    let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let line = |fd: i32, bytes: &[u8]| NewLog {
        task_id: task_id.clone(),
        fd,
        data: String::from_utf8_lossy(bytes).into_owned(),
        timestamp: Some(ferry_store::now()),
        ..Default::default()
    };
    let mut reported = 0;
    while let Some((fd, chunk)) = rx.recv().await {
        let mut lines = Vec::new();
        let mut next = Some((fd, chunk));
        while let Some((fd, chunk)) = next.take() {
            let buf = &mut partial[(fd.clamp(1, 2) - 1) as usize];
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|&b| b == b'\n').or((buf.len() >= MAX_LINE).then_some(MAX_LINE - 1)) {
                let rest = buf.split_off(end + 1);
                lines.push(line(fd, &buf[..]));
                *buf = rest;
            }
            if lines.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        let lost = dropped.load(std::sync::atomic::Ordering::Relaxed);
        if lost > reported {
            lines.push(line(3, format!("{} chunks of output were left out of the log: the sandbox wrote faster than the log is stored\n", lost - reported).as_bytes()));
            reported = lost;
        }
        let _ = store.append_logs(&app_id, &lines).await;
    }
    // The process closed its outputs: what is left without a newline is a line too.
    let tail: Vec<NewLog> = partial.iter().enumerate().filter(|(_, b)| !b.is_empty()).map(|(i, b)| line(i as i32 + 1, b)).collect();
    let _ = store.append_logs(&app_id, &tail).await;
}
