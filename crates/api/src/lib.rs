//! The protocol adapter: serves `modal.client.ModalClient` to the unmodified Modal client.
//!
//! This is the only crate that knows the Modal wire types. Each RPC family lives in its own
//! module and translates between wire messages and [`ferry_store::Store`] calls; errors are
//! mapped to gRPC statuses in one place ([`status`]). The [`gateway`] layer in front of the
//! service authenticates every call and replays retried calls by their idempotency key.

pub mod gateway;
mod apps;
mod blobs;
mod classes;
mod container;
mod functions;
mod images;
mod launch;
mod live;
mod mounts;
mod scheduler;
mod dicts;
mod environments;
mod objects;
mod queues;
mod secrets;
mod service;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::api::modal_client_server::ModalClientServer;
use ferry_store::Store;
use tokio::net::TcpListener;

pub use service::ModalService;

/// The image builder version reported to clients (see ARCHITECTURE.md for the choice).
pub const IMAGE_BUILDER_VERSION: &str = "2025.06";

/// The largest gRPC message accepted, matching the client's own ceiling for inline payloads
/// plus room for batched Dict updates.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// Settings of one API server.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// URL clients and containers use to reach this server.
    pub public_url: String,
    /// Ephemeral objects are reclaimed this long after their last heartbeat.
    pub ephemeral_ttl: Duration,
    /// Ephemeral apps are stopped this long after their client's last heartbeat.
    pub app_heartbeat_ttl: Duration,
    /// Base URL of the web dashboard; app links the client prints point there.
    pub dashboard_url: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            public_url: String::new(),
            ephemeral_ttl: Duration::from_secs(900),
            app_heartbeat_ttl: Duration::from_secs(120),
            dashboard_url: None,
        }
    }
}

/// TLS material for serving `https://`.
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Serves the Modal API on `listener` until `shutdown` resolves.
pub async fn serve(
    store: Store,
    config: ApiConfig,
    listener: TcpListener,
    tls: Option<TlsFiles>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_with_dashboard(store, config, listener, tls, None, shutdown).await
}

/// Serves the Modal API on `listener` and, when given a listener, the web dashboard and
/// `/metrics` beside it (plain HTTP/1.1 on its own port), until `shutdown` resolves.
pub async fn serve_with_dashboard(
    store: Store,
    config: ApiConfig,
    listener: TcpListener,
    tls: Option<TlsFiles>,
    dashboard: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let modal = ModalService::new(store.clone(), config.clone())?;
    let dashboard = dashboard.map(|l| {
        let live: Arc<dyn ferry_dashboard::Live> = Arc::new(live::LiveState(modal.clone()));
        let public_url = config.dashboard_url.clone().unwrap_or_default();
        let dash = ferry_dashboard::serve(store.clone(), live, ferry_dashboard::DashboardConfig { public_url }, l, std::future::pending());
        tokio::spawn(async move {
            if let Err(e) = dash.await {
                tracing::error!("dashboard stopped: {e:#}");
            }
        })
    });
    spawn_reaper(modal.clone());
    // Large payloads go over HTTP on a second port of the same host; it stops when this returns.
    let _blob_server = blobs::spawn_blob_server(store.data_dir(), listener.local_addr()?.ip(), &config.public_url).await?;
    let service = ModalClientServer::new(modal)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let builder = || {
        tonic::transport::Server::builder()
            .initial_stream_window_size(Some(16 * 1024 * 1024))
            .initial_connection_window_size(Some(64 * 1024 * 1024))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
    };
    // Containers without a network (`block_network`) reach the API through a unix socket
    // bound into them.
    let socket = container_socket(store.data_dir());
    let _ = std::fs::remove_file(&socket);
    let uds = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", socket.display()))?;
    let unix_server = tokio::spawn(
        builder()
            .layer(gateway::GatewayLayer::new(store.clone()))
            .add_service(service.clone())
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(uds)),
    );
    let mut builder = builder();
    if let Some(tls) = tls {
        let identity = tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    builder
        .layer(gateway::GatewayLayer::new(store))
        .add_service(service)
        // Socket options must be set on each accepted connection: without TCP_NODELAY, a
        // response of more than a packet waits for the client's delayed ACK (~40 ms).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60))),
            shutdown,
        )
        .await?;
    unix_server.abort();
    if let Some(d) = dashboard {
        d.abort();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The unix socket containers without a network use to reach the API.
pub(crate) fn container_socket(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("ferry.sock")
}

/// Binds `addr`; port 0 picks a free port.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Reclaims expired ephemeral objects and apps, and expired queue partitions, in the background.
fn spawn_reaper(modal: ModalService) {
    let (store, config) = (modal.store.clone(), modal.config.clone());
    tokio::spawn(async move {
        let period = (config.ephemeral_ttl / 4).clamp(Duration::from_millis(500), Duration::from_secs(30));
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            match store.reap_apps(config.app_heartbeat_ttl.as_secs_f64()).await {
                Ok(stopped) => {
                    for app_id in stopped {
                        tracing::info!(app_id, "stopping app whose client stopped sending heartbeats");
                        launch::stop_app(&modal, &app_id);
                    }
                }
                Err(e) => tracing::warn!("reaping stale apps failed: {e}"),
            }
            match store.reap(config.ephemeral_ttl.as_secs_f64()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("reclaimed {n} ephemeral or app-owned objects"),
                Err(e) => tracing::warn!("reaping ephemeral objects failed: {e}"),
            }
        }
    });
}
