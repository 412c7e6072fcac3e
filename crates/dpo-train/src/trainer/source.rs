//! Where a step's examples come from: the extension point of the training loop.
//!
//! The loop owns everything a step has in common (the seeded order of units, the backward pass,
//! clipping, AdamW, metrics lines, evaluation, checkpoints); a [`StepSource`] only turns the
//! step's units into examples with their reference log-probs. [`DatasetSource`] is offline
//! training: the units are the examples of a data set, their reference log-probs looked up.
//! Online DPO (`dpo-align`) is a second source: the units are prompts, the examples pairs of
//! samples from the current policy that a judge ordered.

use crate::metrics::Metrics;
use crate::reference::References;
use crate::step::share;
use crate::task::Task;
use anyhow::Result;
use dpo_data::{Tokenized, TokenizedSet};
use dpo_model::policy::Policy;
use dpo_runtime::observer::Observer;

/// The examples of one optimiser step.
pub struct StepExamples<'a> {
    /// The examples trained on, in step order (possibly none: every online pair tied).
    pub examples: Vec<&'a Tokenized>,
    /// `reference[i]`: the reference log-probs of example `i`'s completions, nats (empty lists
    /// when the task needs none).
    pub reference: Vec<Vec<f64>>,
    /// What the source adds to the step's metrics line (`online/*`).
    pub metrics: Metrics,
}

/// A way of producing each step's examples, plugged into the one training loop
/// ([`super::train`]).
pub trait StepSource {
    /// Units in one epoch: examples, or prompts. The loop visits them in its seeded order.
    fn units(&self) -> usize;

    /// The examples of optimiser step `step` (1-based) made from the units `idx` (in the
    /// loop's order; repeated steps after a resume get the same `idx`), with `policy` as it is
    /// before the step's update.
    fn examples(
        &mut self,
        step: usize,
        idx: &[usize],
        policy: &Policy,
        obs: &mut dyn Observer,
    ) -> Result<StepExamples<'_>>;

    /// The reference log-probs of the evaluation set's examples, `max_tokens` packed rows per
    /// forward pass (across ranks every rank calls it).
    fn eval_references(&mut self, set: &TokenizedSet, max_tokens: usize) -> Result<Vec<Vec<f64>>>;

    /// After optimiser step `step` has updated `policy` (TR-DPO moves its reference here).
    fn after_step(&mut self, _step: usize, _policy: &Policy, _obs: &mut dyn Observer) -> Result<()> {
        Ok(())
    }
}

/// Offline training: the units are the examples of a tokenized data set; their reference
/// log-probs come from [`References`] (given, cached, or TR-DPO's moving reference).
pub struct DatasetSource {
    set: TokenizedSet,
    references: References,
    task: Task,
    batch_size: usize,
    max_tokens: usize,
}

impl DatasetSource {
    /// The source over `set` with its `references`; `task`, the batch size and the forward
    /// budget decide how TR-DPO's per-batch reference pass is divided among ranks.
    pub fn new(set: TokenizedSet, references: References, task: &Task, batch_size: usize, max_tokens: usize) -> Self {
        Self { set, references, task: task.clone(), batch_size, max_tokens }
    }

    /// TR-DPO's reference log-probs of the step's examples across ranks: each rank computes its
    /// own share only (the rest stay empty: no rank reads another's share).
    fn moving_reference_share(&mut self, idx: &[usize]) -> Result<Vec<Vec<f64>>> {
        let world = dpo_runtime::dist::world();
        let examples: Vec<&Tokenized> = idx.iter().map(|&i| &self.set.examples[i]).collect();
        let mine = share(&self.task, &examples, self.batch_size, world.size(), world.rank())
            .positions
            .swap_remove(world.rank());
        let got = self.references.train_batch(
            &self.set,
            &mine.iter().map(|&p| idx[p]).collect::<Vec<_>>(),
            self.max_tokens,
        )?;
        let mut all = vec![Vec::new(); idx.len()];
        mine.into_iter().zip(got).for_each(|(p, r)| all[p] = r);
        Ok(all)
    }
}

impl StepSource for DatasetSource {
    fn units(&self) -> usize {
        self.set.examples.len()
    }

    fn examples(
        &mut self,
        _step: usize,
        idx: &[usize],
        _policy: &Policy,
        _obs: &mut dyn Observer,
    ) -> Result<StepExamples<'_>> {
        let reference = if self.references.per_batch() && dpo_runtime::dist::world().size() > 1 {
            self.moving_reference_share(idx)?
        } else {
            self.references.train_batch(&self.set, idx, self.max_tokens)?
        };
        let examples = idx.iter().map(|&i| &self.set.examples[i]).collect();
        Ok(StepExamples { examples, reference, metrics: Metrics::new() })
    }

    fn eval_references(&mut self, set: &TokenizedSet, max_tokens: usize) -> Result<Vec<Vec<f64>>> {
        self.references.eval(set, max_tokens)
    }

    fn after_step(&mut self, step: usize, policy: &Policy, obs: &mut dyn Observer) -> Result<()> {
        self.references.after_step(step, &policy.model, obs)
    }
}
