//! The layer in front of every RPC: authentication, token scopes, per-token rate limits,
//! request-size limits, client version pinning, idempotent replay of retried calls, and a
//! clear message for RPCs Ferry does not serve.
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
use ferry_store::{Principal, Store, TokenScope};
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
/// RPCs whose retry does exactly what replaying the first answer would, so their answers are
/// not recorded: an output is accepted once from the task holding its input, and a repeated
/// one is dropped either way.
const NOT_REPLAYED: &[&str] = &["FunctionPutOutputs"];
/// The recorded answers are bounded in number and bytes too; the oldest go first.
const REPLAY_MAX_ENTRIES: usize = 20_000;
const REPLAY_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Limits on what one caller may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Sustained requests per second per token (or task credential); 0 for no limit.
    pub rate_per_sec: f64,
    /// Requests a token may make at once above the sustained rate.
    pub burst: f64,
    /// The largest request message accepted, in bytes.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { rate_per_sec: 5000.0, burst: 10000.0, max_request_bytes: crate::MAX_MESSAGE_BYTES }
    }
}

#[derive(Clone)]
pub struct GatewayLayer {
    state: Arc<GatewayState>,
}

impl GatewayLayer {
    pub fn new(store: Store) -> Self {
        Self::with_limits(store, Limits::default())
    }

    pub fn with_limits(store: Store, limits: Limits) -> Self {
        GatewayLayer {
            state: Arc::new(GatewayState {
                store,
                tokens: Mutex::default(),
                replays: Mutex::default(),
                limits,
                buckets: Mutex::default(),
            }),
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
    /// (credential id, secret digest) → principal, its token's scope, and when it was verified.
    tokens: Mutex<HashMap<(String, String), (Principal, TokenScope, Instant)>>,
    replays: Mutex<Replays>,
    limits: Limits,
    /// Rate-limit buckets by caller.
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// A token bucket: `level` requests may be made now; it refills at the sustained rate up to
/// the burst size.
struct Bucket {
    level: f64,
    at: Instant,
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
                    self.bytes = self.bytes.saturating_sub(stored.footprint(&old));
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

impl StoredResponse {
    /// Memory a recorded answer holds, about: its body, its headers and trailers, its key and
    /// the bookkeeping around them. The replay cache's byte bound counts this.
    fn footprint(&self, key: &str) -> usize {
        let headers = |h: &HeaderMap| h.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum::<usize>();
        self.body.len() + headers(&self.parts.headers) + self.trailers.as_ref().map_or(0, headers) + 2 * key.len() + 256
    }
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
            let (principal, scope) = match state.authenticate(req.headers(), &method).await {
                Ok(p) => p,
                Err(status) => return Ok(status.into_http()),
            };
            if let Err(status) = state.take_rate(&principal) {
                return Ok(status.into_http());
            }
            if !scope.is_unrestricted() {
                if let Principal::User { token_id } = &principal {
                    req = match state.check_scope(req, &method, token_id, &scope).await {
                        Ok(req) => req,
                        Err(status) => {
                            tracing::warn!(token_id, rpc = %method, scope = %scope.describe(), "refused a call outside the token's scope");
                            return Ok(status.into_http());
                        }
                    };
                }
            }
            let replay_key = header(req.headers(), "x-idempotency-key").filter(|_| !NOT_REPLAYED.contains(&method.as_str())).map(|k| {
                let who = match &principal {
                    Principal::User { token_id } => token_id.clone(),
                    Principal::Task { task_id, .. } => task_id.clone(),
                };
                format!("{who}/{method}/{k}")
            });
            req.extensions_mut().insert(principal);

            let limit = state.limits.max_request_bytes;
            let Some(key) = replay_key else {
                let resp = inner.call(req).await?;
                return Ok(explain_size_limit(rename_unimplemented(resp, &method), limit, &method));
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
                    return Ok(explain_size_limit(rename_unimplemented(resp, &method), limit, &method));
                }
                Claim::First(tx) => tx,
            };
            let resp = explain_size_limit(rename_unimplemented(inner.call(req).await?, &method), limit, &method);
            let (parts, body) = resp.into_parts();
            let collected = match body.collect().await {
                Ok(c) => c,
                Err(e) => {
                    state.release(&key);
                    return Ok(Status::internal(format!("response could not be recorded for replay: {e}")).into_http());
                }
            };
            let trailers = collected.trailers().cloned();
            // A copy of exactly the body's size: the encoder's chunk shares a buffer of several
            // KiB, which a recorded answer would otherwise keep alive for the whole TTL.
            let body = Bytes::copy_from_slice(&collected.to_bytes());
            let stored = Arc::new(StoredResponse { parts, body, trailers });
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
        replays.bytes += stored.footprint(key);
        if let Some(Replay::Done(old, _)) = replays.by_key.insert(key.to_string(), Replay::Done(stored, now)) {
            replays.bytes = replays.bytes.saturating_sub(old.footprint(key));
        }
        replays.order.push_back((now, key.to_string()));
        replays.evict(now);
    }

    fn release(&self, key: &str) {
        self.replays.lock().unwrap().by_key.remove(key);
    }

    async fn authenticate(&self, headers: &HeaderMap, method: &str) -> Result<(Principal, TokenScope), Status> {
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
        if let Some((p, scope, at)) = self.tokens.lock().unwrap().get(&cache_key) {
            if at.elapsed() < TOKEN_CACHE_TTL {
                return Ok((p.clone(), scope.clone()));
            }
        }
        let verified = if is_task {
            self.store.verify_task(id, secret).await.map(|p| p.map(|p| (p, TokenScope::default())))
        } else {
            self.store
                .verify_token_scope(id, secret)
                .await
                .map(|scope| scope.map(|scope| (Principal::User { token_id: id.to_string() }, scope)))
        };
        match verified {
            Ok(Some((p, scope))) => {
                if !is_task {
                    // Logged on use (at most once per cache period): the id, never the secret.
                    tracing::info!(token_id = id, rpc = method, scope = %scope.describe(), "token used");
                    let (store, id) = (self.store.clone(), id.to_string());
                    tokio::spawn(async move {
                        let _ = store.mark_token_used(&id).await;
                    });
                }
                self.tokens.lock().unwrap().insert(cache_key, (p.clone(), scope.clone(), Instant::now()));
                Ok((p, scope))
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

impl GatewayState {
    /// Takes one request from the caller's bucket, or answers RESOURCE_EXHAUSTED with the time
    /// until the next request is allowed. The answer carries Modal's retry policy, so the client
    /// waits that long before it retries (instead of retrying at once, or failing the call).
    fn take_rate(&self, principal: &Principal) -> Result<(), Status> {
        let Limits { rate_per_sec: rate, burst, .. } = self.limits;
        if rate <= 0.0 {
            return Ok(());
        }
        // Token ids and task ids have distinct prefixes, so one map holds both.
        let key = match principal {
            Principal::User { token_id } => token_id.as_str(),
            Principal::Task { task_id, .. } => task_id.as_str(),
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > 10_000 {
            // Callers idle long enough to have a full bucket again need no entry.
            let full_after = Duration::from_secs_f64(burst / rate);
            buckets.retain(|_, b| now.duration_since(b.at) < full_after);
        }
        if !buckets.contains_key(key) {
            buckets.insert(key.to_string(), Bucket { level: burst.max(1.0), at: now });
        }
        let bucket = buckets.get_mut(key).expect("inserted above");
        bucket.level = (bucket.level + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst.max(1.0));
        bucket.at = now;
        if bucket.level >= 1.0 {
            bucket.level -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.level) / rate;
        drop(buckets);
        let who = match principal {
            Principal::User { token_id } => format!("token {token_id}"),
            Principal::Task { task_id, .. } => format!("task {task_id}"),
        };
        tracing::debug!(%who, wait, "rate limit reached");
        Err(rate_limited(
            format!(
                "rate limit reached: {who} may make {rate} requests per second (bursts of {burst}); \
                 retry in {wait:.2} s, or ask the operator to raise `ferry serve --rate-limit`"
            ),
            wait,
        ))
    }

    /// Checks a call of a scoped token against its scope, reading the request where the scope
    /// depends on what it names; returns the request unchanged (its body re-assembled).
    async fn check_scope(&self, req: Request<Body>, method: &str, token_id: &str, scope: &TokenScope) -> Result<Request<Body>, Status> {
        let fields = crate::access::CATALOG.methods.get(method);
        let reads_only = crate::access::READ_ONLY_RPCS.contains(&method);
        let needs_body = scope.environment.is_some() || (scope.read_only && !reads_only);
        let (req, scanned) = if needs_body && fields.is_some() {
            let (parts, body) = req.into_parts();
            let limit = self.limits.max_request_bytes;
            let bytes = match http_body_util::Limited::new(body, limit + 5).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large(None, limit)),
                Err(e) => return Err(Status::invalid_argument(format!("cannot read the request: {e}"))),
            };
            let scanned = match bytes.get(..5) {
                Some([0, a, b, c, d]) if bytes.len() == 5 + u32::from_be_bytes([*a, *b, *c, *d]) as usize => {
                    crate::access::scan(&bytes[5..])
                }
                _ => None,
            };
            let Some(scanned) = scanned else {
                return Err(Status::invalid_argument(format!(
                    "{method}: a token limited to {} needs one uncompressed, well-formed request message",
                    scope.describe()
                )));
            };
            (Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes))), Some(scanned))
        } else {
            (req, None)
        };
        if scope.read_only && !crate::access::allowed_read_only(method, scanned.as_ref()) {
            return Err(Status::permission_denied(format!(
                "token {token_id} is read-only and {method} changes state; use a token without --read-only for this"
            )));
        }
        if let Some(allowed) = &scope.environment {
            let denied = |what: String| {
                Status::permission_denied(format!(
                    "token {token_id} is limited to environment '{allowed}', and {what}; \
                     select it with MODAL_ENVIRONMENT={allowed} (or `-e {allowed}`), or use another token"
                ))
            };
            let workspace_wide = ["Environment", "Workspace", "Token", "ServiceUser", "WebhookToken", "UserGroup", "Domain", "Proxy", "AuditLog"]
                .iter()
                .any(|p| method.starts_with(p));
            if workspace_wide && !reads_only && method != "EnvironmentGetOrCreate" {
                return Err(denied(format!("{method} acts on the whole workspace")));
            }
            let (Some(fields), Some(scanned)) = (fields, scanned.as_ref()) else {
                return Err(Status::permission_denied(format!("token {token_id} is limited to environment '{allowed}' and cannot call {method}")));
            };
            if let Some(field) = fields.environment {
                let named = scanned.strings.get(&field).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                let named = if named.is_empty() {
                    self.store.default_environment().await.map_err(|e| Status::unavailable(format!("cannot check the token's scope: {e}")))?.name
                } else {
                    named
                };
                if &named != allowed {
                    return Err(denied(format!("this request is for environment '{named}'")));
                }
            }
            for (field, name) in &fields.ids {
                let Some(id) = scanned.strings.get(field).filter(|v| !v.is_empty()) else { continue };
                let id = String::from_utf8_lossy(id);
                match self.store.environment_of(&id).await {
                    Ok(Some(env)) if &env != allowed => return Err(denied(format!("{name} {id} belongs to environment '{env}'"))),
                    Ok(_) => {}
                    Err(e) => return Err(Status::unavailable(format!("cannot check the token's scope: {e}"))),
                }
            }
        }
        Ok(req)
    }
}

/// RESOURCE_EXHAUSTED with Modal's retry policy: the client waits `wait` seconds, then retries.
fn rate_limited(message: String, wait: f64) -> Status {
    use prost::Message;
    let wait = if wait <= 0.1 { 0.0 } else { wait.ceil() as f32 };
    let policy = ferry_proto::api::RpcRetryPolicy { retry_after_secs: wait };
    let details = ferry_proto::api::RpcStatus {
        code: tonic::Code::ResourceExhausted as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.modal.com/modal.client.RPCRetryPolicy".into(),
            value: policy.encode_to_vec(),
        }],
    };
    Status::with_details(tonic::Code::ResourceExhausted, message, details.encode_to_vec().into())
}

fn too_large(found: Option<&str>, limit: usize) -> Status {
    let found = found.map(|f| format!(" of {f} bytes")).unwrap_or_default();
    Status::resource_exhausted(format!(
        "request{found} is larger than this server accepts ({limit} bytes); send large values as files \
         (Volumes) or in smaller parts, or ask the operator to raise `ferry serve --max-request-mib`"
    ))
}

/// tonic refuses a too-large message with OUT_OF_RANGE and a text about decoding; answer
/// RESOURCE_EXHAUSTED, as gRPC does for messages over the limit, with a message a user can act
/// on. A request that does not decode gets INTERNAL from tonic, which the client retries as a
/// server fault; it is the caller's: INVALID_ARGUMENT.
fn explain_size_limit(resp: Response<Body>, limit: usize, method: &str) -> Response<Body> {
    let code = grpc_status(resp.headers());
    if code != Some("11") && code != Some("13") {
        return resp;
    }
    let Some(message) = header(resp.headers(), "grpc-message").map(percent_decode) else { return resp };
    if code == Some("11") && message.contains("decoded message length too large") {
        let found = message.split("found ").nth(1).and_then(|rest| rest.split(' ').next()).map(str::to_string);
        return too_large(found.as_deref(), limit).into_http();
    }
    let undecodable = ["failed to decode Protobuf message", "protocol error: received message with", "Unexpected EOF decoding stream", "Missing request message", "compress"];
    if code == Some("13") && undecodable.iter().any(|m| message.contains(m)) {
        let expected = crate::access::CATALOG.input_types.get(method).map(String::as_str).unwrap_or("request");
        return Status::invalid_argument(format!("{method}: the request is not a valid {expected} message ({message})")).into_http();
    }
    resp
}

/// Decodes a `grpc-message` header (percent-encoded UTF-8).
fn percent_decode(m: &str) -> String {
    percent_encoding::percent_decode_str(m).decode_utf8_lossy().into_owned()
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
            let answer = stored(10);
            r.bytes += answer.footprint(&key);
            r.by_key.insert(key.clone(), Replay::Done(answer, now));
            r.order.push_back((now, key));
            r.evict(now);
        }
        assert_eq!(r.by_key.len(), REPLAY_MAX_ENTRIES);
        assert!(!r.by_key.contains_key("k0") && r.by_key.contains_key(&format!("k{}", REPLAY_MAX_ENTRIES + 9)));
        // One large answer pushes older ones out by bytes.
        let big = stored(REPLAY_MAX_BYTES);
        r.bytes += big.footprint("big");
        r.by_key.insert("big".into(), Replay::Done(big, now));
        r.order.push_back((now, "big".into()));
        r.evict(now);
        assert!(r.bytes <= REPLAY_MAX_BYTES);
        // Everything goes once the TTL has passed.
        r.evict(now + REPLAY_TTL + Duration::from_secs(1));
        assert!(r.by_key.is_empty() && r.bytes == 0);
    }
}
