//! The gated MLP unit `act(gate) * up` (SwiGLU, GeGLU) with a backward pass.

use super::{by_dtype, cpu_slice, dispatch_float, slice_of, tensor_of, Real};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// The activation of a gated MLP unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// `silu(a) = a * sigmoid(a)` (SwiGLU: Llama, Mistral, Qwen, Phi-3).
    #[default]
    Silu,
    /// `gelu_tanh(a) = a/2 * (1 + tanh(sqrt(2/pi) * (a + 0.044715 a^3)))` (GeGLU with transformers'
    /// `gelu_pytorch_tanh`: Gemma; Hendrycks & Gimpel 2016, eq. 2's approximation).
    GeluTanh,
}

/// `y = act(a) * b` elementwise (Shazeer 2020, "GLU Variants Improve Transformer", eq. 5-6).
/// Inputs `a` (gate) and `b` (up) of equal shape. Backward: `db = g * act(a)`,
/// `da = g * b * act'(a)`, with `silu'(a) = s (1 + a (1 - s))`, `s = sigmoid(a)`, and
/// `gelu_tanh'(a) = (1 + t)/2 + a/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 a^2)`.
pub struct Glu(pub Activation);

const OP: &str = "glu";
const CHUNK: usize = 4096;
const GELU_C: f64 = 0.044_715;

fn sigmoid<T: Real>(a: T) -> T {
    T::one() / (T::one() + (-a).exp())
}

/// `act(a)` alone (the forward pass needs no derivative).
fn value<T: Real>(f: Activation, a: T) -> T {
    match f {
        Activation::Silu => a * sigmoid(a),
        Activation::GeluTanh => act(f, a).0,
    }
}

/// `(act(a), act'(a))`.
fn act<T: Real>(f: Activation, a: T) -> (T, T) {
    match f {
        Activation::Silu => {
            let s = sigmoid(a);
            (a * s, s * (T::one() + a * (T::one() - s)))
        }
        Activation::GeluTanh => {
            let half = T::from(0.5).unwrap();
            let k = T::from((2.0 / std::f64::consts::PI).sqrt()).unwrap();
            let c = T::from(GELU_C).unwrap();
            let t = (k * (a + c * a * a * a)).tanh();
            let d = half * (T::one() + t)
                + half * a * (T::one() - t * t) * k * (T::one() + T::from(3.0).unwrap() * c * a * a);
            (half * a * (T::one() + t), d)
        }
    }
}

fn forward<T: Real>(f: Activation, a: &[T], b: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); a.len()];
    y.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(y, (a, b))| {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = value(f, a) * b;
        }
    });
    y
}

fn backward<T: Real>(f: Activation, a: &[T], b: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
    let mut da = vec![T::zero(); a.len()];
    let mut db = vec![T::zero(); a.len()];
    da.par_chunks_mut(CHUNK)
        .zip(db.par_chunks_mut(CHUNK))
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)).zip(g.par_chunks(CHUNK)))
        .for_each(|((da, db), ((a, b), g))| {
            for i in 0..a.len() {
                match f {
                    // SiLU in the order of the original SwiGLU kernel (bit-identical gradients)
                    Activation::Silu => {
                        let s = sigmoid(a[i]);
                        db[i] = g[i] * a[i] * s;
                        da[i] = g[i] * b[i] * s * (T::one() + a[i] * (T::one() - s));
                    }
                    Activation::GeluTanh => {
                        let (y, d) = act(f, a[i]);
                        db[i] = g[i] * y;
                        da[i] = g[i] * b[i] * d;
                    }
                }
            }
        });
    (da, db)
}

impl CustomOp2 for Glu {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("{OP}: gate {:?} and up {:?} differ", l1.dims(), l2.dims());
        }
        dispatch_float!(s1, OP, |T| {
            let y = forward::<T>(self.0, slice_of(s1, l1, OP)?, slice_of(s2, l2, OP)?);
            Ok((<T as WithDType>::to_cpu_storage_owned(y), l1.shape().clone()))
        })
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (da, db) = by_dtype!(a.dtype(), OP, bwd_t(self.0, a, b, g))?;
        Ok((Some(da), Some(db)))
    }
}

fn bwd_t<T: Real>(f: Activation, a: &Tensor, b: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    cpu_slice!(T, a => as_);
    cpu_slice!(T, b => bs);
    cpu_slice!(T, g => gs);
    let (da, db) = backward(f, as_, bs, gs);
    Ok((tensor_of(da, a.shape())?, tensor_of(db, b.shape())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{check_grad, rand_t};

    #[test]
    fn forward_matches_candle_silu_and_gelu() {
        let (a, b) = (rand_t(&[4, 9], 7), rand_t(&[4, 9], 8));
        for (f, want) in [(Activation::Silu, a.silu().unwrap()), (Activation::GeluTanh, a.gelu().unwrap())] {
            let y = a.apply_op2(&b, Glu(f)).unwrap();
            let want = (want * &b).unwrap();
            let d = (y - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(d < 1e-14, "{f:?}: {d}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for f in [Activation::Silu, Activation::GeluTanh] {
            check_grad(&[rand_t(&[4, 9], 9), rand_t(&[4, 9], 10)], &|t| t[0].apply_op2(&t[1], Glu(f)), 1e-6);
        }
    }
}
