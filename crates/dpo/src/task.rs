//! What a training run optimises: a preference loss against a reference, or supervised
//! fine-tuning (SFT) on completions.

use crate::data::Tokenized;
use crate::logps::CompletionLogps;
use crate::loss::{Loss, LossBatch};
use crate::metrics::{preference_metrics, sft_metrics, ExampleStats, Metrics};
use anyhow::Result;
use candle_core::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    /// Preference optimisation of pairs (chosen, rejected) with `Loss`.
    Preference(Loss),
    /// Supervised fine-tuning: maximise `log pi(y|x)` of one completion per example, prompt
    /// tokens masked out (the SFT stage of the DPO paper §4, `pi_ref = argmax E log pi(y_w|x)`).
    Sft,
}

impl Task {
    /// Completions per example.
    pub fn completions(&self) -> usize {
        match self {
            Task::Preference(_) => 2,
            Task::Sft => 1,
        }
    }

    /// Whether reference log-probs are needed.
    pub fn needs_reference(&self) -> bool {
        matches!(self, Task::Preference(_))
    }

    /// The per-example loss terms `[examples]` of a micro-batch; the step's loss is their sum
    /// divided by [`Task::normalizer`].
    pub fn loss_terms(&self, out: &CompletionLogps, reference: &[f64]) -> Result<Tensor> {
        match self {
            Task::Preference(loss) => loss.per_example(&LossBatch::new(out.logps.clone(), reference, &out.tokens, 2)?),
            // the summed negative log-likelihood of each completion
            Task::Sft => Ok(out.logps.neg()?),
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

    /// The metrics of a step or an evaluation (TRL's names).
    pub fn metrics(&self, stats: &[ExampleStats], vocab: usize) -> Metrics {
        match self {
            Task::Preference(loss) => preference_metrics(stats, loss.beta(), vocab),
            Task::Sft => sft_metrics(stats),
        }
    }
}
