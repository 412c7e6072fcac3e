//! The metrics logged each step, under TRL's names so that dashboards carry over (LOSSES.md).

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What one forward pass tells about one example; per completion (a pair: chosen, then rejected).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ExampleStats {
    /// The example's loss term.
    pub loss: f64,
    /// Summed log-probs (nats) under the policy and the reference (empty without a reference).
    pub policy: Vec<f64>,
    pub reference: Vec<f64>,
    /// Scored completion tokens (a count).
    pub token_counts: Vec<usize>,
    /// `sum_t sum_v logit_{t,v}` over the completion's tokens.
    pub logit_sums: Vec<f64>,
    /// Completion tokens that are the model's most likely next token.
    pub argmax_hits: Vec<usize>,
    /// Unpaired examples (KTO): whether the completion is desirable, and the reference point
    /// `z0` (the batch's KL estimate, KTO eq. 3) of its batch.
    pub desirable: Option<bool>,
    pub kto_z0: Option<f64>,
}

/// An ordered set of named metrics (one line of `metrics.jsonl`).
pub type Metrics = Map<String, Value>;

/// The reward the preference metrics report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reward {
    /// DPO's implicit reward `beta * (log pi - log pi_ref)`.
    Implicit,
    /// `beta * log pi / |y|`, as TRL's CPO/ORPO trainers log it for losses without a reference.
    PerToken,
    /// `beta * log pi` (summed over the completion), as TRL's CPO trainer logs it for its
    /// `sigmoid` and `hinge` types.
    Summed,
}

/// TRL's preference metrics over pairs (or rankings: chosen = the best, rejected = the worst),
/// with the implicit reward `r = beta * (log pi - log pi_ref)`, or, for reference-free losses
/// ([`Reward::PerToken`]), `r = beta * log pi / |y|` as TRL's CPO/ORPO trainers log it:
/// - `loss`: mean loss;
/// - `rewards/chosen`, `rewards/rejected`: mean `r(y_w)`, `r(y_l)`;
/// - `rewards/margins`: mean `r(y_w) - r(y_l)`;
/// - `rewards/accuracies`: fraction of pairs with `r(y_w) > r(y_l)` (a tie counts 0; for
///   rankings, of all pairs ranked `i` above `j`);
/// - `logps/chosen`, `logps/rejected`: mean summed policy log-prob (nats);
/// - `logits/chosen`, `logits/rejected`: mean over completion tokens of the vocabulary-mean logit.
pub fn preference_metrics(examples: &[ExampleStats], beta: f64, vocab: usize, reward: Reward) -> Metrics {
    let n = examples.len().max(1) as f64;
    let mean = |f: &dyn Fn(&ExampleStats) -> f64| examples.iter().map(f).sum::<f64>() / n;
    let r = |p: &ExampleStats, i: usize| match reward {
        Reward::Implicit => beta * (p.policy[i] - p.reference.get(i).copied().unwrap_or(0.0)),
        Reward::PerToken => beta * p.policy[i] / p.token_counts[i].max(1) as f64,
        Reward::Summed => beta * p.policy[i],
    };
    let last = |p: &ExampleStats| p.policy.len() - 1;
    let logits = |pick: &dyn Fn(&ExampleStats) -> usize| {
        let (s, t) =
            examples.iter().fold((0.0, 0usize), |a, p| (a.0 + p.logit_sums[pick(p)], a.1 + p.token_counts[pick(p)]));
        s / (t.max(1) as f64 * vocab as f64)
    };
    let (mut right, mut total) = (0usize, 0usize);
    for p in examples {
        for i in 0..p.policy.len() {
            for j in i + 1..p.policy.len() {
                total += 1;
                right += usize::from(r(p, i) > r(p, j));
            }
        }
    }
    let mut m = Metrics::new();
    let mut put = |k: &str, v: f64| {
        m.insert(k.to_string(), Value::from(v));
    };
    put("loss", mean(&|p| p.loss));
    put("rewards/chosen", mean(&|p| r(p, 0)));
    put("rewards/rejected", mean(&|p| r(p, last(p))));
    put("rewards/margins", mean(&|p| r(p, 0) - r(p, last(p))));
    put("rewards/accuracies", right as f64 / total.max(1) as f64);
    put("logps/chosen", mean(&|p| p.policy[0]));
    put("logps/rejected", mean(&|p| p.policy[last(p)]));
    put("logits/chosen", logits(&|_| 0));
    put("logits/rejected", logits(&last));
    m
}

/// TRL `KTOTrainer`'s metrics over unpaired examples: `loss`, `kl` (the mean reference point
/// `z0`), `rewards/chosen` and `logps/chosen` over the desirable examples, `rewards/rejected` and
/// `logps/rejected` over the undesirable ones, `rewards/margins` (their difference, when both
/// are present), `logits/chosen`, `logits/rejected` (token-weighted vocabulary-mean logits).
pub fn kto_metrics(examples: &[ExampleStats], beta: f64, vocab: usize) -> Metrics {
    let mut m = Metrics::new();
    let n = examples.len().max(1) as f64;
    m.insert("loss".into(), Value::from(examples.iter().map(|e| e.loss).sum::<f64>() / n));
    m.insert("kl".into(), Value::from(examples.iter().filter_map(|e| e.kto_z0).sum::<f64>() / n));
    let mut side = |want: bool, name: &str| -> Option<f64> {
        let s: Vec<&ExampleStats> = examples.iter().filter(|e| e.desirable == Some(want)).collect();
        if s.is_empty() {
            return None;
        }
        let k = s.len() as f64;
        let reward = s.iter().map(|e| beta * (e.policy[0] - e.reference[0])).sum::<f64>() / k;
        m.insert(format!("rewards/{name}"), Value::from(reward));
        m.insert(format!("logps/{name}"), Value::from(s.iter().map(|e| e.policy[0]).sum::<f64>() / k));
        let (ls, t) = s.iter().fold((0.0, 0usize), |a, e| (a.0 + e.logit_sums[0], a.1 + e.token_counts[0]));
        m.insert(format!("logits/{name}"), Value::from(ls / (t.max(1) as f64 * vocab as f64)));
        Some(reward)
    };
    let (c, r) = (side(true, "chosen"), side(false, "rejected"));
    if let (Some(c), Some(r)) = (c, r) {
        m.insert("rewards/margins".into(), Value::from(c - r));
    }
    m
}

/// TRL `SFTTrainer`'s metrics over single-completion examples: `loss`, the negative log-likelihood
/// per completion token (nats/token, the token-weighted mean over the step), and
/// `mean_token_accuracy`, the fraction of completion tokens that are the model's argmax.
pub fn sft_metrics(examples: &[ExampleStats]) -> Metrics {
    let tokens: usize = examples.iter().map(|e| e.token_counts[0]).sum();
    let nll: f64 = examples.iter().map(|e| -e.policy[0]).sum();
    let hits: usize = examples.iter().map(|e| e.argmax_hits[0]).sum();
    let mut m = Metrics::new();
    m.insert("loss".into(), Value::from(nll / tokens.max(1) as f64));
    m.insert("mean_token_accuracy".into(), Value::from(hits as f64 / tokens.max(1) as f64));
    m
}

/// A line of `metrics.jsonl`: `{"step", "epoch", ...m}`.
pub fn line(step: usize, epoch: f64, m: &Metrics) -> Metrics {
    let mut line = Metrics::new();
    line.insert("step".into(), step.into());
    line.insert("epoch".into(), epoch.into());
    line.extend(m.clone());
    line
}

/// `metrics.jsonl` of a run: one JSON object per line, each appended with a single write, so a
/// crash cannot interleave or half-write earlier lines.
pub struct MetricsFile {
    path: PathBuf,
    /// TensorBoard event file the same lines go to (`--report-to tensorboard`).
    tensorboard: Option<crate::tensorboard::EventWriter>,
}

impl MetricsFile {
    /// Starts an empty file at `path` (an earlier run's file is removed).
    pub fn create(path: PathBuf) -> Result<Self> {
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(Self { path, tensorboard: None })
    }

    /// Also writes every line to a new TensorBoard event file under `runs`
    /// ([`crate::tensorboard::EventWriter`]), with `args` as its text summary.
    pub fn with_tensorboard(mut self, runs: &Path, args: &Value) -> Result<Self> {
        self.tensorboard = Some(crate::tensorboard::EventWriter::create(runs, args)?);
        Ok(self)
    }

    /// Goes on appending to the file at `path` as it is (a resumed run's, restored from its
    /// checkpoint).
    pub fn append_to(path: PathBuf) -> Self {
        Self { path, tensorboard: None }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line.
    pub fn append(&self, line: &Metrics) -> Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        f.write_all(format!("{}\n", Value::Object(line.clone())).as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))?;
        if let Some(tb) = &self.tensorboard {
            tb.write_line(line)?;
        }
        Ok(())
    }
}

/// The same metrics with every name prefixed `eval_`.
pub fn with_eval_prefix(m: Metrics) -> Metrics {
    m.into_iter().map(|(k, v)| (format!("eval_{k}"), v)).collect()
}

/// A short status line: loss and, when present, accuracy and margin (with or without `eval_`).
pub fn brief(m: &Metrics) -> String {
    let mut parts = Vec::new();
    for (key, short, digits) in [
        ("loss", "loss", 4),
        ("rewards/accuracies", "acc", 2),
        ("rewards/margins", "margin", 3),
        ("mean_token_accuracy", "tok_acc", 3),
    ] {
        for k in [key.to_string(), format!("eval_{key}")] {
            if let Some(v) = m.get(&k).and_then(Value::as_f64) {
                let name = if k.starts_with("eval_") { format!("eval_{short}") } else { short.to_string() };
                parts.push(format!("{name} {v:.digits$}"));
            }
        }
    }
    parts.join(" ")
}

/// A metric as f64 (NaN if absent).
pub fn get(m: &Metrics, key: &str) -> f64 {
    m.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards_margins_and_accuracy() {
        let p = |pc, pr| ExampleStats {
            loss: 1.0,
            policy: vec![pc, pr],
            reference: vec![-10.0, -10.0],
            token_counts: vec![2, 1],
            logit_sums: vec![8.0, 2.0],
            argmax_hits: vec![1, 0],
            ..Default::default()
        };
        let m = preference_metrics(&[p(-8.0, -12.0), p(-11.0, -10.0)], 0.5, 2, Reward::Implicit);
        assert_eq!(get(&m, "rewards/chosen"), (1.0 - 0.5) / 2.0);
        assert_eq!(get(&m, "rewards/margins"), ((1.0 + 1.0) + (-0.5 - 0.0)) / 2.0);
        assert_eq!(get(&m, "rewards/accuracies"), 0.5);
        assert_eq!(get(&m, "logits/chosen"), 16.0 / (4.0 * 2.0));
        assert!(with_eval_prefix(m).contains_key("eval_rewards/margins"));
        let s = sft_metrics(&[p(-8.0, 0.0), p(-4.0, 0.0)]);
        assert_eq!((get(&s, "loss"), get(&s, "mean_token_accuracy")), (12.0 / 4.0, 2.0 / 4.0));
    }
}
