//! Fuzz targets, each run for `FERRY_FUZZ_SECS` (default 20 s) under `cargo test`.
//!
//! * `grpc_requests`: mutated real client requests (and mutated framing and metadata) for every
//!   RPC of the service, sent in process through the real gateway layer (auth, scopes, limits,
//!   replay) into the real `ModalService` over a store in a temporary data dir. Every answer
//!   must be a valid gRPC status, and nothing may panic, on the request's task or any other.
//! * `request_scanner`: the gateway's scope checks read untrusted request bytes themselves.
//! * `web_routes`: the web endpoint gateway's routing of untrusted `Host` headers and paths.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_fuzz::{budget, corpus, mutate, rng};
use http_body_util::BodyExt;
use rand::Rng;
use tower::{Layer, Service, ServiceExt};

/// RPCs left out of the in-process target: they build images or start containers and
/// processes from what the request says, which takes minutes per input, not microseconds.
const SPAWNING: &[&str] = &[
    "ImageGetOrCreate",
    "SandboxCreate",
    "SandboxCreateV2",
    "SandboxContainerCreateV2",
    "PersistentSandboxCreate",
    "PersistentSandboxResume",
    "SandboxRestore",
    "SandboxRestoreV2",
    "ContainerExec",
    "FunctionStartPtyShell",
];

static PANICS: AtomicUsize = AtomicUsize::new(0);
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// Counts panics on every thread (handlers may panic on tasks of their own).
fn watch_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        *LAST_PANIC.lock().unwrap() = info.to_string();
        default(info);
    }));
}

fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
    out
}

/// The gRPC status code of an answer: from trailers-only headers, else from the trailers.
async fn status_of(resp: http::Response<tonic::body::Body>) -> Option<Option<i32>> {
    let code = |h: &http::HeaderMap| h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
    if let Some(c) = code(resp.headers()) {
        return Some(Some(c));
    }
    // Streams and long polls may keep going: a bounded wait, then the answer is dropped.
    match tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect()).await {
        Ok(Ok(collected)) => Some(collected.trailers().and_then(code)),
        Ok(Err(_)) => Some(None),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests() {
    watch_panics();
    let dir = tempfile::tempdir().unwrap();
    let store = ferry_store::Store::open(dir.path(), Default::default()).await.unwrap();
    let (token_id, token_secret) = store.create_token("fuzz").await.unwrap();
    let (ro_id, ro_secret) = store
        .create_scoped_token("fuzz-scoped", &ferry_store::TokenScope { read_only: true, environment: Some("main".into()) })
        .await
        .unwrap();
    let config = Arc::new(ferry_api::ApiConfig { public_url: "http://127.0.0.1:1".into(), ..Default::default() });
    let modal = ferry_api::ModalService::new(store.clone(), config).await.unwrap();
    let service = ferry_api::gateway::GatewayLayer::new(store.clone()).layer(
        ferry_proto::api::modal_client_server::ModalClientServer::new(modal).max_decoding_message_size(8 * 1024 * 1024),
    );

    let seeds = corpus();
    let all_seeds: Vec<&[u8]> = seeds.values().flatten().map(|v| v.as_slice()).collect();
    let methods: Vec<String> = {
        let mut m: Vec<String> = ferry_api::access::CATALOG.methods.keys().filter(|m| !SPAWNING.contains(&m.as_str())).cloned().collect();
        m.sort();
        m
    };
    let mut rng = rng("grpc_requests");
    let deadline = Instant::now() + budget();
    let (mut runs, mut answered, mut codes) = (0u64, 0u64, [0u64; 17]);
    while Instant::now() < deadline {
        // Every method first, then methods with seeds twice as often.
        let method = if (runs as usize) < methods.len() {
            methods[runs as usize].clone()
        } else if rng.gen_bool(0.5) && !seeds.is_empty() {
            seeds.keys().nth(rng.gen_range(0..seeds.len())).unwrap().clone()
        } else {
            methods[rng.gen_range(0..methods.len())].clone()
        };
        if SPAWNING.contains(&method.as_str()) {
            continue;
        }
        let mut message = match seeds.get(&method) {
            Some(s) if rng.gen_bool(0.9) => s[rng.gen_range(0..s.len())].clone(),
            _ => Vec::new(),
        };
        if runs as usize >= methods.len() || rng.gen_bool(0.5) {
            mutate(&mut rng, &mut message, &all_seeds);
        }
        let mut body = frame(&message);
        match rng.gen_range(0..40) {
            0 => body[0] = 1,                                     // "compressed", with no encoding named
            1 => body.truncate(rng.gen_range(0..body.len())),     // frame cut short
            2 => body[1..5].copy_from_slice(&u32::MAX.to_be_bytes()), // a length far beyond the body
            3 => body.extend(frame(&message)),                    // two messages for a unary call
            _ => {}
        }
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("/modal.client.ModalClient/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        let (id, secret) = if rng.gen_bool(0.2) { (&ro_id, &ro_secret) } else { (&token_id, &token_secret) };
        match rng.gen_range(0..30) {
            0 => {}
            1 => req = req.header("x-modal-token-id", id.as_str()).header("x-modal-token-secret", "as-wrong"),
            2 => req = req.header("x-modal-task-id", "ta-fuzz").header("x-modal-task-secret", "x"),
            3 => req = req.header("x-modal-client-version", "0.0.1").header("x-modal-token-id", id.as_str()),
            _ => {
                req = req
                    .header("x-modal-token-id", id.as_str())
                    .header("x-modal-token-secret", secret.as_str())
                    .header("x-modal-client-version", ferry_proto::CLIENT_VERSION);
                if rng.gen_bool(0.2) {
                    req = req.header("x-idempotency-key", format!("k{}", rng.gen_range(0..50)));
                }
            }
        }
        let req = req.body(tonic::body::Body::new(http_body_util::Full::new(Bytes::from(body)))).unwrap();
        runs += 1;
        let mut svc = service.clone();
        let call = async move { svc.ready().await.ok()?.call(req).await.ok() };
        let Ok(Some(resp)) = tokio::time::timeout(Duration::from_secs(3), call).await else { continue };
        assert_eq!(resp.status(), http::StatusCode::OK, "{method}: HTTP status of a gRPC answer");
        if let Some(code) = status_of(resp).await {
            let code = code.unwrap_or_else(|| panic!("{method}: an answer without a grpc-status"));
            assert!((0..=16).contains(&code), "{method}: grpc-status {code} is not a gRPC code");
            codes[code as usize] += 1;
            answered += 1;
        }
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "{method} panicked: {}\ninput: {message:02x?}", LAST_PANIC.lock().unwrap());
    }
    // Let tasks the calls started run into their own panics, if any, before the verdict.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a task panicked: {}", LAST_PANIC.lock().unwrap());
    eprintln!("grpc_requests: {runs} calls, {answered} answered; by status code: {codes:?}");
    assert!(runs as usize >= methods.len() || budget() < Duration::from_secs(1), "only {runs} calls ran");
}

#[test]
fn request_scanner() {
    let seeds = corpus();
    let all: Vec<&[u8]> = seeds.values().flatten().map(|v| v.as_slice()).collect();
    let mut rng = rng("request_scanner");
    let deadline = Instant::now() + budget().min(Duration::from_secs(5));
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let mut data = if all.is_empty() { Vec::new() } else { all[rng.gen_range(0..all.len())].to_vec() };
        mutate(&mut rng, &mut data, &all);
        if let Some(scanned) = ferry_api::access::scan(&data) {
            // What the scanner accepts, a field-by-field decoder accepts too.
            assert!(scanned.strings.keys().chain(scanned.varints.keys()).all(|&n| n > 0));
        }
        let method = ["DictGetOrCreate", "QueueGetOrCreate", "AppCreate", "DictUpdate"][rng.gen_range(0..4)];
        let _ = ferry_api::access::allowed_read_only(method, ferry_api::access::scan(&data).as_ref());
        runs += 1;
    }
    eprintln!("request_scanner: {runs} inputs");
}

#[test]
fn web_routes() {
    let mut rng = rng("web_routes");
    let hosts: Vec<&[u8]> = ["ferry--shop-api.localhost:8080", "ferry--a-b-dev.apps.example.com", "127.0.0.1:9", "[::1]:80", "."]
        .iter()
        .map(|s| s.as_bytes())
        .collect();
    let paths: Vec<&[u8]> = ["/ferry--shop-api/items/3", "/", "", "//x", "/ferry--a/%2e%2e/"].iter().map(|s| s.as_bytes()).collect();
    let deadline = Instant::now() + budget().min(Duration::from_secs(5));
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let mut host = hosts[rng.gen_range(0..hosts.len())].to_vec();
        let mut path = paths[rng.gen_range(0..paths.len())].to_vec();
        mutate(&mut rng, &mut host, &hosts);
        mutate(&mut rng, &mut path, &paths);
        let (host, path) = (String::from_utf8_lossy(&host), String::from_utf8_lossy(&path));
        let suffix = if rng.gen_bool(0.5) { Some("apps.example.com") } else { None };
        if let Some(r) = ferry_gateway::route::route(Some(&*host), &path, suffix) {
            assert!(!r.label.is_empty() && !r.label.contains('/'), "label {:?} from {host:?} {path:?}", r.label);
            if path.is_empty() || path.starts_with('/') {
                assert!(r.path.starts_with('/'), "path {:?} from {host:?} {path:?}", r.path);
            }
        }
        runs += 1;
    }
    eprintln!("web_routes: {runs} inputs");
}
