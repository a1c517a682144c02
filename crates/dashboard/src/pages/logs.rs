//! An app's logs: the page, a server-sent event stream that follows them, and a text download.
//! The stream resumes after `Last-Event-ID` (the browser sends it when it reconnects).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use minijinja::context;
use serde::Deserialize;

use super::{not_found, state_name};
use crate::auth::Session;
use crate::render::page;
use crate::AppState;

const FOLLOW_POLL: Duration = Duration::from_secs(20);
const PAGE_LINES: i64 = 500;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/apps/{app_id}/logs", get(logs_page))
        .route("/apps/{app_id}/logs/stream", get(stream))
        .route("/apps/{app_id}/logs.txt", get(download))
}

#[derive(Deserialize, Default)]
struct LogQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    after: Option<i64>,
}

fn line_json(l: &ferry_store::LogEntry) -> serde_json::Value {
    serde_json::json!({ "id": l.id, "fd": l.fd, "task": l.task_id, "text": l.data })
}

async fn logs_page(State(st): State<AppState>, session: Session, Path(app_id): Path<String>, Query(q): Query<LogQuery>) -> Response {
    let Ok(app) = st.store.app(&app_id).await else { return not_found("App", &app_id) };
    let entries = st.store.logs_in_range(&app.id, 0.0, f64::MAX, PAGE_LINES).await.unwrap_or_default();
    let last_id = entries.last().map_or(0, |l| l.id);
    let lines: Vec<_> = entries.iter().map(|l| context! { id => l.id, fd => l.fd, task_id => l.task_id, text => l.data }).collect();
    page(
        &st,
        "logs.html",
        Some(&session),
        context! {
            app => context! { id => app.id, name => app.name, description => app.description, state => state_name(app.state) },
            lines => lines, last_id => last_id, q => q.q,
        },
    )
}

async fn stream(
    State(st): State<AppState>,
    _session: Session,
    Path(app_id): Path<String>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    if st.store.app(&app_id).await.is_err() {
        return not_found("App", &app_id);
    }
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok());
    let after = resume.or(q.after).unwrap_or(0);
    Sse::new(follow(st.store.clone(), app_id, after)).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response()
}

/// One event per batch of lines (`log`, data: a JSON array), and `done` once the app stopped and
/// every line was sent.
fn follow(store: ferry_store::Store, app_id: String, after: i64) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some(after), move |cursor| {
        let (store, app_id) = (store.clone(), app_id.clone());
        async move {
            let after = cursor?;
            match store.follow_logs(&app_id, after, FOLLOW_POLL).await {
                Ok((entries, _)) if !entries.is_empty() => {
                    let last = entries.last().map_or(after, |l| l.id);
                    let data = serde_json::Value::Array(entries.iter().map(line_json).collect()).to_string();
                    Some((Ok(Event::default().event("log").id(last.to_string()).data(data)), Some(last)))
                }
                Ok((_, app)) if !app.state.is_live() => {
                    Some((Ok(Event::default().event("done").data(state_name(app.state))), None))
                }
                Ok(_) => Some((Ok(Event::default().comment("waiting")), Some(after))),
                Err(e) => Some((Ok(Event::default().event("failed").data(e.to_string())), None)),
            }
        }
    })
}

async fn download(State(st): State<AppState>, _session: Session, Path(app_id): Path<String>, Query(q): Query<LogQuery>) -> Response {
    let Ok(app) = st.store.app(&app_id).await else { return not_found("App", &app_id) };
    let entries = st.store.logs_in_range(&app.id, 0.0, f64::MAX, 1_000_000).await.unwrap_or_default();
    let needle = q.q.to_lowercase();
    let mut text = String::new();
    for l in entries.iter().filter(|l| needle.is_empty() || l.data.to_lowercase().contains(&needle)) {
        text.push_str(&l.data);
        if !l.data.ends_with('\n') {
            text.push('\n');
        }
    }
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}-logs.txt\"", app.id)),
        ],
        text,
    )
        .into_response()
}
