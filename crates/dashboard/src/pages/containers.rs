//! Containers running now, with a stop action.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use minijinja::context;

use super::NavEntry;
use crate::auth::{CsrfForm, Session};
use crate::render::page;
use crate::AppState;

pub(super) const NAV: NavEntry = NavEntry { path: "/containers", title: "Containers" };

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/containers", get(list)).route("/containers/{task_id}/stop", post(stop))
}

async fn list(State(st): State<AppState>, session: Session) -> Response {
    let mut containers = st.live.containers();
    containers.sort_by(|a, b| b.started_at.total_cmp(&a.started_at));
    page(&st, "containers.html", Some(&session), context! { containers => containers })
}

async fn stop(State(st): State<AppState>, session: Session, Path(task_id): Path<String>, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = session.check_csrf(&f.csrf) {
        return r;
    }
    if !st.live.stop_container(&task_id) {
        return super::not_found("Running container", &task_id);
    }
    tracing::info!(task_id, by = session.token_id, "container stopped from the dashboard");
    Redirect::to("/containers").into_response()
}
