//! bf16 weights: the packed panel layout, the AVX512-BF16 GEMM, and the portable fallback.
//!
//! # Layout
//! `vdpbf16ps acc, b, a` adds, per 32-bit lane, `b.lo·a.lo + b.hi·a.hi` (two bf16 products,
//! exact in f32) to an f32 accumulator (Intel SDM, VDPBF16PS). The operand whose lanes are
//! the output columns therefore needs, per lane, a *pair of consecutive k* (reduction index).
//! For the forward product (`k` = a column of `W`) a panel of 32 rows of `W` for the k-pair `j`
//! is 32 u32 words `(W[r, 2j], W[r, 2j+1])`; the weight is stored as these panels, packed once:
//! word `(p·kpad + j)·32 + l` holds row `32p + l`, columns `2j, 2j+1` (`rows` padded to a
//! multiple of 32 and `cols` to a multiple of 32 with zeros; `kpad = ⌈cols/32⌉·16`).
//!
//! Two adjacent lanes `2i, 2i+1` of a panel word-row form the 2x2 block
//! `W[2i..2i+2, 2j..2j+2]` as one u64. The input gradient reduces over the rows of `W`, so its
//! panels (lanes = columns of `W`) need pairs of consecutive *rows*: they are made on the fly,
//! 16x16 blocks of these u64 at a time, by an in-register transpose plus a byte shuffle inside
//! each u64 (the cost, a few shuffles per 64 bytes, is amortised over `m`).
//!
//! The activations are rounded to bf16 (to nearest, ties to even) once per call, row-major, a
//! block at a time just before use; the micro-kernel broadcasts one pair per row and k-step.
//! `vcvtne2ps2bf16` and `vdpbf16ps` treat denormal inputs as zero and flush denormal results to
//! zero (Intel SDM), which the portable path (`half::bf16::from_f32`, f32 GEMM) does not: the two
//! paths agree up to summation order for activations and products above `1.2e-38`.

use super::tiled::{self, TileSource};
use super::Kernel;
use crate::Output;
use rayon::prelude::*;

/// Rows of `W` per forward panel: the 32 lanes of two zmm registers.
const NR: usize = 32;
/// k-pairs per 32 columns.
const GROUP: usize = 16;

/// A cache line of u32 words: buffers made of these are 64-byte aligned, so panel rows never
/// straddle cache lines.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u32; 16]);

/// `n` zeroed words (`n` a multiple of 16) in an aligned buffer.
fn lines(n: usize) -> Vec<Line> {
    vec![Line([0; 16]); n.div_ceil(16)]
}

fn words(v: &[Line]) -> &[u32] {
    // SAFETY: Line is repr(C) [u32; 16] of size 64 (no padding), so the buffer is 16·len u32s.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u32, v.len() * 16) }
}

fn words_mut(v: &mut [Line]) -> &mut [u32] {
    // SAFETY: as in `words`, with exclusive access.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u32, v.len() * 16) }
}

/// Whether the AVX512-BF16 path can run here (detected once).
pub(in crate::qmatmul) fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The bf16 value with bits `b` in f32 (exact).
fn bf16_bits_to_f32(b: u32) -> f32 {
    f32::from_bits(b << 16)
}

/// The bits of `x` rounded to bf16, to nearest with ties to even; a NaN stays a NaN (quieted):
/// bit for bit `half::bf16::from_f32`, written without branches on the value so that loops over
/// it vectorise (a weight refresh converts every parameter each step).
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let nan = ((b >> 16) as u16) | 0x40;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }
}

/// `x` rounded to bf16 (nearest, ties to even) and back to f32.
pub(super) fn round_to_bf16(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = bf16_bits_to_f32(bf16_bits(x) as u32);
        }
    });
    out
}

/// A bf16 matrix `[rows, cols]` packed in forward panels (see the module documentation).
pub(super) struct PackedBf16 {
    rows: usize,
    cols: usize,
    /// k-pairs per panel: `⌈cols/32⌉·16`.
    kpad: usize,
    data: Vec<Line>,
}

impl PackedBf16 {
    /// The all-zero `[rows, cols]` matrix in the panel layout (padding included).
    fn zeroed(rows: usize, cols: usize) -> Self {
        let kpad = cols.div_ceil(2 * GROUP) * GROUP;
        Self { rows, cols, kpad, data: lines(rows.div_ceil(NR) * kpad * NR) }
    }

    /// Packs the matrix whose bf16 bits at `(r, c)` are `bits(r, c)`.
    pub(super) fn from_fn(rows: usize, cols: usize, bits: impl Fn(usize, usize) -> u16 + Sync) -> Self {
        let Self { kpad, mut data, .. } = Self::zeroed(rows, cols);
        words_mut(&mut data).par_chunks_mut(kpad * NR).enumerate().for_each(|(p, panel)| {
            for (l, r) in (p * NR..rows.min((p + 1) * NR)).enumerate() {
                for j in 0..cols.div_ceil(2) {
                    let lo = bits(r, 2 * j) as u32;
                    let hi = if 2 * j + 1 < cols { bits(r, 2 * j + 1) as u32 } else { 0 };
                    panel[j * NR + l] = lo | hi << 16;
                }
            }
        });
        Self { rows, cols, kpad, data }
    }

    /// Packs the transpose of the row-major f32 matrix `x` `[m, cols]`, each value rounded to
    /// bf16 (nearest, ties to even): the matrix `[cols, m]` whose forward product
    /// `y = a · (x^T)^T = a · x` is the weight gradient `dW = dY^T X` of a linear layer with
    /// `a = dY^T`. The panels' 32 lanes are 32 consecutive columns of `x`, their k-pairs two
    /// consecutive rows, so each panel row reads two runs of 32 floats.
    pub(super) fn transposed_from_f32(x: &[f32], m: usize, cols: usize) -> Self {
        debug_assert_eq!(x.len(), m * cols);
        let Self { kpad, mut data, .. } = Self::zeroed(cols, m);
        let bits = |v: f32| bf16_bits(v) as u32;
        words_mut(&mut data).par_chunks_mut(kpad * NR).enumerate().for_each(|(p, panel)| {
            let (c0, c1) = (p * NR, cols.min((p + 1) * NR));
            for (j, out) in panel.chunks_exact_mut(NR).take(m.div_ceil(2)).enumerate() {
                let lo = &x[2 * j * cols + c0..2 * j * cols + c1];
                if 2 * j + 1 < m {
                    let hi = &x[(2 * j + 1) * cols + c0..(2 * j + 1) * cols + c1];
                    for ((o, &a), &b) in out.iter_mut().zip(lo).zip(hi) {
                        *o = bits(a) | bits(b) << 16;
                    }
                } else {
                    for (o, &a) in out.iter_mut().zip(lo) {
                        *o = bits(a);
                    }
                }
            }
        });
        Self { rows: cols, cols: m, kpad, data }
    }

    /// Packs row-major f32 `data` `[rows, cols]`, each value rounded to bf16 (nearest, ties to
    /// even).
    pub(super) fn from_f32(data: &[f32], rows: usize, cols: usize) -> Self {
        let mut p = Self::zeroed(rows, cols);
        p.repack_from_f32(data);
        p
    }

    /// Re-packs the matrix in place from row-major f32 `data` `[rows, cols]` (same shape), each
    /// value rounded to bf16: the refresh of a mixed-precision copy after an optimizer step,
    /// without allocating (and faulting in) a new buffer.
    pub(super) fn repack_from_f32(&mut self, data: &[f32]) {
        debug_assert_eq!(data.len(), self.rows * self.cols);
        let (rows, cols) = (self.rows, self.cols);
        let bits = |v: f32| bf16_bits(v) as u32;
        words_mut(&mut self.data).par_chunks_mut(self.kpad * NR).enumerate().for_each(|(p, panel)| {
            for (l, r) in (p * NR..rows.min((p + 1) * NR)).enumerate() {
                let row = &data[r * cols..(r + 1) * cols];
                let mut pairs = row.chunks_exact(2);
                for (j, pair) in (&mut pairs).enumerate() {
                    panel[j * NR + l] = bits(pair[0]) | bits(pair[1]) << 16;
                }
                if let [last] = pairs.remainder() {
                    panel[cols / 2 * NR + l] = bits(*last);
                }
            }
        });
    }

    /// The bf16 bits of `W[r, c]`.
    fn bits(&self, r: usize, c: usize) -> u16 {
        let w = words(&self.data)[((r / NR) * self.kpad + c / 2) * NR + r % NR];
        (w >> (16 * (c % 2))) as u16
    }

    /// The matrix of rows `order` (each `< rows`), repacked.
    pub(super) fn gather_rows(&self, order: &[usize]) -> Self {
        Self::from_fn(order.len(), self.cols, |r, c| self.bits(order[r], c))
    }

    /// Bytes held: 2 bytes per element of the padded `⌈rows/32⌉·32 x ⌈cols/32⌉·32` matrix.
    pub(super) fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<Line>()
    }

    /// `y[m, rows] (+)= bf16(x)[m, cols] · W^T`.
    pub(super) fn forward(&self, kernel: Kernel, x: &[f32], m: usize, y: &mut [f32], output: Output) {
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Auto && simd_available() {
            // SAFETY: the CPU has avx512f, avx512bw and avx512bf16 (checked above); the lengths of
            // x (m x cols) and y (m x rows) were checked by the caller.
            unsafe { simd::forward(self, x, m, y, output, None) };
            return;
        }
        let _ = kernel;
        tiled::forward(self, &round_to_bf16(x), m, y, output);
    }

    /// `dx[m, cols] (+)= bf16(dy)[m, rows] · W`.
    pub(super) fn backward(&self, kernel: Kernel, dy: &[f32], m: usize, dx: &mut [f32], output: Output) {
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Auto && simd_available() {
            // SAFETY: as in `forward`; dy is m x rows and dx is m x cols (checked by the caller).
            unsafe { simd::backward(self, dy, m, dx, output, None) };
            return;
        }
        let _ = kernel;
        tiled::backward(self, &round_to_bf16(dy), m, dx, output);
    }
}

impl TileSource for PackedBf16 {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn col_align(&self) -> usize {
        2 * GROUP
    }

    fn fill(&self, r0: usize, r1: usize, c0: usize, c1: usize, out: &mut [f32]) {
        let w = words(&self.data);
        let nc = c1 - c0;
        for (r, o) in (r0..r1).zip(out.chunks_exact_mut(nc)) {
            let base = (r / NR) * self.kpad * NR + r % NR;
            let mut pairs = o.chunks_exact_mut(2);
            for (j, pair) in (c0 / 2..).zip(&mut pairs) {
                let u = w[base + j * NR];
                pair[0] = bf16_bits_to_f32(u & 0xffff);
                pair[1] = bf16_bits_to_f32(u >> 16);
            }
            if let [last] = pairs.into_remainder() {
                *last = bf16_bits_to_f32(w[base + (c1 - 1) / 2 * NR] & 0xffff);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
use avx512 as simd;
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) use avx512::{micro_peak_for_test, transpose_group_for_test, Strategy};

#[cfg(all(test, target_arch = "x86_64"))]
impl PackedBf16 {
    /// The AVX512-BF16 product (input gradient when `backward`) with a forced work split (tests).
    pub(super) fn simd_with(
        &self,
        backward: bool,
        strategy: Strategy,
        a: &[f32],
        m: usize,
        out: &mut [f32],
        output: Output,
    ) {
        assert!(simd_available());
        let (k, n) = if backward { (self.rows, self.cols) } else { (self.cols, self.rows) };
        assert!(a.len() == m * k && out.len() == m * n);
        // SAFETY: the CPU has the features (asserted); the lengths are checked above.
        unsafe {
            if backward {
                simd::backward(self, a, m, out, output, Some(strategy))
            } else {
                simd::forward(self, a, m, out, output, Some(strategy))
            }
        }
    }
}
