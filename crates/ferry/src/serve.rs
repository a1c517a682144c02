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
    /// PEM certificate chain: serve https:// (needs --tls-key). Without it, a non-loopback
    /// --host gets a certificate signed by the data dir's own authority (DATA_DIR/tls/ca.pem).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where Ferry keeps bytes (blobs, volume blocks, mount files, image layers): `local` (the
    /// data dir) or `s3://BUCKET?endpoint=URL&region=REGION` for S3-compatible storage, with
    /// credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "FERRY_STORAGE", default_value = "local")]
    storage: ferry_blobs::StorageConfig,
    /// Serve plain h2c even on a non-loopback --host (only behind a proxy that terminates TLS).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    no_tls: bool,
    /// Requests per second each token (or container) may make, sustained; 0 for no limit.
    /// Over it, calls answer RESOURCE_EXHAUSTED and the client waits before retrying.
    #[arg(long, default_value_t = 5000.0)]
    rate_limit: f64,
    /// Requests a token may make at once above --rate-limit.
    #[arg(long, default_value_t = 10000.0)]
    rate_burst: f64,
    /// The largest request message accepted, in MiB (larger ones answer RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 128)]
    max_request_mib: usize,
    /// URL clients use to reach this server, when it differs from the listening address
    /// (behind a proxy or a DNS name).
    #[arg(long)]
    public_url: Option<String>,
    /// Seconds a replica on a shared database (`--database`) keeps its function calls after
    /// its last heartbeat; then another replica adopts them (docs/cluster.md).
    #[arg(long, env = "FERRY_REPLICA_LEASE_SECS", default_value_t = 15.0)]
    replica_lease_secs: f64,
    /// `full` fsyncs every commit; `normal` survives crashes but may lose the last commits on power loss.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Full)]
    durability: DurabilityArg,
    /// Seconds after the last heartbeat before an ephemeral Dict, Queue or Secret is reclaimed.
    #[arg(long, default_value_t = 900)]
    ephemeral_ttl_secs: u64,
    /// Seconds after the last client heartbeat before an ephemeral app is stopped.
    #[arg(long, default_value_t = 120)]
    app_heartbeat_ttl_secs: u64,
    /// Port of the Sandbox command router (exec into Sandboxes); 0 picks a free one. It
    /// listens on the same address as the API.
    #[arg(long, default_value_t = 0)]
    router_port: u16,
    /// Do not add the `ferry` profile to the modal config file.
    #[arg(long)]
    no_modal_profile: bool,
    /// Port of the web endpoint gateway (HTTP) [default: --port + 1; a free one with --port 0].
    /// Keep it fixed: deployed endpoints' URLs name it.
    #[arg(long)]
    web_port: Option<u16>,
    /// Suffix for host-based web URLs, `http://<label>.SUFFIX` (wildcard DNS pointing at the
    /// gateway, or a proxy in front of it); may carry a scheme and a port, as in
    /// `https://apps.example.com`. Without it URLs are path-based: `http://HOST:WEB_PORT/<label>`.
    #[arg(long)]
    web_suffix: Option<String>,
    /// Seconds a web request waits for its response to start before it gets a 303 redirect
    /// to poll for the result.
    #[arg(long, default_value_t = 150)]
    web_redirect_secs: u64,
    /// Port of the web dashboard and `/metrics` (plain HTTP, same address as --host)
    /// [default: --port + 2, or a free port when --port is 0].
    #[arg(long)]
    dashboard_port: Option<u16>,
    /// Do not serve the web dashboard (app links then point at the API address).
    #[arg(long, conflicts_with = "dashboard_port")]
    no_dashboard: bool,
    /// Port on which worker hosts (`ferry worker --server http://HOST:PORT`) register and take
    /// tasks (plain HTTP, same address as --host); without it no worker can join. See
    /// docs/cluster.md.
    #[arg(long)]
    fleet_port: Option<u16>,
    /// Run no containers on this host: every task goes to a worker host.
    #[arg(long, requires = "fleet_port")]
    no_local_containers: bool,
    /// Seconds without a heartbeat before a worker host is declared lost and the inputs its
    /// containers held run again elsewhere.
    #[arg(long, default_value_t = 30.0)]
    worker_timeout_secs: f64,
    #[command(flatten)]
    gpu: crate::gpus::GpuArgs,
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    pool: PoolArgs,
}

/// Standby task containers: containers started before a task needs them, whose Python has
/// already imported the modal container runtime, so a cold start skips that import.
#[derive(Args, Clone)]
pub struct PoolArgs {
    /// Standby containers kept ready per image and resource shape, once a function on that
    /// image has run; 0 turns the pool off.
    #[arg(long, default_value_t = 1)]
    pool_per_image: usize,
    /// Standby containers at most, all images together.
    #[arg(long, default_value_t = 4)]
    pool_max: usize,
    /// Seconds without a task for an image before its standby containers are stopped.
    #[arg(long, default_value_t = 300)]
    pool_idle_secs: u64,
}

impl PoolArgs {
    pub(crate) fn config(&self) -> ferry_worker::PoolConfig {
        ferry_worker::PoolConfig { per_image: self.pool_per_image, max_total: self.pool_max, idle: Duration::from_secs(self.pool_idle_secs.max(1)) }
    }
}

/// Where image builds get packages and registry images from.
#[derive(Args, Clone, Default)]
pub struct ImageArgs {
    /// Registry images (`Image.from_registry`) come from here: NAME is a registry as image
    /// references name it, or `default` for references without a registry host; URL is
    /// http(s)://HOST[:PORT]. Repeatable.
    #[arg(long = "registry-mirror", value_name = "NAME=URL", env = "FERRY_REGISTRY_MIRRORS", value_delimiter = ',')]
    registry_mirrors: Vec<String>,
    /// A file of NAME=URL lines, read like --registry-mirror.
    #[arg(long = "registry-config", value_name = "FILE", env = "FERRY_REGISTRY_CONFIG")]
    registry_config: Option<PathBuf>,
    /// Do not pass the host's package-index settings (pip, uv, CA bundle, proxies, apt) to build steps.
    #[arg(long)]
    no_host_package_access: bool,
    /// Refuse images that ask for a Python series Ferry does not make (3.11 and 3.13, from
    /// Debian) and no registry mirror has, instead of building them on the nearest series it
    /// makes (3.12 and 3.10 on 3.11, 3.14 on 3.13) with a line saying so in the build log.
    #[arg(long, env = "FERRY_EXACT_PYTHON")]
    exact_python: bool,
}

impl ImageArgs {
    /// The build settings these flags and the host's configuration give.
    pub fn settings(&self) -> anyhow::Result<ferry_runtime::BuildSettings> {
        let mut registries = ferry_runtime::RegistryConfig::default();
        if let Some(f) = &self.registry_config {
            registries.add_file(f).map_err(|e| anyhow::anyhow!("--registry-config: {e}"))?;
        }
        for m in &self.registry_mirrors {
            registries.add_mirror(m).map_err(|e| anyhow::anyhow!("--registry-mirror: {e}"))?;
        }
        let packages = if self.no_host_package_access { ferry_runtime::PackageAccess::none() } else { ferry_runtime::PackageAccess::from_host() };
        Ok(ferry_runtime::BuildSettings { packages, registries, exact_python: self.exact_python })
    }
}

/// What image builds get, for the start-up banner (no credentials).
pub fn describe_build_settings(settings: &ferry_runtime::BuildSettings) -> String {
    let mut out = String::new();
    let packages = settings.packages.describe();
    if packages.is_empty() {
        out.push_str("  image builds get no host package settings\n");
    } else {
        out.push_str("  image build steps get the host's package settings:\n");
        for l in packages {
            out.push_str(&format!("    {l}\n"));
        }
    }
    if settings.registries.is_empty() {
        out.push_str("  no registry mirrors: `Image.from_registry` needs --registry-mirror NAME=URL\n");
    } else {
        out.push_str("  registry mirrors:\n");
        for l in settings.registries.describe() {
            out.push_str(&format!("    {l}\n"));
        }
    }
    out
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
    let store = crate::open_store(data_dir, durability).await?;
    tracing::info!("state in {}", store.database());
    // A wrong bucket, endpoint or key stops the start here, before clients are told to connect.
    if let Err(e) = ferry_blobs::Blobs::open(&args.storage, data_dir).await {
        anyhow::bail!("cannot open the storage {}: {e}", args.storage);
    }
    let env_path = data_dir.join("client.env");
    let (token_id, token_secret) = client_token(&store, &env_path).await?;

    let listener = ferry_api::bind(SocketAddr::new(args.host, args.port)).await?;
    let port = listener.local_addr()?.port();
    let mut tls_note = String::new();
    // The data dir's authority, when it signs the API's certificate (and so `encrypted_ports`
    // tunnels): containers trust it too.
    let mut own_authority = None;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(ferry_api::TlsFiles {
            cert_pem: std::fs::read(c).map_err(|e| anyhow::anyhow!("cannot read --tls-cert {}: {e}", c.display()))?,
            key_pem: std::fs::read(k).map_err(|e| anyhow::anyhow!("cannot read --tls-key {}: {e}", k.display()))?,
        }),
        // Beyond loopback, tokens and data cross a network: TLS unless the operator says not.
        _ if !args.host.is_loopback() && !args.no_tls => {
            let names = certificate_names(args.host, args.public_url.as_deref());
            let own = ferry_api::tls::self_signed(data_dir, &names)?;
            tls_note = format!(
                "  TLS with a certificate from this data dir's authority {ca} (SHA-256 {fp}), for {names};\n\
                 \x20   the modal client trusts the CA bundle of the `certifi` package (not SSL_CERT_FILE), so on each\n\
                 \x20   client machine run: cat ca.pem >> \"$(python -m certifi)\"  (with the client's python)\n",
                ca = own.ca_path.display(),
                fp = own.ca_fingerprint,
                names = names.join(", "),
            );
            own_authority = Some(own.ca_path.clone());
            Some(own.files)
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server_url = args.public_url.clone().unwrap_or_else(|| url_for(args.host, port, scheme));
    let web_port = args.web_port.unwrap_or(if port == 0 || args.port == 0 { 0 } else { port.checked_add(1).unwrap_or(0) });
    let web_listener = ferry_api::bind(SocketAddr::new(args.host, web_port)).await?;
    let web_url = url_for(args.host, web_listener.local_addr()?.port(), "http");
    // Web endpoint URLs on the host's loopback work from containers too (a function calling
    // another app's endpoint by its `get_web_url()`), as public URLs do on Modal: containers
    // with network access see that one port on their own loopback.
    let web_bound = web_listener.local_addr()?.port();
    let _web_port_shared = args.host.is_loopback().then(|| ferry_runtime::share_loopback_port(web_bound));
    let dashboard = if args.no_dashboard {
        None
    } else {
        let port = args.dashboard_port.unwrap_or(if port == 0 || args.port == 0 { 0 } else { port.saturating_add(2) });
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

    let images = args.images.settings()?;
    let images_note = describe_build_settings(&images);
    let api_config = ferry_api::ApiConfig {
        public_url: server_url.clone(),
        ephemeral_ttl: Duration::from_secs(args.ephemeral_ttl_secs),
        app_heartbeat_ttl: Duration::from_secs(args.app_heartbeat_ttl_secs),
        web: ferry_api::WebConfig {
            base_url: web_url.clone(),
            host_suffix: args.web_suffix.clone(),
            redirect_after: Duration::from_secs(args.web_redirect_secs),
        },
        router_port: args.router_port,
        images,
        gpu_inventory: args.gpu.inventory()?,
        dashboard_url: dashboard.as_ref().map(|(_, url)| url.clone()),
        limits: ferry_api::gateway::Limits {
            rate_per_sec: args.rate_limit.max(0.0),
            burst: args.rate_burst.max(1.0),
            max_request_bytes: args.max_request_mib.clamp(1, 2047) * 1024 * 1024,
        },
        containers_use_socket: false,
        replica_lease: Duration::from_secs_f64(args.replica_lease_secs.clamp(1.0, 3600.0)),
        pool: args.pool.config(),
        storage: args.storage.clone(),
        fleet: None,
        trusted_ca: own_authority,
    };
    let mut api_config = api_config;
    // Worker hosts: their endpoint and the loop that declares silent ones lost.
    let _fleet_tasks = match args.fleet_port {
        Some(fleet_port) => {
            let fleet = ferry_fleet::Fleet::new(
                store.clone(),
                ferry_fleet::FleetConfig {
                    heartbeat_timeout: Duration::from_secs_f64(args.worker_timeout_secs.max(0.5)),
                    local_containers: !args.no_local_containers,
                    ..Default::default()
                },
            );
            let listener = ferry_api::bind(SocketAddr::new(args.host, fleet_port)).await?;
            // The fleet port speaks TLS when the API does, with the same certificate.
            let fleet_tls = tls.as_ref().map(|t| (t.cert_pem.as_slice(), t.key_pem.as_slice()));
            println!("Ferry takes worker hosts at {scheme}://{}:{}", url_host(args.host), listener.local_addr()?.port());
            api_config.fleet = Some(fleet.clone());
            Some((ferry_fleet::server::spawn(fleet.clone(), listener, fleet_tls)?, fleet.spawn_monitor()))
        }
        None => None,
    };
    let web_note = match &args.web_suffix {
        Some(_) => format!(" (URLs: {})", api_config.web.url("<label>")),
        None => String::new(),
    };
    println!("Ferry serves web endpoints at {web_url}{web_note}");
    println!(
        "Ferry is serving the Modal API at {server_url} (data dir {})\n\
         {}  client settings in {}:\n\
         \x20   MODAL_SERVER_URL={server_url}\n\
         \x20   MODAL_TOKEN_ID={}\n\
         \x20   MODAL_TOKEN_SECRET=<in the file>\n\
         Try: MODAL_PROFILE=ferry modal dict list\n{tls_note}{images_note}",
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
    ferry_api::serve(store, api_config, listener, Some(web_listener), dashboard, tls, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// `scheme://host:port` for a listening address (loopback for an unspecified one).
fn url_for(host: IpAddr, port: u16, scheme: &str) -> String {
    format!("{scheme}://{}:{port}", url_host(host))
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

/// The names a generated server certificate covers: the listening address (loopback and this
/// host's name for a wildcard one) and the host of --public-url.
fn certificate_names(host: IpAddr, public_url: Option<&str>) -> Vec<String> {
    let mut names = Vec::new();
    if host.is_unspecified() {
        names.extend(["127.0.0.1".to_string(), "::1".to_string(), "localhost".to_string()]);
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            names.push(h.trim().to_string());
        }
    } else {
        names.push(host.to_string());
    }
    if let Some(url) = public_url {
        let authority = url.split_once("://").map_or(url, |(_, rest)| rest).split('/').next().unwrap_or("");
        let h = match authority.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => authority,
        };
        names.push(h.trim_start_matches('[').trim_end_matches(']').to_string());
    }
    names.retain(|n| !n.is_empty());
    names.dedup();
    names
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
