//! `TunnelStart`/`TunnelStop` (`modal.forward` inside a function's container): the caller must
//! be a task; the forward itself is `ferry_sandbox::forward`. Open forwards are kept per task
//! and port until the container stops them or goes away.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use ferry_proto::api;
use ferry_sandbox::forward::Forward;
use ferry_store::Principal;
use tonic::{Request, Response, Status};

use crate::service::{principal, ModalService, Rpc};

/// Open forwards by (task, container port).
static FORWARDS: LazyLock<Mutex<HashMap<(String, u16), Forward>>> = LazyLock::new(Default::default);

fn caller_task<T>(r: &Request<T>) -> Result<String, Status> {
    match principal(r) {
        Principal::Task { task_id, .. } => Ok(task_id),
        Principal::User { .. } => Err(Status::invalid_argument("Forwarding ports only works inside a Modal container")),
    }
}

fn port_of(port: u32) -> Result<u16, Status> {
    u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| Status::invalid_argument(format!("Invalid port number {port}")))
}

pub(crate) async fn start(s: &ModalService, r: Request<api::TunnelStartRequest>) -> Rpc<api::TunnelStartResponse> {
    let task_id = caller_task(&r)?;
    let req = r.into_inner();
    let port = port_of(req.port)?;
    let key = (task_id.clone(), port);
    {
        let mut open = FORWARDS.lock().unwrap();
        open.retain(|_, f| f.is_open());
        if open.contains_key(&key) {
            return Err(Status::already_exists(format!("Port {port} is already forwarded")));
        }
    }
    let sandboxes = s.sandboxes.as_ref().ok_or_else(|| Status::unavailable("Ferry's tunnels are not running"))?;
    let (info, forward) = sandboxes.forward(&task_id, port, req.unencrypted).await.map_err(Status::from)?;
    FORWARDS.lock().unwrap().insert(key, forward);
    Ok(Response::new(api::TunnelStartResponse {
        host: info.host.clone(),
        port: info.port as u32,
        unencrypted_host: info.unencrypted_port.map(|_| info.host.clone()),
        unencrypted_port: info.unencrypted_port.map(u32::from),
    }))
}

pub(crate) async fn stop(_s: &ModalService, r: Request<api::TunnelStopRequest>) -> Rpc<api::TunnelStopResponse> {
    let task_id = caller_task(&r)?;
    let port = port_of(r.get_ref().port)?;
    let removed = FORWARDS.lock().unwrap().remove(&(task_id, port));
    Ok(Response::new(api::TunnelStopResponse { exists: removed.is_some() }))
}
