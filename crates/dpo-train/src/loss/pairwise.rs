//! Pairwise losses of the DPO family on `(chosen y_w, rejected y_l)`, with a reference.
//!
//! Notation: `rho = log pi(y) - log pi_ref(y)` (summed over completion tokens, nats),
//! `delta = rho(y_w) - rho(y_l)`; every function returns one loss per pair `[pairs]`.

use super::LossBatch;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use dpo_kernels::{log_sigmoid, sigmoid as sig};

/// The chosen and rejected columns of a `[pairs * 2]` tensor, each `[pairs]`.
fn sides(b: &LossBatch, t: &Tensor) -> Result<(Tensor, Tensor)> {
    ensure!(b.k == 2, "a pairwise loss needs 2 completions per example, got {}", b.k);
    Ok((b.column(t, 0)?, b.column(t, 1)?))
}

/// `(rho(y_w), rho(y_l))`, each `[pairs]`.
fn rhos(b: &LossBatch) -> Result<(Tensor, Tensor)> {
    sides(b, &b.log_ratios()?)
}

/// The DPO margin `delta = rho(y_w) - rho(y_l)` `[pairs]`.
pub fn delta(b: &LossBatch) -> Result<Tensor> {
    let (w, l) = rhos(b)?;
    Ok((w - l)?)
}

/// `(s(y_w), s(y_l))`, each `[pairs]`: the log-ratios through the batch's f-divergence
/// ([`super::FDivergence::score`]; `rho` itself for the reverse KL of DPO).
fn scores(b: &LossBatch) -> Result<(Tensor, Tensor)> {
    sides(b, &b.scores_f()?)
}

/// The f-DPO margin `s(y_w) - s(y_l)` `[pairs]` (Wang et al. 2023, eq. 10; `delta` for the
/// reverse KL): what `sigmoid`, `robust`, `hinge` and `discopop` scale by beta, as TRL's
/// `delta_score`.
pub fn score_delta(b: &LossBatch) -> Result<Tensor> {
    let (w, l) = scores(b)?;
    Ok((w - l)?)
}

/// `(s(y_w)/|y_w|, s(y_l)/|y_l|)`: the f-divergence scores per completion token (lengths at
/// least 1), as TRL's `ipo` and `sigmoid_norm` normalise them.
fn per_token_scores(b: &LossBatch) -> Result<(Tensor, Tensor)> {
    sides(b, &(b.scores_f()? / b.tokens.clamp(1.0, f64::INFINITY)?)?)
}

/// DPO (Rafailov et al. 2023, eq. 7): `-log sigma(beta * delta)`; with label smoothing `eps`
/// ("conservative DPO", Mitchell 2023; TRL ≤ 0.26's `label_smoothing`; TRL 1.16 ignores it for
/// `sigmoid`): `-(1-eps) log sigma(beta*delta) - eps log sigma(-beta*delta)`.
///
/// Its gradient is `-beta * sigma(-beta*delta) * (grad log pi(y_w) - grad log pi(y_l))` (the
/// paper's §4): pairs the implicit reward ranks wrongly weigh more.
pub fn sigmoid(b: &LossBatch, beta: f64, eps: f64) -> Result<Tensor> {
    let z = (score_delta(b)? * beta)?;
    let clean = log_sigmoid(&z)?.neg()?;
    if eps == 0.0 {
        return Ok(clean);
    }
    Ok(((clean * (1.0 - eps))? - (log_sigmoid(&z.neg()?)? * eps)?)?)
}

/// Robust DPO (Chowdhury, Kini & Natarajan 2024, §3, the unbiased loss under label-flip rate
/// `eps < 1/2`; TRL's `robust`): `[-(1-eps) log sigma(beta*delta) + eps log sigma(-beta*delta)] / (1-2eps)`.
/// With `eps = 0` it is DPO.
pub fn robust(b: &LossBatch, beta: f64, eps: f64) -> Result<Tensor> {
    ensure!((0.0..0.5).contains(&eps), "robust DPO needs label_smoothing in [0, 0.5), got {eps}");
    let z = (score_delta(b)? * beta)?;
    let clean = (log_sigmoid(&z)? * -(1.0 - eps))?;
    let flipped = (log_sigmoid(&z.neg()?)? * eps)?;
    Ok(((clean + flipped)? / (1.0 - 2.0 * eps))?)
}

/// The hinge loss of SLiC (Zhao et al. 2023, eq. 2 with the DPO margin; TRL's `hinge`):
/// `max(0, 1 - beta * delta)`.
pub fn hinge(b: &LossBatch, beta: f64) -> Result<Tensor> {
    Ok((1.0 - (score_delta(b)? * beta)?)?.relu()?)
}

/// IPO (Azar et al. 2023, eq. 17, with `tau = beta`) as TRL computes it, from per-token average
/// log-ratios: `(rho(y_w)/|y_w| - rho(y_l)/|y_l| - 1/(2 beta))^2`. (The paper sums over tokens;
/// TRL's averaging was agreed with the authors. Seed 004 writes the constant as `1/beta`.)
pub fn ipo(b: &LossBatch, beta: f64) -> Result<Tensor> {
    let (w, l) = per_token_scores(b)?;
    Ok(((w - l)? - 1.0 / (2.0 * beta))?.sqr()?)
}

/// TRL 1.16's `sigmoid_norm`: DPO on per-token log-ratios (the length normalisation of TRL's
/// `ipo` inside DPO's sigmoid, cf. SimPO's average log-probs, Meng et al. 2024 eq. 4):
/// `-log sigma(beta * (rho_w/|y_w| - rho_l/|y_l|))` (lengths at least 1).
pub fn sigmoid_norm(b: &LossBatch, beta: f64) -> Result<Tensor> {
    let (w, l) = per_token_scores(b)?;
    Ok(log_sigmoid(&((w - l)? * beta)?)?.neg()?)
}

/// DiscoPOP (Chris Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for
/// Large Language Models", eq. 5; TRL's `discopop`), the log-ratio modulated loss:
/// `(1 - m) * (-log sigma(z)) + m * exp(-z)`, `m = sigma(z / tau)`, `z = beta * delta`: the
/// logistic (DPO) loss for pairs ranked wrongly, the exponential loss for pairs ranked rightly.
/// TRL's default `tau` is 0.05.
pub fn discopop(b: &LossBatch, beta: f64, tau: f64) -> Result<Tensor> {
    ensure!(tau > 0.0, "discopop needs tau > 0, got {tau}");
    let z = (score_delta(b)? * beta)?;
    let m = sig(&(&z / tau)?)?;
    let logistic = log_sigmoid(&z)?.neg()?;
    let exponential = z.neg()?.exp()?;
    Ok((((1.0 - &m)? * logistic)? + (m * exponential)?)?)
}

/// The indices that sort `t` `[n]` ascending (for AOT's sorts), `[n]` u32.
fn ascending(t: &Tensor) -> Result<Tensor> {
    let v = t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    let mut order: Vec<u32> = (0..v.len() as u32).collect();
    order.sort_by(|&i, &j| v[i as usize].total_cmp(&v[j as usize]));
    let n = order.len();
    Ok(Tensor::from_vec(order, n, &Device::Cpu)?)
}

/// cDPO's loss of margins `d` `[n]`: `-(1-eps) log sigma(beta*d) - eps log sigma(-beta*d)`.
pub(crate) fn smoothed_logistic(d: &Tensor, beta: f64, eps: f64) -> Result<Tensor> {
    let z = (d * beta)?;
    Ok(((log_sigmoid(&z)? * -(1.0 - eps))? - (log_sigmoid(&z.neg()?)? * eps)?)?)
}

/// AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal
/// Transport", §3: the policy's margin distribution must dominate the reference's in the first
/// order, made a loss by the 1-D optimal transport, i.e. sorting; TRL 1.16's `aot`): the policy
/// margins `m_i = log pi(y_w) - log pi(y_l)` and the reference margins `m_ref,i` are sorted
/// across the batch, separately, and the `k`-th smallest of each are paired:
/// `-(1-eps) log sigma(beta*(m_(k) - m_ref,(k))) - eps log sigma(-beta*(...))`. The batch is
/// coupled: value `k` is the `k`-th pair in sorted order, not example `k`, and the loss of a
/// step depends on how it is cut into batches (TRL's per-device batch). The gradient flows
/// through the policy's sort.
pub fn aot(b: &LossBatch, beta: f64, eps: f64) -> Result<Tensor> {
    let (w, l) = sides(b, &b.policy)?;
    let m = (w - l)?.contiguous()?;
    let (w_ref, l_ref) = sides(b, &b.reference)?;
    let m_ref = (w_ref - l_ref)?.contiguous()?;
    let d = (m.index_select(&ascending(&m)?, 0)? - m_ref.index_select(&ascending(&m_ref)?, 0)?)?;
    smoothed_logistic(&d, beta, eps)
}

/// AOT, unpaired (Melnyk et al. 2024, §3, the unpaired setting; TRL 1.16's `aot_unpaired`): the
/// chosen log-ratios `rho_w` and the rejected log-ratios `rho_l` are sorted across the batch,
/// separately, and paired by rank: `-(1-eps) log sigma(beta*(rho_w(k) - rho_l(k))) - eps log
/// sigma(-beta*(...))`. Batch-coupled like [`aot`].
pub fn aot_unpaired(b: &LossBatch, beta: f64, eps: f64) -> Result<Tensor> {
    let (w, l) = rhos(b)?;
    let (w, l) = (w.contiguous()?, l.contiguous()?);
    let d = (w.index_select(&ascending(&w)?, 0)? - l.index_select(&ascending(&l)?, 0)?)?;
    smoothed_logistic(&d, beta, eps)
}

/// ODPO (Amini, Vieira & Cotterell 2024; the authors' `preference_loss`; seed 002):
/// `-log sigma(beta * delta - alpha * log(s_w - s_l))`, where `s` are the completions' scores
/// from the data (e.g. UltraFeedback's `score_chosen`, `score_rejected`): the chosen completion
/// must win by more when the scores differ more. Needs `s_w > s_l`.
pub fn odpo(b: &LossBatch, beta: f64, alpha: f64) -> Result<Tensor> {
    let s = b.scores.as_ref().context("odpo needs a score for each completion (score_chosen, score_rejected)")?;
    let offsets: Vec<f64> = s
        .chunks(2)
        .enumerate()
        .map(|(i, c)| {
            if c[0] > c[1] {
                Ok(alpha * (c[0] - c[1]).ln())
            } else {
                bail!("odpo: pair {i} has score_chosen {} <= score_rejected {}", c[0], c[1])
            }
        })
        .collect::<Result<_>>()?;
    let offsets = Tensor::new(offsets, &Device::Cpu)?.to_dtype(b.policy.dtype())?;
    let z = ((delta(b)? * beta)? - offsets)?;
    Ok(log_sigmoid(&z)?.neg()?)
}

/// TRL 1.16's `bco_pair` (BCO, Jung et al. 2024, on pairs, without the running-mean baseline
/// TRL ≤ 0.26 had): `-log sigma(beta*rho_w) - log sigma(-beta*rho_l)`.
pub fn bco_pair(b: &LossBatch, beta: f64) -> Result<Tensor> {
    let (w, l) = rhos(b)?;
    Ok((log_sigmoid(&(w * beta)?)?.neg()? - log_sigmoid(&(l * -beta)?)?)?)
}

/// NCA on pairs (Chen et al. 2024, "Noise Contrastive Alignment", eq. 10; TRL's `nca_pair`):
/// `-log sigma(beta*rho_w) - 0.5 log sigma(-beta*rho_w) - 0.5 log sigma(-beta*rho_l)`.
pub fn nca_pair(b: &LossBatch, beta: f64) -> Result<Tensor> {
    let (w, l) = rhos(b)?;
    let (rw, rl) = ((w * beta)?, (l * beta)?);
    let a = log_sigmoid(&rw)?.neg()?;
    let c = (log_sigmoid(&rw.neg()?)? * 0.5)?;
    let d = (log_sigmoid(&rl.neg()?)? * 0.5)?;
    Ok(((a - c)? - d)?)
}

/// APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization", eq. 7; TRL's
/// `apo_zero`): `1 - sigma(beta*rho_w) + sigma(beta*rho_l)`: raise the winner, lower the loser.
pub fn apo_zero(b: &LossBatch, beta: f64) -> Result<Tensor> {
    let (w, l) = rhos(b)?;
    Ok(((1.0 - sig(&(w * beta)?)?)? + sig(&(l * beta)?)?)?)
}

/// APO-down (the same paper, eq. 8; TRL's `apo_down`): `sigma(beta*rho_w) + 1 - sigma(beta*(rho_w - rho_l))`:
/// lower both, the loser more.
pub fn apo_down(b: &LossBatch, beta: f64) -> Result<Tensor> {
    let (w, l) = rhos(b)?;
    let a = sig(&(&w * beta)?)?;
    let c = sig(&((w - l)? * beta)?)?;
    Ok(((a + 1.0)? - c)?)
}

/// SPPO with hard labels (Wu et al. 2024, eq. 4.7 with win probability 1 and 0; TRL's
/// `sppo_hard`): `(rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2`.
pub fn sppo_hard(b: &LossBatch, beta: f64) -> Result<Tensor> {
    let (w, l) = rhos(b)?;
    let h = 0.5 / beta;
    Ok(((w - h)?.sqr()? + (l + h)?.sqr()?)?)
}

/// DPO-Positive (Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with
/// DPO-Positive", arXiv 2402.13228, eq. 3): `-log sigma(beta * (rho_w - rho_l - lambda *
/// max(0, -rho_w)))`. DPO can lower the chosen completion's likelihood as long as the rejected one
/// falls faster; the penalty, zero while `log pi(y_w) >= log pi_ref(y_w)`, keeps the chosen
/// completion's log-ratio from going negative. `lambda = 0` is DPO. The paper trains with
/// `lambda = 50` (its §5).
pub fn dpop(b: &LossBatch, beta: f64, lambda: f64) -> Result<Tensor> {
    ensure!(lambda >= 0.0, "dpop needs --dpop-lambda >= 0, got {lambda}");
    let (w, l) = rhos(b)?;
    let penalty = (w.neg()?.relu()? * lambda)?;
    let z = (((w - l)? - penalty)? * beta)?;
    Ok(log_sigmoid(&z)?.neg()?)
}

/// EXO on pairs (Ji et al. 2024, eq. 16 with K = 2; TRL's `exo_pair`), the reverse KL between
/// the model's pairwise preference and a label smoothed by `eps > 0`:
/// `sigma(z)(log sigma(z) - log(1-eps)) + sigma(-z)(log sigma(-z) - log eps)`, `z = beta*delta`.
pub fn exo_pair(b: &LossBatch, beta: f64, eps: f64) -> Result<Tensor> {
    ensure!(eps > 0.0 && eps < 1.0, "exo_pair needs label_smoothing in (0, 1), got {eps}");
    let z = (delta(b)? * beta)?;
    let (lw, ll) = (log_sigmoid(&z)?, log_sigmoid(&z.neg()?)?);
    let a = (lw.exp()? * (&lw - (-eps).ln_1p())?)?;
    let c = (ll.exp()? * (&ll - eps.ln())?)?;
    Ok((a + c)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::loss::{FDivergence, Loss, LossBatch, LossParams, Objective};
    use candle_core::Var;

    /// Hand-picked pairs: policy and reference log-probs, token counts, scores.
    pub const POLICY: [f64; 6] = [-4.0, -9.0, -12.5, -7.25, -3.0, -3.5];
    pub const REFERENCE: [f64; 6] = [-5.0, -7.5, -11.0, -9.0, -3.2, -3.1];
    pub const TOKENS: [usize; 6] = [4, 7, 10, 5, 2, 3];
    pub const SCORES: [f64; 6] = [8.0, 3.0, 6.5, 6.0, 9.0, 1.0];

    pub fn batch(policy: &[f64]) -> (Var, LossBatch) {
        let v = Var::new(policy, &Device::Cpu).unwrap();
        let mut b = LossBatch::new(v.as_tensor().clone(), &REFERENCE, &TOKENS, 2).unwrap();
        b.scores = Some(SCORES.to_vec());
        (v, b)
    }

    pub fn ls(x: f64) -> f64 {
        dpo_kernels::log_sigmoid_f64(x)
    }

    pub fn sg(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Checks `loss`'s values against `want(pair)` and its gradient against finite differences.
    pub fn check(loss: Loss, want: &dyn Fn(usize, &[f64]) -> f64) {
        check_with(loss, FDivergence::ReverseKl, want)
    }

    /// [`check`] with the batch's f-divergence `f`.
    pub fn check_with(loss: Loss, f: FDivergence, want: &dyn Fn(usize, &[f64]) -> f64) {
        let (v, mut b) = batch(&POLICY);
        b.f_divergence = f;
        let got = loss.per_example(&b).unwrap().to_vec1::<f64>().unwrap();
        for (i, g) in got.iter().enumerate() {
            let w = want(i, &POLICY);
            assert!((g - w).abs() < 1e-12 * w.abs().max(1.0), "{loss:?} pair {i}: {g} vs closed form {w}");
        }
        let grads = loss.per_example(&b).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(&v).unwrap().to_vec1::<f64>().unwrap();
        for j in 0..POLICY.len() {
            let f = |d: f64| {
                let mut p = POLICY;
                p[j] += d;
                (0..3).map(|i| want(i, &p)).sum::<f64>()
            };
            let fd = (f(1e-6) - f(-1e-6)) / 2e-6;
            assert!(
                (fd - g[j]).abs() < 1e-6 * fd.abs().max(1.0),
                "{loss:?} d/dpolicy[{j}]: {} vs finite difference {fd}",
                g[j]
            );
        }
    }

    fn rho(p: &[f64], i: usize) -> (f64, f64) {
        (p[2 * i] - REFERENCE[2 * i], p[2 * i + 1] - REFERENCE[2 * i + 1])
    }

    #[test]
    fn sigmoid_is_dpo_eq7_and_cdpo_with_smoothing() {
        let beta = 0.5;
        check(Loss::Sigmoid { beta, label_smoothing: 0.0 }, &|i, p| {
            let (w, l) = rho(p, i);
            (1.0 + (-beta * (w - l)).exp()).ln()
        });
        check(Loss::Sigmoid { beta, label_smoothing: 0.2 }, &|i, p| {
            let (w, l) = rho(p, i);
            -0.8 * ls(beta * (w - l)) - 0.2 * ls(-beta * (w - l))
        });
        // at policy == reference the loss is log 2
        let (_, b) = batch(&REFERENCE);
        for x in sigmoid(&b, beta, 0.0).unwrap().to_vec1::<f64>().unwrap() {
            assert!((x - 2f64.ln()).abs() < 1e-15);
        }
    }

    #[test]
    fn robust_with_eps_0_is_sigmoid_and_matches_its_formula() {
        let beta = 0.3;
        check(Loss::Robust { beta, label_smoothing: 0.1 }, &|i, p| {
            let (w, l) = rho(p, i);
            (-(0.9) * ls(beta * (w - l)) + 0.1 * ls(-beta * (w - l))) / 0.8
        });
        let (_, b) = batch(&POLICY);
        let r = robust(&b, beta, 0.0).unwrap().to_vec1::<f64>().unwrap();
        let s = sigmoid(&b, beta, 0.0).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(r, s);
    }

    #[test]
    fn hinge_ipo_odpo() {
        let beta = 0.2;
        check(Loss::Hinge { beta }, &|i, p| {
            let (w, l) = rho(p, i);
            (1.0 - beta * (w - l)).max(0.0)
        });
        check(Loss::Ipo { beta }, &|i, p| {
            let (w, l) = rho(p, i);
            let d = w / TOKENS[2 * i] as f64 - l / TOKENS[2 * i + 1] as f64;
            (d - 1.0 / (2.0 * beta)).powi(2)
        });
        check(Loss::Odpo { beta, alpha: 0.7 }, &|i, p| {
            let (w, l) = rho(p, i);
            -ls(beta * (w - l) - 0.7 * (SCORES[2 * i] - SCORES[2 * i + 1]).ln())
        });
        let (_, mut b) = batch(&POLICY);
        b.scores = Some(vec![1.0, 2.0, 3.0, 1.0, 1.0, 0.0]);
        let e = odpo(&b, beta, 1.0).unwrap_err().to_string();
        assert!(e.contains("pair 0 has score_chosen 1 <= score_rejected 2"), "{e}");
    }

    #[test]
    fn trl_pairwise_family() {
        let beta = 0.4;
        check(Loss::BcoPair { beta }, &|i, p| {
            let (w, l) = rho(p, i);
            -ls(beta * w) - ls(-beta * l)
        });
        check(Loss::NcaPair { beta }, &|i, p| {
            let (w, l) = rho(p, i);
            -ls(beta * w) - 0.5 * ls(-beta * w) - 0.5 * ls(-beta * l)
        });
        check(Loss::ApoZero { beta }, &|i, p| {
            let (w, l) = rho(p, i);
            1.0 - sg(beta * w) + sg(beta * l)
        });
        check(Loss::ApoDown { beta }, &|i, p| {
            let (w, l) = rho(p, i);
            sg(beta * w) + 1.0 - sg(beta * (w - l))
        });
        check(Loss::SppoHard { beta }, &|i, p| {
            let (w, l) = rho(p, i);
            (w - 0.5 / beta).powi(2) + (l + 0.5 / beta).powi(2)
        });
        let eps: f64 = 0.01;
        check(Loss::ExoPair { beta, label_smoothing: eps }, &|i, p| {
            let (w, l) = rho(p, i);
            let z = beta * (w - l);
            sg(z) * (ls(z) - (1.0 - eps).ln()) + sg(-z) * (ls(-z) - eps.ln())
        });
    }

    #[test]
    fn dpop_is_dpo_with_a_penalty_on_a_falling_chosen_log_ratio() {
        let beta = 0.3;
        for lambda in [0.0, 5.0, 50.0] {
            check(Loss::Dpop { beta, lambda }, &|i, p| {
                let (w, l) = rho(p, i);
                -ls(beta * (w - l - lambda * (-w).max(0.0)))
            });
        }
        // pair 1's chosen log-ratio is -1.5 (penalised), pairs 0 and 2 are above 0 (DPO's loss)
        let (_, b) = batch(&POLICY);
        let (d, p) = (sigmoid(&b, beta, 0.0).unwrap(), dpop(&b, beta, 50.0).unwrap());
        let (d, p) = (d.to_vec1::<f64>().unwrap(), p.to_vec1::<f64>().unwrap());
        assert_eq!((d[0], d[2]), (p[0], p[2]));
        assert!((p[1] - -ls(beta * (-1.5 - 1.75 - 75.0))).abs() < 1e-12, "{p:?}");
        assert!(dpop(&b, beta, -1.0).unwrap_err().to_string().contains("--dpop-lambda >= 0"));
    }

    #[test]
    fn discopop_and_sigmoid_norm() {
        let beta = 0.3;
        for tau in [0.05, 0.7] {
            check(Loss::Discopop { beta, tau }, &|i, p| {
                let (w, l) = rho(p, i);
                let z = beta * (w - l);
                let m = sg(z / tau);
                (1.0 - m) * -ls(z) + m * (-z).exp()
            });
        }
        check(Loss::SigmoidNorm { beta }, &|i, p| {
            let (w, l) = rho(p, i);
            -ls(beta * (w / TOKENS[2 * i] as f64 - l / TOKENS[2 * i + 1] as f64))
        });
        // at z = 0 DiscoPOP is (log 2 + 1) / 2
        let (_, b) = batch(&REFERENCE);
        for x in discopop(&b, beta, 0.05).unwrap().to_vec1::<f64>().unwrap() {
            assert!((x - (2f64.ln() + 1.0) / 2.0).abs() < 1e-15);
        }
    }

    /// The k-th smallest of `v`.
    fn kth(v: &[f64], k: usize) -> f64 {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[k]
    }

    #[test]
    fn aot_pairs_sorted_margins() {
        let (beta, eps) = (0.5, 0.1);
        let aot_loss = |d: f64| -(1.0 - eps) * ls(beta * d) - eps * ls(-beta * d);
        check(Loss::Aot { beta, label_smoothing: eps }, &|k, p| {
            let m: Vec<f64> = (0..3).map(|i| p[2 * i] - p[2 * i + 1]).collect();
            let m_ref: Vec<f64> = (0..3).map(|i| REFERENCE[2 * i] - REFERENCE[2 * i + 1]).collect();
            aot_loss(kth(&m, k) - kth(&m_ref, k))
        });
        check(Loss::AotUnpaired { beta, label_smoothing: eps }, &|k, p| {
            let w: Vec<f64> = (0..3).map(|i| rho(p, i).0).collect();
            let l: Vec<f64> = (0..3).map(|i| rho(p, i).1).collect();
            aot_loss(kth(&w, k) - kth(&l, k))
        });
    }

    #[test]
    fn f_divergences_replace_the_log_ratios() {
        let beta = 0.4;
        let fs: [(FDivergence, &dyn Fn(f64) -> f64); 5] = [
            (FDivergence::ForwardKl, &|r: f64| 1.0 - (-r).exp()),
            (FDivergence::JsDivergence, &|r: f64| 2f64.ln() + ls(r)),
            (FDivergence::AlphaDivergence { alpha: 0.5 }, &|r: f64| ((-0.5 * r).exp() - 1.0) / -0.5),
            (FDivergence::AlphaDivergence { alpha: 1.0 }, &|r: f64| r),
            (FDivergence::AlphaDivergence { alpha: 3.0 }, &|r: f64| ((2.0 * r).min(80.0).exp() - 1.0) / 2.0),
        ];
        for (f, s) in fs {
            let d = |i: usize, p: &[f64]| {
                let (w, l) = rho(p, i);
                s(w) - s(l)
            };
            check_with(Loss::Sigmoid { beta, label_smoothing: 0.0 }, f, &|i, p| -ls(beta * d(i, p)));
            check_with(Loss::Hinge { beta: 0.05 }, f, &|i, p| (1.0 - 0.05 * d(i, p)).max(0.0));
            check_with(Loss::Discopop { beta, tau: 0.05 }, f, &|i, p| {
                let z = beta * d(i, p);
                (1.0 - sg(z / 0.05)) * -ls(z) + sg(z / 0.05) * (-z).exp()
            });
            check_with(Loss::Ipo { beta }, f, &|i, p| {
                let (w, l) = rho(p, i);
                (s(w) / TOKENS[2 * i] as f64 - s(l) / TOKENS[2 * i + 1] as f64 - 1.0 / (2.0 * beta)).powi(2)
            });
        }
    }

    #[test]
    fn wpo_weighs_each_pair_by_its_completions_weights_and_options_are_checked() {
        let p = LossParams { use_weighting: true, ..LossParams::default() };
        let o = Objective::from_names(&["sigmoid".into()], &[], 0.0, &p).unwrap();
        let (v, mut b) = batch(&POLICY);
        let w = [0.5, 0.8, 1.1, 0.2, 0.9, 0.3];
        b.wpo_weights = Some(w.to_vec());
        let got = o.per_example(&b).unwrap().to_vec1::<f64>().unwrap();
        let plain = sigmoid(&b, 0.1, 0.0).unwrap().to_vec1::<f64>().unwrap();
        for i in 0..3 {
            assert!((got[i] - w[2 * i] * w[2 * i + 1] * plain[i]).abs() < 1e-15);
        }
        // the weights are constants: the gradient is the weighted gradient of the plain loss
        let g = o
            .per_example(&b)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .get(&v)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let g0 = sigmoid(&b, 0.1, 0.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .get(&v)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for j in 0..6 {
            assert!((g[j] - w[j / 2 * 2] * w[j / 2 * 2 + 1] * g0[j]).abs() < 1e-15);
        }
        let refuse = |names: &[&str], p: LossParams| {
            Objective::from_names(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &[], 0.0, &p)
                .unwrap_err()
                .to_string()
        };
        assert!(refuse(&["aot"], p).contains("aot"));
        assert!(refuse(&["kto"], p).contains("unpaired"));
        let f = LossParams { f_divergence_type: crate::loss::FDivergenceType::JsDivergence, ..LossParams::default() };
        assert!(
            refuse(&["sigmoid", "apo_zero"], f).contains("--f-divergence-type js_divergence applies to")
                && refuse(&["sigmoid", "apo_zero"], f).contains("not to apo_zero")
        );
        let ld = LossParams { ld_alpha: Some(0.5), ..LossParams::default() };
        assert!(refuse(&["plackett_luce"], ld).contains("needs pairs"));
        Objective::from_names(&["sigmoid".into(), "sft".into()], &[], 0.0, &ld).unwrap();
    }
}
