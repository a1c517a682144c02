//! The HTTP ingress for web endpoints.
//!
//! Every request is routed to an endpoint by its URL label (from the `Host` header or the
//! first path segment, see [`route`]), checked against the endpoint's proxy auth, and handed to
//! a [`Backend`] as a [`RequestHead`] plus a stream of body chunks ([`ToApp`]); the app's answer
//! comes back as [`FromApp`] events and is streamed to the caller as it arrives. Bodies are
//! never buffered whole in either direction: a bounded channel carries at most a few chunks.
//!
//! A request whose response has not started after [`GatewayConfig::redirect_after`] (150 s by
//! default) gets a `303 See Other` to the same URL with `__modal_function_call_id=<call>`; the
//! caller's follow-up request picks up the same call and waits again.
//!
//! The gateway knows nothing of the Modal protocol: the API layer implements [`Backend`].
//!
//! ```no_run
//! # async fn f(backend: std::sync::Arc<dyn ferry_gateway::Backend>) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! ferry_gateway::serve(listener, backend, ferry_gateway::GatewayConfig::default(), std::future::pending()).await
//! # }
//! ```

mod http_call;
pub mod route;
mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use axum::serve::ListenerExt;
use bytes::Bytes;
use tokio::sync::mpsc;

pub use route::{Route, RouteStyle};

/// The query parameter of Modal's 303 redirect that names the call to pick up.
pub const CALL_ID_PARAM: &str = "__modal_function_call_id";
/// Request headers that carry a proxy token; they are checked here and never reach the app.
pub const PROXY_KEY_HEADER: &str = "modal-key";
pub const PROXY_SECRET_HEADER: &str = "modal-secret";

/// Settings of the gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Host suffix of host-based URLs (`<label>.<suffix>`), without scheme or port. Hosts
    /// `<label>.localhost` are always recognised.
    pub host_suffix: Option<String>,
    /// How long a request waits for its response to start before it is redirected (303).
    pub redirect_after: Duration,
    /// How long a redirected call waits to be picked up before it is dropped.
    pub parked_ttl: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig { host_suffix: None, redirect_after: Duration::from_secs(150), parked_ttl: Duration::from_secs(600) }
    }
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Http,
    /// A WebSocket upgrade, with the subprotocols the client offers.
    WebSocket { subprotocols: Vec<String> },
}

/// The head of a request as the app sees it (ASGI's connection scope, in plain types).
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub kind: RequestKind,
    pub method: String,
    /// "1.0", "1.1" or "2".
    pub http_version: String,
    /// "http" or "https" (as the client reached the gateway or a proxy in front of it).
    pub scheme: String,
    /// The percent-decoded path inside the endpoint, starting with `/`.
    pub path: String,
    /// The prefix the endpoint is mounted at for path-based URLs (`/<label>`), else empty.
    pub root_path: String,
    /// The raw query string, without `?`.
    pub query_string: Vec<u8>,
    /// Header names lowercased, in arrival order; proxy-auth headers removed.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub client: Option<SocketAddr>,
}

/// An endpoint a label resolves to.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub label: String,
    /// The backend's own name for what answers (compared when a redirected call is picked up).
    pub target: String,
    pub requires_proxy_auth: bool,
}

/// A WebSocket message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsMessage {
    Text(String),
    Binary(Bytes),
}

/// What the gateway sends the app during a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToApp {
    /// A piece of the request body; `more: false` ends it.
    Body { data: Bytes, more: bool },
    /// The client went away.
    Disconnect,
    /// The WebSocket client asks to connect (the first message of a WebSocket call).
    WsConnect,
    WsReceive(WsMessage),
    WsDisconnect { code: u16 },
}

/// What the app answers during a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromApp {
    Start { status: u16, headers: Vec<(Vec<u8>, Vec<u8>)>, trailers: bool },
    Body { data: Bytes, more: bool },
    Trailers { headers: Vec<(Vec<u8>, Vec<u8>)>, more: bool },
    WsAccept { subprotocol: Option<String>, headers: Vec<(Vec<u8>, Vec<u8>)> },
    WsSend(WsMessage),
    WsClose { code: u16, reason: String },
    /// The call ended normally.
    Finished,
    /// The call failed; the message is for the gateway's log, not for the caller.
    Failed(String),
}

/// One running call: the app's input and output channels.
pub struct Call {
    pub id: String,
    pub to_app: mpsc::Sender<ToApp>,
    pub from_app: mpsc::Receiver<FromApp>,
}

/// An error the backend answers instead of starting a call.
#[derive(Clone, Debug)]
pub struct BackendError {
    /// The HTTP status the caller gets.
    pub status: u16,
    pub message: String,
}

impl BackendError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        BackendError { status, message: message.into() }
    }
}

/// What answers web requests: the API layer implements it over its functions and containers.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The endpoint a label names, if one is live.
    async fn endpoint(&self, label: &str) -> Result<Option<Endpoint>, BackendError>;
    /// Whether a `Modal-Key`/`Modal-Secret` pair is an active proxy token.
    async fn verify_proxy_token(&self, key: &str, secret: &str) -> Result<bool, BackendError>;
    /// Starts a call of the endpoint; the app reads `to_app` and answers on `from_app`.
    async fn start(&self, endpoint: &Endpoint, head: RequestHead) -> Result<Call, BackendError>;
}

/// A call whose caller was redirected, waiting for the follow-up request.
struct Parked {
    call: Call,
    target: String,
    since: Instant,
}

pub(crate) struct Gateway {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: GatewayConfig,
    parked: Mutex<HashMap<String, Parked>>,
}

impl Gateway {
    pub(crate) fn park(&self, call: Call, target: String) {
        let mut parked = self.parked.lock().unwrap();
        let ttl = self.config.parked_ttl;
        parked.retain(|_, p| p.since.elapsed() < ttl);
        parked.insert(call.id.clone(), Parked { call, target, since: Instant::now() });
    }

    pub(crate) fn unpark(&self, call_id: &str, target: &str) -> Option<Call> {
        let mut parked = self.parked.lock().unwrap();
        match parked.get(call_id) {
            Some(p) if p.target == target && p.since.elapsed() < self.config.parked_ttl => parked.remove(call_id).map(|p| p.call),
            _ => None,
        }
    }
}

/// Serves web endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Arc<dyn Backend>,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let gateway = Arc::new(Gateway { backend, config, parked: Mutex::new(HashMap::new()) });
    let app = axum::Router::new().fallback(handle).with_state(gateway);
    // Without TCP_NODELAY a small response waits for the client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

async fn handle(State(gw): State<Arc<Gateway>>, ConnectInfo(client): ConnectInfo<SocketAddr>, req: Request) -> Response {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let Some(route) = route::route(host.as_deref(), req.uri().path(), gw.config.host_suffix.as_deref()) else {
        // A root-relative link, form or fetch on a page served under a path-based URL (an
        // app written for its own host name): back under the page's endpoint.
        let referer = req.headers().get(http::header::REFERER).and_then(|v| v.to_str().ok());
        if let Some(location) = referer.and_then(|r| route::referred_location(r, host.as_deref(), req.uri())) {
            let mut response = text(307, &format!("This path belongs to the web endpoint of the page that linked it: {location}\n"));
            if let Ok(value) = http::HeaderValue::from_str(&location) {
                response.headers_mut().insert(http::header::LOCATION, value);
            }
            return response;
        }
        return text(404, "No web endpoint here: a web endpoint's URL is http://HOST:PORT/<label>/ or http://<label>.<suffix>/\n");
    };
    let endpoint = match gw.backend.endpoint(&route.label).await {
        Ok(Some(e)) => e,
        Ok(None) => return text(404, &format!("No live web endpoint is named '{}' (is its app deployed or served?)\n", route.label)),
        Err(e) => return text(e.status, &format!("{}\n", e.message)),
    };
    if endpoint.requires_proxy_auth {
        if let Err(response) = check_proxy_auth(&gw, req.headers()).await {
            return response;
        }
    }
    if is_websocket(&req) {
        return websocket::handle(gw, endpoint, route, client, req).await;
    }
    http_call::handle(gw, endpoint, route, client, req).await
}

/// `Modal-Key`/`Modal-Secret` must name an active proxy token.
async fn check_proxy_auth(gw: &Gateway, headers: &http::HeaderMap) -> Result<(), Response> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    let (Some(key), Some(secret)) = (get(PROXY_KEY_HEADER), get(PROXY_SECRET_HEADER)) else {
        return Err(text(401, "This endpoint requires proxy auth: send the Modal-Key and Modal-Secret headers of a proxy token (`ferry proxy-token create`)\n"));
    };
    match gw.backend.verify_proxy_token(key, secret).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(text(401, "Invalid proxy token: Modal-Key/Modal-Secret do not name an active proxy token\n")),
        Err(e) => Err(text(e.status, &format!("{}\n", e.message))),
    }
}

fn is_websocket(req: &Request) -> bool {
    let has = |name: http::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    req.method() == http::Method::GET && has(http::header::UPGRADE, "websocket") && has(http::header::CONNECTION, "upgrade")
}

/// The request head the app sees, from the incoming request and its route.
pub(crate) fn request_head(req: &Request, route: &Route, client: SocketAddr, kind: RequestKind) -> RequestHead {
    let mut headers = Vec::with_capacity(req.headers().len() + 1);
    if req.headers().get(http::header::HOST).is_none() {
        if let Some(a) = req.uri().authority() {
            headers.push((b"host".to_vec(), a.as_str().as_bytes().to_vec()));
        }
    }
    for (name, value) in req.headers() {
        let n = name.as_str();
        if n == PROXY_KEY_HEADER || n == PROXY_SECRET_HEADER {
            continue;
        }
        headers.push((n.as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
    let query = req.uri().query().unwrap_or("");
    let query_string = strip_call_param(query).into_bytes();
    let http_version = match req.version() {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let forwarded_https = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let scheme = match (&kind, forwarded_https) {
        (RequestKind::Http, false) => "http",
        (RequestKind::Http, true) => "https",
        (RequestKind::WebSocket { .. }, false) => "ws",
        (RequestKind::WebSocket { .. }, true) => "wss",
    };
    RequestHead {
        kind,
        method: req.method().as_str().to_string(),
        http_version: http_version.to_string(),
        scheme: scheme.to_string(),
        path: percent_encoding::percent_decode_str(&route.path).decode_utf8_lossy().into_owned(),
        root_path: route.root_path.clone(),
        query_string,
        headers,
        client: Some(client),
    }
}

/// The query string without the redirect's call parameter.
pub(crate) fn strip_call_param(query: &str) -> String {
    query
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(CALL_ID_PARAM))
        .collect::<Vec<_>>()
        .join("&")
}

/// The call a follow-up request names with `__modal_function_call_id`.
pub(crate) fn call_param(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == CALL_ID_PARAM && !v.is_empty()).then(|| v.to_string())
    })
}

pub(crate) fn text(status: u16, body: &str) -> Response {
    let mut r = Response::new(axum::body::Body::from(body.to_string()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Headers an app sent, minus those that describe one hop of the connection (the gateway
/// frames the body itself).
pub(crate) fn response_headers(headers: &[(Vec<u8>, Vec<u8>)], target: &mut http::HeaderMap) {
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value)) else { continue };
        if matches!(
            name.as_str(),
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te" | "trailer"
        ) {
            continue;
        }
        target.append(name, value);
    }
}

#[cfg(test)]
mod tests;
