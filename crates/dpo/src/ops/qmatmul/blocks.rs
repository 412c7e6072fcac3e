//! Weights kept as raw GGML blocks (Q4_0, Q8_0, the K-quants, F16, ...): row `r` of `W` is
//! `cols / block_size` consecutive blocks. Tiles are dequantized with candle's
//! `GgmlType::to_float` (llama.cpp's `dequantize_row_*`; GGML block formats: llama.cpp
//! `ggml-quants.c`), so products are exactly the f32 products of the dequantized weight.

use super::tiled::TileSource;
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0,
    BlockQ8_1, GgmlType,
};
use candle_core::quantized::GgmlDType;
use candle_core::{bail, Result};
use rayon::prelude::*;

/// Runs `$body` with `$t` the block type of `$dtype`.
macro_rules! with_block {
    ($dtype:expr, |$t:ident| $body:expr) => {
        match $dtype {
            GgmlDType::F32 => {
                type $t = f32;
                $body
            }
            GgmlDType::F16 => {
                type $t = half::f16;
                $body
            }
            GgmlDType::BF16 => {
                type $t = half::bf16;
                $body
            }
            GgmlDType::Q4_0 => {
                type $t = BlockQ4_0;
                $body
            }
            GgmlDType::Q4_1 => {
                type $t = BlockQ4_1;
                $body
            }
            GgmlDType::Q5_0 => {
                type $t = BlockQ5_0;
                $body
            }
            GgmlDType::Q5_1 => {
                type $t = BlockQ5_1;
                $body
            }
            GgmlDType::Q8_0 => {
                type $t = BlockQ8_0;
                $body
            }
            GgmlDType::Q8_1 => {
                type $t = BlockQ8_1;
                $body
            }
            GgmlDType::Q2K => {
                type $t = BlockQ2K;
                $body
            }
            GgmlDType::Q3K => {
                type $t = BlockQ3K;
                $body
            }
            GgmlDType::Q4K => {
                type $t = BlockQ4K;
                $body
            }
            GgmlDType::Q5K => {
                type $t = BlockQ5K;
                $body
            }
            GgmlDType::Q6K => {
                type $t = BlockQ6K;
                $body
            }
            GgmlDType::Q8K => {
                type $t = BlockQ8K;
                $body
            }
        }
    };
}

/// Bytes of `rows x cols` weights in `dtype`: `rows · cols / block_size · type_size`; errors when
/// `cols` is not a multiple of the block size, naming the shape.
pub(super) fn byte_len(rows: usize, cols: usize, dtype: GgmlDType) -> Result<usize> {
    let bs = dtype.block_size();
    if !cols.is_multiple_of(bs) {
        bail!("frozen matrix [{rows}, {cols}]: {dtype:?} needs in_features (cols) to be a multiple of its block size {bs}");
    }
    match rows.checked_mul(cols / bs).and_then(|b| b.checked_mul(dtype.type_size())) {
        Some(n) => Ok(n),
        None => bail!("frozen matrix [{rows}, {cols}] {dtype:?}: too large"),
    }
}

/// `rows x cols` weights as raw GGML blocks of `dtype`.
pub(super) struct BlockMatrix {
    rows: usize,
    cols: usize,
    dtype: GgmlDType,
    /// The blocks, row after row, in a buffer aligned for every block type (8 bytes).
    data: Vec<u64>,
    nbytes: usize,
}

impl BlockMatrix {
    fn zeroed(rows: usize, cols: usize, dtype: GgmlDType) -> Result<Self> {
        let nbytes = byte_len(rows, cols, dtype)?;
        Ok(Self { rows, cols, dtype, data: vec![0u64; nbytes.div_ceil(8)], nbytes })
    }

    /// Quantizes `data` (`rows x cols`, f32 row-major) row by row with `GgmlType::from_float`
    /// (rows in parallel: blocks never span rows, so this is `QTensor::quantize` bit for bit).
    pub(super) fn quantize(data: &[f32], rows: usize, cols: usize, dtype: GgmlDType) -> Result<Self> {
        let mut out = Self::zeroed(rows, cols, dtype)?;
        with_block!(dtype, |B| {
            let bpr = cols / B::BLCK_SIZE;
            out.blocks_mut::<B>().par_chunks_mut(bpr).zip(data.par_chunks(cols)).for_each(|(b, x)| B::from_float(x, b));
        });
        Ok(out)
    }

    /// Keeps `bytes` (GGML blocks, `rows · cols / block_size` of them; the length is checked by
    /// the caller through [`byte_len`]).
    pub(super) fn from_bytes(bytes: &[u8], rows: usize, cols: usize, dtype: GgmlDType) -> Result<Self> {
        let mut out = Self::zeroed(rows, cols, dtype)?;
        if bytes.len() != out.nbytes {
            bail!("frozen matrix [{rows}, {cols}] {dtype:?}: {} bytes of data, expected {}", bytes.len(), out.nbytes);
        }
        // SAFETY: data holds at least nbytes bytes (nbytes.div_ceil(8) u64s), and any bytes are valid u64s.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.data.as_mut_ptr() as *mut u8, out.nbytes) };
        dst.copy_from_slice(bytes);
        Ok(out)
    }

    pub(super) fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Bytes of block data.
    pub(super) fn bytes(&self) -> usize {
        self.nbytes
    }

    /// The raw GGML bytes (what `QTensor::data()` gives for the same tensor).
    pub(super) fn raw(&self) -> &[u8] {
        // SAFETY: data holds at least nbytes initialised bytes.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr() as *const u8, self.nbytes) }
    }

    /// The blocks as `B` (which must be the block type of `self.dtype`).
    fn blocks<B: GgmlType>(&self) -> &[B] {
        assert!(B::DTYPE == self.dtype && std::mem::align_of::<B>() <= 8);
        // SAFETY: B is the block type of self.dtype (checked), a repr(C) struct of integers and
        // halfs (every bit pattern valid); data is 8-byte aligned (>= align_of::<B>()) and holds
        // nbytes = rows · cols / BLCK_SIZE · size_of::<B>() bytes.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr() as *const B, self.nbytes / std::mem::size_of::<B>()) }
    }

    fn blocks_mut<B: GgmlType>(&mut self) -> &mut [B] {
        assert!(B::DTYPE == self.dtype && std::mem::align_of::<B>() <= 8);
        // SAFETY: as in `blocks`, with exclusive access through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_mut_ptr() as *mut B, self.nbytes / std::mem::size_of::<B>()) }
    }
}

impl TileSource for BlockMatrix {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn col_align(&self) -> usize {
        self.dtype.block_size()
    }

    fn fill(&self, r0: usize, r1: usize, c0: usize, c1: usize, out: &mut [f32]) {
        let nc = c1 - c0;
        if let Some(fast) = Fast::of(self.dtype) {
            let (bs, ts) = (self.dtype.block_size(), self.dtype.type_size());
            let row_bytes = self.cols / bs * ts;
            let raw = self.raw();
            let rows = (r0..r1).map(|r| &raw[r * row_bytes + c0 / bs * ts..r * row_bytes + c1 / bs * ts]);
            #[cfg(target_arch = "x86_64")]
            if avx512_available() {
                // SAFETY: the CPU has avx512f, avx512bw and avx512vl (checked).
                unsafe { fill_fast_avx512(fast, rows, out, nc) };
                return;
            }
            fill_fast(fast, rows, out, nc);
            return;
        }
        with_block!(self.dtype, |B| {
            let bs = B::BLCK_SIZE;
            let bpr = self.cols / bs;
            let blocks = self.blocks::<B>();
            for (r, o) in (r0..r1).zip(out.chunks_exact_mut(nc)) {
                B::to_float(&blocks[r * bpr + c0 / bs..r * bpr + c1.div_ceil(bs)], o);
            }
        })
    }
}

/// Formats with our own dequantization: those `--base-dtype` makes, and Q4_1 (common in GGUF
/// files). Plain loops the compiler vectorises, doing the arithmetic of candle's `to_float`
/// (llama.cpp's `dequantize_row_q8_0/q4_0/q4_1`) in the same order, so the values are the same
/// bit for bit (tested), without candle's per-block runtime dispatch of the f16 conversion.
#[derive(Clone, Copy)]
enum Fast {
    Q8_0,
    Q4_0,
    Q4_1,
}

impl Fast {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            _ => None,
        }
    }
}

/// The f16 at `b[0..2]` (little-endian) in f32 (exact).
#[inline(always)]
fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32_const()
}

/// Q8_0 (34-byte blocks: f16 scale `d`, 32 int8 `q`): `d · q`.
#[inline(always)]
fn q8_0_row(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b);
        for (o, &q) in o.iter_mut().zip(&b[2..34]) {
            *o = (q as i8) as f32 * d;
        }
    }
}

/// Q4_0 (18-byte blocks: f16 scale `d`, 16 bytes of 4-bit `q`, low nibbles first): `d · (q - 8)`.
#[inline(always)]
fn q4_0_row(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b);
        let (lo, hi) = o.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[2..18]) {
            *l = ((q & 0x0f) as i16 - 8) as f32 * d;
            *h = ((q >> 4) as i16 - 8) as f32 * d;
        }
    }
}

/// Q4_1 (20-byte blocks: f16 scale `d` and minimum `m`, 16 bytes of 4-bit `q`): `d · q + m`.
#[inline(always)]
fn q4_1_row(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let (d, m) = (f16_at(b), f16_at(&b[2..]));
        let (lo, hi) = o.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[4..20]) {
            *l = (q & 0x0f) as f32 * d + m;
            *h = (q >> 4) as f32 * d + m;
        }
    }
}

/// Dequantizes each row's blocks (`rows`) into the next `nc` values of `out`.
#[inline(always)]
fn fill_fast<'a>(fast: Fast, rows: impl Iterator<Item = &'a [u8]>, out: &mut [f32], nc: usize) {
    let each = |row: fn(&[u8], &mut [f32])| rows.zip(out.chunks_exact_mut(nc)).for_each(|(b, o)| row(b, o));
    match fast {
        Fast::Q8_0 => each(q8_0_row),
        Fast::Q4_0 => each(q4_0_row),
        Fast::Q4_1 => each(q4_1_row),
    }
}

/// [`fill_fast`] compiled for AVX-512 (the same scalar arithmetic, vectorised 16 wide).
///
/// # Safety
/// The CPU has avx512f, avx512bw and avx512vl.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn fill_fast_avx512<'a>(fast: Fast, rows: impl Iterator<Item = &'a [u8]>, out: &mut [f32], nc: usize) {
    fill_fast(fast, rows, out, nc)
}

#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl"))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The portable build of the fast dequantization equals the AVX-512 build bit for bit.
    #[test]
    fn portable_and_avx512_dequantization_agree() {
        if !avx512_available() {
            return;
        }
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (fast, ts) in [(Fast::Q8_0, 34), (Fast::Q4_0, 18), (Fast::Q4_1, 20)] {
            let (rows, blocks) = (5, 3);
            let bytes: Vec<u8> = (0..rows * blocks * ts).map(|_| r.random()).collect();
            let (mut a, mut b) = (vec![0f32; rows * blocks * 32], vec![0f32; rows * blocks * 32]);
            fill_fast(fast, bytes.chunks_exact(blocks * ts), &mut a, blocks * 32);
            // SAFETY: avx512_available() holds.
            unsafe { fill_fast_avx512(fast, bytes.chunks_exact(blocks * ts), &mut b, blocks * 32) };
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())));
        }
    }
}
