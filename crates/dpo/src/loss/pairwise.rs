//! Pairwise losses of the DPO family on `(chosen, rejected)` completions.

use super::LossBatch;
use crate::ops::log_sigmoid;
use anyhow::{ensure, Result};
use candle_core::Tensor;

/// The DPO margin `delta = rho(y_w) - rho(y_l)` `[pairs]`, where `rho = log pi - log pi_ref`.
pub fn delta(b: &LossBatch) -> Result<Tensor> {
    ensure!(b.k == 2, "a pairwise loss needs 2 completions per example, got {}", b.k);
    let rho = b.log_ratios()?;
    Ok((b.column(&rho, 0)? - b.column(&rho, 1)?)?)
}

/// DPO (Rafailov et al. 2023, eq. 7): `-log sigma(beta * delta)`; with label smoothing `eps`
/// ("conservative DPO", Mitchell 2023; TRL ≤ 0.26's `label_smoothing`):
/// `-(1-eps) log sigma(beta*delta) - eps log sigma(-beta*delta)`. `[pairs]`.
///
/// Its gradient is `-beta * sigma(-beta*delta) * (grad log pi(y_w) - grad log pi(y_l))` (the
/// paper's §4): pairs the implicit reward ranks wrongly weigh more.
pub fn sigmoid(b: &LossBatch, beta: f64, eps: f64) -> Result<Tensor> {
    let z = (delta(b)? * beta)?;
    let clean = log_sigmoid(&z)?.neg()?;
    if eps == 0.0 {
        return Ok(clean);
    }
    Ok(((clean * (1.0 - eps))? - (log_sigmoid(&z.neg()?)? * eps)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn batch(policy: &[f64], reference: &[f64]) -> (Var, LossBatch) {
        let v = Var::new(policy, &Device::Cpu).unwrap();
        let b = LossBatch::new(v.as_tensor().clone(), reference, &vec![3; policy.len()], 2).unwrap();
        (v, b)
    }

    #[test]
    fn sigmoid_is_dpo_eq7_and_its_gradient() {
        let (pc, pr, rc, rr, beta) = (-4.0, -9.0, -5.0, -7.5, 0.1);
        let (v, b) = batch(&[pc, pr], &[rc, rr]);
        let l = sigmoid(&b, beta, 0.0).unwrap();
        let d = (pc - rc) - (pr - rr);
        let want = (1.0 + (-beta * d).exp()).ln();
        assert!((l.to_vec1::<f64>().unwrap()[0] - want).abs() < 1e-15);
        let g = l.sum_all().unwrap().backward().unwrap();
        let g = g.get(&v).unwrap().to_vec1::<f64>().unwrap();
        let w = beta / (1.0 + (beta * d).exp()); // beta * sigma(-beta*delta)
        assert!((g[0] + w).abs() < 1e-15 && (g[1] - w).abs() < 1e-15, "{g:?}");
        // at policy == reference the loss is log 2
        let (_, b) = batch(&[-3.0, -4.0], &[-3.0, -4.0]);
        assert!((sigmoid(&b, beta, 0.0).unwrap().to_vec1::<f64>().unwrap()[0] - 2f64.ln()).abs() < 1e-15);
    }

    #[test]
    fn label_smoothing_mixes_in_the_flipped_label() {
        let (_, b) = batch(&[-4.0, -9.0], &[-5.0, -7.5]);
        let z: f64 = 0.1 * ((-4.0 + 5.0) - (-9.0 + 7.5));
        let ls = |x: f64| -(1.0 + (-x).exp()).ln();
        let want = -0.8 * ls(z) - 0.2 * ls(-z);
        assert!((sigmoid(&b, 0.1, 0.2).unwrap().to_vec1::<f64>().unwrap()[0] - want).abs() < 1e-15);
    }
}
