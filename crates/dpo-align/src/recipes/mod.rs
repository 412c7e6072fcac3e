//! The recipes: pipelines made of runs of the one training loop ([`dpo_train::trainer`]).
//!
//! - [`train`](mod@train): offline DPO (and the rest of the family) and SFT on a data set; with
//!   [`TrainConfig::online`], online DPO ([`online`]: a step source that samples and judges);
//! - [`iterate`]: iterative DPO, rounds of sample → judge → DPO → evaluate;
//! - [`demo`]: the whole pipeline of the DPO paper on the embedded default;
//! - [`bench`](mod@bench): the fixed benchmark.
//!
//! The demo and iterate train with [`PairTraining`] and load trained policies with
//! [`policy_weights`].

pub mod bench;
pub mod demo;
pub mod iterate;
pub mod online;
pub mod train;

pub use train::{train, TrainConfig};

use dpo_model::policy::ModelSetup;
use dpo_model::LoadOptions;
use dpo_train::loss::defaults::BETA;
use dpo_train::optim::ScheduleKind;
use dpo_train::task::Task;
use std::path::{Path, PathBuf};

/// DPO on a file of judged pairs, as the demo trains each beta and iterative DPO each round: one
/// or more epochs, a short linear warm-up (2 steps) then linear decay, the run directory
/// replaced if it exists.
#[derive(Debug, Clone, PartialEq)]
pub struct PairTraining {
    pub beta: f64,
    pub learning_rate: f64,
    pub epochs: f64,
    /// Pairs per optimiser step.
    pub batch: usize,
    pub seed: u64,
    pub max_tokens_per_forward: usize,
    pub setup: ModelSetup,
}

/// The warm-up steps of [`PairTraining`].
pub const PAIR_TRAINING_WARMUP_STEPS: usize = 2;

impl Default for PairTraining {
    fn default() -> Self {
        Self {
            beta: BETA,
            learning_rate: demo::defaults::LEARNING_RATE,
            epochs: demo::defaults::EPOCHS,
            batch: demo::defaults::BATCH,
            seed: demo::defaults::SEED,
            max_tokens_per_forward: dpo_train::trainer::defaults::MAX_TOKENS_PER_FORWARD,
            setup: ModelSetup::default(),
        }
    }
}

impl PairTraining {
    /// The run that trains `model` on `pairs` into `output_dir`.
    pub fn config(&self, model: PathBuf, pairs: PathBuf, output_dir: PathBuf) -> TrainConfig {
        let mut tc = TrainConfig::new(model, pairs, output_dir);
        tc.task = Task::dpo(self.beta);
        tc.run.overwrite_output_dir = true;
        tc.run.num_train_epochs = self.epochs;
        tc.run.per_device_train_batch_size = self.batch;
        tc.run.max_tokens_per_forward = self.max_tokens_per_forward;
        tc.run.seed = self.seed;
        tc.optimizer.learning_rate = self.learning_rate;
        tc.optimizer.warmup_steps = PAIR_TRAINING_WARMUP_STEPS;
        tc.optimizer.lr_scheduler_type = ScheduleKind::Linear;
        tc.setup = self.setup.clone();
        tc
    }
}

/// How a policy made by a chain of training runs is loaded: from `base` as `load` says, then
/// each directory of `trained` in order, a PEFT adapter merged on top of what is there or a
/// whole model replacing it (with the base's `--base-dtype`). The demo's policy at a beta (one
/// run), iterative DPO's policy `r` (the runs of rounds 1..=r) and `dpo eval --policy`.
pub fn policy_weights(base: &Path, load: &LoadOptions, trained: &[PathBuf]) -> (PathBuf, LoadOptions) {
    let (mut path, mut load) = (base.to_path_buf(), load.clone());
    for dir in trained {
        if dir.join("adapter_config.json").exists() {
            load.adapters.push(dir.clone());
        } else {
            path = dir.clone();
            load.adapters.clear();
        }
    }
    (path, load)
}
