//! What a training run optimises: a preference objective against a reference, or supervised
//! fine-tuning (SFT) on completions.

use crate::data::{ExampleKind, Tokenized};
use crate::logps::CompletionLogps;
use crate::loss::{kto, Loss, LossBatch, Objective};
use crate::metrics::{kto_metrics, preference_metrics, sft_metrics, ExampleStats, Metrics};
use anyhow::{ensure, Result};
use candle_core::Tensor;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "task", content = "objective", rename_all = "snake_case")]
pub enum Task {
    /// Preference optimisation with a weighted sum of losses (see [`Objective`]).
    Preference(Objective),
    /// Supervised fine-tuning: maximise `log pi(y|x)` of one completion per example, prompt
    /// tokens masked out (the SFT stage of the DPO paper §4, `pi_ref = argmax E log pi(y_w|x)`).
    Sft,
}

impl Task {
    /// DPO with `beta` (the sigmoid loss).
    pub fn dpo(beta: f64) -> Self {
        Task::Preference(Objective::single(Loss::Sigmoid { beta, label_smoothing: 0.0 }))
    }

    /// Whether reference log-probs are needed.
    pub fn needs_reference(&self) -> bool {
        match self {
            Task::Preference(o) => o.needs_reference(),
            Task::Sft => false,
        }
    }

    /// Whether the examples of a batch must share one forward pass (KTO's KL estimate).
    pub fn couples_batch(&self) -> bool {
        matches!(self, Task::Preference(o) if o.couples_batch())
    }

    /// The per-example loss terms `[examples]` of a micro-batch of `examples`; the step's loss
    /// is their sum divided by [`Task::normalizer`]. Also returns KTO's `z0`, if any.
    pub fn loss_terms(&self, examples: &[&Tokenized], out: &CompletionLogps, reference: &[f64]) -> Result<(Tensor, Option<f64>)> {
        match self {
            Task::Preference(objective) => {
                let k = examples[0].completions.len();
                ensure!(
                    examples.iter().all(|e| e.completions.len() == k),
                    "examples of one batch have different numbers of completions (rankings must all have the same length)"
                );
                let mut b = LossBatch::new(out.logps.clone(), reference, &out.tokens, k)?;
                let scores: Option<Vec<f64>> = examples
                    .iter()
                    .map(|e| match &e.kind {
                        ExampleKind::Pair { scores: Some(s) } => Some(s.to_vec()),
                        ExampleKind::Ranking { scores: Some(s) } => Some(s.clone()),
                        _ => None,
                    })
                    .collect::<Option<Vec<Vec<f64>>>>()
                    .map(|v| v.concat());
                b.scores = scores;
                b.desirable = examples
                    .iter()
                    .map(|e| match e.kind {
                        ExampleKind::Unpaired { desirable } => Some(desirable),
                        _ => None,
                    })
                    .collect();
                let z0 = match objective.main() {
                    Loss::Kto { beta, desirable_weight, undesirable_weight } => Some(kto::kto(&b, beta, desirable_weight, undesirable_weight)?.1),
                    _ => None,
                };
                Ok((objective.per_example(&b)?, z0))
            }
            // the summed negative log-likelihood of each completion
            Task::Sft => Ok((out.logps.neg()?, None)),
        }
    }

    /// What a step's summed loss terms are divided by: the number of examples (the mean
    /// preference loss), or the number of completion tokens (SFT's token-level mean NLL, as TRL's
    /// `SFTTrainer` normalises over the tokens of all accumulated batches).
    pub fn normalizer(&self, examples: &[&Tokenized]) -> f64 {
        match self {
            Task::Preference(_) => examples.len() as f64,
            Task::Sft => examples.iter().map(|e| crate::reference::scored_tokens(e)[0]).sum::<usize>().max(1) as f64,
        }
    }

    /// The metrics of a step or an evaluation (TRL's names for each trainer).
    pub fn metrics(&self, stats: &[ExampleStats], vocab: usize) -> Metrics {
        match self {
            Task::Preference(o) => match o.main() {
                Loss::Kto { beta, .. } => kto_metrics(stats, beta, vocab),
                l => preference_metrics(stats, l.beta(), vocab, !o.needs_reference()),
            },
            Task::Sft => sft_metrics(stats),
        }
    }
}
