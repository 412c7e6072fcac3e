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
//!
//! This is a [`StepSource`] of the one training loop: checkpoints, `--resume-from-checkpoint`
//! (the sampling stream of step `s` is seeded by the run's seed and `s`, so a resumed run samples
//! what the uninterrupted one did), `--max-nonfinite-steps`, `--save-total-limit` and the cached
//! reference log-probs of the evaluation set are the loop's, as for offline training.

use crate::judge::{Judge, JudgeInput, JudgeSettings};
use anyhow::{ensure, Result};
use dpo_data::{ExampleKind, Tokenized, TokenizedSet};
use dpo_kernels::mix_seed;
use dpo_model::policy::Policy;
use dpo_model::sample::{sample_ids, SampleConfig};
use dpo_model::tokenizer::{SpecialTokens, Tokenizer};
use dpo_model::Llama;
use dpo_runtime::observer::Observer;
use dpo_train::metrics::Metrics;
use dpo_train::reference::References;
use dpo_train::trainer::{StepExamples, StepSource};
use serde::{Deserialize, Serialize};
use serde_json::Map;

/// The defaults of online DPO (TRL's `OnlineDPOConfig`: 64 new tokens, temperature 0.9).
pub mod defaults {
    pub const MAX_NEW_TOKENS: usize = 64;
    pub const TEMPERATURE: f64 = 0.9;
}

/// How online DPO samples and judges (`dpo train --online`'s flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct OnlineSettings {
    /// Online: tokens sampled per completion at most.
    #[cfg_attr(feature = "cli", arg(long = "online-max-new-tokens", default_value_t = defaults::MAX_NEW_TOKENS))]
    pub max_new_tokens: usize,
    /// Online: the sampling temperature.
    #[cfg_attr(feature = "cli", arg(long = "online-temperature", default_value_t = defaults::TEMPERATURE))]
    pub temperature: f64,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub judge: JudgeSettings,
}

impl Default for OnlineSettings {
    fn default() -> Self {
        Self {
            max_new_tokens: defaults::MAX_NEW_TOKENS,
            temperature: defaults::TEMPERATURE,
            judge: JudgeSettings::default(),
        }
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
fn sample_and_pair(
    policy: &Llama,
    tok: &Tokenizer,
    texts: &[String],
    ids: &[Vec<u32>],
    idx: &[usize],
    sampling: &SampleConfig,
    judge: &dyn Judge,
) -> Result<Judged> {
    let prompts: Vec<Vec<u32>> = idx.iter().map(|&i| ids[i].clone()).collect();
    let sampled = sample_ids(policy, &prompts, &tok.stop_ids, sampling, |_, _| {})?;
    let empty = Map::new();
    let mut j = Judged::default();
    for ((&i, p), s) in idx.iter().zip(prompts).zip(sampled) {
        let completions: Vec<String> =
            s.iter().map(|x| tok.decode(&x.tokens, SpecialTokens::Skip)).collect::<Result<_>>()?;
        let origin = format!("prompt {}", i + 1);
        let r = judge.score(&JudgeInput {
            prompt: &texts[i],
            completions: &completions,
            fields: &empty,
            origin: &origin,
        })?;
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
        j.pairs.push(Tokenized {
            index: i,
            prompt: p,
            completions: vec![s[c].tokens.clone(), s[l].tokens.clone()],
            kind: ExampleKind::Pair { scores: Some([r[c], r[l]]) },
        });
    }
    Ok(j)
}

/// Online DPO's step source: the units are prompts; a step's examples are the judged pairs of
/// the current policy's samples, their reference log-probs computed on the spot.
pub struct OnlineSource<'a> {
    settings: &'a OnlineSettings,
    seed: u64,
    max_tokens: usize,
    texts: Vec<String>,
    ids: Vec<Vec<u32>>,
    tokenizer: Tokenizer,
    judge: Box<dyn Judge>,
    references: References,
    /// The pairs of the step being trained.
    pairs: Vec<Tokenized>,
}

impl<'a> OnlineSource<'a> {
    /// The source over `prompts` (text, and token ids none of which is empty), sampling as
    /// `settings` say with `tokenizer`'s stop tokens, step `s` seeded by `seed` and `s`; `judge`
    /// orders each prompt's two samples; the reference log-probs of the pairs, and of the
    /// evaluation set, come from `references` (`max_tokens` packed rows per forward pass).
    pub fn new(
        settings: &'a OnlineSettings,
        prompts: (Vec<String>, Vec<Vec<u32>>),
        tokenizer: Tokenizer,
        judge: Box<dyn Judge>,
        references: References,
        seed: u64,
        max_tokens: usize,
    ) -> Self {
        let (texts, ids) = prompts;
        Self { settings, seed, max_tokens, texts, ids, tokenizer, judge, references, pairs: Vec::new() }
    }
}

impl StepSource for OnlineSource<'_> {
    fn units(&self) -> usize {
        self.texts.len()
    }

    fn examples(
        &mut self,
        step: usize,
        idx: &[usize],
        policy: &Policy,
        _obs: &mut dyn Observer,
    ) -> Result<StepExamples<'_>> {
        let sampling = SampleConfig {
            n: 2,
            max_new_tokens: self.settings.max_new_tokens,
            temperature: self.settings.temperature,
            seed: mix_seed(self.seed, step as u64),
            ..Default::default()
        };
        let judged = sample_and_pair(
            &policy.model,
            &self.tokenizer,
            &self.texts,
            &self.ids,
            idx,
            &sampling,
            self.judge.as_ref(),
        )?;
        let metrics = judged.metrics(idx.len());
        self.pairs = judged.pairs;
        let examples: Vec<&Tokenized> = self.pairs.iter().collect();
        let reference = self.references.of_examples(&examples, self.max_tokens)?;
        Ok(StepExamples { examples, reference, metrics })
    }

    fn eval_references(&mut self, set: &TokenizedSet, max_tokens: usize) -> Result<Vec<Vec<f64>>> {
        self.references.eval(set, max_tokens)
    }
}
