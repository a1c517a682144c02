//! The layer in front of every RPC: authentication, client version pinning, idempotent replay
//! of retried calls, and a clear message for RPCs Ferry does not serve.
//!
//! It works on raw HTTP/2 requests so it covers all 285 methods uniformly; handlers find the
//! caller's [`Principal`] in the request extensions.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_store::{Principal, Store};
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

const SERVICE_PREFIX: &str = "/modal.client.ModalClient/";
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// How long a recorded answer is replayed. The client retries a lost answer within seconds
/// (its backoff tops out at a few seconds for the calls it retries with the same key).
const REPLAY_TTL: Duration = Duration::from_secs(120);
const REPLAY_MAX_BODY: usize = 4 * 1024 * 1024;
/// The recorded answers are bounded in number and bytes too; the oldest go first.
const REPLAY_MAX_ENTRIES: usize = 20_000;
const REPLAY_MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct GatewayLayer {
    state: Arc<GatewayState>,
}

impl GatewayLayer {
    pub fn new(store: Store) -> Self {
        GatewayLayer {
            state: Arc::new(GatewayState { store, tokens: Mutex::default(), replays: Mutex::default() }),
        }
    }
}

impl<S> Layer<S> for GatewayLayer {
    type Service = Gateway<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Gateway { inner, state: self.state.clone() }
    }
}

struct GatewayState {
    store: Store,
    /// (credential id, secret digest) → principal and when it was verified.
    tokens: Mutex<HashMap<(String, String), (Principal, Instant)>>,
    replays: Mutex<Replays>,
}

/// Recorded answers by key, with the keys in the order they were recorded so expired ones are
/// dropped from the front without scanning the map.
#[derive(Default)]
struct Replays {
    by_key: HashMap<String, Replay>,
    order: VecDeque<(Instant, String)>,
    /// Body bytes of the recorded answers.
    bytes: usize,
}

impl Replays {
    /// Drops recorded answers older than the TTL, then the oldest while over the bounds.
    fn evict(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            let expired = now.duration_since(*at) > REPLAY_TTL;
            if !expired && self.order.len() <= REPLAY_MAX_ENTRIES && self.bytes <= REPLAY_MAX_BYTES {
                break;
            }
            let (at, old) = self.order.pop_front().expect("front exists");
            if matches!(self.by_key.get(&old), Some(Replay::Done(_, done_at)) if *done_at == at) {
                if let Some(Replay::Done(stored, _)) = self.by_key.remove(&old) {
                    self.bytes = self.bytes.saturating_sub(stored.body.len());
                }
            }
        }
    }
}

#[derive(Clone)]
struct StoredResponse {
    parts: http::response::Parts,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

enum Replay {
    InFlight(watch::Receiver<Option<Arc<StoredResponse>>>),
    Done(Arc<StoredResponse>, Instant),
}

#[derive(Clone)]
pub struct Gateway<S> {
    inner: S,
    state: Arc<GatewayState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for Gateway<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        let metered_method = req.uri().path().strip_prefix(SERVICE_PREFIX).unwrap_or("other").to_string();
        let started = Instant::now();
        let handled = Box::pin(async move {
            let method = req.uri().path().strip_prefix(SERVICE_PREFIX).unwrap_or(req.uri().path()).to_string();
            if let Some(v) = header(req.headers(), "x-modal-client-version") {
                if v != ferry_proto::CLIENT_VERSION {
                    return Ok(Status::failed_precondition(format!(
                        "this Ferry server speaks the protocol of modal=={pinned}, but the client is modal=={v}; \
                         install the matching client with `pip install modal=={pinned}`",
                        pinned = ferry_proto::CLIENT_VERSION
                    ))
                    .into_http());
                }
            }
            let principal = match state.authenticate(req.headers()).await {
                Ok(p) => p,
                Err(status) => return Ok(status.into_http()),
            };
            let replay_key = header(req.headers(), "x-idempotency-key").map(|k| {
                let who = match &principal {
                    Principal::User { token_id } => token_id.clone(),
                    Principal::Task { task_id, .. } => task_id.clone(),
                };
                format!("{who}/{method}/{k}")
            });
            req.extensions_mut().insert(principal);

            let Some(key) = replay_key else {
                let resp = inner.call(req).await?;
                return Ok(rename_unimplemented(resp, &method));
            };
            // A retried call with a key we have seen gets the first call's answer.
            let tx = match state.claim(&key) {
                Claim::Replay(stored) => return Ok(rebuild(&stored)),
                Claim::Wait(mut rx) => {
                    let _ = rx.wait_for(|v| v.is_some()).await;
                    if let Some(stored) = rx.borrow().clone() {
                        return Ok(rebuild(&stored));
                    }
                    let resp = inner.call(req).await?;
                    return Ok(rename_unimplemented(resp, &method));
                }
                Claim::First(tx) => tx,
            };
            let resp = rename_unimplemented(inner.call(req).await?, &method);
            let (parts, body) = resp.into_parts();
            let collected = match body.collect().await {
                Ok(c) => c,
                Err(e) => {
                    state.release(&key);
                    return Ok(Status::internal(format!("response could not be recorded for replay: {e}")).into_http());
                }
            };
            let trailers = collected.trailers().cloned();
            let stored = Arc::new(StoredResponse { parts, body: collected.to_bytes(), trailers });
            if grpc_ok(&stored) && stored.body.len() <= REPLAY_MAX_BODY {
                state.complete(&key, stored.clone());
                let _ = tx.send(Some(stored.clone()));
            } else {
                // Failed calls are not remembered (a retry must really run again), nor are large
                // answers, which only reads produce.
                state.release(&key);
                drop(tx);
            }
            Ok(rebuild(&stored))
        });
        Box::pin(async move { Ok(metered(handled.await?, metered_method, started)) })
    }
}

/// Counts an answered call in `/metrics` once its status is known: from the headers of a
/// trailers-only answer, else from the trailers at the end of the body (a body dropped before
/// them counts as CANCELLED).
fn metered(resp: Response<Body>, method: String, started: Instant) -> Response<Body> {
    if let Some(code) = grpc_status(resp.headers()) {
        ferry_dashboard::metrics::record_rpc(&method, code, started);
        return resp;
    }
    struct Pending {
        method: String,
        started: Instant,
        done: bool,
    }
    impl Pending {
        fn record(&mut self, code: &str) {
            if !self.done {
                self.done = true;
                ferry_dashboard::metrics::record_rpc(&self.method, code, self.started);
            }
        }
    }
    impl Drop for Pending {
        fn drop(&mut self) {
            self.record("1");
        }
    }
    let mut pending = Pending { method, started, done: false };
    let (parts, body) = resp.into_parts();
    let body = body.map_frame(move |frame| {
        if let Some(trailers) = frame.trailers_ref() {
            pending.record(grpc_status(trailers).unwrap_or("0"));
        }
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

enum Claim {
    First(watch::Sender<Option<Arc<StoredResponse>>>),
    Wait(watch::Receiver<Option<Arc<StoredResponse>>>),
    Replay(Arc<StoredResponse>),
}

impl GatewayState {
    fn claim(&self, key: &str) -> Claim {
        let mut replays = self.replays.lock().unwrap();
        replays.evict(Instant::now());
        match replays.by_key.get(key) {
            Some(Replay::Done(stored, at)) if at.elapsed() < REPLAY_TTL => return Claim::Replay(stored.clone()),
            Some(Replay::InFlight(rx)) => return Claim::Wait(rx.clone()),
            _ => {}
        }
        let (tx, rx) = watch::channel(None);
        replays.by_key.insert(key.to_string(), Replay::InFlight(rx));
        Claim::First(tx)
    }

    fn complete(&self, key: &str, stored: Arc<StoredResponse>) {
        let mut replays = self.replays.lock().unwrap();
        let now = Instant::now();
        replays.bytes += stored.body.len();
        if let Some(Replay::Done(old, _)) = replays.by_key.insert(key.to_string(), Replay::Done(stored, now)) {
            replays.bytes = replays.bytes.saturating_sub(old.body.len());
        }
        replays.order.push_back((now, key.to_string()));
        replays.evict(now);
    }

    fn release(&self, key: &str) {
        self.replays.lock().unwrap().by_key.remove(key);
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Status> {
        let (id, secret, is_task) = if let (Some(id), Some(secret)) =
            (header(headers, "x-modal-token-id"), header(headers, "x-modal-token-secret"))
        {
            (id, secret, false)
        } else if let (Some(id), Some(secret)) = (header(headers, "x-modal-task-id"), header(headers, "x-modal-task-secret")) {
            (id, secret, true)
        } else {
            return Err(Status::unauthenticated(
                "no credentials: this Ferry server needs a token. Use the `ferry` profile \
                 (MODAL_PROFILE=ferry) or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET from DATA_DIR/client.env",
            ));
        };
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()));
        let cache_key = (id.to_string(), digest);
        if let Some((p, at)) = self.tokens.lock().unwrap().get(&cache_key) {
            if at.elapsed() < TOKEN_CACHE_TTL {
                return Ok(p.clone());
            }
        }
        let verified = if is_task {
            self.store.verify_task(id, secret).await
        } else {
            self.store
                .verify_token(id, secret)
                .await
                .map(|ok| ok.then(|| Principal::User { token_id: id.to_string() }))
        };
        match verified {
            Ok(Some(p)) => {
                self.tokens.lock().unwrap().insert(cache_key, (p.clone(), Instant::now()));
                Ok(p)
            }
            Ok(None) if is_task => Err(Status::unauthenticated(format!("task credential for {id} is not valid"))),
            Ok(None) => Err(Status::unauthenticated(format!(
                "token '{id}' is not valid on this Ferry server (unknown, revoked, or a wrong secret); \
                 create one with `ferry token create`"
            ))),
            Err(e) => Err(Status::unavailable(format!("cannot verify credentials right now: {e}"))),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty())
}

fn grpc_status(headers: &HeaderMap) -> Option<&str> {
    header(headers, "grpc-status")
}

fn grpc_ok(r: &StoredResponse) -> bool {
    let status = r.trailers.as_ref().and_then(grpc_status).or_else(|| grpc_status(&r.parts.headers));
    r.parts.status == http::StatusCode::OK && status == Some("0")
}

/// tonic answers methods without a handler with a fixed text; name the RPC instead.
fn rename_unimplemented(resp: Response<Body>, method: &str) -> Response<Body> {
    let stub = grpc_status(resp.headers()) == Some("12")
        && header(resp.headers(), "grpc-message").is_some_and(|m| m.replace("%20", " ") == "Not yet implemented");
    if stub {
        Status::unimplemented(format!("Ferry does not implement {method} yet")).into_http()
    } else {
        resp
    }
}

fn rebuild(stored: &StoredResponse) -> Response<Body> {
    let mut frames: Vec<Result<http_body::Frame<Bytes>, Status>> = Vec::new();
    if !stored.body.is_empty() {
        frames.push(Ok(http_body::Frame::data(stored.body.clone())));
    }
    if let Some(t) = &stored.trailers {
        frames.push(Ok(http_body::Frame::trailers(t.clone())));
    }
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    Response::from_parts(stored.parts.clone(), Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(bytes: usize) -> Arc<StoredResponse> {
        let (parts, _) = http::Response::new(()).into_parts();
        Arc::new(StoredResponse { parts, body: Bytes::from(vec![0u8; bytes]), trailers: None })
    }

    #[test]
    fn replays_are_bounded_in_number_and_bytes() {
        let mut r = Replays::default();
        let now = Instant::now();
        for i in 0..REPLAY_MAX_ENTRIES + 10 {
            let key = format!("k{i}");
            r.bytes += 10;
            r.by_key.insert(key.clone(), Replay::Done(stored(10), now));
            r.order.push_back((now, key));
            r.evict(now);
        }
        assert_eq!(r.by_key.len(), REPLAY_MAX_ENTRIES);
        assert!(!r.by_key.contains_key("k0") && r.by_key.contains_key(&format!("k{}", REPLAY_MAX_ENTRIES + 9)));
        // One large answer pushes older ones out by bytes.
        r.bytes += REPLAY_MAX_BYTES;
        r.by_key.insert("big".into(), Replay::Done(stored(REPLAY_MAX_BYTES), now));
        r.order.push_back((now, "big".into()));
        r.evict(now);
        assert!(r.bytes <= REPLAY_MAX_BYTES);
        // Everything goes once the TTL has passed.
        r.evict(now + REPLAY_TTL + Duration::from_secs(1));
        assert!(r.by_key.is_empty() && r.bytes == 0);
    }
}
