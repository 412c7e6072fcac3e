//! One optimiser batch: forward, loss and backward over micro-batches, gradients accumulated.

use crate::batch::{micro_batches, pack};
use crate::data::Tokenized;
use crate::logps::completion_logps;
use crate::metrics::ExampleStats;
use crate::policy::Policy;
use crate::task::Task;
use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use std::time::Instant;

/// The result of [`loss_and_gradients`].
pub struct BatchResult {
    /// d(mean loss)/d(param), one per parameter of the policy (same order).
    pub grads: Vec<Tensor>,
    /// What each example contributed (for the metrics).
    pub stats: Vec<ExampleStats>,
    /// Wall time of the forward passes (model + loss) and of the backward passes, seconds.
    pub forward_seconds: f64,
    pub backward_seconds: f64,
}

/// Gradients of the step's loss over `examples`: the sum of the task's loss terms divided by its
/// normaliser (for DPO, the mean loss over the pairs). `reference[i]` holds the reference
/// log-probs of example `i`'s completions (empty for SFT). The examples are cut into
/// micro-batches of at most `max_tokens` packed rows; each is one forward and one backward, and
/// the gradients add up: the same gradient as one pass over the whole batch, in bounded memory.
/// A loss that couples the examples of a batch (KTO) sees each `batch_size` examples in one pass.
pub fn loss_and_gradients(
    policy: &Policy,
    examples: &[&Tokenized],
    reference: &[&[f64]],
    task: &Task,
    max_tokens: usize,
    batch_size: usize,
) -> Result<BatchResult> {
    ensure!(examples.len() == reference.len(), "{} examples, {} reference entries", examples.len(), reference.len());
    let scale = 1.0 / task.normalizer(examples);
    let vars = policy.vars();
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut stats = Vec::with_capacity(examples.len());
    let (mut forward_seconds, mut backward_seconds) = (0.0, 0.0);
    let ranges = if task.couples_batch() {
        (0..examples.len()).step_by(batch_size.max(1)).map(|s| s..(s + batch_size.max(1)).min(examples.len())).collect()
    } else {
        micro_batches(examples, max_tokens)
    };
    for range in ranges {
        let t0 = Instant::now();
        let batch = pack(&examples[range.clone()]);
        let out = completion_logps(&policy.model, &batch)?;
        let refs: Vec<f64> = reference[range.clone()].iter().flat_map(|r| r.iter().copied()).collect();
        let (per_example, z0) = task.loss_terms(&examples[range.clone()], &out, &refs)?;
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
        let mut c0 = 0;
        for (j, l) in losses.into_iter().enumerate() {
            let k = examples[range.start + j].completions.len();
            let c = c0..c0 + k;
            c0 += k;
            stats.push(ExampleStats {
                loss: l,
                policy: pol[c.clone()].to_vec(),
                reference: refs.get(c.clone()).map(<[f64]>::to_vec).unwrap_or_default(),
                tokens: out.tokens[c.clone()].to_vec(),
                logit_sums: out.logit_sums[c.clone()].to_vec(),
                argmax_hits: out.argmax_hits[c].to_vec(),
                desirable: match examples[range.start + j].kind {
                    crate::data::ExampleKind::Unpaired { desirable } => Some(desirable),
                    _ => None,
                },
                kl: z0,
            });
        }
    }
    let grads = grads.into_iter().map(|g| g.expect("at least one micro-batch")).collect();
    Ok(BatchResult { grads, stats, forward_seconds, backward_seconds })
}
