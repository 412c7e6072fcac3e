//! The metrics logged each step, under TRL's names so that dashboards carry over (LOSSES.md).

use serde_json::{Map, Value};

/// What one forward pass tells about one example; per completion (a pair: chosen, then rejected).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExampleStats {
    /// The example's loss term.
    pub loss: f64,
    /// Summed log-probs (nats) under the policy and the reference (empty without a reference).
    pub policy: Vec<f64>,
    pub reference: Vec<f64>,
    /// Scored completion tokens.
    pub tokens: Vec<usize>,
    /// `sum_t sum_v logit_{t,v}` over the completion's tokens.
    pub logit_sums: Vec<f64>,
    /// Completion tokens that are the model's most likely next token.
    pub argmax_hits: Vec<usize>,
}

/// An ordered set of named metrics (one line of `metrics.jsonl`).
pub type Metrics = Map<String, Value>;

/// TRL's preference metrics over `pairs`, with the implicit reward `r = beta * (log pi - log pi_ref)`:
/// - `loss`: mean loss;
/// - `rewards/chosen`, `rewards/rejected`: mean `r(y_w)`, `r(y_l)`;
/// - `rewards/margins`: mean `r(y_w) - r(y_l)`;
/// - `rewards/accuracies`: fraction of pairs with `r(y_w) > r(y_l)` (a tie counts 0);
/// - `logps/chosen`, `logps/rejected`: mean summed policy log-prob (nats);
/// - `logits/chosen`, `logits/rejected`: mean over completion tokens of the vocabulary-mean logit.
pub fn preference_metrics(pairs: &[ExampleStats], beta: f64, vocab: usize) -> Metrics {
    let n = pairs.len().max(1) as f64;
    let mean = |f: &dyn Fn(&ExampleStats) -> f64| pairs.iter().map(f).sum::<f64>() / n;
    let r = |p: &ExampleStats, i: usize| beta * (p.policy[i] - p.reference[i]);
    let logits = |i: usize| {
        let (s, t) = pairs.iter().fold((0.0, 0usize), |a, p| (a.0 + p.logit_sums[i], a.1 + p.tokens[i]));
        s / (t.max(1) as f64 * vocab as f64)
    };
    let mut m = Metrics::new();
    let mut put = |k: &str, v: f64| {
        m.insert(k.to_string(), Value::from(v));
    };
    put("loss", mean(&|p| p.loss));
    put("rewards/chosen", mean(&|p| r(p, 0)));
    put("rewards/rejected", mean(&|p| r(p, 1)));
    put("rewards/margins", mean(&|p| r(p, 0) - r(p, 1)));
    put("rewards/accuracies", mean(&|p| if r(p, 0) > r(p, 1) { 1.0 } else { 0.0 }));
    put("logps/chosen", mean(&|p| p.policy[0]));
    put("logps/rejected", mean(&|p| p.policy[1]));
    put("logits/chosen", logits(0));
    put("logits/rejected", logits(1));
    m
}

/// TRL `SFTTrainer`'s metrics over single-completion examples: `loss`, the negative log-likelihood
/// per completion token (nats/token, the token-weighted mean over the step), and
/// `mean_token_accuracy`, the fraction of completion tokens that are the model's argmax.
pub fn sft_metrics(examples: &[ExampleStats]) -> Metrics {
    let tokens: usize = examples.iter().map(|e| e.tokens[0]).sum();
    let nll: f64 = examples.iter().map(|e| -e.policy[0]).sum();
    let hits: usize = examples.iter().map(|e| e.argmax_hits[0]).sum();
    let mut m = Metrics::new();
    m.insert("loss".into(), Value::from(nll / tokens.max(1) as f64));
    m.insert("mean_token_accuracy".into(), Value::from(hits as f64 / tokens.max(1) as f64));
    m
}

/// The same metrics with every name prefixed `eval_`.
pub fn with_eval_prefix(m: Metrics) -> Metrics {
    m.into_iter().map(|(k, v)| (format!("eval_{k}"), v)).collect()
}

/// A short status line: loss and, when present, accuracy and margin (with or without `eval_`).
pub fn brief(m: &Metrics) -> String {
    let mut parts = Vec::new();
    for (key, short, digits) in [("loss", "loss", 4), ("rewards/accuracies", "acc", 2), ("rewards/margins", "margin", 3), ("mean_token_accuracy", "tok_acc", 3)] {
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
            tokens: vec![2, 1],
            logit_sums: vec![8.0, 2.0],
            argmax_hits: vec![1, 0],
        };
        let m = preference_metrics(&[p(-8.0, -12.0), p(-11.0, -10.0)], 0.5, 2);
        assert_eq!(get(&m, "rewards/chosen"), (1.0 - 0.5) / 2.0);
        assert_eq!(get(&m, "rewards/margins"), ((1.0 + 1.0) + (-0.5 - 0.0)) / 2.0);
        assert_eq!(get(&m, "rewards/accuracies"), 0.5);
        assert_eq!(get(&m, "logits/chosen"), 16.0 / (4.0 * 2.0));
        assert!(with_eval_prefix(m).contains_key("eval_rewards/margins"));
        let s = sft_metrics(&[p(-8.0, 0.0), p(-4.0, 0.0)]);
        assert_eq!((get(&s, "loss"), get(&s, "mean_token_accuracy")), (12.0 / 4.0, 2.0 / 4.0));
    }
}
