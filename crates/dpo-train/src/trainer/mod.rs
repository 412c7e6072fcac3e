//! The one training loop, top to bottom.
//!
//! A recipe assembles a [`Run`]: the policy, the task, a [`StepSource`] that makes each step's
//! examples and reference log-probs, the evaluation set, and the settings. [`train`] then owns
//! everything the steps have in common: for each optimiser step, the seeded order of units →
//! the source's examples → forward and backward over micro-batches and ranks
//! ([`data_parallel_gradients`]) → clip → AdamW (a step whose loss or gradient norm is not
//! finite is skipped; `--max-nonfinite-steps` in a row stop the run) → one line of
//! `metrics.jsonl` (and TensorBoard) → evaluation and checkpoints on schedule; then the final
//! save and `summary.json`. Resuming from a checkpoint replays the order and restores the
//! weights, AdamW and the counts, so the result is the uninterrupted run's.
//!
//! Across the ranks of a job ([`dpo_runtime::dist`], `mpirun -np N dpo train ...`) every rank
//! runs this loop on the same data: each step's examples are divided by token count (one
//! all-reduce of the gradients), every rank applies the same update (or, with `--zero-stage 1`,
//! its slice of it: [`crate::optim::AdamW::sharded`]), and rank 0 alone writes files. The metrics do not depend
//! on the number of ranks, and the weights only through the order of floating-point sums.

mod order;
mod output;
mod settings;
mod source;
mod summary;

pub use order::Order;
pub use output::{OutputDir, RunRecord};
pub use settings::{defaults, LoopSettings, ReportTo};
pub use source::{DatasetSource, StepExamples, StepSource};
pub use summary::{RunKind, TrainSummary};

use crate::checkpoint::{self, TrainerState};
use crate::evaluate::evaluate;
use crate::loss::beta_dpo::MarginStats;
use crate::metrics::{self, with_eval_prefix, Metrics, MetricsFile};
use crate::optim::{clip_coefficient, global_grad_norm, Optimizer, OptimizerSettings};
use crate::step::{data_parallel_gradients, BatchResult, Neftune, StepSettings};
use crate::task::Task;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Var};
use dpo_data::{Tokenized, TokenizedSet};
use dpo_kernels::mix_seed;
use dpo_model::policy::Policy;
use dpo_model::tokenizer::Tokenizer;
use dpo_model::write_hf_files;
use dpo_runtime::dist;
use dpo_runtime::io::{peak_rss_bytes, write_atomic, write_dir_atomic};
use dpo_runtime::observer::Observer;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;
use summary::StepLog;

/// The stream of the step's seed that NEFTune's noise is drawn from (LoRA dropout uses the seed
/// itself).
const NEFTUNE_STREAM: u64 = 0x4E45_4654;
/// The stream of the step's seed that β-DPO's draws come from.
const BETA_DPO_STREAM: u64 = 0x0BE7_AD90;

/// A run of the loop, as a recipe assembles it.
pub struct Run<'a> {
    /// What is trained: every weight, or LoRA adapters on a frozen base.
    pub policy: Policy,
    /// Written beside a full model's weights in every checkpoint.
    pub tokenizer: Tokenizer,
    /// What a LoRA adapter names as its base (`base_model_name_or_path`).
    pub base_model: String,
    pub task: Task,
    /// Where each step's examples come from.
    pub source: Box<dyn StepSource + 'a>,
    /// Evaluated every `--eval-steps` and at the end.
    pub eval_set: Option<TokenizedSet>,
    pub record: RunRecord,
    /// The output directory, checked before the run was assembled.
    pub output: OutputDir,
    pub settings: &'a LoopSettings,
    pub optimizer: &'a OptimizerSettings,
    /// Gradient checkpointing: each decoder layer recomputed in the backward pass.
    pub recompute: bool,
}

/// Trains `run`'s policy, reporting to `obs`; see the module documentation. Writes
/// `metrics.jsonl`, `train_args.json`, `checkpoint-STEP/`, `final/` and `summary.json` into the
/// output directory (rank 0 only).
pub fn train(run: Run, obs: &mut dyn Observer) -> Result<TrainSummary> {
    let started = Instant::now();
    let Run {
        policy,
        tokenizer,
        base_model,
        task,
        mut source,
        eval_set,
        record,
        output,
        settings,
        optimizer,
        recompute,
    } = run;
    let parts = Parts { policy, tokenizer, base_model, task, eval_set, record, settings, optimizer, recompute };
    let (mut state, first_step) = Loop::start(parts, output, source.units(), obs)?;
    let steps = state.steps;
    let (mut last_train, mut last_eval) = (Metrics::new(), None);
    obs.phase("training", steps, "steps");
    for step in first_step..=steps {
        last_train = state.step(step, source.as_mut(), obs)?;
        if settings.evaluates_after(step, steps) {
            last_eval = state.evaluate(step, source.as_mut(), obs)?;
        }
        if settings.saves_after(step, steps) {
            state.save(&format!("checkpoint-{step}"), Some(state.trainer_state(step)?), obs)?;
        }
    }
    if state.p.eval_set.is_some() {
        last_eval = state.evaluate(steps, source.as_mut(), obs)?;
    }
    state.save("final", None, obs)?;
    state.finish(started, last_train, last_eval, obs)
}

/// A [`Run`] without its source (which the loop lends to each step).
struct Parts<'a> {
    policy: Policy,
    tokenizer: Tokenizer,
    base_model: String,
    task: Task,
    eval_set: Option<TokenizedSet>,
    record: RunRecord,
    settings: &'a LoopSettings,
    optimizer: &'a OptimizerSettings,
    recompute: bool,
}

/// The state of a run between optimiser steps.
struct Loop<'a> {
    p: Parts<'a>,
    vars: Vec<Var>,
    opt: Optimizer,
    order: Order,
    /// `metrics.jsonl` (rank 0 only: the other ranks of a job write no files).
    metrics: Option<MetricsFile>,
    log: StepLog,
    steps: usize,
    /// The checkpoint this run resumed from.
    resumed_from: Option<PathBuf>,
    /// Training tokens of the steps before the first one this process runs (TRL's count).
    tokens_before: usize,
    /// Steps skipped for a non-finite loss or gradient norm: in all, and in a row.
    skipped_nonfinite: usize,
    nonfinite_in_a_row: usize,
    /// β-DPO's running margin statistics (zero otherwise).
    margin_stats: MarginStats,
}

/// What one step computed: its gradients and metrics (none when it had no examples).
struct Computed {
    result: Option<BatchResult>,
    metrics: Metrics,
}

impl<'a> Loop<'a> {
    /// The optimizer, the data order, and only then (nothing is written for a run that cannot
    /// start) the output directory, `metrics.jsonl` and `train_args.json`; a resumed run's
    /// weights, optimizer state, data position and metrics so far. In a job of several ranks,
    /// every rank must have the same settings and data (checked). Returns the first step to run.
    fn start(p: Parts<'a>, output: OutputDir, units: usize, obs: &mut dyn Observer) -> Result<(Self, usize)> {
        let world = dist::world();
        if world.size() > 1 {
            check_ranks(&p, obs)?;
        }
        let steps = p.settings.total_steps(units);
        let vars = p.policy.vars();
        let mut opt = p.optimizer.optimizer(&vars, world.rank(), world.size())?;
        let out = &p.settings.output_dir;
        if dist::is_main() {
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        }
        let mut order = Order::new(units, p.settings.seed);
        let metrics = open_metrics(&p, &output, &mut opt, &mut order, steps, obs)?;
        if dist::is_main() {
            write_atomic(&out.join("train_args.json"), |w| Ok(serde_json::to_writer_pretty(w, &p.record.args)?))?;
        }
        let state = output.resume.as_ref().map(|(_, s)| s);
        let first_step = state.map_or(1, |s| s.global_step + 1);
        let this = Self {
            tokens_before: state.map_or(0, |s| s.num_tokens),
            skipped_nonfinite: state.map_or(0, |s| s.skipped_nonfinite),
            nonfinite_in_a_row: state.map_or(0, |s| s.nonfinite_in_a_row),
            margin_stats: state.and_then(|s| s.margin_stats).unwrap_or_default(),
            resumed_from: output.resume.map(|(dir, _)| dir),
            p,
            vars,
            opt,
            order,
            metrics,
            log: StepLog::default(),
            steps,
        };
        Ok((this, first_step))
    }

    /// Optimiser step `step` (1-based): the source's examples, forward and backward, clipping,
    /// AdamW; logs and returns its `metrics.jsonl` line.
    fn step(&mut self, step: usize, source: &mut dyn StepSource, obs: &mut dyn Observer) -> Result<Metrics> {
        let t0 = Instant::now();
        let s = self.p.settings;
        let idx = self.order.next_step(s.per_device_train_batch_size, s.gradient_accumulation_steps);
        let mut batch = source.examples(step, &idx, &self.p.policy, obs)?;
        let (comm_bytes0, _) = dist::traffic();
        let computed = self.compute(step, &batch)?;
        let lr = self.p.optimizer.learning_rate_at(step, self.steps);
        let t_opt = Instant::now();
        if let Some(ms) = computed.result.as_ref().and_then(|r| r.margin_stats) {
            self.margin_stats = ms;
        }
        let (grad_norm, loss) = match computed.result {
            Some(res) => self.update(res, &computed.metrics, lr)?,
            None => {
                obs.message(&format!("step {step}: no examples (every pair tied): no update"));
                self.log.push_idle();
                (f64::NAN, f64::NAN)
            }
        };
        self.log.optimizer.push(t_opt.elapsed().as_secs_f64());
        self.log.comm_bytes += dist::traffic().0 - comm_bytes0;
        let secs = t0.elapsed().as_secs_f64();
        let tokens: usize = batch.examples.iter().map(|e| e.sequence_tokens()).sum();
        self.log.seconds.push(secs);
        self.log.tokens.push(tokens);
        self.log.packed_tokens += batch.examples.iter().map(|e| e.packed_tokens()).sum::<usize>();
        let mut line = metrics::line(step, self.order.epoch(), &computed.metrics);
        line.insert("grad_norm".into(), grad_norm.into());
        line.insert("learning_rate".into(), lr.into());
        line.insert("num_tokens".into(), (self.tokens_before + self.log.tokens_total()).into());
        line.insert("skipped_nonfinite".into(), self.skipped_nonfinite.into());
        line.extend(std::mem::take(&mut batch.metrics));
        if let Some(f) = &mut self.metrics {
            f.append(&line)?;
        }
        self.stop_if_nonfinite(step, loss, grad_norm, &batch.examples, obs)?;
        obs.advance(step, &format!("{} | {:.0} tok/s", metrics::brief(&computed.metrics), tokens as f64 / secs));
        drop(batch);
        source.after_step(step, &self.p.policy, obs)?;
        Ok(line)
    }

    /// The gradients and metrics of the step's examples; with none (online, every pair tied),
    /// the task's metric names with no values.
    fn compute(&self, step: usize, batch: &StepExamples) -> Result<Computed> {
        let p = &self.p;
        if batch.examples.is_empty() {
            let metrics = p
                .task
                .metrics(&[], p.policy.model.config.vocab_size)
                .into_iter()
                .map(|(k, _)| (k, Value::Null))
                .collect();
            return Ok(Computed { result: None, metrics });
        }
        let refs: Vec<&[f64]> = batch.reference.iter().map(Vec::as_slice).collect();
        let settings = StepSettings {
            max_tokens: p.settings.max_tokens_per_forward,
            batch_size: p.settings.per_device_train_batch_size,
            dropout_seed: p
                .policy
                .lora
                .as_ref()
                .filter(|l| l.lora_dropout > 0.0)
                .map(|_| mix_seed(p.settings.seed, step as u64)),
            recompute: p.recompute,
            neftune: p
                .settings
                .neftune_noise_alpha
                .map(|alpha| Neftune { alpha, seed: mix_seed(mix_seed(p.settings.seed, step as u64), NEFTUNE_STREAM) }),
            beta_dpo: p
                .task
                .keeps_margin_stats()
                .then(|| (self.margin_stats, mix_seed(mix_seed(p.settings.seed, step as u64), BETA_DPO_STREAM))),
        };
        let res = data_parallel_gradients(&p.policy, &batch.examples, &refs, &p.task, &settings)?;
        let metrics = p.task.metrics(&res.stats, p.policy.model.config.vocab_size);
        Ok(Computed { result: Some(res), metrics })
    }

    /// Clips and applies the step's gradients at learning rate `lr` when the loss and the
    /// gradient norm are finite; otherwise counts a skipped step (it would turn every weight
    /// into NaN). Returns the gradient norm and the loss.
    fn update(&mut self, res: BatchResult, m: &Metrics, lr: f64) -> Result<(f64, f64)> {
        let grad_norm = global_grad_norm(&res.grads)?;
        let loss = m.get("loss").and_then(Value::as_f64).unwrap_or(f64::NAN);
        let (_, comm_before_update) = dist::traffic();
        if loss.is_finite() && grad_norm.is_finite() {
            self.opt.step(&self.vars, &res.grads, lr, clip_coefficient(grad_norm, self.p.optimizer.max_grad_norm))?;
            self.p.policy.weights_changed()?;
            self.nonfinite_in_a_row = 0;
        } else {
            self.skipped_nonfinite += 1;
            self.nonfinite_in_a_row += 1;
        }
        // ZeRO stage 1's all-gather of the updated slices, inside the update.
        let zero_seconds = dist::traffic().1 - comm_before_update;
        self.log.push_passes(&res, zero_seconds);
        Ok((grad_norm, loss))
    }

    /// Stops the run after `--max-nonfinite-steps` non-finite steps in a row (naming the
    /// step's records); reports a skipped step.
    fn stop_if_nonfinite(
        &self,
        step: usize,
        loss: f64,
        grad_norm: f64,
        examples: &[&Tokenized],
        obs: &mut dyn Observer,
    ) -> Result<()> {
        if self.nonfinite_in_a_row >= self.p.settings.max_nonfinite_steps.max(1) {
            let records: Vec<usize> = examples.iter().map(|e| e.index).collect();
            bail!(
                "step {step}: loss {loss}, gradient norm {grad_norm}: {} steps in a row were not finite (--max-nonfinite-steps {}), none applied; this step's records of {}: {records:?}",
                self.nonfinite_in_a_row,
                self.p.settings.max_nonfinite_steps,
                self.p.record.data.display()
            );
        }
        if self.nonfinite_in_a_row > 0 && !examples.is_empty() {
            obs.message(&format!(
                "step {step}: loss {loss}, gradient norm {grad_norm}: not finite, the update is skipped"
            ));
        }
        Ok(())
    }

    /// The `eval_` metrics on the evaluation set after `step` steps (`None` without one), logged.
    fn evaluate(
        &mut self,
        step: usize,
        source: &mut dyn StepSource,
        obs: &mut dyn Observer,
    ) -> Result<Option<Metrics>> {
        let Some(set) = &self.p.eval_set else { return Ok(None) };
        obs.message(&format!("evaluating on {} examples", set.examples.len()));
        let max_tokens = self.p.settings.max_tokens_per_forward;
        let ex: Vec<&Tokenized> = set.examples.iter().collect();
        let refs = source.eval_references(set, max_tokens)?;
        let m = with_eval_prefix(evaluate(&self.p.policy.model, &ex, &refs, &self.p.task, max_tokens)?);
        if let Some(f) = &mut self.metrics {
            f.append(&metrics::line(step, self.order.epoch(), &m))?;
        }
        obs.message(&format!("step {step}: {}", metrics::brief(&m)));
        Ok(Some(m))
    }

    /// Writes the policy as `OUTPUT_DIR/name` (atomically): a Hugging Face model directory, or
    /// (LoRA) a PEFT adapter directory; with `state` (a checkpoint) also what a resumed run needs
    /// ([`checkpoint`]), and then the oldest checkpoints beyond `--save-total-limit` go. Every
    /// rank calls it (sharded optimizer state is gathered); rank 0 writes.
    fn save(&self, name: &str, state: Option<TrainerState>, obs: &mut dyn Observer) -> Result<()> {
        let out = &self.p.settings.output_dir;
        let dir = out.join(name);
        let opt_state = match &state {
            Some(_) if self.opt.is_sharded() || self.metrics.is_some() => {
                Some(checkpoint::optimizer_state(&self.p.policy, &self.opt)?)
            }
            _ => None,
        };
        let Some(metrics) = &self.metrics else { return Ok(()) };
        write_dir_atomic(&dir, |tmp| {
            match self.p.policy.adapter(&self.p.base_model) {
                Some(adapter) => adapter.write_files(tmp)?,
                None => write_hf_files(&self.p.policy.model.detached(), &self.p.tokenizer, tmp, DType::F32)?,
            }
            match (&state, opt_state) {
                (Some(state), Some(opt_state)) => {
                    checkpoint::write_state(tmp, state, &self.p.policy, opt_state, metrics.path())
                }
                _ => Ok(()),
            }
        })?;
        obs.message(&format!("saved {}", dir.display()));
        if let (Some(limit), Some(_)) = (self.p.settings.save_total_limit, state) {
            checkpoint::prune(out, limit, self.resumed_from.as_deref())?;
        }
        Ok(())
    }

    /// Where the run stands after `step` steps.
    fn trainer_state(&self, step: usize) -> Result<TrainerState> {
        Ok(TrainerState {
            global_step: step,
            optimizer_step: self.opt.steps(),
            epoch: self.order.epoch(),
            max_steps: self.steps,
            num_tokens: self.tokens_before + self.log.tokens_total(),
            skipped_nonfinite: self.skipped_nonfinite,
            nonfinite_in_a_row: self.nonfinite_in_a_row,
            data_hash: self.p.record.hashes.train.clone(),
            eval_data_hash: self.p.record.hashes.eval.clone(),
            training_args: self.p.record.args.clone(),
            margin_stats: self.p.task.keeps_margin_stats().then_some(self.margin_stats),
        })
    }

    /// The run's summary, written as `summary.json`; across ranks, the check that every rank
    /// holds the same weights.
    fn finish(
        self,
        started: Instant,
        final_train: Metrics,
        final_eval: Option<Metrics>,
        obs: &mut dyn Observer,
    ) -> Result<TrainSummary> {
        if dist::world().size() > 1 {
            check_same_weights(&self.vars)?;
            obs.message(&format!("all {} ranks hold bit-identical weights", dist::world().size()));
        }
        let peak_rss_bytes_per_rank = dist::all_gather(&peak_rss_bytes())?;
        let summary = self.log.summary(summary::Totals {
            kind: self.p.record.kind,
            steps: self.steps,
            epochs: self.order.epoch(),
            total_seconds: started.elapsed().as_secs_f64(),
            optimizer_state_bytes: self.opt.state_bytes(),
            peak_rss_bytes_per_rank,
            final_train,
            final_eval,
            output_dir: self.p.settings.output_dir.clone(),
        });
        if dist::is_main() {
            write_atomic(&self.p.settings.output_dir.join("summary.json"), |w| {
                Ok(serde_json::to_writer_pretty(w, &summary)?)
            })?;
        }
        Ok(summary)
    }
}

/// `metrics.jsonl` of a run (rank 0 only), new or (resuming) restored from the checkpoint along
/// with the weights, AdamW and the data order; with TensorBoard event files beside it.
fn open_metrics(
    p: &Parts,
    output: &OutputDir,
    opt: &mut Optimizer,
    order: &mut Order,
    steps: usize,
    obs: &mut dyn Observer,
) -> Result<Option<MetricsFile>> {
    let (main, out) = (dist::is_main(), &p.settings.output_dir);
    let path = out.join(checkpoint::METRICS);
    let metrics = match &output.resume {
        Some((dir, state)) => {
            if main {
                checkpoint::remove_leftovers(out)?;
            }
            checkpoint::restore(dir, state, &p.policy, opt, main.then_some(path.as_path()))?;
            p.policy.weights_changed()?;
            for _ in 0..state.global_step * p.settings.gradient_accumulation_steps {
                order.next_batch(p.settings.per_device_train_batch_size);
            }
            obs.message(&format!("resuming from {} at step {} of {steps}", dir.display(), state.global_step + 1));
            main.then(|| MetricsFile::append_to(path))
        }
        None => main.then(|| MetricsFile::create(path)).transpose()?,
    };
    match metrics {
        Some(f) if p.settings.reports_to_tensorboard() => {
            Ok(Some(f.with_tensorboard(&out.join("runs"), &p.record.args)?))
        }
        m => Ok(m),
    }
}

/// Refuses what ranks cannot divide (AOT sorts a whole batch) and ranks whose settings or data
/// differ.
fn check_ranks(p: &Parts, obs: &mut dyn Observer) -> Result<()> {
    ensure!(
        !matches!(&p.task, Task::Preference(o) if o.sorts_batch()),
        "aot and aot_unpaired sort, and beta_dpo draws from, the pairs of a whole batch: run them in one process (mpirun -np 1)"
    );
    let h = &p.record.hashes;
    let inputs =
        blake3::hash(format!("{}|{}|{:?}", serde_json::to_string(&p.record.args)?, h.train, h.eval).as_bytes())
            .to_hex()
            .to_string();
    dist::check_agree("run settings or data (train_args + data hashes)", &inputs)?;
    let sharded = if p.optimizer.zero_stage == 1 { ", AdamW state sharded (ZeRO stage 1)" } else { "" };
    obs.message(&format!(
        "{} ranks: each step's examples are divided among them, gradients all-reduced{sharded}",
        dist::world().size()
    ));
    Ok(())
}

/// The ranks applied the same updates: their trainable weights must be bit-identical.
fn check_same_weights(vars: &[Var]) -> Result<()> {
    let mut h = blake3::Hasher::new();
    for v in vars {
        let t = v.as_tensor().flatten_all()?;
        match t.dtype() {
            DType::F32 => t.to_vec1::<f32>()?.iter().for_each(|x| {
                h.update(&x.to_le_bytes());
            }),
            _ => t.to_dtype(DType::F64)?.to_vec1::<f64>()?.iter().for_each(|x| {
                h.update(&x.to_le_bytes());
            }),
        }
    }
    dist::check_agree("policy after training (hash of the trainable weights)", &h.finalize().to_hex())
}

/// The units of the first `steps` optimiser steps of a run over `units` units (each once,
/// ascending): the examples whose reference log-probs a run needs.
pub fn visited_units(settings: &LoopSettings, units: usize) -> Vec<usize> {
    let steps = settings.total_steps(units);
    Order::new(units, settings.seed).visited(steps * settings.per_step(), settings.per_device_train_batch_size)
}
