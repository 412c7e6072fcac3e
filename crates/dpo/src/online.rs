//! Online DPO (`dpo train --online`; Guo et al. 2024, "Direct Language Model Alignment from Online
//! AI Feedback", Algorithm 1; TRL's `OnlineDPOTrainer`): the pairs come from the policy as it
//! trains. At every optimiser step, for each prompt of the step: two completions sampled from the
//! current policy (the KV-cache sampler), scored by the judge, the better one chosen (ties
//! dropped); then one DPO step on those pairs against the fixed reference, whose log-probs of the
//! fresh samples are computed on the spot (with LoRA: the policy with its adapter switched off).
//!
//! The data (`--data`) holds prompts (`{"prompt": str}` records, as `dpo sample` reads), used as
//! text the model continues. Each step takes `--per-device-train-batch-size` x
//! `--gradient-accumulation-steps` prompts in the seeded order of offline training; an epoch is a
//! pass over the prompts. The metrics of a step are the offline ones (of the pairs trained on)
//! plus `online/judge_reward` (mean judge score of every sample), `online/chosen_reward`,
//! `online/rejected_reward`, `online/chosen_win_rate` (pairs where the judge scores the chosen
//! sample above the rejected one, ties counted one half, over all prompts of the step),
//! `online/ties`, `online/pairs` and `online/completion_tokens` (mean tokens per sample).

use crate::config::TrainConfig;
use crate::data::{ExampleKind, Tokenized};
use crate::io::{peak_rss_bytes, write_atomic, write_dir_atomic};
use crate::judge::{Judge, JudgeArgs, JudgeInput};
use crate::logps::example_logps;
use crate::loss::Needs;
use crate::metrics::{self, with_eval_prefix, Metrics, MetricsFile};
use crate::model::adapter::Adapter;
use crate::model::{self, write_hf_files, Llama};
use crate::observer::Observer;
use crate::ops::mix_seed;
use crate::optim::{clip_coefficient, global_grad_norm, lr_factor, AdamW};
use crate::policy::Policy;
use crate::sample::{read_prompts, sample_ids, SampleConfig};
use crate::step::{data_parallel_gradients, StepSettings};
use crate::task::Task;
use crate::train::{total_steps, Order, TrainSummary};
use anyhow::{bail, ensure, Context, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Instant;

/// The defaults of online DPO (TRL's `OnlineDPOConfig`: 64 new tokens, temperature 0.9).
pub mod defaults {
    pub const MAX_NEW_TOKENS: usize = 64;
    pub const TEMPERATURE: f64 = 0.9;
}

/// The flags of `dpo train --online`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct OnlineConfig {
    /// Online DPO: --data holds prompts; every step samples two completions per prompt from the current policy, judges them (--judge) and trains on the pairs.
    #[arg(long)]
    pub online: bool,
    /// Online: tokens sampled per completion at most.
    #[arg(long = "online-max-new-tokens", default_value_t = defaults::MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Online: the sampling temperature.
    #[arg(long = "online-temperature", default_value_t = defaults::TEMPERATURE)]
    pub temperature: f64,
    #[command(flatten)]
    pub judge: JudgeArgs,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self { online: false, max_new_tokens: defaults::MAX_NEW_TOKENS, temperature: defaults::TEMPERATURE, judge: JudgeArgs::default() }
    }
}

/// What the judge made of one step's samples.
#[derive(Debug, Default)]
struct Judged {
    pairs: Vec<Tokenized>,
    rewards: Vec<f64>,
    chosen: Vec<f64>,
    rejected: Vec<f64>,
    wins: Vec<f64>,
    ties: usize,
    tokens: usize,
}

impl Judged {
    fn metrics(&self, prompts: usize) -> Metrics {
        let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
        let mut m = Metrics::new();
        m.insert("online/judge_reward".into(), mean(&self.rewards).into());
        m.insert("online/chosen_reward".into(), mean(&self.chosen).into());
        m.insert("online/rejected_reward".into(), mean(&self.rejected).into());
        m.insert("online/chosen_win_rate".into(), mean(&self.wins).into());
        m.insert("online/ties".into(), (self.ties as f64 / prompts.max(1) as f64).into());
        m.insert("online/pairs".into(), self.pairs.len().into());
        m.insert("online/completion_tokens".into(), (self.tokens as f64 / (2 * prompts).max(1) as f64).into());
        m
    }
}

/// Samples two completions of each prompt `idx` from `policy`, judges them and pairs them.
fn sample_and_pair(policy: &Llama, tok: &crate::tokenizer::Tokenizer, texts: &[String], ids: &[Vec<u32>], idx: &[usize], sampling: &SampleConfig, judge: &dyn Judge) -> Result<Judged> {
    let prompts: Vec<Vec<u32>> = idx.iter().map(|&i| ids[i].clone()).collect();
    let sampled = sample_ids(policy, &prompts, &tok.stop_ids, sampling, |_, _| {})?;
    let empty = Map::new();
    let mut j = Judged::default();
    for ((&i, p), s) in idx.iter().zip(prompts).zip(sampled) {
        let completions: Vec<String> = s.iter().map(|x| tok.decode(&x.tokens, false)).collect::<Result<_>>()?;
        let origin = format!("prompt {}", i + 1);
        let r = judge.score(&JudgeInput { prompt: &texts[i], completions: &completions, fields: &empty, origin: &origin })?;
        ensure!(r.len() == 2, "{origin}: the judge gave {} scores for 2 completions", r.len());
        j.rewards.extend(&r);
        j.tokens += s.iter().map(|x| x.tokens.len()).sum::<usize>();
        if r[0] == r[1] {
            j.ties += 1;
            j.wins.push(0.5);
            continue;
        }
        let (c, l) = if r[0] > r[1] { (0, 1) } else { (1, 0) };
        j.chosen.push(r[c]);
        j.rejected.push(r[l]);
        j.wins.push(1.0);
        j.pairs.push(Tokenized { index: i, prompt: p, completions: vec![s[c].tokens.clone(), s[l].tokens.clone()], kind: ExampleKind::Pair { scores: Some([r[c], r[l]]) } });
    }
    Ok(j)
}

/// Refuses what online DPO does not do.
fn check(cfg: &TrainConfig) -> Result<()> {
    let Task::Preference(o) = &cfg.task else { bail!("--online trains a preference loss, not SFT") };
    let pairs = matches!(o.main().needs(), Needs::Pairs | Needs::ScoredPairs | Needs::Rankings);
    ensure!(pairs && !o.sorts_batch(), "--online makes scored pairs: use a pairwise loss (sigmoid, ipo, hinge, odpo, ...), not `{}`", o.main().name());
    ensure!(crate::dist::world().size() == 1, "--online runs in one process (mpirun -np 1)");
    ensure!(cfg.resume_from_checkpoint.is_none() && cfg.save_steps.is_none(), "--online writes no checkpoints: --save-steps and --resume-from-checkpoint are not available");
    ensure!(cfg.ref_logps.is_none() && cfg.sync_ref.is_none(), "--online computes the reference log-probs of its own samples: --ref-logps and --sync-ref-model do not apply");
    ensure!(cfg.online.max_new_tokens > 0 && cfg.online.temperature > 0.0, "--online-max-new-tokens must be at least 1 and --online-temperature positive");
    Ok(())
}

/// Trains the policy with online DPO (see the module documentation); writes what `dpo train`
/// writes (`metrics.jsonl`, `train_args.json`, `final/`, `summary.json`, the report).
pub fn train_online(cfg: &TrainConfig, obs: &mut dyn Observer) -> Result<TrainSummary> {
    let started = Instant::now();
    cfg.validate()?;
    check(cfg)?;
    let metrics_path = cfg.output_dir.join(crate::checkpoint::METRICS);
    ensure!(
        !metrics_path.exists() || cfg.overwrite_output_dir,
        "{} already holds a run (metrics.jsonl); choose another --output-dir or pass --overwrite-output-dir",
        cfg.output_dir.display()
    );
    let texts = read_prompts(&cfg.data)?;
    obs.message(&format!("loading {}", cfg.model.display()));
    let loaded = model::load_with(&crate::fetch::ensure_model(&cfg.model)?, &cfg.setup.load)?;
    let tok = loaded.tokenizer.clone();
    let ids: Vec<Vec<u32>> = texts.iter().map(|p| tok.encode(p)).collect::<Result<_>>()?;
    if let Some(i) = ids.iter().position(Vec::is_empty) {
        bail!("{}: prompt {} is empty: there is nothing to continue", cfg.data.display(), i + 1);
    }
    let eval_set = match &cfg.eval_data {
        Some(p) => Some(crate::data::load_examples(p, &tok, cfg.tokenize, &cfg.task, cfg.per_device_train_batch_size, obs)?),
        None => None,
    };
    let judge = cfg.online.judge.build(cfg.max_tokens_per_forward).context("--judge")?;
    let (policy, reference) = if cfg.setup.lora.use_peft {
        let base = loaded.model()?;
        let adapter = Adapter::init(&cfg.setup.lora, &loaded.config, &crate::fetch::base_model_name(&cfg.model), cfg.seed, DType::F32)?;
        let policy = Policy::lora(&base, &adapter)?;
        let reference = policy.model.without_adapters();
        (policy, reference)
    } else {
        (Policy::new(loaded.config.clone(), &loaded.tensors)?, loaded.model()?)
    };
    drop(loaded);
    let vars = policy.vars();
    let mut opt = AdamW::new(&vars, cfg.adam)?;
    let steps = total_steps(cfg, texts.len());
    let mut order = Order::new(texts.len(), cfg.seed);
    std::fs::create_dir_all(&cfg.output_dir).with_context(|| format!("creating {}", cfg.output_dir.display()))?;
    let mut metrics = MetricsFile::create(metrics_path)?;
    if cfg.reports_to_tensorboard() {
        metrics = metrics.with_tensorboard(&cfg.output_dir.join("runs"), &serde_json::to_value(cfg)?)?;
    }
    write_atomic(&cfg.output_dir.join("train_args.json"), |w| Ok(serde_json::to_writer_pretty(w, cfg)?))?;
    obs.message(&format!("online DPO: {} prompts, {} per step, 2 samples each, judge `{}`", texts.len(), cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps, judge.name()));

    let (mut seconds, mut step_tokens, mut forward, mut backward, mut optimizer) = (vec![], vec![], vec![], vec![], vec![]);
    let mut packed_tokens = 0usize;
    let (mut last_train, mut last_eval) = (Metrics::new(), None);
    obs.phase("online training", steps, "steps");
    for step in 1..=steps {
        let t0 = Instant::now();
        let mut idx = Vec::new();
        for _ in 0..cfg.gradient_accumulation_steps {
            idx.extend(order.next_batch(cfg.per_device_train_batch_size));
        }
        let sampling = SampleConfig {
            n: 2,
            max_new_tokens: cfg.online.max_new_tokens,
            temperature: cfg.online.temperature,
            seed: mix_seed(cfg.seed, step as u64),
            ..Default::default()
        };
        let judged = sample_and_pair(&policy.model, &tok, &texts, &ids, &idx, &sampling, judge.as_ref())?;
        let examples: Vec<&Tokenized> = judged.pairs.iter().collect();
        let lr = cfg.learning_rate * lr_factor(cfg.lr_scheduler_type, step - 1, cfg.warmup(steps), steps);
        let mut m = Metrics::new();
        let tokens: usize = examples.iter().map(|e| e.sequence_tokens()).sum();
        packed_tokens += examples.iter().map(|e| e.packed_tokens()).sum::<usize>();
        if !examples.is_empty() {
            let refs = match cfg.task.needs_reference() {
                true => example_logps(&reference, &examples, cfg.max_tokens_per_forward, cfg.task.ld_alpha(), |_| {})?,
                false => vec![Vec::new(); examples.len()],
            };
            let refs: Vec<&[f64]> = refs.iter().map(Vec::as_slice).collect();
            let settings = StepSettings {
                max_tokens: cfg.max_tokens_per_forward,
                batch_size: cfg.per_device_train_batch_size,
                dropout_seed: policy.lora.as_ref().filter(|l| l.lora_dropout > 0.0).map(|_| mix_seed(cfg.seed, step as u64)),
                recompute: cfg.setup.gradient_checkpointing,
            };
            let res = data_parallel_gradients(&policy, &examples, &refs, &cfg.task, &settings)?;
            m = cfg.task.metrics(&res.stats, policy.model.config.vocab_size);
            let t_opt = Instant::now();
            let grad_norm = global_grad_norm(&res.grads)?;
            let loss = m.get("loss").and_then(Value::as_f64).unwrap_or(f64::NAN);
            if loss.is_finite() && grad_norm.is_finite() {
                opt.step(&vars, &res.grads, lr, clip_coefficient(grad_norm, cfg.max_grad_norm))?;
            } else {
                obs.message(&format!("step {step}: loss {loss}, gradient norm {grad_norm}: not finite, the update is skipped"));
            }
            m.insert("grad_norm".into(), grad_norm.into());
            forward.push(res.forward_seconds);
            backward.push(res.backward_seconds);
            optimizer.push(t_opt.elapsed().as_secs_f64());
        } else {
            obs.message(&format!("step {step}: every pair tied: no update"));
        }
        m.insert("learning_rate".into(), lr.into());
        m.extend(judged.metrics(idx.len()));
        let line = metrics::line(step, order.epoch(), &m);
        metrics.append(&line)?;
        let secs = t0.elapsed().as_secs_f64();
        seconds.push(secs);
        step_tokens.push(tokens);
        obs.advance(step, &format!("{} | judge {:.3}", metrics::brief(&m), metrics::get(&m, "online/judge_reward")));
        last_train = line;
        if let Some(set) = &eval_set {
            if cfg.eval_steps.is_some_and(|e| step % e == 0) || step == steps {
                let ex: Vec<&Tokenized> = set.examples.iter().collect();
                let refs = example_logps(&reference, &ex, cfg.max_tokens_per_forward, cfg.task.ld_alpha(), |_| {})?;
                let e = with_eval_prefix(crate::eval::evaluate(&policy.model, &ex, &refs, &cfg.task, cfg.max_tokens_per_forward)?);
                metrics.append(&metrics::line(step, order.epoch(), &e))?;
                obs.message(&format!("step {step}: {}", metrics::brief(&e)));
                last_eval = Some(e);
            }
        }
    }
    let dir = cfg.output_dir.join("final");
    write_dir_atomic(&dir, |tmp| match policy.adapter(&crate::fetch::base_model_name(&cfg.model)) {
        Some(adapter) => adapter.write_files(tmp),
        None => write_hf_files(&policy.model.detached(), &tok, tmp, DType::F32),
    })?;
    obs.message(&format!("saved {}", dir.display()));
    let train_seconds: f64 = seconds.iter().sum();
    let total_tokens: usize = step_tokens.iter().sum();
    let summary = TrainSummary {
        steps,
        epochs: order.epoch(),
        train_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        train_tokens_per_second: total_tokens as f64 / train_seconds.max(1e-9),
        packed_tokens_per_second: packed_tokens as f64 / train_seconds.max(1e-9),
        peak_rss_bytes: peak_rss_bytes(),
        step_seconds: seconds,
        step_tokens,
        step_forward_seconds: forward,
        step_backward_seconds: backward,
        step_optimizer_seconds: optimizer,
        ranks: 1,
        step_wait_seconds: vec![],
        step_comm_seconds: vec![],
        comm_bytes_per_step: 0.0,
        optimizer_state_bytes: opt.state_bytes(),
        peak_rss_bytes_per_rank: vec![peak_rss_bytes()],
        final_train: last_train,
        final_eval: last_eval,
        output_dir: cfg.output_dir.clone(),
    };
    write_atomic(&cfg.output_dir.join("summary.json"), |w| Ok(serde_json::to_writer_pretty(w, &summary)?))?;
    crate::report::write_run_report(&cfg.output_dir)?;
    Ok(summary)
}
