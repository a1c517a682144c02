//! Inputs the fuzzers found answered wrongly, kept as tests.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

type Svc = ferry_api::gateway::Gateway<ferry_proto::api::modal_client_server::ModalClientServer<ferry_api::ModalService>>;

async fn service(dir: &std::path::Path, limits: ferry_api::gateway::Limits) -> (Svc, String, String) {
    let store = ferry_store::Store::open(dir, Default::default()).await.unwrap();
    let (id, secret) = store.create_token("regressions").await.unwrap();
    let config = Arc::new(ferry_api::ApiConfig { public_url: "http://127.0.0.1:1".into(), ..Default::default() });
    let modal = ferry_api::ModalService::new(store.clone(), config).await.unwrap();
    let svc = ferry_api::gateway::GatewayLayer::with_limits(store, limits).layer(
        ferry_proto::api::modal_client_server::ModalClientServer::new(modal).max_decoding_message_size(limits.max_request_bytes),
    );
    (svc, id, secret)
}

async fn call(svc: &Svc, id: &str, secret: &str, method: &str, body: Vec<u8>) -> (String, String) {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("/modal.client.ModalClient/{method}"))
        .header("content-type", "application/grpc")
        .header("x-modal-token-id", id)
        .header("x-modal-token-secret", secret)
        .header("x-modal-client-version", ferry_proto::CLIENT_VERSION)
        .body(tonic::body::Body::new(http_body_util::Full::new(Bytes::from(body))))
        .unwrap();
    let resp = svc.clone().ready().await.unwrap().call(req).await.unwrap();
    let get = |h: &http::HeaderMap, k: &str| h.get(k).map(|v| percent_decode(v.to_str().unwrap())).unwrap_or_default();
    if resp.headers().contains_key("grpc-status") {
        return (get(resp.headers(), "grpc-status"), get(resp.headers(), "grpc-message"));
    }
    let trailers = resp.into_body().collect().await.unwrap().trailers().cloned().unwrap_or_default();
    (get(&trailers, "grpc-status"), get(&trailers, "grpc-message"))
}

fn percent_decode(m: &str) -> String {
    let b = m.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        match (b[i], std::str::from_utf8(b.get(i + 1..i + 3).unwrap_or(b"zz")).ok().and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
    out
}

/// A request that does not decode was answered INTERNAL (tonic's choice), which the client
/// retries as a server fault; it is INVALID_ARGUMENT, naming the message expected.
#[tokio::test]
async fn an_undecodable_request_is_invalid_argument_not_internal() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, id, secret) = service(dir.path(), Default::default()).await;
    // Field 1 (dict_id) declared with a length beyond the message.
    let (code, message) = call(&svc, &id, &secret, "DictGet", frame(&[0x0a, 0x7f, b'x'])).await;
    assert_eq!(code, "3", "{message}");
    assert!(message.contains("DictGetRequest"), "{message}");
    // A frame cut short.
    let mut cut = frame(b"\x0a\x02di");
    cut.truncate(4);
    let (code, message) = call(&svc, &id, &secret, "DictLen", cut).await;
    assert_eq!(code, "3", "{message}");
}

/// A message over the limit was answered OUT_OF_RANGE with tonic's decoder text.
#[tokio::test]
async fn an_oversized_request_is_resource_exhausted_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ferry_api::gateway::Limits { max_request_bytes: 1024, ..Default::default() };
    let (svc, id, secret) = service(dir.path(), limits).await;
    let big = prost::Message::encode_to_vec(&ferry_proto::api::DictUpdateRequest {
        dict_id: "di-x".into(),
        updates: vec![ferry_proto::api::DictEntry { key: b"k".to_vec(), value: vec![7; 4096] }],
        ..Default::default()
    });
    let (code, message) = call(&svc, &id, &secret, "DictUpdate", frame(&big)).await;
    assert_eq!(code, "8", "{message}");
    assert!(message.contains("1024 bytes") && message.contains("--max-request-mib"), "{message}");
}
