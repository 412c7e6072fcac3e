//! One optimiser batch: forward, loss and backward over micro-batches, gradients accumulated.

use crate::batch::{micro_batches, pack, PackedBatch};
use crate::data::Tokenized;
use crate::logps::{completion_logps, completion_logps_of_hidden};
use crate::metrics::ExampleStats;
use crate::ops::mix_seed;
use crate::policy::Policy;
use crate::task::{Task, TaskOutput};
use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::ops::Range;
use std::time::Instant;

/// The result of [`loss_and_gradients`].
pub struct BatchResult {
    /// d(mean loss)/d(param), one per parameter of the policy (same order).
    pub grads: Vec<Tensor>,
    /// What each example contributed (for the metrics).
    pub stats: Vec<ExampleStats>,
    /// Wall time of the forward passes (model + loss) and of the backward passes, seconds
    /// (with recomputation, the recomputed forward counts as backward).
    pub forward_seconds: f64,
    pub backward_seconds: f64,
}

/// How a step's forward and backward passes run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    /// Packed rows per forward pass (micro-batching: memory, not gradients).
    pub max_tokens: usize,
    /// Examples per batch: the group a batch-coupled loss (KTO) sees in one pass.
    pub batch_size: usize,
    /// Training mode: the seed of this step's dropout masks (`None`: no dropout).
    pub dropout_seed: Option<u64>,
    /// Gradient checkpointing: keep each decoder layer's input only, recompute the layer in the
    /// backward pass (activation memory layers x rows x hidden, one more forward of compute).
    pub recompute: bool,
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

/// [`step_gradients`] without dropout or recomputation.
pub fn loss_and_gradients(policy: &Policy, examples: &[&Tokenized], reference: &[&[f64]], task: &Task, max_tokens: usize, batch_size: usize) -> Result<BatchResult> {
    step_gradients(policy, examples, reference, task, &StepSettings { max_tokens, batch_size, dropout_seed: None, recompute: false })
}

/// Gradients of the step's loss over `examples`: the sum of the task's loss terms divided by its
/// normaliser (for DPO, the mean loss over the pairs). `reference[i]` holds the reference
/// log-probs of example `i`'s completions (empty for SFT). The examples are cut into
/// micro-batches ([`forward_groups`]); each is one forward ([`Task::forward`]) and one backward,
/// and the gradients add up: the same gradient as one pass over the whole batch, in bounded
/// memory. With `recompute`, each micro-batch's backward recomputes the layers one at a time.
pub fn step_gradients(policy: &Policy, examples: &[&Tokenized], reference: &[&[f64]], task: &Task, s: &StepSettings) -> Result<BatchResult> {
    let scale = 1.0 / task.normalizer(examples);
    let vars = policy.vars();
    let mut grads = Grads { vars: &vars, sums: vec![None; vars.len()] };
    let mut stats = Vec::with_capacity(examples.len());
    let (mut forward_seconds, mut backward_seconds) = (0.0, 0.0);
    for (j, range) in forward_groups(task, examples, s.max_tokens, s.batch_size).into_iter().enumerate() {
        let model = match s.dropout_seed {
            Some(seed) => policy.model.with_dropout(mix_seed(seed, j as u64)),
            None => policy.model.clone(),
        };
        let group = &examples[range.clone()];
        let batch = pack(group);
        let refs = &reference[range];
        let t0 = Instant::now();
        let out = if s.recompute {
            recomputed(&model, &batch, &mut grads, &mut backward_seconds, |hidden| task.forward(group, &completion_logps_of_hidden(&model, &batch, hidden)?, refs), scale)?
        } else {
            let out = task.forward(group, &completion_logps(&model, &batch)?, refs)?;
            let t1 = Instant::now();
            grads.add((out.losses.sum_all()? * scale)?.backward()?)?;
            backward_seconds += t1.elapsed().as_secs_f64();
            out
        };
        forward_seconds += t0.elapsed().as_secs_f64();
        stats.extend(out.stats);
    }
    forward_seconds -= backward_seconds;
    let grads = grads.sums.into_iter().collect::<Option<Vec<_>>>().context("a parameter received no gradient")?;
    Ok(BatchResult { grads, stats, forward_seconds, backward_seconds })
}

/// Gradient sums per trainable variable.
struct Grads<'a> {
    vars: &'a [Var],
    sums: Vec<Option<Tensor>>,
}

impl Grads<'_> {
    /// Adds the gradients of a backward pass (variables it did not reach are left as they are).
    fn add(&mut self, store: GradStore) -> Result<()> {
        for (acc, v) in self.sums.iter_mut().zip(self.vars) {
            if let Some(g) = store.get(v) {
                *acc = Some(match acc.take() {
                    None => g.clone(),
                    Some(a) => (a + g)?,
                });
            }
        }
        Ok(())
    }
}

/// One micro-batch with gradient checkpointing (Chen et al. 2016, "Training Deep Nets with
/// Sublinear Memory Cost"): the layers run forward keeping only each layer's input; the head and
/// loss run with a graph from the last hidden state; then, from the last layer down, each layer
/// is recomputed from its input (the same dropout masks) and back-propagated with the gradient of
/// its output, `d(sum(y * g))`. The embedding lookup's gradient comes last. Returns the task's
/// output; `backward_seconds` grows by the time of the backward passes and recomputations.
fn recomputed(
    model: &crate::model::Llama,
    batch: &PackedBatch,
    grads: &mut Grads,
    backward_seconds: &mut f64,
    loss: impl FnOnce(&Tensor) -> Result<TaskOutput>,
    scale: f64,
) -> Result<TaskOutput> {
    let rope = model.rope_table(&batch.layout.positions())?;
    let layers = model.layers.len();
    let mut inputs = Vec::with_capacity(layers + 1);
    inputs.push(model.embed_rows(&batch.ids)?.detach());
    for i in 0..layers {
        let y = model.packed_layer(i, &inputs[i], &rope, &batch.layout)?.detach();
        inputs.push(y);
    }
    let last = Var::from_tensor(&inputs[layers])?;
    let out = loss(last.as_tensor())?;
    let t0 = Instant::now();
    let store = (out.losses.sum_all()? * scale)?.backward()?;
    let mut g = store.get(&last).context("no gradient reached the last hidden state")?.clone();
    grads.add(store)?;
    for i in (0..layers).rev() {
        let x = Var::from_tensor(&inputs[i])?;
        let y = model.packed_layer(i, x.as_tensor(), &rope, &batch.layout)?;
        let store = (y * &g)?.sum_all()?.backward()?;
        g = store.get(&x).context("no gradient reached a layer's input")?.clone();
        grads.add(store)?;
    }
    // The embedding's own gradient (full fine-tuning): d(sum(embed(ids) * g)).
    let e = model.embed_rows(&batch.ids)?;
    if e.track_op() {
        grads.add((e * &g)?.sum_all()?.backward()?)?;
    }
    *backward_seconds += t0.elapsed().as_secs_f64();
    Ok(out)
}
