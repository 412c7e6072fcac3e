//! One optimiser batch: forward, loss and backward over micro-batches, gradients accumulated.

use crate::batch::{micro_batches, pack};
use crate::data::Tokenized;
use crate::logps::completion_logps;
use crate::loss::{Loss, LossBatch};
use crate::metrics::PairStats;
use crate::policy::Policy;
use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use std::time::Instant;

/// The result of [`loss_and_gradients`].
pub struct BatchResult {
    /// d(mean loss)/d(param), one per parameter of the policy (same order).
    pub grads: Vec<Tensor>,
    /// What each example contributed (for the metrics).
    pub stats: Vec<PairStats>,
    /// Wall time of the forward passes (model + loss) and of the backward passes, seconds.
    pub forward_seconds: f64,
    pub backward_seconds: f64,
}

/// Gradients of the mean loss over `examples` (`reference[i]` holds the reference log-probs of
/// example `i`'s completions). The examples are cut into micro-batches of at most `max_tokens`
/// packed rows; each is one forward and one backward of `sum(loss_i) / examples.len()`, and the
/// gradients add up: the same gradient as one pass over the whole batch, in bounded memory.
pub fn loss_and_gradients(
    policy: &Policy,
    examples: &[&Tokenized],
    reference: &[&[f64]],
    loss: &Loss,
    max_tokens: usize,
) -> Result<BatchResult> {
    ensure!(examples.len() == reference.len(), "{} examples, {} reference entries", examples.len(), reference.len());
    let scale = 1.0 / examples.len() as f64;
    let vars = policy.vars();
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut stats = Vec::with_capacity(examples.len());
    let (mut forward_seconds, mut backward_seconds) = (0.0, 0.0);
    for range in micro_batches(examples, max_tokens) {
        let t0 = Instant::now();
        let batch = pack(&examples[range.clone()]);
        let out = completion_logps(&policy.model, &batch)?;
        let refs: Vec<f64> = reference[range.clone()].iter().flat_map(|r| r.iter().copied()).collect();
        let lb = LossBatch::new(out.logps.clone(), &refs, &out.tokens, 2)?;
        let per_example = loss.per_example(&lb)?;
        let losses = per_example.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let t1 = Instant::now();
        forward_seconds += (t1 - t0).as_secs_f64();
        let store = (per_example.sum_all()? * scale)?.backward()?;
        for (acc, v) in grads.iter_mut().zip(&vars) {
            let g = store.get(v).context("a parameter received no gradient")?;
            *acc = Some(match acc.take() {
                None => g.clone(),
                Some(a) => (a + g)?,
            });
        }
        drop(store);
        backward_seconds += t1.elapsed().as_secs_f64();
        let pol = out.values()?;
        for (j, l) in losses.into_iter().enumerate() {
            let c = 2 * j..2 * j + 2;
            stats.push(PairStats::new(l, &pol[c.clone()], &refs[c.clone()], &out.tokens[c.clone()], &out.logit_sums[c]));
        }
    }
    let grads = grads.into_iter().map(|g| g.expect("at least one micro-batch")).collect();
    Ok(BatchResult { grads, stats, forward_seconds, backward_seconds })
}
