//! Ferry's web dashboard: server-rendered pages over the [`Store`] plus a [`Live`] snapshot of
//! what the API server holds in memory (running containers, queued and running inputs), and the
//! Prometheus `/metrics` endpoint.
//!
//! It knows no wire types: the API crate implements [`Live`] with plain data. Each page is one
//! module under [`pages`] with its own routes and template; `pages::all()` lists them, and the
//! navigation bar follows that list.

mod auth;
pub mod live;
pub mod metrics;
mod pages;
mod render;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use ferry_store::Store;
use tokio::net::TcpListener;

pub use live::{ContainerView, FunctionLoad, InputView, Live, NoLive};

/// Settings of the dashboard server.
#[derive(Clone, Debug)]
pub struct DashboardConfig {
    /// The dashboard's own base URL (what links the client prints start with).
    pub public_url: String,
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Store,
    pub live: Arc<dyn Live>,
    pub sessions: Arc<auth::Sessions>,
    pub templates: Arc<minijinja::Environment<'static>>,
}

/// The dashboard's routes, ready to serve.
pub fn router(store: Store, live: Arc<dyn Live>, config: DashboardConfig) -> Router {
    let secure = config.public_url.starts_with("https://") || is_loopback_url(&config.public_url);
    let state = AppState {
        store,
        live,
        sessions: Arc::new(auth::Sessions::new(secure)),
        templates: Arc::new(render::environment()),
    };
    pages::all(state)
}

/// Serves the dashboard on `listener` until `shutdown` resolves.
pub async fn serve(
    store: Store,
    live: Arc<dyn Live>,
    config: DashboardConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(store, live, config);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Browsers accept `Secure` cookies over plain HTTP only from loopback hosts.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.strip_prefix("http://").unwrap_or("");
    rest.starts_with("127.") || rest.starts_with("localhost") || rest.starts_with("[::1]")
}
