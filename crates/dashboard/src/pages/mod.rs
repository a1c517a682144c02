//! One module per page (or family of pages). Each exposes `routes()` and, when it belongs in
//! the navigation bar, a `NAV` entry; adding a page is a new module plus one line in `all()`
//! and `nav()` (and its template in `render.rs`).

mod apps;
mod containers;
mod functions;
mod logs;
mod metrics;
mod objects;
mod secrets;
mod static_files;
mod tokens;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

use crate::AppState;

#[derive(Serialize)]
pub(crate) struct NavEntry {
    pub path: &'static str,
    pub title: &'static str,
}

/// The navigation bar, in order.
pub(crate) fn nav() -> Vec<NavEntry> {
    vec![apps::NAV, containers::NAV, objects::DICTS_NAV, objects::QUEUES_NAV, secrets::NAV, tokens::NAV]
}

pub(crate) fn all(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/apps") }))
        .route("/signin", get(crate::auth::signin_page).post(crate::auth::signin))
        .route("/signout", post(crate::auth::signout))
        .merge(apps::routes())
        .merge(functions::routes())
        .merge(logs::routes())
        .merge(containers::routes())
        .merge(objects::routes())
        .merge(secrets::routes())
        .merge(tokens::routes())
        .merge(metrics::routes())
        .merge(static_files::routes())
        .layer(middleware::from_fn_with_state(state.clone(), headers))
        .with_state(state)
}

/// Response headers every page gets, and the request counter.
async fn headers(State(_): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    crate::metrics::record_dashboard_request(resp.status().as_u16());
    let h = resp.headers_mut();
    h.insert("x-content-type-options", "nosniff".parse().unwrap());
    h.insert("x-frame-options", "DENY".parse().unwrap());
    h.insert("referrer-policy", "same-origin".parse().unwrap());
    h.insert(
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
            .parse()
            .unwrap(),
    );
    resp
}

/// A 404 page body for an unknown object.
pub(crate) fn not_found(what: &str, id: &str) -> Response {
    (axum::http::StatusCode::NOT_FOUND, format!("{what} {id} was not found on this server")).into_response()
}

/// How an app's state reads on the pages.
pub(crate) fn state_name(state: ferry_store::AppState) -> &'static str {
    use ferry_store::AppState::*;
    match state {
        Ephemeral => "running",
        Detached | DetachedDisconnected => "detached",
        Deployed => "deployed",
        Stopping => "stopping",
        Stopped => "stopped",
        Initializing => "initializing",
    }
}
