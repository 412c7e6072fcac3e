//! β-DPO (Wu et al. 2024, "β-DPO: Direct Preference Optimization with Dynamic β", arXiv
//! 2407.08639, §4, eqs. 6–7; the authors' `trainers.py`, `preference_loss` with
//! `mode_loss=beta_DPO`): DPO whose β follows the batch's reward margins, on the pairs of the
//! batch that β-guided filtering keeps.
//!
//! Per batch, with the margins `M_i = rho_w,i - rho_l,i` (nats, no gradient):
//! 1. running statistics, updated first: `mean <- 0.9 mean + 0.1 mean_i(M_i)`,
//!    `std <- 0.9 std + 0.1 std_i(M_i)` (unbiased; both start at 0, as the authors' code);
//! 2. filtering: `floor(n (1 - ratio))` pairs drawn without replacement with probabilities
//!    proportional to `exp(-(M_i - mean)^2 / (2 std^2))` (all equal while `std` is 0);
//! 3. `beta_batch = max(1e-3, beta (1 + a (mean_kept(M) - mean)))`, a constant of the gradient;
//! 4. the loss `-log sigma(beta_batch * M_i)`, averaged over the kept pairs.
//!
//! The statistics run over a run's batches in order (a batch is `--per-device-train-batch-size`
//! pairs; with gradient accumulation each batch updates them in turn, as the authors' micro-
//! batches do) and are saved in checkpoints. The draw is seeded by the run's seed, the step and
//! the batch. With several MPI ranks the authors gather each micro-batch's margins across the
//! devices; dpo-rs runs β-DPO in one process.

use super::LossBatch;
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use dpo_kernels::log_sigmoid;
use serde::{Deserialize, Serialize};

/// The running mean and standard deviation of the batches' margins (nats).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MarginStats {
    pub mean: f64,
    pub std: f64,
}

/// What filtering and the dynamic β decided for one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BetaDpoPlan {
    /// `beta_batch` of step 3.
    pub beta: f64,
    /// Per pair: whether it is kept.
    pub keep: Vec<bool>,
}

/// The defaults of the authors' README example (`loss.mode_weight=0.2 loss.a=0.6`).
pub mod defaults {
    /// The share of each batch filtering drops.
    pub const FILTER_RATIO: f64 = 0.2;
    /// The scale `a` of the margin's effect on β.
    pub const ALPHA: f64 = 0.6;
}

/// The running statistics after a batch with `margins` (steps 1).
pub fn update_stats(prev: MarginStats, margins: &[f64]) -> MarginStats {
    let n = margins.len() as f64;
    let mean = margins.iter().sum::<f64>() / n.max(1.0);
    let var = margins.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    MarginStats { mean: 0.9 * prev.mean + 0.1 * mean, std: 0.9 * prev.std + 0.1 * var.sqrt() }
}

/// Steps 1–3 for a batch with `margins` after the statistics `prev`: the plan and the new
/// statistics. `alpha` is `a`, `ratio` the share dropped, `seed` the draw's.
pub fn plan(
    margins: &[f64],
    prev: MarginStats,
    beta: f64,
    alpha: f64,
    ratio: f64,
    seed: u64,
) -> (BetaDpoPlan, MarginStats) {
    let stats = update_stats(prev, margins);
    let n = margins.len();
    let mut weights: Vec<f64> = margins.iter().map(|m| (-0.5 * ((m - stats.mean) / stats.std).powi(2)).exp()).collect();
    if !weights.iter().all(|w| w.is_finite()) || weights.iter().sum::<f64>() <= 0.0 {
        weights = vec![1.0; n];
    }
    let k = (((n as f64) * (1.0 - ratio)).floor() as usize).clamp(1, n.max(1));
    let mut keep = vec![false; n];
    for draw in 0..k.min(n) {
        let total: f64 = weights.iter().zip(&keep).filter(|(_, &k)| !k).map(|(w, _)| w).sum();
        let u = dpo_kernels::uniform(seed, draw as u64) * total;
        let (mut acc, mut pick) = (0.0, None);
        for (i, w) in weights.iter().enumerate().filter(|(i, _)| !keep[*i]) {
            acc += w;
            pick = Some(i);
            if u < acc {
                break;
            }
        }
        keep[pick.expect("an unkept pair remains")] = true;
    }
    let kept: Vec<f64> = margins.iter().zip(&keep).filter(|(_, &k)| k).map(|(m, _)| *m).collect();
    let kept_mean = kept.iter().sum::<f64>() / kept.len().max(1) as f64;
    let beta = (beta * (1.0 + alpha * (kept_mean - stats.mean))).max(1e-3);
    (BetaDpoPlan { beta, keep }, stats)
}

/// Step 4: `-log sigma(beta_batch * M_i)` times `n / kept` for a kept pair, 0 for a dropped one
/// (so that the batch's mean is the mean over the kept pairs) `[pairs]`; without a plan
/// (evaluation), DPO with `beta` on every pair.
pub fn beta_dpo(b: &LossBatch, beta: f64) -> Result<Tensor> {
    let m = super::pairwise::delta(b)?;
    let Some(p) = &b.beta_dpo else { return Ok(log_sigmoid(&(m * beta)?)?.neg()?) };
    let n = m.dim(0)?;
    ensure!(p.keep.len() == n, "beta_dpo: a plan for {} pairs, {n} pairs", p.keep.len());
    let kept = p.keep.iter().filter(|&&k| k).count().max(1) as f64;
    let w: Vec<f64> = p.keep.iter().map(|&k| if k { n as f64 / kept } else { 0.0 }).collect();
    let w = Tensor::new(w, &Device::Cpu)?.to_dtype(m.dtype())?;
    Ok((log_sigmoid(&(m * p.beta)?)?.neg()? * w)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_filtering_and_beta_follow_the_authors_code() {
        let margins = [0.5, -1.0, 2.0, 0.1, 0.3];
        let prev = MarginStats { mean: 0.2, std: 0.8 };
        let s = update_stats(prev, &margins);
        let mean = 1.9 / 5.0;
        let std = (margins.iter().map(|m: &f64| (m - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
        assert!((s.mean - (0.18 + 0.1 * mean)).abs() < 1e-15 && (s.std - (0.72 + 0.1 * std)).abs() < 1e-15);
        let (p, s2) = plan(&margins, prev, 0.1, 0.6, 0.2, 7);
        assert_eq!(s2, s);
        assert_eq!(p.keep.iter().filter(|&&k| k).count(), 4, "floor(5 * 0.8)");
        let kept: Vec<f64> = margins.iter().zip(&p.keep).filter(|(_, &k)| k).map(|(m, _)| *m).collect();
        let want = 0.1 * (1.0 + 0.6 * (kept.iter().sum::<f64>() / 4.0 - s.mean));
        assert!((p.beta - want).abs() < 1e-15);
        // the same seed draws the same pairs; a zero std (first batch at policy == reference) keeps any
        assert_eq!(plan(&margins, prev, 0.1, 0.6, 0.2, 7).0, p);
        let (z, _) = plan(&[0.0; 4], MarginStats::default(), 0.1, 0.6, 0.2, 1);
        assert_eq!((z.keep.iter().filter(|&&k| k).count(), z.beta), (3, 0.1));
    }

    #[test]
    fn the_loss_averages_the_kept_pairs_with_the_batch_beta() {
        use crate::loss::pairwise::tests::{batch, check, ls, POLICY, REFERENCE};
        use crate::loss::Loss;
        // without a plan (evaluation): DPO with the base beta
        check(Loss::BetaDpo { beta: 0.3, alpha: 0.6, filter_ratio: 0.2 }, &|i, p| {
            let (w, l) = (p[2 * i] - REFERENCE[2 * i], p[2 * i + 1] - REFERENCE[2 * i + 1]);
            -ls(0.3 * (w - l))
        });
        let (_, mut b) = batch(&POLICY);
        b.beta_dpo = Some(BetaDpoPlan { beta: 0.7, keep: vec![true, false, true] });
        let got = beta_dpo(&b, 0.3).unwrap().to_vec1::<f64>().unwrap();
        for (i, g) in got.iter().enumerate() {
            let d = (POLICY[2 * i] - REFERENCE[2 * i]) - (POLICY[2 * i + 1] - REFERENCE[2 * i + 1]);
            let want = if i == 1 { 0.0 } else { 1.5 * -ls(0.7 * d) };
            assert!((g - want).abs() < 1e-12, "pair {i}: {g} vs {want}");
        }
    }

    #[test]
    fn the_draw_follows_the_gaussian_weights() {
        // keeping one of two pairs, pair 1 (3.2 running deviations from the running mean) is
        // drawn with probability w1 / (w0 + w1), about 0.6%
        let prev = MarginStats { mean: 0.0, std: 10.0 };
        let mut far = 0;
        for seed in 0..2000 {
            let (p, _) = plan(&[0.0, 40.0], prev, 0.1, 0.0, 0.5, seed);
            far += usize::from(p.keep[1]);
        }
        let s = update_stats(prev, &[0.0, 40.0]);
        let w1 = (-0.5 * ((40.0 - s.mean) / s.std).powi(2)).exp();
        let w0 = (-0.5 * ((0.0 - s.mean) / s.std).powi(2)).exp();
        let expect = 2000.0 * w1 / (w0 + w1);
        assert!((far as f64 - expect).abs() < 4.0 * expect.sqrt() + 5.0, "{far} vs {expect}");
    }
}
