//! `GET /metrics`: the Prometheus text format. Open to loopback peers (a scraper on the same
//! host); from other addresses it needs `Authorization: Bearer <token id>:<token secret>`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap) -> Response {
    if !peer.ip().is_loopback() {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|v| v.split_once(':'));
        let ok = match bearer {
            Some((id, secret)) => state.store.verify_token(id, secret).await.unwrap_or(false),
            None => false,
        };
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                "/metrics from another host needs `Authorization: Bearer <token id>:<token secret>`",
            )
                .into_response();
        }
    }
    let body = crate::metrics::render(state.live.as_ref(), &state.store).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}
