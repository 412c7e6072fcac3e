//! One optimiser batch: forward, loss and backward over micro-batches, gradients accumulated.

use crate::logps::{completion_logps, completion_logps_of_hidden, CompletionLogps};
use crate::loss::beta_dpo::MarginStats;
use crate::metrics::ExampleStats;
use crate::task::{BatchShared, Task, TaskOutput};
use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use dpo_data::batch::{micro_batches, pack_weighted, PackedBatch};
use dpo_data::Tokenized;
use dpo_kernels::mix_seed;
use dpo_model::policy::Policy;
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
    /// Across ranks: seconds waiting for the slowest rank to finish its share, then seconds in
    /// the collectives themselves (all-reduce of the gradients, gathering of the statistics);
    /// 0 in one process.
    pub wait_seconds: f64,
    pub comm_seconds: f64,
    /// β-DPO: the running margin statistics after the step's last batch.
    pub margin_stats: Option<MarginStats>,
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
    /// NEFTune's noise on the input embeddings of this step (`None`: none).
    pub neftune: Option<Neftune>,
    /// β-DPO: the running margin statistics before the step and the seed of its draws (each
    /// batch `j` draws from `mix_seed(seed, j)`); `None` with other losses.
    pub beta_dpo: Option<(MarginStats, u64)>,
}

/// NEFTune (Jain et al. 2023, arXiv 2310.05914, Algorithm 1; transformers' `neftune_noise_alpha`):
/// in training, each forward pass adds `U(-m, m)` to every element of the input embeddings,
/// `m = alpha / sqrt(L * hidden)`, with `L` the longest sequence (prompt + completion) of the
/// forward pass's examples (transformers' padded length of the batch), drawn from `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neftune {
    pub alpha: f64,
    pub seed: u64,
}

impl Neftune {
    /// The noise of forward pass `j` over `examples` of a model of width `hidden`.
    pub fn noise(&self, examples: &[&Tokenized], hidden: usize, j: u64) -> dpo_model::EmbeddingNoise {
        let longest = examples
            .iter()
            .map(|e| e.prompt.len() + e.completions.iter().map(Vec::len).max().unwrap_or(0))
            .max()
            .unwrap_or(1)
            .max(1);
        dpo_model::EmbeddingNoise {
            magnitude: self.alpha / ((longest * hidden) as f64).sqrt(),
            seed: mix_seed(self.seed, j),
        }
    }
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
pub fn loss_and_gradients(
    policy: &Policy,
    examples: &[&Tokenized],
    reference: &[&[f64]],
    task: &Task,
    max_tokens: usize,
    batch_size: usize,
) -> Result<BatchResult> {
    step_gradients(
        policy,
        examples,
        reference,
        task,
        &StepSettings { max_tokens, batch_size, dropout_seed: None, recompute: false, neftune: None, beta_dpo: None },
    )
}

/// Gradients of the step's loss over `examples`: the sum of the task's loss terms divided by its
/// normaliser (for DPO, the mean loss over the pairs). `reference[i]` holds the reference
/// log-probs of example `i`'s completions (empty for SFT). The examples are cut into
/// micro-batches ([`forward_groups`]); each is one forward ([`Task::forward`]) and one backward,
/// and the gradients add up: the same gradient as one pass over the whole batch, in bounded
/// memory. With `recompute`, each micro-batch's backward recomputes the layers one at a time.
/// In this process only; [`data_parallel_gradients`] divides a step among the ranks of a job.
pub fn step_gradients(
    policy: &Policy,
    examples: &[&Tokenized],
    reference: &[&[f64]],
    task: &Task,
    s: &StepSettings,
) -> Result<BatchResult> {
    let groups = forward_groups(task, examples, s.max_tokens, s.batch_size);
    let nll_tokens = Task::nll_tokens(examples, s.batch_size);
    let share = Shard { examples, reference, nll_tokens: &nll_tokens, coupled_parts: false };
    shard_gradients(policy, &share, task, s, task.normalizer(examples), &groups)
}

/// Which of a step's examples one rank computes.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// Every rank's positions in the step's examples (ascending within each batch).
    pub positions: Vec<Vec<usize>>,
    /// For a loss that couples a batch (KTO), per batch of `batch_size` examples: the range of
    /// this rank's positions that belongs to it (possibly empty); `None` for other tasks.
    pub batches: Option<Vec<Range<usize>>>,
}

/// How a step's `examples` are divided among `ranks` ([`dpo_runtime::dist::balance`] on packed tokens):
/// the whole step at once, or, for a loss that couples the examples of a batch (KTO), each batch
/// of `batch_size` examples divided on its own (every rank holds a part of every batch).
pub fn share(task: &Task, examples: &[&Tokenized], batch_size: usize, ranks: usize, rank: usize) -> Share {
    let cost = |r: Range<usize>| examples[r].iter().map(|e| e.packed_tokens()).collect::<Vec<_>>();
    if !task.couples_batch() {
        let positions = dpo_runtime::dist::balance(&cost(0..examples.len()), ranks);
        return Share { positions, batches: None };
    }
    let mut positions = vec![Vec::new(); ranks];
    let mut batches = Vec::new();
    for start in (0..examples.len()).step_by(batch_size.max(1)) {
        let end = (start + batch_size.max(1)).min(examples.len());
        for (r, part) in dpo_runtime::dist::balance(&cost(start..end), ranks).into_iter().enumerate() {
            if r == rank {
                batches.push(positions[r].len()..positions[r].len() + part.len());
            }
            positions[r].extend(part.into_iter().map(|u| start + u));
        }
    }
    Share { positions, batches: Some(batches) }
}

/// [`step_gradients`] across the ranks of a job (every rank calls it with the same step): the
/// examples are divided ([`share`]), each rank computes its share's loss terms and gradients
/// (scaled by the whole step's normaliser), one all-reduce sums the gradients
/// ([`dpo_runtime::dist::all_reduce_tensors`]) and the examples' statistics are gathered in step order:
/// every rank ends with the gradient and statistics of the whole step, as one process computes
/// them up to the order of floating-point summation. KTO's `z0` is summed across the ranks'
/// parts of each batch ([`Task::coupling_sum`]). With dropout, each rank draws its own masks.
/// `wait_seconds` and `comm_seconds` in the result: the time waiting for the slowest rank and in
/// the collectives.
pub fn data_parallel_gradients(
    policy: &Policy,
    examples: &[&Tokenized],
    reference: &[&[f64]],
    task: &Task,
    s: &StepSettings,
) -> Result<BatchResult> {
    let w = dpo_runtime::dist::world();
    if w.size() == 1 {
        return step_gradients(policy, examples, reference, task, s);
    }
    let sh = share(task, examples, s.batch_size, w.size(), w.rank());
    let mine = &sh.positions[w.rank()];
    let ex: Vec<&Tokenized> = mine.iter().map(|&p| examples[p]).collect();
    let refs: Vec<&[f64]> = mine.iter().map(|&p| reference[p]).collect();
    let all_nll_tokens = Task::nll_tokens(examples, s.batch_size);
    let nll_tokens: Vec<f64> = mine.iter().map(|&p| all_nll_tokens[p]).collect();
    let stream = (1 << 32) + w.rank() as u64;
    let s = StepSettings {
        dropout_seed: s.dropout_seed.map(|d| mix_seed(d, stream)),
        neftune: s.neftune.map(|n| Neftune { seed: mix_seed(n.seed, stream), ..n }),
        ..*s
    };
    let groups = match &sh.batches {
        Some(b) => b.clone(),
        None => micro_batches(&ex, s.max_tokens),
    };
    let share = Shard { examples: &ex, reference: &refs, nll_tokens: &nll_tokens, coupled_parts: sh.batches.is_some() };
    let mut res = shard_gradients(policy, &share, task, &s, task.normalizer(examples), &groups)?;
    // A one-value all-reduce first: the time until every rank is ready is waiting, not transfer.
    let t0 = Instant::now();
    dpo_runtime::dist::all_reduce_f64(&mut [0.0])?;
    res.wait_seconds = t0.elapsed().as_secs_f64();
    let (_, comm0) = dpo_runtime::dist::traffic();
    res.grads = dpo_runtime::dist::all_reduce_tensors(res.grads)?;
    let gathered: Vec<Vec<ExampleStats>> = dpo_runtime::dist::all_gather(&res.stats)?;
    let mut stats: Vec<Option<ExampleStats>> = vec![None; examples.len()];
    for (positions, part) in sh.positions.iter().zip(gathered) {
        for (&p, st) in positions.iter().zip(part) {
            stats[p] = Some(st);
        }
    }
    res.stats = stats
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .context("an example's statistics are missing after the gather")?;
    res.comm_seconds = dpo_runtime::dist::traffic().1 - comm0;
    Ok(res)
}

/// The examples one process computes in a step: the whole step, or one rank's share of it.
struct Shard<'a> {
    examples: &'a [&'a Tokenized],
    /// `reference[i]`: the reference log-probs of example `i`'s completions.
    reference: &'a [&'a [f64]],
    /// Per example, the divisor of its NLL term ([`Task::nll_tokens`] over the step's batches).
    nll_tokens: &'a [f64],
    /// The forward groups are this rank's parts of the step's batches (some empty), and KTO's
    /// `z0` of each is summed across the ranks first.
    coupled_parts: bool,
}

/// The gradients of a share of a step in forward `groups`, each loss term divided by
/// `normalizer`. A share with no examples gets zero gradients.
fn shard_gradients(
    policy: &Policy,
    share: &Shard,
    task: &Task,
    s: &StepSettings,
    normalizer: f64,
    groups: &[Range<usize>],
) -> Result<BatchResult> {
    let Shard { examples, reference, nll_tokens, coupled_parts } = *share;
    let scale = 1.0 / normalizer;
    let vars = policy.vars();
    let mut grads = Grads { vars: &vars, sums: vec![None; vars.len()] };
    let mut stats = Vec::with_capacity(examples.len());
    let (mut forward_seconds, mut backward_seconds) = (0.0, 0.0);
    let mut margin_stats = s.beta_dpo.map(|(stats, _)| stats);
    for (j, range) in groups.iter().cloned().enumerate() {
        let group = &examples[range.clone()];
        let refs = &reference[range.clone()];
        let beta_dpo = s.beta_dpo.zip(margin_stats).map(|((_, seed), stats)| (stats, mix_seed(seed, j as u64)));
        let shared = BatchShared { kto_z0: None, nll_tokens: Some(&nll_tokens[range]), beta_dpo };
        // z0 = max(0, mean over the whole batch), from every rank's part (an empty part adds 0).
        let loss = |logps: &CompletionLogps| -> Result<TaskOutput> {
            if !coupled_parts {
                return task.forward_with(group, logps, refs, shared);
            }
            let (sum, count) = task.coupling_sum(group, logps, refs)?.unwrap_or((0.0, 0.0));
            let mut total = [sum, count];
            dpo_runtime::dist::all_reduce_f64(&mut total)?;
            let kto_z0 = Some((total[0] / total[1].max(1.0)).max(0.0));
            task.forward_with(group, logps, refs, BatchShared { kto_z0, ..shared })
        };
        if group.is_empty() {
            if coupled_parts {
                dpo_runtime::dist::all_reduce_f64(&mut [0.0, 0.0])?;
            }
            continue;
        }
        let model = group_model(policy, s, group, j as u64);
        let batch = pack_weighted(group, task.ld_alpha());
        let t0 = Instant::now();
        let out = if s.recompute {
            recomputed(
                &model,
                &batch,
                &mut grads,
                &mut backward_seconds,
                |hidden| loss(&completion_logps_of_hidden(&model, &batch, hidden)?),
                scale,
            )?
        } else {
            let out = loss(&completion_logps(&model, &batch)?)?;
            let t1 = Instant::now();
            grads.add((out.losses.sum_all()? * scale)?.backward()?)?;
            backward_seconds += t1.elapsed().as_secs_f64();
            out
        };
        forward_seconds += t0.elapsed().as_secs_f64();
        margin_stats = out.margin_stats.or(margin_stats);
        stats.extend(out.stats);
    }
    forward_seconds -= backward_seconds;
    let grads = if examples.is_empty() {
        vars.iter().map(|v| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?
    } else {
        grads.sums.into_iter().collect::<Option<Vec<_>>>().context("a parameter received no gradient")?
    };
    Ok(BatchResult {
        grads,
        stats,
        forward_seconds,
        backward_seconds,
        wait_seconds: 0.0,
        comm_seconds: 0.0,
        margin_stats,
    })
}

/// The policy's model for forward group `j` over `group`: in training mode with the step's
/// dropout masks and NEFTune noise for the group, when the step has them.
fn group_model(policy: &Policy, s: &StepSettings, group: &[&Tokenized], j: u64) -> dpo_model::Llama {
    let model = match s.dropout_seed {
        Some(seed) => policy.model.with_dropout(mix_seed(seed, j)),
        None => policy.model.clone(),
    };
    match s.neftune {
        Some(n) => model.with_neftune(n.noise(group, model.config.hidden_size, j)),
        None => model,
    }
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
    model: &dpo_model::Llama,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::{Loss, Objective};
    use dpo_data::ExampleKind;

    /// An example of `n + 2` packed tokens.
    fn ex(n: usize) -> Tokenized {
        Tokenized {
            index: 0,
            prompt: vec![1; n],
            completions: vec![vec![2], vec![3]],
            kind: ExampleKind::Pair { scores: None },
        }
    }

    #[test]
    fn share_balances_tokens_and_divides_each_batch_of_a_coupled_loss() {
        let examples: Vec<Tokenized> = [5, 1, 4, 2, 3, 9, 1].iter().map(|&n| ex(n)).collect();
        let refs: Vec<&Tokenized> = examples.iter().collect();
        // costs 7 3 6 4 5 11 3: 11 -> 0, 7 -> 1, 6 -> 1, 5 -> 0, 4 -> 1, 3 -> 0, 3 -> 1
        let s = share(&Task::dpo(0.1), &refs, 3, 2, 0);
        assert_eq!(s, Share { positions: vec![vec![1, 4, 5], vec![0, 2, 3, 6]], batches: None });
        // KTO: batches [0 1 2] [3 4 5] [6], each divided on its own; every rank has a part of each
        let kto = Task::Preference(Objective::single(Loss::Kto {
            beta: 0.1,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
        }));
        let (r0, r1) = (share(&kto, &refs, 3, 2, 0), share(&kto, &refs, 3, 2, 1));
        assert_eq!(r0.positions, vec![vec![0, 5, 6], vec![1, 2, 3, 4]]);
        assert_eq!(r0.positions, r1.positions);
        assert_eq!(r0.batches, Some(vec![0..1, 1..2, 2..3]));
        assert_eq!(r1.batches, Some(vec![0..2, 2..4, 4..4]));
    }
}
