//! Ferry's model-serving pillar: `ferry llm serve` runs a GGUF model behind an OpenAI-compatible
//! API (chat completions and the Responses API with streaming, tools and structured outputs,
//! files, batches, moderations).
//!
//! Code map:
//! - `engine`: llama.cpp model + context on a dedicated thread, continuous batching, priorities,
//!   the prompt cache (finished sequences' KV reused by the longest common token prefix).
//! - `embed`: the `--embedding-model` (an encoder GGUF) in a context of its own, pooled vectors.
//! - `sampling`: logits → token (penalties, bias, grammar mask, temperature/top-k/top-p, logprobs).
//! - `grammar`: response formats and tool calls as llguidance grammars; tool-call parsing.
//! - `template`: chat templates (GGUF metadata or Ferry's Gemma default) with minijinja.
//! - `text`: incremental UTF-8 and stop sequences.
//! - `api`: the HTTP routes; the only module that knows OpenAI's wire format.
//! - `store`: files, batches and stored responses on disk. `moderation`: the text classifier.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use clap::Parser;
//! #[derive(Parser)]
//! struct Cli { #[command(subcommand)] cmd: ferry_llm::LlmCommand }
//! let cli = Cli::parse_from(["ferry", "serve", "--model", "models/gemma-3-270m-q4_k_m.gguf", "--port", "0"]);
//! ferry_llm::run(cli.cmd).await
//! # }
//! ```

pub mod api;
pub mod cli;
pub mod cpu;
pub mod embed;
pub mod engine;
pub mod error;
pub mod grammar;
pub mod moderation;
pub mod sampling;
pub mod store;
pub mod template;
pub mod text;

pub use cli::LlmCommand;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use crate::cli::ServeArgs;

/// Runs one `ferry llm` command to completion.
pub async fn run(cmd: LlmCommand) -> anyhow::Result<()> {
    match cmd {
        LlmCommand::Serve(args) => serve(args).await,
    }
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".local/share/ferry")
}

/// Reads the key kept in the data dir, or makes one.
fn api_key(dir: &std::path::Path, given: Option<String>) -> anyhow::Result<String> {
    if let Some(k) = given.filter(|k| !k.is_empty()) {
        return Ok(k);
    }
    let path = dir.join("llm.key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        if !k.trim().is_empty() {
            return Ok(k.trim().to_string());
        }
    }
    let key = format!("sk-ferry-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(&path, &key).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(key)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    engine::check_gpu_layers(args.gpu_layers)?;
    // TLS for fetching allowed image URLs: the ring provider, as the rest of Ferry uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| "info".into())).try_init();
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let key = api_key(&data_dir, args.api_key.clone())?;
    let model_id = args.model_name.clone().unwrap_or_else(|| {
        args.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
    });
    let cfg = engine::EngineConfig { parallel: args.parallel.max(1), ctx_per_seq: args.ctx_size.max(256), threads: args.threads, gpu_layers: args.gpu_layers, prompt_cache: !args.no_prompt_cache, kv_unified: args.kv_layout == cli::KvLayout::Unified, mmproj: args.mmproj.clone() };
    let model_path = args.model.clone();
    let engine = tokio::task::spawn_blocking(move || engine::Engine::load(&model_path, model_id, cfg)).await??;
    let embedder = match args.embedding_model.clone() {
        Some(path) => {
            let id = args.embedding_model_name.clone().unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "embedding".into()));
            let threads = args.threads;
            Some(Arc::new(tokio::task::spawn_blocking(move || embed::Embedder::load(&path, id, threads)).await??))
        }
        None => None,
    };
    let template = template::ChatTemplate::new(engine.info.chat_template.as_deref())
        .or_else(|e| {
            tracing::warn!("the model's chat template does not compile ({e}); using Ferry's default Gemma turn format");
            template::ChatTemplate::new(None)
        })
        .context("compiling the default chat template")?;
    let moderator = moderation::Moderator::load(&moderation::default_dir(&args.model));
    let state = Arc::new(api::AppState {
        engine,
        embedder,
        template,
        api_key: key.clone(),
        image_hosts: args.allow_image_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect(),
        store: Arc::new(store::Store::open(&data_dir)?),
        moderator: Arc::new(moderator),
        batch_wakeup: tokio::sync::Notify::new(),
        batch_lock: tokio::sync::Mutex::new(()),
    });
    tokio::spawn(api::batches::runner(state.clone()));
    let listener = tokio::net::TcpListener::bind((args.host, args.port)).await.with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let env = format!("OPENAI_BASE_URL=http://{host}:{}/v1\nOPENAI_API_KEY={key}\n", addr.port());
    let env_path = data_dir.join("llm.env");
    let tmp = data_dir.join("llm.env.tmp");
    std::fs::write(&tmp, env)?;
    std::fs::rename(&tmp, &env_path)?;
    tracing::info!("serving {} on http://{addr}/v1 (credentials in {})", state.engine.info.id, env_path.display());
    axum::serve(listener, api::router(state)).with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
