//! 8-bit AdamW as bitsandbytes' `AdamW8bit` computes it (Dettmers et al. 2022, "8-bit Optimizers
//! via Block-wise Quantization", arXiv 2110.02861, §2): both moments kept as one byte per
//! element, an index into a dynamic map ([`super::dynamic_map`]: signed for `m`, unsigned for
//! `v`), scaled by the absolute maximum of its block of 256 elements. Each step dequantizes a
//! block, applies AdamW's update in f32, and quantizes the new moments to the nearest code
//! against the block's new absolute maximum. Tensors under 4096 elements keep f32 moments, as
//! bitsandbytes' `min_8bit_size`. transformers' `adamw_8bit`, `adamw_bnb_8bit` and
//! `paged_adamw_8bit` (paging moves state between GPU and CPU memory; on a CPU it is the same).

use super::dynamic_map::{SIGNED, UNSIGNED};
use super::inplace::{update, Slices};
use super::AdamStep;
use anyhow::{bail, ensure, Result};
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use std::sync::LazyLock;

/// Elements per block of one absolute maximum (bitsandbytes' optimizer blocksize).
pub const BLOCK: usize = 256;
/// Tensors with fewer elements keep f32 moments (bitsandbytes' `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;

static CODES: LazyLock<[[f32; 256]; 2]> = LazyLock::new(|| [SIGNED.map(f32::from_bits), UNSIGNED.map(f32::from_bits)]);
static BOOKS: LazyLock<[Codebook; 2]> = LazyLock::new(|| [Codebook::new(&CODES[0]), Codebook::new(&CODES[1])]);

/// Buckets of the lookup table over `[-1, 1]` that starts [`Codebook::nearest`]'s search.
const LUT_SIZE: usize = 1 << 16;

/// A map with what finds a value's nearest code fast: the midpoints between neighbouring codes
/// and, per bucket of `[-1, 1]`, how many midpoints lie below the bucket (the search then walks
/// up from there: a step or two, more only in the dense buckets around 0).
struct Codebook {
    mids: [f32; 255],
    lut: Vec<u8>,
}

impl Codebook {
    fn new(codes: &[f32; 256]) -> Self {
        let mids: [f32; 255] = std::array::from_fn(|i| codes[i] + (codes[i + 1] - codes[i]) / 2.0);
        let edge = |j: usize| -1.0 + 2.0 * j as f32 / LUT_SIZE as f32;
        let lut = (0..LUT_SIZE).map(|j| mids.partition_point(|&m| m < edge(j)) as u8).collect();
        Self { mids, lut }
    }

    /// The index of the code nearest to `x` (the lower one on a tie): the number of midpoints
    /// below `x`.
    fn nearest(&self, x: f32) -> u8 {
        let j = (((x + 1.0) * 0.5 * LUT_SIZE as f32) as isize).clamp(0, LUT_SIZE as isize - 1) as usize;
        let mut i = self.lut[j] as usize;
        while i < 255 && self.mids[i] < x {
            i += 1;
        }
        i as u8
    }
}

/// The index of the code of `codes` (sorted ascending) nearest to `x` (the lower one on a tie, as
/// the `argmin` of bitsandbytes' reference quantizer `_quantize_blockwise_pytorch`).
pub fn nearest_code(codes: &[f32; 256], x: f32) -> u8 {
    let i = codes.partition_point(|&c| c < x);
    if i == 0 {
        return 0;
    }
    if i == 256 {
        return 255;
    }
    let (lower, upper) = (codes[i - 1], codes[i]);
    if x - lower <= upper - x {
        (i - 1) as u8
    } else {
        i as u8
    }
}

/// One moment of a tensor, block-wise quantized: `value[i] = code[codes[i]] * absmax[i / 256]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub codes: Vec<u8>,
    pub absmax: Vec<f32>,
}

impl Quantized {
    /// `n` zeros.
    fn zeros(n: usize, zero_code: u8) -> Self {
        Self { codes: vec![zero_code; n], absmax: vec![0.0; n.div_ceil(BLOCK)] }
    }
}

/// A tensor's two moments: 8-bit, or f32 below [`MIN_8BIT_SIZE`] elements.
#[derive(Debug, Clone, PartialEq)]
pub enum Moments8 {
    Blockwise { m: Quantized, v: Quantized },
    Full { m: Vec<f32>, v: Vec<f32> },
}

impl Moments8 {
    /// Zero moments for a tensor of `n` elements.
    pub fn zeros(n: usize) -> Self {
        if n < MIN_8BIT_SIZE {
            return Moments8::Full { m: vec![0.0; n], v: vec![0.0; n] };
        }
        let zero = |codes: &[f32; 256]| nearest_code(codes, 0.0);
        Moments8::Blockwise { m: Quantized::zeros(n, zero(&CODES[0])), v: Quantized::zeros(n, zero(&CODES[1])) }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Moments8::Blockwise { m, v } => m.codes.len() + v.codes.len() + 4 * (m.absmax.len() + v.absmax.len()),
            Moments8::Full { m, v } => 4 * (m.len() + v.len()),
        }
    }

    /// The state as bitsandbytes names it, f32 tensors (codes as their integer values):
    /// `state1`, `absmax1`, `state2`, `absmax2` (8-bit), or `state1`, `state2` (f32).
    pub fn tensors(&self) -> Result<Vec<(&'static str, Tensor)>> {
        let t = |v: Vec<f32>| -> Result<Tensor> {
            let n = v.len();
            Ok(Tensor::from_vec(v, n, &candle_core::Device::Cpu)?)
        };
        let codes = |q: &Quantized| q.codes.iter().map(|&c| c as f32).collect::<Vec<f32>>();
        Ok(match self {
            Moments8::Blockwise { m, v } => vec![
                ("state1", t(codes(m))?),
                ("absmax1", t(m.absmax.clone())?),
                ("state2", t(codes(v))?),
                ("absmax2", t(v.absmax.clone())?),
            ],
            Moments8::Full { m, v } => vec![("state1", t(m.clone())?), ("state2", t(v.clone())?)],
        })
    }

    /// The names [`Moments8::tensors`] gives.
    pub fn names(&self) -> &'static [&'static str] {
        match self {
            Moments8::Blockwise { .. } => &["state1", "absmax1", "state2", "absmax2"],
            Moments8::Full { .. } => &["state1", "state2"],
        }
    }

    /// Restores the state from `saved` (in the order of [`Moments8::names`]). Errors: sizes or
    /// codes that do not fit.
    pub fn restore(&mut self, saved: &[Tensor]) -> Result<()> {
        let vals =
            |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?) };
        let fill = |dst: &mut Vec<f32>, t: &Tensor| -> Result<()> {
            let v = vals(t)?;
            ensure!(v.len() == dst.len(), "{} saved values for a state of {}", v.len(), dst.len());
            *dst = v;
            Ok(())
        };
        let fill_codes = |dst: &mut Vec<u8>, t: &Tensor| -> Result<()> {
            let v = vals(t)?;
            ensure!(v.len() == dst.len(), "{} saved codes for a state of {}", v.len(), dst.len());
            if let Some(bad) = v.iter().find(|&&c| !(0.0..=255.0).contains(&c) || c.fract() != 0.0) {
                bail!("a saved 8-bit code is {bad}, not an integer in 0..=255");
            }
            *dst = v.iter().map(|&c| c as u8).collect();
            Ok(())
        };
        match (self, saved) {
            (Moments8::Blockwise { m, v }, [s1, a1, s2, a2]) => {
                fill_codes(&mut m.codes, s1)?;
                fill(&mut m.absmax, a1)?;
                fill_codes(&mut v.codes, s2)?;
                fill(&mut v.absmax, a2)
            }
            (Moments8::Full { m, v }, [s1, s2]) => {
                fill(m, s1)?;
                fill(v, s2)
            }
            _ => bail!("8-bit AdamW: the saved state does not fit this tensor"),
        }
    }
}

/// One 8-bit AdamW update of f32 parameter `p` (torch's AdamW arithmetic on the dequantized
/// moments, [`super::AdamW`]; the moments requantized per block). Errors: an f64 parameter.
pub(crate) fn adamw8bit_step(p: &Var, grad: &Tensor, state: &mut Moments8, k: &AdamStep<f32>) -> Result<()> {
    update(p, grad, &mut [], &mut |s| {
        let Slices::F32(p, g, _) = s else { bail!("8-bit AdamW updates f32 parameters only") };
        match state {
            Moments8::Full { m, v } => {
                p.par_chunks_mut(BLOCK)
                    .zip(g.par_chunks(BLOCK))
                    .zip(m.par_chunks_mut(BLOCK).zip(v.par_chunks_mut(BLOCK)))
                    .for_each(|((p, g), (m, v))| k.apply(p, g, m, v));
            }
            Moments8::Blockwise { m, v } => {
                p.par_chunks_mut(BLOCK)
                    .zip(g.par_chunks(BLOCK))
                    .zip(m.codes.par_chunks_mut(BLOCK).zip(m.absmax.par_iter_mut()))
                    .zip(v.codes.par_chunks_mut(BLOCK).zip(v.absmax.par_iter_mut()))
                    .for_each(|(((p, g), (mc, ma)), (vc, va))| {
                        let (mut mf, mut vf) = ([0f32; BLOCK], [0f32; BLOCK]);
                        let n = p.len();
                        let (signed, unsigned) = (&CODES[0], &CODES[1]);
                        for (f, &c) in mf.iter_mut().zip(mc.iter()) {
                            *f = signed[c as usize] * *ma;
                        }
                        for (f, &c) in vf.iter_mut().zip(vc.iter()) {
                            *f = unsigned[c as usize] * *va;
                        }
                        k.apply(p, g, &mut mf[..n], &mut vf[..n]);
                        *ma = quantize(&BOOKS[0], &mf[..n], mc);
                        *va = quantize(&BOOKS[1], &vf[..n], vc);
                    });
            }
        }
        Ok(())
    })
}

/// Quantizes `x` to `out` against its absolute maximum, which it returns (0: every code is 0's).
fn quantize(book: &Codebook, x: &[f32], out: &mut [u8]) -> f32 {
    let absmax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
    if absmax == 0.0 {
        out.fill(book.nearest(0.0));
        return 0.0;
    }
    let inv = 1.0 / absmax;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = book.nearest(v * inv);
    }
    absmax
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_sorted_and_hold_zero_and_one() {
        for codes in CODES.iter() {
            assert!(codes.windows(2).all(|w| w[0] <= w[1]));
            assert_eq!(codes[nearest_code(codes, 0.0) as usize], 0.0);
            assert_eq!(codes[255], 1.0);
        }
        assert_eq!(CODES[0][0], -CODES[0][254]);
        // nearest, the lower code on a tie
        let c = &CODES[0];
        let mid = (c[200] + c[201]) / 2.0;
        assert_eq!(nearest_code(c, mid), 200);
        assert_eq!(nearest_code(c, c[200]), 200);
        assert_eq!(nearest_code(c, 2.0), 255);
        assert_eq!(nearest_code(c, -2.0), 0);
    }

    #[test]
    fn the_lookup_table_finds_the_nearest_code() {
        for (codes, book) in CODES.iter().zip(BOOKS.iter()) {
            let mut x = 0x1234_5678u64;
            for k in 0..200_000 {
                x = dpo_kernels::mix_seed(x, k);
                // half uniform in [-1.1, 1.1], a quarter within 1.1e-4 of 0, a quarter the codes themselves
                let u = (x >> 40) as f32 / (1u64 << 24) as f32 * 2.2 - 1.1;
                let v = match k % 4 {
                    0 => u * 1e-4,
                    1 => codes[(x % 256) as usize],
                    _ => u,
                };
                assert_eq!(book.nearest(v), nearest_code(codes, v), "x = {v}");
            }
        }
    }

    #[test]
    fn a_block_quantizes_within_half_a_code_step_of_its_absmax() {
        let x: Vec<f32> = (0..BLOCK).map(|i| ((i as f32) * 0.37).sin() * 0.01).collect();
        let mut q = vec![0u8; BLOCK];
        let a = quantize(&BOOKS[0], &x, &mut q);
        for (i, (&v, &c)) in x.iter().zip(&q).enumerate() {
            let back = CODES[0][c as usize] * a;
            let k = c as usize;
            let gap = (CODES[0][k.min(254) + 1] - CODES[0][k.max(1) - 1]) * a;
            assert!((back - v).abs() <= gap, "element {i}: {v} -> {back}");
        }
    }
}
