//! The whole DPO pipeline on an embedded default (`dpo demo`): the DPO paper's controlled
//! sentiment generation (§6.1, Fig. 2) at the scale of one CPU.
//!
//! 1. sample completions of every training prompt from the reference (SmolLM2-135M-Instruct);
//! 2. label them with the sentiment judge: best against worst, second best against second
//!    worst, … (`rank-pairs`), ties dropped;
//! 3. train a policy with DPO at each beta (reference log-probs computed once, shared);
//! 4. sample from the reference and every policy on held-out prompts: judge reward (mean ± 95%
//!    CI), win rate against the reference, KL(policy ‖ reference) from the policy's samples;
//! 5. write `summary.json`, `eval_samples.jsonl` and the report (frontier plot: reward vs KL).
//!
//! The prompts ship in the binary: 220 openings of movie reviews written for this project.

use crate::eval::{compare, mean_ci95, reference_logps_of_samples, sample_and_judge};
use crate::io::{write_atomic, write_jsonl_atomic};
use crate::judge::Sentiment;
use crate::label::{label, LabelMode, SampleLine};
use crate::optim::ScheduleKind;
use crate::sample::{write_samples, SampleConfig};
use crate::task::Task;
use crate::train::{train, Observer, TrainConfig};
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The embedded prompts: one opening of a movie review per line.
pub const PROMPTS: &str = include_str!("../assets/demo_prompts.txt");

/// Settings of the demo; the defaults finish in about 15 minutes on 2 vCPUs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoConfig {
    pub model: PathBuf,
    pub output_dir: PathBuf,
    pub betas: Vec<f64>,
    /// Prompts used for training (the first ones); the last `eval_prompts` are held out.
    pub train_prompts: usize,
    pub eval_prompts: usize,
    /// Samples per training prompt (labelled into `samples / 2` pairs) and per held-out prompt.
    pub samples: usize,
    pub eval_samples: usize,
    pub max_new_tokens: usize,
    pub learning_rate: f64,
    pub epochs: f64,
    pub batch: usize,
    pub seed: u64,
}

impl DemoConfig {
    pub fn new(model: PathBuf, output_dir: PathBuf) -> Self {
        Self {
            model,
            output_dir,
            betas: vec![0.1, 0.5],
            train_prompts: 128,
            eval_prompts: 40,
            samples: 8,
            eval_samples: 4,
            max_new_tokens: 24,
            learning_rate: 4e-5,
            epochs: 1.0,
            batch: 8,
            seed: 0,
        }
    }
}

/// The reference's judge reward in the summary: mean and 95% confidence interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceResult {
    pub reward_mean: f64,
    pub reward_ci95: f64,
}

/// One evaluated model of the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyResult {
    pub beta: f64,
    pub reward_mean: f64,
    pub reward_ci95: f64,
    pub kl: f64,
    pub kl_ci95: f64,
    pub win_rate: f64,
    pub train_pairs: usize,
    pub final_train_loss: f64,
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

/// Runs the demo; see the module documentation.
pub fn run(cfg: &DemoConfig, obs: &mut dyn Observer) -> Result<DemoSummary> {
    let t0 = Instant::now();
    let prompts: Vec<String> = PROMPTS.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    ensure!(cfg.train_prompts + cfg.eval_prompts <= prompts.len(), "only {} embedded prompts", prompts.len());
    ensure!(cfg.samples >= 2, "labelling needs at least 2 samples per prompt");
    ensure!(!cfg.betas.is_empty(), "no beta to train with");
    let (train_p, eval_p) = (&prompts[..cfg.train_prompts], &prompts[prompts.len() - cfg.eval_prompts..]);
    std::fs::create_dir_all(&cfg.output_dir).with_context(|| format!("creating {}", cfg.output_dir.display()))?;
    obs.message(&format!("loading {}", cfg.model.display()));
    let loaded = crate::model::load(&cfg.model)?;
    let reference = loaded.model()?;
    let tok = &loaded.tokenizer;
    let judge = Sentiment::new();
    let sampling = |n: usize, seed: u64| SampleConfig { n, max_new_tokens: cfg.max_new_tokens, seed, ..Default::default() };

    // 1-2. reference samples on the training prompts, judged, paired by rank.
    obs.phase("sampling the reference", train_p.len(), "prompts");
    let ts = Instant::now();
    let train_samples = sample_and_judge(&reference, tok, train_p, &sampling(cfg.samples, cfg.seed), &judge, |d, g| {
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
    let (pairs, report) = label(&lines, &judge, LabelMode::RankPairs)?;
    let pairs_path = cfg.output_dir.join("pairs.jsonl");
    write_jsonl_atomic(&pairs_path, &pairs)?;
    obs.message(&format!(
        "{} pairs from {} prompts ({} tied pairs dropped); mean reference reward {:.3}",
        pairs.len(),
        train_p.len(),
        report.ties_dropped,
        report.mean_score
    ));

    // 3. DPO at each beta.
    let mut trained = Vec::new();
    for &beta in &cfg.betas {
        obs.message(&format!("DPO with beta = {beta}"));
        let mut tc = TrainConfig::new(cfg.model.clone(), pairs_path.clone(), policy_dir(&cfg.output_dir, beta));
        tc.overwrite_output_dir = true;
        tc.task = Task::dpo(beta);
        tc.learning_rate = cfg.learning_rate;
        tc.num_train_epochs = cfg.epochs;
        tc.per_device_train_batch_size = cfg.batch;
        tc.warmup_steps = 2;
        tc.lr_scheduler_type = ScheduleKind::Linear;
        tc.seed = cfg.seed;
        let s = train(&tc, obs)?;
        trained.push((beta, s));
    }

    // 4. evaluation on held-out prompts: the same sampling seed for every model.
    let eval_cfg = sampling(cfg.eval_samples, cfg.seed + 1);
    obs.phase("sampling the reference (held-out prompts)", eval_p.len(), "prompts");
    let ref_eval = sample_and_judge(&reference, tok, eval_p, &eval_cfg, &judge, |d, _| obs.advance(d, ""))?;
    let (ref_mean, ref_ci) = mean_ci95(&ref_eval.flat_rewards());
    let mut eval_lines: Vec<Value> = ref_eval.rows("reference").collect();
    let mut policies = Vec::new();
    for (beta, s) in &trained {
        let policy = crate::model::load(&policy_dir(&cfg.output_dir, *beta).join("final"))?.model()?;
        obs.phase(&format!("sampling beta={beta} (held-out prompts)"), eval_p.len(), "prompts");
        let pol_eval = sample_and_judge(&policy, tok, eval_p, &eval_cfg, &judge, |d, _| obs.advance(d, ""))?;
        let ref_logps = reference_logps_of_samples(&reference, &pol_eval, 2048)?;
        let c = compare(&pol_eval, &ref_eval, &ref_logps)?;
        obs.message(&format!(
            "beta={beta}: reward {:.3} ± {:.3} (reference {ref_mean:.3} ± {ref_ci:.3}), KL {:.2} nats, win rate {:.2}",
            c.reward_mean, c.reward_ci95, c.kl, c.win_rate
        ));
        eval_lines.extend(pol_eval.rows(&format!("beta={beta}")));
        policies.push(PolicyResult {
            beta: *beta,
            reward_mean: c.reward_mean,
            reward_ci95: c.reward_ci95,
            kl: c.kl,
            kl_ci95: c.kl_ci95,
            win_rate: c.win_rate,
            train_pairs: pairs.len(),
            final_train_loss: crate::metrics::get(&s.final_train, "loss"),
            final_train_accuracy: crate::metrics::get(&s.final_train, "rewards/accuracies"),
        });
    }
    write_jsonl_atomic(&cfg.output_dir.join("eval_samples.jsonl"), &eval_lines)?;

    // 5. summary and report.
    let summary = DemoSummary {
        wall_seconds: t0.elapsed().as_secs_f64(),
        reference: ReferenceResult { reward_mean: ref_mean, reward_ci95: ref_ci },
        policies,
        pairs: pairs.len(),
        ties_dropped: report.ties_dropped,
        sample_tokens_per_second: sample_tps,
        settings: cfg.clone(),
    };
    write_atomic(&cfg.output_dir.join("summary.json"), |w| Ok(serde_json::to_writer_pretty(w, &summary)?))?;
    crate::report::write_demo_report(&cfg.output_dir)?;
    Ok(summary)
}
