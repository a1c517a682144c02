//! `ferry serve`: opens the data dir, ensures a client token, serves the API and tells clients
//! how to connect (stdout, `DIR/client.env`, and the `ferry` profile of the modal config).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use ferry_store::{Durability, Store};

use crate::config::{self, ClientSettings};

#[derive(Args)]
pub struct ServeArgs {
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// PEM certificate chain: serve https:// (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// URL clients use to reach this server, when it differs from the listening address
    /// (behind a proxy or a DNS name).
    #[arg(long)]
    public_url: Option<String>,
    /// `full` fsyncs every commit; `normal` survives crashes but may lose the last commits on power loss.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Full)]
    durability: DurabilityArg,
    /// Seconds after the last heartbeat before an ephemeral Dict, Queue or Secret is reclaimed.
    #[arg(long, default_value_t = 900)]
    ephemeral_ttl_secs: u64,
    /// Seconds after the last client heartbeat before an ephemeral app is stopped.
    #[arg(long, default_value_t = 120)]
    app_heartbeat_ttl_secs: u64,
    /// Do not add the `ferry` profile to the modal config file.
    #[arg(long)]
    no_modal_profile: bool,
    /// Port of the web dashboard and `/metrics` (plain HTTP, same address as --host)
    /// [default: --port + 1, or a free port when --port is 0].
    #[arg(long)]
    dashboard_port: Option<u16>,
    /// Do not serve the web dashboard (app links then point at the API address).
    #[arg(long, conflicts_with = "dashboard_port")]
    no_dashboard: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Full,
    Normal,
}

pub async fn run(data_dir: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let durability = match args.durability {
        DurabilityArg::Full => Durability::Full,
        DurabilityArg::Normal => Durability::Normal,
    };
    let store = Store::open(data_dir, durability).await?;
    let env_path = data_dir.join("client.env");
    let (token_id, token_secret) = client_token(&store, &env_path).await?;

    let listener = ferry_api::bind(SocketAddr::new(args.host, args.port)).await?;
    let port = listener.local_addr()?.port();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(ferry_api::TlsFiles {
            cert_pem: std::fs::read(c).map_err(|e| anyhow::anyhow!("cannot read --tls-cert {}: {e}", c.display()))?,
            key_pem: std::fs::read(k).map_err(|e| anyhow::anyhow!("cannot read --tls-key {}: {e}", k.display()))?,
        }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server_url = args.public_url.clone().unwrap_or_else(|| format!("{scheme}://{}:{port}", url_host(args.host)));
    let dashboard = if args.no_dashboard {
        None
    } else {
        let port = args.dashboard_port.unwrap_or(if port == 0 { 0 } else { port.saturating_add(1) });
        let listener = ferry_api::bind(SocketAddr::new(args.host, port))
            .await
            .map_err(|e| anyhow::anyhow!("{e}; choose another with --dashboard-port, or --no-dashboard"))?;
        let url = format!("http://{}:{}", url_host(args.host), listener.local_addr()?.port());
        std::fs::write(data_dir.join("dashboard.url"), &url)?;
        Some((listener, url))
    };
    let settings = ClientSettings { server_url: server_url.clone(), token_id, token_secret };
    config::write_private(&env_path, settings.env_file().as_bytes())?;
    let profile_note = if args.no_modal_profile {
        String::new()
    } else {
        let path = config::modal_config_path();
        config::write_modal_profile(&path, &settings)?;
        format!("  profile `ferry` written to {}\n", path.display())
    };

    let api_config = ferry_api::ApiConfig {
        public_url: server_url.clone(),
        ephemeral_ttl: Duration::from_secs(args.ephemeral_ttl_secs),
        app_heartbeat_ttl: Duration::from_secs(args.app_heartbeat_ttl_secs),
        dashboard_url: dashboard.as_ref().map(|(_, url)| url.clone()),
    };
    println!(
        "Ferry is serving the Modal API at {server_url} (data dir {})\n\
         {}  client settings in {}:\n\
         \x20   MODAL_SERVER_URL={server_url}\n\
         \x20   MODAL_TOKEN_ID={}\n\
         \x20   MODAL_TOKEN_SECRET=<in the file>\n\
         Try: MODAL_PROFILE=ferry modal dict list",
        data_dir.display(),
        profile_note,
        env_path.display(),
        settings.token_id,
    );
    if let Some((_, url)) = &dashboard {
        println!("Dashboard and /metrics at {url} (sign in with a token id and secret)");
    }
    tracing::info!(%server_url, "ready");
    let dashboard = dashboard.map(|(l, _)| l);
    ferry_api::serve_with_dashboard(store, api_config, listener, tls, dashboard, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The host part of a URL for a listening address (loopback for a wildcard address).
fn url_host(host: IpAddr) -> String {
    match host {
        IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_string(),
        IpAddr::V6(a) if a.is_unspecified() => "[::1]".to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
        IpAddr::V4(a) => a.to_string(),
    }
}

/// Reuses the token recorded in `client.env` while it is valid; otherwise creates one.
async fn client_token(store: &Store, env_path: &Path) -> anyhow::Result<(String, String)> {
    if let Some((id, secret)) = ClientSettings::read_token(env_path) {
        if store.verify_token(&id, &secret).await? {
            return Ok((id, secret));
        }
    }
    Ok(store.create_token("ferry serve").await?)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
