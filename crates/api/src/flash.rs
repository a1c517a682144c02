//! `@modal.experimental.http_server` (Modal's "Flash"): a class whose containers run their own
//! HTTP server on a port. Each container announces itself with `FlashContainerRegister` (every
//! second, as a heartbeat) and leaves with `FlashContainerDeregister`; the web gateway sends a
//! request for the function's URL straight to the server of one registered container, on the
//! container's own port inside its network namespace.
//!
//! With no container registered, the request gets `503 Service Unavailable` and a container is
//! started, as on Modal, where clients retry until one is ready. Requests count as activity, so a
//! container that serves traffic is not scaled down.
//!
//! Registrations are heartbeat leases, kept in memory: after a restart the containers announce
//! themselves again within a second.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_gateway::{BackendError, Call, FromApp, RequestHead, RequestKind, ToApp};
use ferry_proto::api;
use ferry_store::Principal;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::service::{principal, ModalService, Rpc};

/// The method name of a Flash function's web route.
pub(crate) const ROUTE_METHOD: &str = "@flash";

/// A registration older than this is gone (containers renew every second).
const LEASE: Duration = Duration::from_secs(10);

struct Registered {
    /// The announced address (what `FlashContainerList` shows).
    host: String,
    port: u32,
    /// The server's port inside the container.
    container_port: u16,
    renewed: Instant,
}

#[derive(Default)]
struct Registry {
    /// Function id → task id → registration.
    by_function: HashMap<String, HashMap<String, Registered>>,
    /// Function id → last request, so serving containers stay up.
    last_request: HashMap<String, Instant>,
    /// Round-robin position per function.
    next: HashMap<String, usize>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn caller_task<T>(r: &Request<T>) -> Result<String, Status> {
    match principal(r) {
        Principal::Task { task_id, .. } => Ok(task_id),
        Principal::User { .. } => Err(Status::permission_denied("Flash registration is only possible inside a Modal container")),
    }
}

pub(crate) async fn register(s: &ModalService, r: Request<api::FlashContainerRegisterRequest>) -> Rpc<api::FlashContainerRegisterResponse> {
    let task_id = caller_task(&r)?;
    let req = r.into_inner();
    let task = s.scheduler.task(&task_id).ok_or_else(|| Status::not_found(format!("task {task_id} is not running")))?;
    let (_, def) = crate::launch::definition(s, &task.function_id).await.map_err(Status::internal)?;
    let Some(port) = def.http_config.as_ref().and_then(|h| u16::try_from(h.port).ok()).filter(|p| *p > 0) else {
        return Err(Status::failed_precondition(format!("function {} is not an http_server", def.function_name)));
    };
    let mut reg = REGISTRY.lock().unwrap();
    reg.by_function.entry(task.function_id.clone()).or_default().insert(
        task_id,
        Registered { host: req.host, port: req.port, container_port: port, renewed: Instant::now() },
    );
    Ok(Response::new(api::FlashContainerRegisterResponse { url: def.flash_service_urls.first().cloned().unwrap_or_default() }))
}

pub(crate) async fn deregister(_s: &ModalService, r: Request<api::FlashContainerDeregisterRequest>) -> Rpc<()> {
    let task_id = caller_task(&r)?;
    let mut reg = REGISTRY.lock().unwrap();
    for tasks in reg.by_function.values_mut() {
        tasks.remove(&task_id);
    }
    Ok(Response::new(()))
}

pub(crate) async fn list(_s: &ModalService, r: Request<api::FlashContainerListRequest>) -> Rpc<api::FlashContainerListResponse> {
    let function_id = r.into_inner().function_id;
    let reg = REGISTRY.lock().unwrap();
    let mut containers: Vec<_> = reg
        .by_function
        .get(&function_id)
        .into_iter()
        .flatten()
        .filter(|(_, r)| r.renewed.elapsed() < LEASE)
        .map(|(task_id, r)| api::flash_container_list_response::Container { task_id: task_id.clone(), host: r.host.clone(), port: r.port })
        .collect();
    containers.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    Ok(Response::new(api::FlashContainerListResponse { containers }))
}

/// Whether the function's URL was requested within `window` (its containers are busy).
pub(crate) fn requested_within(function_id: &str, window: Duration) -> bool {
    REGISTRY.lock().unwrap().last_request.get(function_id).is_some_and(|t| t.elapsed() < window)
}

/// Picks a registered container, dropping expired or stopped ones: for a request with a
/// `Modal-Session-Id`, the one that session's rendezvous hash ranks first (the same container
/// for every request of the session while it lives, and only that session's share moves when
/// containers come or go); otherwise round robin.
fn pick(s: &ModalService, function_id: &str, session: Option<&[u8]>) -> Option<(String, u16)> {
    let mut guard = REGISTRY.lock().unwrap();
    let reg = &mut *guard;
    reg.last_request.insert(function_id.to_string(), Instant::now());
    let tasks = reg.by_function.get_mut(function_id)?;
    tasks.retain(|task_id, r| r.renewed.elapsed() < LEASE && s.scheduler.task(task_id).is_some_and(|t| !t.stopping));
    let mut live: Vec<(&String, &Registered)> = tasks.iter().collect();
    if live.is_empty() {
        return None;
    }
    live.sort_by(|a, b| a.0.cmp(b.0));
    if let Some(session) = session.filter(|v| !v.is_empty()) {
        let (task_id, r) = live.iter().max_by_key(|(task_id, _)| rendezvous(session, task_id))?;
        return Some(((*task_id).clone(), r.container_port));
    }
    let next = reg.next.entry(function_id.to_string()).or_default();
    let (task_id, r) = live[*next % live.len()];
    *next = next.wrapping_add(1);
    Some((task_id.clone(), r.container_port))
}

/// The rendezvous weight of a session on a container: stable across requests and replicas.
fn rendezvous(session: &[u8], task_id: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update((session.len() as u64).to_le_bytes());
    h.update(session);
    h.update(task_id.as_bytes());
    h.finalize().into()
}

/// Starts a proxied request to one of the function's containers.
pub(crate) async fn start(s: &ModalService, function_id: &str, head: RequestHead) -> Result<Call, BackendError> {
    if head.kind != RequestKind::Http {
        return Err(BackendError::new(501, "Ferry does not proxy WebSocket connections to http_server containers yet"));
    }
    let session = head.headers.iter().find(|(k, _)| k.as_slice() == b"modal-session-id").map(|(_, v)| v.as_slice());
    let Some((task_id, port)) = pick(s, function_id, session) else {
        // Scale up from zero; the caller retries, as with Modal's Flash.
        crate::launch::ensure_one(s, function_id).await.map_err(|e| BackendError::new(503, e.message().to_string()))?;
        return Err(BackendError::new(503, "no container of this http_server is ready yet; one is starting, retry shortly"));
    };
    s.scheduler.touch(&task_id);
    let stream = ferry_sandbox::forward::connect_to_task(&task_id, port)
        .await
        .map_err(|e| BackendError::new(502, format!("cannot reach the http_server of container {task_id} on port {port}: {e}")))?;
    let (to_app, app_in) = mpsc::channel(4);
    let (app_out, from_app) = mpsc::channel(16);
    let call_id = ferry_store::new_id("fc");
    tokio::spawn(proxy(stream, head, port, app_in, app_out));
    Ok(Call { id: call_id, to_app, from_app })
}

/// Hop-by-hop headers, which a proxy does not forward.
fn hop_by_hop(name: &[u8]) -> bool {
    const HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authenticate", "proxy-authorization"];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// The path as it goes on the wire: `head.path` is decoded, so it is encoded again.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@%".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn proxy(stream: tokio::net::TcpStream, head: RequestHead, port: u16, mut app_in: mpsc::Receiver<ToApp>, app_out: mpsc::Sender<FromApp>) {
    let fail = |m: String| {
        let out = app_out.clone();
        async move {
            let _ = out.send(FromApp::Failed(m)).await;
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await {
        Ok(x) => x,
        Err(e) => return fail(format!("HTTP handshake with the container's server failed: {e}")).await,
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // The request body, as the gateway streams it.
    let (body_tx, body_rx) = mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        while let Some(m) = app_in.recv().await {
            match m {
                ToApp::Body { data, more } => {
                    if !data.is_empty() && body_tx.send(Ok(hyper::body::Frame::data(data))).await.is_err() {
                        return;
                    }
                    if !more {
                        return;
                    }
                }
                ToApp::Disconnect => {
                    let _ = body_tx.send(Err(std::io::Error::other("the client went away"))).await;
                    return;
                }
                _ => {}
            }
        }
    });
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(body_rx));
    let mut uri = encode_path(&head.path);
    if !head.query_string.is_empty() {
        uri.push('?');
        uri.push_str(&String::from_utf8_lossy(&head.query_string));
    }
    let mut req = hyper::Request::builder().method(head.method.as_str()).uri(uri);
    let mut has_host = false;
    for (name, value) in &head.headers {
        if hop_by_hop(name) {
            continue;
        }
        has_host |= name.eq_ignore_ascii_case(b"host");
        req = req.header(name.as_slice(), value.as_slice());
    }
    if !has_host {
        req = req.header("host", format!("localhost:{port}"));
    }
    let req = match req.body(body) {
        Ok(r) => r,
        Err(e) => return fail(format!("the request cannot be forwarded: {e}")).await,
    };
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return fail(format!("the container's server did not answer: {e}")).await,
    };
    let headers = resp
        .headers()
        .iter()
        .filter(|(n, _)| !hop_by_hop(n.as_str().as_bytes()))
        .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    if app_out.send(FromApp::Start { status: resp.status().as_u16(), headers, trailers: false }).await.is_err() {
        return;
    }
    let mut body = resp.into_body();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if app_out.send(FromApp::Body { data, more: true }).await.is_err() {
                        return;
                    }
                }
            }
            Some(Err(e)) => return fail(format!("the container's server broke off its response: {e}")).await,
            None => break,
        }
    }
    let _ = app_out.send(FromApp::Body { data: Bytes::new(), more: false }).await;
    let _ = app_out.send(FromApp::Finished).await;
}
