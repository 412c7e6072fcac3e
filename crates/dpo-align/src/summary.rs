//! The summaries the recipes write (`summary.json`, `round-r/round.json`) and the reports read
//! back, and where each recipe puts its runs.

use dpo_runtime::io::f64_or_nan;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What wrote a `summary.json`: a run of the training loop (`train`, `sft`, `online`) or a
/// recipe that composes runs (`iterate`, `demo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Train,
    Sft,
    Online,
    Iterate,
    Demo,
}

impl Kind {
    fn demo() -> Self {
        Kind::Demo
    }

    fn iterate() -> Self {
        Kind::Iterate
    }

    /// The kind of the run or pipeline whose output directory is `dir`: its `summary.json`'s
    /// `kind`, else (written before summaries named it) what its files show. Errors: a
    /// `summary.json` that cannot be read or names an unknown kind.
    pub fn of_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("summary.json");
        if path.exists() {
            let text =
                std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))?;
            if let Some(k) = v.get("kind") {
                return serde_json::from_value(k.clone())
                    .map_err(|e| anyhow::anyhow!("{}: `kind`: {e}", path.display()));
            }
            if dir.join("policies").is_dir() {
                return Ok(Kind::Demo);
            }
        }
        Ok(if dir.join("iterate_args.json").exists() { Kind::Iterate } else { Kind::Train })
    }
}

/// The training run directory of the policy trained at `beta` in the demo directory `out`:
/// `out/policies/beta-<beta>` (`<beta>` as `{}` prints the f64: `0.1`). With an empty `out`,
/// the path relative to the demo directory.
pub fn policy_dir(out: &Path, beta: f64) -> PathBuf {
    out.join("policies").join(format!("beta-{beta}"))
}

/// The directory of round `r` of iterative DPO in `out`.
pub fn round_dir(out: &Path, r: usize) -> PathBuf {
    out.join(format!("round-{r}"))
}

/// The reference's judge reward in the summary: mean and 95% confidence interval. (A value that
/// is not finite is written as `null` and read back as NaN.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceResult {
    #[serde(deserialize_with = "f64_or_nan")]
    pub reward_mean: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub reward_ci95: f64,
}

/// One evaluated model of the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyResult {
    pub beta: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub reward_mean: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub reward_ci95: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub kl: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub kl_ci95: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub win_rate: f64,
    pub train_pairs: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub final_train_loss: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub final_train_accuracy: f64,
}

/// The pipeline's result (`summary.json`; the report reads it back).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoSummary {
    /// `demo`.
    #[serde(default = "Kind::demo")]
    pub kind: Kind,
    pub wall_seconds: f64,
    pub reference: ReferenceResult,
    pub policies: Vec<PolicyResult>,
    pub pairs: usize,
    pub ties_dropped: usize,
    pub sample_tokens_per_second: f64,
    /// The demo's settings (`dpo demo`'s flags), the defaults filled in.
    pub settings: serde_json::Value,
}

/// One finished round (`round-r/round.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundResult {
    pub round: usize,
    /// Mean judge score of the round's training samples (from policy `round - 1`).
    pub train_sample_reward: f64,
    pub pairs: usize,
    pub ties_dropped: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub reward_mean: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub reward_ci95: f64,
    /// KL(policy ‖ initial model), nats, from the policy's held-out samples.
    #[serde(deserialize_with = "f64_or_nan")]
    pub kl: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub kl_ci95: f64,
    /// Against the initial model's held-out samples.
    #[serde(deserialize_with = "f64_or_nan")]
    pub win_rate: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub final_train_loss: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub final_train_accuracy: f64,
    /// The initial model's judge reward on the held-out prompts (the same samples every round).
    pub reference: ReferenceResult,
    pub seconds: f64,
}

/// `OUTPUT_DIR/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IterateSummary {
    /// `iterate`.
    #[serde(default = "Kind::iterate")]
    pub kind: Kind,
    /// The initial model's judge reward on the held-out prompts: mean and 95% CI.
    pub reference: ReferenceResult,
    pub rounds: Vec<RoundResult>,
    pub judge: String,
    /// The settings (`dpo iterate`'s flags), the defaults filled in.
    pub settings: serde_json::Value,
}
