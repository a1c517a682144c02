//! Web endpoints: the adapter between the HTTP gateway (`ferry-gateway`) and function calls.
//!
//! A request becomes a function input whose argument is the ASGI connection scope (pickled
//! `((scope,), {})`, as the container's input loop expects); its body reaches the app as ASGI
//! `http.request` messages over `FunctionCallGetDataIn`, and the app's `http.response.*`
//! messages come back through `FunctionCallPutDataOut`. Both directions go through bounded
//! buffers, so a large upload or an endless event stream never sits in memory whole.
//!
//! `FunctionCreate` gives each web function (and web method of a class) its label and URL
//! here, and records the label's route in the store, so routes survive a restart.

mod pickle;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_gateway::{Backend, BackendError, Call, Endpoint, FromApp, RequestHead, ToApp, WsMessage};
use ferry_proto::api;
use ferry_store::{App, AppState};
use prost::Message;
use sha2::Digest;
use tokio::sync::{mpsc, Notify};
use tonic::{Request, Response, Status};

use crate::scheduler::NewInput;
use crate::service::{principal, ModalService, RpcStream};
use crate::status::{check_id, invalid, OrStatus};

/// Request-body bytes the app has not read yet, at most; the upload waits beyond this.
const MAX_PENDING_IN: usize = 8 * 1024 * 1024;
/// Bytes already sent to the container that are kept, so a broken stream can resume.
const REPLAY_IN: usize = 2 * 1024 * 1024;
/// A data stream ends after this long; the container opens the next one from its last index.
const STREAM_WINDOW: Duration = Duration::from_secs(55);
/// The longest DNS label, which a web endpoint's label must fit in.
const MAX_LABEL: usize = 63;

/// Where web endpoints are served and how their URLs look.
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// `http://HOST:PORT` of the gateway, for path-based URLs.
    pub base_url: String,
    /// Operator-set suffix for host-based URLs (`<label>.<suffix>`), optionally with a scheme
    /// (`https://apps.example.com`) or a port (`apps.example.com:8080`).
    pub host_suffix: Option<String>,
    /// A request whose response has not started after this long gets a 303 to poll.
    pub redirect_after: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig { base_url: String::new(), host_suffix: None, redirect_after: Duration::from_secs(150) }
    }
}

impl WebConfig {
    /// The URL of an endpoint label.
    pub fn url(&self, label: &str) -> String {
        match &self.host_suffix {
            Some(suffix) => {
                let (scheme, rest) = suffix.split_once("://").unwrap_or(("http", suffix));
                format!("{scheme}://{label}.{}", rest.trim_matches('.').trim_end_matches('/'))
            }
            None => format!("{}/{label}", self.base_url.trim_end_matches('/')),
        }
    }

    /// The host part of the suffix, which the gateway matches `Host` headers against.
    pub fn suffix_host(&self) -> Option<String> {
        let suffix = self.host_suffix.as_deref()?;
        let rest = suffix.split_once("://").map_or(suffix, |(_, r)| r);
        let host = rest.split('/').next().unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        Some(host.trim_matches('.').to_ascii_lowercase()).filter(|h| !h.is_empty())
    }
}

/// Serves the gateway on `listener` with this API's functions behind it; ends with the task.
pub(crate) fn spawn(s: &ModalService, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let web = &s.config.web;
    let config = ferry_gateway::GatewayConfig {
        host_suffix: web.suffix_host(),
        redirect_after: web.redirect_after,
        ..Default::default()
    };
    let backend = Arc::new(WebBackend { s: s.clone() });
    tokio::spawn(async move {
        if let Err(e) = ferry_gateway::serve(listener, backend, config, std::future::pending()).await {
            tracing::error!("web gateway stopped: {e}");
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Labels and URLs, given at FunctionCreate.

/// One DNS-safe piece of a label: lowercase letters, digits and single dashes.
fn dns_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    out.trim_end_matches('-').to_string()
}

/// `<workspace>--<name>[-<dev>]`, cut to one DNS label with a hash when too long.
fn make_label(workspace: &str, name: &str, dev_suffix: Option<&str>) -> (String, api::WebUrlInfo) {
    let dev = dev_suffix.map(|d| format!("-{}", dns_part(d))).unwrap_or_default();
    let body = format!("{workspace}--{name}");
    let budget = MAX_LABEL - dev.len();
    if body.len() <= budget {
        return (format!("{body}{dev}"), api::WebUrlInfo::default());
    }
    let hash = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    let cut = body[..budget - 7].trim_end_matches('-');
    (format!("{cut}-{}{dev}", &hash[..6]), api::WebUrlInfo { truncated: true, ..Default::default() })
}

fn check_webhook(config: &api::WebhookConfig, what: &str) -> Result<(), Status> {
    if !config.custom_domains.is_empty() {
        let names: Vec<&str> = config.custom_domains.iter().map(|d| d.name.as_str()).collect();
        return Err(Status::unimplemented(format!(
            "Ferry does not serve custom domains ({}) for {what}; remove custom_domains= and point the domain's DNS at \
             the gateway with `ferry serve --web-suffix`",
            names.join(", ")
        )));
    }
    if api::WebhookType::try_from(config.r#type).is_err() {
        return Err(invalid(format!("{what} has an unknown web endpoint type {}", config.r#type)));
    }
    if config.r#type == api::WebhookType::WebServer as i32 && !(1..=65535).contains(&config.web_server_port) {
        return Err(invalid(format!("{what}: web_server port {} is not a TCP port", config.web_server_port)));
    }
    Ok(())
}

/// Gives the web endpoints of a function definition (the function itself, or the web methods
/// of a class) their labels and URLs, and records their routes. Runs on every `FunctionCreate`,
/// so a redeploy or a `modal serve` reload moves the routes with the definition.
pub(crate) async fn prepare_definition(s: &ModalService, app: &App, function: &mut api::Function, function_id: &str) -> Result<(), Status> {
    let env = s.store.environment_by_id(&app.environment_id).await.or_status()?;
    let workspace = if env.is_default { "ferry".to_string() } else { format!("ferry-{}", dns_part(&env.name)) };
    let app_name = dns_part(app.name.as_deref().unwrap_or(&app.description));
    let ephemeral = matches!(app.state, AppState::Ephemeral | AppState::Detached | AppState::DetachedDisconnected);
    let label_of = |config: &api::WebhookConfig, name: &str| {
        let name = if config.requested_suffix.is_empty() {
            format!("{app_name}-{}", dns_part(name))
        } else {
            dns_part(&config.requested_suffix)
        };
        let dev = ephemeral.then(|| if config.ephemeral_suffix.is_empty() { "dev" } else { config.ephemeral_suffix.as_str() });
        make_label(&workspace, &name, dev)
    };
    let mut routes = Vec::new();
    if let Some(config) = function.webhook_config.clone().filter(|w| w.r#type != 0) {
        check_webhook(&config, &format!("function '{}'", function.function_name))?;
        let (label, info) = label_of(&config, &function.function_name);
        function.web_url = s.config.web.url(&label);
        function.web_url_info = Some(info);
        routes.push((label, String::new(), config.requires_proxy_auth));
    }
    let class_name = function.function_name.trim_end_matches(".*").to_string();
    for (method, def) in function.method_definitions.iter_mut() {
        let Some(config) = def.webhook_config.clone().filter(|w| w.r#type != 0) else { continue };
        check_webhook(&config, &format!("method '{class_name}.{method}'"))?;
        let (label, info) = label_of(&config, &format!("{class_name}-{method}"));
        def.web_url = s.config.web.url(&label);
        def.web_url_info = Some(info);
        routes.push((label, method.clone(), config.requires_proxy_auth));
    }
    let mut labels: Vec<&String> = routes.iter().map(|(l, _, _)| l).collect();
    labels.sort();
    if labels.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid(format!("two web endpoints of '{}' would share one URL; give one a different label=", function.function_name)));
    }
    s.store.set_web_routes(&app.id, function_id, &routes).await.or_status()
}

/// After a rollback restored earlier definitions without a `FunctionCreate`, the routes follow
/// the definitions the app has now (an endpoint the rolled-back version had answers again).
pub(crate) async fn restore_routes(s: &ModalService, app: &App) -> Result<(), Status> {
    let mut ids = Vec::new();
    for f in s.store.functions_of_app(&app.id).await.or_status()? {
        let Ok(mut def) = api::Function::decode(f.definition.clone().unwrap_or_default().as_slice()) else { continue };
        prepare_definition(s, app, &mut def, &f.id).await?;
        ids.push(f.id);
    }
    s.store.retain_web_routes(&app.id, &ids).await.or_status()
}

// ---------------------------------------------------------------------------------------------
// Calls in flight.

/// The web calls in flight, by function call id.
#[derive(Default)]
pub(crate) struct WebCalls {
    calls: Mutex<HashMap<String, Arc<WebCall>>>,
}

impl WebCalls {
    fn get(&self, call_id: &str) -> Option<Arc<WebCall>> {
        self.calls.lock().unwrap().get(call_id).cloned()
    }
}

struct WebCall {
    data_in: Mutex<DataIn>,
    /// New input, or the call finished.
    in_changed: Notify,
    /// The container took input.
    in_taken: Notify,
    from_app: mpsc::Sender<FromApp>,
    /// The next output index expected from the container (also keeps its messages in order).
    out_next: tokio::sync::Mutex<u64>,
    finished: AtomicBool,
}

/// ASGI messages for the app (encoded `Asgi`), by index from 1.
struct DataIn {
    items: VecDeque<(u64, Bytes)>,
    next: u64,
    /// The highest index sent to the container.
    sent: u64,
    /// Bytes of the items not sent yet.
    pending: usize,
    /// Bytes of all items kept.
    kept: usize,
}

impl WebCall {
    fn new(from_app: mpsc::Sender<FromApp>) -> Self {
        WebCall {
            data_in: Mutex::new(DataIn { items: VecDeque::new(), next: 1, sent: 0, pending: 0, kept: 0 }),
            in_changed: Notify::new(),
            in_taken: Notify::new(),
            from_app,
            out_next: tokio::sync::Mutex::new(1),
            finished: AtomicBool::new(false),
        }
    }

    /// Queues a message for the app, waiting while too much is unread.
    async fn push(&self, message: Bytes) {
        loop {
            let taken = self.in_taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            {
                let mut d = self.data_in.lock().unwrap();
                if d.pending < MAX_PENDING_IN || self.finished.load(Ordering::Acquire) {
                    let index = d.next;
                    d.next += 1;
                    d.pending += message.len();
                    d.kept += message.len();
                    d.items.push_back((index, message));
                    break;
                }
            }
            taken.await;
        }
        self.in_changed.notify_waiters();
    }

    /// Items after `after` (at most `max` bytes' worth, at least one), recording them as sent.
    fn take(&self, after: u64, max: usize) -> Vec<(u64, Bytes)> {
        let mut d = self.data_in.lock().unwrap();
        let mut out = Vec::new();
        let mut size = 0;
        for (index, bytes) in d.items.iter() {
            if *index <= after {
                continue;
            }
            if !out.is_empty() && size + bytes.len() > max {
                break;
            }
            size += bytes.len();
            out.push((*index, bytes.clone()));
        }
        if let Some((last, _)) = out.last() {
            let newly: usize = out.iter().filter(|(i, _)| *i > d.sent).map(|(_, b)| b.len()).sum();
            d.sent = d.sent.max(*last);
            d.pending -= newly.min(d.pending);
        }
        // Keep a little of what was sent, in case the stream breaks and resumes from earlier.
        while d.kept - d.pending > REPLAY_IN {
            let Some((index, bytes)) = d.items.front() else { break };
            if *index > d.sent {
                break;
            }
            d.kept -= bytes.len();
            d.items.pop_front();
        }
        drop(d);
        if !out.is_empty() {
            self.in_taken.notify_waiters();
        }
        out
    }
}

struct WebBackend {
    s: ModalService,
}

fn backend_error(status: u16) -> impl Fn(String) -> BackendError {
    move |message| BackendError::new(status, message)
}

#[async_trait::async_trait]
impl Backend for WebBackend {
    async fn endpoint(&self, label: &str) -> Result<Option<Endpoint>, BackendError> {
        let route = self.s.store.web_route(label).await.map_err(|e| BackendError::new(500, e.to_string()))?;
        Ok(route.filter(|r| r.app_live).map(|r| Endpoint {
            label: r.label,
            target: format!("{}#{}", r.function_id, r.method_name),
            requires_proxy_auth: r.requires_proxy_auth,
        }))
    }

    async fn verify_proxy_token(&self, key: &str, secret: &str) -> Result<bool, BackendError> {
        self.s.store.verify_proxy_token(key, secret).await.map_err(|e| BackendError::new(500, e.to_string()))
    }

    async fn start(&self, endpoint: &Endpoint, head: RequestHead) -> Result<Call, BackendError> {
        let s = &self.s;
        let (function_id, method) = endpoint.target.split_once('#').unwrap_or((&endpoint.target, ""));
        let (_, def) = crate::launch::definition(s, function_id).await.map_err(backend_error(500))?;
        let mut head = head;
        if !head.root_path.is_empty() && !is_web_server(&def, method) {
            // ASGI's `path` includes `root_path` (frameworks strip it to route): the app's own
            // URLs (`request.url`, redirects, WebSocket URLs) then keep the `/<label>` prefix.
            // A `web_server` proxy forwards `path` to its port as is, so it keeps the inner path.
            head.path = format!("{}{}", head.root_path, head.path);
        }
        let call_id = ferry_store::new_id("fc");
        let input = api::FunctionInput {
            args_oneof: Some(api::function_input::ArgsOneof::Args(pickle::asgi_args(&head))),
            data_format: api::DataFormat::Pickle as i32,
            method_name: (!method.is_empty()).then(|| method.to_string()),
            final_input: false,
        };
        let (to_app, app_in) = mpsc::channel(4);
        let (app_out, from_app) = mpsc::channel(16);
        let call = Arc::new(WebCall::new(app_out));
        s.web.calls.lock().unwrap().insert(call_id.clone(), call.clone());
        tokio::spawn(feed_app(call.clone(), app_in));
        let input = NewInput { idx: 0, payload: input.encode_to_vec() };
        let sync = api::FunctionCallInvocationType::Sync as i32;
        if let Err(status) = crate::launch::submit(s, &call_id, function_id, sync, vec![input]).await {
            s.web.calls.lock().unwrap().remove(&call_id);
            return Err(BackendError::new(503, status.message().to_string()));
        }
        tokio::spawn(watch_result(s.clone(), call_id.clone(), call));
        Ok(Call { id: call_id, to_app, from_app })
    }
}

/// Whether the endpoint (the function's, or its class method's) is a `web_server`.
fn is_web_server(def: &api::Function, method: &str) -> bool {
    let config = def.method_definitions.get(method).and_then(|m| m.webhook_config.as_ref()).or(def.webhook_config.as_ref());
    config.is_some_and(|c| c.r#type == api::WebhookType::WebServer as i32)
}

/// Moves the gateway's messages (request body, disconnects, WebSocket frames) into the call's
/// input buffer.
async fn feed_app(call: Arc<WebCall>, mut app_in: mpsc::Receiver<ToApp>) {
    while let Some(message) = app_in.recv().await {
        if call.finished.load(Ordering::Acquire) {
            return;
        }
        call.push(Bytes::from(to_asgi(message).encode_to_vec())).await;
    }
}

/// Waits for the call's output, tells the gateway how it ended, and forgets the call.
async fn watch_result(s: ModalService, call_id: String, call: Arc<WebCall>) {
    let outcome = loop {
        match s.scheduler.outputs(&call_id, 0, None, STREAM_WINDOW, false).await {
            Err(_) => break FromApp::Failed("the call was lost".into()),
            Ok(found) => {
                let Some(output) = found.outputs.into_iter().next() else { continue };
                let result = api::GenericResult::decode(output.result.as_slice()).unwrap_or_default();
                if result.status == api::generic_result::GenericStatus::Success as i32 {
                    break FromApp::Finished;
                }
                break FromApp::Failed(format!("{}\n{}", result.traceback.trim_end(), result.exception).trim().to_string());
            }
        }
    };
    // After the last response message: the container sends all of them before its output.
    let _ = call.from_app.send(outcome).await;
    call.finished.store(true, Ordering::Release);
    call.in_changed.notify_waiters();
    call.in_taken.notify_waiters();
    s.web.calls.lock().unwrap().remove(&call_id);
    s.scheduler.forget_call(&call_id);
}

fn to_asgi(message: ToApp) -> api::Asgi {
    use api::asgi::Type;
    let t = match message {
        ToApp::Body { data, more } => Type::HttpRequest(api::asgi::HttpRequest { body: data.to_vec(), more_body: more }),
        ToApp::Disconnect => Type::HttpDisconnect(api::asgi::HttpDisconnect {}),
        ToApp::WsConnect => Type::WebsocketConnect(api::asgi::WebsocketConnect {}),
        ToApp::WsReceive(m) => Type::WebsocketReceive(api::asgi::WebsocketReceive {
            content: Some(match m {
                WsMessage::Text(t) => api::asgi::websocket_receive::Content::Text(t),
                WsMessage::Binary(b) => api::asgi::websocket_receive::Content::Bytes(b.to_vec()),
            }),
        }),
        ToApp::WsDisconnect { code } => Type::WebsocketDisconnect(api::asgi::WebsocketDisconnect { code: Some(code as u32) }),
    };
    api::Asgi { r#type: Some(t) }
}

/// ASGI flattens headers into name, value, name, value, ...
fn header_pairs(flat: Vec<Vec<u8>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut it = flat.into_iter();
    let mut out = Vec::new();
    while let (Some(n), Some(v)) = (it.next(), it.next()) {
        out.push((n, v));
    }
    out
}

fn from_asgi(message: api::Asgi) -> Option<FromApp> {
    use api::asgi::Type;
    Some(match message.r#type? {
        Type::HttpResponseStart(m) => FromApp::Start { status: m.status as u16, headers: header_pairs(m.headers), trailers: m.trailers },
        Type::HttpResponseBody(m) => FromApp::Body { data: Bytes::from(m.body), more: m.more_body },
        Type::HttpResponseTrailers(m) => FromApp::Trailers { headers: header_pairs(m.headers), more: m.more_trailers },
        Type::WebsocketAccept(m) => FromApp::WsAccept { subprotocol: m.subprotocol, headers: header_pairs(m.headers) },
        Type::WebsocketSend(m) => FromApp::WsSend(match m.content? {
            api::asgi::websocket_send::Content::Text(t) => WsMessage::Text(t),
            api::asgi::websocket_send::Content::Bytes(b) => WsMessage::Binary(Bytes::from(b)),
        }),
        Type::WebsocketClose(m) => FromApp::WsClose { code: m.code.unwrap_or(1000) as u16, reason: m.reason },
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// The container's side of a web call.

fn call_id_of(info: Option<api::function_call_get_data_request::CallInfo>) -> Result<String, Status> {
    match info {
        Some(api::function_call_get_data_request::CallInfo::FunctionCallId(id)) => {
            check_id(&id, "fc", "FunctionCall")?;
            Ok(id)
        }
        _ => Err(invalid("FunctionCallGetDataIn needs a function_call_id (Ferry issues no attempt tokens)")),
    }
}

/// `FunctionCallGetDataIn`: the request's ASGI messages for the container running the call.
pub(crate) async fn get_data_in(s: &ModalService, r: Request<api::FunctionCallGetDataRequest>) -> RpcStream<api::DataChunk> {
    if !matches!(principal(&r), ferry_store::Principal::Task { .. }) {
        return Err(Status::permission_denied("only a task's container may read a call's input stream"));
    }
    let req = r.into_inner();
    let call_id = call_id_of(req.call_info)?;
    let call = s.web.get(&call_id).ok_or_else(|| Status::not_found(format!("function call {call_id} has no input stream (it finished, or is not a web request)")))?;
    let mut after = req.last_index;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + STREAM_WINDOW;
        loop {
            let changed = call.in_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let items = call.take(after, 4 * 1024 * 1024);
            if items.is_empty() {
                if call.finished.load(Ordering::Acquire) {
                    return;
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return;
                }
                continue;
            }
            for (index, data) in items {
                after = index;
                let chunk = api::DataChunk {
                    data_format: api::DataFormat::Asgi as i32,
                    index,
                    data_oneof: Some(api::data_chunk::DataOneof::Data(data.to_vec())),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}

/// The app's response messages for a web call; false when `call_id` is not a web call (a
/// generator's items, which the scheduler keeps).
pub(crate) async fn put_data_out(s: &ModalService, call_id: &str, chunks: &[api::DataChunk]) -> Result<bool, Status> {
    let Some(call) = s.web.get(call_id) else { return Ok(false) };
    let mut next = call.out_next.lock().await;
    let mut chunks: Vec<&api::DataChunk> = chunks.iter().collect();
    chunks.sort_by_key(|c| c.index);
    for chunk in chunks {
        if chunk.index < *next {
            continue; // a retried put
        }
        let bytes = match &chunk.data_oneof {
            Some(api::data_chunk::DataOneof::Data(data)) => data.clone(),
            Some(api::data_chunk::DataOneof::DataBlobId(id)) => crate::blobs::read(s, id).await?,
            None => Vec::new(),
        };
        let message = api::Asgi::decode(bytes.as_slice()).map_err(|e| invalid(format!("data chunk {} is not an ASGI message: {e}", chunk.index)))?;
        if let Some(event) = from_asgi(message) {
            // A caller that left no longer reads: drop the rest.
            let _ = call.from_app.send(event).await;
        }
        *next = chunk.index + 1;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(dns_part("My_App.py"), "my-app-py");
        assert_eq!(dns_part("Model.*"), "model");
        assert_eq!(make_label("ferry", "shop-api", None).0, "ferry--shop-api");
        assert_eq!(make_label("ferry", "shop-api", Some("dev")).0, "ferry--shop-api-dev");
        let (long, info) = make_label("ferry", &"x".repeat(80), Some("dev"));
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("-dev") && info.truncated);
        assert_ne!(long, make_label("ferry", &"x".repeat(81), Some("dev")).0);
    }

    #[test]
    fn urls() {
        let mut c = WebConfig { base_url: "http://127.0.0.1:9000/".into(), ..Default::default() };
        assert_eq!(c.url("ferry--a-f"), "http://127.0.0.1:9000/ferry--a-f");
        c.host_suffix = Some("https://apps.example.com".into());
        assert_eq!(c.url("ferry--a-f"), "https://ferry--a-f.apps.example.com");
        assert_eq!(c.suffix_host().as_deref(), Some("apps.example.com"));
        c.host_suffix = Some("web.localhost:9000".into());
        assert_eq!(c.url("ferry--a-f"), "http://ferry--a-f.web.localhost:9000");
        assert_eq!(c.suffix_host().as_deref(), Some("web.localhost"));
    }

    #[test]
    fn replay_window_and_backpressure() {
        let (tx, _rx) = mpsc::channel(1);
        let call = WebCall::new(tx);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            for i in 0..4u8 {
                call.push(Bytes::from(vec![i; 1024 * 1024])).await;
            }
            let first = call.take(0, 1);
            assert_eq!(first.len(), 1);
            assert_eq!(first[0].0, 1);
            // Resuming from an earlier index replays what is still kept.
            assert_eq!(call.take(0, usize::MAX).len(), 4);
            let d = call.data_in.lock().unwrap();
            assert_eq!(d.pending, 0);
            assert!(d.kept - d.pending <= REPLAY_IN);
        });
    }
}
