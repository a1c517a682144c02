//! Starting and watching task containers for queued inputs.
//!
//! A function gets a new container when inputs queue up and none of its containers is free,
//! up to its `max_containers`. Containers leave by themselves once idle for the function's
//! `scaledown_window` (they are told with `kill_switch`, so `@modal.exit` runs); when a
//! container dies, the inputs it held are answered with a failure so no caller waits forever.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::api;
use prost::Message;
use tokio::sync::OnceCell;
use tonic::Status;

use crate::scheduler::{cancelled_result, status, Input, NewInput, Outcome, TaskInfo};
use crate::service::ModalService;

const DEFAULT_MAX_CONTAINERS: usize = 8;
pub(crate) const DEFAULT_SCALEDOWN: Duration = Duration::from_secs(60);
/// After `kill_switch`, how long a container gets to run `@modal.exit` before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How long an app's state read from the store answers for it (another replica may stop it).
const APP_STATE_TTL: Duration = Duration::from_secs(1);
/// Most container log lines written in one commit.
const LOG_BATCH: usize = 512;
/// Longest an answer waits for the log lines its container wrote before it.
const LOG_BARRIER: Duration = Duration::from_millis(200);
/// Where the API's unix socket appears inside a container without a network.
const CONTAINER_SOCKET: &str = "/__modal/ferry.sock";
/// Prefix of the failure recorded when an input overran the function's timeout.
const TIMED_OUT: &str = "Function timed out after ";

/// The worker and the modal client runtime it mounts, prepared on first use.
pub(crate) struct Launcher {
    pub(crate) worker: ferry_worker::Worker,
    client: OnceCell<ferry_worker::ClientRuntime>,
    killers: std::sync::Mutex<std::collections::HashMap<String, Killer>>,
    /// Whether each app recently asked about is live, and when that was read.
    app_states: std::sync::Mutex<std::collections::HashMap<String, (bool, std::time::Instant)>>,
    /// Each local container's log pump: how many lines it has read and written.
    log_pumps: std::sync::Mutex<std::collections::HashMap<String, Arc<LogProgress>>>,
    definitions: std::sync::Mutex<std::collections::HashMap<String, Arc<(ferry_store::FunctionRecord, api::Function)>>>,
}

impl Launcher {
    pub(crate) fn new(
        data_dir: &std::path::Path,
        images: ferry_runtime::ImageStore,
        pool: ferry_worker::PoolConfig,
        trusted_ca: Option<std::path::PathBuf>,
    ) -> Self {
        // Finds (and logs, in one line) what isolation this host allows before any container.
        ferry_runtime::isolation(images.root());
        let worker = ferry_worker::Worker::with_pool(data_dir, images, pool, trusted_ca);
        let swept = worker.sweep_stale();
        if swept > 0 {
            tracing::info!("removed {swept} leftovers of containers from an earlier run");
        }
        Launcher {
            worker,
            client: OnceCell::new(),
            killers: Default::default(),
            app_states: Default::default(),
            log_pumps: Default::default(),
            definitions: Default::default(),
        }
    }

    /// Whether the app is live, as last read from the store (at most [`APP_STATE_TTL`] ago).
    fn app_live(&self, app_id: &str) -> Option<bool> {
        self.app_states.lock().unwrap().get(app_id).filter(|(_, at)| at.elapsed() < APP_STATE_TTL).map(|(live, _)| *live)
    }

    fn set_app_live(&self, app_id: &str, live: bool) {
        let mut states = self.app_states.lock().unwrap();
        states.retain(|_, (_, at)| at.elapsed() < APP_STATE_TTL);
        states.insert(app_id.to_string(), (live, std::time::Instant::now()));
    }

    /// Forgets what is known of an app's state (it was published again).
    pub(crate) fn forget_app_state(&self, app_id: &str) {
        self.app_states.lock().unwrap().remove(app_id);
    }

    /// Drops a cached definition after `FunctionCreate` stored a new one.
    pub(crate) fn forget_definition(&self, function_id: &str) {
        self.definitions.lock().unwrap().remove(function_id);
    }

    /// Stops a running container now (here or on its worker host); returns false when this
    /// server does not follow it.
    pub(crate) fn kill(&self, task_id: &str) -> bool {
        match self.killers.lock().unwrap().get(task_id) {
            Some(k) => k.kill(ferry_worker::Signal::Kill),
            None => false,
        }
    }

    /// Interrupts a running container now (SIGINT: the modal runtime unwinds, running `@exit`
    /// methods and committing volumes); returns false when this server does not follow it.
    /// A container marked stopping is killed by its [`watch`] if it outlives the grace.
    pub(crate) fn interrupt(&self, task_id: &str) -> bool {
        match self.killers.lock().unwrap().get(task_id) {
            Some(k) => k.kill(ferry_worker::Signal::Interrupt),
            None => false,
        }
    }

    pub(crate) fn follow(&self, task_id: &str, killer: Killer) {
        self.killers.lock().unwrap().insert(task_id.to_string(), killer);
    }

    pub(crate) fn unfollow(&self, task_id: &str) {
        self.killers.lock().unwrap().remove(task_id);
    }

    /// Waits (at most [`LOG_BARRIER`]) until the log lines the task's container printed so far
    /// (those this server has read) are in the store and sent to every client following the
    /// app's logs, so that `modal run` shows an input's output lines before its answer, in the
    /// order the container made them. Returns at once when there is nothing to wait for.
    pub(crate) async fn logs_before_answer(&self, s: &ModalService, task_id: &str, app_id: &str) {
        let Some(progress) = self.log_pumps.lock().unwrap().get(task_id).cloned() else { return };
        let read = progress.read.load(std::sync::atomic::Ordering::Acquire);
        if read == 0 {
            return;
        }
        let (count, last) = *progress.written.borrow();
        if count >= read && !s.log_followers.behind(app_id, last) {
            return;
        }
        let deadline = tokio::time::Instant::now() + LOG_BARRIER;
        let mut written = progress.written.subscribe();
        let last = match tokio::time::timeout_at(deadline, written.wait_for(|(count, _)| *count >= read)).await {
            Ok(Ok(w)) => w.1,
            _ => return,
        };
        s.log_followers.caught_up(app_id, last, deadline).await;
    }

    /// Containers running on this host now.
    pub(crate) fn local_tasks(&self) -> usize {
        self.killers.lock().unwrap().values().filter(|k| matches!(k, Killer::Local(_))).count()
    }
}

/// A container's log pump: lines read from the container, and lines written to the store.
#[derive(Default)]
pub(crate) struct LogProgress {
    read: std::sync::atomic::AtomicU64,
    /// Lines written, and the id of the last one.
    written: tokio::sync::watch::Sender<(u64, i64)>,
}

/// Stops a container: on this host, or through the worker host that runs it.
#[derive(Clone)]
pub(crate) enum Killer {
    Local(ferry_worker::TaskKiller),
    Remote(ferry_fleet::RemoteKiller),
}

impl Killer {
    fn kill(&self, signal: ferry_worker::Signal) -> bool {
        match self {
            Killer::Local(k) => k.kill(signal).is_ok(),
            Killer::Remote(r) => {
                r.signal(if matches!(signal, ferry_worker::Signal::Interrupt) { "interrupt" } else { "kill" });
                true
            }
        }
    }
}

fn failure(message: impl Into<String>) -> Vec<u8> {
    failure_with(api::generic_result::GenericStatus::Failure, message)
}

fn failure_with(status: api::generic_result::GenericStatus, message: impl Into<String>) -> Vec<u8> {
    api::GenericResult { status: status as i32, exception: message.into(), ..Default::default() }.encode_to_vec()
}

/// The delay before attempt `retry_count + 1`, or None when the policy allows no more.
fn retry_delay(def: &api::Function, retry_count: u32) -> Option<Duration> {
    let p = def.retry_policy.as_ref()?;
    if retry_count >= p.retries {
        return None;
    }
    let initial = if p.initial_delay_ms == 0 { 1000.0 } else { p.initial_delay_ms as f64 };
    let coefficient = if p.backoff_coefficient <= 0.0 { 2.0 } else { p.backoff_coefficient as f64 };
    let max = if p.max_delay_ms == 0 { 60_000.0 } else { p.max_delay_ms as f64 };
    Some(Duration::from_millis((initial * coefficient.powi(retry_count as i32)).min(max) as u64))
}

/// A failed attempt the container reported: retried while the policy allows, else answered
/// with the container's own result (which carries the user's exception) as `outcome`
/// ([`Outcome::Failed`] or [`Outcome::TimedOut`], from [`crate::scheduler::outcome_of`]).
pub(crate) async fn fail_or_retry_output(s: &ModalService, function_id: &str, task_id: &str, input: Input, result: Vec<u8>, data_format: i32, outcome: Outcome) {
    let def = definition(s, function_id).await.ok().map(|(_, d)| d);
    match def.as_ref().and_then(|d| retry_delay(d, input.retry_count)) {
        Some(delay) => schedule_retry(s, function_id, input, delay),
        None => s.scheduler.finish(function_id, input, task_id, result, data_format, outcome).await,
    }
}

/// The input waits out its backoff in the `retrying` state (held by this timer; a restart
/// meanwhile queues it at once), then is queued again.
fn schedule_retry(s: &ModalService, function_id: &str, input: Input, delay: Duration) {
    let svc = s.clone();
    let fid = function_id.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let why = format!("Function call {} was cancelled", input.call_id);
        svc.scheduler.requeue(&fid, input, cancelled_result(&why)).await;
        if let Err(e) = ensure_capacity(&svc, &fid).await {
            tracing::warn!("cannot start a container for a retry: {e}");
        }
    });
}

/// Retries each failed input its function's policy still allows (after the backoff), and
/// answers the rest with `result`.
pub(crate) async fn fail_or_retry(s: &ModalService, function_id: &str, task_id: &str, inputs: Vec<Input>, result: Vec<u8>) {
    let def = definition(s, function_id).await.ok().map(|(_, d)| d);
    let mut final_failures = Vec::new();
    for input in inputs {
        match def.as_ref().and_then(|d| retry_delay(d, input.retry_count)) {
            Some(delay) => schedule_retry(s, function_id, input, delay),
            None => final_failures.push(input),
        }
    }
    let outcome = crate::scheduler::failure_outcome(&result);
    s.scheduler.fail(function_id, final_failures, task_id, result, outcome).await;
}

/// A function's record and decoded definition. Every submitted batch and every container poll
/// needs them, so they are kept decoded until `FunctionCreate` replaces the definition.
pub(crate) async fn definition(s: &ModalService, function_id: &str) -> Result<(ferry_store::FunctionRecord, api::Function), String> {
    let found = shared_definition(s, function_id).await?;
    Ok((found.0.clone(), found.1.clone()))
}

/// [`definition`] without copying it: the hot paths (every submitted batch, every container
/// poll) only read a few fields.
pub(crate) async fn shared_definition(s: &ModalService, function_id: &str) -> Result<Arc<(ferry_store::FunctionRecord, api::Function)>, String> {
    if let Some(found) = s.launcher.definitions.lock().unwrap().get(function_id) {
        return Ok(found.clone());
    }
    let record = s.store.function(function_id).await.map_err(|e| e.to_string())?;
    let def = api::Function::decode(record.definition.clone().unwrap_or_default().as_slice())
        .map_err(|e| format!("stored definition of {function_id} is unreadable: {e}"))?;
    let cached = record.definition.is_some();
    let found = Arc::new((record, def));
    if cached {
        s.launcher.definitions.lock().unwrap().insert(function_id.to_string(), found.clone());
    }
    Ok(found)
}

/// A function's autoscaling settings, from `autoscaler_settings` where the client set them.
struct Scaling {
    min: usize,
    max: usize,
    buffer: usize,
    scaledown: Duration,
}

fn scaling(def: &api::Function) -> Scaling {
    let a = def.autoscaler_settings.clone().unwrap_or_default();
    let max = a.max_containers.unwrap_or(def.concurrency_limit);
    let scaledown = a.scaledown_window.unwrap_or(def.task_idle_timeout_secs);
    Scaling {
        min: a.min_containers.unwrap_or(def.warm_pool_size) as usize,
        max: if max == 0 { DEFAULT_MAX_CONTAINERS } else { max as usize },
        buffer: a.buffer_containers.unwrap_or(def.experimental_buffer_containers) as usize,
        scaledown: if scaledown == 0 { DEFAULT_SCALEDOWN } else { Duration::from_secs(scaledown as u64) },
    }
}

/// How long a container of the function may sit idle before it is told to exit; containers
/// that keep the function at its `min_containers` stay.
pub(crate) async fn idle_limit(s: &ModalService, function_id: &str) -> Duration {
    match shared_definition(s, function_id).await {
        Ok(found) => {
            let sc = scaling(&found.1);
            if s.scheduler.tasks_of_function(function_id) <= sc.min || crate::flash::requested_within(function_id, sc.scaledown) {
                Duration::from_secs(365 * 24 * 3600)
            } else {
                sc.scaledown
            }
        }
        Err(_) => DEFAULT_SCALEDOWN,
    }
}

/// Refuses new inputs for a function whose app has stopped: a caller may still hold a handle
/// from before `modal app stop`. The app's state is read from the store at most once per
/// [`APP_STATE_TTL`]; `stop_app` marks it at once.
pub(crate) async fn check_app_live(s: &ModalService, function_id: &str) -> Result<(), Status> {
    let found = shared_definition(s, function_id).await.map_err(Status::not_found)?;
    let app_id = &found.0.app_id;
    if s.launcher.app_live(app_id) == Some(true) {
        return Ok(());
    }
    // Unknown or stopped: the store says which, and names a stopped app.
    let app = s.store.app(app_id).await.map_err(crate::status::to_status)?;
    s.launcher.set_app_live(app_id, app.state.is_live());
    if app.state.is_live() {
        return Ok(());
    }
    let name = app.name.filter(|n| !n.is_empty()).or(Some(app.description).filter(|n| !n.is_empty()));
    let name = name.map(|n| format!("'{n}' ")).unwrap_or_default();
    Err(Status::not_found(format!(
        "the app {name}({app_id}) of function {function_id} has stopped and takes no new inputs; deploy or run it again"
    )))
}

/// Creates a call with its first inputs (durable once this returns) and starts a container if
/// none is free to take them. Returns each input's id by index.
pub(crate) async fn submit(s: &ModalService, call_id: &str, function_id: &str, invocation_type: i32, inputs: Vec<NewInput>) -> Result<Vec<(i32, String)>, Status> {
    check_app_live(s, function_id).await?;
    let ids = s.scheduler.create_call(call_id, function_id, invocation_type, inputs).await.map_err(status)?;
    if !ids.is_empty() {
        ensure_capacity(s, function_id).await?;
    }
    Ok(ids)
}

/// Adds inputs to a call (a map's later batches) and starts containers for them.
pub(crate) async fn submit_more(s: &ModalService, call_id: &str, inputs: Vec<NewInput>) -> Result<Vec<(i32, String)>, Status> {
    let (function_id, ids) = s.scheduler.add_inputs(call_id, inputs).await.map_err(status)?;
    ensure_capacity(s, &function_id).await?;
    Ok(ids)
}

/// After a restart: functions with inputs waiting get containers again; inputs of apps that
/// stopped meanwhile are cancelled.
pub(crate) fn resume(s: &ModalService) {
    let svc = s.clone();
    tokio::spawn(async move {
        for (function_id, queued, _) in svc.scheduler.loads() {
            if queued == 0 {
                continue;
            }
            let live = match definition(&svc, &function_id).await {
                Ok((record, _)) => svc.store.app(&record.app_id).await.is_ok_and(|a| a.state.is_live()),
                Err(_) => false,
            };
            if !live {
                cancel_calls_of(&svc, &function_id, "its app stopped").await;
                continue;
            }
            if let Err(e) = ensure_capacity(&svc, &function_id).await {
                tracing::warn!(function_id, "cannot start containers for inputs queued before the restart: {e}");
            }
        }
    });
}

/// Cancels every call with inputs of a function waiting or running.
async fn cancel_calls_of(s: &ModalService, function_id: &str, why: &str) {
    for call_id in s.scheduler.calls_in_flight(function_id) {
        let message = format!("Function call {call_id} was cancelled: {why}");
        if let Err(e) = s.scheduler.cancel_call(&call_id, why, cancelled_result(&message)).await {
            tracing::warn!(call_id, "cannot cancel: {e}");
        }
    }
}

/// Starts containers while inputs wait and the function may have more. The count and the new
/// tasks are decided in one step, so concurrent submissions never exceed `max_containers`.
pub(crate) async fn ensure_capacity(s: &ModalService, function_id: &str) -> Result<(), Status> {
    let found = shared_definition(s, function_id).await.map_err(Status::internal)?;
    let (record, def) = (&found.0, &found.1);
    let sc = scaling(def);
    let per_container = def.max_concurrent_inputs.max(1) as usize;
    // Enough containers for the queue, plus `buffer_containers` idle ones, and never fewer
    // than `min_containers`; at most `max_containers`.
    let started = s.scheduler.reserve_tasks(function_id, &record.app_id, sc.max, |pending, idle, total| {
        let busy = total - idle.min(total);
        let needed = pending.div_ceil(per_container).saturating_sub(idle);
        (total + needed).max(busy + pending.div_ceil(per_container) + sc.buffer).max(sc.min)
    });
    for task_id in started {
        start_task(s.clone(), function_id.to_string(), task_id);
    }
    Ok(())
}

/// Starts a container of the function if it has none (a request for an `http_server` that has
/// scaled to zero).
pub(crate) async fn ensure_one(s: &ModalService, function_id: &str) -> Result<(), Status> {
    let (record, def) = definition(s, function_id).await.map_err(Status::internal)?;
    let sc = scaling(&def);
    let started = s.scheduler.reserve_tasks(function_id, &record.app_id, sc.max, |_, _, total| total.max(1).max(sc.min));
    for task_id in started {
        start_task(s.clone(), function_id.to_string(), task_id);
    }
    Ok(())
}

/// Starts the containers a newly published app keeps warm (`min_containers`,
/// `buffer_containers`).
pub(crate) async fn warm_up(s: &ModalService, app_id: &str) {
    let Ok(functions) = s.store.functions_of_app(app_id).await else { return };
    for f in functions {
        if let Err(e) = ensure_capacity(s, &f.id).await {
            tracing::warn!(function_id = f.id, "cannot start warm containers: {e}");
        }
    }
}

/// Asks every container of an app to exit; kills those still running after the grace period.
/// Its calls still in flight are cancelled (recorded as such), as on Modal when an app stops.
pub(crate) fn stop_app(s: &ModalService, app_id: &str) {
    s.launcher.set_app_live(app_id, false);
    for t in s.scheduler.tasks_of_app(app_id) {
        s.scheduler.stop_task(&t.task_id);
    }
    crate::sandboxes::stop_app(s, app_id);
    let svc = s.clone();
    let app_id = app_id.to_string();
    tokio::spawn(async move {
        let Ok(functions) = svc.store.functions_of_app(&app_id).await else { return };
        for f in functions {
            cancel_calls_of(&svc, &f.id, "its app stopped").await;
        }
    });
}

/// Rolls an app over to a new version: its containers started before `since` drain (finish
/// the inputs they hold, take no new ones, then exit).
pub(crate) fn drain_app(s: &ModalService, app_id: &str, since: f64) {
    for t in s.scheduler.tasks_of_app(app_id) {
        if t.started_at < since {
            s.scheduler.drain_task(&t.task_id);
        }
    }
}

/// Runs a task `reserve_tasks` registered (it counts from then on, so calls arriving while it
/// starts do not start more than needed).
fn start_task(s: ModalService, function_id: String, task_id: String) {
    tokio::spawn(async move {
        if let Err(message) = run_task(&s, &function_id, &task_id).await {
            tracing::warn!(task_id, function_id, "task failed to start: {message}");
            let (_, held) = s.scheduler.remove_task(&task_id);
            let mut inputs = held;
            // With no other container left, the queued inputs can never run: fail them too.
            if s.scheduler.tasks_of_function(&function_id) == 0 {
                inputs.extend(s.scheduler.drain_pending(&function_id));
            }
            s.scheduler.fail(&function_id, inputs, &task_id, failure(message), Outcome::Failed).await;
        }
    });
}

/// Runs an `Image.run_function` build step: one container of `function_id` from the parent
/// image with the single input `payload` (an encoded `FunctionInput`), told to exit once the
/// input is answered; its filesystem writes become the returned layer. Its output goes to
/// `log`; a failed input (or container) fails the build with the function's traceback.
pub(crate) async fn run_build_function(s: &ModalService, function_id: &str, app_id: &str, payload: Vec<u8>, log: &ferry_runtime::LogSink) -> Result<ferry_runtime::LayerId, String> {
    let task_id = ferry_store::new_id("ta");
    let call_id = ferry_store::new_id("fc");
    s.scheduler.register_task(TaskInfo::new(&task_id, app_id, function_id, ferry_store::now()));
    let sync = api::FunctionCallInvocationType::Sync as i32;
    if let Err(e) = s.scheduler.create_call(&call_id, function_id, sync, vec![NewInput { idx: 0, payload }]).await {
        s.scheduler.remove_task(&task_id);
        return Err(e.to_string());
    }
    // Once the input is answered the container gets `kill_switch` and exits by itself.
    let stopper = {
        let sched = s.scheduler.clone();
        let (call_id, task_id) = (call_id.clone(), task_id.clone());
        tokio::spawn(async move {
            loop {
                match sched.outputs(&call_id, 0, None, Duration::from_secs(50), false).await {
                    Ok(found) if found.outputs.is_empty() => continue,
                    Ok(_) => sched.stop_task(&task_id),
                    Err(_) => {}
                }
                return;
            }
        })
    };
    let ran = run_task_as(s, function_id, &task_id, Some(log)).await;
    stopper.abort();
    let output = s.scheduler.outputs(&call_id, 0, None, Duration::from_millis(10), false).await.ok().and_then(|found| found.outputs.into_iter().next());
    s.scheduler.forget_call(&call_id);
    let layer = match ran {
        Ok(layer) => layer,
        Err(message) => {
            s.scheduler.remove_task(&task_id);
            return Err(format!("the build function's container could not start: {message}"));
        }
    };
    let result = output.map(|o| api::GenericResult::decode(o.result.as_slice()).unwrap_or_default());
    let failure = match &result {
        Some(r) if r.status == api::generic_result::GenericStatus::Success as i32 => None,
        Some(r) => {
            let mut message = r.exception.clone();
            if !r.traceback.is_empty() {
                message = format!("{}\n{message}", r.traceback.trim_end());
            }
            Some(if message.is_empty() { "the build function failed".to_string() } else { message })
        }
        None => Some("the build function's container exited before answering its input".to_string()),
    };
    match (failure, layer) {
        (None, Some(layer)) => Ok(layer),
        (None, None) => Err("the build function's container left no layer".into()),
        (Some(message), layer) => {
            if let Some(layer) = layer {
                let _ = s.images.store.remove(&layer);
            }
            Err(message)
        }
    }
}

async fn run_task(s: &ModalService, function_id: &str, task_id: &str) -> Result<(), String> {
    run_task_as(s, function_id, task_id, None).await.map(|_| ())
}

/// A task container has a network namespace of its own: the API's and the blob server's
/// ports, when clients reach them on the loopback, are served into it on the same ports, so
/// `MODAL_SERVER_URL` and blob URLs work unchanged and nothing else of the host is reachable.
fn control_plane_forwards(s: &ModalService) -> Vec<ferry_worker::PortForward> {
    let mut urls = vec![s.config.public_url.clone()];
    urls.extend(crate::blobs::base_url_of(s.store.data_dir()));
    urls.iter()
        .filter_map(|url| {
            let authority = url.split_once("://")?.1.split('/').next()?;
            let (host, port) = authority.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            let ip: std::net::IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
                "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
                h => h.parse().ok()?,
            };
            ip.is_loopback().then(|| ferry_worker::PortForward { port, target: std::net::SocketAddr::new(ip, port) })
        })
        .collect()
}

/// What a task container is started with, wherever it runs: its `ContainerArguments` and the
/// values of the function's Secrets as environment variables.
pub(crate) async fn task_arguments(
    s: &ModalService,
    task_id: &str,
    (record, def): (&ferry_store::FunctionRecord, &api::Function),
    (app, env): (&ferry_store::App, &ferry_store::Environment),
) -> Result<(api::ContainerArguments, Vec<(String, String)>), String> {
    let mut env_vars = Vec::new();
    for secret_id in &def.secret_ids {
        env_vars.extend(s.store.secret_values(secret_id).await.map_err(|e| e.to_string())?);
    }
    let deps: Vec<String> = def.object_dependencies.iter().map(|d| d.object_id.clone()).collect();
    let layout = app_layout(s, &app.id, &deps).await?;
    let args = api::ContainerArguments {
        task_id: task_id.to_string(),
        function_id: record.id.clone(),
        app_id: app.id.clone(),
        function_def: Some(def.clone()),
        environment_name: env.name.clone(),
        app_layout: Some(layout),
        serialized_params: record.params.clone().unwrap_or_default(),
        ..Default::default()
    };
    Ok((args, env_vars))
}

/// Runs one task container until it exits. With `build_log` it is a build step: its output goes
/// there instead of the app's logs, and its writes come back as a layer.
async fn run_task_as(s: &ModalService, function_id: &str, task_id: &str, build_log: Option<&ferry_runtime::LogSink>) -> Result<Option<ferry_runtime::LayerId>, String> {
    let (record, def) = definition(s, function_id).await?;
    let app = s.store.app(&record.app_id).await.map_err(|e| e.to_string())?;
    let env = s.store.environment_by_id(&app.environment_id).await.map_err(|e| e.to_string())?;

    let layer = crate::images::wait_for_layer(s, &def.image_id).await?;
    // The whole GPUs its containers ask for, wherever they run.
    let gpu = crate::gpus::choices_of_function(s, function_id, &def).await?;
    // Worker hosts: ferry-fleet decides where the container runs (build steps stay here).
    if build_log.is_none() {
        if let Some(fleet) = &s.config.fleet {
            if let ferry_fleet::Placement::Worker { id, name } = crate::workers::place(s, fleet, &def, gpu.as_ref()).await? {
                crate::workers::run_remote(s, fleet, (&id, &name), task_id, (&record, &def), (&app, &env), layer, gpu.as_ref()).await?;
                return Ok(None);
            }
        }
    }

    let mut files = crate::mounts::container_files(s, &def.mount_ids).await?;
    let (args, env_vars) = task_arguments(s, task_id, (&record, &def), (&app, &env)).await?;
    // Whole GPUs for this container, held until it exits: waits while the matching cards are
    // busy (the task counts towards max_containers meanwhile) and gives up if stopped.
    let gpu_lease = match gpu {
        Some(choices) => {
            let give_up = || s.scheduler.task(task_id).is_none_or(|t| t.stopping);
            let leased = crate::gpus::lease(s, &choices, task_id, give_up).await;
            match leased.map_err(|e| format!("{}: {e}", crate::gpus::subject(&def)))? {
                Some(lease) => Some(lease),
                None => {
                    s.scheduler.remove_task(task_id);
                    return Ok(None);
                }
            }
        }
        None => None,
    };
    let secret = s.store.create_task_credential(task_id, &app.id).await.map_err(|e| e.to_string())?;
    let launcher = &s.launcher;
    let client = launcher
        .client
        .get_or_try_init(|| async {
            let (sink, mut lines) = tokio::sync::mpsc::unbounded_channel::<ferry_runtime::LogLine>();
            let app_id = app.id.clone();
            let store = s.store.clone();
            let pump = tokio::spawn(async move {
                while let Some(l) = lines.recv().await {
                    let _ = store.append_log(&app_id, "", "", 3, &format!("{}\n", l.text)).await;
                }
            });
            let r = launcher.worker.prepare_client_runtime(ferry_proto::CLIENT_VERSION, "3.11", &sink).await;
            drop(sink);
            let _ = pump.await;
            r
        })
        .await
        .map_err(|e| format!("cannot prepare the modal client runtime: {e}"))?;
    let _ = client;

    // Without a network, or when the API speaks TLS (whose authority containers do not
    // trust), the container reaches the API through the unix socket bound into it.
    let server_url = if def.block_network || s.config.containers_use_socket {
        files.push((crate::container_socket(s.store.data_dir()), CONTAINER_SOCKET.to_string()));
        format!("unix://{CONTAINER_SOCKET}")
    } else {
        s.config.public_url.clone()
    };
    let mut spec = ferry_worker::TaskSpec::new(task_id, layer, args.encode_to_vec(), server_url, secret);
    spec.environment_name = env.name.clone();
    spec.files = files;
    spec.env = env_vars.into_iter().collect();
    if let Some(r) = &def.resources {
        if r.memory_mb > 0 {
            spec.memory_mib = Some(r.memory_mb_max.max(r.memory_mb) as u64);
        }
        if r.milli_cpu > 0 {
            spec.cpu_cores = Some(r.milli_cpu_max.max(r.milli_cpu) as f64 / 1000.0);
        }
    }
    spec.block_network = def.block_network;
    if !def.block_network {
        spec.forwards = control_plane_forwards(s);
    }
    if let Some(r) = &def.resources {
        if r.ephemeral_disk_mb > 0 {
            spec.disk_mib = Some(r.ephemeral_disk_mb as u64);
        }
    }
    if let Some(lease) = &gpu_lease {
        crate::gpus::give(s, lease, &mut spec);
        tracing::info!(task_id, function_id, "container gets {} x {}", lease.cards().len(), lease.model());
    }
    spec.volumes = crate::volumes::task_mounts(s, task_id, &def).await?;
    // enable_memory_snapshot: tasks of one definition fork from one zygote (ferry-worker). A
    // build step's writes become a layer: it gets a container of its own.
    if build_log.is_some() {
        spec.standby = false;
    } else if def.checkpointing_enabled {
        spec.memory_snapshot = Some(snapshot_key(function_id, record.definition.as_deref().unwrap_or_default()));
    }
    let mut task = match launcher.worker.start(spec).await {
        Ok(t) => t,
        Err(e) => {
            s.volumes.release_task(task_id).await;
            return Err(e.to_string());
        }
    };
    s.volumes.task_started(task_id, task.pid());

    // Container output goes to the app's log stream, tagged with the task and function (a
    // build step's to its build log).
    match (task.logs(), build_log) {
        (Some(mut logs), Some(sink)) => {
            let sink = sink.clone();
            tokio::spawn(async move {
                while let Some(line) = logs.recv().await {
                    let _ = sink.send(line);
                }
            });
        }
        (Some(mut logs), None) => {
            let (store, scheduler) = (s.store.clone(), s.scheduler.clone());
            let (app_id, task_id, fid) = (app.id.clone(), task_id.to_string(), function_id.to_string());
            let progress = Arc::new(LogProgress::default());
            launcher.log_pumps.lock().unwrap().insert(task_id.clone(), progress.clone());
            tokio::spawn(async move {
                // Each line is attributed to the input the task runs when the line arrives; the
                // lines waiting at once are written in one commit.
                let entry = |line: ferry_runtime::LogLine| {
                    let (input_id, function_call_id) = scheduler.current_input(&task_id).unwrap_or_default();
                    ferry_store::NewLog {
                        task_id: task_id.clone(),
                        function_id: fid.clone(),
                        function_call_id,
                        input_id,
                        fd: line.stream.fd() as i32,
                        data: format!("{}\n", line.text),
                        timestamp: Some(ferry_store::now()),
                    }
                };
                let mut count: u64 = 0;
                while let Some(line) = logs.recv().await {
                    let mut batch = vec![entry(line)];
                    while batch.len() < LOG_BATCH {
                        match logs.try_recv() {
                            Ok(line) => batch.push(entry(line)),
                            Err(_) => break,
                        }
                    }
                    count += batch.len() as u64;
                    progress.read.store(count, std::sync::atomic::Ordering::Release);
                    let last = store.append_logs(&app_id, &batch).await.ok().flatten().unwrap_or(0);
                    progress.written.send_replace((count, last));
                }
            });
        }
        (None, _) => {}
    }

    // Enforce the per-attempt timeout, and the stop request: after kill_switch, give @exit
    // its grace period.
    let killer = Killer::Local(task.killer());
    launcher.follow(task_id, killer.clone());
    let watcher = watch(s, task_id, &def, killer);
    let (exit, layer) = if build_log.is_some() {
        match task.wait_into_layer().await {
            Ok((exit, layer)) => (Ok(exit), Some(layer)),
            Err(e) => (Err(e), None),
        }
    } else {
        (task.wait().await, None)
    };
    watcher.abort();
    s.volumes.release_task(task_id).await;
    launcher.unfollow(task_id);
    launcher.log_pumps.lock().unwrap().remove(task_id);
    let _ = s.store.revoke_task_credential(task_id).await;
    after_exit(s, function_id, task_id, &def, exit.map_err(|e| e.to_string())).await;
    Ok(layer)
}

/// Enforces the per-attempt timeout and the stop request of a running container: after
/// kill_switch, @exit gets its grace period.
pub(crate) fn watch(s: &ModalService, task_id: &str, def: &api::Function, killer: Killer) -> tokio::task::JoinHandle<()> {
    let timeout = Duration::from_secs(if def.timeout_secs == 0 { 300 } else { def.timeout_secs as u64 });
    {
        let sched = s.scheduler.clone();
        let task_id = task_id.to_string();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if sched.longest_running(&task_id).is_some_and(|d| d > timeout) {
                    sched.set_failure(&task_id, format!("{TIMED_OUT}{} seconds", timeout.as_secs()));
                    killer.kill(ferry_worker::Signal::Kill);
                    return;
                }
                match sched.task(&task_id) {
                    // A draining container first answers what it holds (within `timeout`).
                    Some(t) if t.stopping && !(t.draining && sched.longest_running(&task_id).is_some()) => {
                        tokio::time::sleep(EXIT_GRACE).await;
                        killer.kill(ferry_worker::Signal::Interrupt);
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        killer.kill(ferry_worker::Signal::Kill);
                        return;
                    }
                    Some(_) => {}
                    None => return,
                }
            }
        })
    }
}

/// What a container's end means for the inputs it held: run again elsewhere (stopped by an
/// operator), retried per the function's policy, or answered with the failure.
pub(crate) async fn after_exit(s: &ModalService, function_id: &str, task_id: &str, def: &api::Function, exit: Result<ferry_worker::TaskExit, String>) {
    let (info, held) = s.scheduler.remove_task(task_id);
    if info.as_ref().is_some_and(|i| i.preempted) {
        // Stopped by an operator: what it held runs again on another container.
        s.scheduler.return_inputs(function_id, held);
        let _ = ensure_capacity(s, function_id).await;
        return;
    }
    let reported = info.and_then(|i| i.failure);
    let message = match (&exit, &reported) {
        (_, Some(failure)) => failure.clone(),
        (Ok(e), None) if e.oom_killed => format!(
            "the container ran out of memory (limit {} MiB) and was killed; raise memory= on the function",
            def.resources.as_ref().map(|r| r.memory_mb).unwrap_or(0)
        ),
        (Ok(e), None) if e.disk_exceeded => format!(
            "the container wrote more than its ephemeral disk ({} MiB) and was killed; raise ephemeral_disk= on the function",
            def.resources.as_ref().map(|r| r.ephemeral_disk_mb).unwrap_or(0)
        ),
        (Ok(e), None) => format!("the container exited unexpectedly ({e:?}) while running this input"),
        (Err(e), None) => format!("the container failed: {e}"),
    };
    if message.starts_with(TIMED_OUT) {
        let result = failure_with(api::generic_result::GenericStatus::Timeout, message);
        fail_or_retry(s, function_id, task_id, held, result).await;
        return;
    }
    let mut lost = held;
    if reported.is_some() && s.scheduler.tasks_of_function(function_id) == 0 {
        // The function cannot start: the queued inputs would wait forever.
        lost.extend(s.scheduler.drain_pending(function_id));
        s.scheduler.fail(function_id, lost, task_id, failure(message), Outcome::Failed).await;
    } else {
        fail_or_retry(s, function_id, task_id, lost, failure(message)).await;
    }
}

/// Names a function's memory snapshot: a new definition (code, image, settings) gets a new one.
pub(crate) fn snapshot_key(function_id: &str, definition: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    definition.hash(&mut h);
    format!("{function_id}-{:016x}", h.finish())
}

/// Every function and class of the app with its handle metadata, plus the ids the function
/// depends on: the container's entrypoint looks each of them up.
pub(crate) async fn app_layout(s: &ModalService, app_id: &str, dependencies: &[String]) -> Result<api::AppLayout, String> {
    let mut layout = api::AppLayout::default();
    let mut seen = HashSet::new();
    for f in s.store.functions_of_app(app_id).await.map_err(|e| e.to_string())? {
        let Ok(fdef) = api::Function::decode(f.definition.unwrap_or_default().as_slice()) else { continue };
        layout.function_ids.insert(f.tag.clone(), f.id.clone());
        seen.insert(f.id.clone());
        layout.objects.push(api::Object {
            object_id: f.id.clone(),
            handle_metadata_oneof: Some(api::object::HandleMetadataOneof::FunctionHandleMetadata(
                crate::functions::handle_metadata(&fdef, &f.id, app_id),
            )),
        });
    }
    for (class_id, tag) in s.store.classes_of_app(app_id).await.map_err(|e| e.to_string())? {
        layout.class_ids.insert(tag, class_id.clone());
        if seen.insert(class_id.clone()) {
            layout.objects.push(api::Object {
                object_id: class_id,
                handle_metadata_oneof: Some(api::object::HandleMetadataOneof::ClassHandleMetadata(Default::default())),
            });
        }
    }
    for dep in dependencies {
        if seen.insert(dep.clone()) {
            layout.objects.push(api::Object { object_id: dep.clone(), handle_metadata_oneof: None });
        }
    }
    Ok(layout)
}
