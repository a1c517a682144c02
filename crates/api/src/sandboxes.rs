//! Sandbox control plane, both protocol versions the client speaks: V2 (its default; the
//! `*V2` RPCs plus `AuthTokenGet`) and V1 (`MODAL_SANDBOX_V2=0`). Each handler decodes the
//! request, calls `ferry-sandbox`, and encodes the answer; exec and the sandbox's stdio in V2
//! go to the separate TaskCommandRouter service that `ferry-sandbox` serves.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_proto::api;
use ferry_sandbox::{Egress, Probe, SandboxError, SandboxSpec, VolumeMount};
use ferry_store::{SandboxFilter, SandboxRecord};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::service::{creator, principal, ModalService, Rpc, RpcStream};
use crate::status::{check_id, invalid, OrStatus};

/// Long polls answer before the client's own deadline.
const MAX_POLL: Duration = Duration::from_secs(50);

fn sandboxes(s: &ModalService) -> Result<&ferry_sandbox::Sandboxes, Status> {
    s.sandboxes.as_deref().ok_or_else(|| Status::unavailable("Sandboxes are not available on this server (the router did not start)"))
}

pub(crate) fn err(e: SandboxError) -> Status {
    e.into()
}

fn result_of(r: &SandboxRecord) -> Option<api::GenericResult> {
    if r.is_running() {
        return None;
    }
    Some(api::GenericResult { status: r.status, exitcode: r.exit_code.unwrap_or(0), exception: r.exception.clone(), ..Default::default() })
}

fn metadata(r: &SandboxRecord) -> api::SandboxHandleMetadata {
    api::SandboxHandleMetadata { result: result_of(r), app_id: r.app_id.clone() }
}

fn tag_protos(tags: &BTreeMap<String, String>) -> Vec<api::SandboxTag> {
    tags.iter().map(|(k, v)| api::SandboxTag { tag_name: k.clone(), tag_value: v.clone() }).collect()
}

fn tags_of(tags: &[api::SandboxTag]) -> BTreeMap<String, String> {
    tags.iter().map(|t| (t.tag_name.clone(), t.tag_value.clone())).collect()
}

fn tunnel_protos(t: &[ferry_sandbox::TunnelInfo]) -> Vec<api::TunnelData> {
    t.iter()
        .map(|t| {
            let plain = !t.tls;
            api::TunnelData {
                host: t.host.clone(),
                port: t.port as u32,
                unencrypted_host: plain.then(|| t.host.clone()),
                unencrypted_port: plain.then_some(t.port as u32),
                container_port: t.container_port as u32,
            }
        })
        .collect()
}

/// Turns a sandbox definition into a spec: image to layer, secrets to environment, resources
/// to limits. Anything Ferry cannot honour is refused here, in one place.
async fn spec_of(s: &ModalService, app_id: &str, def: &api::Sandbox, secret_sources: &[api::SecretSource], ephemeral: Option<&api::StringMap>, v2: bool) -> Result<SandboxSpec, Status> {
    let app = s.store.app(app_id).await.or_status()?;
    // One check for every path that asks for GPUs: a sandbox is one call, so it is refused now.
    if crate::gpus::check_resources(s, "Sandbox", def.resources.as_ref())?.is_some() {
        return Err(Status::unimplemented("Ferry does not implement GPUs in Sandboxes yet; use a function with gpu= instead"));
    }
    if !def.cloud_bucket_mounts.is_empty() || !def.s3_mounts.is_empty() {
        return Err(Status::unimplemented("Ferry does not implement cloud bucket mounts in Sandboxes yet"));
    }
    // Local files of the image (`add_local_*` without copy) and `mounts=`: bound read-only.
    let files = crate::mounts::container_files(s, &def.mount_ids).await.map_err(|e| Status::not_found(format!("the Sandbox's files: {e}")))?;
    if def.proxy_id.is_some() || def.experimental_outbound_policy.is_some() || def.outbound_policy.is_some() {
        return Err(Status::unimplemented("Ferry does not implement proxies or outbound policies for Sandboxes yet"));
    }
    let mut allowed_cidrs = None;
    let egress = match def.network_access.as_ref().map(|n| (n.network_access_type, n)) {
        _ if def.block_network => Egress::Blocked,
        Some((2, _)) => Egress::Blocked,
        Some((3, n)) if n.allowed_cidrs.is_empty() && n.allowed_domains.is_empty() => Egress::Blocked,
        Some((3, n)) if n.allowed_domains.is_empty() => {
            allowed_cidrs = Some(n.allowed_cidrs.clone());
            Egress::Open
        }
        Some((3, _)) => {
            return Err(Status::unimplemented(
                "Ferry does not implement outbound_domain_allowlist yet; use outbound_cidr_allowlist, block_network=True or open outbound",
            ))
        }
        _ => Egress::Open,
    };
    let mut ports = Vec::new();
    if let Some(api::sandbox::OpenPortsOneof::OpenPorts(p)) = &def.open_ports_oneof {
        for port in &p.ports {
            if port.port == 0 || port.port > 65535 {
                return Err(invalid(format!("port {} is out of range", port.port)));
            }
            ports.push(ferry_sandbox::PortSpec { port: port.port as u16, tls: !port.unencrypted });
        }
    }
    if egress == Egress::Blocked && !ports.is_empty() {
        return Err(invalid("Cannot open ports when block_network is enabled"));
    }
    let probe = match def.readiness_probe.as_ref() {
        None => None,
        Some(p) => {
            let interval_ms = p.interval_ms.unwrap_or(100);
            match &p.probe_oneof {
                Some(api::probe::ProbeOneof::TcpPort(port)) if *port > 0 && *port <= 65535 => Some(Probe::Tcp { port: *port as u16, interval_ms }),
                Some(api::probe::ProbeOneof::ExecCommand(c)) if !c.argv.is_empty() => Some(Probe::Exec { argv: c.argv.clone(), interval_ms }),
                _ => return Err(invalid("the readiness probe needs a TCP port or a command")),
            }
        }
    };
    if def.image_id.is_empty() {
        return Err(invalid("a Sandbox needs an image"));
    }
    let layer = crate::images::wait_for_layer(s, &def.image_id).await.map_err(Status::failed_precondition)?;

    let mut env = Vec::new();
    for id in &def.secret_ids {
        env.extend(s.store.secret_values(id).await.or_status()?);
    }
    for src in secret_sources {
        match &src.source {
            Some(api::secret_source::Source::SecretId(id)) => env.extend(s.store.secret_values(id).await.or_status()?),
            Some(api::secret_source::Source::Env(m)) => env.extend(m.contents.iter().map(|(k, v)| (k.clone(), v.clone()))),
            None => {}
        }
    }
    for m in ephemeral.into_iter().chain(def.environment_variables.as_ref()) {
        env.extend(m.contents.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let (memory_mib, cpu_cores) = match &def.resources {
        Some(r) => (
            (r.memory_mb > 0 || r.memory_mb_max > 0).then(|| r.memory_mb_max.max(r.memory_mb) as u64),
            (r.milli_cpu > 0 || r.milli_cpu_max > 0).then(|| r.milli_cpu_max.max(r.milli_cpu) as f64 / 1000.0),
        ),
        None => (None, None),
    };
    let tty = def.pty_info.as_ref().filter(|p| p.enabled).map(|p| {
        for (k, v) in [("TERM", &p.env_term), ("COLORTERM", &p.env_colorterm), ("TERM_PROGRAM", &p.env_term_program)] {
            if !v.is_empty() {
                env.push((k.to_string(), v.clone()));
            }
        }
        (p.winsz_rows.min(u16::MAX as u32) as u16, p.winsz_cols.min(u16::MAX as u32) as u16)
    });
    let command = if def.entrypoint_args.is_empty() { vec!["sleep".into(), "infinity".into()] } else { def.entrypoint_args.clone() };
    let binds = crate::nfs::binds(s, &def.nfs_mounts).await.map_err(Status::invalid_argument)?;
    let spec = SandboxSpec {
        app_id: app.id.clone(),
        environment_id: app.environment_id.clone(),
        created_by: String::new(),
        name: def.name.clone().filter(|n| !n.is_empty()),
        tags: BTreeMap::new(),
        image_id: def.image_id.clone(),
        layer: Some(layer),
        command,
        env,
        workdir: def.workdir.clone(),
        timeout: Duration::from_secs(if def.timeout_secs == 0 { 300 } else { def.timeout_secs as u64 }),
        idle_timeout: def.idle_timeout_secs.filter(|t| *t > 0).map(|t| Duration::from_secs(t as u64)),
        memory_mib,
        cpu_cores,
        egress,
        allowed_cidrs,
        ports,
        probe,
        volumes: def
            .volume_mounts
            .iter()
            .map(|v| VolumeMount {
                volume_id: v.volume_id.clone(),
                mount_path: v.mount_path.clone(),
                read_only: v.read_only,
                sub_path: v.sub_path.clone().filter(|p| !p.is_empty()),
            })
            .collect(),
        binds,
        files,
        tty,
        v2,
    };
    Ok(spec)
}

pub(crate) async fn auth_token_get(s: &ModalService, r: Request<api::AuthTokenGetRequest>) -> Rpc<api::AuthTokenGetResponse> {
    let subject = match principal(&r) {
        ferry_store::Principal::User { token_id } => token_id,
        ferry_store::Principal::Task { task_id, .. } => task_id,
    };
    Ok(Response::new(api::AuthTokenGetResponse { token: sandboxes(s)?.client_token(&subject) }))
}

pub(crate) async fn create_v2(s: &ModalService, r: Request<api::SandboxCreateV2Request>) -> Rpc<api::SandboxCreateV2Response> {
    let by = creator(&r);
    let req = r.into_inner();
    check_id(&req.app_id, "ap", "App")?;
    let def = req.definition.ok_or_else(|| invalid("SandboxCreateV2 needs a definition"))?;
    let mut spec = spec_of(s, &req.app_id, &def, &req.secret_sources, req.ephemeral_secrets.as_ref(), true).await?;
    spec.created_by = by;
    spec.tags = tags_of(&req.tags);
    let sb = sandboxes(s)?;
    let created = sb.create(spec).await.map_err(err)?;
    let record = sb.record(&created.sandbox_id).await.map_err(err)?;
    let access = sb.router_access(&created.sandbox_id).await.map_err(err)?;
    Ok(Response::new(api::SandboxCreateV2Response {
        sandbox_id: created.sandbox_id,
        tunnels: tunnel_protos(&created.tunnels),
        task_id: created.task_id,
        metadata: Some(metadata(&record)),
        command_router_access: Some(api::CommandRouterAccess { url: access.url, jwt: access.jwt }),
        sandbox_token: String::new(),
    }))
}

pub(crate) async fn create_v1(s: &ModalService, r: Request<api::SandboxCreateRequest>) -> Rpc<api::SandboxCreateResponse> {
    let by = creator(&r);
    let req = r.into_inner();
    check_id(&req.app_id, "ap", "App")?;
    let def = req.definition.ok_or_else(|| invalid("SandboxCreate needs a definition"))?;
    let mut spec = spec_of(s, &req.app_id, &def, &[], None, false).await?;
    spec.created_by = by;
    spec.tags = tags_of(&req.tags);
    let sb = sandboxes(s)?;
    let created = sb.create(spec).await.map_err(err)?;
    let record = sb.record(&created.sandbox_id).await.map_err(err)?;
    Ok(Response::new(api::SandboxCreateResponse { sandbox_id: created.sandbox_id, metadata: Some(metadata(&record)) }))
}

pub(crate) async fn wait(s: &ModalService, r: Request<api::SandboxWaitRequest>) -> Rpc<api::SandboxWaitResponse> {
    let req = r.into_inner();
    check_id(&req.sandbox_id, "sb", "Sandbox")?;
    let timeout = Duration::from_secs_f32(req.timeout.max(0.0)).min(MAX_POLL);
    let record = sandboxes(s)?.wait(&req.sandbox_id, timeout).await.map_err(err)?;
    Ok(Response::new(api::SandboxWaitResponse { result: result_of(&record), metadata: Some(metadata(&record)) }))
}

pub(crate) async fn get_task_id(s: &ModalService, r: Request<api::SandboxGetTaskIdRequest>) -> Rpc<api::SandboxGetTaskIdResponse> {
    let req = r.into_inner();
    check_id(&req.sandbox_id, "sb", "Sandbox")?;
    let record = sandboxes(s)?.record(&req.sandbox_id).await.map_err(err)?;
    if record.is_running() {
        return Ok(Response::new(api::SandboxGetTaskIdResponse { task_id: Some(record.task_id.clone()), task_result: None }));
    }
    Ok(Response::new(api::SandboxGetTaskIdResponse { task_id: None, task_result: result_of(&record) }))
}

pub(crate) async fn terminate(s: &ModalService, r: Request<api::SandboxTerminateRequest>) -> Rpc<api::SandboxTerminateResponse> {
    let req = r.into_inner();
    check_id(&req.sandbox_id, "sb", "Sandbox")?;
    let before = sandboxes(s)?.record(&req.sandbox_id).await.map_err(err)?;
    let existing = result_of(&before);
    sandboxes(s)?.terminate(&req.sandbox_id).await.map_err(err)?;
    Ok(Response::new(api::SandboxTerminateResponse { existing_result: existing }))
}

pub(crate) async fn router_access_v2(s: &ModalService, r: Request<api::SandboxGetCommandRouterAccessRequest>) -> Rpc<api::SandboxGetCommandRouterAccessResponse> {
    use api::sandbox_get_command_router_access_request::Target;
    let sb = sandboxes(s)?;
    let access = match r.into_inner().target {
        Some(Target::SandboxId(id)) => sb.router_access(&id).await,
        Some(Target::TaskId(id)) => {
            function_container_exec(s, &id)?;
            sb.router_access_by_task(&id).await
        }
        None => return Err(invalid("a sandbox_id or task_id is required")),
    }
    .map_err(err)?;
    Ok(Response::new(api::SandboxGetCommandRouterAccessResponse { jwt: access.jwt, url: access.url, worker_ipv4_address: String::new() }))
}

/// `modal container exec` and `modal shell <task>` name a function's container: not served yet.
fn function_container_exec(s: &ModalService, task_id: &str) -> Result<(), Status> {
    match s.scheduler.task(task_id) {
        Some(_) => Err(Status::unimplemented(format!(
            "Ferry does not implement exec into a function's container yet ({task_id} runs a function); \
             exec works into Sandboxes (`modal container exec` with a Sandbox's container id)"
        ))),
        None => Ok(()),
    }
}

pub(crate) async fn router_access_v1(s: &ModalService, r: Request<api::TaskGetCommandRouterAccessRequest>) -> Rpc<api::TaskGetCommandRouterAccessResponse> {
    let task_id = r.into_inner().task_id;
    function_container_exec(s, &task_id)?;
    let access = sandboxes(s)?.router_access_by_task(&task_id).await.map_err(err)?;
    Ok(Response::new(api::TaskGetCommandRouterAccessResponse { jwt: access.jwt, url: access.url }))
}

pub(crate) async fn list(s: &ModalService, r: Request<api::SandboxListRequest>) -> Rpc<api::SandboxListResponse> {
    let req = r.into_inner();
    let mut filter = SandboxFilter {
        before: (req.before_timestamp > 0.0).then_some(req.before_timestamp),
        include_finished: req.include_finished,
        tags: tags_of(&req.tags),
        limit: 100,
        ..Default::default()
    };
    if !req.app_id.is_empty() {
        filter.app_id = Some(req.app_id.clone());
    } else {
        filter.environment_id = Some(s.store.environment(&req.environment_name).await.or_status()?.id);
    }
    let sb = sandboxes(s)?;
    let sandboxes = s.store.list_sandboxes(&filter).await.or_status()?;
    let infos = sandboxes
        .iter()
        .map(|rec| api::SandboxInfo {
            id: rec.id.clone(),
            created_at: rec.created_at,
            task_info: Some(api::TaskInfo {
                id: rec.task_id.clone(),
                started_at: rec.started_at.unwrap_or(0.0),
                finished_at: rec.finished_at.unwrap_or(0.0),
                result: result_of(rec),
                enqueued_at: rec.created_at,
                sandbox_id: rec.id.clone(),
                ..Default::default()
            }),
            app_id: rec.app_id.clone(),
            tags: tag_protos(&rec.tags),
            name: rec.name.clone().unwrap_or_default(),
            image_id: rec.image_id.clone(),
            timeout_secs: rec.timeout_secs,
            idle_timeout_secs: rec.idle_timeout_secs,
            tunnels: tunnel_protos(&sb.tunnels(&rec.id)),
            metadata: Some(metadata(rec)),
            ..Default::default()
        })
        .collect();
    Ok(Response::new(api::SandboxListResponse { sandboxes: infos }))
}

pub(crate) async fn get_from_name(s: &ModalService, r: Request<api::SandboxGetFromNameRequest>) -> Rpc<api::SandboxGetFromNameResponse> {
    let req = r.into_inner();
    let app = s.store.app_by_name(&req.environment_name, &req.app_name).await.or_status()?;
    let not_found = || Status::not_found(format!("Sandbox '{}' not found in App '{}'", req.sandbox_name, req.app_name));
    let app = app.ok_or_else(not_found)?;
    let record = s.store.sandbox_by_name(&app.id, &req.sandbox_name, req.include_terminated).await.or_status()?.ok_or_else(not_found)?;
    Ok(Response::new(api::SandboxGetFromNameResponse { sandbox_id: record.id.clone(), metadata: Some(metadata(&record)) }))
}

pub(crate) async fn tags_get(s: &ModalService, r: Request<api::SandboxTagsGetRequest>) -> Rpc<api::SandboxTagsGetResponse> {
    let req = r.into_inner();
    check_id(&req.sandbox_id, "sb", "Sandbox")?;
    let record = s.store.sandbox(&req.sandbox_id).await.or_status()?;
    Ok(Response::new(api::SandboxTagsGetResponse { tags: tag_protos(&record.tags) }))
}

pub(crate) async fn tags_set(s: &ModalService, r: Request<api::SandboxTagsSetRequest>) -> Rpc<()> {
    let req = r.into_inner();
    check_id(&req.sandbox_id, "sb", "Sandbox")?;
    s.store.set_sandbox_tags(&req.sandbox_id, &tags_of(&req.tags)).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn get_tunnels(s: &ModalService, r: Request<api::SandboxGetTunnelsRequest>) -> Rpc<api::SandboxGetTunnelsResponse> {
    let req = r.into_inner();
    check_id(&req.sandbox_id, "sb", "Sandbox")?;
    let sb = sandboxes(s)?;
    let record = sb.record(&req.sandbox_id).await.map_err(err)?;
    if !record.is_running() {
        return Err(Status::failed_precondition(format!("Sandbox {} has already finished", record.id)));
    }
    let tunnels = sb.tunnels(&req.sandbox_id);
    Ok(Response::new(api::SandboxGetTunnelsResponse {
        result: Some(api::GenericResult { status: api::generic_result::GenericStatus::Success as i32, ..Default::default() }),
        tunnels: tunnel_protos(&tunnels),
    }))
}

/// V1: the main process's output as log batches; `entry_id` is the byte offset.
pub(crate) async fn get_logs(s: &ModalService, r: Request<api::SandboxGetLogsRequest>) -> RpcStream<api::TaskLogsBatch> {
    let req = r.into_inner();
    check_id(&req.sandbox_id, "sb", "Sandbox")?;
    let sb = sandboxes(s)?.clone();
    let fd: u8 = if req.file_descriptor == api::FileDescriptor::Stderr as i32 { 2 } else { 1 };
    let mut offset: u64 = req.last_entry_id.parse().unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let id = req.sandbox_id.clone();
    tokio::spawn(async move {
        loop {
            match sb.read_output(&id, fd, offset, 1024 * 1024).await {
                Ok(Some((start, data))) => {
                    offset = start + data.len() as u64;
                    let batch = api::TaskLogsBatch {
                        items: vec![api::TaskLogs {
                            data: String::from_utf8_lossy(&data).into_owned(),
                            file_descriptor: fd as i32,
                            timestamp: ferry_store::now(),
                            ..Default::default()
                        }],
                        entry_id: offset.to_string(),
                        sandbox_id: id.clone(),
                        ..Default::default()
                    };
                    if tx.send(Ok(batch)).await.is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    let _ = tx.send(Ok(api::TaskLogsBatch { eof: true, entry_id: offset.to_string(), ..Default::default() })).await;
                    return;
                }
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// V1: the main process's stdin; writes are numbered by `index` so a retry is not repeated.
pub(crate) async fn stdin_write(s: &ModalService, r: Request<api::SandboxStdinWriteRequest>) -> Rpc<api::SandboxStdinWriteResponse> {
    let req = r.into_inner();
    check_id(&req.sandbox_id, "sb", "Sandbox")?;
    sandboxes(s)?.stdin_write_indexed(&req.sandbox_id, req.index, &req.input, req.eof).await.map_err(err)?;
    Ok(Response::new(api::SandboxStdinWriteResponse {}))
}

/// V1's control-plane filesystem snapshot (`MODAL_USE_LEGACY_FILESYSTEM_SNAPSHOT=1`).
pub(crate) async fn snapshot_fs(s: &ModalService, r: Request<api::SandboxSnapshotFsRequest>) -> Rpc<api::SandboxSnapshotFsResponse> {
    let req = r.into_inner();
    check_id(&req.sandbox_id, "sb", "Sandbox")?;
    let sb = sandboxes(s)?;
    let record = sb.record(&req.sandbox_id).await.map_err(err)?;
    let image_id = sb.snapshot_filesystem(&record.task_id).await.map_err(err)?;
    Ok(Response::new(api::SandboxSnapshotFsResponse {
        image_id,
        result: Some(api::GenericResult { status: api::generic_result::GenericStatus::Success as i32, ..Default::default() }),
        image_metadata: None,
    }))
}

/// An app that stops takes its sandboxes with it.
pub(crate) fn stop_app(s: &ModalService, app_id: &str) {
    if let Some(sb) = s.sandboxes.clone() {
        let app_id = app_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = sb.terminate_app(&app_id).await {
                tracing::warn!(app_id, "stopping the app's sandboxes failed: {e}");
            }
        });
    }
}
