//! Losses computed from the policy alone: no reference model is loaded or run for them.

use super::pairwise::smoothed_logistic;
use super::LossBatch;
use anyhow::{ensure, Result};
use candle_core::Tensor;
use dpo_kernels::{log1mexp, log_sigmoid};
use serde::Serialize;

/// SimPO (Meng, Xia & Chen 2024, eq. 6): `-log sigma(beta*avg(y_w) - beta*avg(y_l) - gamma)`
/// with `avg(y) = log pi(y) / |y|`, the length-normalised reward, and target margin `gamma`.
/// (TRL's `CPOTrainer` with `loss_type="simpo"` adds `cpo_alpha` (1.0) times an NLL term by
/// default; this is the pure loss of the paper — add the NLL with `--rpo-alpha` if wanted.)
pub fn simpo(b: &LossBatch, beta: f64, gamma: f64) -> Result<Tensor> {
    ensure!(b.k == 2, "simpo needs pairs");
    let avg = b.avg_logps()?;
    let z = (((b.column(&avg, 0)? - b.column(&avg, 1)?)? * beta)? - gamma)?;
    Ok(log_sigmoid(&z)?.neg()?)
}

/// ORPO (Hong, Lee & Thorne 2024, eqs. 4–7): `-avg(y_w) - lambda * log sigma(log odds(y_w) -
/// log odds(y_l))` with `odds(y) = p / (1 - p)`, `p = exp(avg(y))`, so
/// `log odds = avg - log(1 - exp(avg))`; `lambda` is `beta` here, as in TRL. The NLL term is the
/// paper's, over the chosen completion's tokens (TRL's `ORPOTrainer` also counts the prompt's).
pub fn orpo(b: &LossBatch, lambda: f64) -> Result<Tensor> {
    ensure!(b.k == 2, "orpo needs pairs");
    let avg = b.avg_logps()?;
    let (w, l) = (b.column(&avg, 0)?, b.column(&avg, 1)?);
    let log_odds = |a: &Tensor| -> Result<Tensor> { Ok((a - log1mexp(a)?)?) };
    let ratio = log_sigmoid(&(log_odds(&w)? - log_odds(&l)?)?)?;
    Ok((w.neg()? - (ratio * lambda)?)?)
}

/// SimPER (Xiao et al. 2025, "SimPER: A Minimalist Approach to Preference Alignment without
/// Hyperparameters", arXiv 2502.00883, §3): `-exp(avg(y_w)) + exp(avg(y_l))`, the inverse
/// perplexities `exp(log pi(y) / |y|)` of the chosen completion raised and of the rejected one
/// lowered; no beta, no margin, no reference. Each term lies in (0, 1], so the loss is in (-1, 1).
pub fn simper(b: &LossBatch) -> Result<Tensor> {
    ensure!(b.k == 2, "simper needs pairs");
    let avg = b.avg_logps()?;
    Ok((b.column(&avg, 1)?.exp()? - b.column(&avg, 0)?.exp()?)?)
}

/// The preference term of TRL's `CPOTrainer` (`CPOConfig.loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpoKind {
    /// `-(1-eps) log sigma(beta*m) - eps log sigma(-beta*m)` on summed log-probs (CPO's eq. 3).
    Sigmoid,
    /// `max(0, 1 - beta*m)` on summed log-probs.
    Hinge,
    /// `(m - 1/(2 beta))^2` on per-token average log-probs.
    Ipo,
    /// The sigmoid term of `m - gamma/beta` on per-token average log-probs (SimPO's eq. 6).
    Simpo,
}

/// CPO's reward-model-free preference term (Xu et al. 2024, "Contrastive Preference Optimization",
/// arXiv 2401.08417, eq. 3 and its variants; TRL 1.16 `trl/experimental/cpo/cpo_trainer.py`,
/// `CPOTrainer.cpo_loss`): with `r(y) = log pi(y)` (summed over the completion for `sigmoid` and
/// `hinge`, averaged per token for `ipo` and `simpo`) and the margin `m = r(y_w) - r(y_l)`, the
/// loss of `kind` ([`CpoKind`]). With AlphaPO's `alpha != 0` (Gupta et al. 2025, arXiv 2501.03884,
/// eq. 6; TRL `CPOConfig.alpha`) the reward is `(1 - exp(-alpha r)) / alpha`, i.e.
/// `(1 - p^-alpha) / alpha` of `p = exp(r)`. CPO's NLL term (`cpo_alpha` times the chosen
/// completion's NLL) is a separate `sft` term of the objective ([`super::Objective`]).
pub fn cpo(b: &LossBatch, kind: CpoKind, beta: f64, eps: f64, gamma: f64, alpha: f64) -> Result<Tensor> {
    ensure!(b.k == 2, "cpo needs pairs");
    let lp = match kind {
        CpoKind::Sigmoid | CpoKind::Hinge => b.policy.clone(),
        CpoKind::Ipo | CpoKind::Simpo => b.avg_logps()?,
    };
    let r = if alpha == 0.0 { lp } else { ((1.0 - (lp * -alpha)?.exp()?)? / alpha)? };
    let m = (b.column(&r, 0)? - b.column(&r, 1)?)?;
    match kind {
        CpoKind::Sigmoid => smoothed_logistic(&m, beta, eps),
        CpoKind::Simpo => smoothed_logistic(&(m - gamma / beta)?, beta, eps),
        CpoKind::Hinge => Ok((1.0 - (m * beta)?)?.relu()?),
        CpoKind::Ipo => Ok((m - 1.0 / (2.0 * beta))?.sqr()?),
    }
}

/// The negative log-likelihood of each example's first completion (the chosen one, the best of a
/// ranking) per token: `-log pi(y_w|x) / n`, with `n` the mean chosen length over the example's
/// batch (`b.nll_tokens`), so that the batch's mean is TRL's token mean
/// `-sum_i log pi(y_w,i|x_i) / sum_i |y_w,i|` over the micro-batch (TRL 1.16's `sft` loss type,
/// `dpo_trainer.py`: `-chosen_per_token_logps[chosen_mask].mean()`; the experimental
/// `CPOTrainer`'s `nll_loss`, a cross-entropy over the chosen labels); `n = |y_w|` when
/// `nll_tokens` is `None` (RPO's per-sequence form, Pang et al. 2024, eq. 4). Added to another
/// loss with weight `alpha` it is RPO, "DPO + NLL".
pub fn nll(b: &LossBatch) -> Result<Tensor> {
    match &b.nll_tokens {
        None => Ok(b.column(&b.avg_logps()?, 0)?.neg()?),
        Some(n) => {
            ensure!(n.len() == b.examples()?, "{} NLL lengths for {} examples", n.len(), b.examples()?);
            let n = Tensor::new(n.as_slice(), b.policy.device())?.to_dtype(b.policy.dtype())?;
            Ok((b.column(&b.policy, 0)? / n)?.neg()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CpoKind;
    use crate::loss::pairwise::tests::{check, ls, TOKENS};
    use crate::loss::Loss;

    fn avg(p: &[f64], i: usize) -> (f64, f64) {
        (p[2 * i] / TOKENS[2 * i] as f64, p[2 * i + 1] / TOKENS[2 * i + 1] as f64)
    }

    #[test]
    fn simpo_orpo_and_nll_match_their_formulas() {
        check(Loss::Simpo { beta: 2.0, gamma: 0.5 }, &|i, p| {
            let (w, l) = avg(p, i);
            -ls(2.0 * w - 2.0 * l - 0.5)
        });
        check(Loss::Orpo { beta: 0.1 }, &|i, p| {
            let (w, l) = avg(p, i);
            let odds = |a: f64| (a.exp() / (1.0 - a.exp())).ln();
            -w - 0.1 * ls(odds(w) - odds(l))
        });
        check(Loss::Sft, &|i, p| -avg(p, i).0);
    }

    #[test]
    fn simper_is_the_difference_of_inverse_perplexities() {
        check(Loss::Simper, &|i, p| {
            let (w, l) = avg(p, i);
            -w.exp() + l.exp()
        });
    }

    #[test]
    fn cpo_variants_match_trl_cpo_loss() {
        let (beta, eps, gamma) = (0.3, 0.1, 0.5);
        let sum = |p: &[f64], i: usize| (p[2 * i], p[2 * i + 1]);
        for alpha in [0.0, 0.25] {
            let r = |x: f64| if alpha == 0.0 { x } else { (1.0 - (-alpha * x).exp()) / alpha };
            let cpo = |kind| Loss::Cpo { kind, beta, label_smoothing: eps, gamma, alpha };
            check(cpo(CpoKind::Sigmoid), &|i, p| {
                let (w, l) = sum(p, i);
                let m = r(w) - r(l);
                -(1.0 - eps) * ls(beta * m) - eps * ls(-beta * m)
            });
            check(cpo(CpoKind::Hinge), &|i, p| {
                let (w, l) = sum(p, i);
                (1.0 - beta * (r(w) - r(l))).max(0.0)
            });
            check(cpo(CpoKind::Ipo), &|i, p| {
                let (w, l) = avg(p, i);
                (r(w) - r(l) - 1.0 / (2.0 * beta)).powi(2)
            });
            check(cpo(CpoKind::Simpo), &|i, p| {
                let (w, l) = avg(p, i);
                let m = r(w) - r(l) - gamma / beta;
                -(1.0 - eps) * ls(beta * m) - eps * ls(-beta * m)
            });
        }
    }
}
