//! The metrics logged each step, under TRL's names so that dashboards carry over (LOSSES.md).

use serde_json::{Map, Value};

/// What one forward pass tells about one preference pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairStats {
    /// Per-example loss.
    pub loss: f64,
    /// Summed log-probs (nats) of chosen and rejected under the policy and the reference.
    pub policy_chosen: f64,
    pub policy_rejected: f64,
    pub ref_chosen: f64,
    pub ref_rejected: f64,
    /// Scored completion tokens.
    pub chosen_tokens: usize,
    pub rejected_tokens: usize,
    /// `sum_t sum_v logit_{t,v}` over the completion's tokens.
    pub chosen_logit_sum: f64,
    pub rejected_logit_sum: f64,
}

impl PairStats {
    /// Stats of a pair from per-completion values `[chosen, rejected]`.
    pub fn new(loss: f64, policy: &[f64], reference: &[f64], tokens: &[usize], logit_sums: &[f64]) -> Self {
        Self {
            loss,
            policy_chosen: policy[0],
            policy_rejected: policy[1],
            ref_chosen: reference[0],
            ref_rejected: reference[1],
            chosen_tokens: tokens[0],
            rejected_tokens: tokens[1],
            chosen_logit_sum: logit_sums[0],
            rejected_logit_sum: logit_sums[1],
        }
    }
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
pub fn preference_metrics(pairs: &[PairStats], beta: f64, vocab: usize) -> Metrics {
    let n = pairs.len().max(1) as f64;
    let mean = |f: &dyn Fn(&PairStats) -> f64| pairs.iter().map(f).sum::<f64>() / n;
    let rc = |p: &PairStats| beta * (p.policy_chosen - p.ref_chosen);
    let rr = |p: &PairStats| beta * (p.policy_rejected - p.ref_rejected);
    let logits = |sum: &dyn Fn(&PairStats) -> (f64, usize)| {
        let (s, t) = pairs.iter().map(sum).fold((0.0, 0usize), |a, b| (a.0 + b.0, a.1 + b.1));
        s / (t.max(1) as f64 * vocab as f64)
    };
    let mut m = Metrics::new();
    let mut put = |k: &str, v: f64| {
        m.insert(k.to_string(), Value::from(v));
    };
    put("loss", mean(&|p| p.loss));
    put("rewards/chosen", mean(&rc));
    put("rewards/rejected", mean(&rr));
    put("rewards/margins", mean(&|p| rc(p) - rr(p)));
    put("rewards/accuracies", mean(&|p| if rc(p) > rr(p) { 1.0 } else { 0.0 }));
    put("logps/chosen", mean(&|p| p.policy_chosen));
    put("logps/rejected", mean(&|p| p.policy_rejected));
    put("logits/chosen", logits(&|p| (p.chosen_logit_sum, p.chosen_tokens)));
    put("logits/rejected", logits(&|p| (p.rejected_logit_sum, p.rejected_tokens)));
    m
}

/// The same metrics with every name prefixed `eval_`.
pub fn with_eval_prefix(m: Metrics) -> Metrics {
    m.into_iter().map(|(k, v)| (format!("eval_{k}"), v)).collect()
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
        let p = |pc, pr| PairStats {
            loss: 1.0,
            policy_chosen: pc,
            policy_rejected: pr,
            ref_chosen: -10.0,
            ref_rejected: -10.0,
            chosen_tokens: 2,
            rejected_tokens: 1,
            chosen_logit_sum: 8.0,
            rejected_logit_sum: 2.0,
        };
        let m = preference_metrics(&[p(-8.0, -12.0), p(-11.0, -10.0)], 0.5, 2);
        assert_eq!(get(&m, "rewards/chosen"), (1.0 - 0.5) / 2.0);
        assert_eq!(get(&m, "rewards/margins"), ((1.0 + 1.0) + (-0.5 - 0.0)) / 2.0);
        assert_eq!(get(&m, "rewards/accuracies"), 0.5);
        assert_eq!(get(&m, "logits/chosen"), 16.0 / (4.0 * 2.0));
        assert!(with_eval_prefix(m).contains_key("eval_rewards/margins"));
    }
}
