//! Rotary position embedding with a backward pass.

use super::{by_dtype, cpu_slice, dispatch_float, slice_of, tensor_of, Real};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::Arc;

/// The rotation angles of each row of a packed batch: `cos`, `sin` `[rows, head_dim/2]`.
///
/// `theta_i = base^(-2i/head_dim)` (Su et al. 2021, RoFormer eq. 15), angle = position * theta_i,
/// computed in the model's dtype exactly as Hugging Face's rotary embeddings do (for f32: f32
/// `pow`, product and `cos`), so positions far into a sequence round the same way. The frequency
/// scalings of [`RopeScaling`] change `theta_i` and may scale `cos` and `sin` (transformers'
/// `modeling_rope_utils.py`).
pub struct RopeTable {
    half: usize,
    cos: Vec<f64>,
    sin: Vec<f64>,
}

/// Llama 3.1 rotary frequency scaling (`rope_scaling` with `rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// How the rotary frequencies are scaled for contexts longer than pre-training's.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `theta_i` as is.
    Default,
    /// Position interpolation (Chen et al. 2023): `theta_i / factor` (Gemma 3's global layers).
    Linear { factor: f64 },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3(Llama3Scaling),
    /// YaRN (Peng et al. 2023, eq. 18-20): per frequency a ramp between interpolation
    /// (`theta_i / factor`) and extrapolation over the correction range of `beta_fast`..`beta_slow`
    /// rotations; `cos`, `sin` scaled by `attention_factor` (`0.1 ln(factor) + 1` by default).
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
    /// LongRoPE (Ding et al. 2024; Phi-3): `theta_i / short_factor[i]` while a sequence fits in
    /// `original_max_position_embeddings` (longer ones use `long_factor`, which we refuse rather
    /// than mix in a packed batch); `cos`, `sin` scaled by `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: f64,
        attention_factor: f64,
    },
}

/// The rotary embedding of a layer: base frequency `theta` and its scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeTable {
    /// Angles for `positions` with `head_dim` and `rope`, computed in `T`.
    ///
    /// Errors: LongRoPE with a position at or past `original_max_position_embeddings` (the long
    /// factors, which transformers picks per forward by its longest sequence).
    pub fn new<T: Real>(head_dim: usize, rope: &RopeParams, positions: &[u32]) -> Result<Self> {
        let half = head_dim / 2;
        let c = |v: f64| T::from(v).unwrap();
        let dim = c(head_dim as f64);
        let base = c(rope.theta);
        // base^(2i/d), as transformers computes it (`base ** (arange(0, d, 2) / d)`).
        let pos_freq = |i: usize| base.powf(c((2 * i) as f64) / dim);
        let mut scale = T::one();
        let inv_freq: Vec<T> = match &rope.scaling {
            RopeScaling::Default => (0..half).map(|i| T::one() / pos_freq(i)).collect(),
            RopeScaling::Linear { factor } => (0..half).map(|i| T::one() / pos_freq(i) / c(*factor)).collect(),
            RopeScaling::Llama3(s) => (0..half).map(|i| llama3_scale(T::one() / pos_freq(i), *s)).collect(),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => {
                // transformers `_compute_yarn_parameters`: the correction range in f64, the ramp in f32.
                let correction_dim = |rot: f64| {
                    (head_dim as f64 * (original_max_position_embeddings / (rot * 2.0 * std::f64::consts::PI)).ln())
                        / (2.0 * rope.theta.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(head_dim as f64 - 1.0));
                if low == high {
                    high += 0.001;
                }
                scale = c(*attention_factor);
                (0..half)
                    .map(|i| {
                        let ramp = num_traits::Float::min(
                            num_traits::Float::max((c(i as f64) - c(low)) / (c(high) - c(low)), T::zero()),
                            T::one(),
                        );
                        let extrapolation = T::one() - ramp;
                        let p = pos_freq(i);
                        let (extra, inter) = (T::one() / p, T::one() / (c(*factor) * p));
                        inter * (T::one() - extrapolation) + extra * extrapolation
                    })
                    .collect()
            }
            RopeScaling::LongRope { short_factor, original_max_position_embeddings, attention_factor, .. } => {
                if let Some(&p) = positions.iter().find(|&&p| p as f64 >= *original_max_position_embeddings) {
                    candle_core::bail!(
                        "LongRoPE: position {p} is past original_max_position_embeddings {original_max_position_embeddings}: the long factors are not supported"
                    );
                }
                scale = c(*attention_factor);
                (0..half).map(|i| T::one() / (c(short_factor[i]) * pos_freq(i))).collect()
            }
        };
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &inv_freq {
                let a = T::from(p).unwrap() * f;
                cos.push((a.cos() * scale).as_f64());
                sin.push((a.sin() * scale).as_f64());
            }
        }
        Ok(Self { half, cos, sin })
    }

    /// The rotation angles of the table's rows, `[rows * head_dim/2]` (at position 1: the
    /// inverse frequencies), from `atan2(sin, cos)` (in `(-pi, pi]`).
    pub fn angles(&self) -> Vec<f64> {
        self.cos.iter().zip(&self.sin).map(|(c, s)| s.atan2(*c)).collect()
    }

    /// Number of rows the table covers.
    pub fn rows(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }
}

fn llama3_scale<T: Real>(f: T, s: Llama3Scaling) -> T {
    let c = |v: f64| T::from(v).unwrap();
    let two_pi = c(2.0 * std::f64::consts::PI);
    let wavelen = two_pi / f;
    let low_wavelen = c(s.original_max_position_embeddings / s.low_freq_factor);
    let high_wavelen = c(s.original_max_position_embeddings / s.high_freq_factor);
    if wavelen > low_wavelen {
        f / c(s.factor)
    } else if wavelen < high_wavelen {
        f
    } else {
        let smooth = (c(s.original_max_position_embeddings) / wavelen - c(s.low_freq_factor))
            / (c(s.high_freq_factor) - c(s.low_freq_factor));
        (T::one() - smooth) * f / c(s.factor) + smooth * f
    }
}

/// Which way [`rotate`] turns: by the positions' angles (the forward pass) or back (the
/// gradient, the transpose of a rotation).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rotation {
    Forward,
    Inverse,
}

/// Applies the rotation of [`RopeTable`] to every head of `x` `[rows, n_heads*head_dim]`, in the
/// "rotate half" layout of Hugging Face Llama: `y1 = x1 cos - x2 sin`, `y2 = x2 cos + x1 sin`,
/// where `x1`, `x2` are the first and second halves of each head. The backward pass applies the
/// inverse rotation (`sin -> -sin`).
pub struct Rope {
    pub table: Arc<RopeTable>,
    pub head_dim: usize,
}

const OP: &str = "rope";

fn rotate<T: Real>(x: &[T], table: &RopeTable, head_dim: usize, way: Rotation) -> Vec<T> {
    let inverse = way == Rotation::Inverse;
    let half = table.half;
    let width = x.len() / table.rows();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(width).zip(x.par_chunks(width)).enumerate().for_each(|(row, (y, x))| {
        let cos = &table.cos[row * half..(row + 1) * half];
        let sin = &table.sin[row * half..(row + 1) * half];
        for (yh, xh) in y.chunks_mut(head_dim).zip(x.chunks(head_dim)) {
            for i in 0..half {
                let c = T::from(cos[i]).unwrap();
                let s = T::from(sin[i]).unwrap();
                let s = if inverse { -s } else { s };
                let (x1, x2) = (xh[i], xh[i + half]);
                yh[i] = x1 * c - x2 * s;
                yh[i + half] = x2 * c + x1 * s;
            }
        }
    });
    y
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, width) = l.shape().dims2()?;
        if rows != self.table.rows() || width % self.head_dim != 0 {
            candle_core::bail!(
                "{OP}: input {:?} does not fit {} rows of head_dim {}",
                l.dims(),
                self.table.rows(),
                self.head_dim
            );
        }
        dispatch_float!(s, OP, |T| {
            let y = rotate::<T>(slice_of(s, l, OP)?, &self.table, self.head_dim, Rotation::Forward);
            Ok((<T as WithDType>::to_cpu_storage_owned(y), l.shape().clone()))
        })
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(by_dtype!(g.dtype(), OP, bwd_t(g, &self.table, self.head_dim))?))
    }
}

fn bwd_t<T: Real>(g: &Tensor, table: &RopeTable, head_dim: usize) -> Result<Tensor> {
    cpu_slice!(T, g => gs);
    tensor_of(rotate(gs, table, head_dim, Rotation::Inverse), g.shape())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{check_grad, rand_t};

    const DEFAULT: RopeParams = RopeParams { theta: 10000.0, scaling: RopeScaling::Default };

    #[test]
    fn rotation_preserves_norm_and_matches_rotate_half() {
        let x = rand_t(&[3, 8], 5);
        let table = Arc::new(RopeTable::new::<f64>(4, &DEFAULT, &[0, 1, 7]).unwrap());
        let y = x.apply_op1(Rope { table: table.clone(), head_dim: 4 }).unwrap();
        let xs = x.to_vec2::<f64>().unwrap();
        let ys = y.to_vec2::<f64>().unwrap();
        // row 0 is position 0: identity
        assert_eq!(xs[0], ys[0]);
        // row 2, head 1, i = 1: theta_1 = 10000^(-2/4) = 0.01, angle 0.07
        let (c, s) = (0.07f64.cos(), 0.07f64.sin());
        let want = xs[2][4 + 1] * c - xs[2][4 + 3] * s;
        assert!((ys[2][5] - want).abs() < 1e-12);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let table = Arc::new(RopeTable::new::<f64>(4, &DEFAULT, &[0, 3, 9, 2, 5]).unwrap());
        check_grad(&[rand_t(&[5, 8], 6)], &|t| t[0].apply_op1(Rope { table: table.clone(), head_dim: 4 }), 1e-6);
    }
}
