//! The control plane's endpoints for workers (see [`crate::wire`]), served by `ferry serve` on
//! its fleet port. Each request is checked against the store's worker tokens; client tokens
//! and task credentials are never accepted here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::{Assignment, ExitMessage, Kill, LogBatch, Poll, PollAnswer, Register, Registered, POLL_WAIT};
use crate::Fleet;

#[derive(Clone)]
struct Ctx {
    fleet: Fleet,
    /// task id → (worker, app, function), for log lines.
    tasks: Arc<Mutex<HashMap<String, (String, String, String)>>>,
}

/// The routes under `/fleet/v1/`.
pub fn router(fleet: Fleet) -> Router {
    let ctx = Ctx { fleet, tasks: Default::default() };
    Router::new()
        .route("/fleet/v1/register", post(register))
        .route("/fleet/v1/poll", post(poll))
        .route("/fleet/v1/logs", post(logs))
        .route("/fleet/v1/exit", post(exit))
        .with_state(ctx)
}

/// Serves the routes on `listener` until the task is aborted; over TLS with `tls` (the
/// certificate and key PEM the API serves with), so workers verify the control plane with the
/// same authority (`ferry worker --ca-cert`).
pub fn spawn(fleet: Fleet, listener: tokio::net::TcpListener, tls: Option<(&[u8], &[u8])>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = router(fleet);
    let Some((cert, key)) = tls else {
        return Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the worker endpoint stopped: {e}");
            }
        }));
    };
    let acceptor = tls_acceptor(cert, key)?;
    Ok(tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!("the worker endpoint cannot accept a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A peer that never finishes its handshake holds nothing but its own task.
                let Ok(Ok(stream)) = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| anyhow::anyhow!("the TLS certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| anyhow::anyhow!("the TLS key: {e}"))?;
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn authorized<T: DeserializeOwned>(ctx: &Ctx, headers: &HeaderMap, body: &Bytes) -> Result<T, Response> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|v| v.split_once(':'));
    let Some((id, secret)) = token else {
        return Err(error(StatusCode::UNAUTHORIZED, "a worker token is required (Authorization: Bearer ID:SECRET); make one with `ferry token create --worker`"));
    };
    match ctx.fleet.store.verify_worker_token(id, secret).await {
        Ok(true) => {}
        Ok(false) => return Err(error(StatusCode::UNAUTHORIZED, format!("worker token '{id}' is unknown, revoked or its secret is wrong"))),
        Err(e) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad request: {e}")))
}

async fn register(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let req: Register = match authorized(&ctx, &headers, &body).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    if req.name.is_empty() || req.cpu <= 0.0 || req.memory_mib <= 0 {
        return error(StatusCode::BAD_REQUEST, "a worker needs a name, CPUs and memory");
    }
    let new = ferry_store::NewWorker {
        name: req.name.clone(),
        address: req.address.clone(),
        labels: serde_json::to_string(&req.labels).unwrap_or_else(|_| "{}".into()),
        cpu: req.cpu,
        memory_mib: req.memory_mib,
        gpus: req.gpus,
        disk_mib: req.disk_mib,
        gpu_types: serde_json::to_string(&req.gpu_types).unwrap_or_else(|_| "[]".into()),
    };
    match ctx.fleet.store.register_worker(&new).await {
        Ok(worker_id) => {
            tracing::info!(worker_id, name = req.name, address = req.address, cpu = req.cpu, memory_mib = req.memory_mib, "worker registered");
            json(&Registered { worker_id, heartbeat_timeout_secs: ctx.fleet.config.heartbeat_timeout.as_secs_f64() })
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn poll(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let req: Poll = match authorized(&ctx, &headers, &body).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let store = &ctx.fleet.store;
    let state = match store.worker_heartbeat(&req.worker_id).await {
        Ok(s) => s,
        Err(ferry_store::StoreError::NotFound(m)) => return error(StatusCode::NOT_FOUND, m),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let mut answer = PollAnswer { state: state.clone(), ..Default::default() };
    if state != "ready" && state != "draining" {
        answer.stale = req.running;
        return json(&answer);
    }
    let deadline = tokio::time::Instant::now() + POLL_WAIT;
    let work = store.worker_work(&req.worker_id);
    loop {
        // Armed before the look, so a placement between the look and the wait is not missed.
        let placed = work.notified();
        tokio::pin!(placed);
        placed.as_mut().enable();
        let taken = store.take_worker_assignments(&req.worker_id).await;
        let kills = store.take_worker_kills(&req.worker_id).await;
        match (taken, kills) {
            (Ok(taken), Ok(kills)) => {
                for (task_id, bytes) in taken {
                    match serde_json::from_slice::<Assignment>(&bytes) {
                        Ok(a) => answer.assignments.push(a),
                        Err(e) => tracing::warn!(task_id, "unreadable assignment: {e}"),
                    }
                }
                answer.kills.extend(kills.into_iter().map(|(task_id, signal)| Kill { task_id, signal }));
            }
            (Err(e), _) | (_, Err(e)) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
        if !answer.assignments.is_empty() || !answer.kills.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        // A placement wakes the poll at once (on PostgreSQL from any replica); the look is
        // repeated at least every half second in case a notification was lost.
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now()).min(std::time::Duration::from_millis(500));
        let _ = tokio::time::timeout(wait, placed).await;
    }
    // What the worker runs that is no longer its own (declared lost meanwhile, or unknown).
    match store.worker_tasks_running(&req.worker_id).await {
        Ok(own) => answer.stale = req.running.into_iter().filter(|t| !own.contains(t)).collect(),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
    json(&answer)
}

async fn logs(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let req: LogBatch = match authorized(&ctx, &headers, &body).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut out: HashMap<String, Vec<ferry_store::NewLog>> = HashMap::new();
    for line in req.lines {
        let known = ctx.tasks.lock().unwrap().get(&line.task_id).cloned();
        let (worker, app, function) = match known {
            Some(k) => k,
            None => match ctx.fleet.store.worker_task(&line.task_id).await {
                Ok(Some(t)) => {
                    let k = (t.worker_id, t.app_id, t.function_id);
                    let mut tasks = ctx.tasks.lock().unwrap();
                    if tasks.len() > 10_000 {
                        tasks.clear();
                    }
                    tasks.insert(line.task_id.clone(), k.clone());
                    k
                }
                _ => continue,
            },
        };
        if worker != req.worker_id {
            continue;
        }
        let (input_id, function_call_id) = ctx.fleet.log_context(&line.task_id).unwrap_or_default();
        out.entry(app).or_default().push(ferry_store::NewLog {
            data: format!("{}\n", line.text),
            task_id: line.task_id,
            function_id: function,
            function_call_id,
            input_id,
            fd: line.fd,
            timestamp: None,
        });
    }
    for (app, lines) in out {
        let _ = ctx.fleet.store.append_logs(&app, &lines).await;
    }
    json(&serde_json::json!({}))
}

async fn exit(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let req: ExitMessage = match authorized(&ctx, &headers, &body).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let report = serde_json::to_string(&req.exit).unwrap_or_default();
    match ctx.fleet.store.finish_worker_task(&req.worker_id, &req.task_id, &report).await {
        Ok(_) => {
            ctx.tasks.lock().unwrap().remove(&req.task_id);
            json(&serde_json::json!({}))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
