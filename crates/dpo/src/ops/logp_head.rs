//! The output projection fused with log-softmax and the gather of the target token.

use super::{by_dtype, cpu_slice, dispatch_float, gemm, num_threads, slice_of, tensor_of, Real, SendPtr};
use candle_core::{WithDType, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Rows of logits materialised at once: `CHUNK x vocab` floats (24 MiB for a 49152 vocabulary).
const CHUNK: usize = 128;

/// `logp[i] = log_softmax(h[i] W^T)[target[i]]`: the log-probability, in nats, that the model
/// gives to `target[i]` after the hidden state `h[i]` (the per-token term of DPO's
/// `log pi(y|x) = sum_t log pi(y_t | x, y_<t)`, Rafailov et al. 2023, eq. 7).
///
/// Inputs: `h` `[rows, hidden]` (after the final norm), `w` `[vocab, hidden]` (the output
/// projection, or the tied embedding). Output: `[rows]`.
///
/// Full-vocabulary logits are never stored: the forward pass computes `CHUNK` rows of logits at a
/// time and keeps only each row's log-sum-exp; the backward pass recomputes them and forms
/// `dlogits = g * (onehot(target) - softmax)` chunk by chunk (the "fused linear cross-entropy" of
/// Liger-Kernel / Wijmans et al. 2024), giving `dh = dlogits W` and `dW = dlogits^T h`.
pub struct LogpHead {
    pub targets: Arc<Vec<u32>>,
    stats: Arc<Mutex<LogpHeadStats>>,
}

/// By-products of the forward pass, per row.
#[derive(Debug, Clone, Default)]
pub struct LogpHeadStats {
    /// `log sum_v exp(logit_v)`.
    pub lse: Vec<f64>,
    /// `sum_v logit_v` (TRL's `logits/*` metrics are its mean over the vocabulary).
    pub logit_sum: Vec<f64>,
    /// Whether the target is the most likely token (TRL's `mean_token_accuracy`).
    pub argmax_hit: Vec<bool>,
}

const OP: &str = "logp-head";

impl LogpHead {
    pub fn new(targets: Arc<Vec<u32>>) -> Self {
        Self { targets, stats: Arc::new(Mutex::new(LogpHeadStats::default())) }
    }

    /// `logits[c, V] = h[r0..r0+c] W^T` into `buf`.
    fn logits<T: Real>(h: &[T], w: &[T], hidden: usize, vocab: usize, r0: usize, c: usize, buf: &mut Vec<T>) {
        buf.clear();
        buf.resize(c * vocab, T::zero());
        // SAFETY: buf is c x vocab; h rows r0..r0+c exist; w is vocab x hidden.
        unsafe {
            gemm(c, vocab, hidden, buf.as_mut_ptr(), vocab, 1, false, h.as_ptr().add(r0 * hidden), hidden, 1,
                w.as_ptr(), 1, hidden, T::one(), num_threads());
        }
    }

    fn forward<T: Real>(&self, h: &[T], w: &[T], hidden: usize) -> Vec<T> {
        let vocab = w.len() / hidden;
        let rows = h.len() / hidden;
        let mut out = vec![T::zero(); rows];
        let mut stats = LogpHeadStats { lse: vec![0.0; rows], logit_sum: vec![0.0; rows], argmax_hit: vec![false; rows] };
        let mut buf = Vec::new();
        for r0 in (0..rows).step_by(CHUNK) {
            let c = CHUNK.min(rows - r0);
            Self::logits(h, w, hidden, vocab, r0, c, &mut buf);
            let res: Vec<(T, f64, f64, bool)> = buf
                .par_chunks(vocab)
                .enumerate()
                .map(|(i, z)| {
                    // Sums over the vocabulary accumulate in f64: summing 49152 f32 terms in
                    // order drops the small ones and biases the log-sum-exp low (~1e-4 nats a
                    // token, 3e-2 over a 260-token completion against PyTorch).
                    let m = z.iter().fold(T::neg_infinity(), |a, &x| num_traits::Float::max(a, x));
                    let sum_exp: f64 = z.iter().map(|&x| (x - m).exp().as_f64()).sum();
                    let lse = T::from(m.as_f64() + sum_exp.ln()).unwrap();
                    let sum: f64 = z.iter().map(|&x| x.as_f64()).sum();
                    let t = z[self.targets[r0 + i] as usize];
                    (t - lse, lse.as_f64(), sum, t == m)
                })
                .collect();
            for (i, (lp, lse, sum, hit)) in res.into_iter().enumerate() {
                out[r0 + i] = lp;
                stats.lse[r0 + i] = lse;
                stats.logit_sum[r0 + i] = sum;
                stats.argmax_hit[r0 + i] = hit;
            }
        }
        *self.stats.lock().unwrap() = stats;
        out
    }

    fn backward<T: Real>(&self, h: &[T], w: &[T], g: &[T], hidden: usize) -> (Vec<T>, Vec<T>) {
        let vocab = w.len() / hidden;
        let rows = h.len() / hidden;
        let lse = self.stats.lock().unwrap().lse.clone();
        assert_eq!(lse.len(), rows, "{OP}: backward before forward");
        let mut dh = vec![T::zero(); h.len()];
        let mut dw = vec![T::zero(); w.len()];
        let mut buf = Vec::new();
        for r0 in (0..rows).step_by(CHUNK) {
            let c = CHUNK.min(rows - r0);
            Self::logits(h, w, hidden, vocab, r0, c, &mut buf);
            buf.par_chunks_mut(vocab).enumerate().for_each(|(i, z)| {
                let (gi, l) = (g[r0 + i], T::from(lse[r0 + i]).unwrap());
                for x in z.iter_mut() {
                    *x = -gi * (*x - l).exp();
                }
                z[self.targets[r0 + i] as usize] += gi;
            });
            let (pdh, pdw) = (SendPtr(dh.as_mut_ptr()), SendPtr(dw.as_mut_ptr()));
            // SAFETY: dh rows r0..r0+c and all of dw are written by these gemm calls only.
            unsafe {
                gemm(c, hidden, vocab, pdh.0.add(r0 * hidden), hidden, 1, false, buf.as_ptr(), vocab, 1, w.as_ptr(),
                    hidden, 1, T::one(), num_threads());
                gemm(vocab, hidden, c, pdw.0, hidden, 1, true, buf.as_ptr(), 1, vocab, h.as_ptr().add(r0 * hidden),
                    hidden, 1, T::one(), num_threads());
            }
        }
        (dh, dw)
    }
}

impl CustomOp2 for LogpHead {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, hidden) = l1.shape().dims2()?;
        let (vocab, hidden_w) = l2.shape().dims2()?;
        if hidden != hidden_w || rows != self.targets.len() {
            candle_core::bail!("{OP}: h {:?}, w {:?}, {} targets do not fit", l1.dims(), l2.dims(), self.targets.len());
        }
        if let Some(t) = self.targets.iter().find(|&&t| t as usize >= vocab) {
            candle_core::bail!("{OP}: target token {t} is outside the vocabulary of {vocab}");
        }
        dispatch_float!(s1, OP, |T| {
            let o = self.forward::<T>(slice_of(s1, l1, OP)?, slice_of(s2, l2, OP)?, hidden);
            Ok((<T as WithDType>::to_cpu_storage_owned(o), Shape::from(rows)))
        })
    }

    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dh, dw) = by_dtype!(h.dtype(), OP, bwd_t(self, h, w, g))?;
        Ok((Some(dh), Some(dw)))
    }
}

fn bwd_t<T: Real>(op: &LogpHead, h: &Tensor, w: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    cpu_slice!(T, h => hs);
    cpu_slice!(T, w => ws);
    cpu_slice!(T, g => gs);
    let hidden = h.dim(1)?;
    let (dh, dw) = op.backward(hs, ws, gs, hidden);
    Ok((tensor_of(dh, h.shape())?, tensor_of(dw, w.shape())?))
}

/// Per-row target log-probs `[rows]` and a handle on the forward statistics (see [`LogpHead`]).
pub fn logp_head(h: &Tensor, w: &Tensor, targets: Arc<Vec<u32>>) -> Result<(Tensor, Arc<Mutex<LogpHeadStats>>)> {
    let op = LogpHead::new(targets);
    let stats = op.stats.clone();
    Ok((h.contiguous()?.apply_op2(&w.contiguous()?, op)?, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{check_grad, rand_t};

    #[test]
    fn equals_log_softmax_gather() {
        let h = rand_t(&[300, 5], 21); // more rows than one chunk
        let w = rand_t(&[11, 5], 22);
        let targets: Vec<u32> = (0..300).map(|i| (i * 7 % 11) as u32).collect();
        let (lp, stats) = logp_head(&h, &w, Arc::new(targets.clone())).unwrap();
        let logits = h.matmul(&w.t().unwrap()).unwrap();
        let ls = candle_nn::ops::log_softmax(&logits, 1).unwrap().to_vec2::<f64>().unwrap();
        let lp = lp.to_vec1::<f64>().unwrap();
        let sums = logits.sum(1).unwrap().to_vec1::<f64>().unwrap();
        let stats = stats.lock().unwrap();
        for i in 0..300 {
            assert!((lp[i] - ls[i][targets[i] as usize]).abs() < 1e-12);
            assert!((stats.logit_sum[i] - sums[i]).abs() < 1e-10);
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let targets = Arc::new((0..140).map(|i| (i * 5 % 9) as u32).collect::<Vec<_>>());
        check_grad(&[rand_t(&[140, 4], 23), rand_t(&[9, 4], 24)], &|t| Ok(logp_head(&t[0], &t[1], targets.clone())?.0), 1e-6);
    }
}
