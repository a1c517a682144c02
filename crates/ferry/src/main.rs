//! The `ferry` command: serves the Modal API and administers a data dir.

mod config;
mod ops;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferry", version, about = "Ferry: run Modal apps on your own machines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Prepare the base images containers run on.
    Images {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(subcommand)]
        cmd: ImagesCommand,
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
        /// API port to check (the dashboard's is the next one).
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
    /// Build the Debian base with Python (what `Image.debian_slim()` starts from) and install
    /// the pinned modal client that containers run with, ahead of the first `modal run`.
    Prepare {
        /// Python series to prepare.
        #[arg(long, default_value = "3.11")]
        python: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print its id and secret (the secret is shown only once).
    Create {
        /// A note saying who or what the token is for.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List tokens (ids and labels; secrets are never stored).
    List,
    /// Revoke a token: clients using it are refused from then on.
    Revoke { token_id: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
            Command::Images { data_dir, cmd: ImagesCommand::Prepare { python } } => {
                images_prepare(&data_dir.resolve(), &python).await
            }
            Command::Llm { cmd } => ferry_llm::run(cmd).await,
            Command::Status { data_dir } => ops::status(&data_dir.resolve()).await,
            Command::Doctor { data_dir, host, port } => ops::doctor(&data_dir.resolve(), host, &[port, port.saturating_add(1)]),
        }
    })
}

async fn images_prepare(data_dir: &std::path::Path, python: &str) -> anyhow::Result<()> {
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
    drop(sink);
    let _ = printer.await;
    let base = base?;
    let client = client.expect("prepared after the base")?;
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
    let store = ferry_store::Store::open(data_dir, Default::default()).await?;
    match cmd {
        TokenCommand::Create { label } => {
            let (id, secret) = store.create_token(&label).await?;
            println!("MODAL_TOKEN_ID={id}\nMODAL_TOKEN_SECRET={secret}");
        }
        TokenCommand::List => {
            println!("{:<28} {:<12} {:<22} label", "token id", "state", "created");
            for t in store.list_tokens().await? {
                let state = if t.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{:<28} {:<12} {:<22} {}", t.token_id, state, config::format_time(t.created_at), t.label);
            }
        }
        TokenCommand::Revoke { token_id } => {
            store.revoke_token(&token_id).await?;
            println!("revoked {token_id}");
        }
    }
    Ok(())
}
