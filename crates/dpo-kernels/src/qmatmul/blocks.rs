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

    /// The matrix of rows `order` (each `< rows`), copying their blocks.
    pub(super) fn gather_rows(&self, order: &[usize]) -> Result<Self> {
        let mut out = Self::zeroed(order.len(), self.cols, self.dtype)?;
        let rb = self.nbytes / self.rows;
        let src = self.raw();
        // SAFETY: out.data holds at least out.nbytes = order.len() · rb bytes, any bytes valid.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.data.as_mut_ptr() as *mut u8, out.nbytes) };
        for (d, &r) in dst.chunks_exact_mut(rb).zip(order) {
            d.copy_from_slice(&src[r * rb..(r + 1) * rb]);
        }
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
        unsafe {
            std::slice::from_raw_parts_mut(self.data.as_mut_ptr() as *mut B, self.nbytes / std::mem::size_of::<B>())
        }
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
        #[cfg(target_arch = "x86_64")]
        if let (Some(fast), true) = (simd::Fast::of(self.dtype), simd::available()) {
            let (bs, ts) = (self.dtype.block_size(), self.dtype.type_size());
            let row_bytes = self.cols / bs * ts;
            let raw = self.raw();
            for (r, o) in (r0..r1).zip(out.chunks_exact_mut(nc)) {
                // SAFETY: the CPU has the features (checked); the bytes are the whole blocks of
                // columns c0..c1 of row r, and o holds their c1 - c0 values.
                unsafe { simd::dequantize(fast, &raw[r * row_bytes + c0 / bs * ts..r * row_bytes + c1 / bs * ts], o) };
            }
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

/// Our own dequantization of the formats `--base-dtype` makes (and Q4_1, common in GGUF files)
/// with AVX-512 (candle's `to_float` is scalar, and converts each block's f16 scale through a
/// runtime-dispatched call). The same arithmetic as candle's `to_float` (llama.cpp's
/// `dequantize_row_q8_0/q4_0/q4_1`): exact integer-to-float conversions, then one f32 multiply
/// (and for Q4_1 one add, not fused), so the values are the same bit for bit (tested).
#[cfg(target_arch = "x86_64")]
mod simd {
    use candle_core::quantized::GgmlDType;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(super) enum Fast {
        Q8_0,
        Q4_0,
        Q4_1,
    }

    impl Fast {
        pub(super) fn of(dtype: GgmlDType) -> Option<Self> {
            match dtype {
                GgmlDType::Q8_0 => Some(Self::Q8_0),
                GgmlDType::Q4_0 => Some(Self::Q4_0),
                GgmlDType::Q4_1 => Some(Self::Q4_1),
                _ => None,
            }
        }
    }

    /// Whether the CPU has what [`dequantize`] needs (detected once).
    pub(super) fn available() -> bool {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c"))
    }

    /// The f16 at `p` (little-endian, unaligned) in f32, exactly (`vcvtph2ps`).
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        // SAFETY: the caller's two readable bytes at p.
        let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Dequantizes the whole blocks in `bytes` into `out` (32 values a block).
    ///
    /// # Safety
    /// The CPU has avx512f and f16c; `bytes` holds whole blocks of `fast`'s format and `out`
    /// 32 values for each.
    #[target_feature(enable = "avx512f,f16c")]
    pub(super) unsafe fn dequantize(fast: Fast, bytes: &[u8], out: &mut [f32]) {
        let ts = match fast {
            Fast::Q8_0 => 34,
            Fast::Q4_0 => 18,
            Fast::Q4_1 => 20,
        };
        debug_assert!(bytes.len().is_multiple_of(ts) && out.len() == bytes.len() / ts * 32);
        let low = _mm_set1_epi8(0x0f);
        for (b, o) in bytes.chunks_exact(ts).zip(out.chunks_exact_mut(32)) {
            let (b, o) = (b.as_ptr(), o.as_mut_ptr());
            // SAFETY: b is one block of ts bytes (read below within it) and o 32 floats.
            unsafe {
                let d = _mm512_set1_ps(f16_at(b));
                let (lo, hi) = match fast {
                    // 2-byte scale, 32 int8: d · q.
                    Fast::Q8_0 => {
                        let q = _mm256_loadu_si256(b.add(2) as *const __m256i);
                        let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
                        let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q)));
                        (_mm512_mul_ps(lo, d), _mm512_mul_ps(hi, d))
                    }
                    // 2-byte scale, 16 bytes of nibbles (low nibbles are values 0..16): d · (q - 8).
                    Fast::Q4_0 => {
                        let q = _mm_loadu_si128(b.add(2) as *const __m128i);
                        let eight = _mm512_set1_epi32(8);
                        let nib = |v: __m128i| _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(v), eight));
                        let lo = nib(_mm_and_si128(q, low));
                        let hi = nib(_mm_and_si128(_mm_srli_epi16::<4>(q), low));
                        (_mm512_mul_ps(lo, d), _mm512_mul_ps(hi, d))
                    }
                    // 2-byte scale d and minimum m, 16 bytes of nibbles: d · q + m.
                    Fast::Q4_1 => {
                        let m = _mm512_set1_ps(f16_at(b.add(2)));
                        let q = _mm_loadu_si128(b.add(4) as *const __m128i);
                        let nib = |v: __m128i| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
                        let lo = nib(_mm_and_si128(q, low));
                        let hi = nib(_mm_and_si128(_mm_srli_epi16::<4>(q), low));
                        (_mm512_add_ps(_mm512_mul_ps(lo, d), m), _mm512_add_ps(_mm512_mul_ps(hi, d), m))
                    }
                };
                _mm512_storeu_ps(o, lo);
                _mm512_storeu_ps(o.add(16), hi);
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// ns per weight of candle's and our dequantization (`cargo test -- --ignored --nocapture`).
    #[test]
    #[ignore = "timing"]
    fn dequantization_speed() {
        let (rows, cols) = (64, 1536);
        let data: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut out = vec![0f32; rows * cols];
        let mut time = |f: &mut dyn FnMut(&mut [f32])| {
            let mut best = f64::INFINITY;
            for _ in 0..200 {
                let t = std::time::Instant::now();
                f(&mut out);
                best = best.min(t.elapsed().as_secs_f64());
            }
            best * 1e9 / (rows * cols) as f64
        };
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
            let m = BlockMatrix::quantize(&data, rows, cols, dtype).unwrap();
            let candle = with_block!(dtype, |B| time(&mut |o| B::to_float(m.blocks::<B>(), o)));
            let ours = time(&mut |o| m.fill(0, rows, 0, cols, o));
            eprintln!(
                "{dtype:?}: candle {candle:.3} ns, ours {ours:.3} ns per weight (AVX-512: {})",
                simd::available()
            );
        }
    }
}
