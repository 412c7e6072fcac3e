//! Sampling completions from a model: prompts prefilled once, then token-by-token decoding with a
//! key/value cache, batched across prompts and samples.

use crate::{KvCache, Llama};
use anyhow::{bail, ensure, Result};
use candle_core::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

/// The sampling defaults (`dpo sample`, `dpo eval --prompts`).
pub mod defaults {
    pub const N: usize = 4;
    pub const MAX_NEW_TOKENS: usize = 64;
    pub const TEMPERATURE: f64 = 1.0;
    pub const TOP_P: f64 = 1.0;
    pub const TOP_K: usize = 0;
    pub const SEED: u64 = 0;
    pub const MAX_BATCH: usize = 64;
}

/// How to sample; each field is a flag of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct SampleConfig {
    /// Completions per prompt.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::N))]
    pub n: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::MAX_NEW_TOKENS))]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy decoding.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::TEMPERATURE))]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to at least `top_p` (1: off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::TOP_P))]
    pub top_p: f64,
    /// Keep the `top_k` most likely tokens (0: off).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::TOP_K))]
    pub top_k: usize,
    /// Seed: sequence `j` of prompt `i` draws from its own ChaCha8 stream `i * n + j` of this
    /// seed, so the output does not depend on how prompts are batched.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::SEED))]
    pub seed: u64,
    /// Sequences decoded together (prompts per batch = this / n).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::MAX_BATCH))]
    pub max_batch: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            n: defaults::N,
            max_new_tokens: defaults::MAX_NEW_TOKENS,
            temperature: defaults::TEMPERATURE,
            top_p: defaults::TOP_P,
            top_k: defaults::TOP_K,
            seed: defaults::SEED,
            max_batch: defaults::MAX_BATCH,
        }
    }
}

impl SampleConfig {
    /// Refuses settings that cannot sample: `top_p` outside (0, 1], zero `n`, `max_new_tokens` or `max_batch`.
    pub fn validate(&self) -> Result<()> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        if self.n == 0 || self.max_new_tokens == 0 || self.max_batch == 0 {
            bail!("--n, --max-new-tokens and --max-batch must be at least 1");
        }
        Ok(())
    }
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Sampled {
    /// Its token ids, ending with EOS when the model stopped by itself.
    pub tokens: Vec<u32>,
    /// `sum_t log pi(y_t | x, y_<t)` under the sampling model at temperature 1 (nats), whatever
    /// the sampling settings: the same quantity `dpo logps` computes.
    pub logp: f64,
    /// Whether it ended with EOS (rather than at `max_new_tokens`).
    pub ended: bool,
}

/// Picks the next token from a row of logits; returns it with its log-prob under the model.
/// Plain temperature sampling (no top-k, no top-p) needs no allocation: two passes over the row
/// with the same arithmetic as the general path, so both pick the same token.
fn choose(z: &[f32], cfg: &SampleConfig, rng: &mut ChaCha8Rng) -> (u32, f64) {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let lse = m as f64 + z.iter().map(|&x| ((x - m) as f64).exp()).sum::<f64>().ln();
    let t = if cfg.temperature <= 0.0 {
        z.iter().enumerate().fold(0, |best, (i, &x)| if x > z[best] { i } else { best })
    } else if cfg.top_k == 0 && cfg.top_p >= 1.0 {
        let weight = |x: f32| ((x - m) as f64 / cfg.temperature).exp();
        let mut u = rng.random::<f64>() * z.iter().map(|&x| weight(x)).sum::<f64>();
        let mut pick = z.len() - 1;
        for (i, &x) in z.iter().enumerate() {
            let w = weight(x);
            if u < w {
                pick = i;
                break;
            }
            u -= w;
        }
        pick
    } else {
        let mut cand: Vec<usize> = (0..z.len()).collect();
        if cfg.top_k > 0 && cfg.top_k < cand.len() {
            cand.select_nth_unstable_by(cfg.top_k - 1, |&a, &b| z[b].total_cmp(&z[a]));
            cand.truncate(cfg.top_k);
        }
        let mut w: Vec<f64> = cand.iter().map(|&i| ((z[i] - m) as f64 / cfg.temperature).exp()).collect();
        if cfg.top_p < 1.0 {
            let mut order: Vec<usize> = (0..cand.len()).collect();
            order.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
            let total: f64 = w.iter().sum();
            let (mut acc, mut keep) = (0.0, Vec::new());
            for o in order {
                keep.push(o);
                acc += w[o];
                if acc >= cfg.top_p * total {
                    break;
                }
            }
            cand = keep.iter().map(|&o| cand[o]).collect();
            w = keep.iter().map(|&o| w[o]).collect();
        }
        let mut u = rng.random::<f64>() * w.iter().sum::<f64>();
        let mut pick = cand[cand.len() - 1];
        for (&i, &wi) in cand.iter().zip(&w) {
            if u < wi {
                pick = i;
                break;
            }
            u -= wi;
        }
        pick
    };
    (t as u32, z[t] as f64 - lse)
}

/// Samples `cfg.n` completions for every prompt (token ids, non-empty) from `model`, stopping at
/// any of the `stop` ids (the tokenizer's [`crate::tokenizer::Tokenizer::stop_ids`]) or `cfg.max_new_tokens`.
/// `progress(prompts_done, tokens_generated)` after each batch (this rank's). Returns
/// `[prompt][sample]`.
///
/// Across the ranks of a job ([`dpo_runtime::dist`]) every rank calls it with the same prompts: the
/// batches of `cfg.max_batch / cfg.n` prompts one process would form are divided among the ranks
/// (balanced by prompt and new tokens) and every rank gets every prompt's samples, equal to one
/// process's (sample `j` of prompt `i` draws from its own random stream `i * n + j`).
pub fn sample_ids(
    model: &Llama,
    prompts: &[Vec<u32>],
    stop: &[u32],
    cfg: &SampleConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<Sampled>>> {
    ensure!(cfg.n > 0 && cfg.max_new_tokens > 0, "need n >= 1 and max_new_tokens >= 1");
    let model = model.detached();
    let per_batch = (cfg.max_batch / cfg.n).max(1);
    let chunks: Vec<std::ops::Range<usize>> =
        (0..prompts.len()).step_by(per_batch).map(|s| s..(s + per_batch).min(prompts.len())).collect();
    let costs: Vec<usize> =
        chunks.iter().map(|r| prompts[r.clone()].iter().map(|p| p.len() + cfg.n * cfg.max_new_tokens).sum()).collect();
    let (mut done, mut generated) = (0, 0);
    let per_chunk: Vec<Vec<Vec<Sampled>>> = dpo_runtime::dist::map_units(&costs, |mine| {
        mine.iter()
            .map(|&c| {
                let s = sample_batch(&model, &prompts[chunks[c].clone()], chunks[c].start, stop, cfg)?;
                done += chunks[c].len();
                generated += s.iter().flatten().map(|x| x.tokens.len()).sum::<usize>();
                progress(done, generated);
                Ok(s)
            })
            .collect()
    })?;
    Ok(per_chunk.into_iter().flatten().collect())
}

/// A sequence being decoded: its cache, what it sampled so far, its random stream.
type Sequence = (KvCache, Sampled, ChaCha8Rng);

/// [`sample_ids`] of one batch of prompts, the first of which is prompt `first` of the run (its
/// random streams), in this process.
fn sample_batch(
    model: &Llama,
    chunk: &[Vec<u32>],
    first: usize,
    stop: &[u32],
    cfg: &SampleConfig,
) -> Result<Vec<Vec<Sampled>>> {
    let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
    let (hidden, caches) = model.prefill(&refs)?;
    let logits = model.logits(&hidden)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    // sequence s = prompt s / n, sample s % n
    let mut seqs: Vec<Sequence> = Vec::with_capacity(chunk.len() * cfg.n);
    for (p, cache) in caches.into_iter().enumerate() {
        for j in 0..cfg.n {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
            rng.set_stream(((first + p) * cfg.n + j) as u64);
            let (t, lp) = choose(&logits[p], cfg, &mut rng);
            seqs.push((cache.clone(), Sampled { tokens: vec![t], logp: lp, ended: stop.contains(&t) }, rng));
        }
    }
    loop {
        let active: Vec<usize> =
            (0..seqs.len()).filter(|&s| !seqs[s].1.ended && seqs[s].1.tokens.len() < cfg.max_new_tokens).collect();
        if active.is_empty() {
            break;
        }
        let ids: Vec<u32> = active.iter().map(|&s| *seqs[s].1.tokens.last().unwrap()).collect();
        let mut caches: Vec<&mut KvCache> = Vec::with_capacity(active.len());
        let mut rest = seqs.as_mut_slice();
        let mut offset = 0;
        for &s in &active {
            let (_, tail) = rest.split_at_mut(s - offset);
            let (head, tail) = tail.split_at_mut(1);
            caches.push(&mut head[0].0);
            rest = tail;
            offset = s + 1;
        }
        let hidden = model.decode_step(&ids, &mut caches)?;
        let logits = model.logits(&hidden)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        // Each sequence draws from its own generator: the rows are independent.
        let mut rows: Vec<(&[f32], &mut Sequence)> = Vec::with_capacity(active.len());
        let mut next = active.iter().zip(&logits).peekable();
        for (i, seq) in seqs.iter_mut().enumerate() {
            if let Some((_, row)) = next.next_if(|(&s, _)| s == i) {
                rows.push((row, seq));
            }
        }
        rows.into_par_iter().for_each(|(row, (_, sampled, rng))| {
            let (t, lp) = choose(row, cfg, rng);
            sampled.tokens.push(t);
            sampled.logp += lp;
            sampled.ended = stop.contains(&t);
        });
    }
    Ok(seqs.chunks(cfg.n).map(|p| p.iter().map(|s| s.1.clone()).collect()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_respects_greedy_top_k_and_reports_model_logp() {
        let z = [1.0f32, 3.0, 2.0, -1.0];
        let lse = z.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let greedy = SampleConfig { temperature: 0.0, ..Default::default() };
        let (t, lp) = choose(&z, &greedy, &mut rng);
        assert!(t == 1 && (lp - (3.0 - lse)).abs() < 1e-12);
        let top2 = SampleConfig { top_k: 2, ..Default::default() };
        for _ in 0..50 {
            let (t, lp) = choose(&z, &top2, &mut rng);
            assert!(t == 1 || t == 2);
            assert!((lp - (z[t as usize] as f64 - lse)).abs() < 1e-12);
        }
        let nucleus = SampleConfig { top_p: 0.5, ..Default::default() };
        assert!((0..50).all(|_| choose(&z, &nucleus, &mut rng).0 == 1), "p(1) = 0.66 > 0.5");
    }

    /// Plain temperature sampling (the path without allocations) picks what the general path
    /// (candidates and weights in vectors) picks from the same random draw.
    #[test]
    fn plain_sampling_picks_as_the_general_path() {
        let mut g = ChaCha8Rng::seed_from_u64(3);
        let z: Vec<f32> = (0..5000).map(|_| g.random_range(-4.0f32..4.0)).collect();
        let cfg = SampleConfig { temperature: 0.7, ..Default::default() };
        let m = z.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let w: Vec<f64> = z.iter().map(|&x| ((x - m) as f64 / 0.7).exp()).collect();
        let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
        for _ in 0..300 {
            let (t, _) = choose(&z, &cfg, &mut a);
            let mut u = b.random::<f64>() * w.iter().sum::<f64>();
            let mut want = z.len() - 1;
            for (i, &wi) in w.iter().enumerate() {
                if u < wi {
                    want = i;
                    break;
                }
                u -= wi;
            }
            assert_eq!(t as usize, want);
        }
    }
}
