//! Worker hosts: the control plane's registry of `ferry worker` processes, where a task goes
//! (placement), what happens when a worker goes silent (its tasks are declared lost), the HTTP
//! endpoints workers talk to ([`server`]), and the worker process itself ([`agent`]).
//!
//! Every fact lives in the store (`workers`, `worker_tasks`): any control-plane replica can
//! place a task, answer a worker's poll, record a task's exit or declare a worker lost, and the
//! replica that placed a task learns how it ended by reading its row.

pub mod agent;
pub mod relay;
pub mod server;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_store::{NewWorkerTask, Store, WorkerRecord};

pub use wire::{Assignment, ExitReport, FileRef};

/// Finished tasks nobody read, and lost workers, are forgotten after this long.
const PRUNE_AFTER: Duration = Duration::from_secs(3600);

/// Settings of the control plane's side.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// A worker whose last heartbeat is older than this is lost, and so are its containers.
    pub heartbeat_timeout: Duration,
    /// Whether this server runs containers on its own host too (`ferry serve
    /// --no-local-containers` turns it off: all work goes to workers).
    pub local_containers: bool,
    /// How long a task waits for a worker that can take it when none can, before failing.
    pub placement_wait: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { heartbeat_timeout: Duration::from_secs(30), local_containers: true, placement_wait: Duration::from_secs(60) }
    }
}

/// The control plane's handle on its workers.
#[derive(Clone)]
pub struct Fleet {
    pub(crate) store: Store,
    pub(crate) config: Arc<FleetConfig>,
    log_context: Arc<std::sync::OnceLock<Box<LogContext>>>,
}

/// Which input, and call, a task's output belongs to now (input id, call id): set by the API
/// layer, which runs the scheduler, so that host log lines are attributed as local ones are.
pub type LogContext = dyn Fn(&str) -> Option<(String, String)> + Send + Sync;

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("config", &self.config).finish()
    }
}

/// What a task asks of a host.
#[derive(Clone, Debug, Default)]
pub struct Demand {
    pub cpu: f64,
    pub memory_mib: i64,
    /// Labels a worker must carry, each with one of these values (`region`, `cloud`, ...).
    pub labels: BTreeMap<String, Vec<String>>,
    /// Why the task can only run on the control plane's own host, if it can (Volumes, ...).
    pub local_only: Option<String>,
    /// Whole GPUs it asks for (a fallback list), if any.
    pub gpu: Option<ferry_gpu::GpuChoices>,
    /// The control plane's own host cannot run it (it lacks the GPUs).
    pub local_lacks_gpus: bool,
}

/// Where a task runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    Local,
    Worker { id: String, name: String },
}

/// How a task placed on a worker ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RemoteExit {
    Exited(ExitReport),
    /// Its worker stopped heartbeating (or was removed): the container is gone or will be
    /// killed when the worker comes back.
    Lost,
}

impl Fleet {
    pub fn new(store: Store, config: FleetConfig) -> Fleet {
        Fleet { store, config: Arc::new(config), log_context: Arc::default() }
    }

    /// Sets how log lines from hosts find their input (once; later calls are ignored).
    pub fn set_log_context(&self, f: Box<LogContext>) {
        let _ = self.log_context.set(f);
    }

    /// The input (and call) a task's output belongs to, when the API layer said how to know.
    pub(crate) fn log_context(&self, task_id: &str) -> Option<(String, String)> {
        self.log_context.get().and_then(|f| f(task_id))
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Workers that take tasks now: ready, and heard from within the heartbeat timeout.
    fn usable(&self, w: &WorkerRecord, now: f64) -> bool {
        w.state == "ready" && now - w.last_seen < self.config.heartbeat_timeout.as_secs_f64()
    }

    /// Decides where a task goes. `local_tasks` is how many containers the control plane's
    /// own host runs now, `local_cpus` its CPUs. Waits (up to `placement_wait`) while no
    /// worker can take a task that only workers may run.
    pub async fn place(&self, demand: &Demand, local_tasks: usize, local_cpus: f64) -> Result<Placement, String> {
        let local = self.config.local_containers;
        if let Some(why) = &demand.local_only {
            return if local {
                Ok(Placement::Local)
            } else {
                Err(format!("{why}, which worker hosts cannot do yet, and this server runs no containers itself (--no-local-containers)"))
            };
        }
        let deadline = tokio::time::Instant::now() + self.config.placement_wait;
        loop {
            let workers = self.store.workers().await.map_err(|e| e.to_string())?;
            let now = ferry_store::now();
            let local_ok = local && demand.labels.is_empty() && !demand.local_lacks_gpus;
            if let Some(gpu) = &demand.gpu {
                // No worker ever reported cards that could run it: waiting will not help.
                if !local_ok && !workers.iter().any(|w| labels_match(w, &demand.labels) && gpus_can_run(w, gpu)) {
                    return Err(no_gpu_worker(gpu, &workers));
                }
            }
            let matching: Vec<&WorkerRecord> = workers
                .iter()
                .filter(|w| self.usable(w, now) && labels_match(w, &demand.labels) && demand.gpu.as_ref().is_none_or(|g| gpus_can_run(w, g)))
                .collect();
            let fits = |w: &&&WorkerRecord| {
                (demand.cpu <= 0.0 || w.cpu_used + demand.cpu <= w.cpu + 1e-9)
                    && (demand.memory_mib <= 0 || w.memory_used_mib + demand.memory_mib <= w.memory_mib)
                    && demand.gpu.as_ref().is_none_or(|g| gpus_free_for(w, g))
            };
            // Spread: the least loaded host per CPU; a full cluster still takes the task on the
            // least loaded matching worker rather than refusing it.
            let load = |w: &WorkerRecord| (w.tasks as f64 + 1.0) / w.cpu.max(0.1);
            let best = matching.iter().filter(fits).min_by(|a, b| load(a).total_cmp(&load(b))).or_else(|| {
                matching.iter().min_by(|a, b| load(a).total_cmp(&load(b)))
            });
            match best {
                Some(w) if !local_ok || load(w) <= (local_tasks as f64 + 1.0) / local_cpus.max(0.1) => {
                    return Ok(Placement::Worker { id: w.id.clone(), name: w.name.clone() })
                }
                _ if local_ok => return Ok(Placement::Local),
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let wanted = if demand.labels.is_empty() {
                    String::new()
                } else {
                    format!(" with {}", demand.labels.iter().map(|(k, v)| format!("{k}={}", v.join("|"))).collect::<Vec<_>>().join(" and "))
                };
                return Err(format!(
                    "no worker host{wanted} is ready to take the task (see `ferry worker list`), and this server runs no containers itself"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Whether a worker host that is not lost reported cards that could run `choices`.
    pub async fn has_gpus_for(&self, choices: &ferry_gpu::GpuChoices) -> bool {
        self.store.workers().await.is_ok_and(|ws| ws.iter().any(|w| w.state != "lost" && gpus_can_run(w, choices)))
    }

    /// Places a task on a worker (it picks it up at its next poll). Fails when the worker is
    /// no longer ready.
    pub async fn assign(&self, task: NewWorkerTask, assignment: &Assignment) -> Result<RemoteTask, String> {
        let bytes = serde_json::to_vec(assignment).map_err(|e| e.to_string())?;
        self.store.assign_worker_task(&task, &bytes).await.map_err(|e| e.to_string())?;
        Ok(RemoteTask { store: self.store.clone(), task_id: task.task_id })
    }

    /// Declares lost the workers that stopped heartbeating (and their tasks), every third of
    /// the timeout. Every replica runs one; the store's updates make that harmless.
    pub fn spawn_monitor(&self) -> tokio::task::JoinHandle<()> {
        let fleet = self.clone();
        tokio::spawn(async move {
            let period = (fleet.config.heartbeat_timeout / 3).clamp(Duration::from_millis(200), Duration::from_secs(10));
            let mut tick = tokio::time::interval(period);
            let mut last_prune = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                if last_prune.elapsed() > Duration::from_secs(60) {
                    last_prune = tokio::time::Instant::now();
                    if let Err(e) = fleet.store.prune_workers(PRUNE_AFTER.as_secs_f64()).await {
                        tracing::warn!("cannot prune old worker rows: {e}");
                    }
                }
                match fleet.store.mark_lost_workers(fleet.config.heartbeat_timeout.as_secs_f64()).await {
                    Ok(lost) => {
                        for id in lost {
                            tracing::warn!(worker_id = id, "worker stopped heartbeating: declared lost, its containers' inputs run again elsewhere");
                        }
                    }
                    Err(e) => tracing::warn!("cannot check workers' heartbeats: {e}"),
                }
            }
        })
    }
}

/// The cards a worker reported, as a pool to check requests against.
fn reported_gpus(w: &WorkerRecord) -> ferry_gpu::GpuPool {
    let types: Vec<String> = serde_json::from_str(&w.gpu_types).unwrap_or_default();
    ferry_gpu::GpuPool::new(ferry_gpu::Inventory::reported(&types))
}

/// Whether the worker's cards could ever run one of the choices.
fn gpus_can_run(w: &WorkerRecord, choices: &ferry_gpu::GpuChoices) -> bool {
    reported_gpus(w).check(choices).is_ok()
}

/// Whether enough of its cards are free now for one of the choices that it can run. (Which
/// cards are free is the worker's to know: it leases them and a task waits there while they
/// are busy; this counts them.)
fn gpus_free_for(w: &WorkerRecord, choices: &ferry_gpu::GpuChoices) -> bool {
    let pool = reported_gpus(w);
    let free = pool.inventory().cards.len() as i64 - w.gpus_used;
    choices.requests().iter().any(|r| pool.check(&ferry_gpu::GpuChoices::one(r.clone())).is_ok() && free >= r.count as i64)
}

fn no_gpu_worker(choices: &ferry_gpu::GpuChoices, workers: &[WorkerRecord]) -> String {
    let mut have: Vec<String> = workers
        .iter()
        .filter(|w| w.state != "lost")
        .map(|w| format!("{}: {}", w.name, reported_gpus(w).inventory().describe()))
        .collect();
    if have.is_empty() {
        have.push("no worker is registered".into());
    }
    format!("no worker host has GPUs for gpu={choices} ({}), and this server cannot run it itself", have.join("; "))
}

fn labels_match(w: &WorkerRecord, wanted: &BTreeMap<String, Vec<String>>) -> bool {
    if wanted.is_empty() {
        return true;
    }
    let have: BTreeMap<String, String> = serde_json::from_str(&w.labels).unwrap_or_default();
    wanted.iter().all(|(k, values)| have.get(k).is_some_and(|v| values.contains(v)))
}

/// A task placed on a worker, as the replica that placed it follows it.
pub struct RemoteTask {
    store: Store,
    task_id: String,
}

impl RemoteTask {
    pub fn killer(&self) -> RemoteKiller {
        RemoteKiller { store: self.store.clone(), task_id: self.task_id.clone() }
    }

    /// Waits until the worker reports the exit or the worker is declared lost; the task's row
    /// is forgotten then.
    pub async fn wait(&self) -> RemoteExit {
        let exit = loop {
            match self.store.worker_task(&self.task_id).await {
                Ok(Some(t)) if t.state == "exited" => {
                    break RemoteExit::Exited(t.exit.and_then(|e| serde_json::from_str(&e).ok()).unwrap_or_default());
                }
                Ok(Some(t)) if t.state == "lost" => break RemoteExit::Lost,
                Ok(None) => break RemoteExit::Lost,
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!(task_id = self.task_id, "cannot read the task's state: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let _ = self.store.forget_worker_task(&self.task_id).await;
        exit
    }
}

/// Asks the worker that runs a task to signal its container.
#[derive(Clone)]
pub struct RemoteKiller {
    store: Store,
    task_id: String,
}

impl RemoteKiller {
    /// `interrupt` (SIGINT) or `kill` (SIGKILL); delivered at the worker's next poll.
    pub fn signal(&self, signal: &'static str) {
        let (store, task_id) = (self.store.clone(), self.task_id.clone());
        tokio::spawn(async move {
            if let Err(e) = store.signal_worker_task(&task_id, signal).await {
                tracing::warn!(task_id, "cannot ask the worker to stop the task: {e}");
            }
        });
    }
}
