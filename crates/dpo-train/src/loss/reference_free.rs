//! Losses computed from the policy alone: no reference model is loaded or run for them.

use super::LossBatch;
use anyhow::{ensure, Result};
use candle_core::Tensor;
use dpo_kernels::{log1mexp, log_sigmoid};

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

/// The negative log-likelihood per token of each example's first completion (the chosen one, the
/// best of a ranking): `-log pi(y_w|x) / |y_w|`. Added to another loss with weight `alpha` it is
/// RPO (Pang et al. 2024, eq. 4, "DPO + NLL"); TRL 1.16's `sft` loss type (which TRL averages over
/// the tokens of the micro-batch rather than per sequence).
pub fn nll(b: &LossBatch) -> Result<Tensor> {
    Ok(b.column(&b.avg_logps()?, 0)?.neg()?)
}

#[cfg(test)]
mod tests {
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
}
