//! Secrets: names and key names only. Values are never read here.

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use ferry_store::ObjectKind;
use minijinja::context;
use serde::Serialize;

use super::NavEntry;
use crate::auth::Session;
use crate::render::page;
use crate::AppState;

pub(super) const NAV: NavEntry = NavEntry { path: "/secrets", title: "Secrets" };

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/secrets", get(list))
}

#[derive(Serialize)]
struct Row {
    id: String,
    name: String,
    environment: String,
    keys: Vec<String>,
    created_at: f64,
    last_used_at: Option<f64>,
}

async fn list(State(st): State<AppState>, session: Session) -> Response {
    let mut rows = Vec::new();
    for env in st.store.list_environments().await.unwrap_or_default() {
        for o in st.store.list_objects(ObjectKind::Secret, &env.name, 0.0, 500).await.unwrap_or_default() {
            let Ok(info) = st.store.secret_info(&o.id).await else { continue };
            rows.push(Row {
                id: o.id,
                name: o.name.unwrap_or_default(),
                environment: env.name.clone(),
                keys: info.keys,
                created_at: o.created_at,
                last_used_at: info.last_used_at,
            });
        }
    }
    page(&st, "secrets.html", Some(&session), context! { secrets => rows })
}
