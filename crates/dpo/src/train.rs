//! The training loop, top to bottom.
//!
//! load the model → read, convert and tokenize the data ([`crate::data::load_examples`]) →
//! reference log-probs, once and cached ([`References`]) → for each optimiser step: forward and
//! backward over the step's examples ([`loss_and_gradients`]) → clip → AdamW → one line of
//! `metrics.jsonl` → evaluate and checkpoint on schedule → final checkpoint, summary and report.
//!
//! Across the ranks of a job ([`crate::dist`], `mpirun -np N dpo train ...`) every rank runs
//! this loop on the same data: the reference log-probs and evaluations are divided among the
//! ranks by micro-batch, each step's examples by token count ([`data_parallel_gradients`]; one
//! all-reduce of the gradients), every rank applies the same update (or, with `--zero-stage 1`,
//! its slice of it: [`AdamW::sharded`]), and rank 0 alone writes files. The metrics do not depend
//! on the number of ranks, and the weights only through the order of floating-point sums.

use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::data::{load_examples, Tokenized, TokenizedSet};
use crate::eval::evaluate;
use crate::io::{peak_rss_bytes, write_atomic, write_dir_atomic};
use crate::metrics::{self, with_eval_prefix, Metrics, MetricsFile};
use crate::model::{self, write_hf_files};
use crate::observer::Observer;
use crate::optim::{clip_coefficient, global_grad_norm, lr_factor, AdamW};
use crate::policy::Policy;
use crate::reference::{DataHashes, References};
use crate::model::adapter::Adapter;
use crate::ops::mix_seed;
use crate::step::{data_parallel_gradients, StepSettings};
use crate::task::Task;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
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

/// The seeded order in which examples (or, online, prompts) are visited: a fresh shuffle per epoch.
pub(crate) struct Order {
    n: usize,
    seed: u64,
    epoch: usize,
    perm: Vec<usize>,
    pos: usize,
    consumed: usize,
}
impl Order {
    pub(crate) fn new(n: usize, seed: u64) -> Self {
        Self { n, seed, epoch: 0, perm: Vec::new(), pos: n, consumed: 0 }
    }

    pub(crate) fn next_batch(&mut self, size: usize) -> Vec<usize> {
        if self.pos >= self.n {
            if !self.perm.is_empty() {
                self.epoch += 1;
            }
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(self.epoch as u64));
            self.perm = (0..self.n).collect();
            self.perm.shuffle(&mut rng);
            self.pos = 0;
        }
        let end = (self.pos + size).min(self.n);
        let b = self.perm[self.pos..end].to_vec();
        self.pos = end;
        self.consumed += b.len();
        b
    }

    /// The examples of the first `count` visits (batches of `batch`), each once, ascending.
    fn visited(mut self, count: usize, batch: usize) -> Vec<usize> {
        let mut seen = vec![false; self.n];
        let mut left = count;
        while left > 0 && seen.iter().any(|s| !s) {
            let b = self.next_batch(batch.min(left).max(1));
            left = left.saturating_sub(b.len());
            b.into_iter().for_each(|i| seen[i] = true);
        }
        (0..self.n).filter(|&i| seen[i]).collect()
    }

    /// Epochs completed, fractional.
    pub(crate) fn epoch(&self) -> f64 {
        self.consumed as f64 / self.n as f64
    }
}
/// Optimiser steps of a run over `n_examples` (`--max-steps`, else the epochs' batches).
pub fn total_steps(cfg: &TrainConfig, n_examples: usize) -> usize {
    if let Some(m) = cfg.max_steps {
        return m;
    }
    let batches = n_examples.div_ceil(cfg.per_device_train_batch_size);
    let per_epoch = batches.div_ceil(cfg.gradient_accumulation_steps).max(1);
    (cfg.num_train_epochs * per_epoch as f64).ceil() as usize
}

/// Per optimiser step: wall seconds, training tokens (TRL's count) and where the time went.
#[derive(Debug, Default)]
struct StepLog {
    seconds: Vec<f64>,
    tokens: Vec<usize>,
    forward: Vec<f64>,
    backward: Vec<f64>,
    optimizer: Vec<f64>,
    wait: Vec<f64>,
    comm: Vec<f64>,
    comm_bytes: u64,
    /// Rows computed (each prompt once), all steps.
    packed_tokens: usize,
}

impl StepLog {
    fn train_seconds(&self) -> f64 {
        self.seconds.iter().sum()
    }

    fn tokens_total(&self) -> usize {
        self.tokens.iter().sum()
    }
}

/// The state of a run between optimiser steps.
struct Run<'a> {
    cfg: &'a TrainConfig,
    train_set: TokenizedSet,
    eval_set: Option<TokenizedSet>,
    references: References,
    policy: Policy,
    vars: Vec<Var>,
    tokenizer: Tokenizer,
    opt: AdamW,
    order: Order,
    /// `metrics.jsonl` (rank 0 only: the other ranks of a job write no files).
    metrics: Option<MetricsFile>,
    log: StepLog,
    steps: usize,
    /// The checkpoint this run resumed from, and the first step it runs.
    resumed_from: Option<PathBuf>,
    first_step: usize,
    /// Training tokens of the steps before `first_step` (TRL's count).
    tokens_before: usize,
    /// Steps skipped for a non-finite loss or gradient norm: in all, and in a row.
    skipped_nonfinite: usize,
    nonfinite_in_a_row: usize,
    data_hashes: DataHashes,
}

impl<'a> Run<'a> {
    /// Loads the model and data, prepares the reference log-probs, and only then (nothing is
    /// written for a run that cannot start) creates the output directory, `metrics.jsonl` and
    /// `train_args.json`. With `--resume-from-checkpoint`, the checkpoint is checked against
    /// `cfg` first and then loaded: weights, optimizer state, data position and metrics so far.
    /// In a job of several ranks, every rank must have the same settings and data (checked).
    fn start(cfg: &'a TrainConfig, obs: &mut dyn Observer) -> Result<Self> {
        cfg.validate()?;
        let world = crate::dist::world();
        let main = world.rank() == 0;
        let metrics_path = cfg.output_dir.join(checkpoint::METRICS);
        let data_hashes = DataHashes::of(&cfg.data, cfg.eval_data.as_deref())?;
        if world.size() > 1 {
            ensure!(
                !matches!(&cfg.task, Task::Preference(o) if o.sorts_batch()),
                "aot and aot_unpaired sort the pairs of a whole batch against each other: run them in one process (mpirun -np 1)"
            );
            let inputs = blake3::hash(format!("{}|{}|{:?}", serde_json::to_string(cfg)?, data_hashes.train, data_hashes.eval).as_bytes()).to_hex().to_string();
            crate::dist::check_agree("run settings or data (train_args + data hashes)", &inputs)?;
            obs.message(&format!("{} ranks: each step's examples are divided among them, gradients all-reduced{}", world.size(), if cfg.zero_stage == 1 { ", AdamW state sharded (ZeRO stage 1)" } else { "" }));
        }
        let resume = match &cfg.resume_from_checkpoint {
            Some(spec) => {
                ensure!(cfg.sync_ref.is_none(), "--resume-from-checkpoint: a TR-DPO run (--sync-ref-model) keeps its moving reference in memory only and cannot be resumed");
                let dir = checkpoint::resolve(spec, &cfg.output_dir)?;
                let state = checkpoint::read_state(&dir)?;
                checkpoint::check(&state, &dir, cfg, &data_hashes)?;
                Some((dir, state))
            }
            None if metrics_path.exists() && !cfg.overwrite_output_dir => {
                bail!("{} already holds a run (metrics.jsonl); choose another --output-dir, pass --overwrite-output-dir, or --resume-from-checkpoint latest", cfg.output_dir.display())
            }
            None => None,
        };
        obs.message(&format!("loading {}", cfg.model.display()));
        let loaded = model::load_with(&crate::fetch::ensure_model(&cfg.model)?, &cfg.setup.load)?;
        let load = |p, obs: &mut dyn Observer| load_examples(p, &loaded.tokenizer, cfg.tokenize, &cfg.task, cfg.per_device_train_batch_size, obs);
        let train_set = load(&cfg.data, obs)?;
        ensure!(!train_set.examples.is_empty(), "{}: no usable examples", cfg.data.display());
        let eval_set = cfg.eval_data.as_ref().map(|p| load(p, obs)).transpose()?;
        let steps = total_steps(cfg, train_set.examples.len());
        let per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps;
        let visited = Order::new(train_set.examples.len(), cfg.seed).visited(steps * per_step, cfg.per_device_train_batch_size);
        let tokenizer = loaded.tokenizer.clone();
        let base = loaded.model()?;
        let (policy, references) = if cfg.setup.lora.use_peft {
            // The reference is the frozen base itself (the adapter switched off): no second model.
            let adapter = Adapter::init(&cfg.setup.lora, &loaded.config, &crate::fetch::base_model_name(&cfg.model), cfg.seed, DType::F32)?;
            drop(loaded);
            let policy = Policy::lora(&base, &adapter)?;
            drop(base);
            let reference = policy.model.without_adapters();
            // Across ranks the reference log-probs are always computed up front, divided among them.
            let prefetch = cfg.precompute_ref_log_probs || world.size() > 1;
            let references = References::prepare(cfg, reference, &tokenizer, &train_set, eval_set.as_ref(), &data_hashes, prefetch, true, &visited, obs)?;
            obs.message(&format!("LoRA: {} trainable parameters (r {}, alpha {}), base {}", policy.num_parameters(), cfg.setup.lora.lora_r, cfg.setup.lora.lora_alpha, cfg.setup.load.base_dtype));
            (policy, references)
        } else {
            // Reference log-probs of every example the run uses first, then only the policy.
            let references = References::prepare(cfg, base, &tokenizer, &train_set, eval_set.as_ref(), &data_hashes, true, false, &visited, obs)?;
            let policy = Policy::new(loaded.config.clone(), &loaded.tensors)?;
            drop(loaded);
            (policy, references)
        };
        let vars = policy.vars();
        let mut opt = match cfg.zero_stage {
            1 => AdamW::sharded(&vars, cfg.adam, world.rank(), world.size())?,
            _ => AdamW::new(&vars, cfg.adam)?,
        };
        if main {
            std::fs::create_dir_all(&cfg.output_dir).with_context(|| format!("creating {}", cfg.output_dir.display()))?;
        }
        let mut order = Order::new(train_set.examples.len(), cfg.seed);
        let metrics = match &resume {
            Some((dir, state)) => {
                if main {
                    checkpoint::remove_leftovers(&cfg.output_dir)?;
                }
                checkpoint::restore(dir, state, &policy, &mut opt, main.then_some(metrics_path.as_path()))?;
                for _ in 0..state.global_step * cfg.gradient_accumulation_steps {
                    order.next_batch(cfg.per_device_train_batch_size);
                }
                obs.message(&format!("resuming from {} at step {} of {steps}", dir.display(), state.global_step + 1));
                main.then(|| MetricsFile::append_to(metrics_path))
            }
            None => main.then(|| MetricsFile::create(metrics_path)).transpose()?,
        };
        let metrics = match metrics {
            Some(f) if cfg.reports_to_tensorboard() => Some(f.with_tensorboard(&cfg.output_dir.join("runs"), &serde_json::to_value(cfg)?)?),
            m => m,
        };
        if main {
            write_atomic(&cfg.output_dir.join("train_args.json"), |w| Ok(serde_json::to_writer_pretty(w, cfg)?))?;
        }
        let (first_step, tokens_before, skipped_nonfinite, nonfinite_in_a_row) =
            resume.as_ref().map_or((1, 0, 0, 0), |(_, s)| (s.global_step + 1, s.num_tokens, s.skipped_nonfinite, s.nonfinite_in_a_row));
        Ok(Self {
            cfg,
            train_set,
            eval_set,
            references,
            policy,
            vars,
            tokenizer,
            opt,
            order,
            metrics,
            log: StepLog::default(),
            steps,
            resumed_from: resume.map(|(dir, _)| dir),
            first_step,
            tokens_before,
            skipped_nonfinite,
            nonfinite_in_a_row,
            data_hashes,
        })
    }

    /// Optimiser step `step` (1-based): the step's batches, forward and backward, clipping,
    /// AdamW; logs and returns its `metrics.jsonl` line.
    fn step(&mut self, step: usize, obs: &mut dyn Observer) -> Result<Metrics> {
        let cfg = self.cfg;
        let t0 = Instant::now();
        let mut idx = Vec::new();
        for _ in 0..cfg.gradient_accumulation_steps {
            idx.extend(self.order.next_batch(cfg.per_device_train_batch_size));
        }
        let examples: Vec<&Tokenized> = idx.iter().map(|&i| &self.train_set.examples[i]).collect();
        let world = crate::dist::world();
        let refs = if self.references.per_batch() && world.size() > 1 {
            // TR-DPO's reference runs on the batch: each rank on its own share only.
            let mine = crate::step::share(&cfg.task, &examples, cfg.per_device_train_batch_size, world.size(), world.rank()).positions.swap_remove(world.rank());
            let got = self.references.train_batch(&self.train_set, &mine.iter().map(|&p| idx[p]).collect::<Vec<_>>(), cfg.max_tokens_per_forward)?;
            let mut all = vec![Vec::new(); idx.len()];
            mine.into_iter().zip(got).for_each(|(p, r)| all[p] = r);
            all
        } else {
            self.references.train_batch(&self.train_set, &idx, cfg.max_tokens_per_forward)?
        };
        let refs: Vec<&[f64]> = refs.iter().map(Vec::as_slice).collect();
        let settings = StepSettings {
            max_tokens: cfg.max_tokens_per_forward,
            batch_size: cfg.per_device_train_batch_size,
            dropout_seed: self.policy.lora.as_ref().filter(|l| l.lora_dropout > 0.0).map(|_| mix_seed(cfg.seed, step as u64)),
            recompute: cfg.setup.gradient_checkpointing,
        };
        let (comm_bytes0, _) = crate::dist::traffic();
        let res = data_parallel_gradients(&self.policy, &examples, &refs, &cfg.task, &settings)?;
        let m = cfg.task.metrics(&res.stats, self.policy.model.config.vocab_size);
        let t_opt = Instant::now();
        let grad_norm = global_grad_norm(&res.grads)?;
        let loss = m.get("loss").and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
        let lr = cfg.learning_rate * lr_factor(cfg.lr_scheduler_type, step - 1, cfg.warmup(self.steps), self.steps);
        // A non-finite step is not applied (it would turn every weight into NaN).
        let finite = loss.is_finite() && grad_norm.is_finite();
        let (_, comm_before_update) = crate::dist::traffic();
        if finite {
            self.opt.step(&self.vars, &res.grads, lr, clip_coefficient(grad_norm, cfg.max_grad_norm))?;
            self.nonfinite_in_a_row = 0;
        } else {
            self.skipped_nonfinite += 1;
            self.nonfinite_in_a_row += 1;
        }
        drop(res.grads);
        // ZeRO stage 1's all-gather of the updated slices, inside the update.
        let zero_seconds = crate::dist::traffic().1 - comm_before_update;
        let log = &mut self.log;
        log.optimizer.push(t_opt.elapsed().as_secs_f64());
        log.wait.push(res.wait_seconds);
        log.comm.push(res.comm_seconds + zero_seconds);
        log.comm_bytes += crate::dist::traffic().0 - comm_bytes0;
        log.forward.push(res.forward_seconds);
        log.backward.push(res.backward_seconds);
        let secs = t0.elapsed().as_secs_f64();
        let tokens: usize = examples.iter().map(|e| e.sequence_tokens()).sum();
        log.seconds.push(secs);
        log.tokens.push(tokens);
        log.packed_tokens += examples.iter().map(|e| e.packed_tokens()).sum::<usize>();

        let mut line = metrics::line(step, self.order.epoch(), &m);
        line.insert("grad_norm".into(), grad_norm.into());
        line.insert("learning_rate".into(), lr.into());
        line.insert("num_tokens".into(), (self.tokens_before + log.tokens_total()).into());
        line.insert("skipped_nonfinite".into(), self.skipped_nonfinite.into());
        if let Some(f) = &mut self.metrics {
            f.append(&line)?;
        }
        if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps.max(1) {
            let records: Vec<usize> = examples.iter().map(|e| e.index).collect();
            bail!(
                "step {step}: loss {loss}, gradient norm {grad_norm}: {} steps in a row were not finite (--max-nonfinite-steps {}), none applied; this step's records of {}: {records:?}",
                self.nonfinite_in_a_row,
                cfg.max_nonfinite_steps,
                cfg.data.display()
            );
        }
        if !finite {
            obs.message(&format!("step {step}: loss {loss}, gradient norm {grad_norm}: not finite, the update is skipped"));
        }
        obs.advance(step, &format!("{} | {:.0} tok/s", metrics::brief(&m), tokens as f64 / secs));
        self.references.after_step(step, &self.policy.model, obs)?;
        Ok(line)
    }

    /// The `eval_` metrics on the evaluation set after `step` steps (`None` without one), logged.
    fn evaluate(&mut self, step: usize, obs: &mut dyn Observer) -> Result<Option<Metrics>> {
        let Some(set) = &self.eval_set else { return Ok(None) };
        obs.message(&format!("evaluating on {} examples", set.examples.len()));
        let cfg = self.cfg;
        let ex: Vec<&Tokenized> = set.examples.iter().collect();
        let refs = self.references.eval(set, cfg.max_tokens_per_forward)?;
        let m = with_eval_prefix(evaluate(&self.policy.model, &ex, &refs, &cfg.task, cfg.max_tokens_per_forward)?);
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
        let cfg = self.cfg;
        let dir = cfg.output_dir.join(name);
        let moments = match &state {
            Some(_) if self.opt.is_sharded() || self.metrics.is_some() => Some(checkpoint::optimizer_moments(&self.policy, &self.opt)?),
            _ => None,
        };
        let Some(metrics) = &self.metrics else { return Ok(()) };
        write_dir_atomic(&dir, |tmp| {
            match self.policy.adapter(&crate::fetch::base_model_name(&cfg.model)) {
                Some(adapter) => adapter.write_files(tmp)?,
                None => write_hf_files(&self.policy.model.detached(), &self.tokenizer, tmp, DType::F32)?,
            }
            match (&state, moments) {
                (Some(state), Some(moments)) => checkpoint::write_state(tmp, state, &self.policy, moments, metrics.path()),
                _ => Ok(()),
            }
        })?;
        obs.message(&format!("saved {}", dir.display()));
        if let (Some(limit), Some(_)) = (cfg.save_total_limit, state) {
            checkpoint::prune(&cfg.output_dir, limit, self.resumed_from.as_deref())?;
        }
        Ok(())
    }

    /// Where the run stands after `step` steps.
    fn state(&self, step: usize) -> Result<TrainerState> {
        Ok(TrainerState {
            global_step: step,
            optimizer_step: self.opt.step,
            epoch: self.order.epoch(),
            max_steps: self.steps,
            num_tokens: self.tokens_before + self.log.tokens_total(),
            skipped_nonfinite: self.skipped_nonfinite,
            nonfinite_in_a_row: self.nonfinite_in_a_row,
            data_hash: self.data_hashes.train.clone(),
            eval_data_hash: self.data_hashes.eval.clone(),
            training_args: serde_json::to_value(self.cfg)?,
        })
    }

    /// The run's summary, written with the report.
    fn finish(self, started: Instant, final_train: Metrics, final_eval: Option<Metrics>, obs: &mut dyn Observer) -> Result<TrainSummary> {
        if crate::dist::world().size() > 1 {
            // The ranks applied the same updates: their trainable weights must be bit-identical.
            let mut h = blake3::Hasher::new();
            for v in &self.vars {
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
            crate::dist::check_agree("policy after training (hash of the trainable weights)", &h.finalize().to_hex())?;
            obs.message(&format!("all {} ranks hold bit-identical weights", crate::dist::world().size()));
        }
        let peak_rss_bytes_per_rank = crate::dist::all_gather(&peak_rss_bytes())?;
        let log = self.log;
        let train_seconds = log.train_seconds();
        let summary = TrainSummary {
            steps: self.steps,
            epochs: self.order.epoch(),
            train_seconds,
            total_seconds: started.elapsed().as_secs_f64(),
            train_tokens_per_second: log.tokens_total() as f64 / train_seconds.max(1e-9),
            packed_tokens_per_second: log.packed_tokens as f64 / train_seconds.max(1e-9),
            peak_rss_bytes: peak_rss_bytes(),
            step_seconds: log.seconds,
            step_tokens: log.tokens,
            step_forward_seconds: log.forward,
            step_backward_seconds: log.backward,
            step_optimizer_seconds: log.optimizer,
            ranks: crate::dist::world().size(),
            comm_bytes_per_step: log.comm_bytes as f64 / log.comm.len().max(1) as f64,
            step_wait_seconds: log.wait,
            step_comm_seconds: log.comm,
            optimizer_state_bytes: self.opt.state_bytes(),
            peak_rss_bytes_per_rank,
            final_train,
            final_eval,
            output_dir: self.cfg.output_dir.clone(),
        };
        let out = &self.cfg.output_dir;
        if crate::dist::is_main() {
            write_atomic(&out.join("summary.json"), |w| Ok(serde_json::to_writer_pretty(w, &summary)?))?;
            crate::report::write_run_report(out)?;
            obs.message(&format!("report: {}", out.join("report.html").display()));
        }
        Ok(summary)
    }
}

/// Trains the policy with `cfg`, reporting to `obs`; see the module documentation.
pub fn train(cfg: &TrainConfig, obs: &mut dyn Observer) -> Result<TrainSummary> {
    if cfg.online.online {
        return crate::online::train_online(cfg, obs);
    }
    let started = Instant::now();
    let mut run = Run::start(cfg, obs)?;
    let steps = run.steps;
    let (mut last_train, mut last_eval) = (Metrics::new(), None);
    obs.phase("training", steps, "steps");
    for step in run.first_step..=steps {
        last_train = run.step(step, obs)?;
        if cfg.eval_steps.is_some_and(|e| step % e == 0) && step < steps {
            last_eval = run.evaluate(step, obs)?;
        }
        if cfg.save_steps.is_some_and(|s| step % s == 0) && step < steps {
            run.save(&format!("checkpoint-{step}"), Some(run.state(step)?), obs)?;
        }
    }
    if run.eval_set.is_some() {
        last_eval = run.evaluate(steps, obs)?;
    }
    run.save("final", None, obs)?;
    run.finish(started, last_train, last_eval, obs)
}
