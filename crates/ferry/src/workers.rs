//! `ferry worker`: run this host as a worker of a remote control plane, or (`list`, `drain`,
//! `remove`) administer the workers recorded in a control plane's store.

use std::collections::BTreeMap;
use std::path::Path;

use clap::{Args, Subcommand};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerArgs {
    #[command(subcommand)]
    cmd: Option<WorkerCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// The control plane's worker endpoint, `http://HOST:PORT` (its `ferry serve --fleet-port`).
    #[arg(long, env = "FERRY_WORKER_SERVER")]
    server: Option<String>,
    /// A worker token `ID:SECRET` (`ferry token create --worker` on the control plane).
    #[arg(long, env = "FERRY_WORKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A label placement can ask for (`region=eu-west`, `cloud=aws`, ...). Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The name `ferry worker list` shows [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// The control plane's bucket (the same `s3://…` as its `ferry serve --storage`), with
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: image layers and mount files come from there.
    #[arg(long, env = "FERRY_STORAGE", default_value = "local")]
    storage: ferry_blobs::StorageConfig,
    /// The authority that signed the control plane's certificate, for an https:// --server.
    #[arg(long)]
    ca_cert: Option<std::path::PathBuf>,
    /// Standby containers on this worker, as on the server (`ferry serve --pool-*`).
    #[command(flatten)]
    pool: crate::serve::PoolArgs,
    /// This host's GPUs and the types requests name them by, as on the server.
    #[command(flatten)]
    gpu: crate::gpus::GpuArgs,
}

#[derive(Subcommand)]
enum WorkerCommand {
    /// List the worker hosts, their capacity, load and state.
    List,
    /// Place no new containers on a worker (by name or id); those it runs finish.
    Drain { worker: String },
    /// Take a draining worker back into service.
    Undrain { worker: String },
    /// Forget a worker: its containers are declared lost (their inputs run elsewhere) and the
    /// worker process stops at its next poll.
    Remove { worker: String },
}

pub async fn run(data_dir: &Path, args: WorkerArgs) -> anyhow::Result<()> {
    match args.cmd {
        None => agent(data_dir, args.run).await,
        Some(cmd) => admin(data_dir, cmd).await,
    }
}

async fn agent(data_dir: &Path, args: RunArgs) -> anyhow::Result<()> {
    let Some(server) = args.server else { anyhow::bail!("--server http://HOST:PORT (the control plane's --fleet-port) is required") };
    let Some(token) = args.token else { anyhow::bail!("--token ID:SECRET is required (make one with `ferry token create --worker` on the control plane)") };
    if !token.contains(':') {
        anyhow::bail!("--token must be ID:SECRET, as `ferry token create --worker` prints it");
    }
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let Some((k, v)) = l.split_once('=') else { anyhow::bail!("--label {l}: expected KEY=VALUE") };
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    let name = args.name.unwrap_or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into()));
    let config = ferry_fleet::agent::AgentConfig {
        server,
        token,
        data_dir: data_dir.to_path_buf(),
        name,
        labels,
        storage: args.storage,
        ca_cert: args.ca_cert,
        pool: args.pool.config(),
        gpus: args.gpu.inventory()?,
    };
    tokio::select! {
        r = ferry_fleet::agent::run(config) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn admin(data_dir: &Path, cmd: WorkerCommand) -> anyhow::Result<()> {
    let store = crate::open_store(data_dir, Default::default()).await?;
    let (worker, state, done) = match cmd {
        WorkerCommand::List => {
            println!(
                "{:<26} {:<16} {:<16} {:<9} {:>5} {:>9} {:>5} {:>6} {:>9} {:<22} labels",
                "worker id", "name", "address", "state", "cpu", "memory", "gpus", "tasks", "seen", "registered"
            );
            let now = ferry_store::now();
            for w in store.workers().await? {
                println!(
                    "{:<26} {:<16} {:<16} {:<9} {:>5} {:>8}M {:>5} {:>6} {:>8.1}s {:<22} {}",
                    w.id,
                    w.name,
                    w.address,
                    w.state,
                    w.cpu,
                    w.memory_mib,
                    w.gpus,
                    w.tasks,
                    (now - w.last_seen).max(0.0),
                    crate::config::format_time(w.registered_at),
                    w.labels
                );
            }
            return Ok(());
        }
        WorkerCommand::Drain { worker } => (worker, "draining", "draining: no new containers are placed on it"),
        WorkerCommand::Undrain { worker } => (worker, "ready", "ready: it takes containers again"),
        WorkerCommand::Remove { worker } => (worker, "removed", "removed: its containers' inputs run elsewhere"),
    };
    let n = store.set_worker_state(&worker, state).await?;
    if n == 0 {
        anyhow::bail!("no live worker '{worker}' (see `ferry worker list`)");
    }
    println!("worker {worker} {done}");
    Ok(())
}
