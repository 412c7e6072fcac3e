//! One optimiser batch: forward, loss and backward over micro-batches, gradients accumulated.

use crate::batch::{micro_batches, pack};
use crate::data::Tokenized;
use crate::logps::completion_logps;
use crate::metrics::ExampleStats;
use crate::policy::Policy;
use crate::task::Task;
use anyhow::{Context, Result};
use candle_core::Tensor;
use std::ops::Range;
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

/// How `examples` are cut into forward passes: groups of `batch_size` for a loss that couples the
/// examples of a batch (KTO), else micro-batches of at most `max_tokens` packed rows.
pub fn forward_groups(task: &Task, examples: &[&Tokenized], max_tokens: usize, batch_size: usize) -> Vec<Range<usize>> {
    if task.couples_batch() {
        let b = batch_size.max(1);
        (0..examples.len()).step_by(b).map(|s| s..(s + b).min(examples.len())).collect()
    } else {
        micro_batches(examples, max_tokens)
    }
}

/// Gradients of the step's loss over `examples`: the sum of the task's loss terms divided by its
/// normaliser (for DPO, the mean loss over the pairs). `reference[i]` holds the reference
/// log-probs of example `i`'s completions (empty for SFT). The examples are cut into
/// micro-batches of at most `max_tokens` packed rows; each is one forward ([`Task::forward`]) and
/// one backward, and the gradients add up: the same gradient as one pass over the whole batch, in
/// bounded memory. A loss that couples the examples of a batch (KTO) sees each `batch_size`
/// examples in one pass.
pub fn loss_and_gradients(
    policy: &Policy,
    examples: &[&Tokenized],
    reference: &[&[f64]],
    task: &Task,
    max_tokens: usize,
    batch_size: usize,
) -> Result<BatchResult> {
    let scale = 1.0 / task.normalizer(examples);
    let vars = policy.vars();
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut stats = Vec::with_capacity(examples.len());
    let (mut forward_seconds, mut backward_seconds) = (0.0, 0.0);
    for range in forward_groups(task, examples, max_tokens, batch_size) {
        let t0 = Instant::now();
        let group = &examples[range.clone()];
        let out = task.forward(group, &completion_logps(&policy.model, &pack(group))?, &reference[range])?;
        let t1 = Instant::now();
        forward_seconds += (t1 - t0).as_secs_f64();
        let store = (out.losses.sum_all()? * scale)?.backward()?;
        for (acc, v) in grads.iter_mut().zip(&vars) {
            let g = store.get(v).context("a parameter received no gradient")?;
            *acc = Some(match acc.take() {
                None => g.clone(),
                Some(a) => (a + g)?,
            });
        }
        drop(store);
        backward_seconds += t1.elapsed().as_secs_f64();
        stats.extend(out.stats);
    }
    let grads = grads.into_iter().collect::<Option<Vec<_>>>().context("no examples in the batch")?;
    Ok(BatchResult { grads, stats, forward_seconds, backward_seconds })
}
