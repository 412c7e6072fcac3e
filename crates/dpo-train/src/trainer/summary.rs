//! What a run of the loop did: `summary.json`, and the per-step log behind it.

use crate::metrics::Metrics;
use serde::Serialize;
use std::path::PathBuf;

/// What made a run of the training loop; `summary.json`'s `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// Preference optimisation on a data set (`dpo train`).
    Train,
    /// Supervised fine-tuning (`dpo sft`).
    Sft,
    /// Online DPO: every step's pairs sampled from the policy and judged (`dpo train --online`).
    Online,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// What made the run: `train`, `sft` or `online` (`dpo report` reads every kind).
    pub kind: RunKind,
    pub steps: usize,
    pub epochs: f64,
    pub train_seconds: f64,
    pub total_seconds: f64,
    /// Training tokens per second, counted as TRL counts `num_tokens` (every prompt+completion sequence).
    pub train_tokens_per_second: f64,
    /// Rows actually computed per second (each prompt once).
    pub packed_tokens_per_second: f64,
    pub peak_rss_bytes: Option<u64>,
    /// Per optimiser step: wall seconds, training tokens (TRL's count), and the seconds spent in
    /// forward passes, backward passes and the clip + AdamW update.
    pub step_seconds: Vec<f64>,
    pub step_tokens: Vec<usize>,
    pub step_forward_seconds: Vec<f64>,
    pub step_backward_seconds: Vec<f64>,
    pub step_optimizer_seconds: Vec<f64>,
    /// Ranks of the job, and per step the seconds this rank (0) waited for the slowest rank's
    /// share, and then spent in collectives (gradient all-reduce, statistics gather, ZeRO's
    /// all-gather of the weights).
    pub ranks: usize,
    pub step_wait_seconds: Vec<f64>,
    pub step_comm_seconds: Vec<f64>,
    /// Payload bytes rank 0 put into collectives over the training steps, per step.
    pub comm_bytes_per_step: f64,
    /// Bytes of AdamW state (the two moments) rank 0 holds: 1/N of the whole with `--zero-stage 1`.
    pub optimizer_state_bytes: usize,
    /// Peak resident memory of each rank, bytes (rank 0's is `peak_rss_bytes`).
    pub peak_rss_bytes_per_rank: Vec<Option<u64>>,
    pub final_train: Metrics,
    pub final_eval: Option<Metrics>,
    pub output_dir: PathBuf,
}

/// Per optimiser step: wall seconds, training tokens (TRL's count) and where the time went.
#[derive(Debug, Default)]
pub(super) struct StepLog {
    pub(super) seconds: Vec<f64>,
    pub(super) tokens: Vec<usize>,
    pub(super) forward: Vec<f64>,
    pub(super) backward: Vec<f64>,
    pub(super) optimizer: Vec<f64>,
    pub(super) wait: Vec<f64>,
    pub(super) comm: Vec<f64>,
    pub(super) comm_bytes: u64,
    /// Rows computed (each prompt once), all steps.
    pub(super) packed_tokens: usize,
}

/// What [`StepLog::summary`] adds to the log.
pub(super) struct Totals {
    pub(super) kind: RunKind,
    pub(super) steps: usize,
    pub(super) epochs: f64,
    pub(super) total_seconds: f64,
    pub(super) optimizer_state_bytes: usize,
    pub(super) peak_rss_bytes_per_rank: Vec<Option<u64>>,
    pub(super) final_train: Metrics,
    pub(super) final_eval: Option<Metrics>,
    pub(super) output_dir: PathBuf,
}

impl StepLog {
    /// A step's passes: forward and backward seconds, the wait for the slowest rank and the
    /// collectives (with ZeRO's all-gather of `zero_seconds`).
    pub(super) fn push_passes(&mut self, res: &crate::step::BatchResult, zero_seconds: f64) {
        self.forward.push(res.forward_seconds);
        self.backward.push(res.backward_seconds);
        self.wait.push(res.wait_seconds);
        self.comm.push(res.comm_seconds + zero_seconds);
    }

    /// A step with no examples: no passes.
    pub(super) fn push_idle(&mut self) {
        for v in [&mut self.forward, &mut self.backward, &mut self.wait, &mut self.comm] {
            v.push(0.0);
        }
    }

    /// The run's summary.
    pub(super) fn summary(self, t: Totals) -> TrainSummary {
        let train_seconds = self.train_seconds();
        TrainSummary {
            kind: t.kind,
            steps: t.steps,
            epochs: t.epochs,
            train_seconds,
            total_seconds: t.total_seconds,
            train_tokens_per_second: self.tokens_total() as f64 / train_seconds.max(1e-9),
            packed_tokens_per_second: self.packed_tokens as f64 / train_seconds.max(1e-9),
            peak_rss_bytes: dpo_runtime::io::peak_rss_bytes(),
            ranks: dpo_runtime::dist::world().size(),
            comm_bytes_per_step: self.comm_bytes as f64 / self.comm.len().max(1) as f64,
            step_seconds: self.seconds,
            step_tokens: self.tokens,
            step_forward_seconds: self.forward,
            step_backward_seconds: self.backward,
            step_optimizer_seconds: self.optimizer,
            step_wait_seconds: self.wait,
            step_comm_seconds: self.comm,
            optimizer_state_bytes: t.optimizer_state_bytes,
            peak_rss_bytes_per_rank: t.peak_rss_bytes_per_rank,
            final_train: t.final_train,
            final_eval: t.final_eval,
            output_dir: t.output_dir,
        }
    }

    pub(super) fn train_seconds(&self) -> f64 {
        self.seconds.iter().sum()
    }

    pub(super) fn tokens_total(&self) -> usize {
        self.tokens.iter().sum()
    }
}
