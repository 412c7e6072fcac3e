//! KTO on unpaired examples.

use super::LossBatch;
use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use dpo_kernels::sigmoid;

/// KTO (Ethayarajh et al. 2024, eqs. 7–8; TRL's `KTOTrainer`), per example:
/// desirable `lambda_D * (1 - sigma(beta * (rho - z0)))`, undesirable
/// `lambda_U * (1 - sigma(beta * (z0 - rho)))`, where `rho = log pi(y|x) - log pi_ref(y|x)` and the
/// reference point `z0 = max(0, mean_i (log pi(y'_i|x_i) - log pi_ref(y'_i|x_i)))` is estimated
/// over the batch from mismatched completions `y'_i` (another example's completion after prompt
/// `x_i`, TRL's rotation) and carries no gradient. The batch holds `k = 2` completions per
/// example: `[y_i, y'_i]`. Returns the losses `[examples]` and `z0` (`b.kto_z0` when given: the
/// batch is one rank's share of a batch whose `z0` was computed across ranks).
/// (Seed 004 gives the simplified form without `z0`.)
pub fn kto(b: &LossBatch, beta: f64, desirable_weight: f64, undesirable_weight: f64) -> Result<(Tensor, f64)> {
    ensure!(b.k == 2, "kto needs each completion with a mismatched one for the KL estimate");
    let labels = b.desirable.as_ref().context("kto needs a desirable/undesirable label per example")?;
    let rho = b.log_ratios()?;
    let z0 = match b.kto_z0 {
        Some(z0) => z0,
        None => {
            let kl = b.column(&rho, 1)?.detach().to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
            (kl.iter().sum::<f64>() / kl.len().max(1) as f64).max(0.0)
        }
    };
    let r = b.column(&rho, 0)?;
    let sign: Vec<f64> = labels.iter().map(|&d| if d { 1.0 } else { -1.0 }).collect();
    let weight: Vec<f64> = labels.iter().map(|&d| if d { desirable_weight } else { undesirable_weight }).collect();
    let dt = r.dtype();
    let sign = Tensor::new(sign, &Device::Cpu)?.to_dtype(dt)?;
    let weight = Tensor::new(weight, &Device::Cpu)?.to_dtype(dt)?;
    // desirable: 1 - sigma(beta (rho - z0)); undesirable: 1 - sigma(beta (z0 - rho)) = 1 - sigma(-beta (rho - z0))
    let z = ((r - z0)? * beta)?.mul(&sign)?;
    Ok(((1.0 - sigmoid(&z)?)?.mul(&weight)?, z0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::pairwise::tests::{batch, sg, REFERENCE};
    use crate::loss::Loss;

    #[test]
    fn kto_formula_and_its_reference_point_has_no_gradient() {
        // the mismatched completions (odd positions) have positive log-ratios, so z0 > 0
        const POLICY: [f64; 6] = [-4.0, -5.0, -12.5, -7.25, -3.0, -2.5];
        let (v, mut b) = batch(&POLICY);
        b.desirable = Some(vec![true, false, true]);
        let (beta, wd, wu) = (0.5, 1.0, 1.5);
        let (loss, z0) = kto(&b, beta, wd, wu).unwrap();
        let rho: Vec<f64> = POLICY.iter().zip(REFERENCE).map(|(p, r)| p - r).collect();
        let want_z0 = ((rho[1] + rho[3] + rho[5]) / 3.0).max(0.0);
        assert!((z0 - want_z0).abs() < 1e-15 && z0 > 0.0, "{z0} vs {want_z0}");
        let want = [
            wd * (1.0 - sg(beta * (rho[0] - z0))),
            wu * (1.0 - sg(beta * (z0 - rho[2]))),
            wd * (1.0 - sg(beta * (rho[4] - z0))),
        ];
        for (g, w) in loss.to_vec1::<f64>().unwrap().iter().zip(want) {
            assert!((g - w).abs() < 1e-14, "{g} vs {w}");
        }
        let l = Loss::Kto { beta, desirable_weight: wd, undesirable_weight: wu };
        let g = l.per_example(&b).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g.get(&v).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!((g[1], g[3], g[5]), (0.0, 0.0, 0.0), "no gradient through z0");
        // the other gradients, by finite differences with z0 held fixed
        for (j, i) in [(0, 0), (2, 1), (4, 2)] {
            let f = |d: f64| {
                let r = rho[j] + d;
                if i == 1 {
                    wu * (1.0 - sg(beta * (z0 - r)))
                } else {
                    wd * (1.0 - sg(beta * (r - z0)))
                }
            };
            let fd = (f(1e-6) - f(-1e-6)) / 2e-6;
            assert!((g[j] - fd).abs() < 1e-8, "{} vs {fd}", g[j]);
        }
    }
}
