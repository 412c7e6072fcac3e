//! The SwiGLU gate `silu(gate) * up` with a backward pass.

use super::{by_dtype, cpu_slice, dispatch_float, slice_of, tensor_of, Real};
use candle_core::{WithDType, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `y = silu(a) * b = a * sigmoid(a) * b` elementwise (Shazeer 2020, "GLU Variants Improve
/// Transformer", eq. 6, the Llama MLP). Inputs `a` (gate) and `b` (up) of equal shape.
/// Backward: `db = g * silu(a)`, `da = g * b * s * (1 + a * (1 - s))` with `s = sigmoid(a)`.
pub struct SwiGlu;

const OP: &str = "swiglu";
const CHUNK: usize = 4096;

fn sigmoid<T: Real>(a: T) -> T {
    T::one() / (T::one() + (-a).exp())
}

fn forward<T: Real>(a: &[T], b: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); a.len()];
    y.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(y, (a, b))| {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = a * sigmoid(a) * b;
        }
    });
    y
}

fn backward<T: Real>(a: &[T], b: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
    let mut da = vec![T::zero(); a.len()];
    let mut db = vec![T::zero(); a.len()];
    da.par_chunks_mut(CHUNK)
        .zip(db.par_chunks_mut(CHUNK))
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)).zip(g.par_chunks(CHUNK)))
        .for_each(|((da, db), ((a, b), g))| {
            for i in 0..a.len() {
                let s = sigmoid(a[i]);
                db[i] = g[i] * a[i] * s;
                da[i] = g[i] * b[i] * s * (T::one() + a[i] * (T::one() - s));
            }
        });
    (da, db)
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("{OP}: gate {:?} and up {:?} differ", l1.dims(), l2.dims());
        }
        dispatch_float!(s1, OP, |T| {
            let y = forward::<T>(slice_of(s1, l1, OP)?, slice_of(s2, l2, OP)?);
            Ok((<T as WithDType>::to_cpu_storage_owned(y), l1.shape().clone()))
        })
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (da, db) = by_dtype!(a.dtype(), OP, bwd_t(a, b, g))?;
        Ok((Some(da), Some(db)))
    }
}

fn bwd_t<T: Real>(a: &Tensor, b: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    cpu_slice!(T, a => as_);
    cpu_slice!(T, b => bs);
    cpu_slice!(T, g => gs);
    let (da, db) = backward(as_, bs, gs);
    Ok((tensor_of(da, a.shape())?, tensor_of(db, b.shape())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{check_grad, rand_t};

    #[test]
    fn forward_matches_candle_silu() {
        let (a, b) = (rand_t(&[4, 9], 7), rand_t(&[4, 9], 8));
        let y = a.apply_op2(&b, SwiGlu).unwrap();
        let want = (a.silu().unwrap() * &b).unwrap();
        let d = (y - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-14);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        check_grad(&[rand_t(&[4, 9], 9), rand_t(&[4, 9], 10)], &|t| t[0].apply_op2(&t[1], SwiGlu), 1e-6);
    }
}
