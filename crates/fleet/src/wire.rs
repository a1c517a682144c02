//! Ferry's own wire between `ferry worker` and the control plane: JSON over HTTP on the
//! control plane's fleet port (`ferry serve --fleet-port`), every request carrying
//! `Authorization: Bearer <worker token id>:<secret>`.
//!
//! - `POST /fleet/v1/register` [`Register`] → [`Registered`]
//! - `POST /fleet/v1/poll` [`Poll`] → [`PollAnswer`]: the heartbeat; answers at once when work
//!   is waiting, else after at most [`POLL_WAIT`].
//! - `POST /fleet/v1/logs` [`LogBatch`] → `{}`
//! - `POST /fleet/v1/exit` [`ExitMessage`] → `{}`
//!
//! Assignments carry a task's credential and its Secrets: their types have no `Debug`, and
//! nothing logs them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest a poll waits for work before it answers empty.
pub const POLL_WAIT: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Register {
    pub name: String,
    /// The worker's address as it knows it (informational).
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub cpu: f64,
    pub memory_mib: i64,
    pub gpus: i64,
    pub disk_mib: i64,
    /// The GPU type each card answers to (`A100-80GB`, ...; "" for an unknown model).
    #[serde(default)]
    pub gpu_types: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Registered {
    pub worker_id: String,
    /// A worker silent this long is declared lost.
    pub heartbeat_timeout_secs: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Poll {
    pub worker_id: String,
    /// The tasks whose containers run (or start) on the worker now.
    pub running: Vec<String>,
}

#[derive(Serialize, Deserialize, Default)]
pub struct PollAnswer {
    /// `ready`, `draining`, `lost` or `removed`. A lost worker kills everything it runs and
    /// registers again; a removed one kills everything and stops.
    pub state: String,
    pub assignments: Vec<Assignment>,
    pub kills: Vec<Kill>,
    /// Tasks the worker runs that are no longer its own (declared lost, or unknown): kill them.
    pub stale: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Kill {
    pub task_id: String,
    /// `interrupt` or `kill`.
    pub signal: String,
}

/// One task container to run. Holds secrets: no `Debug`, never logged.
#[derive(Serialize, Deserialize, Clone, Default)]
pub struct Assignment {
    pub task_id: String,
    /// The image's layer id; the worker fetches the chain from object storage.
    pub layer: String,
    /// The serialized `ContainerArguments`, hex.
    pub container_arguments: String,
    /// `MODAL_SERVER_URL` for the container: the control plane's API as the worker's
    /// containers reach it.
    pub server_url: String,
    pub task_secret: String,
    pub environment_name: String,
    /// Mount files by content: the worker fetches each from object storage (cached per host).
    pub files: Vec<FileRef>,
    pub env: Vec<(String, String)>,
    pub memory_mib: Option<u64>,
    pub cpu_cores: Option<f64>,
    pub disk_mib: Option<u64>,
    pub memory_snapshot: Option<String>,
    /// Whole GPUs to lease on the worker, as a fallback list `A100:1,H100:2`.
    #[serde(default)]
    pub gpus: Option<String>,
    /// No network in the container (`block_network=True`): the API only, through the worker's relay.
    #[serde(default)]
    pub block_network: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct FileRef {
    pub sha256: String,
    pub path: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LogBatch {
    pub worker_id: String,
    pub lines: Vec<LogLine>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LogLine {
    pub task_id: String,
    /// 1 stdout, 2 stderr, 3 Ferry's own messages.
    pub fd: i32,
    pub text: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ExitMessage {
    pub worker_id: String,
    pub task_id: String,
    pub exit: ExitReport,
}

/// How a task's container ended on its worker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ExitReport {
    /// Exit code (128 + signal when killed).
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub disk_exceeded: bool,
    /// The container never started (its image or files could not be fetched, ...).
    pub error: Option<String>,
}
