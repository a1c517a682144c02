//! Tokens: list, create (the secret is shown once, on the answer to the create action) and
//! revoke. Revoking a token also ends the dashboard sessions signed in with it.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use minijinja::context;
use serde::{Deserialize, Serialize};

use super::NavEntry;
use crate::auth::{CsrfForm, Session};
use crate::render::page;
use crate::AppState;

pub(super) const NAV: NavEntry = NavEntry { path: "/tokens", title: "Tokens" };

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/tokens", get(list).post(create)).route("/tokens/{token_id}/revoke", post(revoke))
}

#[derive(Serialize)]
struct Row {
    token_id: String,
    label: String,
    created_at: f64,
    revoked_at: Option<f64>,
    current: bool,
}

async fn render(st: &AppState, session: &Session, created: Option<(String, String)>) -> Response {
    let rows: Vec<Row> = st
        .store
        .list_tokens()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|t| Row {
            current: t.token_id == session.token_id,
            token_id: t.token_id,
            label: t.label,
            created_at: t.created_at,
            revoked_at: t.revoked_at,
        })
        .collect();
    let created = created.map(|(id, secret)| context! { token_id => id, token_secret => secret });
    let mut resp = page(st, "tokens.html", Some(session), context! { tokens => rows, created => created });
    // The page with a new secret must not be kept by the browser or a proxy.
    resp.headers_mut().insert("cache-control", "no-store".parse().unwrap());
    resp
}

async fn list(State(st): State<AppState>, session: Session) -> Response {
    render(&st, &session, None).await
}

#[derive(Deserialize)]
struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    label: String,
}

async fn create(State(st): State<AppState>, session: Session, Form(f): Form<CreateForm>) -> Response {
    if let Err(r) = session.check_csrf(&f.csrf) {
        return r;
    }
    match st.store.create_token(f.label.trim()).await {
        Ok(created) => {
            tracing::info!(token_id = created.0, by = session.token_id, "token created from the dashboard");
            render(&st, &session, Some(created)).await
        }
        Err(e) => crate::render::error(axum::http::StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn revoke(State(st): State<AppState>, session: Session, Path(token_id): Path<String>, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = session.check_csrf(&f.csrf) {
        return r;
    }
    if let Err(e) = st.store.revoke_token(&token_id).await {
        return crate::render::error(axum::http::StatusCode::NOT_FOUND, e.to_string());
    }
    st.sessions.end_for_token(&token_id);
    tracing::info!(token_id, by = session.token_id, "token revoked from the dashboard");
    Redirect::to("/tokens").into_response()
}
