//! The `ferry` command: serves the Modal API and administers a data dir.

mod config;
mod gpus;
mod ops;
mod serve;
mod workers;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferry", version, about = "Ferry: run Modal apps on your own machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// PostgreSQL for Ferry's state instead of the SQLite database in the data dir:
    /// postgres://USER:PASSWORD@HOST:PORT/DBNAME (prefer the environment variable: a command
    /// line is visible to every user of the host). See docs/cluster.md.
    #[arg(long, env = "FERRY_DATABASE", global = true, hide_env_values = true)]
    database: Option<String>,
}

/// The database `--database` (`FERRY_DATABASE`) names, for every command that opens the store.
static DATABASE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Opens the store: on `--database` when given, else in the data dir.
pub(crate) async fn open_store(data_dir: &std::path::Path, durability: ferry_store::Durability) -> anyhow::Result<ferry_store::Store> {
    let database = DATABASE.get().and_then(|d| d.as_deref()).filter(|d| !d.is_empty());
    Ok(ferry_store::Store::connect(data_dir, durability, database).await?)
}

/// Whether the store lives on a database server rather than in the data dir.
pub(crate) fn database_server() -> bool {
    DATABASE.get().and_then(|d| d.as_deref()).is_some_and(|d| !d.is_empty())
}

/// The data dir option every subcommand that touches state takes.
#[derive(clap::Args, Clone)]
struct DataDir {
    /// Where Ferry keeps its database, keys and caches [default: ~/.local/share/ferry].
    #[arg(long = "data-dir", env = "FERRY_DATA_DIR", global = true)]
    path: Option<PathBuf>,
}

impl DataDir {
    fn resolve(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(config::default_data_dir)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Modal API (gRPC) until interrupted.
    Serve {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(flatten)]
        args: serve::ServeArgs,
    },
    /// Manage the tokens clients authenticate with.
    Token {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(subcommand)]
        cmd: TokenCommand,
    },
    /// Manage the proxy tokens that web endpoints with `requires_proxy_auth=True` accept
    /// (sent as the `Modal-Key` and `Modal-Secret` headers).
    ProxyToken {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(subcommand)]
        cmd: ProxyTokenCommand,
    },
    /// Manage the key that seals Secret values at rest (DATA_DIR/secret.key).
    SecretKey {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(subcommand)]
        cmd: SecretKeyCommand,
    },
    /// Prepare, list and collect the images containers run on.
    Images {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(subcommand)]
        cmd: ImagesCommand,
    },
    /// List this host's GPUs and the `gpu=` type each answers to.
    Gpus {
        #[command(flatten)]
        args: gpus::GpuArgs,
    },
    /// Run this host as a worker of a remote `ferry serve` (`--server`, `--token`), or
    /// administer worker hosts: `ferry worker list|drain|undrain|remove`. See docs/cluster.md.
    Worker {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(flatten)]
        args: workers::WorkerArgs,
    },
    /// Show what a data dir's server runs and queues, and its disk and memory use.
    Status {
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Check that this host can run Ferry, and say how to fix what is missing.
    Doctor {
        #[command(flatten)]
        data_dir: DataDir,
        /// Address `ferry serve` will listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// API port to check (the web endpoints' port is the next one, the dashboard's the one after).
        #[arg(long, default_value_t = 50051)]
        port: u16,
    },
    /// Serve open-weights models behind an OpenAI-compatible API.
    Llm {
        #[command(subcommand)]
        cmd: ferry_llm::LlmCommand,
    },
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Build the Debian base with Python, the default `Image.debian_slim()` layer on it, and
    /// install the pinned modal client that containers run with, ahead of the first `modal run`.
    Prepare {
        /// Python series to prepare (repeat or comma-separate for several).
        #[arg(long, default_value = "3.11", value_delimiter = ',')]
        python: Vec<String>,
        /// Prepare only the base, not the `Image.debian_slim()` layer (which installs
        /// build-essential and takes about a minute).
        #[arg(long)]
        base_only: bool,
        #[command(flatten)]
        images: serve::ImageArgs,
    },
    /// List the layers in the image store with their size and last use.
    List,
    /// Delete least-recently-used layers until the store fits in a size budget (base layers
    /// are kept).
    Gc {
        /// The size to shrink the store to, e.g. `20G`, `500M` or a number of bytes.
        #[arg(long)]
        budget: String,
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write an image (an `im-...` id, a name published with `Image.publish` as
    /// `[ENV/]NAME:TAG`, or a layer id) with every layer under it as an OCI image layout of
    /// zstd layers, which `skopeo copy oci:DIR:TAG docker://...` pushes to a registry.
    Export {
        /// The image id, published name or layer id.
        image: String,
        /// The OCI layout directory (created; blobs already there are shared).
        #[arg(long)]
        out: std::path::PathBuf,
        /// The tag inside the layout.
        #[arg(long, default_value = "latest")]
        tag: String,
    },
}

#[derive(Subcommand)]
enum ProxyTokenCommand {
    /// Create a proxy token and print its key and secret (the secret is shown only once).
    Create {
        /// A note saying who or what the token is for.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List proxy tokens (keys and labels; secrets are never stored).
    List,
    /// Revoke a proxy token: requests bearing it are refused from then on.
    Revoke { token_id: String },
}

#[derive(Subcommand)]
enum SecretKeyCommand {
    /// Re-seal every Secret value under a fresh key, then replace the key file. Stop
    /// `ferry serve` first; a crash part-way loses nothing (the next start finishes or undoes it).
    Rotate,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print its id and secret (the secret is shown only once).
    Create {
        /// A note saying who or what the token is for.
        #[arg(long, default_value = "")]
        label: String,
        /// Allow only calls that change nothing (listing, reading, looking up).
        #[arg(long)]
        read_only: bool,
        /// Allow only calls on this environment's apps and objects.
        #[arg(long, value_name = "NAME")]
        environment: Option<String>,
        /// A token for a worker host (`ferry worker --token`), valid for the worker endpoint
        /// only, never for the Modal API.
        #[arg(long, conflicts_with_all = ["read_only", "environment"])]
        worker: bool,
    },
    /// List tokens (ids and labels; secrets are never stored).
    List {
        /// List worker tokens instead of client tokens.
        #[arg(long)]
        worker: bool,
    },
    /// Revoke a token: clients (or workers, for a worker token) using it are refused from then on.
    Revoke { token_id: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    DATABASE.set(cli.database.clone()).expect("set once");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| "info,sqlx=warn,h2=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve { data_dir, args } => serve::run(&data_dir.resolve(), args).await,
            Command::Token { data_dir, cmd } => token(&data_dir.resolve(), cmd).await,
            Command::SecretKey { data_dir, cmd: SecretKeyCommand::Rotate } => secret_key_rotate(&data_dir.resolve()).await,
            Command::ProxyToken { data_dir, cmd } => proxy_token(&data_dir.resolve(), cmd).await,
            Command::Images { data_dir, cmd: ImagesCommand::Prepare { python, base_only, images } } => {
                for series in &python {
                    images_prepare(&data_dir.resolve(), series, !base_only, &images).await?;
                }
                Ok(())
            }
            Command::Images { data_dir, cmd: ImagesCommand::List } => images_list(&data_dir.resolve()),
            Command::Images { data_dir, cmd: ImagesCommand::Gc { budget, dry_run } } => images_gc(&data_dir.resolve(), &budget, dry_run),
            Command::Images { data_dir, cmd: ImagesCommand::Export { image, out, tag } } => images_export(&data_dir.resolve(), &image, &out, &tag).await,
            Command::Gpus { args } => gpus::list(&args),
            Command::Llm { cmd } => ferry_llm::run(cmd).await,
            Command::Worker { data_dir, args } => workers::run(&data_dir.resolve(), args).await,
            Command::Status { data_dir } => ops::status(&data_dir.resolve()).await,
            Command::Doctor { data_dir, host, port } => ops::doctor(&data_dir.resolve(), host, &[port, port.saturating_add(1), port.saturating_add(2)]),
        }
    })
}

async fn images_prepare(data_dir: &std::path::Path, python: &str, default_image: bool, images: &serve::ImageArgs) -> anyhow::Result<()> {
    let (sink, mut lines) = tokio::sync::mpsc::unbounded_channel::<ferry_runtime::LogLine>();
    let printer = tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            eprintln!("{}", line.text);
        }
    });
    let started = std::time::Instant::now();
    let base = ferry_runtime::prepare_base(data_dir, python, &sink).await;
    let client = match &base {
        Ok(_) => Some(ferry_worker::prepare(data_dir, python, ferry_proto::CLIENT_VERSION, &sink).await),
        Err(_) => None,
    };
    // The layer every `Image.debian_slim()` starts with, so the first `modal run` finds it built.
    let slim = match (&base, default_image, ferry_api::debian_slim_spec(python)) {
        (Ok(_), true, Some(spec)) => {
            let builder = ferry_runtime::ImageBuilder::with_settings(ferry_runtime::ImageStore::open(data_dir)?, images.settings()?);
            Some(builder.build(&spec, &sink).await)
        }
        _ => None,
    };
    drop(sink);
    let _ = printer.await;
    let base = base?;
    let client = client.expect("prepared after the base")?;
    if let Some(slim) = slim {
        let slim = slim?;
        println!("Image.debian_slim(python_version=\"{python}\") layer {} ({})", slim.id, if slim.cached { "already built" } else { "built" });
    }
    println!(
        "base image for Python {} ready (layer {}), modal {} client in {}; took {:.0?}",
        base.python_version,
        base.layer,
        ferry_proto::CLIENT_VERSION,
        client.dir.display(),
        started.elapsed()
    );
    Ok(())
}

async fn token(data_dir: &std::path::Path, cmd: TokenCommand) -> anyhow::Result<()> {
    let store = open_store(data_dir, Default::default()).await?;
    match cmd {
        TokenCommand::Create { label, worker: true, .. } => {
            let (id, secret) = store.create_worker_token(&label).await?;
            println!("FERRY_WORKER_TOKEN={id}:{secret}");
            eprintln!("worker token {id}: give it to `ferry worker --token` (the secret is shown only once)");
        }
        TokenCommand::List { worker: true } => {
            println!("{:<28} {:<9} {:<22} label", "token id", "state", "created");
            for t in store.list_worker_tokens().await? {
                let state = if t.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{:<28} {:<9} {:<22} {}", t.token_id, state, config::format_time(t.created_at), t.label);
            }
        }
        TokenCommand::Create { label, read_only, environment, worker: false } => {
            let scope = ferry_store::TokenScope { read_only, environment };
            let (id, secret) = store.create_scoped_token(&label, &scope).await?;
            println!("MODAL_TOKEN_ID={id}\nMODAL_TOKEN_SECRET={secret}");
            if let Some(env) = &scope.environment {
                println!("MODAL_ENVIRONMENT={env}");
            }
            if !scope.is_unrestricted() {
                eprintln!("token {id} may make {} calls only", scope.describe());
            }
        }
        TokenCommand::List { worker: false } => {
            println!("{:<28} {:<9} {:<22} {:<22} {:<28} label", "token id", "state", "created", "last used", "scope");
            for t in store.list_tokens().await? {
                let state = if t.revoked_at.is_some() { "revoked" } else { "active" };
                let used = t.last_used_at.map(config::format_time).unwrap_or_else(|| "-".into());
                println!(
                    "{:<28} {:<9} {:<22} {:<22} {:<28} {}",
                    t.token_id,
                    state,
                    config::format_time(t.created_at),
                    used,
                    t.scope.describe(),
                    t.label
                );
            }
        }
        TokenCommand::Revoke { token_id } if token_id.starts_with("fw-") => {
            store.revoke_worker_token(&token_id).await?;
            println!("revoked {token_id}");
        }
        TokenCommand::Revoke { token_id } => {
            store.revoke_token(&token_id).await?;
            println!("revoked {token_id}");
        }
    }
    Ok(())
}

/// `ferry secret-key rotate`: refuses while a server uses the data dir (it holds the old key).
async fn secret_key_rotate(data_dir: &std::path::Path) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(data_dir.join("ferry.sock")).is_ok() {
        anyhow::bail!("a `ferry serve` is using {}: stop it first, then rotate the key", data_dir.display());
    }
    let store = open_store(data_dir, Default::default()).await?;
    let n = store.rotate_secret_key().await?;
    println!("re-sealed {n} secret(s) under a new key in {}", data_dir.join("secret.key").display());
    Ok(())
}

async fn proxy_token(data_dir: &std::path::Path, cmd: ProxyTokenCommand) -> anyhow::Result<()> {
    let store = open_store(data_dir, Default::default()).await?;
    match cmd {
        ProxyTokenCommand::Create { label } => {
            let (id, secret) = store.create_proxy_token(&label).await?;
            println!("Modal-Key: {id}\nModal-Secret: {secret}");
        }
        ProxyTokenCommand::List => {
            println!("{:<28} {:<12} {:<22} label", "key", "state", "created");
            for t in store.list_proxy_tokens().await? {
                let state = if t.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{:<28} {:<12} {:<22} {}", t.token_id, state, config::format_time(t.created_at), t.label);
            }
        }
        ProxyTokenCommand::Revoke { token_id } => {
            store.revoke_proxy_token(&token_id).await?;
            println!("revoked {token_id}");
        }
    }
    Ok(())
}
fn images_list(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let store = ferry_runtime::ImageStore::open(data_dir)?;
    let mut layers = store.usage()?;
    layers.sort_by_key(|l| std::cmp::Reverse(l.last_used));
    println!("{:<14} {:>10} {:<22} {:<14} what", "layer", "size", "last used", "parent");
    let mut total = 0;
    for l in &layers {
        total += l.bytes;
        let what = match &l.record.origin {
            ferry_runtime::LayerOrigin::Base { suite, python_series } => format!("base: Debian {suite}, Python {python_series}"),
            ferry_runtime::LayerOrigin::Build { commands } => {
                let first = commands.iter().skip(1).map(|c| c.as_str()).next().unwrap_or("");
                let more = commands.len().saturating_sub(2);
                let first: String = first.chars().take(60).collect();
                if more > 0 { format!("{first} (+{more} more)") } else { first }
            }
            ferry_runtime::LayerOrigin::Snapshot { container } => format!("snapshot of {container}"),
            ferry_runtime::LayerOrigin::Registry { reference, digest } => format!("{reference} {}", &digest[..digest.len().min(19)]),
        };
        let parent = l.record.parent.as_ref().map(|p| p.as_str()[..12].to_string()).unwrap_or_else(|| "-".into());
        println!("{:<14} {:>10} {:<22} {:<14} {what}", &l.record.id.as_str()[..12], human(l.bytes), config::format_time(l.last_used as f64), parent);
    }
    println!("{} layers, {} in all", layers.len(), human(total));
    Ok(())
}

async fn images_export(data_dir: &std::path::Path, image: &str, out: &std::path::Path, tag: &str) -> anyhow::Result<()> {
    let layer = match ferry_runtime::LayerId::parse(image) {
        Some(layer) => layer,
        None => {
            let store = open_store(data_dir, Default::default()).await?;
            let image_id = if image.starts_with("im-") {
                image.to_string()
            } else {
                let (env, name) = image.split_once('/').unwrap_or(("", image));
                let name = if name.contains(':') { name.to_string() } else { format!("{name}:latest") };
                let env = store.environment(env).await?;
                store.image_name(&env.id, &name).await?.ok_or_else(|| anyhow::anyhow!("no image is published as {name} in environment {}", env.name))?.image_id
            };
            let record = store.image(&image_id).await?;
            let layer = record.layer_id.filter(|_| record.status == 1);
            layer.as_deref().and_then(ferry_runtime::LayerId::parse).ok_or_else(|| anyhow::anyhow!("image {image_id} has not been built"))?
        }
    };
    let images = ferry_runtime::ImageStore::open(data_dir)?;
    let started = std::time::Instant::now();
    let (layer2, out2, tag2) = (layer.clone(), out.to_path_buf(), tag.to_string());
    let exported = tokio::task::spawn_blocking(move || images.export_image(&layer2, &out2, &tag2)).await??;
    for l in &exported.layers {
        println!("layer {} -> {} ({})", &l.layer.as_str()[..12], l.digest, human(l.size));
    }
    println!(
        "exported {} layers to {} (tag {tag}, manifest {}) in {:.1}s",
        exported.layers.len(),
        out.display(),
        exported.manifest_digest,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn images_gc(data_dir: &std::path::Path, budget: &str, dry_run: bool) -> anyhow::Result<()> {
    let budget = parse_size(budget).ok_or_else(|| anyhow::anyhow!("--budget `{budget}` is not a size such as 20G, 500M or 1000000"))?;
    let store = ferry_runtime::ImageStore::open(data_dir)?;
    let removed = store.gc(budget, dry_run)?;
    let freed: u64 = removed.iter().map(|l| l.bytes).sum();
    for l in &removed {
        println!("{} {} ({})", if dry_run { "would remove" } else { "removed" }, l.record.id, human(l.bytes));
    }
    let held: u64 = store.usage()?.iter().map(|l| l.bytes).sum();
    if dry_run {
        println!("would remove {} layers, {}; the store would hold {} (budget {})", removed.len(), human(freed), human(held.saturating_sub(freed)), human(budget));
    } else {
        println!("removed {} layers, {}; the store now holds {} (budget {})", removed.len(), human(freed), human(held), human(budget));
    }
    Ok(())
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        "T" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as u64)
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", b / 1024f64.powi(3))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024f64.powi(2))
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("20G"), Some(20 * 1024 * 1024 * 1024));
        assert_eq!(super::parse_size("500MiB"), Some(500 * 1024 * 1024));
        assert_eq!(super::parse_size("1000"), Some(1000));
        assert_eq!(super::parse_size("x"), None);
    }
}
