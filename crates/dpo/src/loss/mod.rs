//! Preference losses: pure functions of policy and reference log-probs.
//!
//! Every loss maps a [`LossBatch`] (one value per completion) to one loss per example; the
//! trainer averages them over the step's examples. Formulas and sources are in each docstring
//! (and in `LOSSES.md`).

pub mod pairwise;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

/// The inputs of a loss for a batch of examples with `k` completions each (`k = 2` for a pair:
/// chosen then rejected).
pub struct LossBatch {
    /// Summed policy log-probs `[examples * k]`, nats, differentiable.
    pub policy: Tensor,
    /// Summed reference log-probs `[examples * k]`, nats (constants).
    pub reference: Tensor,
    /// Completion tokens `[examples * k]` (as floats, for length-normalised losses).
    pub tokens: Tensor,
    pub k: usize,
}

impl LossBatch {
    /// Builds a batch from the policy tensor and plain values.
    pub fn new(policy: Tensor, reference: &[f64], tokens: &[usize], k: usize) -> Result<Self> {
        let n = policy.dim(0)?;
        if reference.len() != n || tokens.len() != n || k == 0 || n % k != 0 {
            bail!("loss batch: {n} policy values, {} reference, {} token counts, k = {k}", reference.len(), tokens.len());
        }
        let dt = policy.dtype();
        let reference = Tensor::new(reference, &Device::Cpu)?.to_dtype(dt)?;
        let tokens = Tensor::new(tokens.iter().map(|&t| t as f64).collect::<Vec<_>>(), &Device::Cpu)?.to_dtype(dt)?;
        Ok(Self { policy, reference, tokens, k })
    }

    /// Column `j` (the `j`-th completion of every example) of a `[examples * k]` tensor.
    pub fn column(&self, t: &Tensor, j: usize) -> Result<Tensor> {
        let n = t.dim(0)? / self.k;
        Ok(t.reshape((n, self.k))?.narrow(1, j, 1)?.squeeze(1)?)
    }

    /// Log-ratios `rho = log pi(y) - log pi_ref(y)` `[examples * k]`.
    pub fn log_ratios(&self) -> Result<Tensor> {
        Ok((&self.policy - &self.reference)?)
    }
}

/// The preference loss to optimise, with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "loss", rename_all = "snake_case")]
pub enum Loss {
    /// DPO (see [`pairwise::sigmoid`]); `label_smoothing` > 0 is conservative DPO.
    Sigmoid { beta: f64, label_smoothing: f64 },
}

impl Loss {
    /// The implicit-reward scale `beta` (used by the reward metrics).
    pub fn beta(&self) -> f64 {
        match self {
            Loss::Sigmoid { beta, .. } => *beta,
        }
    }

    /// One loss per example `[examples]`.
    pub fn per_example(&self, b: &LossBatch) -> Result<Tensor> {
        match *self {
            Loss::Sigmoid { beta, label_smoothing } => pairwise::sigmoid(b, beta, label_smoothing),
        }
    }
}
