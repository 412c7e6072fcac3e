//! What a training run optimises: a preference objective against a reference, or supervised
//! fine-tuning (SFT) on completions.

use crate::logps::CompletionLogps;
use crate::loss::beta_dpo::{self, MarginStats};
use crate::loss::{kto, CpoKind, Loss, LossBatch, Needs, Objective};
use crate::metrics::{kto_metrics, preference_metrics, sft_metrics, ExampleStats, Metrics, Reward};
use anyhow::{ensure, Result};
use candle_core::Tensor;
use dpo_data::{Tokenized, View};

/// The result of [`Task::forward`].
pub struct TaskOutput {
    /// `[examples]`: each example's loss term.
    pub losses: Tensor,
    pub stats: Vec<ExampleStats>,
    /// β-DPO in training: the running margin statistics after this batch.
    pub margin_stats: Option<MarginStats>,
}

/// The preference losses of `examples` `[examples]` with their batch's `shared` values, KTO's
/// reference point and β-DPO's statistics after the batch (see [`Task::forward_with`]).
fn preference_losses(
    objective: &Objective,
    examples: &[&Tokenized],
    logps: &CompletionLogps,
    refs: &[f64],
    shared: BatchShared,
) -> Result<(Tensor, Option<f64>, Option<MarginStats>)> {
    let k = examples[0].completions.len();
    ensure!(
        examples.iter().all(|e| e.completions.len() == k),
        "examples of one batch have different numbers of completions (rankings must all have the same length)"
    );
    let mut b = LossBatch::new(logps.logps.clone(), refs, &logps.token_counts, k)?;
    b.scores = examples
        .iter()
        .map(|e| e.kind.scores().map(<[f64]>::to_vec))
        .collect::<Option<Vec<Vec<f64>>>>()
        .map(|v| v.concat());
    b.desirable = examples.iter().map(|e| e.kind.desirable()).collect();
    b.kto_z0 = shared.kto_z0;
    b.nll_tokens = Some(match shared.nll_tokens {
        Some(n) => n.to_vec(),
        None => Task::nll_tokens(examples, examples.len()),
    });
    b.f_divergence = objective.f_divergence;
    if objective.use_weighting {
        b.wpo_weights = Some(logps.aligned_means.iter().map(|m| m.exp()).collect());
    }
    let mut margin_stats = None;
    if let (Loss::BetaDpo { beta, alpha, filter_ratio }, Some((prev, seed))) = (objective.main(), shared.beta_dpo) {
        let v = logps.values()?;
        let margins: Vec<f64> =
            (0..v.len() / 2).map(|i| (v[2 * i] - refs[2 * i]) - (v[2 * i + 1] - refs[2 * i + 1])).collect();
        let (plan, stats) = beta_dpo::plan(&margins, prev, beta, alpha, filter_ratio, seed);
        b.beta_dpo = Some(plan);
        margin_stats = Some(stats);
    }
    let z0 = match objective.main() {
        Loss::Kto { beta, desirable_weight, undesirable_weight } => {
            Some(kto::kto(&b, beta, desirable_weight, undesirable_weight)?.1)
        }
        _ => None,
    };
    Ok((objective.per_example(&b)?, z0, margin_stats))
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "task", content = "objective", rename_all = "snake_case")]
pub enum Task {
    /// Preference optimisation with a weighted sum of losses (see [`Objective`]).
    Preference(Objective),
    /// Supervised fine-tuning: maximise `log pi(y|x)` of one completion per example, prompt
    /// tokens masked out (the SFT stage of the DPO paper §4, `pi_ref = argmax E log pi(y_w|x)`).
    Sft,
}

/// What the batches of a group of examples supply to their losses beyond the examples
/// themselves (the group may be a micro-batch of a step, or a rank's part of a batch).
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchShared<'a> {
    /// KTO's reference point `z0 = max(0, sum / count)` of the batch, from every share's
    /// [`Task::coupling_sum`]; `None`: computed over the examples given.
    pub kto_z0: Option<f64>,
    /// Per example: the divisor of its NLL term ([`Task::nll_tokens`]); `None`: the examples
    /// given are one batch.
    pub nll_tokens: Option<&'a [f64]>,
    /// β-DPO in training: the running margin statistics before this batch and the seed of its
    /// draw; `None`: no filtering, the base β (evaluation).
    pub beta_dpo: Option<(MarginStats, u64)>,
}

impl Task {
    /// DPO with `beta` (the sigmoid loss).
    pub fn dpo(beta: f64) -> Self {
        Task::Preference(Objective::single(Loss::Sigmoid { beta, label_smoothing: 0.0 }))
    }

    /// How a data file's records are converted for this task ([`View`]); `batch_size` pairs
    /// KTO's examples with mismatched completions. Errors: losses that need different data.
    pub fn view(&self, batch_size: usize) -> Result<View> {
        Ok(match self {
            Task::Sft => View::Completions,
            Task::Preference(o) => match o.needs()? {
                Needs::Pairs | Needs::Any => View::Pairs,
                Needs::ScoredPairs => View::ScoredPairs,
                Needs::Unpaired => View::Unpaired { batch: batch_size },
                Needs::Rankings => View::Rankings,
            },
        })
    }

    /// Whether reference log-probs are needed.
    pub fn needs_reference(&self) -> bool {
        match self {
            Task::Preference(o) => o.needs_reference(),
            Task::Sft => false,
        }
    }

    /// Whether the examples of a batch must share one forward pass (KTO's KL estimate, AOT).
    pub fn couples_batch(&self) -> bool {
        matches!(self, Task::Preference(o) if o.couples_batch())
    }

    /// Whether the loss keeps running statistics of the margins across batches (β-DPO), which
    /// the loop carries from step to step and saves in checkpoints.
    pub fn keeps_margin_stats(&self) -> bool {
        matches!(self, Task::Preference(o) if matches!(o.main(), Loss::BetaDpo { .. }))
    }

    /// LD-DPO's weight of the tokens past a pair's shorter completion, in the log-probs of the
    /// policy and of the reference ([`dpo_data::batch::pack_weighted`]); `None`: plain sums.
    pub fn ld_alpha(&self) -> Option<f64> {
        match self {
            Task::Preference(o) => o.ld_alpha,
            Task::Sft => None,
        }
    }

    /// The forward half of a step on a group of `examples` whose completions' log-probs are
    /// `logps` (example by example): the per-example loss terms `[examples]` (differentiable when
    /// `logps` is; a step's loss is their sum divided by [`Task::normalizer`]) and what each
    /// example contributes to the metrics. `reference[i]` holds the reference log-probs of
    /// example `i`'s completions (empty for SFT and reference-free losses). A loss that couples
    /// the examples of a batch (KTO's reference point `z0`) computes it over `examples`.
    pub fn forward(
        &self,
        examples: &[&Tokenized],
        logps: &CompletionLogps,
        reference: &[&[f64]],
    ) -> Result<TaskOutput> {
        self.forward_with(examples, logps, reference, BatchShared::default())
    }

    /// Per example, the chosen-completion tokens its NLL term is divided by: the mean scored
    /// length of the first completions of its batch, the step's examples taken `batch_size` at a
    /// time in order (TRL's per-device micro-batches), so that a batch's mean NLL is TRL's token
    /// mean over it ([`crate::loss::reference_free::nll`]).
    pub fn nll_tokens(examples: &[&Tokenized], batch_size: usize) -> Vec<f64> {
        examples
            .chunks(batch_size.max(1))
            .flat_map(|b| {
                let total: usize = b.iter().map(|e| e.scored_tokens().first().copied().unwrap_or(0)).sum();
                std::iter::repeat_n((total as f64 / b.len() as f64).max(1.0), b.len())
            })
            .collect()
    }

    /// For a loss that couples a batch through a mean over it (KTO's `z0`, eq. 3: the mean of
    /// `log pi(y'|x) - log pi_ref(y'|x)` over the mismatched completions): this group's part of
    /// it, `(sum, count)` (nats, examples), so that ranks holding parts of one batch can add
    /// theirs up. `None` for other tasks.
    pub fn coupling_sum(
        &self,
        examples: &[&Tokenized],
        logps: &CompletionLogps,
        reference: &[&[f64]],
    ) -> Result<Option<(f64, f64)>> {
        if !self.couples_batch() {
            return Ok(None);
        }
        let values = logps.values()?;
        let mut sum = 0.0;
        for (i, r) in reference.iter().enumerate().take(examples.len()) {
            ensure!(
                r.len() == 2 && values.len() >= 2 * i + 2,
                "kto needs each completion with a mismatched one for the KL estimate"
            );
            sum += values[2 * i + 1] - r[1];
        }
        Ok(Some((sum, examples.len() as f64)))
    }

    /// [`Task::forward`] with what the examples' batches supply ([`BatchShared`]).
    pub fn forward_with(
        &self,
        examples: &[&Tokenized],
        logps: &CompletionLogps,
        reference: &[&[f64]],
        shared: BatchShared,
    ) -> Result<TaskOutput> {
        ensure!(
            examples.len() == reference.len(),
            "{} examples, {} reference entries",
            examples.len(),
            reference.len()
        );
        let refs: Vec<f64> = reference.iter().flat_map(|r| r.iter().copied()).collect();
        let (losses, kto_z0, margin_stats) = match self {
            Task::Preference(objective) => preference_losses(objective, examples, logps, &refs, shared)?,
            // the summed negative log-likelihood of each completion
            Task::Sft => (logps.logps.neg()?, None, None),
        };
        let values = losses.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let policy = logps.per_example(examples)?;
        let mut c0 = 0;
        let stats = examples
            .iter()
            .zip(policy)
            .zip(values)
            .zip(reference)
            .map(|(((ex, policy), loss), reference)| {
                let c = c0..c0 + policy.len();
                c0 = c.end;
                ExampleStats {
                    loss,
                    policy,
                    reference: reference.to_vec(),
                    token_counts: logps.token_counts[c.clone()].to_vec(),
                    logit_sums: logps.logit_sums[c.clone()].to_vec(),
                    argmax_hits: logps.argmax_hits[c].to_vec(),
                    desirable: ex.kind.desirable(),
                    kto_z0,
                }
            })
            .collect();
        Ok(TaskOutput { losses, stats, margin_stats })
    }

    /// What a step's summed loss terms are divided by: the number of examples (the mean
    /// preference loss), or the number of completion tokens (SFT's token-level mean NLL, as TRL's
    /// `SFTTrainer` normalises over the tokens of all accumulated batches).
    pub fn normalizer(&self, examples: &[&Tokenized]) -> f64 {
        match self {
            Task::Preference(_) => examples.len() as f64,
            Task::Sft => examples.iter().map(|e| e.scored_tokens()[0]).sum::<usize>().max(1) as f64,
        }
    }

    /// The metrics of a step or an evaluation (TRL's names for each trainer).
    pub fn metrics(&self, stats: &[ExampleStats], vocab: usize) -> Metrics {
        match self {
            Task::Preference(o) => match o.main() {
                Loss::Kto { beta, .. } => kto_metrics(stats, beta, vocab),
                l => {
                    let reward = match l {
                        _ if o.needs_reference() => Reward::Implicit,
                        Loss::Cpo { kind: CpoKind::Sigmoid | CpoKind::Hinge, alpha: 0.0, .. } => Reward::Summed,
                        _ => Reward::PerToken,
                    };
                    preference_metrics(stats, l.beta(), vocab, reward)
                }
            },
            Task::Sft => sft_metrics(stats),
        }
    }
}
