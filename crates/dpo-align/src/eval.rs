//! Evaluating a policy against its reference on prompts: judge reward, win rate, and
//! KL(policy ‖ reference) from policy samples. (On preference data: [`dpo_train::evaluate`].)

use crate::judge::{Judge, JudgeInput};
use anyhow::{ensure, Result};
use dpo_data::samples::SampleRecord;
use dpo_data::Tokenized;
use dpo_model::sample::{sample_ids, SampleConfig, Sampled};
use dpo_model::tokenizer::{SpecialTokens, Tokenizer};
use dpo_model::{Llama, LoadOptions};
use dpo_runtime::observer::Observer;
use dpo_train::logps::example_logps_sharded;
use serde::Serialize;
use serde_json::Map;
use std::path::PathBuf;

/// Mean and the half-width of its 95% confidence interval, `1.96 * sd / sqrt(n)` (normal
/// approximation; sample standard deviation).
pub fn mean_ci95(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, 1.96 * (var / n).sqrt())
}

/// A model's samples on a set of prompts, judged.
#[derive(Debug, Clone)]
pub struct JudgedSamples {
    pub prompt_ids: Vec<Vec<u32>>,
    /// `[prompt][sample]`.
    pub sampled: Vec<Vec<Sampled>>,
    pub records: Vec<SampleRecord>,
    pub rewards: Vec<Vec<f64>>,
}

impl JudgedSamples {
    /// All rewards, prompt by prompt.
    pub fn flat_rewards(&self) -> Vec<f64> {
        self.rewards.iter().flatten().copied().collect()
    }

    /// `{"model", "prompt", "completion", "reward"}` for every judged sample, prompt by prompt.
    pub fn rows<'a>(&'a self, model: &'a str) -> impl Iterator<Item = serde_json::Value> + 'a {
        self.records.iter().zip(&self.rewards).flat_map(move |(r, rw)| {
            r.completions.iter().zip(rw).map(
                move |(c, x)| serde_json::json!({"model": model, "prompt": r.prompt, "completion": c, "reward": x}),
            )
        })
    }
}

/// Samples from `model` on `prompts` (not judged yet: `rewards` is empty).
pub fn sample_prompts(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[String],
    cfg: &SampleConfig,
    progress: impl FnMut(usize, usize),
) -> Result<JudgedSamples> {
    let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p)).collect::<Result<_>>()?;
    let sampled = sample_ids(model, &prompt_ids, &tok.stop_ids, cfg, progress)?;
    let mut records = Vec::with_capacity(prompts.len());
    for (p, s) in prompts.iter().zip(&sampled) {
        records.push(SampleRecord {
            prompt: p.clone(),
            completions: s.iter().map(|x| tok.decode(&x.tokens, SpecialTokens::Skip)).collect::<Result<_>>()?,
            logps: s.iter().map(|x| x.logp).collect(),
            tokens: s.iter().map(|x| x.tokens.len()).collect(),
        });
    }
    Ok(JudgedSamples { prompt_ids, sampled, records, rewards: Vec::new() })
}

/// Judges every completion of `s` (each prompt's completions in one call).
pub fn judge_samples(s: &mut JudgedSamples, judge: &dyn Judge) -> Result<()> {
    let empty = Map::new();
    s.rewards = s
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            judge.score(&JudgeInput {
                prompt: &r.prompt,
                completions: &r.completions,
                fields: &empty,
                origin: &format!("prompt {}", i + 1),
            })
        })
        .collect::<Result<_>>()?;
    Ok(())
}

/// A pairwise judge's view of a policy against its reference ([`Judge::is_pairwise`]): sample `j`
/// of every prompt judged against the reference's sample `j` of that prompt; the policy's reward
/// is the first score of each call (for [`crate::judge::LlmJudge`], `P(policy > reference)`), the
/// reference's the second.
pub fn judge_against(policy: &mut JudgedSamples, reference: &mut JudgedSamples, judge: &dyn Judge) -> Result<()> {
    ensure!(policy.records.len() == reference.records.len(), "policy and reference were sampled on different prompts");
    let empty = Map::new();
    let (mut pr, mut rr) = (Vec::new(), Vec::new());
    for (i, (p, r)) in policy.records.iter().zip(&reference.records).enumerate() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (j, (x, y)) in p.completions.iter().zip(&r.completions).enumerate() {
            let both = [x.clone(), y.clone()];
            let sc = judge.score(&JudgeInput {
                prompt: &p.prompt,
                completions: &both,
                fields: &empty,
                origin: &format!("prompt {} sample {}", i + 1, j + 1),
            })?;
            a.push(sc[0]);
            b.push(sc[1]);
        }
        pr.push(a);
        rr.push(b);
    }
    policy.rewards = pr;
    reference.rewards = rr;
    Ok(())
}

/// `log pi_ref(y|x)` of every sampled completion (the exact sampled token ids) under `reference`,
/// `[prompt][sample]`: each prompt packed once with its samples as branches.
pub fn reference_logps_of_samples(reference: &Llama, s: &JudgedSamples, max_tokens: usize) -> Result<Vec<Vec<f64>>> {
    let items: Vec<Tokenized> = s
        .prompt_ids
        .iter()
        .zip(&s.sampled)
        .enumerate()
        .map(|(i, (p, smp))| Tokenized {
            index: i,
            prompt: p.clone(),
            completions: smp.iter().map(|x| x.tokens.clone()).collect(),
            kind: dpo_data::ExampleKind::Ranking { scores: None },
        })
        .collect();
    let refs: Vec<&Tokenized> = items.iter().collect();
    example_logps_sharded(reference, &refs, max_tokens, None, |_| {})
}

/// The judge's view of a model on prompts, and how it compares with the reference.
#[derive(Debug, Clone, Serialize)]
pub struct PromptEval {
    pub reward_mean: f64,
    pub reward_ci95: f64,
    /// Sequence-level KL(policy ‖ reference) in nats, estimated from policy samples as the mean of
    /// `log pi(y|x) - log pi_ref(y|x)` (unbiased when sampling at temperature 1 without top-k/p).
    pub kl: f64,
    pub kl_ci95: f64,
    /// Fraction of (prompt, sample index) where the policy's sample out-scores the reference's
    /// sample with the same index (ties count one half).
    pub win_rate: f64,
}

/// Compares judged policy samples with judged reference samples on the same prompts;
/// `ref_logps[i][j]` is `log pi_ref` of the policy's sample `j` of prompt `i`.
pub fn compare(policy: &JudgedSamples, reference: &JudgedSamples, ref_logps: &[Vec<f64>]) -> Result<PromptEval> {
    ensure!(policy.rewards.len() == reference.rewards.len(), "policy and reference were sampled on different prompts");
    let (reward_mean, reward_ci95) = mean_ci95(&policy.flat_rewards());
    let kls: Vec<f64> =
        policy.sampled.iter().zip(ref_logps).flat_map(|(s, r)| s.iter().zip(r).map(|(x, r)| x.logp - r)).collect();
    let (kl, kl_ci95) = mean_ci95(&kls);
    let mut wins = Vec::new();
    for (p, r) in policy.rewards.iter().zip(&reference.rewards) {
        for (a, b) in p.iter().zip(r) {
            wins.push(if a > b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            });
        }
    }
    Ok(PromptEval { reward_mean, reward_ci95, kl, kl_ci95, win_rate: mean_ci95(&wins).0 })
}

/// What [`on_prompts`] evaluates with.
pub struct PromptEvalConfig<'a> {
    pub prompts: &'a [String],
    /// How every model samples (the same seed for every model).
    pub sampling: SampleConfig,
    pub judge: &'a dyn Judge,
    /// Packed rows per forward pass of the reference log-probs of the policies' samples.
    pub max_tokens_per_forward: usize,
}

/// One policy's result of [`on_prompts`].
#[derive(Debug, Clone)]
pub struct PolicyOnPrompts {
    pub label: String,
    pub eval: PromptEval,
}

/// The result of [`on_prompts`].
#[derive(Debug, Clone)]
pub struct PromptsResult {
    /// The reference's judge reward: mean and 95% CI half-width.
    pub reference_reward: (f64, f64),
    pub policies: Vec<PolicyOnPrompts>,
    /// Every judged sample, `{"model", "prompt", "completion", "reward"}`, reference first.
    pub rows: Vec<serde_json::Value>,
}

/// Evaluates policies against their reference on prompts: samples from the reference once and
/// from each policy (`(label, model, how to load it)`: a `.gguf` file or Hugging Face directory,
/// with a LoRA adapter merged when the load options name one; loaded in turn), judges every sample, and compares each policy with the reference
/// ([`compare`]: judge reward ± 95% CI, KL(policy ‖ reference) from the policy's samples, win
/// rate). Progress goes to `obs`, one phase per model.
pub fn on_prompts(
    reference: &Llama,
    tok: &Tokenizer,
    policies: &[(String, PathBuf, LoadOptions)],
    cfg: &PromptEvalConfig,
    obs: &mut dyn Observer,
) -> Result<PromptsResult> {
    let ref_samples = reference_on_prompts(reference, tok, cfg, obs)?;
    let reference_reward = mean_ci95(&ref_samples.flat_rewards());
    let mut rows: Vec<serde_json::Value> = ref_samples.rows("reference").collect();
    let mut results = Vec::with_capacity(policies.len());
    for (label, path, load) in policies {
        let (eval, samples) = policy_on_prompts(reference, &ref_samples, tok, label, path, load, cfg, obs)?;
        rows.extend(samples.rows(label));
        results.push(PolicyOnPrompts { label: label.clone(), eval });
    }
    Ok(PromptsResult { reference_reward, policies: results, rows })
}

/// The reference's samples on `cfg.prompts`, judged (with a pairwise judge, which compares the
/// two models' samples, every reference sample gets 1/2: the reference against itself).
pub fn reference_on_prompts(
    reference: &Llama,
    tok: &Tokenizer,
    cfg: &PromptEvalConfig,
    obs: &mut dyn Observer,
) -> Result<JudgedSamples> {
    obs.phase("sampling the reference", cfg.prompts.len(), "prompts");
    let mut s = sample_prompts(reference, tok, cfg.prompts, &cfg.sampling, |d, _| obs.advance(d, ""))?;
    if cfg.judge.is_pairwise() {
        s.rewards = s.records.iter().map(|r| vec![0.5; r.completions.len()]).collect();
    } else {
        judge_samples(&mut s, cfg.judge)?;
    }
    Ok(s)
}

/// One policy (`label`, loaded from `path` as `load` says) against the reference's judged
/// samples of [`reference_on_prompts`]: its samples, judged ([`judge_against`] the reference's
/// with a pairwise judge), and [`compare`]d. Returns the comparison and the policy's samples.
#[allow(clippy::too_many_arguments)]
pub fn policy_on_prompts(
    reference: &Llama,
    ref_samples: &JudgedSamples,
    tok: &Tokenizer,
    label: &str,
    path: &std::path::Path,
    load: &LoadOptions,
    cfg: &PromptEvalConfig,
    obs: &mut dyn Observer,
) -> Result<(PromptEval, JudgedSamples)> {
    let policy = dpo_model::load_with(path, load)?.model()?;
    obs.phase(&format!("sampling {label}"), cfg.prompts.len(), "prompts");
    let mut samples = sample_prompts(&policy, tok, cfg.prompts, &cfg.sampling, |d, _| obs.advance(d, ""))?;
    let mut against = ref_samples.clone();
    if cfg.judge.is_pairwise() {
        obs.message(&format!("judging {label} against the reference, sample by sample"));
        judge_against(&mut samples, &mut against, cfg.judge)?;
    } else {
        judge_samples(&mut samples, cfg.judge)?;
    }
    let ref_logps = reference_logps_of_samples(reference, &samples, cfg.max_tokens_per_forward)?;
    let eval = compare(&samples, &against, &ref_logps)?;
    let (rm, rci) = mean_ci95(&ref_samples.flat_rewards());
    obs.message(&format!(
        "{label}: reward {:.3} ± {:.3} (reference {rm:.3} ± {rci:.3}), KL {:.2} nats, win rate {:.2}",
        eval.reward_mean, eval.reward_ci95, eval.kl, eval.win_rate
    ));
    Ok((eval, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_interval() {
        let (m, ci) = mean_ci95(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((ci - 1.96 * (5.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-12);
        assert!(mean_ci95(&[1.0]).1.is_nan());
    }
}
