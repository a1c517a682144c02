//! App RPCs: lifecycle, listing, heartbeats and the log stream `modal run` follows.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_proto::api;
use ferry_store::{App, AppState, DeploymentInfo, LogEntry, LogFilter};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::service::{creator, ModalService, Rpc, RpcStream};
use crate::status::{check_id, invalid, OrStatus};

const MAX_LOG_POLL: f32 = 55.0;
/// How long a detached app's departed client is remembered: its log stream may be between
/// two polls when it leaves.
const LEFT_CLIENT_MEMORY: Duration = Duration::from_secs(600);

/// The log streams following each app, with how far each has sent: an answer waits (briefly)
/// until they have sent the lines its container printed before it. A stream that did not keep
/// up within that time (its client stopped reading) is not waited for again until it sends.
#[derive(Default)]
pub(crate) struct LogFollowers {
    by_app: std::sync::Mutex<std::collections::HashMap<String, Vec<std::sync::Arc<Cursor>>>>,
}

struct Cursor {
    sent: tokio::sync::watch::Sender<i64>,
    lagging: std::sync::atomic::AtomicBool,
}

impl Cursor {
    fn waited_for(&self, id: i64) -> bool {
        !self.lagging.load(std::sync::atomic::Ordering::Relaxed) && *self.sent.borrow() < id
    }
}

/// A log stream's place among its app's followers; removed when dropped.
pub(crate) struct Following {
    followers: std::sync::Arc<LogFollowers>,
    app_id: String,
    cursor: std::sync::Arc<Cursor>,
}

impl Following {
    fn sent(&self, id: i64) {
        self.cursor.sent.send_replace(id);
        self.cursor.lagging.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut by_app = self.followers.by_app.lock().unwrap();
        if let Some(list) = by_app.get_mut(&self.app_id) {
            list.retain(|c| !std::sync::Arc::ptr_eq(c, &self.cursor));
            if list.is_empty() {
                by_app.remove(&self.app_id);
            }
        }
    }
}

impl LogFollowers {
    fn follow(self: &std::sync::Arc<Self>, app_id: &str, after: i64) -> Following {
        let cursor = std::sync::Arc::new(Cursor { sent: tokio::sync::watch::Sender::new(after), lagging: Default::default() });
        self.by_app.lock().unwrap().entry(app_id.to_string()).or_default().push(cursor.clone());
        Following { followers: self.clone(), app_id: app_id.to_string(), cursor }
    }

    /// Whether a stream following `app_id` (one that keeps up) has not yet sent its lines up
    /// to `id`.
    pub(crate) fn behind(&self, app_id: &str, id: i64) -> bool {
        self.by_app.lock().unwrap().get(app_id).is_some_and(|l| l.iter().any(|c| c.waited_for(id)))
    }

    /// Waits until every stream following `app_id` that keeps up has sent its lines up to
    /// `id`, or `deadline`; a stream still behind then counts as lagging.
    pub(crate) async fn caught_up(&self, app_id: &str, id: i64, deadline: tokio::time::Instant) {
        let cursors: Vec<std::sync::Arc<Cursor>> =
            self.by_app.lock().unwrap().get(app_id).map(|l| l.iter().filter(|c| c.waited_for(id)).cloned().collect()).unwrap_or_default();
        for c in cursors {
            let mut rx = c.sent.subscribe();
            if tokio::time::timeout_at(deadline, rx.wait_for(|sent| *sent >= id)).await.is_err() {
                c.lagging.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Clients of detached apps that have left (`AppClientDisconnect`), by app and by the address
/// of their connection. The log stream the same client follows (`modal run --detach` waits
/// for it to end) ends then, as the app keeps running; anyone else's stream of the same app
/// (`modal app logs`) goes on.
#[derive(Default)]
pub(crate) struct LeftClients {
    left: std::sync::Mutex<std::collections::HashMap<(String, std::net::SocketAddr), std::time::Instant>>,
    changed: tokio::sync::Notify,
}

impl LeftClients {
    fn mark(&self, app_id: &str, peer: std::net::SocketAddr) {
        let mut left = self.left.lock().unwrap();
        left.retain(|_, at| at.elapsed() < LEFT_CLIENT_MEMORY);
        left.insert((app_id.to_string(), peer), std::time::Instant::now());
        drop(left);
        self.changed.notify_waiters();
    }

    fn has_left(&self, app_id: &str, peer: Option<std::net::SocketAddr>) -> bool {
        let Some(peer) = peer else { return false };
        self.left.lock().unwrap().contains_key(&(app_id.to_string(), peer))
    }
}

fn id(app_id: &str) -> Result<&str, Status> {
    check_id(app_id, "ap", "App").map(|_| app_id)
}

pub(crate) fn page_url(s: &ModalService, app_id: &str) -> String {
    let base = s.config.dashboard_url.as_deref().unwrap_or(&s.config.public_url);
    format!("{}/apps/{app_id}", base.trim_end_matches('/'))
}

pub(crate) async fn create(s: &ModalService, r: Request<api::AppCreateRequest>) -> Rpc<api::AppCreateResponse> {
    let by = creator(&r);
    let req = r.into_inner();
    let state = match AppState::from_i32(req.app_state) {
        Some(st @ (AppState::Ephemeral | AppState::Detached | AppState::Initializing | AppState::Deployed)) => st,
        None if req.app_state == 0 => AppState::Ephemeral,
        _ => return Err(invalid(format!("an app cannot be created in state {}", req.app_state))),
    };
    if req.description.len() > 4096 {
        return Err(invalid("app description is longer than 4096 bytes"));
    }
    let tags = checked_tags(&req.tags)?;
    let app = s
        .store
        .create_app(&req.environment_name, None, &req.description, state, &req.client_id, &by)
        .await
        .or_status()?;
    if !tags.is_empty() {
        s.store.set_app_tags(&app.id, &tags).await.or_status()?;
    }
    let url = page_url(s, &app.id);
    Ok(Response::new(api::AppCreateResponse { app_id: app.id, app_logs_url: format!("{url}/logs"), app_page_url: url }))
}

/// Tags as the client sends them, checked by the client's own rule (keys and values of 1 to 63
/// letters, digits, `.`, `_` or `-`), at most 64 of them.
fn checked_tags(tags: &std::collections::HashMap<String, String>) -> Result<BTreeMap<String, String>, Status> {
    if tags.len() > 64 {
        return Err(invalid(format!("an app has at most 64 tags, not {}", tags.len())));
    }
    let valid = |t: &str| (1..=63).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    for (k, v) in tags {
        for (what, t) in [("key", k), ("value", v)] {
            if !valid(t) {
                let shown: String = t.chars().take(70).collect();
                return Err(invalid(format!(
                    "invalid tag {what} {shown:?}: tags are 1 to 63 letters, digits, periods, underscores or dashes"
                )));
            }
        }
    }
    Ok(tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// `App.set_tags`: the app's tags become exactly these.
pub(crate) async fn set_tags(s: &ModalService, r: Request<api::AppSetTagsRequest>) -> Rpc<()> {
    let req = r.into_inner();
    let tags = checked_tags(&req.tags)?;
    s.store.set_app_tags(id(&req.app_id)?, &tags).await.or_status()?;
    Ok(Response::new(()))
}

/// `App.get_tags`.
pub(crate) async fn get_tags(s: &ModalService, r: Request<api::AppGetTagsRequest>) -> Rpc<api::AppGetTagsResponse> {
    let tags = s.store.app_tags(id(&r.get_ref().app_id)?).await.or_status()?;
    Ok(Response::new(api::AppGetTagsResponse { tags: tags.into_iter().collect() }))
}

pub(crate) async fn get_or_create(s: &ModalService, r: Request<api::AppGetOrCreateRequest>) -> Rpc<api::AppGetOrCreateResponse> {
    let by = creator(&r);
    let req = r.into_inner();
    if req.app_name.is_empty() {
        return Err(invalid("app_name is required"));
    }
    let app = match s.store.app_by_name(&req.environment_name, &req.app_name).await.or_status()? {
        Some(app) => app,
        None if req.object_creation_type == api::ObjectCreationType::CreateIfMissing as i32 => s
            .store
            .create_app(&req.environment_name, Some(&req.app_name), &req.app_name, AppState::Deployed, "", &by)
            .await
            .or_status()?,
        None => {
            return Err(Status::not_found(format!(
                "App '{}' not found; deploy it with `modal deploy` or look it up with create_if_missing=True",
                req.app_name
            )))
        }
    };
    Ok(Response::new(api::AppGetOrCreateResponse { app_id: app.id, handle_metadata: None }))
}

fn lifecycle(app: &App) -> api::AppLifecycle {
    api::AppLifecycle {
        app_state: app.state as i32,
        created_at: app.created_at,
        created_by: app.created_by.clone(),
        deployed_at: if app.state == AppState::Deployed { app.created_at } else { 0.0 },
        stopped_at: app.stopped_at.unwrap_or(0.0),
        ..Default::default()
    }
}

/// The live deployment of a name; when there is none, the most recent stopped one is offered
/// as `previous_app_id` so `modal app stop/logs` can say it already finished.
pub(crate) async fn get_by_deployment_name(
    s: &ModalService,
    r: Request<api::AppGetByDeploymentNameRequest>,
) -> Rpc<api::AppGetByDeploymentNameResponse> {
    let req = r.into_inner();
    let env = s.store.environment(&req.environment_name).await.or_status()?;
    let mut resp = api::AppGetByDeploymentNameResponse { environment_name: env.name.clone(), ..Default::default() };
    if let Some(app) = s.store.app_by_name(&env.name, &req.name).await.or_status()? {
        resp.lifecycle = Some(lifecycle(&app));
        resp.app_id = app.id;
    } else if let Some(app) = s.store.last_app_by_name(&env.name, &req.name).await.or_status()? {
        resp.lifecycle = Some(lifecycle(&app));
        resp.previous_app_id = app.id;
    }
    Ok(Response::new(resp))
}

pub(crate) async fn get_lifecycle(s: &ModalService, r: Request<api::AppGetLifecycleRequest>) -> Rpc<api::AppGetLifecycleResponse> {
    let app = s.store.app(id(&r.get_ref().app_id)?).await.or_status()?;
    Ok(Response::new(api::AppGetLifecycleResponse { lifecycle: Some(lifecycle(&app)) }))
}

/// A running container: a function's task or a sandbox's.
struct RunningTask {
    task_id: String,
    app_id: String,
    started_at: f64,
}

/// The containers running here: functions' tasks, then sandboxes'.
async fn running_tasks(s: &ModalService) -> Vec<RunningTask> {
    let mut tasks: Vec<RunningTask> =
        s.scheduler.all_tasks().into_iter().map(|t| RunningTask { task_id: t.task_id, app_id: t.app_id, started_at: t.started_at }).collect();
    if let Some(sandboxes) = &s.sandboxes {
        for (sandbox_id, task_id) in sandboxes.running() {
            if let Ok(record) = s.store.sandbox(&sandbox_id).await {
                let started_at = record.started_at.unwrap_or(record.created_at);
                tasks.push(RunningTask { task_id, app_id: record.app_id, started_at });
            }
        }
    }
    tasks
}

/// Running containers (functions' and sandboxes'), of one app or of an environment.
pub(crate) async fn task_list(s: &ModalService, r: Request<api::TaskListRequest>) -> Rpc<api::TaskListResponse> {
    let req = r.into_inner();
    if !req.app_id.is_empty() {
        s.store.app(id(&req.app_id)?).await.or_status()?;
    }
    let env = s.store.environment(&req.environment_name).await.or_status()?;
    let mut tasks = Vec::new();
    for t in running_tasks(s).await {
        if !req.app_id.is_empty() && t.app_id != req.app_id {
            continue;
        }
        let Ok(app) = s.store.app(&t.app_id).await else { continue };
        if app.environment_id != env.id {
            continue;
        }
        tasks.push(api::TaskStats {
            task_id: t.task_id,
            app_id: t.app_id,
            app_description: app.description,
            started_at: t.started_at,
            // `--strategy recreate` and `modal serve` stop the containers enqueued before the publish.
            enqueued_at: t.started_at,
            ..Default::default()
        });
    }
    Ok(Response::new(api::TaskListResponse { tasks }))
}

pub(crate) async fn task_get_info(s: &ModalService, r: Request<api::TaskGetInfoRequest>) -> Rpc<api::TaskGetInfoResponse> {
    let req = r.into_inner();
    check_id(&req.task_id, "ta", "Container")?;
    let not_running = || Status::not_found(format!("container {} is not running on this server (see `modal container list`)", req.task_id));
    let Some(t) = s.scheduler.task(&req.task_id) else {
        // A sandbox's container.
        if let Some(sandbox_id) = s.sandboxes.as_ref().and_then(|sb| sb.sandbox_of_task(&req.task_id)) {
            let record = s.store.sandbox(&sandbox_id).await.or_status()?;
            let started_at = record.started_at.unwrap_or(record.created_at);
            return Ok(Response::new(api::TaskGetInfoResponse {
                app_id: record.app_id,
                info: Some(api::TaskInfo { id: req.task_id, enqueued_at: record.created_at, started_at, ..Default::default() }),
                ..Default::default()
            }));
        }
        // A container that has finished (`modal container logs`): known by its log lines.
        let (app_id, first, last) = s.store.task_log_span(&req.task_id).await.or_status()?.ok_or_else(not_running)?;
        return Ok(Response::new(api::TaskGetInfoResponse {
            app_id,
            // A millisecond of margin each side: the client's window excludes `finished_at` and
            // rounds both ends to microseconds.
            info: Some(api::TaskInfo { id: req.task_id, enqueued_at: first - 0.001, started_at: first - 0.001, finished_at: last + 0.001, ..Default::default() }),
            ..Default::default()
        }));
    };
    let gpu = crate::gpus::held_by(s, &t.task_id);
    Ok(Response::new(api::TaskGetInfoResponse {
        app_id: t.app_id.clone(),
        info: Some(api::TaskInfo {
            gpu_type: gpu.as_ref().map(|g| g.gpu_type.clone()).unwrap_or_default(),
            gpu_config: gpu,
            id: t.task_id,
            enqueued_at: t.started_at,
            started_at: t.started_at,
            ..Default::default()
        }),
        ..Default::default()
    }))
}

/// `modal container stop`: graceful lets the current inputs finish; otherwise the container is
/// killed at once and its inputs run again on another container.
pub(crate) async fn container_stop(s: &ModalService, r: Request<api::ContainerStopRequest>) -> Rpc<api::ContainerStopResponse> {
    let req = r.into_inner();
    check_id(&req.task_id, "ta", "Container")?;
    if s.scheduler.task(&req.task_id).is_none() {
        // A sandbox's container: stopping it terminates the sandbox.
        if let Some((sandboxes, sandbox_id)) = s.sandboxes.as_ref().and_then(|sb| Some((sb, sb.sandbox_of_task(&req.task_id)?))) {
            sandboxes.terminate(&sandbox_id).await.map_err(crate::sandboxes::err)?;
            return Ok(Response::new(api::ContainerStopResponse::default()));
        }
        return Err(Status::not_found(format!("container {} is not running", req.task_id)));
    }
    if req.graceful {
        s.scheduler.stop_task(&req.task_id);
    } else {
        // SIGINT, as on Modal: the runtime unwinds and runs `@exit`; `watch` kills a
        // stopping container that outlives the grace.
        s.scheduler.preempt(&req.task_id);
        s.scheduler.stop_task(&req.task_id);
        s.launcher.interrupt(&req.task_id);
    }
    Ok(Response::new(api::ContainerStopResponse::default()))
}

pub(crate) async fn heartbeat(s: &ModalService, r: Request<api::AppHeartbeatRequest>) -> Rpc<()> {
    s.store.heartbeat_app(id(&r.get_ref().app_id)?).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn list(s: &ModalService, r: Request<api::AppListRequest>) -> Rpc<api::AppListResponse> {
    let apps = s.store.list_apps(&r.get_ref().environment_name).await.or_status()?;
    let mut running: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
    for t in running_tasks(s).await {
        *running.entry(t.app_id).or_default() += 1;
    }
    let apps = apps
        .iter()
        .map(|a: &App| api::app_list_response::AppListItem {
            app_id: a.id.clone(),
            description: a.description.clone(),
            state: a.state as i32,
            created_at: a.created_at,
            stopped_at: a.stopped_at.unwrap_or(0.0),
            n_running_tasks: running.get(&a.id).copied().unwrap_or(0),
            name: a.name.clone().unwrap_or_default(),
            metadata: None,
        })
        .collect();
    Ok(Response::new(api::AppListResponse { apps }))
}

pub(crate) async fn stop(s: &ModalService, r: Request<api::AppStopRequest>) -> Rpc<()> {
    let app_id = id(&r.get_ref().app_id)?.to_string();
    s.store.set_app_state(&app_id, AppState::Stopped).await.or_status()?;
    crate::launch::stop_app(s, &app_id);
    Ok(Response::new(()))
}

/// The client is going away: an ephemeral run ends with it; a detached one keeps running until
/// its work is done (`stop_finished_detached_apps`), at once if there is none.
pub(crate) async fn client_disconnect(s: &ModalService, r: Request<api::AppClientDisconnectRequest>) -> Rpc<()> {
    let peer = r.remote_addr();
    let app = s.store.app(id(&r.get_ref().app_id)?).await.or_status()?;
    let next = match app.state {
        AppState::Ephemeral | AppState::Initializing => Some(AppState::Stopped),
        AppState::Detached => Some(AppState::DetachedDisconnected),
        _ => None,
    };
    if let Some(state) = next {
        s.store.set_app_state(&app.id, state).await.or_status()?;
        if state == AppState::Stopped {
            crate::launch::stop_app(s, &app.id);
        } else if detached_work_done(s, &app.id).await.or_status()? {
            stop_detached(s, &app.id).await.or_status()?;
        } else if let Some(peer) = peer {
            // The app runs on; the log stream this client follows ends now.
            s.left_clients.mark(&app.id, peer);
        }
    }
    Ok(Response::new(()))
}

/// Whether a detached app whose client has left has nothing more to do: no call of its
/// functions waiting or running, no sandbox running, and nothing that serves on its own (a web
/// endpoint or a schedule keeps it up until `modal app stop`).
async fn detached_work_done(s: &ModalService, app_id: &str) -> Result<bool, ferry_store::StoreError> {
    // The store answers for every replica; this replica's scheduler also for inputs it has
    // not written yet.
    if s.store.app_has_unfinished_inputs(app_id).await? {
        return Ok(false);
    }
    for f in s.store.functions_of_app(app_id).await? {
        if !s.scheduler.calls_in_flight(&f.id).is_empty() {
            return Ok(false);
        }
        let def = api::Function::decode(f.definition.as_deref().unwrap_or_default()).unwrap_or_default();
        if def.schedule.is_some() || def.webhook_config.as_ref().is_some_and(|w| w.r#type != 0) {
            return Ok(false);
        }
    }
    let filter = ferry_store::SandboxFilter { app_id: Some(app_id.to_string()), limit: 1, ..Default::default() };
    Ok(s.store.list_sandboxes(&filter).await?.is_empty())
}

async fn stop_detached(s: &ModalService, app_id: &str) -> Result<(), ferry_store::StoreError> {
    tracing::info!(app_id, "stopping detached app: its client left and its work is done");
    s.store.set_app_state(app_id, AppState::Stopped).await?;
    crate::launch::stop_app(s, app_id);
    Ok(())
}

/// Stops the detached apps whose client has left once their last call and sandbox finished
/// (the reaper's tick; the state is in the store, so a restart picks them up again).
pub(crate) async fn stop_finished_detached_apps(s: &ModalService) -> Result<(), ferry_store::StoreError> {
    for app_id in s.store.apps_in_state(AppState::DetachedDisconnected).await? {
        if detached_work_done(s, &app_id).await? {
            stop_detached(s, &app_id).await?;
        }
    }
    Ok(())
}

/// What a log request asks for: `sandbox_id` stands for the sandbox's container.
struct LogQuery<'a> {
    function_id: &'a str,
    task_id: &'a str,
    function_call_id: &'a str,
    input_id: &'a str,
    sandbox_id: &'a str,
    fd: i32,
    search_text: &'a str,
}

/// The [`LogQuery`] of a windowed request (`AppFetchLogs`, `AppCountLogs`: the same fields).
macro_rules! window_query {
    ($req:expr) => {
        LogQuery {
            function_id: &$req.function_id,
            task_id: &$req.task_id,
            function_call_id: &$req.function_call_id,
            input_id: "",
            sandbox_id: &$req.sandbox_id,
            fd: $req.source,
            search_text: &$req.search_text,
        }
    };
}

async fn log_filter(s: &ModalService, q: LogQuery<'_>) -> Result<LogFilter, Status> {
    let mut task_id = q.task_id.to_string();
    if !q.sandbox_id.is_empty() {
        let sandbox = s.store.sandbox(q.sandbox_id).await.or_status()?;
        if !task_id.is_empty() && task_id != sandbox.task_id {
            return Err(invalid(format!("task {task_id} is not the container of Sandbox {}", q.sandbox_id)));
        }
        task_id = sandbox.task_id;
    }
    if !(0..=3).contains(&q.fd) {
        return Err(invalid(format!("unknown log source {}", q.fd)));
    }
    Ok(LogFilter {
        function_id: q.function_id.to_string(),
        task_id,
        function_call_id: q.function_call_id.to_string(),
        input_id: q.input_id.to_string(),
        fd: q.fd,
        search_text: q.search_text.to_string(),
    })
}

fn batches(entries: &[LogEntry]) -> Vec<api::TaskLogsBatch> {
    let mut out: Vec<api::TaskLogsBatch> = Vec::new();
    for e in entries {
        let item = api::TaskLogs {
            data: e.data.clone(),
            timestamp: e.timestamp,
            file_descriptor: e.fd,
            function_call_id: e.function_call_id.clone(),
            input_id: e.input_id.clone(),
            ..Default::default()
        };
        match out.last_mut() {
            Some(b) if b.task_id == e.task_id && b.function_id == e.function_id => {
                b.items.push(item);
                b.entry_id = e.id.to_string();
            }
            _ => out.push(api::TaskLogsBatch {
                task_id: e.task_id.clone(),
                function_id: e.function_id.clone(),
                entry_id: e.id.to_string(),
                items: vec![item],
                ..Default::default()
            }),
        }
    }
    out
}

/// Streams log batches after `last_entry_id` until `timeout`; once the app has stopped and
/// everything was sent, a final `app_done` batch tells the client to stop following.
pub(crate) async fn get_logs(s: &ModalService, r: Request<api::AppGetLogsRequest>) -> RpcStream<api::TaskLogsBatch> {
    let peer = r.remote_addr();
    let req = r.into_inner();
    let app_id = id(&req.app_id)?.to_string();
    s.store.app(&app_id).await.or_status()?;
    let mut after: i64 = if req.last_entry_id.is_empty() {
        0
    } else {
        req.last_entry_id
            .parse()
            .map_err(|_| invalid(format!("last_entry_id '{}' is not a cursor this server issued", req.last_entry_id)))?
    };
    if !req.timeout.is_finite() || req.timeout < 0.0 {
        return Err(invalid("timeout must be a non-negative number of seconds"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f32(req.timeout.min(MAX_LOG_POLL));
    let filter = log_filter(
        s,
        LogQuery {
            function_id: &req.function_id,
            task_id: &req.task_id,
            function_call_id: &req.function_call_id,
            input_id: &req.input_id,
            sandbox_id: &req.sandbox_id,
            fd: req.file_descriptor,
            search_text: &req.search_text,
        },
    )
    .await?;
    let store = s.store.clone();
    let scheduler = s.scheduler.clone();
    let left_clients = s.left_clients.clone();
    let following = (req.timeout > 0.0).then(|| s.log_followers.follow(&app_id, after));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let changed = left_clients.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // This stream's client left its detached app: what is written so far, then done.
            let client_left = left_clients.has_left(&app_id, peer);
            let left = if client_left { Duration::ZERO } else { deadline.saturating_duration_since(tokio::time::Instant::now()) };
            let followed = tokio::select! {
                followed = store.follow_logs(&app_id, after, left) => followed,
                _ = &mut changed, if !client_left => continue,
            };
            let (entries, app) = match followed {
                Ok(x) => x,
                Err(e) => {
                    let _ = tx.send(Err(crate::status::to_status(e))).await;
                    return;
                }
            };
            let read_some = !entries.is_empty();
            if let Some(last) = entries.last() {
                after = last.id;
            }
            let wanted: Vec<LogEntry> = entries.into_iter().filter(|e| filter.matches(e)).collect();
            for b in batches(&wanted) {
                if tx.send(Ok(b)).await.is_err() {
                    return;
                }
            }
            if let Some(f) = &following {
                f.sent(after);
            }
            if client_left && !read_some {
                let done = api::TaskLogsBatch { app_done: true, entry_id: after.to_string(), ..Default::default() };
                let _ = tx.send(Ok(done)).await;
                return;
            }
            if client_left {
                continue;
            }
            // Done once the app stopped, its containers are gone (their `@exit` output
            // included) and every log line was sent.
            let containers_left = !scheduler.tasks_of_app(&app_id).is_empty();
            if !app.state.is_live() && containers_left {
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let drained = !app.state.is_live() && store.follow_logs(&app_id, after, Duration::ZERO).await.map(|(e, _)| e.is_empty()).unwrap_or(true);
            if drained {
                let done = api::TaskLogsBatch { app_done: true, entry_id: after.to_string(), ..Default::default() };
                let _ = tx.send(Ok(done)).await;
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// Publishes an app's objects under its state: a deployment gets its name (replacing the
/// previous deployment of that name) and a new version, a run keeps its ephemeral or detached
/// state. The app's schedules start counting from here.
pub(crate) async fn publish(s: &ModalService, r: Request<api::AppPublishRequest>) -> Rpc<api::AppPublishResponse> {
    let by = creator(&r);
    let client_version = header(&r, "x-modal-client-version");
    let req = r.into_inner();
    let app = s.store.app(id(&req.app_id)?).await.or_status()?;
    if !app.state.is_live() {
        return Err(Status::failed_precondition(format!("App {} has stopped and cannot be published", app.id)));
    }
    let state = match AppState::from_i32(req.app_state) {
        Some(st @ (AppState::Ephemeral | AppState::Detached | AppState::Deployed)) => st,
        // `modal serve` republishes its running app after each reload without changing its state.
        None if req.app_state == 0 => app.state,
        _ => return Err(invalid(format!("an app cannot be published in state {}", req.app_state))),
    };
    if state == AppState::Deployed && req.name.is_empty() {
        return Err(invalid("a deployment needs a name"));
    }
    // The constructor's tags; none leaves those `App.set_tags` gave.
    let tags = checked_tags(&req.tags)?;
    if req.deployment_tag.len() > 50 {
        return Err(invalid("a deployment tag is at most 50 characters"));
    }
    // Checked before anything changes, so a bad schedule leaves the running version alone.
    let schedules = crate::schedules::collect(s, &app.id).await?;
    for (_, function_id) in &req.function_ids {
        check_id(function_id, "fu", "Function")?;
    }
    if state == AppState::Deployed {
        let env = s.store.environment_by_id(&app.environment_id).await.or_status()?;
        if let Some(previous) = s.store.app_by_name(&env.name, &req.name).await.or_status()? {
            if previous.id != app.id {
                s.store.set_app_state(&previous.id, AppState::Stopped).await.or_status()?;
                crate::launch::stop_app(s, &previous.id);
            }
        }
        s.store.set_app_name(&app.id, &req.name).await.or_status()?;
    }
    for (tag, class_id) in &req.class_ids {
        check_id(class_id, "cs", "Class")?;
        s.store.set_class_tag(class_id, &app.id, tag).await.or_status()?;
    }
    // Web endpoints whose functions the new version no longer has stop answering. The client
    // names the functions of its code in `definition_ids`; `function_ids` also carries those of
    // the earlier layout.
    let published: Vec<String> = if req.definition_ids.is_empty() {
        req.function_ids.values().cloned().collect()
    } else {
        req.definition_ids.keys().cloned().collect()
    };
    s.store.retain_web_routes(&app.id, &published).await.or_status()?;
    if !tags.is_empty() {
        s.store.set_app_tags(&app.id, &tags).await.or_status()?;
    }
    s.store.set_app_state(&app.id, state).await.or_status()?;
    s.launcher.forget_app_state(&app.id);
    let mut deployed_at = ferry_store::now();
    if state == AppState::Deployed {
        let info = DeploymentInfo {
            deployed_by: by,
            client_version: if req.client_version.is_empty() { client_version } else { req.client_version.clone() },
            tag: req.deployment_tag.clone(),
            commit_info: req.commit_info.as_ref().map(|c| c.encode_to_vec()),
        };
        let functions: BTreeMap<String, String> = req.function_ids.clone().into_iter().collect();
        let classes: BTreeMap<String, String> = req.class_ids.clone().into_iter().collect();
        let change = s.store.record_deployment(&app.id, &info, &functions, &classes).await.or_status()?;
        deployed_at = change.deployed_at;
        replace_version(s, &app.id, &change);
    }
    crate::schedules::register(s, &app.id, &schedules).await?;
    crate::launch::warm_up(s, &app.id).await;
    let server_warnings = crate::gpus::unmet_warnings(s, &app.id).await;
    Ok(Response::new(api::AppPublishResponse { url: page_url(s, &app.id), deployed_at, server_warnings }))
}

fn header<T>(r: &Request<T>, name: &str) -> String {
    r.metadata().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// A new version took over: cached definitions of its functions are dropped, and containers
/// started before it finish the inputs they hold and leave (a rolling replacement; with
/// `--strategy recreate` the client stops them itself through `ContainerStop`).
fn replace_version(s: &ModalService, app_id: &str, change: &ferry_store::VersionChange) {
    for function_id in &change.function_ids {
        s.launcher.forget_definition(function_id);
    }
    crate::launch::drain_app(s, app_id, change.deployed_at);
}

/// `modal app rollover`: the current version again as a new one, so its containers are
/// replaced (rolling here; `--strategy recreate` stops them from the client).
pub(crate) async fn rollover(s: &ModalService, r: Request<api::AppRolloverRequest>) -> Rpc<api::AppRolloverResponse> {
    let by = creator(&r);
    let app = s.store.app(id(&r.get_ref().app_id)?).await.or_status()?;
    if app.state != AppState::Deployed {
        return Err(Status::failed_precondition(format!("App {} is not deployed, so it cannot be rolled over", app.id)));
    }
    let change = s.store.rollover_deployment(&app.id, &by).await.or_status()?;
    replace_version(s, &app.id, &change);
    crate::launch::warm_up(s, &app.id).await;
    Ok(Response::new(api::AppRolloverResponse { url: page_url(s, &app.id), deployed_at: change.deployed_at, server_warnings: Vec::new() }))
}

/// `modal app history`: the versions of a deployed app, newest first.
pub(crate) async fn deployment_history(s: &ModalService, r: Request<api::AppDeploymentHistoryRequest>) -> Rpc<api::AppDeploymentHistoryResponse> {
    let app = s.store.app(id(&r.get_ref().app_id)?).await.or_status()?;
    let versions = s.store.deployments(&app.id).await.or_status()?;
    let current = versions.first().map(|d| d.version).unwrap_or(0);
    let app_deployment_histories = versions
        .iter()
        .map(|d| api::AppDeploymentHistory {
            app_id: d.app_id.clone(),
            version: d.version as u32,
            client_version: d.info.client_version.clone(),
            deployed_at: d.deployed_at,
            deployed_by: d.info.deployed_by.clone(),
            tag: d.info.tag.clone(),
            rollback_version: d.rollback_version.unwrap_or(0) as u32,
            rollback_allowed: d.version != current,
            commit_info: d.info.commit_info.as_deref().and_then(|b| api::CommitInfo::decode(b).ok()),
            ..Default::default()
        })
        .collect();
    Ok(Response::new(api::AppDeploymentHistoryResponse { app_deployment_histories, production_app_version: current as u32 }))
}

/// `modal app rollback [vN]`: restores an earlier version's functions (the previous one by
/// default) as a new version.
pub(crate) async fn rollback(s: &ModalService, r: Request<api::AppRollbackRequest>) -> Rpc<api::AppRollbackResponse> {
    let by = creator(&r);
    let req = r.into_inner();
    let app = s.store.app(id(&req.app_id)?).await.or_status()?;
    if app.state != AppState::Deployed {
        return Err(Status::failed_precondition(format!("App {} is not deployed, so it cannot be rolled back", app.id)));
    }
    let current = s.store.deployments(&app.id).await.or_status()?.first().map(|d| d.version).unwrap_or(0);
    let target = if req.version < 0 { current - 1 } else { req.version as i64 };
    if target < 1 {
        return Err(Status::failed_precondition(format!("App {} has no earlier version to roll back to", app.id)));
    }
    if target >= current {
        return Err(invalid(format!("v{target} is not an earlier version of App {} (the current one is v{current})", app.id)));
    }
    let change = s.store.rollback_deployment(&app.id, target, &by).await.or_status()?;
    replace_version(s, &app.id, &change);
    crate::web::restore_routes(s, &app).await?;
    let schedules = crate::schedules::collect(s, &app.id).await?;
    crate::schedules::register(s, &app.id, &schedules).await?;
    crate::launch::warm_up(s, &app.id).await;
    Ok(Response::new(api::AppRollbackResponse { url: page_url(s, &app.id), deployed_at: change.deployed_at, server_warnings: Vec::new() }))
}

/// `modal app info`: the app's lifecycle and its functions with their schedules.
pub(crate) async fn get_info(s: &ModalService, r: Request<api::AppGetInfoRequest>) -> Rpc<api::AppGetInfoResponse> {
    let app = s.store.app(id(&r.get_ref().app_id)?).await.or_status()?;
    let env = s.store.environment_by_id(&app.environment_id).await.or_status()?;
    let mut lifecycle = lifecycle(&app);
    if let Some(current) = s.store.deployments(&app.id).await.or_status()?.first() {
        lifecycle.version = current.version as i32;
        lifecycle.deployed_at = current.deployed_at;
        lifecycle.deployed_by = current.info.deployed_by.clone();
    }
    let mut functions = std::collections::HashMap::new();
    let mut function_info_summaries = std::collections::HashMap::new();
    for f in s.store.functions_of_app(&app.id).await.or_status()? {
        let Ok(def) = api::Function::decode(f.definition.unwrap_or_default().as_slice()) else { continue };
        let summary = api::app_get_info_response::FunctionInfoSummary {
            gpu_config: def.resources.as_ref().and_then(|r| r.gpu_config.clone()).into_iter().filter(|g| g.count > 0).collect(),
            schedule: def.schedule.clone(),
            web_function: def.webhook_config.as_ref().is_some_and(|w| w.r#type != 0),
            ..Default::default()
        };
        function_info_summaries.insert(f.id.clone(), summary);
        functions.insert(f.tag, f.id);
    }
    let info = api::AppHandleMetadata {
        description: app.description.clone(),
        app_id: app.id.clone(),
        environment_name: env.name,
        lifecycle: Some(lifecycle),
        functions,
        ..Default::default()
    };
    Ok(Response::new(api::AppGetInfoResponse { info: Some(info), function_info_summaries }))
}

fn seconds(t: Option<prost_types::Timestamp>) -> Option<f64> {
    t.map(|t| t.seconds as f64 + t.nanos as f64 / 1e9)
}

/// A window of an app's past logs (`modal app logs` on an app that is not running).
pub(crate) async fn fetch_logs(s: &ModalService, r: Request<api::AppFetchLogsRequest>) -> Rpc<api::AppFetchLogsResponse> {
    let req = r.into_inner();
    if req.app_id.starts_with("im-") {
        // An image build step's log (`Image.logs`): its "app" is the image.
        return crate::images::fetch_build_logs(s, req).await;
    }
    let app = s.store.app(id(&req.app_id)?).await.or_status()?;
    let since = seconds(req.since).unwrap_or(app.created_at);
    let until = seconds(req.until).unwrap_or(f64::MAX);
    let limit = if req.limit == 0 { 1000 } else { req.limit.min(10_000) } as i64;
    let filter = log_filter(s, window_query!(req)).await?;
    let entries = s.store.logs_matching(&app.id, since, until, limit, &filter).await.or_status()?;
    Ok(Response::new(api::AppFetchLogsResponse { batches: batches(&entries) }))
}

/// Line counts of an app's past logs per time bucket, by stream: how the client plans a
/// windowed fetch (`Image.logs`, `modal app logs` over a range).
pub(crate) async fn count_logs(s: &ModalService, r: Request<api::AppCountLogsRequest>) -> Rpc<api::AppCountLogsResponse> {
    let req = r.into_inner();
    if req.app_id.starts_with("im-") {
        return crate::images::count_build_logs(s, req).await;
    }
    let app = s.store.app(id(&req.app_id)?).await.or_status()?;
    let since = seconds(req.since).unwrap_or(app.created_at);
    let until = seconds(req.until).unwrap_or(f64::MAX);
    let bucket = req.bucket_secs.max(1) as i64;
    let filter = log_filter(s, window_query!(req)).await?;
    let entries = s.store.logs_matching(&app.id, since, until, 1_000_000, &filter).await.or_status()?;
    let mut buckets: BTreeMap<i64, api::app_count_logs_response::LogBucket> = BTreeMap::new();
    for e in &entries {
        let start = (e.timestamp.floor() as i64).div_euclid(bucket) * bucket;
        let b = buckets.entry(start).or_insert_with(|| api::app_count_logs_response::LogBucket {
            bucket_start_at: Some(prost_types::Timestamp { seconds: start, nanos: 0 }),
            ..Default::default()
        });
        match e.fd {
            1 => b.stdout_logs += 1,
            2 => b.stderr_logs += 1,
            _ => b.system_logs += 1,
        }
    }
    Ok(Response::new(api::AppCountLogsResponse { app_id: app.id, buckets: buckets.into_values().collect() }))
}
