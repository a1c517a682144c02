//! Token sampling over raw logits: logit bias, presence/frequency penalties, a grammar mask,
//! temperature, top-k, top-p and seeded randomness, plus OpenAI-style logprobs.
//!
//! Sampling runs in Rust rather than in llama.cpp's sampler chain so that the grammar mask,
//! penalties and logprobs see the same numbers, on CPU and on a future GPU build alike.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use toktrie::SimpleVob;

/// Per-request sampling settings, already validated by the API layer.
#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: HashMap<u32, f32>,
    /// `Some(n)`: report the chosen token's logprob and the `n` most likely alternatives.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: HashMap::new(),
            logprobs: None,
        }
    }
}

/// Log-probability of one token, with the most likely alternatives at that step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Mutable per-sequence sampling state.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    counts: HashMap<u32, u32>,
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Sampler { params, rng, counts: HashMap::new(), scratch: Vec::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (modified in place). Tokens outside `mask` are never chosen.
    pub fn sample(&mut self, logits: &mut [f32], mask: Option<&SimpleVob>) -> (u32, Option<TokenLogprob>) {
        for (&tok, &bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(tok as usize) {
                *l += bias;
            }
        }
        if self.params.presence_penalty != 0.0 || self.params.frequency_penalty != 0.0 {
            for (&tok, &n) in &self.counts {
                if let Some(l) = logits.get_mut(tok as usize) {
                    *l -= self.params.presence_penalty + self.params.frequency_penalty * n as f32;
                }
            }
        }
        if let Some(mask) = mask {
            for (i, l) in logits.iter_mut().enumerate() {
                if i >= mask.len() || !mask.is_allowed(i as u32) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let tok = if self.params.temperature <= 1e-4 {
            argmax(logits)
        } else {
            self.sample_random(logits)
        };
        let lp = self.params.logprobs.map(|n| logprob_of(logits, tok, n));
        *self.counts.entry(tok).or_default() += 1;
        (tok, lp)
    }

    fn sample_random(&mut self, logits: &[f32]) -> u32 {
        let t = self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        // Tokens more than 30 nats (after temperature) below the best have probability < 1e-13
        // relative to it; dropping them keeps top-p sorting cheap on a 262k vocabulary.
        let floor = max - 30.0 * t;
        let cands = &mut self.scratch;
        cands.clear();
        cands.extend(
            logits.iter().enumerate().filter(|(_, &l)| l >= floor).map(|(i, &l)| (i as u32, (l - max) / t)),
        );
        if self.params.top_k > 0 && cands.len() > self.params.top_k {
            let k = self.params.top_k;
            cands.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            cands.truncate(k);
        }
        for c in cands.iter_mut() {
            c.1 = c.1.exp();
        }
        let total: f32 = cands.iter().map(|c| c.1).sum();
        if self.params.top_p < 1.0 {
            cands.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            let mut acc = 0.0;
            let mut keep = cands.len();
            for (i, c) in cands.iter().enumerate() {
                acc += c.1 / total;
                if acc >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep.max(1));
        }
        let total: f32 = cands.iter().map(|c| c.1).sum();
        let mut r = self.rng.gen::<f32>() * total;
        for c in cands.iter() {
            r -= c.1;
            if r <= 0.0 {
                return c.0;
            }
        }
        cands.last().map(|c| c.0).unwrap_or_else(|| argmax(logits))
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

/// log-softmax of `tok`, and the `n` best tokens with theirs.
fn logprob_of(logits: &[f32], tok: u32, n: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().filter(|l| l.is_finite()).map(|&l| (l - max).exp()).sum();
    let lse = max + sum.ln();
    let lp = |l: f32| if l.is_finite() { l - lse } else { -9999.0 };
    let mut top: Vec<(u32, f32)> = Vec::new();
    if n > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).filter(|&i| logits[i as usize].is_finite()).collect();
        let k = n.min(idx.len());
        if k > 0 {
            idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
            idx.truncate(k);
            idx.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
            top = idx.into_iter().map(|i| (i, lp(logits[i as usize]))).collect();
        }
    }
    TokenLogprob { logprob: lp(logits[tok as usize]), top }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    #[test]
    fn greedy_picks_the_largest_logit() {
        let mut s = Sampler::new(params());
        let mut l = vec![0.1, 3.0, 2.0, -1.0];
        assert_eq!(s.sample(&mut l, None).0, 1);
    }

    #[test]
    fn logit_bias_and_mask_override_the_model() {
        let mut p = params();
        p.logit_bias.insert(3, 100.0);
        let mut s = Sampler::new(p);
        assert_eq!(s.sample(&mut vec![0.1, 3.0, 2.0, -1.0], None).0, 3);
        let mut mask = SimpleVob::alloc(4);
        mask.allow_token(2);
        let mut s = Sampler::new(params());
        assert_eq!(s.sample(&mut vec![0.1, 3.0, 2.0, -1.0], Some(&mask)).0, 2);
    }

    #[test]
    fn frequency_penalty_discourages_repeats() {
        let mut p = params();
        p.frequency_penalty = 2.0;
        let mut s = Sampler::new(p);
        assert_eq!(s.sample(&mut vec![0.0, 3.0, 2.0], None).0, 1);
        // Token 1 was used once: 3.0 - 2.0 = 1.0 < 2.0.
        assert_eq!(s.sample(&mut vec![0.0, 3.0, 2.0], None).0, 2);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams { temperature: 1.5, seed: Some(seed), ..Default::default() });
            (0..20).map(|_| s.sample(&mut logits.clone(), None).0).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 1, seed: Some(1), ..Default::default() });
        assert_eq!(s.sample(&mut logits.clone(), None).0, argmax(&logits));
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, logprobs: Some(2), ..Default::default() });
        let (tok, lp) = s.sample(&mut vec![0.0, 2.0_f32.ln(), 0.0], None);
        let lp = lp.unwrap();
        assert_eq!(tok, 1);
        assert!((lp.logprob - 0.5_f32.ln()).abs() < 1e-5);
        assert_eq!(lp.top.len(), 2);
        assert_eq!(lp.top[0].0, 1);
        assert!((lp.top[1].1 - 0.25_f32.ln()).abs() < 1e-5);
    }
}
