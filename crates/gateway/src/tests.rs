//! The gateway against a test backend that stands in for the app (echo, slow, failing), over
//! real HTTP on a loopback port.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

use super::*;

struct TestBackend;

#[async_trait::async_trait]
impl Backend for TestBackend {
    async fn endpoint(&self, label: &str) -> Result<Option<Endpoint>, BackendError> {
        let known = ["ferry--t-echo", "ferry--t-slow", "ferry--t-auth", "ferry--t-fail"];
        Ok(known.contains(&label).then(|| Endpoint {
            label: label.to_string(),
            target: label.to_string(),
            requires_proxy_auth: label == "ferry--t-auth",
        }))
    }

    async fn verify_proxy_token(&self, key: &str, secret: &str) -> Result<bool, BackendError> {
        Ok(key == "wk-1" && secret == "ws-1")
    }

    async fn start(&self, endpoint: &Endpoint, head: RequestHead) -> Result<Call, BackendError> {
        let (to_app, mut app_in) = mpsc::channel::<ToApp>(4);
        let (app_out, from_app) = mpsc::channel::<FromApp>(4);
        let label = endpoint.label.clone();
        tokio::spawn(async move {
            match label.as_str() {
                "ferry--t-slow" => {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let _ = app_out.send(FromApp::Start { status: 200, headers: vec![], trailers: false }).await;
                    let _ = app_out.send(FromApp::Body { data: Bytes::from_static(b"finally"), more: false }).await;
                }
                "ferry--t-fail" => {
                    let _ = app_out.send(FromApp::Failed("ZeroDivisionError".into())).await;
                }
                _ => {
                    let headers = vec![
                        (b"x-path".to_vec(), head.path.into_bytes()),
                        (b"x-root".to_vec(), head.root_path.into_bytes()),
                        (b"x-query".to_vec(), head.query_string),
                        (b"x-has-secret".to_vec(), head.headers.iter().any(|(n, _)| n == b"modal-secret").to_string().into_bytes()),
                    ];
                    let _ = app_out.send(FromApp::Start { status: 201, headers, trailers: false }).await;
                    // Echo the body as it arrives.
                    while let Some(ToApp::Body { data, more }) = app_in.recv().await {
                        let _ = app_out.send(FromApp::Body { data, more }).await;
                        if !more {
                            break;
                        }
                    }
                    let _ = app_out.send(FromApp::Finished).await;
                }
            }
        });
        Ok(Call { id: "fc-test".into(), to_app, from_app })
    }
}

async fn start_gateway() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = GatewayConfig { redirect_after: Duration::from_millis(100), ..Default::default() };
    tokio::spawn(serve(listener, Arc::new(TestBackend), config, std::future::pending()));
    addr
}

async fn request(addr: SocketAddr, method: &str, uri: &str, headers: &[(&str, &str)], body: Bytes) -> (u16, http::HeaderMap, Bytes) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder().method(method).uri(uri).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Full::new(body)).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

#[tokio::test]
async fn streams_a_body_through_and_back() {
    let addr = start_gateway().await;
    let payload: Bytes = (0..5_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let (status, headers, body) = request(addr, "POST", "/ferry--t-echo/a/b%20c?x=1", &[], payload.clone()).await;
    assert_eq!(status, 201);
    assert_eq!(headers["x-path"], "/a/b c");
    assert_eq!(headers["x-root"], "/ferry--t-echo");
    assert_eq!(headers["x-query"], "x=1");
    assert_eq!(body, payload);
}

#[tokio::test]
async fn root_relative_links_of_an_endpoint_page_are_sent_back_under_it() {
    let addr = start_gateway().await;
    let page = format!("http://{addr}/ferry--t-echo/form");
    let (status, headers, _) = request(addr, "POST", "/process?n=2", &[("referer", &page)], Bytes::from_static(b"a=1")).await;
    assert_eq!(status, 307);
    assert_eq!(headers["location"], "/ferry--t-echo/process?n=2");
    let (status, headers, body) = request(addr, "POST", "/ferry--t-echo/process?n=2", &[], Bytes::from_static(b"a=1")).await;
    assert_eq!((status, &headers["x-path"], &body[..]), (201, &http::HeaderValue::from_static("/process"), &b"a=1"[..]));
    // A page elsewhere, or no page at all: nothing here.
    let (status, _, _) = request(addr, "GET", "/process", &[("referer", "http://elsewhere.example/ferry--t-echo/")], Bytes::new()).await;
    assert_eq!(status, 404);
    assert_eq!(request(addr, "GET", "/process", &[], Bytes::new()).await.0, 404);
}

#[tokio::test]
async fn unknown_labels_are_not_found() {
    let addr = start_gateway().await;
    let (status, _, body) = request(addr, "GET", "/ferry--nope-x/", &[], Bytes::new()).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("ferry--nope-x"));
    assert_eq!(request(addr, "GET", "/", &[], Bytes::new()).await.0, 404);
}

#[tokio::test]
async fn proxy_auth_is_required_and_stripped() {
    let addr = start_gateway().await;
    assert_eq!(request(addr, "GET", "/ferry--t-auth/", &[], Bytes::new()).await.0, 401);
    let wrong = [("modal-key", "wk-1"), ("modal-secret", "ws-2")];
    assert_eq!(request(addr, "GET", "/ferry--t-auth/", &wrong, Bytes::new()).await.0, 401);
    let right = [("Modal-Key", "wk-1"), ("Modal-Secret", "ws-1")];
    let (status, headers, _) = request(addr, "GET", "/ferry--t-auth/", &right, Bytes::new()).await;
    assert_eq!(status, 201);
    assert_eq!(headers["x-has-secret"], "false");
}

#[tokio::test]
async fn slow_calls_redirect_and_the_follow_up_gets_the_result() {
    let addr = start_gateway().await;
    let (status, headers, _) = request(addr, "GET", "/ferry--t-slow/x?keep=1", &[], Bytes::new()).await;
    assert_eq!(status, 303);
    let location = headers["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("/ferry--t-slow/x?{CALL_ID_PARAM}=fc-test"));
    // Still not started after the first follow-up's wait? Follow again until it is.
    let mut location = location;
    for _ in 0..10 {
        let (status, headers, body) = request(addr, "GET", &location, &[], Bytes::new()).await;
        if status == 303 {
            location = headers["location"].to_str().unwrap().to_string();
            continue;
        }
        assert_eq!((status, &body[..]), (200, &b"finally"[..]));
        // Delivered once: the call is gone afterwards.
        assert_eq!(request(addr, "GET", &location, &[], Bytes::new()).await.0, 404);
        return;
    }
    panic!("the redirected call never answered");
}

#[tokio::test]
async fn app_failures_are_500() {
    let addr = start_gateway().await;
    let (status, _, body) = request(addr, "GET", "/ferry--t-fail/", &[], Bytes::new()).await;
    assert_eq!(status, 500);
    assert!(!String::from_utf8_lossy(&body).contains("ZeroDivisionError"), "the failure stays in the logs");
}

#[test]
fn call_params() {
    assert_eq!(call_param(Some("a=1&__modal_function_call_id=fc-9")), Some("fc-9".to_string()));
    assert_eq!(call_param(Some("a=1")), None);
    assert_eq!(strip_call_param("a=1&__modal_function_call_id=fc-9&b=2"), "a=1&b=2");
}
