//! One function: its load now, containers, and the inputs the server remembers with their
//! status, durations and tracebacks.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use minijinja::context;

use super::not_found;
use crate::auth::Session;
use crate::render::page;
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/functions/{function_id}", get(function))
}

/// The `p`-th percentile (0..=100) of sorted values, nearest rank.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

async fn function(State(st): State<AppState>, session: Session, Path(function_id): Path<String>) -> Response {
    let Ok(f) = st.store.function(&function_id).await else { return not_found("Function", &function_id) };
    let app = st.store.app(&f.app_id).await.ok();
    let load = st.live.function_loads().into_iter().find(|l| l.function_id == f.id).unwrap_or_default();
    let containers: Vec<_> = st.live.containers().into_iter().filter(|c| c.function_id == f.id).collect();
    let inputs = st.live.inputs(&f.id, 200);
    let succeeded = inputs.iter().filter(|i| i.status == "success").count();
    let failed = inputs.iter().filter(|i| i.finished_at.is_some() && i.status != "success").count();
    let mut durations: Vec<f64> = inputs.iter().filter_map(|i| i.duration_s).collect();
    durations.sort_by(f64::total_cmp);
    page(
        &st,
        "function.html",
        Some(&session),
        context! {
            function => context! { id => f.id, tag => f.tag, app_id => f.app_id },
            app_name => app.as_ref().and_then(|a| a.name.clone()).or(app.map(|a| a.description)),
            load => load,
            containers => containers,
            inputs => inputs,
            succeeded => succeeded,
            failed => failed,
            p50 => percentile(&durations, 50.0),
            p95 => percentile(&durations, 95.0),
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(super::percentile(&v, 50.0), Some(10.0));
        assert_eq!(super::percentile(&v, 95.0), Some(19.0));
        assert_eq!(super::percentile(&[], 50.0), None);
    }
}
