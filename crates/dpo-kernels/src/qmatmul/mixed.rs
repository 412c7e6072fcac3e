//! Mixed precision for trainable matrices (`--bf16`), as transformers trains with bf16 autocast:
//! the weight stays an f32 master (the optimizer's), a bf16 copy of it ([`Bf16Copy`], refreshed
//! after each optimizer step) is what the products read, and every product of a linear layer
//! takes bf16 operands and accumulates in f32:
//!
//! - forward `y[m, rows] = bf16(x)[m, cols] · bf16(W)^T` ([`FrozenMatrix::forward`] on the copy),
//! - input gradient `dx[m, cols] = bf16(dy)[m, rows] · bf16(W)`,
//! - weight gradient `dW[rows, cols] = bf16(dy)^T · bf16(x)` ([`bf16_weight_grad`]), formed in
//!   f32 and added to the master's gradient.
//!
//! Rounding is to nearest, ties to even (`half::bf16::from_f32`, `vcvtne2ps2bf16`); the products
//! of two bf16 values are exact in f32 (Micikevicius et al. 2018, "Mixed Precision Training",
//! §3; Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training").

use super::bf16::{self, PackedBf16};
use super::{gemm, num_threads, FrozenMatrix, Kernel, Storage};
use crate::{cpu_slice, slice_of, tensor_of, Output};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::{Arc, RwLock, RwLockReadGuard};

const OP: &str = "mixed-linear";

/// The bf16 copy `[rows, cols]` of a trainable f32 matrix that the mixed-precision products read
/// (packed for the AVX512-BF16 micro-kernel, 2 bytes per parameter plus padding to 32). It is
/// made from the master's values by [`Bf16Copy::new`] and must be refreshed
/// ([`Bf16Copy::refresh`]) whenever the master changes (after each optimizer step, after a
/// checkpoint is restored).
pub struct Bf16Copy {
    m: RwLock<FrozenMatrix>,
}

impl std::fmt::Debug for Bf16Copy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Copy({:?})", *self.read())
    }
}

impl Bf16Copy {
    /// The copy of `master` `[rows, cols]` (row-major f32). Errors on a length that does not
    /// fit the shape, or an empty shape.
    pub fn new(master: &[f32], rows: usize, cols: usize) -> Result<Self> {
        Ok(Self { m: RwLock::new(FrozenMatrix::bf16_from_f32(master, rows, cols)?) })
    }

    /// Re-rounds the copy from the master's current values (in place, in parallel). Errors when
    /// `master` does not have `rows * cols` values.
    pub fn refresh(&self, master: &[f32]) -> Result<()> {
        let mut m = self.m.write().unwrap_or_else(|e| e.into_inner());
        if master.len() != m.rows * m.cols {
            bail!("bf16 copy [{}, {}]: refreshed from {} values", m.rows, m.cols, master.len());
        }
        match &mut m.storage {
            Storage::Bf16(p) => p.repack_from_f32(master),
            _ => bail!("bf16 copy: not bf16 storage"),
        }
        Ok(())
    }

    /// The packed matrix, for the products.
    pub fn read(&self) -> RwLockReadGuard<'_, FrozenMatrix> {
        self.m.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held by the copy.
    pub fn bytes(&self) -> usize {
        self.read().bytes()
    }
}

/// The weight gradient of a linear layer in mixed precision: `dw[rows, cols] (+)= bf16(dy)^T ·
/// bf16(x)`, for `dy` `[m, rows]` and `x` `[m, cols]` (row-major f32; `m` tokens), accumulated in
/// f32. `rows` and `cols` follow from the slice lengths.
///
/// With AVX512-BF16 it is the forward product of the bf16 micro-kernel with `x^T` packed as the
/// weight and `dy^T` as the activations, at that kernel's rate; elsewhere both operands are
/// rounded to bf16 and multiplied by the f32 GEMM (the same products, summed in another order).
/// Errors when the lengths do not fit `m`.
pub fn bf16_weight_grad(dy: &[f32], x: &[f32], m: usize, dw: &mut [f32], output: Output) -> Result<()> {
    bf16_weight_grad_with(Kernel::Auto, dy, x, m, dw, output)
}

/// [`bf16_weight_grad`] with a choice of kernel (tests and benchmarks).
pub fn bf16_weight_grad_with(
    kernel: Kernel,
    dy: &[f32],
    x: &[f32],
    m: usize,
    dw: &mut [f32],
    output: Output,
) -> Result<()> {
    if m == 0 {
        if !output.adds() {
            dw.fill(0.0);
        }
        return Ok(());
    }
    let (rows, cols) = (dy.len() / m, x.len() / m);
    if rows * m != dy.len() || cols * m != x.len() || rows * cols != dw.len() || rows == 0 || cols == 0 {
        bail!(
            "bf16 weight gradient: dy of {} values, x of {} values and dw of {} values do not fit {m} rows",
            dy.len(),
            x.len(),
            dw.len()
        );
    }
    if kernel == Kernel::Auto && bf16::simd_available() {
        let xt = PackedBf16::transposed_from_f32(x, m, cols);
        xt.forward(kernel, &transpose(dy, m, rows), rows, dw, output);
    } else {
        portable_weight_grad(&bf16::round_to_bf16(dy), &bf16::round_to_bf16(x), (m, rows, cols), dw, output);
    }
    Ok(())
}

/// `dw[rows, cols] (+)= dy^T x` of operands already rounded to bf16, by the f32 GEMM (the
/// products of two bf16 values are exact in f32, so only the order of the sums differs from the
/// micro-kernel's).
fn portable_weight_grad(dy: &[f32], x: &[f32], (m, rows, cols): (usize, usize, usize), dw: &mut [f32], output: Output) {
    // SAFETY: dy is m x rows (read as its transpose: row stride 1, column stride rows), x is
    // m x cols, dw is rows x cols (lengths checked by the caller) and aliases neither.
    unsafe {
        gemm(
            rows,
            cols,
            m,
            dw.as_mut_ptr(),
            cols,
            1,
            output.adds(),
            dy.as_ptr(),
            1,
            rows,
            x.as_ptr(),
            cols,
            1,
            1.0,
            num_threads(),
        )
    }
}

/// `a` `[m, n]` row-major as `[n, m]` row-major; blocks of 32 columns in parallel.
fn transpose(a: &[f32], m: usize, n: usize) -> Vec<f32> {
    const BLOCK: usize = 32;
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(BLOCK * m).enumerate().for_each(|(b, o)| {
        let c0 = b * BLOCK;
        for i in 0..m {
            let row = &a[i * n + c0..i * n + (c0 + BLOCK).min(n)];
            for (k, &v) in row.iter().enumerate() {
                o[k * m + i] = v;
            }
        }
    });
    out
}

/// `y = x W^T` in mixed precision for a trainable `W` (`--bf16`): the products read the bf16
/// copy; the master tensor is the op's second argument so that autograd forms its gradient
/// ([`bf16_weight_grad`]) beside the input's. See the [module documentation](self).
pub struct MixedLinear {
    copy: Arc<Bf16Copy>,
}

impl MixedLinear {
    /// `(m, output dims)` for an input of dims `dims` (`[..., cols]`).
    fn out_dims(&self, dims: &[usize]) -> Result<(usize, Vec<usize>)> {
        let w = self.copy.read();
        match dims.split_last() {
            Some((&c, lead)) if c == w.cols() => {
                let mut out = lead.to_vec();
                out.push(w.rows());
                Ok((lead.iter().product(), out))
            }
            _ => bail!("{OP}: input {dims:?} does not end in in_features = {} ({:?})", w.cols(), *w),
        }
    }
}

impl CustomOp2 for MixedLinear {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, _: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, out_dims) = self.out_dims(l.dims())?;
        let w = self.copy.read();
        if lw.dims() != [w.rows(), w.cols()] {
            bail!("{OP}: master weight {:?} is not the copy's [{}, {}]", lw.dims(), w.rows(), w.cols());
        }
        let x = slice_of::<f32>(s, l, OP)?;
        let mut y = vec![0f32; m * w.rows()];
        w.forward(x, m, &mut y, Output::Overwrite)?;
        Ok((f32::to_cpu_storage_owned(y), Shape::from(out_dims)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (m, _) = self.out_dims(x.dims())?;
        cpu_slice!(f32, g => gs);
        cpu_slice!(f32, x => xs);
        let copy = self.copy.read();
        let mut dx = vec![0f32; m * copy.cols()];
        copy.backward_input(gs, m, &mut dx, Output::Overwrite)?;
        let mut dw = vec![0f32; copy.rows() * copy.cols()];
        bf16_weight_grad(gs, xs, m, &mut dw, Output::Overwrite)?;
        Ok((Some(tensor_of(dx, x.shape())?), Some(tensor_of(dw, w.shape())?)))
    }
}

/// `y[..., rows] = x[..., cols] · W^T` in mixed precision: `x` f32, `master` the trainable f32
/// weight `[rows, cols]`, `copy` its bf16 copy. Differentiable in `x` and `master`. Errors when
/// the shapes do not fit or `x` is not f32.
pub fn mixed_linear(x: &Tensor, master: &Tensor, copy: &Arc<Bf16Copy>) -> Result<Tensor> {
    x.contiguous()?.apply_op2(master, MixedLinear { copy: copy.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = crate::splitmix64(s);
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn bf(v: f32) -> f64 {
        half::bf16::from_f32(v).to_f64()
    }

    /// `dy^T x` of the bf16-rounded operands, in f64.
    fn reference_grad(dy: &[f32], x: &[f32], m: usize, rows: usize, cols: usize) -> Vec<f64> {
        let mut out = vec![0f64; rows * cols];
        for i in 0..m {
            for r in 0..rows {
                for c in 0..cols {
                    out[r * cols + c] += bf(dy[i * rows + r]) * bf(x[i * cols + c]);
                }
            }
        }
        out
    }

    #[test]
    fn weight_gradient_is_the_product_of_the_rounded_operands() {
        // Odd sizes: m and cols not multiples of 2 or 32, rows not a multiple of the micro-tile.
        for &(m, rows, cols) in &[(1, 1, 1), (7, 5, 3), (67, 45, 70), (300, 33, 65)] {
            let (dy, x) = (rand_vec(m * rows, 1 + m as u64), rand_vec(m * cols, 2 + rows as u64));
            let want = reference_grad(&dy, &x, m, rows, cols);
            for kernel in [Kernel::Auto, Kernel::Portable] {
                let mut dw = vec![0.5f32; rows * cols];
                bf16_weight_grad_with(kernel, &dy, &x, m, &mut dw, Output::Overwrite).unwrap();
                for (a, b) in dw.iter().zip(&want) {
                    assert!((*a as f64 - b).abs() < 1e-5 * (1.0 + m as f64).sqrt(), "{m}x{rows}x{cols}: {a} vs {b}");
                }
                let mut acc = vec![1f32; rows * cols];
                bf16_weight_grad_with(kernel, &dy, &x, m, &mut acc, Output::Add).unwrap();
                for (a, b) in acc.iter().zip(&dw) {
                    assert!((a - 1.0 - b).abs() < 1e-5, "accumulate {a} vs 1 + {b}");
                }
            }
        }
        let mut dw = vec![3f32; 4];
        bf16_weight_grad(&[], &[], 0, &mut dw, Output::Overwrite).unwrap();
        assert_eq!(dw, vec![0.0; 4]);
        assert!(bf16_weight_grad(&[0.0; 6], &[0.0; 4], 2, &mut [0.0; 5], Output::Overwrite).is_err());
    }

    /// The AVX512-BF16 route's data flow, checked on any CPU: `x^T` packed by
    /// `transposed_from_f32` is the packing of the transposed matrix, and its forward product
    /// with `dy^T` (through the portable tiles) is the weight gradient.
    #[test]
    fn the_transposed_packing_gives_the_weight_gradient() {
        for &(m, rows, cols) in &[(1, 3, 1), (7, 5, 3), (67, 45, 70)] {
            let (dy, x) = (rand_vec(m * rows, 8 + m as u64), rand_vec(m * cols, 9));
            let xt = PackedBf16::transposed_from_f32(&x, m, cols);
            let want = PackedBf16::from_fn(cols, m, |r, c| half::bf16::from_f32(x[c * cols + r]).to_bits());
            assert_eq!(super::super::tiled::dequantize(&xt), super::super::tiled::dequantize(&want));
            let mut dw = vec![0f32; rows * cols];
            xt.forward(Kernel::Portable, &transpose(&dy, m, rows), rows, &mut dw, Output::Overwrite);
            for (a, b) in dw.iter().zip(reference_grad(&dy, &x, m, rows, cols)) {
                assert!((*a as f64 - b).abs() < 1e-5 * (1.0 + m as f64).sqrt(), "{m}x{rows}x{cols}: {a} vs {b}");
            }
        }
    }

    /// The vectorisable rounding is `half`'s, bit for bit: random bit patterns (every class:
    /// normal, denormal, zero, infinity, NaN) and the ties.
    #[test]
    fn bf16_rounding_is_halfs_bit_for_bit() {
        let mut s = 11u64;
        let special = [0u32, 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x7f80_0001, 0xffff_ffff, 0x7f7f_ffff];
        let ties = (0..1000u32).map(|i| (i << 16) | 0x8000);
        let random = (0..1_000_000).map(|_| {
            s = crate::splitmix64(s);
            s as u32
        });
        for b in special.into_iter().chain(ties).chain(random) {
            let x = f32::from_bits(b);
            assert_eq!(bf16::bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{b:#010x}");
        }
    }

    #[test]
    fn the_copy_is_refreshed_in_place_from_the_master() {
        let (rows, cols) = (37, 19);
        let a = rand_vec(rows * cols, 3);
        let copy = Bf16Copy::new(&a, rows, cols).unwrap();
        let b = rand_vec(rows * cols, 4);
        copy.refresh(&b).unwrap();
        let want: Vec<f32> = b.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
        assert_eq!(copy.read().dequantize(), want);
        assert!(copy.refresh(&b[1..]).is_err());
    }

    /// The op's output and both gradients against the f64 products of the rounded operands.
    #[test]
    fn mixed_linear_forward_and_gradients_round_the_operands_to_bf16() {
        let (m, rows, cols) = (23, 17, 40);
        let (xv, wv, gv) = (rand_vec(m * cols, 5), rand_vec(rows * cols, 6), rand_vec(m * rows, 7));
        let x = Var::from_vec(xv.clone(), (m, cols), &Device::Cpu).unwrap();
        let w = Var::from_vec(wv.clone(), (rows, cols), &Device::Cpu).unwrap();
        let copy = Arc::new(Bf16Copy::new(&wv, rows, cols).unwrap());
        let y = mixed_linear(x.as_tensor(), w.as_tensor(), &copy).unwrap();
        let g = Tensor::from_vec(gv.clone(), (m, rows), &Device::Cpu).unwrap();
        let grads = (y.clone() * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dx = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dw = grads.get(&w).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let close = |a: f32, b: f64, what: &str| assert!((a as f64 - b).abs() < 1e-5, "{what}: {a} vs {b}");
        for i in 0..m {
            for r in 0..rows {
                let want: f64 = (0..cols).map(|c| bf(xv[i * cols + c]) * bf(wv[r * cols + c])).sum();
                close(y[i * rows + r], want, "y");
            }
            for c in 0..cols {
                let want: f64 = (0..rows).map(|r| bf(gv[i * rows + r]) * bf(wv[r * cols + c])).sum();
                close(dx[i * cols + c], want, "dx");
            }
        }
        for (a, b) in dw.iter().zip(reference_grad(&gv, &xv, m, rows, cols)) {
            close(*a, b, "dw");
        }
    }
}
