//! Adafactor (Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory
//! Cost", arXiv 1804.04235, Algorithms 4 and 5) as transformers' `Adafactor` computes it with the
//! settings its Trainer gives `optim="adafactor"`: `scale_parameter=False, relative_step=False,
//! warmup_init=False`, the learning rate of the schedule, `eps=(1e-30, 1e-3)`,
//! `clip_threshold=1.0`, `decay_rate=-0.8`, `beta1=None` (no first moment).

use super::inplace::{update, Buf, Slices};
use anyhow::Result;
use candle_core::{Tensor, Var};
use dpo_kernels::Real;
use rayon::prelude::*;

/// transformers' `eps[0]`: added to the squared gradient.
pub const EPS: f64 = 1e-30;
/// transformers' `clip_threshold`: the update's RMS is clipped to it.
pub const CLIP_THRESHOLD: f64 = 1.0;
/// transformers' `decay_rate`: the second moment's decay at step `t` is `1 - t^decay_rate`.
pub const DECAY_RATE: f64 = -0.8;

/// How a parameter's second moment is kept: factored into row and column means for tensors of
/// rank >= 2 (`batches` matrices of `rows x cols`: the leading dimensions are batches, as
/// transformers' `grad_shape[:-1]` and `grad_shape[:-2] + grad_shape[-1:]`), whole for vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Factoring {
    pub batches: usize,
    pub rows: usize,
    pub cols: usize,
    pub factored: bool,
}

impl Factoring {
    /// The factoring of a parameter of shape `dims`.
    pub fn of(dims: &[usize]) -> Self {
        match dims {
            [lead @ .., r, c] => Self { batches: lead.iter().product(), rows: *r, cols: *c, factored: true },
            _ => Self { batches: 1, rows: 1, cols: dims.iter().product(), factored: false },
        }
    }

    /// The state buffers' names (PyTorch's) and sizes.
    pub fn buffers(&self) -> Vec<(&'static str, usize)> {
        if self.factored {
            vec![("exp_avg_sq_row", self.batches * self.rows), ("exp_avg_sq_col", self.batches * self.cols)]
        } else {
            vec![("exp_avg_sq", self.cols)]
        }
    }
}

/// One Adafactor step's settings: learning rate, weight decay, clipping coefficient, step `t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdafactorStep {
    pub lr: f64,
    pub weight_decay: f64,
    pub grad_scale: f64,
    pub t: u64,
}

/// One update of parameter `p` with gradient `g` (times `grad_scale`), `b2 = 1 - t^-0.8`:
/// ```text
/// factored: R <- b2 R + (1-b2) mean_cols(g^2 + eps) ; C <- b2 C + (1-b2) mean_rows(g^2 + eps)
///           u = g / sqrt(R_i / mean(R) * C_j)
/// vector:   V <- b2 V + (1-b2) (g^2 + eps) ;  u = g / sqrt(V)
/// u <- lr * u / max(1, RMS(u) / clip_threshold)
/// p <- p - wd * lr * p - u
/// ```
/// `bufs` as [`Factoring::buffers`] names them. Sums are taken in f64, in a fixed order.
pub fn adafactor_step(p: &Var, grad: &Tensor, bufs: &mut [Buf], f: Factoring, h: &AdafactorStep) -> Result<()> {
    update(p, grad, bufs, &mut |s| {
        match s {
            Slices::F32(p, g, b) => step(p, g, b, f, h),
            Slices::F64(p, g, b) => step(p, g, b, f, h),
        }
        Ok(())
    })
}

fn step<T: Real>(p: &mut [T], g: &[T], mut b: Vec<&mut [T]>, f: Factoring, h: &AdafactorStep) {
    let beta2t = 1.0 - (h.t as f64).powf(DECAY_RATE);
    let gs = h.grad_scale;
    let sq = |x: T| (x.as_f64() * gs).powi(2) + EPS;
    let ema = |s: &mut T, x: f64| *s = T::from(beta2t * s.as_f64() + (1.0 - beta2t) * x).unwrap();
    // the inverse square root of each element's second-moment estimate: rf[row] * cf[col]
    let (rf, cf, cols) = if f.factored {
        let [row, col] = &mut b[..] else { unreachable!("factored Adafactor keeps two buffers") };
        row.par_iter_mut().enumerate().for_each(|(i, r)| {
            ema(r, g[i * f.cols..(i + 1) * f.cols].iter().map(|&x| sq(x)).sum::<f64>() / f.cols as f64)
        });
        let sums = column_sums(g, f, &sq);
        col.iter_mut().zip(&sums).for_each(|(c, s)| ema(c, s / f.rows as f64));
        let means: Vec<f64> =
            row.chunks(f.rows).map(|r| r.iter().map(|x| x.as_f64()).sum::<f64>() / f.rows as f64).collect();
        let rf: Vec<f64> = row.iter().enumerate().map(|(i, r)| 1.0 / (r.as_f64() / means[i / f.rows]).sqrt()).collect();
        let cf: Vec<f64> = col.iter().map(|c| 1.0 / c.as_f64().sqrt()).collect();
        (rf, cf, f.cols)
    } else {
        let v = &mut *b[0];
        v.par_iter_mut().zip(g.par_iter()).for_each(|(v, &x)| ema(v, sq(x)));
        (Vec::new(), v.iter().map(|x| 1.0 / x.as_f64().sqrt()).collect(), g.len().max(1))
    };
    // element j of row r of the `[rows, cols]` view (a vector is one row)
    let inv = |r: usize, j: usize| if f.factored { rf[r] * cf[(r / f.rows) * cols + j] } else { cf[j] };
    let sum_sq: f64 = g
        .par_chunks(cols)
        .enumerate()
        .map(|(r, g)| g.iter().enumerate().map(|(j, &x)| (x.as_f64() * gs * inv(r, j)).powi(2)).sum::<f64>())
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    let rms = (sum_sq / g.len().max(1) as f64).sqrt();
    let scale = h.lr / (rms / CLIP_THRESHOLD).max(1.0);
    let shrink = 1.0 - h.weight_decay * h.lr;
    p.par_chunks_mut(cols).zip(g.par_chunks(cols)).enumerate().for_each(|(r, (p, g))| {
        for (j, (p, &x)) in p.iter_mut().zip(g).enumerate() {
            let u = scale * x.as_f64() * gs * inv(r, j);
            *p = T::from(p.as_f64() * shrink - u).unwrap();
        }
    });
}

/// Per batch and column, the sum over rows of `sq(g)` `[batches * cols]`: rows taken 64 at a time
/// in parallel, the partial sums added in order (the same bits whatever the thread count).
fn column_sums<T: Real>(g: &[T], f: Factoring, sq: &(dyn Fn(T) -> f64 + Sync)) -> Vec<f64> {
    const ROWS: usize = 64;
    let mut out = vec![0.0; f.batches * f.cols];
    for (batch, sums) in out.chunks_mut(f.cols).enumerate() {
        let m = &g[batch * f.rows * f.cols..(batch + 1) * f.rows * f.cols];
        let partials: Vec<Vec<f64>> = m
            .par_chunks(ROWS * f.cols)
            .map(|rows| {
                let mut s = vec![0.0; f.cols];
                for row in rows.chunks(f.cols) {
                    s.iter_mut().zip(row).for_each(|(s, &x)| *s += sq(x));
                }
                s
            })
            .collect();
        for part in &partials {
            sums.iter_mut().zip(part).for_each(|(s, p)| *s += p);
        }
    }
    out
}
