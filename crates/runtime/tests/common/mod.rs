//! Shared set-up for the runtime's integration tests: one prepared base in a cached data dir.

#![allow(dead_code)]

use std::path::PathBuf;

use ferry_runtime::{ImageStore, LayerId, LogLine};

/// `FERRY_TEST_DATA_DIR`, or /var/tmp/ferry-test; the debootstrapped base is reused across runs.
pub fn data_dir() -> PathBuf {
    std::env::var_os("FERRY_TEST_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp/ferry-test"))
}

/// Containers need root; other users skip with a reason.
pub fn can_run_containers() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: container tests need root (namespaces, mounts, cgroups)");
        return false;
    }
    true
}

/// The store and the Python 3.11 base layer, prepared on first use.
pub async fn base() -> Option<(ImageStore, LayerId)> {
    if !can_run_containers() {
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LogLine>();
    let printer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            eprintln!("prepare: {}", line.text);
        }
    });
    let base = ferry_runtime::prepare_base(&data_dir(), "3.11", &tx).await.expect("preparing the 3.11 base");
    drop(tx);
    let _ = printer.await;
    Some((ImageStore::open(data_dir()).expect("store"), base.layer))
}

/// Collects a container's output and status.
pub async fn run(container: &mut ferry_runtime::Container) -> (String, String, ferry_runtime::ExitStatus) {
    let mut logs = container.logs().expect("logs");
    let (mut out, mut err) = (String::new(), String::new());
    while let Some(line) = logs.recv().await {
        let buf = if line.stream == ferry_runtime::Stream::Stdout { &mut out } else { &mut err };
        buf.push_str(&line.text);
        buf.push('\n');
    }
    let status = container.wait().await.expect("wait");
    (out, err, status)
}

pub fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}
