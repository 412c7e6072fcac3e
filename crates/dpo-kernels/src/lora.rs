//! A frozen linear layer with a LoRA adapter, fused: `y = x W^T + s (dropout(x) A^T) B^T`
//! (Hu et al. 2021, eq. 3) as one candle op whose backward pass gives `dx`, `dA`, `dB` and never
//! `dW`.
//!
//! Composed from candle ops, the adapter keeps every intermediate of the graph alive until the
//! backward pass (the dropout mask, the masked input, `u = x A^T`, the adapter's output, the sum):
//! about twice the activation memory of the frozen layer alone. Fused, the op keeps nothing but
//! its inputs: the dropout mask is a counter-based hash of its seed, drawn again in the backward
//! pass, and `u` (`[rows, r]`) is recomputed there.

use super::qmatmul::FrozenMatrix;
use super::{by_dtype, cpu_slice, dispatch_float, gemm, num_threads, slice_of, splitmix64, tensor_of, Output, Real};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::Arc;

const OP: &str = "lora-linear";

/// Inverted dropout (Srivastava et al. 2014) applied in place to `x`, element `i` of the whole
/// `[rows, cols]` matrix kept (scaled by `1 / (1 - p)`) or zeroed by a counter-based hash of
/// `seed` and `i` (SplitMix64, four 16-bit uniforms per hash): the same mask every time it is
/// drawn, in any chunking.
pub fn apply_dropout<T: Real>(x: &mut [T], p: f64, seed: u64) {
    let threshold = (p * 65536.0).round() as u64;
    let keep = T::from(1.0 / (1.0 - p)).unwrap();
    const CHUNK: usize = 1 << 14;
    x.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        for (j, quad) in chunk.chunks_mut(4).enumerate() {
            let h = splitmix64(seed ^ ((c * CHUNK / 4 + j) as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            for (k, v) in quad.iter_mut().enumerate() {
                *v = if (h >> (16 * k)) & 0xFFFF >= threshold { *v * keep } else { T::zero() };
            }
        }
    });
}

/// `y = x W^T + s (dropout(x) A^T) B^T` for a frozen `W` `[out, in]`; the inputs are `x`
/// `[rows, in]`, `A` `[r, in]`, `B` `[out, r]`. `dropout_seed`: `Some` in training (dropout with
/// probability `p`), `None` for none.
pub struct LoraLinear {
    pub w: Arc<FrozenMatrix>,
    pub scale: f64,
    pub p: f64,
    pub dropout_seed: Option<u64>,
}

/// The sizes of a LoRA product: `x` is `[rows, inp]`, `A` `[r, inp]`, `B` `[out, r]`.
#[derive(Clone, Copy)]
struct Dims {
    rows: usize,
    inp: usize,
    r: usize,
    out: usize,
}

impl LoraLinear {
    fn dims(&self, lx: &Layout, la: &Layout, lb: &Layout) -> Result<Dims> {
        let (rows, inp) = lx.shape().dims2()?;
        let (r, inp_a) = la.shape().dims2()?;
        let (out, r_b) = lb.shape().dims2()?;
        if inp != self.w.cols() || inp_a != inp || out != self.w.rows() || r_b != r {
            bail!("{OP}: x {:?}, A {:?}, B {:?} do not fit W {:?}", lx.dims(), la.dims(), lb.dims(), self.w);
        }
        Ok(Dims { rows, inp, r, out })
    }

    /// `dropout(x)` (a copy of `x` without dropout).
    fn masked<T: Real>(&self, x: &[T]) -> Vec<T> {
        let mut xd = x.to_vec();
        if let Some(seed) = self.dropout_seed.filter(|_| self.p > 0.0) {
            apply_dropout(&mut xd, self.p, seed);
        }
        xd
    }

    fn forward<T: Real>(&self, x: &[T], a: &[T], b: &[T], d: Dims) -> Result<Vec<T>> {
        let Dims { rows, inp, r, out } = d;
        let mut y = vec![T::zero(); rows * out];
        self.w.forward(x, rows, &mut y, Output::Overwrite)?;
        let xd = self.masked(x);
        let mut u = vec![T::zero(); rows * r];
        let (one, s, th) = (T::one(), T::from(self.scale).unwrap(), num_threads());
        // SAFETY: u is rows x r, xd rows x inp, a r x inp (read transposed), b out x r (read
        // transposed), y rows x out; no output aliases an input.
        unsafe {
            gemm(rows, r, inp, u.as_mut_ptr(), r, 1, false, xd.as_ptr(), inp, 1, a.as_ptr(), 1, inp, one, th);
            gemm(rows, out, r, y.as_mut_ptr(), out, 1, true, u.as_ptr(), r, 1, b.as_ptr(), 1, r, s, th);
        }
        Ok(y)
    }

    fn backward<T: Real>(&self, x: &[T], a: &[T], b: &[T], g: &[T], d: Dims) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let Dims { rows, inp, r, out } = d;
        let s = T::from(self.scale).unwrap();
        let xd = self.masked(x);
        let (mut u, mut du) = (vec![T::zero(); rows * r], vec![T::zero(); rows * r]);
        let (mut da, mut db, mut dxd) =
            (vec![T::zero(); r * inp], vec![T::zero(); out * r], vec![T::zero(); rows * inp]);
        let th = num_threads();
        // SAFETY: every buffer has the dims its gemm call gives it; outputs never alias inputs.
        unsafe {
            // u = xd A^T
            gemm(rows, r, inp, u.as_mut_ptr(), r, 1, false, xd.as_ptr(), inp, 1, a.as_ptr(), 1, inp, T::one(), th);
            // dB = s g^T u   [out, r]
            gemm(out, r, rows, db.as_mut_ptr(), r, 1, false, g.as_ptr(), 1, out, u.as_ptr(), r, 1, s, th);
            // du = s g B     [rows, r]
            gemm(rows, r, out, du.as_mut_ptr(), r, 1, false, g.as_ptr(), out, 1, b.as_ptr(), r, 1, s, th);
            // dA = du^T xd   [r, inp]
            gemm(r, inp, rows, da.as_mut_ptr(), inp, 1, false, du.as_ptr(), 1, r, xd.as_ptr(), inp, 1, T::one(), th);
            // d(xd) = du A   [rows, inp]
            gemm(rows, inp, r, dxd.as_mut_ptr(), inp, 1, false, du.as_ptr(), r, 1, a.as_ptr(), inp, 1, T::one(), th);
        }
        // dx = g W + dropout'(d(xd)): the same mask, the same scaling.
        if let Some(seed) = self.dropout_seed.filter(|_| self.p > 0.0) {
            apply_dropout(&mut dxd, self.p, seed);
        }
        self.w.backward_input(g, rows, &mut dxd, Output::Add)?;
        Ok((dxd, da, db))
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.dims(lx, la, lb)?;
        dispatch_float!(sx, OP, |T| {
            let y = self.forward::<T>(slice_of(sx, lx, OP)?, slice_of(sa, la, OP)?, slice_of(sb, lb, OP)?, d)?;
            Ok((<T as WithDType>::to_cpu_storage_owned(y), Shape::from((d.rows, d.out))))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, da, db) = by_dtype!(x.dtype(), OP, bwd_t(self, x, a, b, g))?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

fn bwd_t<T: Real>(op: &LoraLinear, x: &Tensor, a: &Tensor, b: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let (dims_x, dims_a, dims_b) = (x.shape().clone(), a.shape().clone(), b.shape().clone());
    let (rows, inp) = x.dims2()?;
    let (r, out) = (a.dim(0)?, b.dim(0)?);
    cpu_slice!(T, x => xs);
    cpu_slice!(T, a => as_);
    cpu_slice!(T, b => bs);
    cpu_slice!(T, g => gs);
    let (dx, da, db) = op.backward(xs, as_, bs, gs, Dims { rows, inp, r, out })?;
    Ok((tensor_of(dx, dims_x)?, tensor_of(da, dims_a)?, tensor_of(db, dims_b)?))
}

/// `x W^T + s (dropout(x) A^T) B^T` (see [`LoraLinear`]), differentiable in `x`, `A` and `B`.
pub fn lora_linear(
    x: &Tensor,
    w: &Arc<FrozenMatrix>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    p: f64,
    dropout_seed: Option<u64>,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, LoraLinear { w: w.clone(), scale, p, dropout_seed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{check_grad, rand_t};

    fn frozen(w: &Tensor) -> Arc<FrozenMatrix> {
        let (r, c) = w.dims2().unwrap();
        Arc::new(FrozenMatrix::from_f64(w.flatten_all().unwrap().to_vec1::<f64>().unwrap(), r, c).unwrap())
    }

    #[test]
    fn equals_the_composed_adapter() {
        let (x, w, a, b) = (rand_t(&[37, 12], 1), rand_t(&[9, 12], 2), rand_t(&[3, 12], 3), rand_t(&[9, 3], 4));
        let y = lora_linear(&x, &frozen(&w), &a, &b, 0.7, 0.0, None).unwrap();
        let want = (x.matmul(&w.t().unwrap()).unwrap()
            + (x.matmul(&a.t().unwrap()).unwrap().matmul(&b.t().unwrap()).unwrap() * 0.7).unwrap())
        .unwrap();
        let d = (y - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-12, "{d}");
    }

    #[test]
    fn gradients_match_finite_differences_with_and_without_dropout() {
        let w = frozen(&rand_t(&[9, 12], 2));
        for seed in [None, Some(17)] {
            let w = w.clone();
            check_grad(
                &[rand_t(&[37, 12], 1), rand_t(&[3, 12], 3), rand_t(&[9, 3], 4)],
                &move |t| lora_linear(&t[0], &w, &t[1], &t[2], 0.7, 0.3, seed),
                1e-6,
            );
        }
    }

    #[test]
    fn the_mask_is_the_same_in_any_chunking_and_drops_p() {
        let mut a = vec![1f64; 100_000];
        apply_dropout(&mut a, 0.1, 5);
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.1).abs() < 0.005, "{dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-12));
        let mut b = vec![1f64; 100_000];
        apply_dropout(&mut b, 0.1, 5);
        assert_eq!(a, b);
    }
}
