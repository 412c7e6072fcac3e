//! The fixed training benchmark (`dpo bench`), comparable with the oracle's `trl_bench.py`.
//!
//! Same configuration as `trl_bench.py`'s defaults: the first `pairs` usable pairs of a data
//! file, `batch` pairs per step, `max_length` tokens, constant learning rate 1e-6, clipping at 1,
//! `warmup` untimed steps then `steps` timed ones. Tokens are counted as TRL counts them: the
//! non-padding tokens of every prompt+chosen and prompt+rejected sequence.

use crate::data::{read, Example};
use crate::optim::ScheduleKind;
use crate::train::{train, Observer, TrainConfig};
use anyhow::{ensure, Result};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    pub model: PathBuf,
    pub data: PathBuf,
    pub pairs: usize,
    pub batch: usize,
    pub max_length: usize,
    pub steps: usize,
    pub warmup: usize,
    pub max_tokens_per_forward: usize,
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
}

/// Runs the benchmark; the training run itself goes to a temporary directory.
pub fn run(cfg: &BenchConfig, obs: &mut dyn Observer) -> Result<BenchResult> {
    let (records, _) = read(&cfg.data)?;
    let pairs: Vec<&Example> = records.iter().filter_map(|r| r.example.as_ref().ok()).take(cfg.pairs).collect();
    ensure!(pairs.len() == cfg.pairs, "{}: only {} usable pairs", cfg.data.display(), pairs.len());
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("bench_pairs.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&data)?);
    for p in &pairs {
        let v = serde_json::json!({"prompt": p.prompt, "chosen": p.completions[0], "rejected": p.completions[1]});
        writeln!(f, "{v}")?;
    }
    drop(f);
    let mut tc = TrainConfig::new(cfg.model.clone(), data, dir.path().join("run"));
    tc.max_steps = Some(cfg.warmup + cfg.steps);
    tc.per_device_train_batch_size = cfg.batch;
    tc.tokenize.max_length = Some(cfg.max_length);
    tc.lr_scheduler_type = ScheduleKind::Constant;
    tc.max_tokens_per_forward = cfg.max_tokens_per_forward;
    let s = train(&tc, obs)?;
    let t = |v: &[f64]| v[cfg.warmup..].iter().sum::<f64>();
    let secs = t(&s.step_seconds);
    let tokens: usize = s.step_tokens[cfg.warmup..].iter().sum();
    let packed_share = s.packed_tokens_per_second / s.train_tokens_per_second;
    Ok(BenchResult {
        config: cfg.clone(),
        threads: candle_core::utils::get_num_threads(),
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
    })
}
