//! App RPCs: lifecycle, listing, heartbeats and the log stream `modal run` follows.

use std::time::Duration;

use ferry_proto::api;
use ferry_store::{App, AppState, LogEntry};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::service::{creator, ModalService, Rpc, RpcStream};
use crate::status::{check_id, invalid, OrStatus};

const MAX_LOG_POLL: f32 = 55.0;

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
    let app = s
        .store
        .create_app(&req.environment_name, None, &req.description, state, &req.client_id, &by)
        .await
        .or_status()?;
    let url = page_url(s, &app.id);
    Ok(Response::new(api::AppCreateResponse { app_id: app.id, app_logs_url: format!("{url}/logs"), app_page_url: url }))
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

/// Running containers, of one app or of an environment.
pub(crate) async fn task_list(s: &ModalService, r: Request<api::TaskListRequest>) -> Rpc<api::TaskListResponse> {
    let req = r.into_inner();
    if !req.app_id.is_empty() {
        s.store.app(id(&req.app_id)?).await.or_status()?;
    }
    let env = s.store.environment(&req.environment_name).await.or_status()?;
    let mut tasks = Vec::new();
    for t in s.scheduler.all_tasks() {
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
            ..Default::default()
        });
    }
    Ok(Response::new(api::TaskListResponse { tasks }))
}

pub(crate) async fn task_get_info(s: &ModalService, r: Request<api::TaskGetInfoRequest>) -> Rpc<api::TaskGetInfoResponse> {
    let req = r.into_inner();
    check_id(&req.task_id, "ta", "Container")?;
    let t = s.scheduler.task(&req.task_id).ok_or_else(|| {
        Status::not_found(format!("container {} is not running on this server (see `modal container list`)", req.task_id))
    })?;
    Ok(Response::new(api::TaskGetInfoResponse {
        app_id: t.app_id.clone(),
        info: Some(api::TaskInfo { id: t.task_id, started_at: t.started_at, ..Default::default() }),
        ..Default::default()
    }))
}

/// `modal container stop`: graceful lets the current inputs finish; otherwise the container is
/// killed at once and its inputs run again on another container.
pub(crate) async fn container_stop(s: &ModalService, r: Request<api::ContainerStopRequest>) -> Rpc<api::ContainerStopResponse> {
    let req = r.into_inner();
    check_id(&req.task_id, "ta", "Container")?;
    if s.scheduler.task(&req.task_id).is_none() {
        return Err(Status::not_found(format!("container {} is not running", req.task_id)));
    }
    if req.graceful {
        s.scheduler.stop_task(&req.task_id);
    } else {
        s.scheduler.preempt(&req.task_id);
        s.scheduler.stop_task(&req.task_id);
        s.launcher.kill(&req.task_id);
    }
    Ok(Response::new(api::ContainerStopResponse::default()))
}

pub(crate) async fn heartbeat(s: &ModalService, r: Request<api::AppHeartbeatRequest>) -> Rpc<()> {
    s.store.heartbeat_app(id(&r.get_ref().app_id)?).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn list(s: &ModalService, r: Request<api::AppListRequest>) -> Rpc<api::AppListResponse> {
    let apps = s.store.list_apps(&r.get_ref().environment_name).await.or_status()?;
    let apps = apps
        .iter()
        .map(|a: &App| api::app_list_response::AppListItem {
            app_id: a.id.clone(),
            description: a.description.clone(),
            state: a.state as i32,
            created_at: a.created_at,
            stopped_at: a.stopped_at.unwrap_or(0.0),
            n_running_tasks: 0,
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

/// The client is going away: an ephemeral run ends with it; a detached one keeps running.
pub(crate) async fn client_disconnect(s: &ModalService, r: Request<api::AppClientDisconnectRequest>) -> Rpc<()> {
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
        }
    }
    Ok(Response::new(()))
}

fn batches(entries: &[LogEntry]) -> Vec<api::TaskLogsBatch> {
    let mut out: Vec<api::TaskLogsBatch> = Vec::new();
    for e in entries {
        let item = api::TaskLogs {
            data: e.data.clone(),
            timestamp: e.timestamp,
            file_descriptor: e.fd,
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
    let (filter_fn, filter_task) = (req.function_id, req.task_id);
    let store = s.store.clone();
    let scheduler = s.scheduler.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (entries, app) = match store.follow_logs(&app_id, after, left).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = tx.send(Err(crate::status::to_status(e))).await;
                    return;
                }
            };
            if let Some(last) = entries.last() {
                after = last.id;
            }
            let wanted: Vec<LogEntry> = entries
                .into_iter()
                .filter(|e| filter_fn.is_empty() || e.function_id == filter_fn)
                .filter(|e| filter_task.is_empty() || e.task_id == filter_task)
                .collect();
            for b in batches(&wanted) {
                if tx.send(Ok(b)).await.is_err() {
                    return;
                }
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
/// previous deployment of that name), a run keeps its ephemeral or detached state.
pub(crate) async fn publish(s: &ModalService, r: Request<api::AppPublishRequest>) -> Rpc<api::AppPublishResponse> {
    let req = r.into_inner();
    let app = s.store.app(id(&req.app_id)?).await.or_status()?;
    if !app.state.is_live() {
        return Err(Status::failed_precondition(format!("App {} has stopped and cannot be published", app.id)));
    }
    let state = match AppState::from_i32(req.app_state) {
        Some(st @ (AppState::Ephemeral | AppState::Detached | AppState::Deployed)) => st,
        _ => return Err(invalid(format!("an app cannot be published in state {}", req.app_state))),
    };
    if state == AppState::Deployed {
        if req.name.is_empty() {
            return Err(invalid("a deployment needs a name"));
        }
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
    s.store.set_app_state(&app.id, state).await.or_status()?;
    crate::launch::warm_up(s, &app.id).await;
    Ok(Response::new(api::AppPublishResponse {
        url: page_url(s, &app.id),
        deployed_at: ferry_store::now(),
        server_warnings: Vec::new(),
    }))
}

fn seconds(t: Option<prost_types::Timestamp>) -> Option<f64> {
    t.map(|t| t.seconds as f64 + t.nanos as f64 / 1e9)
}

/// A window of an app's past logs (`modal app logs` on an app that is not running).
pub(crate) async fn fetch_logs(s: &ModalService, r: Request<api::AppFetchLogsRequest>) -> Rpc<api::AppFetchLogsResponse> {
    let req = r.into_inner();
    let app = s.store.app(id(&req.app_id)?).await.or_status()?;
    let since = seconds(req.since).unwrap_or(app.created_at);
    let until = seconds(req.until).unwrap_or(f64::MAX);
    let limit = if req.limit == 0 { 1000 } else { req.limit.min(10_000) } as i64;
    let entries = s.store.logs_in_range(&app.id, since, until, limit).await.or_status()?;
    let wanted: Vec<LogEntry> = entries
        .into_iter()
        .filter(|e| req.function_id.is_empty() || e.function_id == req.function_id)
        .filter(|e| req.task_id.is_empty() || e.task_id == req.task_id)
        .filter(|e| req.search_text.is_empty() || e.data.contains(&req.search_text))
        .collect();
    Ok(Response::new(api::AppFetchLogsResponse { batches: batches(&wanted) }))
}
