//! The training loop's own settings and their defaults (TRL 1.16's `DPOConfig` /
//! transformers' `TrainingArguments` where TRL has the setting).

use serde::Serialize;
use std::path::PathBuf;

/// The defaults of [`LoopSettings`].
pub mod defaults {
    /// Where a run's files go when no directory is named (transformers' `output_dir`).
    pub const OUTPUT_DIR: &str = "trainer_output";
    pub const NUM_TRAIN_EPOCHS: f64 = 3.0;
    pub const PER_DEVICE_TRAIN_BATCH_SIZE: usize = 8;
    pub const GRADIENT_ACCUMULATION_STEPS: usize = 1;
    pub const SEED: u64 = 42;
    /// Packed rows (tokens) per forward pass: memory against speed, same gradients.
    pub const MAX_TOKENS_PER_FORWARD: usize = 2048;
    /// Non-finite optimiser steps in a row (loss or gradient norm NaN or infinite, the update
    /// skipped) after which a run stops.
    pub const MAX_NONFINITE_STEPS: usize = 3;
    /// Where metrics go besides metrics.jsonl (TRL `report_to`): nowhere.
    pub const REPORT_TO: &str = "none";
}

/// How the loop runs: how long, in which batches and order, when it evaluates and checkpoints,
/// where its files go. Each field is a flag of the same name (`--max-steps`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct LoopSettings {
    /// Where metrics.jsonl, checkpoints, summary.json and the report go.
    #[cfg_attr(feature = "cli", arg(long))]
    pub output_dir: PathBuf,
    /// Replace an earlier run in --output-dir (otherwise refused).
    #[cfg_attr(feature = "cli", arg(long))]
    pub overwrite_output_dir: bool,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::NUM_TRAIN_EPOCHS))]
    pub num_train_epochs: f64,
    /// Optimiser steps (overrides --num-train-epochs).
    #[cfg_attr(feature = "cli", arg(long))]
    pub max_steps: Option<usize>,
    /// Examples (pairs) per batch; a step is --gradient-accumulation-steps batches. With several ranks (`mpirun -np N`) the ranks divide each batch: the global batch does not change with N.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::PER_DEVICE_TRAIN_BATCH_SIZE))]
    pub per_device_train_batch_size: usize,
    /// Batches per optimiser step.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::GRADIENT_ACCUMULATION_STEPS))]
    pub gradient_accumulation_steps: usize,
    /// Evaluate on --eval-data every this many steps (and always at the end).
    #[cfg_attr(feature = "cli", arg(long))]
    pub eval_steps: Option<usize>,
    /// Save OUTPUT_DIR/checkpoint-STEP every this many steps (OUTPUT_DIR/final is always written).
    #[cfg_attr(feature = "cli", arg(long))]
    pub save_steps: Option<usize>,
    /// Keep only the newest N `checkpoint-STEP/` directories (never the one resumed from).
    #[cfg_attr(feature = "cli", arg(long))]
    pub save_total_limit: Option<usize>,
    /// Go on from a checkpoint of this run: a `checkpoint-STEP/` directory, or `latest` (the
    /// newest complete one in --output-dir). The result is that of the uninterrupted run.
    #[cfg_attr(feature = "cli", arg(long))]
    pub resume_from_checkpoint: Option<PathBuf>,
    /// Stop after this many optimiser steps in a row whose loss or gradient norm is not finite
    /// (each is skipped: the weights are not updated).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::MAX_NONFINITE_STEPS))]
    pub max_nonfinite_steps: usize,
    /// Seed of the data order.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::SEED))]
    pub seed: u64,
    /// Packed tokens per forward pass (memory/speed trade-off; gradients are the same).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::MAX_TOKENS_PER_FORWARD))]
    pub max_tokens_per_forward: usize,
    /// NEFTune (transformers' neftune_noise_alpha): in training, uniform noise of magnitude alpha/sqrt(L*hidden) on the input embeddings (L: the longest sequence of the forward pass).
    #[cfg_attr(feature = "cli", arg(long))]
    pub neftune_noise_alpha: Option<f64>,
    /// Where the metrics also go (metrics.jsonl always): tensorboard (event files under OUTPUT_DIR/runs/, TRL's tags), all (= tensorboard), none.
    #[cfg_attr(feature = "cli", arg(long, value_enum, value_delimiter = ',', default_value = defaults::REPORT_TO))]
    pub report_to: Vec<ReportTo>,
}

/// A destination of the metrics besides `metrics.jsonl` (TRL's `report_to`; the integrations
/// dpo-rs has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum ReportTo {
    None,
    /// TensorBoard event files ([`crate::tensorboard`]).
    Tensorboard,
    /// Every integration dpo-rs has (TensorBoard).
    All,
}

impl Default for LoopSettings {
    fn default() -> Self {
        Self::new(PathBuf::from(defaults::OUTPUT_DIR))
    }
}

impl LoopSettings {
    /// The [`defaults`], writing into `output_dir`.
    pub fn new(output_dir: PathBuf) -> Self {
        Self {
            output_dir,
            overwrite_output_dir: false,
            num_train_epochs: defaults::NUM_TRAIN_EPOCHS,
            max_steps: None,
            per_device_train_batch_size: defaults::PER_DEVICE_TRAIN_BATCH_SIZE,
            gradient_accumulation_steps: defaults::GRADIENT_ACCUMULATION_STEPS,
            eval_steps: None,
            save_steps: None,
            save_total_limit: None,
            resume_from_checkpoint: None,
            max_nonfinite_steps: defaults::MAX_NONFINITE_STEPS,
            seed: defaults::SEED,
            max_tokens_per_forward: defaults::MAX_TOKENS_PER_FORWARD,
            neftune_noise_alpha: None,
            report_to: Vec::new(),
        }
    }

    /// Refuses zero batch sizes or forward budget.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.per_device_train_batch_size > 0 && self.gradient_accumulation_steps > 0 && self.max_tokens_per_forward > 0,
            "--per-device-train-batch-size, --gradient-accumulation-steps and --max-tokens-per-forward must be at least 1"
        );
        if let Some(a) = self.neftune_noise_alpha {
            anyhow::ensure!(a.is_finite() && a > 0.0, "--neftune-noise-alpha must be a number above 0, got {a}");
        }
        Ok(())
    }

    /// Units (examples, or prompts online) per optimiser step.
    pub fn per_step(&self) -> usize {
        self.per_device_train_batch_size * self.gradient_accumulation_steps
    }

    /// Optimiser steps of a run over `units` examples (`--max-steps`, else the epochs' batches).
    pub fn total_steps(&self, units: usize) -> usize {
        if let Some(m) = self.max_steps {
            return m;
        }
        let batches = units.div_ceil(self.per_device_train_batch_size);
        let per_epoch = batches.div_ceil(self.gradient_accumulation_steps).max(1);
        (self.num_train_epochs * per_epoch as f64).ceil() as usize
    }

    /// Whether metrics also go to TensorBoard event files (`--report-to tensorboard` or `all`).
    pub fn reports_to_tensorboard(&self) -> bool {
        self.report_to.iter().any(|r| matches!(r, ReportTo::Tensorboard | ReportTo::All))
    }

    /// Whether step `step` of `steps` evaluates (every `--eval-steps`; the loop always evaluates
    /// after the last step).
    pub fn evaluates_after(&self, step: usize, steps: usize) -> bool {
        self.eval_steps.is_some_and(|e| step.is_multiple_of(e)) && step < steps
    }

    /// Whether step `step` of `steps` writes `checkpoint-STEP/` (every `--save-steps`; the last
    /// step writes `final/`).
    pub fn saves_after(&self, step: usize, steps: usize) -> bool {
        self.save_steps.is_some_and(|s| step.is_multiple_of(s)) && step < steps
    }
}
