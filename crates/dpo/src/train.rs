//! The DPO training loop, top to bottom.
//!
//! load model → read + tokenize data → reference log-probs (once, cached) → for each optimiser
//! step: forward/backward over the step's examples ([`crate::step`]) → clip → AdamW → log one
//! line of `metrics.jsonl` → evaluate / checkpoint on schedule → final checkpoint and summary.

use crate::data::{self, TokenizeSettings, Tokenized, TokenizedSet};
use crate::io::{peak_rss_bytes, write_atomic};
use crate::logps::dataset_logps;
use crate::logps::CompletionLogps;
use crate::loss::Needs;
use crate::metrics::{self, with_eval_prefix, ExampleStats, Metrics};
use crate::model::{self, save_hf_dir, Llama};
use crate::optim::{clip_coefficient, global_grad_norm, lr_factor, AdamW, AdamWConfig, ScheduleKind};
use crate::policy::Policy;
use crate::reference::{self, reference_logps};
use crate::step::loss_and_gradients;
use crate::task::Task;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{json, Value};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything `dpo train` needs; defaults are TRL's `DPOConfig` defaults.
#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    /// A `.gguf` file or a Hugging Face model directory; it is both the initial policy and the reference.
    pub model: PathBuf,
    /// Preference pairs (`.jsonl`, `.jsonl.gz`).
    pub data: PathBuf,
    pub eval_data: Option<PathBuf>,
    pub output_dir: PathBuf,
    /// Replace an earlier run's `metrics.jsonl` in `output_dir` (otherwise refuse).
    pub overwrite_output_dir: bool,
    /// A `dpo logps` file of the training data to use as reference log-probs.
    pub ref_logps: Option<PathBuf>,
    /// What is optimised: a preference loss, or SFT.
    pub task: Task,
    pub learning_rate: f64,
    pub num_train_epochs: f64,
    /// Overrides `num_train_epochs` when set.
    pub max_steps: Option<usize>,
    /// Pairs per batch; a step is `gradient_accumulation_steps` batches.
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub tokenize: TokenizeSettings,
    pub warmup_steps: usize,
    pub lr_scheduler_type: ScheduleKind,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
    pub adam: AdamWConfig,
    /// Evaluate every this many steps (and at the end) when `eval_data` is set.
    pub eval_steps: Option<usize>,
    /// Write `checkpoint-STEP/` every this many steps.
    pub save_steps: Option<usize>,
    pub seed: u64,
    /// Packed rows (tokens) per forward pass: the memory/speed trade-off of micro-batching.
    pub max_tokens_per_forward: usize,
    /// TR-DPO: update the reference during training (see [`SyncReference`]).
    pub sync_ref: Option<SyncReference>,
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
    /// A configuration with TRL's defaults for the given model, data and output directory.
    pub fn new(model: PathBuf, data: PathBuf, output_dir: PathBuf) -> Self {
        Self {
            model,
            data,
            eval_data: None,
            output_dir,
            overwrite_output_dir: false,
            ref_logps: None,
            task: Task::dpo(0.1),
            learning_rate: 1e-6,
            num_train_epochs: 3.0,
            max_steps: None,
            per_device_train_batch_size: 8,
            gradient_accumulation_steps: 1,
            tokenize: TokenizeSettings { max_length: Some(1024), max_prompt_length: None },
            warmup_steps: 0,
            lr_scheduler_type: ScheduleKind::Linear,
            max_grad_norm: 1.0,
            adam: AdamWConfig::default(),
            eval_steps: None,
            save_steps: None,
            seed: 42,
            max_tokens_per_forward: 2048,
            sync_ref: None,
        }
    }
}

/// Progress reports from the library to whoever shows them (the CLI's progress bars).
pub trait Observer {
    /// A phase with `total` units of work begins (`unit`: "pairs", "steps").
    fn phase(&mut self, _name: &str, _total: usize, _unit: &str) {}
    /// `done` units of the current phase are finished; `info` is a short status.
    fn advance(&mut self, _done: usize, _info: &str) {}
    /// A line worth showing (loaded data, cache hits, checkpoints).
    fn message(&mut self, _msg: &str) {}
}

/// An observer that shows nothing.
pub struct Silent;
impl Observer for Silent {}

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
    pub final_train: Metrics,
    pub final_eval: Option<Metrics>,
    pub output_dir: PathBuf,
}

/// How the examples of a data file are prepared for a task: the layout its loss needs, and (for
/// KTO) the batch size that pairs each example with a mismatched completion.
pub fn data_view(task: &Task, batch_size: usize) -> Result<String> {
    Ok(match task {
        Task::Sft => "completions".into(),
        Task::Preference(o) => match o.needs()? {
            Needs::Unpaired => format!("unpaired, KL pairs in batches of {batch_size}"),
            n => format!("{n:?}").to_lowercase(),
        },
    })
}

/// Reads and tokenizes a data file for `task`, reporting what was left out. Records of any layout
/// (see [`crate::data`]) are converted to what the task needs: for SFT one completion per record
/// (the chosen or best one); pairs for the pairwise losses (rankings become all their ordered
/// pairs); rankings for Plackett–Luce (a pair is a ranking of 2; all of one length); unpaired
/// examples for KTO (pairs are split), each then given the completion of its neighbour in its
/// batch of `batch_size` (TRL's rotation) for the KL estimate. A record that cannot be converted
/// is an error naming its file and line.
pub fn load_examples(path: &Path, tok: &Tokenizer, settings: TokenizeSettings, task: &Task, batch_size: usize, obs: &mut dyn Observer) -> Result<TokenizedSet> {
    let (records, report) = data::read_with(path, &data::ReadOptions::for_tokenizer(tok)?)?;
    let needs = match task {
        Task::Sft => None,
        Task::Preference(o) => Some(o.needs()?),
    };
    let records = match needs {
        None => data::to_completions(records),
        Some(Needs::Pairs | Needs::ScoredPairs | Needs::Any) => {
            let r = data::rankings_to_pairs(records)?;
            data::require(&r, data::Layout::Pair)?;
            r
        }
        Some(Needs::Unpaired) => {
            let r = data::to_unpaired(records)?;
            data::require(&r, data::Layout::Unpaired)?;
            r
        }
        Some(Needs::Rankings) => {
            data::require(&records, data::Layout::Ranking)?;
            records
        }
    };
    if needs == Some(Needs::ScoredPairs) {
        for r in &records {
            if let Ok(ex) = &r.example {
                ensure!(
                    matches!(ex.kind, data::ExampleKind::Pair { scores: Some(_) }),
                    "{}: this loss needs a score for each side (`score_chosen`, `score_rejected`)",
                    r.origin
                );
            }
        }
    }
    let mut set = data::tokenize_all(tok, &records, settings)?;
    if needs == Some(Needs::Rankings) {
        let k = set.examples.first().map(|e| e.completions.len()).unwrap_or(2);
        if let Some(e) = set.examples.iter().find(|e| e.completions.len() != k) {
            bail!("{}: record {} ranks {} completions, the first ranks {k}: plackett_luce needs rankings of one length", path.display(), e.index, e.completions.len());
        }
    }
    if needs == Some(Needs::Unpaired) {
        add_kl_completions(&mut set, batch_size);
    }
    let what = match needs {
        None => "examples",
        Some(Needs::Unpaired) => "unpaired examples",
        Some(Needs::Rankings) => "rankings",
        _ => "pairs",
    };
    obs.message(&format!(
        "{}: {} records, {} {what} used{}{}{}",
        path.display(),
        report.records,
        set.examples.len(),
        if report.conversational > 0 { format!(" ({} conversational, chat template applied)", report.conversational) } else { String::new() },
        if report.skipped_disagreeing > 0 {
            format!(", {} skipped (sides disagree before the last \"\\n\\nAssistant:\")", report.skipped_disagreeing)
        } else {
            String::new()
        },
        match set.skipped.len().saturating_sub(report.skipped_disagreeing) {
            0 => String::new(),
            n => format!(", {n} dropped (prompt fills max_length)"),
        }
    ));
    Ok(set)
}

/// KTO's mismatched completions (TRL's `add_kl_completion_ids`): in each run of `batch` examples
/// (file order), example `i` gets the completion of example `i - 1` (the first, of the last) as a
/// second completion, used only to estimate the KL reference point `z0`.
fn add_kl_completions(set: &mut TokenizedSet, batch: usize) {
    for chunk in set.examples.chunks_mut(batch.max(1)) {
        let firsts: Vec<Vec<u32>> = chunk.iter().map(|e| e.completions[0].clone()).collect();
        let n = chunk.len();
        for (i, e) in chunk.iter_mut().enumerate() {
            e.completions.truncate(1);
            e.completions.push(firsts[(i + n - 1) % n].clone());
        }
    }
}

/// [`load_examples`] for preference pairs.
pub fn load_pairs(path: &Path, tok: &Tokenizer, settings: TokenizeSettings, obs: &mut dyn Observer) -> Result<TokenizedSet> {
    load_examples(path, tok, settings, &Task::dpo(0.1), 1, obs)
}

/// The order in which examples are visited: a seeded shuffle per epoch, batches never spanning epochs.
struct Order {
    n: usize,
    seed: u64,
    epoch: usize,
    perm: Vec<usize>,
    pos: usize,
    consumed: usize,
}

impl Order {
    fn new(n: usize, seed: u64) -> Self {
        Self { n, seed, epoch: 0, perm: Vec::new(), pos: n, consumed: 0 }
    }

    fn next_batch(&mut self, size: usize) -> Vec<usize> {
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

    /// Epochs completed, fractional.
    fn epoch(&self) -> f64 {
        self.consumed as f64 / self.n as f64
    }
}

/// Optimiser steps of a run: `max_steps`, else `ceil(epochs * ceil(batches_per_epoch / accumulation))`.
pub fn total_steps(cfg: &TrainConfig, n_examples: usize) -> usize {
    if let Some(m) = cfg.max_steps {
        return m;
    }
    let batches = n_examples.div_ceil(cfg.per_device_train_batch_size);
    let per_epoch = batches.div_ceil(cfg.gradient_accumulation_steps).max(1);
    (cfg.num_train_epochs * per_epoch as f64).ceil() as usize
}

/// The task's metrics of `examples` under `model`, without gradients (evaluation).
/// `reference[i]`: the reference log-probs of example `i` (empty for SFT).
pub fn evaluate(model: &Llama, examples: &[&Tokenized], reference: &[Vec<f64>], task: &Task, max_tokens: usize, vocab: usize) -> Result<Metrics> {
    let policy = dataset_logps(model, examples, max_tokens, |_| {})?;
    let flat: Vec<f64> = policy.iter().flat_map(|p| p.logps.iter().copied()).collect();
    let out = CompletionLogps {
        logps: candle_core::Tensor::new(flat.as_slice(), &candle_core::Device::Cpu)?,
        tokens: policy.iter().flat_map(|p| p.tokens.iter().copied()).collect(),
        logit_sums: policy.iter().flat_map(|p| p.logit_sums.iter().copied()).collect(),
        argmax_hits: policy.iter().flat_map(|p| p.argmax_hits.iter().copied()).collect(),
    };
    let refs: Vec<f64> = reference.iter().flatten().copied().collect();
    let (losses, z0) = task.loss_terms(examples, &out, &refs)?;
    let losses = losses.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    let stats: Vec<ExampleStats> = policy
        .into_iter()
        .zip(losses)
        .enumerate()
        .map(|(i, (p, loss))| ExampleStats {
            loss,
            policy: p.logps,
            reference: reference.get(i).cloned().unwrap_or_default(),
            tokens: p.tokens,
            logit_sums: p.logit_sums,
            argmax_hits: p.argmax_hits,
            desirable: match examples[i].kind {
                data::ExampleKind::Unpaired { desirable } => Some(desirable),
                _ => None,
            },
            kl: z0,
        })
        .collect();
    Ok(task.metrics(&stats, vocab))
}

/// Where the reference log-probs of the examples come from during a run.
enum References {
    /// The task needs none (SFT, reference-free losses).
    None,
    /// Computed once before training (or read from `--ref-logps`, or from the cache): per example
    /// of the training set and of the evaluation set.
    Fixed { train: Vec<Vec<f64>>, eval: Option<Vec<Vec<f64>>> },
    /// TR-DPO: the reference model itself, run on every batch, moved every `sync.steps` steps.
    Moving { model: Llama, sync: SyncReference },
}

impl References {
    fn prepare(cfg: &TrainConfig, loaded: &model::Loaded, train: &TokenizedSet, eval: Option<&TokenizedSet>, obs: &mut dyn Observer) -> Result<Self> {
        if !cfg.task.needs_reference() {
            return Ok(Self::None);
        }
        let reference = loaded.model()?;
        if let Some(sync) = cfg.sync_ref {
            obs.message(&format!(
                "TR-DPO: the reference moves toward the policy (alpha {}) every {} steps; its log-probs are computed on each batch, the reference cache is not used",
                sync.alpha, sync.steps
            ));
            return Ok(Self::Moving { model: reference, sync });
        }
        let hash = reference::model_hash(&reference, &loaded.tokenizer)?;
        let view = data_view(&cfg.task, cfg.per_device_train_batch_size)?;
        let mut logps_of = |set: &TokenizedSet, data: &Path, given: Option<&Path>| -> Result<Vec<Vec<f64>>> {
            obs.phase(&format!("reference log-probs of {}", data.display()), set.examples.len(), "examples");
            let (v, origin) =
                reference_logps(&reference, &hash, data, &view, set, cfg.tokenize, given, cfg.max_tokens_per_forward, |d| obs.advance(d, ""))?;
            obs.message(&match origin {
                reference::Origin::Given(p) => format!("reference log-probs read from {}", p.display()),
                reference::Origin::Cache(p) => format!("reference log-probs reused from the cache {}", p.display()),
                reference::Origin::Computed(p) => format!("reference log-probs computed and cached in {}", p.display()),
            });
            Ok(v)
        };
        let train = logps_of(train, &cfg.data, cfg.ref_logps.as_deref())?;
        let eval = match (eval, &cfg.eval_data) {
            (Some(s), Some(p)) => Some(logps_of(s, p, None)?),
            _ => None,
        };
        Ok(Self::Fixed { train, eval })
    }

    /// The reference log-probs of the training examples `idx` (`examples[i]` is example `idx[i]`).
    fn train_batch(&self, idx: &[usize], examples: &[&Tokenized], max_tokens: usize) -> Result<Vec<Vec<f64>>> {
        Ok(match self {
            Self::None => vec![Vec::new(); idx.len()],
            Self::Fixed { train, .. } => idx.iter().map(|&i| train[i].clone()).collect(),
            Self::Moving { model, .. } => run_reference(model, examples, max_tokens)?,
        })
    }

    /// The reference log-probs of the evaluation set's examples.
    fn eval(&self, examples: &[&Tokenized], max_tokens: usize) -> Result<Vec<Vec<f64>>> {
        Ok(match self {
            Self::Fixed { eval: Some(e), .. } => e.clone(),
            Self::Moving { model, .. } => run_reference(model, examples, max_tokens)?,
            _ => vec![Vec::new(); examples.len()],
        })
    }

    /// After optimiser step `done`: TR-DPO's update `theta_ref <- (1 - alpha) theta_ref + alpha theta`.
    fn after_step(&mut self, done: usize, policy: &Llama, obs: &mut dyn Observer) -> Result<()> {
        if let Self::Moving { model, sync } = self {
            if done % sync.steps.max(1) == 0 {
                let p: std::collections::HashMap<String, candle_core::Tensor> = policy.named_tensors().into_iter().collect();
                let mut mixed = std::collections::HashMap::new();
                for (name, r) in model.named_tensors() {
                    mixed.insert(name.clone(), ((r * (1.0 - sync.alpha))? + (p[&name].detach() * sync.alpha)?)?);
                }
                *model = Llama::from_tensors(model.config.clone(), &mixed)?;
                obs.message(&format!("step {done}: reference <- {:.2} * reference + {:.2} * policy", 1.0 - sync.alpha, sync.alpha));
            }
        }
        Ok(())
    }
}

/// Reference log-probs computed now, per example and completion.
fn run_reference(model: &Llama, examples: &[&Tokenized], max_tokens: usize) -> Result<Vec<Vec<f64>>> {
    Ok(dataset_logps(model, examples, max_tokens, |_| {})?.into_iter().map(|e| e.logps).collect())
}

fn append_line(path: &Path, v: &Value) -> Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    // One write per line: a crash cannot interleave or half-write earlier lines.
    f.write_all(format!("{v}\n").as_bytes())?;
    Ok(())
}

/// Trains the policy with `cfg`, reporting to `obs`; see the module documentation.
pub fn train(cfg: &TrainConfig, obs: &mut dyn Observer) -> Result<TrainSummary> {
    let t_start = Instant::now();
    ensure!(cfg.per_device_train_batch_size > 0, "per_device_train_batch_size must be at least 1");
    ensure!(cfg.gradient_accumulation_steps > 0, "gradient_accumulation_steps must be at least 1");
    ensure!(cfg.max_tokens_per_forward > 0, "max_tokens_per_forward must be at least 1");
    let metrics_path = cfg.output_dir.join("metrics.jsonl");
    if metrics_path.exists() && !cfg.overwrite_output_dir {
        bail!("{} already holds a run (metrics.jsonl); choose another --output-dir or pass --overwrite-output-dir", cfg.output_dir.display());
    }

    obs.message(&format!("loading {}", cfg.model.display()));
    let loaded = model::load(&cfg.model)?;
    let vocab = loaded.config.vocab_size;
    let train_set = load_examples(&cfg.data, &loaded.tokenizer, cfg.tokenize, &cfg.task, cfg.per_device_train_batch_size, obs)?;
    ensure!(!train_set.examples.is_empty(), "{}: no usable examples", cfg.data.display());
    let eval_set = match &cfg.eval_data {
        Some(p) => Some(load_examples(p, &loaded.tokenizer, cfg.tokenize, &cfg.task, cfg.per_device_train_batch_size, obs)?),
        None => None,
    };

    let mut references = References::prepare(cfg, &loaded, &train_set, eval_set.as_ref(), obs)?;

    // Only the policy from here on.
    let policy = Policy::new(loaded.config.clone(), &loaded.tensors)?;
    let tokenizer = loaded.tokenizer.clone();
    drop(loaded);
    let vars = policy.vars();
    let mut opt = AdamW::new(&vars, cfg.adam)?;
    let steps = total_steps(cfg, train_set.examples.len());
    std::fs::create_dir_all(&cfg.output_dir).with_context(|| format!("creating {}", cfg.output_dir.display()))?;
    if metrics_path.exists() {
        std::fs::remove_file(&metrics_path)?;
    }
    write_atomic(&cfg.output_dir.join("train_args.json"), |w| Ok(serde_json::to_writer_pretty(w, cfg)?))?;

    let mut order = Order::new(train_set.examples.len(), cfg.seed);
    let (mut seq_tokens_total, mut packed_total, mut train_secs) = (0usize, 0usize, 0f64);
    let mut last_train = Metrics::new();
    let (mut step_seconds, mut step_tokens) = (Vec::new(), Vec::new());
    let (mut fwd_s, mut bwd_s, mut opt_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_eval = None;
    let run_eval = |step: usize, epoch: f64, references: &References, obs: &mut dyn Observer| -> Result<Option<Metrics>> {
        let Some(set) = &eval_set else { return Ok(None) };
        obs.message(&format!("evaluating on {} examples", set.examples.len()));
        let ex: Vec<&Tokenized> = set.examples.iter().collect();
        let refs = references.eval(&ex, cfg.max_tokens_per_forward)?;
        let m = with_eval_prefix(evaluate(&policy.model, &ex, &refs, &cfg.task, cfg.max_tokens_per_forward, vocab)?);
        let mut line = json!({"step": step, "epoch": epoch});
        line.as_object_mut().unwrap().extend(m.clone());
        append_line(&metrics_path, &line)?;
        obs.message(&format!("step {step}: {}", metrics::brief(&m)));
        Ok(Some(m))
    };

    obs.phase("training", steps, "steps");
    for step in 0..steps {
        let t0 = Instant::now();
        let mut idx = Vec::new();
        for _ in 0..cfg.gradient_accumulation_steps {
            idx.extend(order.next_batch(cfg.per_device_train_batch_size));
        }
        let examples: Vec<&Tokenized> = idx.iter().map(|&i| &train_set.examples[i]).collect();
        let refs = references.train_batch(&idx, &examples, cfg.max_tokens_per_forward)?;
        let refs: Vec<&[f64]> = refs.iter().map(Vec::as_slice).collect();
        let res = loss_and_gradients(&policy, &examples, &refs, &cfg.task, cfg.max_tokens_per_forward, cfg.per_device_train_batch_size)?;
        let t_opt = Instant::now();
        let grad_norm = global_grad_norm(&res.grads)?;
        let lr = cfg.learning_rate * lr_factor(cfg.lr_scheduler_type, step, cfg.warmup_steps, steps);
        opt.step(&vars, &res.grads, lr, clip_coefficient(grad_norm, cfg.max_grad_norm))?;
        drop(res.grads);
        opt_s.push(t_opt.elapsed().as_secs_f64());
        fwd_s.push(res.forward_seconds);
        bwd_s.push(res.backward_seconds);
        let secs = t0.elapsed().as_secs_f64();
        train_secs += secs;
        let seq_tokens: usize = examples.iter().map(|e| e.sequence_tokens()).sum();
        seq_tokens_total += seq_tokens;
        step_seconds.push(secs);
        step_tokens.push(seq_tokens);
        packed_total += examples.iter().map(|e| e.packed_tokens()).sum::<usize>();

        let mut line = json!({"step": step + 1, "epoch": order.epoch()});
        let m = cfg.task.metrics(&res.stats, vocab);
        let obj = line.as_object_mut().unwrap();
        obj.extend(m.clone());
        obj.insert("grad_norm".into(), grad_norm.into());
        obj.insert("learning_rate".into(), lr.into());
        obj.insert("num_tokens".into(), seq_tokens_total.into());
        append_line(&metrics_path, &line)?;
        obs.advance(step + 1, &format!("{} | {:.0} tok/s", metrics::brief(&m), seq_tokens as f64 / secs));
        last_train = line.as_object().unwrap().clone();

        let done = step + 1;
        references.after_step(done, &policy.model, obs)?;
        if cfg.eval_steps.is_some_and(|e| done % e == 0) && done < steps {
            last_eval = run_eval(done, order.epoch(), &references, obs)?;
        }
        if cfg.save_steps.is_some_and(|s| done % s == 0) && done < steps {
            let dir = cfg.output_dir.join(format!("checkpoint-{done}"));
            save_hf_dir(&policy.model.detached(), &tokenizer, &dir)?;
            obs.message(&format!("saved {}", dir.display()));
        }
    }
    if eval_set.is_some() {
        last_eval = run_eval(steps, order.epoch(), &references, obs)?;
    }
    let final_dir = cfg.output_dir.join("final");
    save_hf_dir(&policy.model.detached(), &tokenizer, &final_dir)?;
    obs.message(&format!("saved {}", final_dir.display()));

    let summary = TrainSummary {
        steps,
        epochs: order.epoch(),
        train_seconds: train_secs,
        total_seconds: t_start.elapsed().as_secs_f64(),
        train_tokens_per_second: seq_tokens_total as f64 / train_secs.max(1e-9),
        packed_tokens_per_second: packed_total as f64 / train_secs.max(1e-9),
        peak_rss_bytes: peak_rss_bytes(),
        step_seconds,
        step_tokens,
        step_forward_seconds: fwd_s,
        step_backward_seconds: bwd_s,
        step_optimizer_seconds: opt_s,
        final_train: last_train,
        final_eval: last_eval,
        output_dir: cfg.output_dir.clone(),
    };
    write_atomic(&cfg.output_dir.join("summary.json"), |w| Ok(serde_json::to_writer_pretty(w, &summary)?))?;
    crate::report::write_run_report(&cfg.output_dir)?;
    obs.message(&format!("report: {}", cfg.output_dir.join("report.html").display()));
    Ok(summary)
}
