//! The stylesheet and the small script, compiled into the binary (no CDN, no build step).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::AppState;

const CSS: &str = include_str!("../../static/style.css");
const JS: &str = include_str!("../../static/app.js");

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/static/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response() }))
        .route("/static/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS).into_response() }))
}
