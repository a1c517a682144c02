//! What the API server holds in memory, as plain data for the dashboard and `/metrics`.

use serde::Serialize;

/// A container (task) the server runs now.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerView {
    pub task_id: String,
    pub app_id: String,
    pub function_id: String,
    /// Unix seconds.
    pub started_at: f64,
    /// `running` (holds inputs), `idle`, or `stopping`.
    pub state: String,
    pub inputs_running: usize,
    /// A failure the container reported before serving (import or `@enter` error).
    pub failure: Option<String>,
}

/// Inputs waiting and running for one function.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FunctionLoad {
    pub function_id: String,
    pub queued: usize,
    pub running: usize,
}

/// One input of a function: waiting, running, or answered.
#[derive(Clone, Debug, Serialize)]
pub struct InputView {
    pub input_id: String,
    pub call_id: String,
    /// `queued`, `running`, `success`, `failure`, `timeout`, `terminated`, …
    pub status: String,
    pub retry_count: u32,
    pub task_id: Option<String>,
    /// Unix seconds when it was answered.
    pub finished_at: Option<f64>,
    /// Seconds from the container taking it to its answer.
    pub duration_s: Option<f64>,
    pub exception: Option<String>,
    pub traceback: Option<String>,
}

/// A live view of the API server's in-memory state.
pub trait Live: Send + Sync + 'static {
    /// Containers running now.
    fn containers(&self) -> Vec<ContainerView>;
    /// Queued and running inputs by function (functions with neither may be left out).
    fn function_loads(&self) -> Vec<FunctionLoad>;
    /// The function's inputs the server still remembers, newest first, at most `limit`.
    fn inputs(&self, function_id: &str, limit: usize) -> Vec<InputView>;
    /// Stops a container at once; its inputs run again elsewhere. False when it is not running.
    fn stop_container(&self, task_id: &str) -> bool;
}

/// No API server beside the dashboard: nothing runs.
pub struct NoLive;

impl Live for NoLive {
    fn containers(&self) -> Vec<ContainerView> {
        Vec::new()
    }
    fn function_loads(&self) -> Vec<FunctionLoad> {
        Vec::new()
    }
    fn inputs(&self, _: &str, _: usize) -> Vec<InputView> {
        Vec::new()
    }
    fn stop_container(&self, _: &str) -> bool {
        false
    }
}
