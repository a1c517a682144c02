//! The `ferry` command: serves the Modal API and administers a data dir.

mod config;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferry", version, about = "Ferry: run Modal apps on your own machines")]
struct Cli {
    /// Where Ferry keeps its database, keys and caches.
    #[arg(long, global = true, env = "FERRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Modal API (gRPC) until interrupted.
    Serve(serve::ServeArgs),
    /// Manage the tokens clients authenticate with.
    #[command(subcommand)]
    Token(TokenCommand),
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
    let data_dir = cli.data_dir.unwrap_or_else(config::default_data_dir);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(&data_dir, args).await,
            Command::Token(cmd) => token(&data_dir, cmd).await,
        }
    })
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
