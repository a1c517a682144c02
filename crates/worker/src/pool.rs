//! Standby containers: task containers started before a task needs them.
//!
//! A standby is a full task container, started through `ferry-runtime` exactly as
//! [`crate::Worker::start`] starts one (same namespaces, overlay with its own upper directory,
//! cgroup with the task's limits, user namespace, seccomp filter, its own network namespace with
//! the control plane's ports served into it, client mounts), whose Python has already imported
//! `modal._container_entrypoint` and waits on stdin for its one order. Handing a task over
//! writes the task's files into the standby's private input directory (bound read-only at
//! [`INPUT_MOUNT`]), then one JSON line with the task's environment; the driver
//! (`py/standby.py`) links the files into place and runs the entrypoint. Each standby serves
//! exactly one task and exits with it, so no task ever sees another's state.
//!
//! Standbys are keyed by what a container cannot change after it started: the image layer,
//! the client runtime, the memory, CPU, pids and disk limits, the server URL and the ports
//! served into its network namespace. The pool is bounded per
//! key and overall, refilled in the background after each take, and a key nobody asked for
//! within [`PoolConfig::idle`] loses its standbys.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_runtime::{Container, ContainerSpec, LayerId};
use tokio::io::AsyncWriteExt;

use crate::{TaskDir, TaskSpec};

/// The driver a standby runs, shipped inside the binary.
pub(crate) const STANDBY_PY: &str = include_str!("../py/standby.py");
/// The memory-snapshot zygote's side of the driver.
pub(crate) const ZYGOTE_PY: &str = include_str!("../py/ferry_zygote.py");
/// Where the drivers appear in a container.
pub(crate) const DRIVER_MOUNT: &str = "/__ferry/driver";
/// Where a standby's private input directory appears (read-only).
pub const INPUT_MOUNT: &str = "/__ferry/in";

/// Bounds of the standby pool (`ferry serve --pool-*`).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Standbys kept ready per key (image, limits); 0 turns the pool off.
    pub per_image: usize,
    /// Standbys at most, all keys together.
    pub max_total: usize,
    /// A key nobody asked for within this long loses its standbys.
    pub idle: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { per_image: 1, max_total: 4, idle: Duration::from_secs(300) }
    }
}

impl PoolConfig {
    /// No standbys: every task starts a fresh container.
    pub fn off() -> Self {
        PoolConfig { per_image: 0, max_total: 0, idle: Duration::from_secs(1) }
    }
}

/// What a standby cannot change once started.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub layer: LayerId,
    /// Which build of the layer (a forced rebuild replaces the layer's files under the same
    /// id): the inode of its root and its record's time. A standby holds the build it started on.
    pub build: (u64, u64),
    pub client_dir: PathBuf,
    pub memory_mib: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub server_url: String,
    /// The control-plane ports served into the standby's own network namespace.
    pub forwards: Vec<ferry_runtime::PortForward>,
    pub pids: Option<u64>,
    pub disk_mib: Option<u64>,
}

/// A ready standby.
#[derive(Debug)]
pub(crate) struct Standby {
    pub container: Container,
    pub dir: TaskDir,
}

#[derive(Debug)]
struct Demand {
    last: Instant,
    /// The container spec of a standby for this key, without its input directory.
    template: ContainerSpec,
}

#[derive(Debug, Default)]
struct State {
    ready: HashMap<PoolKey, VecDeque<Standby>>,
    starting: HashMap<PoolKey, usize>,
    demand: HashMap<PoolKey, Demand>,
    reaper: bool,
}

impl State {
    fn total(&self) -> usize {
        self.ready.values().map(|q| q.len()).sum::<usize>() + self.starting.values().sum::<usize>()
    }

    fn count(&self, key: &PoolKey) -> usize {
        self.ready.get(key).map_or(0, |q| q.len()) + self.starting.get(key).copied().unwrap_or(0)
    }
}

/// The pool's shared state; lives in the worker.
#[derive(Debug)]
pub(crate) struct Pool {
    pub config: PoolConfig,
    state: Mutex<State>,
}

/// What the pool reports about itself (`Worker::pool_status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Standbys ready to take.
    pub ready: usize,
    /// Standbys being started.
    pub starting: usize,
    /// Keys (image, limits) with recent demand.
    pub keys: usize,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Self {
        Pool { config, state: Mutex::new(State::default()) }
    }

    pub fn enabled(&self) -> bool {
        self.config.per_image > 0 && self.config.max_total > 0
    }

    pub fn status(&self) -> PoolStatus {
        let st = self.state.lock().unwrap();
        PoolStatus {
            ready: st.ready.values().map(|q| q.len()).sum(),
            starting: st.starting.values().sum(),
            keys: st.demand.len(),
        }
    }

    /// Records demand for `key`; returns whether the idle reaper still has to be started.
    pub fn note_demand(&self, key: &PoolKey, template: ContainerSpec) -> bool {
        let mut st = self.state.lock().unwrap();
        st.demand.insert(key.clone(), Demand { last: Instant::now(), template });
        let start_reaper = !st.reaper;
        st.reaper = true;
        start_reaper
    }

    /// A ready standby for `key`, if any.
    pub fn take(&self, key: &PoolKey) -> Option<Standby> {
        let mut st = self.state.lock().unwrap();
        let q = st.ready.get_mut(key)?;
        let sb = q.pop_front();
        if q.is_empty() {
            st.ready.remove(key);
        }
        sb
    }

    /// Reserves room for one more standby of `key`, evicting a standby of the least recently
    /// wanted other key when the pool is full. Returns the template to start it from.
    fn reserve(&self, key: &PoolKey) -> Option<(ContainerSpec, Vec<Standby>)> {
        let mut st = self.state.lock().unwrap();
        if st.count(key) >= self.config.per_image {
            return None;
        }
        let template = st.demand.get(key)?.template.clone();
        let mut evicted = Vec::new();
        while st.total() >= self.config.max_total {
            // The ready standby whose key was wanted longest ago, other than this key.
            let victim = st
                .ready
                .iter()
                .filter(|(k, q)| *k != key && !q.is_empty())
                .min_by_key(|(k, _)| st.demand.get(*k).map(|d| d.last))
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { return None };
            let q = st.ready.get_mut(&victim).expect("present");
            if let Some(sb) = q.pop_back() {
                evicted.push(sb);
            }
            if q.is_empty() {
                st.ready.remove(&victim);
            }
        }
        *st.starting.entry(key.clone()).or_default() += 1;
        Some((template, evicted))
    }

    /// A standby finished starting (`Some`) or failed to (`None`); kept if its key is still
    /// wanted, else returned for dropping.
    fn started(&self, key: &PoolKey, standby: Option<Standby>) -> Option<Standby> {
        let mut st = self.state.lock().unwrap();
        if let Some(n) = st.starting.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                st.starting.remove(key);
            }
        }
        let sb = standby?;
        if st.demand.contains_key(key) {
            st.ready.entry(key.clone()).or_default().push_back(sb);
            None
        } else {
            Some(sb)
        }
    }

    /// Forgets keys idle longer than the configured time; returns their standbys to drop.
    fn shrink(&self) -> Vec<Standby> {
        let mut st = self.state.lock().unwrap();
        let idle = self.config.idle;
        let stale: Vec<PoolKey> = st.demand.iter().filter(|(_, d)| d.last.elapsed() >= idle).map(|(k, _)| k.clone()).collect();
        let mut gone = Vec::new();
        for k in stale {
            st.demand.remove(&k);
            if let Some(q) = st.ready.remove(&k) {
                gone.extend(q);
            }
        }
        gone
    }

    /// Drops every standby (the worker is going away).
    #[allow(dead_code)]
    pub fn clear(&self) -> Vec<Standby> {
        let mut st = self.state.lock().unwrap();
        st.demand.clear();
        st.ready.drain().flat_map(|(_, q)| q).collect()
    }
}

/// Starts standbys for `key` until it has its share (in the background).
pub(crate) fn refill(worker: &crate::Worker, key: PoolKey) {
    let Some(pool) = worker.inner.pool.clone() else { return };
    while let Some((template, evicted)) = pool.reserve(&key) {
        drop(evicted);
        let worker = worker.clone();
        let pool = pool.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let started = match start_standby(&worker, template).await {
                Ok(sb) => Some(sb),
                Err(e) => {
                    tracing::warn!("cannot start a standby container: {e}");
                    None
                }
            };
            drop(pool.started(&key, started));
        });
    }
}

/// Drops the standbys of keys nobody asked for within the idle time.
pub(crate) fn start_reaper(pool: Arc<Pool>) {
    let period = (pool.config.idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
    let weak = Arc::downgrade(&pool);
    drop(pool);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(pool) = weak.upgrade() else { return };
            let gone = pool.shrink();
            if !gone.is_empty() {
                tracing::debug!("standby pool: {} idle standbys stopped", gone.len());
            }
            drop(gone);
        }
    });
}

async fn start_standby(worker: &crate::Worker, mut spec: ContainerSpec) -> crate::Result<Standby> {
    let dir = worker.new_task_dir("standby")?;
    spec.mounts.push(ferry_runtime::BindMount::read_only(&dir.0, INPUT_MOUNT));
    let container = worker.inner.runtime.spawn(spec).await?;
    Ok(Standby { container, dir })
}

/// Hands `spec`'s task to a standby: its files into the input directory, then its order.
pub(crate) async fn hand_over(mut sb: Standby, spec: &TaskSpec, env: Vec<(String, String)>) -> crate::Result<(Container, TaskDir)> {
    let files = sb.dir.0.join("files");
    let mut links = Vec::with_capacity(spec.files.len());
    for (host, target) in &spec.files {
        let rel = target.trim_start_matches('/');
        let dest = files.join(rel);
        place_file(host, &dest)?;
        links.push((target.clone(), format!("{INPUT_MOUNT}/files/{rel}")));
    }
    let args = sb.dir.0.join("container_arguments.pb");
    std::fs::write(&args, &spec.container_arguments).map_err(|source| crate::Error::Io { context: "writing the container arguments".into(), path: args.clone(), source })?;
    let mut env = env;
    for (k, v) in env.iter_mut() {
        if k == "MODAL_CONTAINER_ARGUMENTS_PATH" {
            *v = format!("{INPUT_MOUNT}/container_arguments.pb");
        }
    }
    let env: serde_json::Map<String, serde_json::Value> = env.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    let mut line = serde_json::to_vec(&serde_json::json!({ "env": env, "links": links })).expect("plain JSON");
    line.push(b'\n');
    let mut stdin = sb.container.stdin().ok_or_else(|| io_error("the standby has no stdin", &sb.dir.0))?;
    let wrote = async {
        stdin.write_all(&line).await?;
        stdin.flush().await?;
        stdin.shutdown().await
    }
    .await;
    wrote.map_err(|source| crate::Error::Io { context: "handing the task to a standby container".into(), path: sb.dir.0.clone(), source })?;
    Ok((sb.container, sb.dir))
}

/// A hard link of the (content-addressed, never rewritten) file, else a copy.
fn place_file(host: &Path, dest: &Path) -> crate::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|source| crate::Error::Io { context: "creating a task file's directory".into(), path: parent.to_path_buf(), source })?;
    }
    if std::fs::hard_link(host, dest).is_ok() {
        return Ok(());
    }
    std::fs::copy(host, dest).map(|_| ()).map_err(|source| crate::Error::Io { context: "copying a task file".into(), path: host.to_path_buf(), source })
}

fn io_error(what: &str, path: &Path) -> crate::Error {
    crate::Error::Io { context: what.to_string(), path: path.to_path_buf(), source: std::io::Error::other(what.to_string()) }
}
