//! Sentence embeddings: an encoder GGUF (BERT-style, pooling type in its metadata) in a llama.cpp
//! context of its own, on a dedicated OS thread, separate from the chat engine.
//!
//! Architecture invariant: like the chat engine, this module knows token ids and vectors, nothing
//! of HTTP; the vectors it returns are pooled by llama.cpp and L2-normalised here.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::mpsc as std_mpsc;

use anyhow::{anyhow, Context as _};
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use crate::engine::backend;

/// Tokens encoded per llama.cpp call; inputs are packed into batches up to this size.
const BATCH_TOKENS: u32 = 2048;
/// Sequences per batch.
const MAX_SEQS: u32 = 64;

/// What the API needs to know about the embedding model.
#[derive(Debug, Clone)]
pub struct EmbedInfo {
    pub id: String,
    pub created: i64,
    /// Vector length.
    pub dims: usize,
    /// Longest input, in tokens (the model's trained context).
    pub max_tokens: usize,
    pub n_vocab: usize,
}

struct Job {
    inputs: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

pub struct Embedder {
    model: &'static LlamaModel,
    pub info: EmbedInfo,
    tx: std_mpsc::Sender<Job>,
}

impl Embedder {
    pub fn load(path: &Path, id: String, threads: u32) -> anyhow::Result<Embedder> {
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default().with_n_gpu_layers(0))
            .with_context(|| format!("loading embedding model {}", path.display()))?;
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let info = EmbedInfo {
            id,
            created: std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            dims: model.n_embd_out() as usize,
            max_tokens: (model.n_ctx_train() as usize).min(BATCH_TOKENS as usize),
            n_vocab: model.n_vocab() as usize,
        };
        let threads = if threads == 0 { std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2) } else { threads as i32 };
        let (tx, rx) = std_mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let dims = info.dims;
        std::thread::Builder::new().name("llm-embed".into()).spawn(move || {
            let params = LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(BATCH_TOKENS))
                .with_n_batch(BATCH_TOKENS)
                .with_n_ubatch(BATCH_TOKENS)
                .with_n_seq_max(MAX_SEQS)
                .with_embeddings(true)
                .with_pooling_type(LlamaPoolingType::Unspecified)
                .with_n_threads(threads)
                .with_n_threads_batch(threads);
            let mut ctx = match model.new_context(backend, params) {
                Ok(c) => {
                    let _ = ready_tx.send(Ok(()));
                    c
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("creating the embedding context: {e}")));
                    return;
                }
            };
            let mut batch = LlamaBatch::new(BATCH_TOKENS as usize, MAX_SEQS as i32);
            while let Ok(job) = rx.recv() {
                let r = embed_all(&mut ctx, &mut batch, &job.inputs, dims);
                let _ = job.reply.send(r);
            }
        })?;
        ready_rx.recv().map_err(|_| anyhow!("embedding thread died"))??;
        Ok(Embedder { model, info, tx })
    }

    /// Tokens of `text` as the model's tokenizer gives them, with its special tokens
    /// ([CLS] … [SEP] for BERT).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.model.vocab().tokenize(text.as_bytes(), true, false).into_iter().map(|t| t.0 as u32).collect()
    }

    /// One unit-length vector per input (each at most `info.max_tokens` tokens, non-empty).
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> anyhow::Result<Vec<Vec<f32>>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { inputs, reply }).map_err(|_| anyhow!("embedding engine stopped"))?;
        rx.await.map_err(|_| anyhow!("embedding engine stopped"))?.map_err(|e| anyhow!(e))
    }
}

fn embed_all(ctx: &mut llama_cpp_2::context::LlamaContext<'_>, batch: &mut LlamaBatch, inputs: &[Vec<u32>], dims: usize) -> Result<Vec<Vec<f32>>, String> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut start = 0;
    while start < inputs.len() {
        // Pack as many whole inputs as fit.
        let mut end = start;
        let mut tokens = 0;
        while end < inputs.len() && end - start < MAX_SEQS as usize && tokens + inputs[end].len() <= BATCH_TOKENS as usize {
            tokens += inputs[end].len();
            end += 1;
        }
        if end == start {
            return Err(format!("input {start} has {} tokens, more than {BATCH_TOKENS}", inputs[start].len()));
        }
        batch.clear();
        for (s, inp) in inputs[start..end].iter().enumerate() {
            for (p, &t) in inp.iter().enumerate() {
                batch.add(LlamaToken(t as i32), p as i32, &[s as i32], true).map_err(|e| e.to_string())?;
            }
        }
        ctx.decode(batch).map_err(|e| format!("encoding failed: {e}"))?;
        for s in 0..end - start {
            let v = ctx.embeddings_seq_ith(s as i32).map_err(|_| "the model produced no pooled embedding (is it an embedding model?)".to_string())?;
            out.push(normalize(v[..dims].to_vec()));
        }
        start = end;
    }
    Ok(out)
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalize_gives_unit_length() {
        let v = normalize(vec![3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(normalize(vec![0.0, 0.0]), vec![0.0, 0.0]);
    }
}
