//! The protocol adapter: serves `modal.client.ModalClient` to the unmodified Modal client.
//!
//! This is the only crate that knows the Modal wire types. Each RPC family lives in its own
//! module and translates between wire messages and [`ferry_store::Store`] calls; errors are
//! mapped to gRPC statuses in one place ([`status`]). The [`gateway`] layer in front of the
//! service authenticates every call and replays retried calls by their idempotency key.

pub mod access;
pub mod gateway;
pub mod tls;
mod apps;
mod autoscaler;
mod blobs;
mod call_graph;
mod classes;
mod container;
mod flash;
mod functions;
mod gpus;
mod images;
mod launch;
mod live;
mod mounts;
mod nfs;
mod scheduler;
mod schedules;
mod dicts;
mod environments;
mod objects;
mod queues;
mod sandboxes;
mod secrets;
mod service;
mod status;
mod tunnels;
mod web;
mod volumes;
mod workers;
mod workspace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::api::modal_client_server::ModalClientServer;
use ferry_store::Store;
use tokio::net::TcpListener;

pub use images::debian_slim_spec;
pub use service::ModalService;
pub use web::WebConfig;

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
    /// Web endpoints: their URLs and the gateway's limits.
    pub web: WebConfig,
    /// Port of the Sandbox command router (0 picks a free one); it listens on the API's address.
    pub router_port: u16,
    /// Package access and registry mirrors for image builds.
    pub images: ferry_runtime::BuildSettings,
    /// The host's GPUs (`ferry_gpu::Inventory::detect`); none by default.
    pub gpu_inventory: ferry_gpu::Inventory,
    /// Base URL of the web dashboard; app links the client prints point there.
    pub dashboard_url: Option<String>,
    /// Per-token rate limits and the largest request accepted.
    pub limits: gateway::Limits,
    /// Containers reach the API through the data dir's unix socket even with a network (set by
    /// [`serve`] when the API speaks TLS).
    pub containers_use_socket: bool,
    /// Standby task containers kept ready per image (cold starts); off by default.
    pub pool: ferry_worker::PoolConfig,
    /// Where bytes live: the data dir (default) or an S3-compatible bucket (`--storage`).
    pub storage: ferry_blobs::StorageConfig,
    /// Worker hosts (`ferry worker`) this server places containers on; none by default.
    pub fleet: Option<ferry_fleet::Fleet>,
    /// How long this replica keeps its function calls after its last heartbeat when replicas
    /// share a database; then another adopts them (docs/cluster.md).
    pub replica_lease: Duration,
    /// A certificate authority (PEM file) containers and Sandboxes trust besides their
    /// image's own: the data dir's own authority when it signs the API's certificate, and so
    /// the `encrypted_ports` tunnels. [`serve`] sets it when the API has no certificate, since
    /// that authority then signs the tunnels' certificate alone.
    pub trusted_ca: Option<std::path::PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            public_url: String::new(),
            ephemeral_ttl: Duration::from_secs(900),
            app_heartbeat_ttl: Duration::from_secs(120),
            web: WebConfig::default(),
            router_port: 0,
            images: Default::default(),
            gpu_inventory: ferry_gpu::Inventory::none(),
            dashboard_url: None,
            limits: gateway::Limits::default(),
            containers_use_socket: false,
            pool: ferry_worker::PoolConfig::off(),
            storage: ferry_blobs::StorageConfig::Local,
            fleet: None,
            replica_lease: Duration::from_secs(15),
            trusted_ca: None,
        }
    }
}

/// TLS material for serving `https://`.
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Serves the Modal API on `listener`, web endpoints on `web_listener` and, when given a
/// listener, the web dashboard and `/metrics` (plain HTTP/1.1 on its own port), until
/// `shutdown` resolves.
pub async fn serve(
    store: Store,
    config: ApiConfig,
    listener: TcpListener,
    web_listener: Option<TcpListener>,
    dashboard: Option<TcpListener>,
    tls: Option<TlsFiles>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut config = config;
    config.containers_use_socket |= tls.is_some();
    if tls.is_none() && config.trusted_ca.is_none() {
        config.trusted_ca = Some(crate::tls::authority(store.data_dir())?);
    }
    let config = Arc::new(config);
    let router_tls = tls.as_ref().map(|t| (t.cert_pem.clone(), t.key_pem.clone()));
    let modal = ModalService::new(store.clone(), config.clone()).await?;
    let volumes = (*modal.volumes).clone();
    let (sandboxes, router) = start_sandboxes(&store, volumes, &config, listener.local_addr()?.ip(), router_tls).await?;
    let modal = modal.with_sandboxes(sandboxes);
    // Inputs queued before a restart (those that were running included) get containers again.
    launch::resume(&modal);
    // Inputs adopted from a replica whose lease ran out, or handed over by another replica,
    // get containers the same way; calls cancelled through another replica are cancelled here.
    let adopted = {
        let modal = modal.clone();
        let woken = modal.scheduler.adopted();
        tokio::spawn(async move {
            loop {
                woken.notified().await;
                // Calls of this replica that a client cancelled through another one.
                for (call_id, reason) in modal.scheduler.take_cancelled_elsewhere() {
                    let why = format!("Function call {call_id} was cancelled");
                    match modal.scheduler.cancel_call(&call_id, &reason, scheduler::cancelled_result(&why)).await {
                        Ok(tasks) if reason == functions::CANCEL_TERMINATING => functions::terminate(&modal, tasks),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(call_id, "cannot cancel: {e}"),
                    }
                }
                launch::resume(&modal);
            }
        })
    };
    // With replicas, an app stopped through another replica stops here too: its containers
    // here exit and its calls in flight here are cancelled.
    let follower = store.is_shared().then(|| {
        let modal = modal.clone();
        tokio::spawn(async move {
            let mut stopped = std::collections::HashSet::new();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let mut apps: Vec<String> = modal.scheduler.all_tasks().into_iter().map(|t| t.app_id).collect();
                apps.sort();
                apps.dedup();
                stopped.retain(|a| apps.contains(a));
                for app_id in apps {
                    if stopped.contains(&app_id) {
                        continue;
                    }
                    if modal.store.app(&app_id).await.is_ok_and(|a| !a.state.is_live()) {
                        launch::stop_app(&modal, &app_id);
                        stopped.insert(app_id);
                    }
                }
            }
        })
    });
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
    // The one loop that fires `Function.schedule` ticks; stopped below when serving ends.
    let (stop_schedules, schedule_loop) = schedules::spawn(modal.clone());
    restore_deployments(modal.clone());
    // Large payloads go over HTTP on a second port of the same host; it stops when this returns.
    let _blob_server =
        blobs::spawn_blob_server(store.data_dir(), modal.blobs.clone(), modal.volumes.blocks().clone(), listener.local_addr()?.ip(), &config.public_url).await?;
    let web_server = web_listener.map(|l| web::spawn(&modal, l));
    let gateway = gateway::GatewayLayer::with_limits(store.clone(), config.limits);
    let scheduler = modal.scheduler.clone();
    let service = ModalClientServer::new(modal)
        .max_decoding_message_size(config.limits.max_request_bytes)
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
            .layer(gateway.clone())
            .add_service(service.clone())
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(uds)),
    );
    // Containers reach the API on a port of their own loopback (`launch::control_plane_forwards`).
    // Those connections are served here as they are, not carried over a second connection to
    // `listener` (with TLS, containers use the unix socket instead).
    let forwarded = match tls {
        None => {
            let addr = listener.local_addr()?;
            let mut targets = vec![addr];
            if addr.ip().is_unspecified() {
                targets.push(SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()));
            }
            let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(ferry_runtime::serve_forwards_in_process(&targets));
            let incoming = tokio_stream::StreamExt::map(incoming, Ok::<_, std::io::Error>);
            Some(tokio::spawn(builder().layer(gateway.clone()).add_service(service.clone()).serve_with_incoming(incoming)))
        }
        Some(_) => None,
    };
    let mut builder = builder();
    if let Some(tls) = tls {
        let identity = tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem);
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    builder
        .layer(gateway)
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
    // Writes nobody waited for (answers already shown, forgotten calls) commit before the exit.
    if let Err(e) = scheduler.flush().await {
        tracing::warn!("cannot record the last function call state: {e}");
    }
    // Another replica on the database adopts this one's calls at once.
    adopted.abort();
    if let Some(f) = follower {
        f.abort();
    }
    scheduler.retire().await;
    unix_server.abort();
    if let Some(f) = forwarded {
        f.abort();
    }
    let _ = stop_schedules.send(());
    let _ = schedule_loop.await;
    if let Some(w) = web_server {
        w.abort();
    }
    router.abort();
    if let Some(d) = dashboard {
        d.abort();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Starts the Sandbox command router on its own port of the API's address, with the API's TLS
/// identity when it has one. Its URL uses the host clients reach the API at (the client
/// accepts plain http for it only when that host is local).
async fn start_sandboxes(
    store: &Store,
    volumes: ferry_volumes::Volumes,
    config: &ApiConfig,
    ip: std::net::IpAddr,
    tls: Option<(Vec<u8>, Vec<u8>)>,
) -> anyhow::Result<(ferry_sandbox::Sandboxes, tokio::task::JoinHandle<()>)> {
    let listener = ferry_sandbox::router::bind(SocketAddr::new(ip, config.router_port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for the Sandbox router on {ip}:{}: {e}", config.router_port))?;
    let port = listener.local_addr()?.port();
    let host = config
        .public_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(|authority| match authority.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
            _ => authority.to_string(),
        })
        .unwrap_or_else(|| ip.to_string());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let tunnel_host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    // `encrypted_ports` terminate TLS with the server's certificate; a server without one
    // (plain http on loopback) uses a certificate of its data dir's own authority for them.
    let tunnel_tls = match &tls {
        Some(t) => Some(t.clone()),
        None => {
            let own = crate::tls::self_signed(store.data_dir(), std::slice::from_ref(&tunnel_host))?;
            Some((own.files.cert_pem, own.files.key_pem))
        }
    };
    let sandbox_config = ferry_sandbox::SandboxConfig {
        router_url: format!("{scheme}://{host}:{port}"),
        tunnel_bind: ip,
        tunnel_host,
        tls: tunnel_tls,
        trusted_ca: config.trusted_ca.clone(),
        ..Default::default()
    };
    let images = ferry_runtime::ImageStore::open(store.data_dir())?;
    let sandboxes = ferry_sandbox::Sandboxes::open(store.clone(), images, volumes, sandbox_config).await?;
    let router = {
        let sandboxes = sandboxes.clone();
        tokio::spawn(async move {
            if let Err(e) = ferry_sandbox::router::serve(sandboxes, listener, tls).await {
                tracing::error!("the Sandbox router stopped: {e}");
            }
        })
    };
    tracing::info!(port, "Sandbox command router listening");
    Ok((sandboxes, router))
}

/// The unix socket containers without a network use to reach the API.
pub(crate) fn container_socket(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("ferry.sock")
}

/// Binds `addr`; port 0 picks a free port.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Deployed apps outlive the server: their `min_containers` start again with it.
fn restore_deployments(modal: ModalService) {
    tokio::spawn(async move {
        match modal.store.deployed_app_ids().await {
            Ok(ids) => {
                for app_id in ids {
                    launch::warm_up(&modal, &app_id).await;
                }
            }
            Err(e) => tracing::warn!("cannot list deployed apps: {e}"),
        }
    });
}

/// Reclaims expired ephemeral objects and apps, and expired queue partitions, in the background.
fn spawn_reaper(modal: ModalService) {
    // Detached apps whose client left stop soon after their last call ends.
    let detached = modal.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            if let Err(e) = apps::stop_finished_detached_apps(&detached).await {
                tracing::warn!("stopping finished detached apps failed: {e}");
            }
        }
    });
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
