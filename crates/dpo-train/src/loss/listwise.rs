//! The listwise Plackett–Luce loss on rankings of K completions.

use super::LossBatch;
use anyhow::{ensure, Result};
use candle_core::{Tensor, D};

/// Plackett–Luce DPO (Rafailov et al. 2023, appendix A.3, the objective after eq. 18; seed 003's
/// "公式23"), for completions ranked best first `y_(1) > ... > y_(K)` with implicit rewards
/// `r_k = beta * rho(y_(k))`: `-sum_{k=1..K} [r_k - logsumexp_{j=k..K} r_j]` (the `k = K` term is
/// 0). For K = 2 it is DPO's `sigmoid`. `[examples]`.
pub fn plackett_luce(b: &LossBatch, beta: f64) -> Result<Tensor> {
    ensure!(b.k >= 2, "plackett_luce needs rankings of at least 2 completions");
    let n = b.examples()?;
    let r = (b.log_ratios()?.reshape((n, b.k))? * beta)?;
    let mut total: Option<Tensor> = None;
    for k in 0..b.k - 1 {
        let tail = r.narrow(1, k, b.k - k)?;
        // logsumexp with the max held constant (the result does not depend on it)
        let m = tail.max_keepdim(D::Minus1)?.detach();
        let lse = (tail.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &m)?;
        let term = (lse - r.narrow(1, k, 1)?)?.squeeze(1)?;
        total = Some(match total {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    Ok(total.expect("K >= 2"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::pairwise::tests::{batch, POLICY, REFERENCE, TOKENS};
    use crate::loss::{Loss, LossBatch};
    use candle_core::{Device, Var};

    #[test]
    fn with_two_completions_it_is_dpo() {
        let (_, b) = batch(&POLICY);
        let pl = plackett_luce(&b, 0.3).unwrap().to_vec1::<f64>().unwrap();
        let dpo = Loss::Sigmoid { beta: 0.3, label_smoothing: 0.0 }.per_example(&b).unwrap().to_vec1::<f64>().unwrap();
        for (a, c) in pl.iter().zip(&dpo) {
            assert!((a - c).abs() < 1e-14, "{a} vs {c}");
        }
    }

    #[test]
    fn ranking_of_three_matches_the_product_of_choices_and_finite_differences() {
        // two examples of K = 3
        let v = Var::new(&POLICY[..6], &Device::Cpu).unwrap();
        let b = LossBatch::new(v.as_tensor().clone(), &REFERENCE, &TOKENS, 3).unwrap();
        let beta = 0.5;
        let want = |p: &[f64], e: usize| {
            let r: Vec<f64> = (0..3).map(|k| beta * (p[3 * e + k] - REFERENCE[3 * e + k])).collect();
            // -log [ e^r0/(e^r0+e^r1+e^r2) * e^r1/(e^r1+e^r2) ]
            let (e0, e1, e2) = (r[0].exp(), r[1].exp(), r[2].exp());
            -((e0 / (e0 + e1 + e2)).ln() + (e1 / (e1 + e2)).ln())
        };
        let got = plackett_luce(&b, beta).unwrap();
        for (e, g) in got.to_vec1::<f64>().unwrap().iter().enumerate() {
            assert!((g - want(&POLICY, e)).abs() < 1e-12);
        }
        let g = got.sum_all().unwrap().backward().unwrap();
        let g = g.get(&v).unwrap().to_vec1::<f64>().unwrap();
        for j in 0..6 {
            let f = |d: f64| {
                let mut p = POLICY;
                p[j] += d;
                want(&p, 0) + want(&p, 1)
            };
            let fd = (f(1e-6) - f(-1e-6)) / 2e-6;
            assert!((g[j] - fd).abs() < 1e-7, "{} vs {fd}", g[j]);
        }
    }
}
