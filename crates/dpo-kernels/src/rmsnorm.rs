//! RMSNorm with a backward pass.

use super::{by_dtype, cpu_slice, dispatch_float, slice_of, tensor_of, Real};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// `y = x / sqrt(mean(x^2) + eps) * w` over the last dimension (Zhang & Sennrich 2019, eq. 4;
/// Hugging Face `LlamaRMSNorm`, which normalises in the input dtype here since we train in f32).
///
/// Inputs: `x` `[rows, hidden]`, `w` `[hidden]`. Output `[rows, hidden]`.
/// Backward, with `r = 1/sqrt(mean(x^2)+eps)`, `xh = x*r`, `gw = g*w`:
/// `dx = r * (gw - xh * mean(gw * xh))`, `dw = sum_rows(g * xh)`.
pub struct RmsNorm {
    pub eps: f64,
}

const OP: &str = "rms-norm";

/// `1/sqrt(mean(x^2) + eps)`, the sum of squares accumulated in f64.
fn inv_rms<T: Real>(x: &[T], eps: T) -> T {
    let ms = x.iter().map(|&v| v.as_f64() * v.as_f64()).sum::<f64>() / x.len() as f64;
    T::one() / (T::from(ms).unwrap() + eps).sqrt()
}

fn forward<T: Real>(x: &[T], w: &[T], eps: T) -> Vec<T> {
    let h = w.len();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(y, x)| {
        let r = inv_rms(x, eps);
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = x * r * w;
        }
    });
    y
}

fn backward<T: Real>(x: &[T], w: &[T], g: &[T], eps: T) -> (Vec<T>, Vec<T>) {
    let h = w.len();
    let rows = x.len() / h;
    let mut dx = vec![T::zero(); x.len()];
    // Rows are processed in fixed blocks so that the dw partial sums are added in a fixed order.
    const BLOCK: usize = 64;
    let partial: Vec<Vec<T>> = dx
        .par_chunks_mut(h * BLOCK)
        .enumerate()
        .map(|(b, dxb)| {
            let mut dw = vec![T::zero(); h];
            let r0 = b * BLOCK;
            for (i, dx) in dxb.chunks_mut(h).enumerate() {
                let row = r0 + i;
                let x = &x[row * h..(row + 1) * h];
                let g = &g[row * h..(row + 1) * h];
                let r = inv_rms(x, eps);
                let mut dot = T::zero();
                for j in 0..h {
                    dot += g[j] * w[j] * x[j] * r;
                }
                let mean = dot / T::from(h).unwrap();
                for j in 0..h {
                    let xh = x[j] * r;
                    dx[j] = r * (g[j] * w[j] - xh * mean);
                    dw[j] += g[j] * xh;
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![T::zero(); h];
    for p in partial {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
    debug_assert_eq!(rows * h, x.len());
    (dx, dw)
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = *l1.dims().last().unwrap_or(&0);
        if l2.dims() != [h] {
            candle_core::bail!("{OP}: weight {:?} does not match hidden size {h}", l2.dims());
        }
        dispatch_float!(s1, OP, |T| {
            let y = forward::<T>(slice_of(s1, l1, OP)?, slice_of(s2, l2, OP)?, self.eps as T);
            Ok((<T as WithDType>::to_cpu_storage_owned(y), l1.shape().clone()))
        })
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = by_dtype!(x.dtype(), OP, bwd_t(x, w, g, self.eps))?;
        Ok((Some(dx), Some(dw)))
    }
}

fn bwd_t<T: Real>(x: &Tensor, w: &Tensor, g: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    cpu_slice!(T, x => xs);
    cpu_slice!(T, w => ws);
    cpu_slice!(T, g => gs);
    let (dx, dw) = backward(xs, ws, gs, T::from(eps).unwrap());
    Ok((tensor_of(dx, x.shape())?, tensor_of(dw, w.shape())?))
}

/// `rms_norm(x, w, eps)` as a differentiable op. `x`: `[rows, hidden]`, `w`: `[hidden]`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{check_grad, rand_t};

    #[test]
    fn forward_matches_composed_ops() {
        let x = rand_t(&[5, 8], 1);
        let w = rand_t(&[8], 2);
        let y = x.apply_op2(&w, RmsNorm { eps: 1e-5 }).unwrap();
        let ms = x.sqr().unwrap().mean_keepdim(1).unwrap();
        let want = x.broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&w).unwrap();
        let d = (y - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-12, "{d}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        check_grad(&[rand_t(&[70, 6], 3), rand_t(&[6], 4)], &|t| t[0].apply_op2(&t[1], RmsNorm { eps: 1e-5 }), 1e-6);
    }
}
