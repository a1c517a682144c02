//! The inference engine: one llama.cpp model and context owned by a dedicated OS thread that
//! decodes every active sequence in one batch per step (continuous batching).
//!
//! Architecture invariant: the engine knows nothing about HTTP or the OpenAI wire format. It takes
//! token ids plus sampling settings and an optional grammar matcher, and sends back token ids.
//! The async runtime never runs model code; handlers only enqueue work and await events.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context as _};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::mtmd::{MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputChunkType, MtmdInputChunks, MtmdInputText};
use llama_cpp_2::token::LlamaToken;
use llguidance::{Matcher, ParserFactory};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};

use crate::sampling::{Sampler, SamplingParams, TokenLogprob};

/// How the engine is sized.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences decoded together.
    pub parallel: u32,
    /// Tokens per sequence (prompt + completion).
    pub ctx_per_seq: u32,
    pub threads: u32,
    /// Layers offloaded to the GPU; always 0 in a build without the `cuda` feature.
    pub gpu_layers: u32,
    /// Keep each slot's KV after its request and reuse the longest common token prefix.
    pub prompt_cache: bool,
    /// One KV stream for all slots (`--kv-layout unified`) instead of one per slot.
    pub kv_unified: bool,
    /// llama.cpp multimodal projector (`--mmproj`): the vision encoder that goes with the model.
    pub mmproj: Option<PathBuf>,
}

/// Where an image goes in the rendered prompt text; the API layer writes one per image part.
pub const MEDIA_MARKER: &str = "<__ferry_image__>";

/// Token id that stands for an image position in a [`GenRequest::prompt`]: never a real token,
/// so no prompt-cache prefix ever extends across an image.
pub const IMAGE_TOKEN: u32 = u32::MAX;

/// Why a prompt with images could not be tokenized (each is the client's fault: a 400).
#[derive(Debug)]
pub enum MediaError {
    /// The loaded model has no projector.
    NoVision,
    /// Image `index` (0-based, in prompt order) is not a picture llama.cpp can decode.
    Decode(usize),
    /// Tokenizing or preprocessing failed (e.g. the marker text appeared in the prompt itself).
    Tokenize(String),
}

/// Whether this build can offload to NVIDIA GPUs.
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// Refuses GPU offload a CPU build cannot do, so `--gpu-layers` never silently runs on the CPU.
pub fn check_gpu_layers(gpu_layers: u32) -> anyhow::Result<()> {
    if gpu_layers > 0 && !CUDA_BUILD {
        anyhow::bail!(
            "--gpu-layers {gpu_layers} needs a CUDA build of Ferry (`cargo build --release --features cuda` on a machine with the CUDA toolkit); this build runs models on the CPU only, so drop --gpu-layers or set it to 0"
        );
    }
    Ok(())
}

/// Interactive requests always go first; batch-API work fills what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Interactive,
    Batch,
}

/// One generation: a tokenized prompt and how to continue it.
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Token-level constraint (JSON schema, tool-call grammar); `None` for free text.
    pub constraint: Option<Matcher>,
    pub priority: Priority,
    /// A prompt with images: llama.cpp's text and image chunks, in order. `prompt` then holds the
    /// same sequence with [`IMAGE_TOKEN`] for each image position.
    pub media: Option<Arc<MtmdInputChunks>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End-of-generation token, or the grammar is complete.
    Stop,
    /// `max_tokens` reached.
    Length,
}

#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub queued_ms: f64,
    pub prompt_ms: f64,
    pub generation_ms: f64,
    /// Of `generation_ms`, time spent computing grammar masks (constrained decoding overhead).
    pub grammar_ms: f64,
}

#[derive(Debug)]
pub enum GenEvent {
    /// Sent once when the sequence is admitted: how many prompt tokens came from the prompt cache.
    Admitted { cached_tokens: usize },
    Token { id: u32, logprob: Option<TokenLogprob> },
    Done { finish: Finish, prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize, timings: Timings },
    Error(String),
}

/// What the API layer needs to know about the loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub id: String,
    pub created: i64,
    pub n_vocab: usize,
    pub ctx_per_seq: usize,
    pub chat_template: Option<String>,
    pub bos_text: String,
    pub eos_text: String,
    /// A vision projector (`--mmproj`) is loaded: `image_url` parts are accepted.
    pub has_vision: bool,
}

/// Shared handle: tokenizer, grammar factory and the queue into the inference thread.
pub struct Engine {
    model: &'static LlamaModel,
    pub info: ModelInfo,
    /// Bytes each token decodes to (empty for control tokens).
    pub token_bytes: Vec<Vec<u8>>,
    pub parser_factory: Arc<ParserFactory>,
    /// Jobs go in groups: the choices of one request arrive together, so they are admitted in the
    /// same step and their rows are computed alongside the same rows every time.
    tx: std_mpsc::Sender<Vec<Job>>,
    /// The multimodal context (vision encoder + projector), when `--mmproj` was given. Tokenizing
    /// (API side) and encoding (engine thread) take turns through the lock.
    mtmd: Option<Arc<Mutex<MtmdContext>>>,
    /// Generations submitted and not yet finished; bounds memory under overload.
    in_flight: Arc<AtomicUsize>,
}

/// Most generations queued or running at once; beyond it `submit` refuses (HTTP 429).
pub const MAX_IN_FLIGHT: usize = 512;

struct Job {
    req: GenRequest,
    events: UnboundedSender<GenEvent>,
    enqueued: Instant,
    _ticket: Ticket,
}

/// Counts a job in `Engine::in_flight` until the job is dropped (finished, failed or cancelled).
struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Engine {
    /// Loads `path` and starts the inference thread.
    pub fn load(path: &Path, model_id: String, cfg: EngineConfig) -> anyhow::Result<Arc<Engine>> {
        let backend = backend()?;
        check_gpu_layers(cfg.gpu_layers)?;
        // Always explicit: llama.cpp's own default offloads every layer when it can.
        let params = LlamaModelParams::default().with_n_gpu_layers(cfg.gpu_layers);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .with_context(|| format!("loading model {}", path.display()))?;
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let vocab = model.vocab();
        let n_vocab = model.n_vocab() as usize;
        let token_bytes: Vec<Vec<u8>> =
            (0..n_vocab as i32).map(|i| vocab.token_to_piece(LlamaToken(i), false, None)).collect();
        let tok_env = build_tok_env(model, &token_bytes);
        let mut factory = ParserFactory::new_simple(&tok_env).map_err(|e| anyhow!("llguidance: {e}"))?;
        factory.quiet();
        let special = |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let info = ModelInfo {
            id: model_id,
            created: std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            n_vocab,
            ctx_per_seq: cfg.ctx_per_seq.min(model.n_ctx_train()) as usize,
            chat_template: model.chat_template(None).ok().and_then(|t| t.to_string().ok()),
            bos_text: special(vocab.bos()),
            eos_text: special(vocab.eos()),
            has_vision: false,
        };
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2)
        } else {
            cfg.threads as i32
        };
        let mtmd = match &cfg.mmproj {
            Some(p) => {
                let params = MtmdContextParams {
                    use_gpu: cfg.gpu_layers > 0,
                    print_timings: false,
                    n_threads: threads,
                    media_marker: std::ffi::CString::new(MEDIA_MARKER).expect("no NUL in the marker"),
                    image_min_tokens: -1,
                    image_max_tokens: -1,
                };
                let ctx = MtmdContext::init_from_file(&p.to_string_lossy(), model, &params).map_err(|e| {
                    anyhow!("loading the projector {}: {e} (is it the projector made for this model? llama.cpp's log says more with FERRY_LLM_VERBOSE=1)", p.display())
                })?;
                if !ctx.support_vision() {
                    anyhow::bail!("the projector {} has no vision encoder", p.display());
                }
                Some(Arc::new(Mutex::new(ctx)))
            }
            None => None,
        };
        let mut info = info;
        info.has_vision = mtmd.is_some();
        let engine_mtmd = mtmd.clone();
        let (tx, rx) = std_mpsc::channel::<Vec<Job>>();
        let ctx_per_seq = info.ctx_per_seq as u32;
        let (ready_tx, ready_rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("llm-engine".into())
            .spawn(move || {
                let n_ctx = ctx_per_seq * cfg.parallel.max(1);
                let params = LlamaContextParams::default()
                    .with_n_ctx(NonZeroU32::new(n_ctx))
                    .with_n_batch(512)
                    .with_n_ubatch(512)
                    .with_n_seq_max(cfg.parallel.max(1))
                    .with_kv_unified(cfg.kv_unified)
                    // Sliding-window layers keep every position, so a cached prefix stays usable
                    // (llama.cpp otherwise drops positions older than the window).
                    .with_swa_full(cfg.prompt_cache)
                    .with_n_threads(threads)
                    .with_n_threads_batch(threads);
                match model.new_context(backend, params) {
                    Ok(ctx) => {
                        let _ = ready_tx.send(Ok(()));
                        run_loop(model, ctx, rx, cfg.parallel.max(1) as usize, cfg.prompt_cache, cfg.kv_unified, engine_mtmd);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("creating llama.cpp context: {e}")));
                    }
                }
            })?;
        ready_rx.recv().map_err(|_| anyhow!("engine thread died"))??;
        Ok(Arc::new(Engine { model, info, token_bytes, parser_factory: Arc::new(factory), tx, mtmd, in_flight: Arc::new(AtomicUsize::new(0)) }))
    }

    /// Tokenizes templated text in which each image is a [`MEDIA_MARKER`], with the images'
    /// encoded bytes (PNG, JPEG, GIF, BMP; what llama.cpp's loader decodes) in marker order.
    /// Returns the prompt (image positions as [`IMAGE_TOKEN`]) and llama.cpp's chunks.
    pub fn tokenize_media(&self, text: &str, images: &[Vec<u8>]) -> Result<(Vec<u32>, Arc<MtmdInputChunks>), MediaError> {
        let Some(mtmd) = &self.mtmd else { return Err(MediaError::NoVision) };
        let ctx = mtmd.lock().unwrap_or_else(|e| e.into_inner());
        let bitmaps = images
            .iter()
            .enumerate()
            .map(|(i, b)| MtmdBitmap::from_buffer(&ctx, b, false).map_err(|_| MediaError::Decode(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&MtmdBitmap> = bitmaps.iter().collect();
        let input = MtmdInputText { text: text.to_string(), add_special: false, parse_special: true };
        let chunks = ctx.tokenize(input, &refs).map_err(|e| MediaError::Tokenize(e.to_string()))?;
        let mut prompt = Vec::with_capacity(chunks.total_tokens());
        for i in 0..chunks.len() {
            let c = chunks.get(i).expect("index in range");
            match c.chunk_type() {
                MtmdInputChunkType::Text => prompt.extend(c.text_tokens().unwrap_or(&[]).iter().map(|t| t.0 as u32)),
                MtmdInputChunkType::Image => prompt.extend(std::iter::repeat(IMAGE_TOKEN).take(c.n_tokens())),
                _ => return Err(MediaError::Tokenize("only images are supported".into())),
            }
        }
        // The engine decodes the prompt's last token itself (for its logits): it must be text.
        if prompt.last().is_none_or(|&t| t == IMAGE_TOKEN) {
            return Err(MediaError::Tokenize("the prompt must end with text after the last image".into()));
        }
        Ok((prompt, Arc::new(chunks)))
    }

    /// Tokenizes already-templated text: special tokens written as text (`<start_of_turn>`) are
    /// parsed, and no BOS is added (templates write it).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.model.vocab().tokenize(text.as_bytes(), false, true).into_iter().map(|t| t.0 as u32).collect()
    }

    /// Tokenizes plain text the way llama.cpp does for a raw prompt (BOS added when the model wants it).
    pub fn tokenize_raw(&self, text: &str) -> Vec<u32> {
        self.model.vocab().tokenize(text.as_bytes(), true, false).into_iter().map(|t| t.0 as u32).collect()
    }

    pub fn is_eog(&self, tok: u32) -> bool {
        self.model.vocab().is_eog(LlamaToken(tok as i32))
    }

    /// Queues a generation; events arrive on the returned channel. Dropping the receiver cancels it.
    /// `None` when the engine already has [`MAX_IN_FLIGHT`] generations.
    pub fn submit(&self, req: GenRequest) -> Option<UnboundedReceiver<GenEvent>> {
        self.submit_all(vec![req]).and_then(|mut v| v.pop())
    }

    /// Queues the generations of one request (its `n` choices) as one group: the engine admits them
    /// in the same step, so a seeded request's choices come out the same however its callers are
    /// scheduled. All or none: `None` when they would take the engine past [`MAX_IN_FLIGHT`].
    pub fn submit_all(&self, reqs: Vec<GenRequest>) -> Option<Vec<UnboundedReceiver<GenEvent>>> {
        let n = reqs.len();
        if self.in_flight.fetch_add(n, Ordering::SeqCst) + n > MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(n, Ordering::SeqCst);
            return None;
        }
        let mut jobs = Vec::with_capacity(n);
        let mut rxs = Vec::with_capacity(n);
        for req in reqs {
            let (events, rx) = unbounded_channel();
            jobs.push(Job { req, events, enqueued: Instant::now(), _ticket: Ticket(self.in_flight.clone()) });
            rxs.push(rx);
        }
        if let Err(e) = self.tx.send(jobs) {
            for job in e.0 {
                let _ = job.events.send(GenEvent::Error("inference engine stopped".into()));
            }
        }
        Some(rxs)
    }
}

/// llama.cpp's process-wide backend, initialised once and shared by the chat and embedding models.
pub(crate) fn backend() -> anyhow::Result<&'static LlamaBackend> {
    static BACKEND: std::sync::OnceLock<Result<&'static LlamaBackend, String>> = std::sync::OnceLock::new();
    BACKEND
        .get_or_init(|| {
            load_cpu_backends().map_err(|e| e.to_string())?;
            let mut backend = LlamaBackend::init().map_err(|e| format!("llama.cpp backend: {e}"))?;
            if std::env::var_os("FERRY_LLM_VERBOSE").is_none() {
                backend.void_logs();
            }
            Ok(&*Box::leak(Box::new(backend)))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// In a `cpu-variants` build, loads llama.cpp's backend modules (one CPU module per ISA level; ggml
/// scores each against the running CPU and the OS-enabled register state and keeps the best).
/// Looked up in `FERRY_LLM_BACKENDS_DIR`, beside the executable, then in the build's output dir.
#[cfg(feature = "cpu-variants")]
fn load_cpu_backends() -> anyhow::Result<()> {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        let has_modules = |d: &Path| {
            std::fs::read_dir(d).map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libggml-cpu"))).unwrap_or(false)
        };
        let mut dirs: Vec<std::path::PathBuf> = Vec::new();
        if let Some(d) = std::env::var_os("FERRY_LLM_BACKENDS_DIR") {
            dirs.push(d.into());
        }
        if let Some(d) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
            dirs.push(d);
        }
        if let Some(d) = llama_cpp_sys_2::BACKENDS_DIR {
            dirs.push(d.into());
        }
        let Some(dir) = dirs.iter().find(|d| has_modules(d)) else {
            result = Err(anyhow!(
                "this build loads llama.cpp's CPU backend at run time, but no libggml-cpu-*.so module was found beside the executable or in FERRY_LLM_BACKENDS_DIR"
            ));
            return;
        };
        let names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let forced = std::env::var("FERRY_LLM_CPU_VARIANT").ok().map(|v| format!("libggml-cpu-{v}.so"));
        let best = match &forced {
            Some(f) if names.contains(f) => Some(f.as_str()),
            Some(f) => {
                result = Err(anyhow!("FERRY_LLM_CPU_VARIANT asks for {f}, which is not in {}", dir.display()));
                return;
            }
            None => crate::cpu::best(names.iter().map(String::as_str), crate::cpu::usable),
        };
        let Some(best) = best else {
            result = Err(anyhow!("none of llama.cpp's CPU modules in {} can run on this CPU", dir.display()));
            return;
        };
        tracing::info!("llama.cpp CPU backend: {best} (the best variant this CPU and OS support)");
        let path = std::ffi::CString::new(dir.join(best).to_string_lossy().into_owned()).expect("no NUL in a path");
        // SAFETY: a NUL-terminated path; ggml keeps the module loaded for the process's lifetime.
        let reg = unsafe { llama_cpp_sys_2::ggml_backend_load(path.as_ptr()) };
        if reg.is_null() {
            result = Err(anyhow!("llama.cpp could not load its CPU module {}", dir.join(best).display()));
        }
    });
    result
}

#[cfg(not(feature = "cpu-variants"))]
fn load_cpu_backends() -> anyhow::Result<()> {
    Ok(())
}

/// toktrie environment from llama.cpp's vocabulary, so llguidance masks exactly these token ids.
/// Control tokens get llguidance's 0xFF marker so grammars never produce them as text.
fn build_tok_env(model: &LlamaModel, token_bytes: &[Vec<u8>]) -> TokEnv {
    let vocab = model.vocab();
    let eot = vocab.eot().0;
    let eos = if eot >= 0 { eot } else { vocab.eos().0 } as u32;
    let mut eog = vec![eos];
    let mut words = Vec::with_capacity(token_bytes.len());
    for (i, bytes) in token_bytes.iter().enumerate() {
        let t = LlamaToken(i as i32);
        if vocab.is_eog(t) && i as u32 != eos {
            eog.push(i as u32);
        }
        if bytes.is_empty() {
            let sp = vocab.token_to_piece(t, true, None);
            if sp.is_empty() {
                words.push(vec![]);
            } else {
                let mut w = vec![0xFF];
                w.extend(sp);
                words.push(w);
            }
        } else {
            words.push(bytes.clone());
        }
    }
    let info = TokRxInfo::new(token_bytes.len() as u32, eos);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
    Arc::new(ApproximateTokEnv::new(trie))
}

struct Slot {
    seq: i32,
    job: Job,
    sampler: Sampler,
    prefilled: usize,
    n_past: i32,
    generated: usize,
    pending: Option<u32>,
    logits_at: Option<i32>,
    started: Option<Instant>,
    first_token: Option<Instant>,
    queued_ms: f64,
    grammar: std::time::Duration,
    /// Prompt tokens whose KV came from the prompt cache.
    cached: usize,
}

impl Slot {
    fn finish(&self, finish: Finish) {
        let now = Instant::now();
        let started = self.started.unwrap_or(now);
        let first = self.first_token.unwrap_or(now);
        let _ = self.job.events.send(GenEvent::Done {
            finish,
            prompt_tokens: self.job.req.prompt.len(),
            completion_tokens: self.generated,
            cached_tokens: self.cached,
            timings: Timings {
                queued_ms: self.queued_ms,
                prompt_ms: (first - started).as_secs_f64() * 1e3,
                generation_ms: (now - first).as_secs_f64() * 1e3,
                grammar_ms: self.grammar.as_secs_f64() * 1e3,
            },
        });
    }
}

/// What one sequence id holds in the KV cache: the tokens at positions `0..tokens.len()`.
/// Finished sequences keep theirs (the prompt cache); a new request takes over the idle sequence
/// whose tokens share the longest prefix with its prompt, or copies that prefix from a running
/// sequence, and otherwise evicts the least recently used idle sequence.
#[derive(Default)]
struct SeqKv {
    tokens: Vec<u32>,
    last_used: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Shortest prefix worth reusing; below it a slot is simply recomputed.
const MIN_REUSE: usize = 16;

const BATCH_TOKENS: usize = 512;

type Ctx<'a> = llama_cpp_2::context::LlamaContext<'a>;

/// Picks a free sequence for `prompt` and prepares its KV: returns (seq, reused prefix length).
fn place(ctx: &mut Ctx<'_>, kv: &mut [SeqKv], free: &[usize], prompt: &[u32], use_cache: bool, unified: bool, clock: u64) -> (usize, usize) {
    // Never reuse the whole prompt: the last token must be decoded again to get its logits.
    let want = prompt.len().saturating_sub(1);
    let lcp = |i: usize| common_prefix(&kv[i].tokens, prompt).min(want);
    let lru = *free.iter().min_by_key(|&&i| (kv[i].last_used, kv[i].tokens.len())).expect("a free slot");
    // Without reuse (a seeded request, or no prompt cache) the lowest free slot: on an idle
    // server a repeated request then lands in the same KV streams, and its steps attend over
    // the same cells (llama.cpp sizes a step's attention by the streams it spans), so the same
    // seed gives the same output.
    let (mut target, mut reuse) = (if use_cache { lru } else { free[0] }, 0);
    if use_cache {
        // Best idle sequence to continue in place.
        if let Some(&best) = free.iter().max_by_key(|&&i| (lcp(i), u64::MAX - kv[i].last_used)) {
            if lcp(best) >= MIN_REUSE {
                (target, reuse) = (best, lcp(best));
            }
        }
        // A longer prefix held by another sequence (running, or idle) is shared into the target.
        let src = (0..kv.len()).filter(|&i| i != target).max_by_key(|&i| lcp(i));
        if let Some(src) = src {
            let n = lcp(src);
            if n >= MIN_REUSE && n > reuse + MIN_REUSE {
                if reuse == 0 {
                    target = lru;
                }
                let _ = ctx.clear_kv_cache_seq(Some(target as u32), None, None);
                if unified {
                    // One stream: the copy shares cells, it does not duplicate them.
                    let _ = ctx.copy_kv_cache_seq(src as i32, target as i32, Some(0), Some(n as u32));
                } else {
                    // A stream per slot: llama.cpp copies a whole stream (before the next
                    // decode); what follows the shared prefix is dropped again.
                    let _ = ctx.copy_kv_cache_seq(src as i32, target as i32, None, None);
                    let _ = ctx.clear_kv_cache_seq(Some(target as u32), Some(n as u32), None);
                }
                kv[target].tokens = prompt[..n].to_vec();
                kv[target].last_used = clock;
                return (target, n);
            }
        }
    }
    if reuse > 0 && ctx.clear_kv_cache_seq(Some(target as u32), Some(reuse as u32), None).unwrap_or(false) {
        kv[target].tokens.truncate(reuse);
    } else {
        reuse = 0;
        let _ = ctx.clear_kv_cache_seq(Some(target as u32), None, None);
        kv[target].tokens.clear();
    }
    kv[target].last_used = clock;
    (target, reuse)
}

/// Ends a sequence; without the prompt cache its KV is dropped at once.
fn release(ctx: &mut Ctx<'_>, kv: &mut [SeqKv], seq: i32, use_cache: bool) {
    if !use_cache {
        let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
        kv[seq as usize].tokens.clear();
    }
}

fn run_loop(model: &LlamaModel, mut ctx: Ctx<'_>, rx: std_mpsc::Receiver<Vec<Job>>, parallel: usize, use_cache: bool, unified: bool, mtmd: Option<Arc<Mutex<MtmdContext>>>) {
    let mut interactive: VecDeque<Job> = VecDeque::new();
    let mut batch_q: VecDeque<Job> = VecDeque::new();
    let mut slots: Vec<Option<Slot>> = (0..parallel).map(|_| None).collect();
    let mut kv: Vec<SeqKv> = (0..parallel).map(|_| SeqKv::default()).collect();
    let mut clock: u64 = 0;
    let mut batch = LlamaBatch::new(BATCH_TOKENS, 1);
    let vocab = model.vocab();
    let n_vocab = model.n_vocab() as usize;
    let mut logits_buf = vec![0f32; n_vocab];
    // Keep one slot free of batch-API work so an interactive request never waits behind a batch.
    let max_batch_slots = if parallel > 1 { parallel - 1 } else { 1 };
    let ctx_limit = ctx.n_ctx() as usize / parallel;

    loop {
        let idle = slots.iter().all(|s| s.is_none()) && interactive.is_empty() && batch_q.is_empty();
        if idle {
            match rx.recv() {
                Ok(jobs) => jobs.into_iter().for_each(|job| enqueue(job, &mut interactive, &mut batch_q)),
                Err(_) => return,
            }
        }
        while let Ok(jobs) = rx.try_recv() {
            jobs.into_iter().for_each(|job| enqueue(job, &mut interactive, &mut batch_q));
        }
        // Drop cancelled work.
        interactive.retain(|j| !j.events.is_closed());
        batch_q.retain(|j| !j.events.is_closed());
        for s in slots.iter_mut() {
            if s.as_ref().is_some_and(|s| s.job.events.is_closed()) {
                let seq = s.as_ref().unwrap().seq;
                release(&mut ctx, &mut kv, seq, use_cache);
                *s = None;
            }
        }
        // Admit: interactive work first, batch work only while interactive work is not waiting
        // and at most `max_batch_slots` at once.
        loop {
            let free: Vec<usize> = (0..parallel).filter(|&i| slots[i].is_none()).collect();
            if free.is_empty() {
                break;
            }
            let job = match interactive.pop_front() {
                Some(j) => j,
                None => {
                    let running_batch = slots.iter().flatten().filter(|s| s.job.req.priority == Priority::Batch).count();
                    if running_batch >= max_batch_slots {
                        break;
                    }
                    match batch_q.pop_front() {
                        Some(j) => j,
                        None => break,
                    }
                }
            };
            clock += 1;
            // A seeded request decodes its whole prompt: reused KV rounds differently, and the same
            // seed must give the same output whatever the cache holds.
            // A prompt with images is computed whole (its image positions match no cached prefix).
            let reuse_ok = use_cache && job.req.sampling.seed.is_none() && job.req.media.is_none();
            let (i, reused) = place(&mut ctx, &mut kv, &free, &job.req.prompt, reuse_ok, unified, clock);
            let mut slot = new_slot(i as i32, job);
            slot.prefilled = reused;
            slot.n_past = reused as i32;
            slot.cached = reused;
            if let Some(chunks) = slot.job.req.media.clone() {
                // Images (and the text around them) go through llama.cpp's multimodal helper in
                // steps of their own; then the last position is dropped again so that the prompt's
                // last token is decoded in the shared batch like any other prompt's.
                slot.started = Some(Instant::now());
                let evaluated = match &mtmd {
                    Some(m) => {
                        let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                        chunks.eval_chunks(&mut m, &mut ctx, 0, i as i32, BATCH_TOKENS as i32, false).map_err(|e| e.to_string())
                    }
                    None => Err("the model has no vision encoder".to_string()),
                };
                match evaluated {
                    Ok(n_past) if n_past >= 1 => {
                        let _ = ctx.clear_kv_cache_seq(Some(i as u32), Some((n_past - 1) as u32), None);
                        let n = slot.job.req.prompt.len();
                        kv[i].tokens = slot.job.req.prompt[..n - 1].to_vec();
                        slot.prefilled = n - 1;
                        slot.n_past = n_past - 1;
                    }
                    other => {
                        let msg = match other {
                            Err(e) => format!("encoding the images failed: {e}"),
                            Ok(_) => "encoding the images produced nothing".to_string(),
                        };
                        let _ = slot.job.events.send(GenEvent::Error(msg));
                        let _ = ctx.clear_kv_cache_seq(Some(i as u32), None, None);
                        kv[i].tokens.clear();
                        continue;
                    }
                }
            }
            let _ = slot.job.events.send(GenEvent::Admitted { cached_tokens: reused });
            slots[i] = Some(slot);
        }
        if slots.iter().all(|s| s.is_none()) {
            continue;
        }

        // Build one batch: a token for every decoding sequence, then prompt chunks, in slot
        // (= sequence = KV stream) order, which llama.cpp needs to decode the sequences of a
        // step together when each has its own stream.
        batch.clear();
        let mut used = 0usize;
        for s in slots.iter_mut().flatten() {
            s.logits_at = None;
            if let Some(tok) = s.pending {
                let _ = batch.add(LlamaToken(tok as i32), s.n_past, &[s.seq], true);
                kv[s.seq as usize].tokens.push(tok);
                s.logits_at = Some(used as i32);
                s.n_past += 1;
                used += 1;
            }
        }
        for s in slots.iter_mut().flatten() {
            if s.pending.is_some() || s.prefilled >= s.job.req.prompt.len() {
                continue;
            }
            if s.started.is_none() {
                s.started = Some(Instant::now());
            }
            let left = s.job.req.prompt.len() - s.prefilled;
            // The prompt's last token (the one whose logits are sampled) always goes in a step of
            // its own: llama.cpp's results for a row depend slightly on the rows computed with it,
            // so this keeps a repeated request's output identical whether its prefix came from
            // the prompt cache or not (greedy and seeded sampling stay reproducible).
            let take = if left > 1 { left - 1 } else { 1 }.min(BATCH_TOKENS - used);
            if take == 0 {
                break;
            }
            for k in 0..take {
                let last = s.prefilled + k + 1 == s.job.req.prompt.len();
                let tok = s.job.req.prompt[s.prefilled + k];
                let _ = batch.add(LlamaToken(tok as i32), s.n_past, &[s.seq], last);
                kv[s.seq as usize].tokens.push(tok);
                if last {
                    s.logits_at = Some(used as i32);
                }
                s.n_past += 1;
                used += 1;
            }
            s.prefilled += take;
        }
        if used == 0 {
            continue;
        }
        if let Err(e) = ctx.decode(&mut batch) {
            // The KV state is unknown now: forget the cache along with the running sequences.
            for s in slots.iter_mut() {
                if let Some(slot) = s.take() {
                    let _ = slot.job.events.send(GenEvent::Error(format!("decode failed: {e}")));
                }
            }
            let _ = ctx.clear_kv_cache_seq(None, None, None);
            kv.iter_mut().for_each(|k| k.tokens.clear());
            continue;
        }

        // Sample for every sequence that produced logits.
        for s in slots.iter_mut() {
            let Some(slot) = s.as_mut() else { continue };
            let Some(idx) = slot.logits_at else { continue };
            logits_buf.copy_from_slice(&ctx.get_logits_ith(idx)[..n_vocab]);
            let t_mask = Instant::now();
            let mask = match slot.job.req.constraint.as_mut() {
                Some(m) => match m.compute_mask_or_eos() {
                    Ok(mask) => {
                        slot.grammar += t_mask.elapsed();
                        Some(mask)
                    }
                    Err(e) => {
                        let _ = slot.job.events.send(GenEvent::Error(format!("grammar error: {e}")));
                        let seq = slot.seq;
                        release(&mut ctx, &mut kv, seq, use_cache);
                        *s = None;
                        continue;
                    }
                },
                None => None,
            };
            let (tok, lp) = slot.sampler.sample(&mut logits_buf, mask.as_ref());
            if slot.first_token.is_none() {
                slot.first_token = Some(Instant::now());
            }
            let eog = vocab.is_eog(LlamaToken(tok as i32));
            let mut done = None;
            if eog {
                done = Some(Finish::Stop);
            } else {
                slot.generated += 1;
                let _ = slot.job.events.send(GenEvent::Token { id: tok, logprob: lp });
                if let Some(m) = slot.job.req.constraint.as_mut() {
                    let t_consume = Instant::now();
                    if m.consume_token(tok).is_err() || m.is_stopped() {
                        done = Some(Finish::Stop);
                    }
                    slot.grammar += t_consume.elapsed();
                }
                if done.is_none() && slot.generated >= slot.job.req.max_tokens {
                    done = Some(Finish::Length);
                }
                if done.is_none() && slot.n_past as usize + 1 >= ctx_limit {
                    done = Some(Finish::Length);
                }
            }
            match done {
                Some(f) => {
                    slot.finish(f);
                    let seq = slot.seq;
                    clock += 1;
                    kv[seq as usize].last_used = clock;
                    release(&mut ctx, &mut kv, seq, use_cache);
                    *s = None;
                }
                None => slot.pending = Some(tok),
            }
        }
    }
}

fn enqueue(job: Job, interactive: &mut VecDeque<Job>, batch_q: &mut VecDeque<Job>) {
    match job.req.priority {
        Priority::Interactive => interactive.push_back(job),
        Priority::Batch => batch_q.push_back(job),
    }
}

fn new_slot(seq: i32, job: Job) -> Slot {
    let sampler = Sampler::new(job.req.sampling.clone());
    let queued_ms = job.enqueued.elapsed().as_secs_f64() * 1e3;
    Slot {
        seq,
        job,
        sampler,
        prefilled: 0,
        n_past: 0,
        generated: 0,
        pending: None,
        logits_at: None,
        started: None,
        first_token: None,
        queued_ms,
        grammar: std::time::Duration::ZERO,
        cached: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_counts_equal_leading_tokens() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[5, 6], &[5, 6, 7]), 2);
    }
}
