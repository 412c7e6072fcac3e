//! `y = x W^T` for a trainable weight, with its backward pass written as two products:
//! `dx = dy W` and `dW = dy^T x`, each one call of the parallel GEMM into a buffer it fills.
//!
//! candle's `x.matmul(&w.t())` gives the same values, but around the products it runs serial work
//! that caps the speed-up on many cores: it zeroes every output before the product, and its
//! backward forms `dW^T`, then adds its transpose (a strided element-wise pass) to a zeroed
//! tensor. Here each output is written once by the GEMM, on all threads, and `dW` comes out in the
//! weight's own `[out, in]` layout.

use super::{gemm, num_threads, slice_of, tensor_of, Real};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

const OP: &str = "linear";

/// `y[..., out] = x[..., in] W^T` (`W` `[out, in]`), differentiable in `x` and `W`; f32 or f64.
pub struct DenseLinear;

/// `(m, k, n, output dims)` of `x` `[..., k]` against `w` `[n, k]`.
fn dims(x: &[usize], w: &[usize]) -> Result<(usize, usize, usize, Vec<usize>)> {
    match (x.split_last(), w) {
        (Some((&k, lead)), &[n, wk]) if k == wk => {
            let mut out = lead.to_vec();
            out.push(n);
            Ok((lead.iter().product(), k, n, out))
        }
        _ => bail!("{OP}: input {x:?} does not end in the weight's in_features ({w:?})"),
    }
}

/// `c[m, n] = a · b` into a new buffer, `a` and `b` given by (pointer, row stride, column stride):
/// the GEMM writes every element, so the buffer is never zeroed first.
fn product<T: Real>(m: usize, n: usize, k: usize, a: (&[T], usize, usize), b: (&[T], usize, usize)) -> Vec<T> {
    let mut c: Vec<T> = Vec::with_capacity(m * n);
    // SAFETY: `a` and `b` cover the m x k and k x n matrices their strides describe (callers pass
    // whole contiguous tensors of those shapes); `c` has room for m x n values, all written by the
    // GEMM (which does not read `c` when not accumulating, and zero-fills when k = 0) before the
    // length is set.
    unsafe {
        gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            n,
            1,
            false,
            a.0.as_ptr(),
            a.1,
            a.2,
            b.0.as_ptr(),
            b.1,
            b.2,
            T::one(),
            num_threads(),
        );
        c.set_len(m * n);
    }
    c
}

fn forward<T: Real>(x: &CpuStorage, lx: &Layout, w: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
    let (m, k, n, out) = dims(lx.dims(), lw.dims())?;
    let (xs, ws) = (slice_of::<T>(x, lx, OP)?, slice_of::<T>(w, lw, OP)?);
    // W^T as the right operand: element (i, j) at j * k + i.
    let y = product(m, n, k, (xs, k, 1), (ws, 1, k));
    Ok((T::to_cpu_storage_owned(y), Shape::from(out)))
}

fn backward<T: Real>(x: &Tensor, w: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (m, k, n, _) = dims(x.dims(), w.dims())?;
    crate::cpu_slice!(T, g => gs);
    crate::cpu_slice!(T, x => xs);
    crate::cpu_slice!(T, w => ws);
    let dx = product(m, k, n, (gs, n, 1), (ws, k, 1));
    // dy^T as the left operand: element (i, j) of the n x m matrix at j * n + i.
    let dw = product(n, k, m, (gs, 1, n), (xs, k, 1));
    Ok((Some(tensor_of(dx, x.shape())?), Some(tensor_of(dw, w.shape())?)))
}

impl CustomOp2 for DenseLinear {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout, w: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        match (x, w) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => forward::<f32>(x, lx, w, lw),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => forward::<f64>(x, lx, w, lw),
            _ => bail!("{OP}: input {:?} and weight {:?}: both f32 or both f64", x.dtype(), w.dtype()),
        }
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        crate::by_dtype!(x.dtype(), OP, backward(x, w, g))
    }
}

/// `y[..., out] = x[..., in] · w^T` for `w` `[out, in]` (f32 or f64, the same for both):
/// differentiable in `x` and `w` ([`DenseLinear`]). Errors when the shapes or dtypes differ.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, DenseLinear)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s = crate::splitmix64(s);
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn forward_and_gradients_match_candles_matmul() {
        // 3-D input, sizes past the GEMM's blocking; f64 so that only the order of sums differs.
        let x = Var::from_tensor(&rand(&[3, 37, 70], 1)).unwrap();
        let w = Var::from_tensor(&rand(&[45, 70], 2)).unwrap();
        let g = rand(&[3, 37, 45], 3);
        let ours = linear(&x, &w).unwrap();
        let theirs = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let close = |a: &Tensor, b: &Tensor| {
            let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            assert!(d < 1e-12, "max difference {d}");
        };
        close(&ours, &theirs);
        let go = (&ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = (&theirs * &g).unwrap().sum_all().unwrap().backward().unwrap();
        close(go.get(&x).unwrap(), gt.get(&x).unwrap());
        close(go.get(&w).unwrap(), gt.get(&w).unwrap());
    }

    #[test]
    fn finite_differences_of_the_loss() {
        // L = sum(g * x W^T): dL/dW[i][j] by central differences.
        let (x, w, g) = (rand(&[5, 4], 4), rand(&[3, 4], 5), rand(&[5, 3], 6));
        let wv = Var::from_tensor(&w).unwrap();
        let grads = (linear(&x, &wv).unwrap() * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let dw = grads.get(&wv).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = w.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let loss = |v: &[f64]| {
            let w = Tensor::from_vec(v.to_vec(), (3, 4), &Device::Cpu).unwrap();
            (linear(&x, &w).unwrap() * &g).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        for (i, &analytic) in dw.iter().enumerate() {
            let (mut up, mut down) = (base.clone(), base.clone());
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let numeric = (loss(&up) - loss(&down)) / 2e-6;
            assert!((numeric - analytic).abs() < 1e-7, "dW[{i}]: {numeric} vs {analytic}");
        }
    }

    #[test]
    fn f32_and_mismatches() {
        let x = rand(&[2, 4], 7).to_dtype(DType::F32).unwrap();
        let w = rand(&[3, 4], 8).to_dtype(DType::F32).unwrap();
        assert_eq!(linear(&x, &w).unwrap().dims(), &[2, 3]);
        assert!(linear(&x, &w.t().unwrap()).unwrap_err().to_string().contains("does not end in"));
        assert!(linear(&x, &w.to_dtype(DType::F64).unwrap()).unwrap_err().to_string().contains("both f32 or both f64"));
    }
}
