//! One HTTP request: the body streams to the app while the gateway waits for the response to
//! start; the response body streams back as the app produces it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, Stream, StreamExt};
use http_body::Frame;
use tokio::sync::mpsc;

use crate::{call_param, request_head, response_headers, text, Call, Endpoint, FromApp, Gateway, RequestKind, Route, RouteStyle, ToApp, CALL_ID_PARAM};

/// Request body chunks that arrive together are sent to the app as one message up to this size.
const COALESCE_BYTES: usize = 1024 * 1024;

pub(crate) async fn handle(gw: Arc<Gateway>, endpoint: Endpoint, route: Route, client: SocketAddr, req: Request) -> Response {
    let location_path = req.uri().path().to_string();
    // Redirects of an app mounted under `/<label>` are rewritten to stay under it.
    let mount = (route.style == RouteStyle::Path).then(|| Mount {
        root: route.root_path.clone(),
        host: req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string),
    });
    let call = match call_param(req.uri().query()) {
        // The follow-up of a 303: pick up the call that was still running.
        Some(call_id) => match gw.unpark(&call_id, &endpoint.target) {
            Some(call) => call,
            None => return text(404, &format!("No pending result for call {call_id}: it finished and was delivered, or expired\n")),
        },
        None => {
            let head = request_head(&req, &route, client, RequestKind::Http);
            let call = match gw.backend.start(&endpoint, head).await {
                Ok(c) => c,
                Err(e) => return text(e.status, &format!("{}\n", e.message)),
            };
            tokio::spawn(pump_body(req.into_body(), call.to_app.clone()));
            call
        }
    };
    respond(gw, endpoint, call, location_path, mount).await
}

/// Where a path-routed endpoint is mounted: its prefix and the host the caller used.
struct Mount {
    root: String,
    host: Option<String>,
}

/// Sends the request body to the app in chunks, then its end (or a disconnect on error).
async fn pump_body(body: axum::body::Body, to_app: mpsc::Sender<ToApp>) {
    let mut stream = body.into_data_stream();
    loop {
        let first = match stream.next().await {
            None => {
                let _ = to_app.send(ToApp::Body { data: Bytes::new(), more: false }).await;
                return;
            }
            Some(Err(e)) => {
                tracing::debug!("request body broke off: {e}");
                let _ = to_app.send(ToApp::Disconnect).await;
                return;
            }
            Some(Ok(chunk)) => chunk,
        };
        // Take what has already arrived along with it, so a large upload is not cut into
        // thousands of small messages.
        let mut buf = BytesMut::from(&first[..]);
        let mut ended = false;
        while buf.len() < COALESCE_BYTES {
            match stream.next().now_or_never() {
                Some(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
                Some(None) => {
                    ended = true;
                    break;
                }
                Some(Some(Err(_))) | None => break,
            }
        }
        if to_app.send(ToApp::Body { data: buf.freeze(), more: !ended }).await.is_err() {
            return;
        }
        if ended {
            return;
        }
    }
}

/// Waits for the response to start (redirecting after the limit) and streams it.
async fn respond(gw: Arc<Gateway>, endpoint: Endpoint, mut call: Call, location_path: String, mount: Option<Mount>) -> Response {
    let deadline = tokio::time::Instant::now() + gw.config.redirect_after;
    loop {
        let event = match tokio::time::timeout_at(deadline, call.from_app.recv()).await {
            Ok(e) => e,
            Err(_) => {
                // Still running: the caller polls the same URL for the result.
                let location = format!("{location_path}?{CALL_ID_PARAM}={}", call.id);
                gw.park(call, endpoint.target.clone());
                let mut r = text(303, "The request is still running; follow the redirect to wait for its result\n");
                r.headers_mut().insert(http::header::LOCATION, http::HeaderValue::from_str(&location).unwrap_or(http::HeaderValue::from_static("/")));
                return r;
            }
        };
        match event {
            Some(FromApp::Start { status, headers, trailers }) => {
                let body = ResponseBody { from_app: call.from_app, to_app: call.to_app, done: false, trailers, call_id: call.id };
                let mut r = Response::new(axum::body::Body::new(http_body_util::StreamBody::new(body)));
                *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                response_headers(&headers, r.headers_mut());
                if let Some(mount) = &mount {
                    let location = r.headers().get(http::header::LOCATION).and_then(|v| v.to_str().ok());
                    let mounted = location.and_then(|l| crate::route::mount_location(l, &mount.root, mount.host.as_deref()));
                    if let Some(value) = mounted.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
                        r.headers_mut().insert(http::header::LOCATION, value);
                    }
                }
                return r;
            }
            Some(FromApp::Failed(message)) => {
                tracing::info!(call_id = call.id, label = endpoint.label, "web call failed before responding: {message}");
                return text(500, "Internal Server Error\n");
            }
            Some(FromApp::Finished) | None => {
                return text(500, "Internal Server Error: the app finished without sending a response\n");
            }
            // Body before start, or WebSocket messages on an HTTP call: not valid ASGI; skip.
            Some(_) => continue,
        }
    }
}

/// The response body: the app's `http.response.body` messages as they come.
struct ResponseBody {
    from_app: mpsc::Receiver<FromApp>,
    to_app: mpsc::Sender<ToApp>,
    done: bool,
    trailers: bool,
    call_id: String,
}

impl Stream for ResponseBody {
    type Item = Result<Frame<Bytes>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            let event = match self.from_app.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(e) => e,
            };
            match event {
                Some(FromApp::Body { data, more }) => {
                    if !more && !self.trailers {
                        self.done = true;
                    }
                    if data.is_empty() {
                        if self.done {
                            return Poll::Ready(None);
                        }
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(FromApp::Trailers { headers, more }) => {
                    let mut map = http::HeaderMap::new();
                    response_headers(&headers, &mut map);
                    if !more {
                        self.done = true;
                    }
                    return Poll::Ready(Some(Ok(Frame::trailers(map))));
                }
                Some(FromApp::Finished) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Some(FromApp::Failed(message)) => {
                    // Too late for a 500: break the response off so the caller sees it failed.
                    self.done = true;
                    tracing::info!(call_id = self.call_id, "web call failed while responding: {message}");
                    return Poll::Ready(Some(Err(std::io::Error::other("the app failed while sending its response"))));
                }
                None => {
                    self.done = true;
                    return Poll::Ready(Some(Err(std::io::Error::other("the app went away while sending its response"))));
                }
                Some(_) => continue,
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // The caller left before the response ended: tell the app (ASGI `http.disconnect`).
        if !self.done {
            let to_app = self.to_app.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = to_app.send(ToApp::Disconnect).await;
                });
            }
        }
    }
}
