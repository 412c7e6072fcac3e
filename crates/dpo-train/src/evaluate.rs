//! Evaluation on preference data: the task's metrics (`eval_` prefixed) of a policy against its
//! reference, the forward half of a training step without the backward.

use crate::logps::{dataset_logps_sharded, example_logps_sharded};
use crate::metrics::{with_eval_prefix, Metrics};
use crate::task::Task;
use anyhow::Result;
use dpo_data::{Tokenized, TokenizedSet};
use dpo_model::Llama;

/// The task's metrics of `examples` under `model`, without gradients: the forward half of a
/// training step ([`Task::forward`]) over the whole set, its log-probs computed `max_tokens`
/// packed rows at a time. `reference[i]`: the reference log-probs of example `i` (empty for SFT
/// and reference-free losses). A loss that couples a batch (KTO's `z0`) sees the whole set.
/// Across ranks, every rank calls it with the same examples and gets the same metrics (the
/// log-probs are divided among them: [`crate::logps::dataset_logps_sharded`]).
pub fn evaluate(
    model: &Llama,
    examples: &[&Tokenized],
    reference: &[Vec<f64>],
    task: &Task,
    max_tokens: usize,
) -> Result<Metrics> {
    let mut logps = dataset_logps_sharded(model, examples, max_tokens, task.ld_alpha(), |_| {})?;
    // The loss terms of an evaluation are computed in f64 (training's are in the model's dtype).
    logps.logps = logps.logps.to_dtype(candle_core::DType::F64)?;
    let refs: Vec<&[f64]> = reference.iter().map(Vec::as_slice).collect();
    let out = task.forward(examples, &logps, &refs)?;
    Ok(task.metrics(&out.stats, model.config.vocab_size))
}

/// The `eval_` preference metrics of `policy` on `set`, with reference log-probs from `reference`.
pub fn preference_eval(
    policy: &Llama,
    reference: &Llama,
    set: &TokenizedSet,
    task: &Task,
    max_tokens: usize,
) -> Result<Metrics> {
    let ex: Vec<&Tokenized> = set.examples.iter().collect();
    let refs = example_logps_sharded(reference, &ex, max_tokens, task.ld_alpha(), |_| {})?;
    Ok(with_eval_prefix(evaluate(policy, &ex, &refs, task, max_tokens)?))
}
