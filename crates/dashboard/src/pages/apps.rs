//! The apps list (filter by state, search by name or description) and one app's page.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use minijinja::context;
use serde::{Deserialize, Serialize};

use super::{not_found, state_name, NavEntry};
use crate::auth::Session;
use crate::render::{error, page};
use crate::AppState;

pub(super) const NAV: NavEntry = NavEntry { path: "/apps", title: "Apps" };

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/apps", get(list)).route("/apps/{app_id}", get(app))
}

#[derive(Deserialize)]
struct Filter {
    #[serde(default)]
    q: String,
    /// `live` (running, detached, deployed), `deployed`, `stopped`, or empty for all.
    #[serde(default)]
    state: String,
}

#[derive(Serialize)]
struct AppRow {
    id: String,
    name: String,
    description: String,
    environment: String,
    state: &'static str,
    created_at: f64,
    stopped_at: Option<f64>,
    containers: usize,
}

async fn list(State(st): State<AppState>, session: Session, Query(f): Query<Filter>) -> Response {
    let envs = match st.store.list_environments().await {
        Ok(e) => e,
        Err(e) => return error(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let containers = st.live.containers();
    let q = f.q.trim().to_lowercase();
    let mut rows = Vec::new();
    for env in envs {
        for a in st.store.list_apps(&env.name).await.unwrap_or_default() {
            let keep_state = match f.state.as_str() {
                "live" => a.state.is_live(),
                "deployed" => a.state == ferry_store::AppState::Deployed,
                "stopped" => !a.state.is_live(),
                _ => true,
            };
            let name = a.name.clone().unwrap_or_default();
            let keep_q = q.is_empty()
                || a.id.to_lowercase().contains(&q)
                || name.to_lowercase().contains(&q)
                || a.description.to_lowercase().contains(&q);
            if keep_state && keep_q {
                rows.push(AppRow {
                    containers: containers.iter().filter(|c| c.app_id == a.id).count(),
                    id: a.id,
                    name,
                    description: a.description,
                    environment: env.name.clone(),
                    state: state_name(a.state),
                    created_at: a.created_at,
                    stopped_at: a.stopped_at,
                });
            }
        }
    }
    rows.sort_by(|a, b| b.created_at.total_cmp(&a.created_at));
    page(&st, "apps.html", Some(&session), context! { apps => rows, q => f.q, state => f.state })
}

#[derive(Serialize)]
struct FunctionRow {
    id: String,
    tag: String,
    queued: usize,
    running: usize,
    containers: usize,
}

async fn app(State(st): State<AppState>, session: Session, Path(app_id): Path<String>) -> Response {
    let Ok(app) = st.store.app(&app_id).await else { return not_found("App", &app_id) };
    let loads = st.live.function_loads();
    let containers: Vec<_> = st.live.containers().into_iter().filter(|c| c.app_id == app.id).collect();
    let functions: Vec<FunctionRow> = st
        .store
        .functions_of_app(&app.id)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f.base_id.is_none())
        .map(|f| {
            let load = loads.iter().find(|l| l.function_id == f.id);
            FunctionRow {
                queued: load.map_or(0, |l| l.queued),
                running: load.map_or(0, |l| l.running),
                containers: containers.iter().filter(|c| c.function_id == f.id).count(),
                id: f.id,
                tag: f.tag,
            }
        })
        .collect();
    let classes: Vec<String> =
        st.store.classes_of_app(&app.id).await.unwrap_or_default().into_iter().map(|(_, tag)| tag).collect();
    let logs = st.store.logs_in_range(&app.id, 0.0, f64::MAX, 50).await.unwrap_or_default();
    let logs: Vec<_> = logs.into_iter().map(|l| context! { text => l.data, fd => l.fd, task_id => l.task_id }).collect();
    let env_name = st.store.environment_by_id(&app.environment_id).await.map(|e| e.name).unwrap_or_default();
    page(
        &st,
        "app.html",
        Some(&session),
        context! {
            app => context! {
                id => app.id, name => app.name, description => app.description, state => state_name(app.state),
                created_at => app.created_at, stopped_at => app.stopped_at, environment => env_name,
            },
            functions => functions,
            classes => classes,
            containers => containers,
            logs => logs,
        },
    )
}
