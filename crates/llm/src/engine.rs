//! The inference engine: one llama.cpp model and context owned by a dedicated OS thread that
//! decodes every active sequence in one batch per step (continuous batching).
//!
//! Architecture invariant: the engine knows nothing about HTTP or the OpenAI wire format. It takes
//! token ids plus sampling settings and an optional grammar matcher, and sends back token ids.
//! The async runtime never runs model code; handlers only enqueue work and await events.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context as _};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
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
    Token { id: u32, logprob: Option<TokenLogprob> },
    Done {
        finish: Finish,
        prompt_tokens: usize,
        /// Of `prompt_tokens`, how many were reused from the KV cache instead of decoded
        /// (OpenAI's `usage.prompt_tokens_details.cached_tokens`); 0 without prefix reuse.
        cached_tokens: usize,
        completion_tokens: usize,
        timings: Timings,
    },
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
    /// llama.cpp loads vision encoders from a separate projector file; Ferry serves text-only GGUFs.
    pub has_vision: bool,
}

/// Shared handle: tokenizer, grammar factory and the queue into the inference thread.
pub struct Engine {
    model: &'static LlamaModel,
    pub info: ModelInfo,
    /// Bytes each token decodes to (empty for control tokens).
    pub token_bytes: Vec<Vec<u8>>,
    pub parser_factory: Arc<ParserFactory>,
    tx: std_mpsc::Sender<Job>,
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
        let mut backend = LlamaBackend::init().map_err(|e| anyhow!("llama.cpp backend: {e}"))?;
        if std::env::var_os("FERRY_LLM_VERBOSE").is_none() {
            backend.void_logs();
        }
        let backend: &'static LlamaBackend = Box::leak(Box::new(backend));
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
        let (tx, rx) = std_mpsc::channel::<Job>();
        let ctx_per_seq = info.ctx_per_seq as u32;
        let (ready_tx, ready_rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("llm-engine".into())
            .spawn(move || {
                let threads = if cfg.threads == 0 {
                    std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2)
                } else {
                    cfg.threads as i32
                };
                let n_ctx = ctx_per_seq * cfg.parallel.max(1);
                let params = LlamaContextParams::default()
                    .with_n_ctx(NonZeroU32::new(n_ctx))
                    .with_n_batch(512)
                    .with_n_ubatch(512)
                    .with_n_seq_max(cfg.parallel.max(1))
                    .with_kv_unified(true)
                    .with_n_threads(threads)
                    .with_n_threads_batch(threads);
                match model.new_context(backend, params) {
                    Ok(ctx) => {
                        let _ = ready_tx.send(Ok(()));
                        run_loop(model, ctx, rx, cfg.parallel.max(1) as usize);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("creating llama.cpp context: {e}")));
                    }
                }
            })?;
        ready_rx.recv().map_err(|_| anyhow!("engine thread died"))??;
        Ok(Arc::new(Engine { model, info, token_bytes, parser_factory: Arc::new(factory), tx, in_flight: Arc::new(AtomicUsize::new(0)) }))
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
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let (events, rx) = unbounded_channel();
        let job = Job { req, events, enqueued: Instant::now(), _ticket: Ticket(self.in_flight.clone()) };
        if let Err(e) = self.tx.send(job) {
            let _ = e.0.events.send(GenEvent::Error("inference engine stopped".into()));
        }
        Some(rx)
    }
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
}

impl Slot {
    fn finish(&self, finish: Finish) {
        let now = Instant::now();
        let started = self.started.unwrap_or(now);
        let first = self.first_token.unwrap_or(now);
        let _ = self.job.events.send(GenEvent::Done {
            finish,
            prompt_tokens: self.job.req.prompt.len(),
            cached_tokens: 0,
            completion_tokens: self.generated,
            timings: Timings {
                queued_ms: self.queued_ms,
                prompt_ms: (first - started).as_secs_f64() * 1e3,
                generation_ms: (now - first).as_secs_f64() * 1e3,
                grammar_ms: self.grammar.as_secs_f64() * 1e3,
            },
        });
    }
}

const BATCH_TOKENS: usize = 512;

fn run_loop(model: &LlamaModel, mut ctx: llama_cpp_2::context::LlamaContext<'_>, rx: std_mpsc::Receiver<Job>, parallel: usize) {
    let mut interactive: VecDeque<Job> = VecDeque::new();
    let mut batch_q: VecDeque<Job> = VecDeque::new();
    let mut slots: Vec<Option<Slot>> = (0..parallel).map(|_| None).collect();
    let mut batch = LlamaBatch::new(BATCH_TOKENS, 1);
    let vocab = model.vocab();
    let n_vocab = model.n_vocab() as usize;
    let mut logits_buf = vec![0f32; n_vocab];
    // Keep one slot free of batch-API work so an interactive request never waits behind a batch.
    let max_batch_slots = if parallel > 1 { parallel - 1 } else { 1 };

    loop {
        let idle = slots.iter().all(|s| s.is_none()) && interactive.is_empty() && batch_q.is_empty();
        if idle {
            match rx.recv() {
                Ok(job) => enqueue(job, &mut interactive, &mut batch_q),
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            enqueue(job, &mut interactive, &mut batch_q);
        }
        // Drop cancelled work.
        interactive.retain(|j| !j.events.is_closed());
        batch_q.retain(|j| !j.events.is_closed());
        for s in slots.iter_mut() {
            if s.as_ref().is_some_and(|s| s.job.events.is_closed()) {
                let seq = s.as_ref().unwrap().seq;
                let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
                *s = None;
            }
        }
        // Admit.
        for (i, s) in slots.iter_mut().enumerate() {
            if s.is_some() {
                continue;
            }
            let job = interactive.pop_front();
            if let Some(job) = job {
                *s = Some(new_slot(i as i32, job));
            }
        }
        let running_batch = slots.iter().flatten().filter(|s| s.job.req.priority == Priority::Batch).count();
        let mut room = max_batch_slots.saturating_sub(running_batch);
        if interactive.is_empty() {
            for (i, s) in slots.iter_mut().enumerate() {
                if room == 0 {
                    break;
                }
                if s.is_none() {
                    if let Some(job) = batch_q.pop_front() {
                        *s = Some(new_slot(i as i32, job));
                        room -= 1;
                    }
                }
            }
        }
        if slots.iter().all(|s| s.is_none()) {
            continue;
        }

        // Build one batch: a token for every decoding sequence, then prompt chunks.
        batch.clear();
        let mut used = 0usize;
        for s in slots.iter_mut().flatten() {
            s.logits_at = None;
            if let Some(tok) = s.pending {
                let _ = batch.add(LlamaToken(tok as i32), s.n_past, &[s.seq], true);
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
            let take = left.min(BATCH_TOKENS - used);
            if take == 0 {
                break;
            }
            for k in 0..take {
                let last = s.prefilled + k + 1 == s.job.req.prompt.len();
                let tok = s.job.req.prompt[s.prefilled + k];
                let _ = batch.add(LlamaToken(tok as i32), s.n_past, &[s.seq], last);
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
            for s in slots.iter_mut() {
                if let Some(slot) = s.take() {
                    let _ = slot.job.events.send(GenEvent::Error(format!("decode failed: {e}")));
                    let _ = ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
                }
            }
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
                        let _ = ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
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
                if done.is_none() && slot.n_past as usize + 1 >= slot_ctx_limit(&ctx, parallel) {
                    done = Some(Finish::Length);
                }
            }
            match done {
                Some(f) => {
                    slot.finish(f);
                    let _ = ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
                    *s = None;
                }
                None => slot.pending = Some(tok),
            }
        }
    }
}

fn slot_ctx_limit(ctx: &llama_cpp_2::context::LlamaContext<'_>, parallel: usize) -> usize {
    ctx.n_ctx() as usize / parallel
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
    }
}
