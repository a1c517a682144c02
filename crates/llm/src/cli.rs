//! Command-line surface of `ferry llm`. The `ferry` binary nests [`LlmCommand`] under `llm`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// `ferry llm <command>`.
#[derive(Debug, Subcommand)]
pub enum LlmCommand {
    /// Serve a GGUF model behind an OpenAI-compatible HTTP API.
    Serve(ServeArgs),
}

/// Options of `ferry llm serve`.
///
/// ```text
/// ferry llm serve --model models/gemma-3-270m-q4_k_m.gguf --port 0 --data-dir /tmp/llm
/// . /tmp/llm/llm.env   # OPENAI_BASE_URL and OPENAI_API_KEY for the openai SDK
/// ```
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Path of the GGUF model file.
    #[arg(long, env = "FERRY_LLM_MODEL")]
    pub model: PathBuf,
    /// Where files, batches, the API key and `llm.env` live.
    #[arg(long, env = "FERRY_LLM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TCP port; 0 picks a free one (written to `DATA_DIR/llm.env`).
    #[arg(long, default_value_t = 8089)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// API key clients must send; by default one is generated once and kept in the data dir.
    #[arg(long, env = "FERRY_LLM_API_KEY")]
    pub api_key: Option<String>,
    /// Name the model is served under (`model` field); defaults to the file stem.
    #[arg(long)]
    pub model_name: Option<String>,
    /// Sequences decoded together (continuous batching slots).
    #[arg(long, default_value_t = 4)]
    pub parallel: u32,
    /// Context length of each slot, in tokens (prompt + completion).
    #[arg(long, default_value_t = 4096)]
    pub ctx_size: u32,
    /// Inference threads; 0 means one per available core.
    #[arg(long, default_value_t = 0)]
    pub threads: u32,
    /// Model layers to offload to the GPU (999: all). Needs a build with `--features cuda`;
    /// the default build runs on the CPU and refuses a value above 0.
    #[arg(long, default_value_t = 0)]
    pub gpu_layers: u32,
    /// Do not keep finished requests' KV for reuse by later prompts with the same prefix
    /// (`usage.prompt_tokens_details.cached_tokens` is then always 0).
    #[arg(long)]
    pub no_prompt_cache: bool,
    /// How the KV cache is laid out: `per-slot` gives each slot a stream of its own (a step
    /// attends only over its own slot's tokens; sharing a cached prefix copies it), `unified`
    /// keeps one stream for all slots (a prefix is shared without a copy, but every step attends
    /// over the cells that all slots hold).
    #[arg(long, value_enum, env = "FERRY_LLM_KV_LAYOUT", default_value_t = KvLayout::PerSlot)]
    pub kv_layout: KvLayout,
    /// The model's multimodal projector (a `mmproj` GGUF made for this model): enables
    /// `image_url` content parts through llama.cpp's vision support.
    #[arg(long, env = "FERRY_LLM_MMPROJ")]
    pub mmproj: Option<PathBuf>,
    /// A host whose `http(s)` image URLs the server may fetch (repeatable). Without it only data
    /// URLs are accepted: the server never fetches URLs a client names on hosts not listed here.
    #[arg(long = "allow-image-host", value_name = "HOST")]
    pub allow_image_hosts: Vec<String>,
    /// An embedding model (encoder GGUF, e.g. BERT with mean pooling) served at `/v1/embeddings`.
    #[arg(long, env = "FERRY_LLM_EMBEDDING_MODEL")]
    pub embedding_model: Option<PathBuf>,
    /// Name the embedding model is served under; defaults to its file stem.
    #[arg(long)]
    pub embedding_model_name: Option<String>,
}

/// KV cache layout of `ferry llm serve` (`--kv-layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvLayout {
    /// One KV stream per slot, as llama.cpp's own server.
    PerSlot,
    /// One KV stream shared by all slots.
    Unified,
}
