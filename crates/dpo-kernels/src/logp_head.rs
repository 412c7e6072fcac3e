//! The output projection fused with log-softmax and the gather of the target token.

use super::qmatmul::{bf16_weight_grad, Bf16Copy, FrozenMatrix};
use super::{by_dtype, cpu_slice, dispatch_float, gemm, num_threads, slice_of, tensor_of, Output, Real, SendPtr};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
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
///
/// With `softcap` (Gemma 2/3's `final_logit_softcapping`) the logits are `cap * tanh(z / cap)` of
/// the projection `z`, and `dz = dlogits * (1 - tanh^2)`.
pub struct LogpHead {
    pub targets: Arc<Vec<u32>>,
    pub softcap: Option<f64>,
    stats: Arc<Mutex<LogpHeadStats>>,
}

/// `cap * tanh(z / cap)` over `buf` in place (parallel over rows of `vocab`).
fn soft_cap<T: Real>(buf: &mut [T], vocab: usize, cap: Option<f64>) {
    if let Some(cap) = cap {
        let cap = T::from(cap).unwrap();
        buf.par_chunks_mut(vocab).for_each(|z| {
            for x in z {
                *x = cap * (*x / cap).tanh();
            }
        });
    }
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
    /// `log sum_v p_v^2`, the log-probability that a token drawn from the row's distribution is
    /// drawn again (WPO's alignment term, TRL's `log_sum_sq_probs`).
    pub log_sum_sq: Vec<f64>,
}

const OP: &str = "logp-head";

impl LogpHead {
    pub fn new(targets: Arc<Vec<u32>>, softcap: Option<f64>) -> Self {
        Self { targets, softcap, stats: Arc::new(Mutex::new(LogpHeadStats::default())) }
    }

    fn forward<T: Real>(&self, h: &[T], w: &dyn HeadWeight<T>, hidden: usize) -> Result<Vec<T>> {
        let vocab = w.vocab();
        let rows = h.len() / hidden;
        let mut out = vec![T::zero(); rows];
        let mut stats = LogpHeadStats {
            lse: vec![0.0; rows],
            logit_sum: vec![0.0; rows],
            argmax_hit: vec![false; rows],
            log_sum_sq: vec![0.0; rows],
        };
        let mut buf = Vec::new();
        for r0 in (0..rows).step_by(CHUNK) {
            let c = CHUNK.min(rows - r0);
            w.logits(&h[r0 * hidden..(r0 + c) * hidden], c, &mut buf)?;
            soft_cap(&mut buf, vocab, self.softcap);
            let res: Vec<(T, f64, f64, bool, f64)> = buf
                .par_chunks(vocab)
                .enumerate()
                .map(|(i, z)| {
                    // Sums over the vocabulary accumulate in f64: summing 49152 f32 terms in
                    // order drops the small ones and biases the log-sum-exp low (~1e-4 nats a
                    // token, 3e-2 over a 260-token completion against PyTorch).
                    let m = z.iter().fold(T::neg_infinity(), |a, &x| num_traits::Float::max(a, x));
                    let (sum_exp, sum_sq) = z.iter().fold((0f64, 0f64), |(a, b), &x| {
                        let e = (x - m).exp().as_f64();
                        (a + e, b + e * e)
                    });
                    let lse = T::from(m.as_f64() + sum_exp.ln()).unwrap();
                    let sum: f64 = z.iter().map(|&x| x.as_f64()).sum();
                    let t = z[self.targets[r0 + i] as usize];
                    (t - lse, lse.as_f64(), sum, t == m, sum_sq.ln() - 2.0 * sum_exp.ln())
                })
                .collect();
            for (i, (lp, lse, sum, hit, lsq)) in res.into_iter().enumerate() {
                out[r0 + i] = lp;
                stats.lse[r0 + i] = lse;
                stats.logit_sum[r0 + i] = sum;
                stats.argmax_hit[r0 + i] = hit;
                stats.log_sum_sq[r0 + i] = lsq;
            }
        }
        *self.stats.lock().unwrap() = stats;
        Ok(out)
    }

    /// `dh` `[rows, hidden]`, and `dW` `[vocab, hidden]` when `want_dw`, for the output gradient `g` `[rows]`.
    fn backward<T: Real>(
        &self,
        h: &[T],
        w: &dyn HeadWeight<T>,
        g: &[T],
        hidden: usize,
        want_dw: bool,
    ) -> Result<(Vec<T>, Option<Vec<T>>)> {
        let vocab = w.vocab();
        let rows = h.len() / hidden;
        let lse = self.stats.lock().unwrap().lse.clone();
        if lse.len() != rows {
            candle_core::bail!("{OP}: backward before forward");
        }
        let mut dh = vec![T::zero(); h.len()];
        let mut dw = want_dw.then(|| vec![T::zero(); vocab * hidden]);
        let mut buf = Vec::new();
        for r0 in (0..rows).step_by(CHUNK) {
            let c = CHUNK.min(rows - r0);
            let hc = &h[r0 * hidden..(r0 + c) * hidden];
            w.logits(hc, c, &mut buf)?;
            soft_cap(&mut buf, vocab, self.softcap);
            let cap = self.softcap.map(|c| T::from(c).unwrap());
            buf.par_chunks_mut(vocab).enumerate().for_each(|(i, z)| {
                let (gi, l) = (g[r0 + i], T::from(lse[r0 + i]).unwrap());
                let t = self.targets[r0 + i] as usize;
                match cap {
                    None => {
                        for x in z.iter_mut() {
                            *x = -gi * (*x - l).exp();
                        }
                        z[t] += gi;
                    }
                    // through the cap: d capped / dz = 1 - (capped / cap)^2
                    Some(cap) => {
                        for (j, x) in z.iter_mut().enumerate() {
                            let d = -gi * (*x - l).exp() + if j == t { gi } else { T::zero() };
                            *x = d * (T::one() - (*x / cap) * (*x / cap));
                        }
                    }
                }
            });
            w.input_grad(&buf, c, &mut dh[r0 * hidden..(r0 + c) * hidden])?;
            if let Some(dw) = &mut dw {
                w.add_weight_grad(&buf, hc, c, dw)?;
            }
        }
        Ok((dh, dw))
    }
}

/// The output projection as the head's kernels read it: `logits = h W^T`, `dh = dlogits W` and
/// `dW += dlogits^T h`.
trait HeadWeight<T: Real> {
    fn vocab(&self) -> usize;
    /// `buf[c, vocab] = h[c, hidden] W^T`.
    fn logits(&self, h: &[T], c: usize, buf: &mut Vec<T>) -> Result<()>;
    /// `dh[c, hidden] = dlogits[c, vocab] W`.
    fn input_grad(&self, dlogits: &[T], c: usize, dh: &mut [T]) -> Result<()>;
    /// `dw[vocab, hidden] += dlogits[c, vocab]^T h[c, hidden]`, in `T` (the f32 or f64 GEMM).
    fn add_weight_grad(&self, dlogits: &[T], h: &[T], c: usize, dw: &mut [T]) -> Result<()> {
        let (vocab, hidden) = (self.vocab(), h.len() / c.max(1));
        // SAFETY: dw is vocab x hidden, dlogits c x vocab (read transposed), h c x hidden.
        unsafe {
            gemm(
                vocab,
                hidden,
                c,
                dw.as_mut_ptr(),
                hidden,
                1,
                true,
                dlogits.as_ptr(),
                1,
                vocab,
                h.as_ptr(),
                hidden,
                1,
                T::one(),
                num_threads(),
            );
        }
        Ok(())
    }
}

/// A dense row-major `[vocab, hidden]` weight (trainable: its gradient is formed too).
struct Dense<'a, T> {
    w: &'a [T],
    hidden: usize,
}

impl<T: Real> HeadWeight<T> for Dense<'_, T> {
    fn vocab(&self) -> usize {
        self.w.len() / self.hidden
    }

    fn logits(&self, h: &[T], c: usize, buf: &mut Vec<T>) -> Result<()> {
        let (vocab, hidden) = (self.vocab(), self.hidden);
        buf.clear();
        buf.resize(c * vocab, T::zero());
        // SAFETY: buf is c x vocab; h is c x hidden; w is vocab x hidden.
        unsafe {
            gemm(
                c,
                vocab,
                hidden,
                buf.as_mut_ptr(),
                vocab,
                1,
                false,
                h.as_ptr(),
                hidden,
                1,
                self.w.as_ptr(),
                1,
                hidden,
                T::one(),
                num_threads(),
            );
        }
        Ok(())
    }

    fn input_grad(&self, dlogits: &[T], c: usize, dh: &mut [T]) -> Result<()> {
        let (vocab, hidden) = (self.vocab(), self.hidden);
        let pdh = SendPtr(dh.as_mut_ptr());
        // SAFETY: dh is c x hidden, dlogits c x vocab, w vocab x hidden.
        unsafe {
            gemm(
                c,
                hidden,
                vocab,
                pdh.0,
                hidden,
                1,
                false,
                dlogits.as_ptr(),
                vocab,
                1,
                self.w.as_ptr(),
                hidden,
                1,
                T::one(),
                num_threads(),
            );
        }
        Ok(())
    }
}

impl<T: Real> HeadWeight<T> for FrozenMatrix {
    fn vocab(&self) -> usize {
        self.rows()
    }

    fn logits(&self, h: &[T], c: usize, buf: &mut Vec<T>) -> Result<()> {
        buf.clear();
        buf.resize(c * self.rows(), T::zero());
        self.forward(h, c, buf, Output::Overwrite)
    }

    fn input_grad(&self, dlogits: &[T], c: usize, dh: &mut [T]) -> Result<()> {
        self.backward_input(dlogits, c, dh, Output::Overwrite)
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
            let w = Dense::<T> { w: slice_of(s2, l2, OP)?, hidden };
            let o = self.forward::<T>(slice_of(s1, l1, OP)?, &w, hidden)?;
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
    let (dh, dw) = op.backward(hs, &Dense { w: ws, hidden }, gs, hidden, true)?;
    let dw = dw.expect("asked for dW");
    Ok((tensor_of(dh, h.shape())?, tensor_of(dw, w.shape())?))
}

/// Per-row target log-probs `[rows]` and a handle on the forward statistics (see [`LogpHead`]).
pub fn logp_head(
    h: &Tensor,
    w: &Tensor,
    targets: Arc<Vec<u32>>,
    softcap: Option<f64>,
) -> Result<(Tensor, Arc<Mutex<LogpHeadStats>>)> {
    let op = LogpHead::new(targets, softcap);
    let stats = op.stats.clone();
    Ok((h.contiguous()?.apply_op2(&w.contiguous()?, op)?, stats))
}

/// [`LogpHead`] over a frozen output projection (the base of a LoRA run): the same log-probs,
/// a backward pass to `h` only (no `[vocab, hidden]` gradient is formed).
struct FrozenLogpHead {
    head: LogpHead,
    w: Arc<FrozenMatrix>,
}

impl CustomOp1 for FrozenLogpHead {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, hidden) = l.shape().dims2()?;
        if hidden != self.w.cols() || rows != self.head.targets.len() {
            candle_core::bail!(
                "{OP}: h {:?}, w {:?}, {} targets do not fit",
                l.dims(),
                self.w,
                self.head.targets.len()
            );
        }
        if let Some(t) = self.head.targets.iter().find(|&&t| t as usize >= self.w.rows()) {
            candle_core::bail!("{OP}: target token {t} is outside the vocabulary of {}", self.w.rows());
        }
        dispatch_float!(s, OP, |T| {
            let o = self.head.forward::<T>(slice_of(s, l, OP)?, self.w.as_ref(), hidden)?;
            Ok((<T as WithDType>::to_cpu_storage_owned(o), Shape::from(rows)))
        })
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(by_dtype!(h.dtype(), OP, frozen_bwd_t(self, h, g))?))
    }
}

fn frozen_bwd_t<T: Real>(op: &FrozenLogpHead, h: &Tensor, g: &Tensor) -> Result<Tensor> {
    cpu_slice!(T, h => hs);
    cpu_slice!(T, g => gs);
    let (dh, _) = op.head.backward(hs, op.w.as_ref(), gs, h.dim(1)?, false)?;
    tensor_of(dh, h.shape())
}

/// The output projection in mixed precision (`--bf16`): logits and `dh` from the bf16 copy,
/// `dW` by the bf16 weight-gradient kernel (bf16 operands, f32 accumulation).
struct MixedHead<'a>(&'a FrozenMatrix);

impl HeadWeight<f32> for MixedHead<'_> {
    fn vocab(&self) -> usize {
        self.0.rows()
    }

    fn logits(&self, h: &[f32], c: usize, buf: &mut Vec<f32>) -> Result<()> {
        HeadWeight::<f32>::logits(self.0, h, c, buf)
    }

    fn input_grad(&self, dlogits: &[f32], c: usize, dh: &mut [f32]) -> Result<()> {
        HeadWeight::<f32>::input_grad(self.0, dlogits, c, dh)
    }

    fn add_weight_grad(&self, dlogits: &[f32], h: &[f32], c: usize, dw: &mut [f32]) -> Result<()> {
        bf16_weight_grad(dlogits, h, c, dw, Output::Add)
    }
}

/// [`LogpHead`] over a trainable output projection in mixed precision: the master `W` is the
/// op's second argument (so that its gradient is formed), the products read its bf16 copy.
struct MixedLogpHead {
    head: LogpHead,
    copy: Arc<Bf16Copy>,
}

impl CustomOp2 for MixedLogpHead {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, _: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = self.copy.read();
        let (rows, hidden) = l1.shape().dims2()?;
        if l2.dims() != [w.rows(), w.cols()] || hidden != w.cols() || rows != self.head.targets.len() {
            candle_core::bail!(
                "{OP}: h {:?}, w {:?}, {} targets do not fit",
                l1.dims(),
                l2.dims(),
                self.head.targets.len()
            );
        }
        if let Some(t) = self.head.targets.iter().find(|&&t| t as usize >= w.rows()) {
            candle_core::bail!("{OP}: target token {t} is outside the vocabulary of {}", w.rows());
        }
        let o = self.head.forward::<f32>(slice_of(s1, l1, OP)?, &MixedHead(&w), hidden)?;
        Ok((f32::to_cpu_storage_owned(o), Shape::from(rows)))
    }

    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        cpu_slice!(f32, h => hs);
        cpu_slice!(f32, g => gs);
        let copy = self.copy.read();
        let (dh, dw) = self.head.backward(hs, &MixedHead(&copy), gs, h.dim(1)?, true)?;
        let dw = dw.expect("asked for dW");
        Ok((Some(tensor_of(dh, h.shape())?), Some(tensor_of(dw, w.shape())?)))
    }
}

/// [`logp_head`] in mixed precision: `w` the trainable f32 output projection `[vocab, hidden]`,
/// `copy` its bf16 copy ([`Bf16Copy`]); `h` f32. The log-softmax, its sums and the gradient of
/// the logits stay in f32 (f64 sums), as under bf16 autocast, where log-softmax runs in f32.
pub fn logp_head_mixed(
    h: &Tensor,
    w: &Tensor,
    copy: &Arc<Bf16Copy>,
    targets: Arc<Vec<u32>>,
    softcap: Option<f64>,
) -> Result<(Tensor, Arc<Mutex<LogpHeadStats>>)> {
    let head = LogpHead::new(targets, softcap);
    let stats = head.stats.clone();
    Ok((h.contiguous()?.apply_op2(&w.contiguous()?, MixedLogpHead { head, copy: copy.clone() })?, stats))
}

/// [`logp_head`] with a frozen output projection `w` `[vocab, hidden]`.
pub fn logp_head_frozen(
    h: &Tensor,
    w: &Arc<FrozenMatrix>,
    targets: Arc<Vec<u32>>,
    softcap: Option<f64>,
) -> Result<(Tensor, Arc<Mutex<LogpHeadStats>>)> {
    let head = LogpHead::new(targets, softcap);
    let stats = head.stats.clone();
    Ok((h.contiguous()?.apply_op1(FrozenLogpHead { head, w: w.clone() })?, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{check_grad, rand_t};

    #[test]
    fn equals_log_softmax_gather() {
        let h = rand_t(&[300, 5], 21); // more rows than one chunk
        let w = rand_t(&[11, 5], 22);
        let targets: Vec<u32> = (0..300).map(|i| (i * 7 % 11) as u32).collect();
        let (lp, stats) = logp_head(&h, &w, Arc::new(targets.clone()), None).unwrap();
        let logits = h.matmul(&w.t().unwrap()).unwrap();
        let ls = candle_nn::ops::log_softmax(&logits, 1).unwrap().to_vec2::<f64>().unwrap();
        let lp = lp.to_vec1::<f64>().unwrap();
        let sums = logits.sum(1).unwrap().to_vec1::<f64>().unwrap();
        let stats = stats.lock().unwrap();
        for i in 0..300 {
            assert!((lp[i] - ls[i][targets[i] as usize]).abs() < 1e-12);
            assert!((stats.logit_sum[i] - sums[i]).abs() < 1e-10);
            let sq: f64 = ls[i].iter().map(|l| (2.0 * l).exp()).sum();
            assert!((stats.log_sum_sq[i] - sq.ln()).abs() < 1e-12, "log sum p^2 of row {i}");
        }
    }

    #[test]
    fn a_frozen_head_gives_the_same_log_probs_and_input_gradient() {
        let targets = Arc::new((0..140).map(|i| (i * 5 % 9) as u32).collect::<Vec<_>>());
        let (h, w) = (rand_t(&[140, 4], 23), rand_t(&[9, 4], 24));
        let frozen =
            Arc::new(FrozenMatrix::from_f64(w.flatten_all().unwrap().to_vec1::<f64>().unwrap(), 9, 4).unwrap());
        let hv = candle_core::Var::from_tensor(&h).unwrap();
        let (a, _) = logp_head(hv.as_tensor(), &w, targets.clone(), None).unwrap();
        let (b, _) = logp_head_frozen(hv.as_tensor(), &frozen, targets.clone(), None).unwrap();
        assert_eq!(a.to_vec1::<f64>().unwrap(), b.to_vec1::<f64>().unwrap());
        let probe = rand_t(&[140], 5);
        let ga = (a * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (
            ga.get(&hv).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            gb.get(&hv).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        );
        for (x, y) in ga.iter().zip(&gb) {
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
        check_grad(std::slice::from_ref(&h), &|t| Ok(logp_head_frozen(&t[0], &frozen, targets.clone(), None)?.0), 1e-6);
        check_grad(&[h], &|t| Ok(logp_head_frozen(&t[0], &frozen, targets.clone(), Some(0.8))?.0), 1e-6);
    }

    /// The mixed-precision head gives the log-probs of the bf16-rounded operands (to f32
    /// logits), and gradients within bf16's rounding of the f64 ones.
    #[test]
    fn a_mixed_precision_head_computes_with_bf16_operands() {
        let targets = Arc::new((0..150).map(|i| (i * 5 % 40) as u32).collect::<Vec<_>>());
        let (h, w) = (rand_t(&[150, 33], 27), rand_t(&[40, 33], 28));
        // bf16 of the f32 values, rounded to nearest (candle's f64 -> bf16 conversion is not the
        // kernels' rounding)
        let round = |t: &Tensor| {
            let v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let r: Vec<f64> = v.iter().map(|&x| half::bf16::from_f32(x as f32).to_f64()).collect();
            Tensor::from_vec(r, t.dims(), &candle_core::Device::Cpu).unwrap()
        };
        let (want, _) = logp_head(&round(&h), &round(&w), targets.clone(), None).unwrap();
        let f32t = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
        let (hv, wv) =
            (candle_core::Var::from_tensor(&f32t(&h)).unwrap(), candle_core::Var::from_tensor(&f32t(&w)).unwrap());
        let copy =
            Arc::new(Bf16Copy::new(&wv.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), 40, 33).unwrap());
        let (got, _) = logp_head_mixed(hv.as_tensor(), wv.as_tensor(), &copy, targets.clone(), None).unwrap();
        let (want_v, got_v) = (want.to_vec1::<f64>().unwrap(), got.to_vec1::<f32>().unwrap());
        for (a, b) in got_v.iter().zip(&want_v) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
        let probe = rand_t(&[150], 6);
        let (hx, wx) = (candle_core::Var::from_tensor(&h).unwrap(), candle_core::Var::from_tensor(&w).unwrap());
        let exact = logp_head(hx.as_tensor(), wx.as_tensor(), targets.clone(), None).unwrap().0;
        let g_exact = (exact * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g_mixed = (got * f32t(&probe)).unwrap().sum_all().unwrap().backward().unwrap();
        for (mixed, exact) in [
            (g_mixed.get(&hv).unwrap(), g_exact.get(&hx).unwrap()),
            (g_mixed.get(&wv).unwrap(), g_exact.get(&wx).unwrap()),
        ] {
            let (a, b) = (
                mixed.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                exact.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            );
            let err: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 - y).powi(2)).sum::<f64>().sqrt();
            let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
            assert!(err < 1e-2 * norm, "gradient off by {err} of {norm}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let targets = Arc::new((0..140).map(|i| (i * 5 % 9) as u32).collect::<Vec<_>>());
        check_grad(
            &[rand_t(&[140, 4], 23), rand_t(&[9, 4], 24)],
            &|t| Ok(logp_head(&t[0], &t[1], targets.clone(), None)?.0),
            1e-6,
        );
    }

    #[test]
    fn soft_capped_head_equals_capped_log_softmax_and_has_its_gradient() {
        let targets: Vec<u32> = (0..140).map(|i| (i * 5 % 9) as u32).collect();
        let (h, w) = ((rand_t(&[140, 4], 25) * 3.0).unwrap(), rand_t(&[9, 4], 26));
        let (lp, _) = logp_head(&h, &w, Arc::new(targets.clone()), Some(0.8)).unwrap();
        let logits = h.matmul(&w.t().unwrap()).unwrap();
        let capped = ((logits / 0.8).unwrap().tanh().unwrap() * 0.8).unwrap();
        let ls = candle_nn::ops::log_softmax(&capped, 1).unwrap().to_vec2::<f64>().unwrap();
        for (i, lp) in lp.to_vec1::<f64>().unwrap().iter().enumerate() {
            assert!((lp - ls[i][targets[i] as usize]).abs() < 1e-12);
        }
        let t = Arc::new(targets);
        check_grad(&[h, w], &|x| Ok(logp_head(&x[0], &x[1], t.clone(), Some(0.8))?.0), 1e-5);
    }
}
