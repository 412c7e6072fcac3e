//! The optimiser step: global-norm clipping, fused in-place AdamW (and SGD, Lion, Adafactor:
//! [`optimizer::Optimizer`]), learning-rate schedules.

pub mod adafactor;
pub mod adamw8bit;
pub mod dynamic_map;
pub mod elementwise;
mod inplace;
pub mod optimizer;

pub use inplace::Buf;
pub use optimizer::{OptimKind, Optimizer};

use anyhow::{bail, ensure, Result};
use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor, Var};
use dpo_kernels::Real;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

/// The optimizer's defaults (TRL 1.16's `DPOConfig` / transformers' `TrainingArguments`).
pub mod defaults {
    use super::{OptimKind, ScheduleKind};

    /// Peak learning rate of preference optimisation (TRL `DPOConfig`).
    pub const LEARNING_RATE: f64 = 1e-6;
    /// Peak learning rate of supervised fine-tuning (TRL `SFTConfig`).
    pub const SFT_LEARNING_RATE: f64 = 2e-5;
    pub const WARMUP_STEPS: usize = 0;
    /// Warm-up as a fraction of the run's steps, when the warm-up steps are 0 (TRL `warmup_ratio`).
    pub const WARMUP_RATIO: f64 = 0.0;
    pub const LR_SCHEDULER_TYPE: ScheduleKind = ScheduleKind::Linear;
    pub const MAX_GRAD_NORM: f64 = 1.0;
    pub const WEIGHT_DECAY: f64 = 0.0;
    pub const ADAM_BETA1: f64 = 0.9;
    pub const ADAM_BETA2: f64 = 0.999;
    pub const ADAM_EPSILON: f64 = 1e-8;
    /// ZeRO stage across MPI ranks: 0 keeps AdamW's moments whole on every rank.
    pub const ZERO_STAGE: u8 = 0;
    /// The optimizer (transformers' `optim`): torch's AdamW.
    pub const OPTIM: OptimKind = OptimKind::AdamwTorch;
}

/// How the weights are updated after each step's backward pass: the learning rate and its
/// schedule, clipping, AdamW, and (across ranks) the sharding of its state. Each field is a flag
/// of the same name (`--learning-rate`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct OptimizerSettings {
    /// The optimizer (transformers' `optim` names): adamw_torch, sgd, lion_32bit (Lion's betas are --adam-beta1/2), adafactor (transformers' Adafactor as its Trainer sets it up), adamw_8bit (bitsandbytes' block-wise 8-bit AdamW).
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = defaults::OPTIM))]
    pub optim: OptimKind,
    /// Peak learning rate [sft: 2e-5].
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::LEARNING_RATE))]
    pub learning_rate: f64,
    /// Steps of linear warm-up from 0 to --learning-rate.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::WARMUP_STEPS))]
    pub warmup_steps: usize,
    /// Warm-up as a fraction of the run's optimiser steps (rounded up), when --warmup-steps is 0.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::WARMUP_RATIO))]
    pub warmup_ratio: f64,
    /// Schedule after warm-up: linear, cosine or constant.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::LR_SCHEDULER_TYPE))]
    pub lr_scheduler_type: ScheduleKind,
    /// Clip the global gradient norm to this (0: no clipping).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::MAX_GRAD_NORM))]
    pub max_grad_norm: f64,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub adam: AdamWConfig,
    /// With several ranks (`mpirun -np N`): 1 shards AdamW's moments across the ranks (ZeRO stage 1: each keeps 1/N of the optimizer state), 0 keeps them whole on every rank.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::ZERO_STAGE, value_parser = clap::value_parser!(u8).range(0..=1)))]
    pub zero_stage: u8,
}

impl Default for OptimizerSettings {
    fn default() -> Self {
        Self {
            optim: defaults::OPTIM,
            learning_rate: defaults::LEARNING_RATE,
            warmup_steps: defaults::WARMUP_STEPS,
            warmup_ratio: defaults::WARMUP_RATIO,
            lr_scheduler_type: defaults::LR_SCHEDULER_TYPE,
            max_grad_norm: defaults::MAX_GRAD_NORM,
            adam: AdamWConfig::default(),
            zero_stage: defaults::ZERO_STAGE,
        }
    }
}

impl OptimizerSettings {
    /// Steps of warm-up in a run of `steps` optimiser steps: `warmup_steps`, else
    /// `ceil(warmup_ratio * steps)` (transformers' `get_warmup_steps`).
    pub fn warmup(&self, steps: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * steps as f64).ceil() as usize
        }
    }

    /// The learning rate of optimiser step `step` (1-based) of `steps`: warm-up, then the schedule.
    pub fn learning_rate_at(&self, step: usize, steps: usize) -> f64 {
        self.learning_rate * lr_factor(self.lr_scheduler_type, step - 1, self.warmup(steps), steps)
    }

    /// Refuses a warm-up ratio outside [0, 1].
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (0.0..=1.0).contains(&self.warmup_ratio),
            "--warmup-ratio must be in [0, 1], got {}",
            self.warmup_ratio
        );
        Ok(())
    }

    /// A fresh optimizer over `vars` (`--optim`); AdamW whole, or (`zero_stage` 1) sharded across
    /// the `ranks` of a job, this one being `rank`. Errors: `zero_stage` 1 with another optimizer.
    pub fn optimizer(&self, vars: &[Var], rank: usize, ranks: usize) -> Result<Optimizer> {
        Optimizer::new(self, vars, rank, ranks)
    }
}

/// AdamW hyper-parameters (Loshchilov & Hutter 2019, Algorithm 2; PyTorch defaults as in TRL,
/// [`defaults`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct AdamWConfig {
    #[cfg_attr(feature = "cli", arg(long = "adam-beta1", default_value_t = defaults::ADAM_BETA1))]
    pub beta1: f64,
    #[cfg_attr(feature = "cli", arg(long = "adam-beta2", default_value_t = defaults::ADAM_BETA2))]
    pub beta2: f64,
    #[cfg_attr(feature = "cli", arg(long = "adam-epsilon", default_value_t = defaults::ADAM_EPSILON))]
    pub eps: f64,
    /// Decoupled weight decay (not applied to norms and biases).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults::WEIGHT_DECAY))]
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: defaults::ADAM_BETA1,
            beta2: defaults::ADAM_BETA2,
            eps: defaults::ADAM_EPSILON,
            weight_decay: defaults::WEIGHT_DECAY,
        }
    }
}

enum Moments {
    F32(Vec<f32>, Vec<f32>),
    F64(Vec<f64>, Vec<f64>),
}

/// AdamW with decoupled weight decay and bias correction, updating each parameter in place in
/// one pass (no temporaries): with `t` the step number, `g` the (clipped) gradient,
/// ```text
/// p <- p - lr * wd * p                      (not for 1-D tensors: norms, biases — as transformers)
/// m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
/// p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
/// ```
/// which is PyTorch's `torch.optim.AdamW` arithmetic.
///
/// Sharded ([`AdamW::sharded`], ZeRO stage 1: Rajbhandari et al. 2020, "ZeRO: Memory
/// Optimizations Toward Training Trillion Parameter Models", §5.1), each rank of a job keeps the
/// moments of its slice of the parameters only, updates that slice, and the ranks then exchange
/// their slices ([`AdamW::step`] ends with an all-gather): the same arithmetic on every element,
/// `1/N` of the optimizer state per rank.
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    moments: Vec<Moments>,
    decay: Vec<bool>,
    /// Per parameter: the elements this rank updates (all of them unless sharded).
    owned: Vec<Range<usize>>,
    /// Sharded: per parameter, every rank's elements (`None`: not sharded).
    shards: Option<Vec<Vec<Range<usize>>>>,
}

/// One AdamW step's per-element constants in the parameter's dtype, each computed in f64 and
/// rounded once (as torch and bitsandbytes pass Python floats to f32 kernels).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamStep<T> {
    b1: T,
    b2: T,
    one_b1: T,
    one_b2: T,
    eps: T,
    grad_scale: T,
    /// `1 - lr * weight_decay`.
    shrink: T,
    /// `lr / (1 - b1^t)`.
    step: T,
    /// `sqrt(1 - b2^t)`.
    bc2_sqrt: T,
}

impl<T: Real> AdamStep<T> {
    /// The constants of update `t` (1-based) at learning rate `lr` with `weight_decay`, the
    /// gradient times `grad_scale` (the clipping coefficient).
    pub(crate) fn new(cfg: &AdamWConfig, lr: f64, weight_decay: f64, grad_scale: f64, t: u64) -> Self {
        let c = |x: f64| T::from(x).unwrap();
        let t = t as i32;
        Self {
            b1: c(cfg.beta1),
            b2: c(cfg.beta2),
            one_b1: c(1.0 - cfg.beta1),
            one_b2: c(1.0 - cfg.beta2),
            eps: c(cfg.eps),
            grad_scale: c(grad_scale),
            shrink: c(1.0 - lr * weight_decay),
            step: c(lr / (1.0 - cfg.beta1.powi(t))),
            bc2_sqrt: c((1.0 - cfg.beta2.powi(t)).sqrt()),
        }
    }

    /// AdamW on the elements of `p` with gradient `g` and moments `m`, `v` (one length), torch's
    /// arithmetic ([`AdamW`]).
    pub(crate) fn apply(&self, p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
        let k = self;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * k.grad_scale;
            *m = k.b1 * *m + k.one_b1 * g;
            *v = k.b2 * *v + k.one_b2 * g * g;
            *p = *p * k.shrink - k.step * *m / (v.sqrt() / k.bc2_sqrt + k.eps);
        }
    }
}

struct Update<'a, T> {
    /// The elements of the parameter (and of `grad`) to update; `m` and `v` hold just these.
    range: Range<usize>,
    grad: &'a [T],
    m: RefCell<&'a mut [T]>,
    v: RefCell<&'a mut [T]>,
    k: AdamStep<T>,
}

impl<T: Real> InplaceOp1 for Update<'_, T> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("adamw: parameter is not contiguous") };
        let Some(p) = T::slice_mut(s) else { candle_core::bail!("adamw: parameter dtype differs from its state") };
        let p = &mut p[a..b][self.range.clone()];
        let grad = &self.grad[self.range.clone()];
        let (mut m, mut v) = (self.m.borrow_mut(), self.v.borrow_mut());
        let k = self.k;
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK).zip(grad.par_chunks(CHUNK)))
            .for_each(|((p, m), (v, g))| k.apply(p, g, m, v));
        Ok(())
    }
}

impl AdamW {
    /// State for `params` (zero moments). 1-D parameters get no weight decay.
    pub fn new(params: &[Var], config: AdamWConfig) -> Result<Self> {
        let owned = params.iter().map(|p| 0..p.elem_count()).collect();
        Self::with_owned(params, config, owned, None)
    }

    /// ZeRO stage 1 over `ranks` ranks, as rank `rank`: the parameters laid end to end are cut
    /// into `ranks` slices of equal length (a parameter may span two); this rank keeps the
    /// moments of slice `rank` only. Errors: parameters other than f32 (the all-gather is f32).
    pub fn sharded(params: &[Var], config: AdamWConfig, rank: usize, ranks: usize) -> Result<Self> {
        ensure!(params.iter().all(|p| p.dtype() == candle_core::DType::F32), "--zero-stage 1 needs f32 parameters");
        let total: usize = params.iter().map(|p| p.elem_count()).sum();
        let bound = |r: usize| (total as u128 * r as u128 / ranks.max(1) as u128) as usize;
        let mut shards = Vec::with_capacity(params.len());
        let mut offset = 0;
        for p in params {
            let n = p.elem_count();
            shards.push(
                (0..ranks)
                    .map(|r| {
                        bound(r).clamp(offset, offset + n) - offset..bound(r + 1).clamp(offset, offset + n) - offset
                    })
                    .collect::<Vec<_>>(),
            );
            offset += n;
        }
        let owned = shards.iter().map(|s: &Vec<Range<usize>>| s[rank].clone()).collect();
        Self::with_owned(params, config, owned, Some(shards))
    }

    fn with_owned(
        params: &[Var],
        config: AdamWConfig,
        owned: Vec<Range<usize>>,
        shards: Option<Vec<Vec<Range<usize>>>>,
    ) -> Result<Self> {
        let mut moments = Vec::with_capacity(params.len());
        for (p, r) in params.iter().zip(&owned) {
            let n = r.len();
            moments.push(match p.dtype() {
                candle_core::DType::F32 => Moments::F32(vec![0.0; n], vec![0.0; n]),
                candle_core::DType::F64 => Moments::F64(vec![0.0; n], vec![0.0; n]),
                d => bail!("AdamW: parameters of dtype {d:?} are not supported"),
            });
        }
        let decay = params.iter().map(|p| p.rank() > 1).collect();
        Ok(Self { config, step: 0, moments, decay, owned, shards })
    }

    /// Bytes of optimizer state this rank holds (the two moments).
    pub fn state_bytes(&self) -> usize {
        self.moments
            .iter()
            .map(|m| match m {
                Moments::F32(m, v) => 4 * (m.len() + v.len()),
                Moments::F64(m, v) => 8 * (m.len() + v.len()),
            })
            .sum()
    }

    /// Whether the state is sharded across ranks (ZeRO stage 1).
    pub fn is_sharded(&self) -> bool {
        self.shards.is_some()
    }

    /// One update of every parameter with learning rate `lr`, each gradient multiplied by
    /// `grad_scale` first (the clipping coefficient). Sharded, this rank updates its slice and
    /// the ranks then all-gather the parameters (a collective: every rank calls it).
    pub fn step(&mut self, params: &[Var], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let t = self.step;
        let cfg = self.config;
        for (((p, g), (mom, &decay)), range) in
            params.iter().zip(grads).zip(self.moments.iter_mut().zip(&self.decay)).zip(&self.owned)
        {
            if range.is_empty() {
                continue;
            }
            let g = g.contiguous()?;
            let (gs, gl) = g.storage_and_layout();
            let candle_core::Storage::Cpu(gs) = &*gs else { bail!("AdamW runs on the CPU") };
            let wd = if decay { cfg.weight_decay } else { 0.0 };
            macro_rules! run {
                ($t:ty, $m:expr, $v:expr) => {{
                    let grad = dpo_kernels::slice_of::<$t>(gs, gl, "adamw")?;
                    p.as_tensor().inplace_op1(&Update {
                        range: range.clone(),
                        grad,
                        m: RefCell::new(&mut $m[..]),
                        v: RefCell::new(&mut $v[..]),
                        k: AdamStep::<$t>::new(&cfg, lr, wd, grad_scale, t),
                    })?
                }};
            }
            match mom {
                Moments::F32(m, v) => run!(f32, m, v),
                Moments::F64(m, v) => run!(f64, m, v),
            }
        }
        if let Some(shards) = &self.shards {
            for (p, parts) in params.iter().zip(shards) {
                p.as_tensor().inplace_op1(&GatherSlices { parts })?;
            }
        }
        Ok(())
    }
}

/// ZeRO stage 1's exchange: every rank's updated slice of a parameter into every rank's copy.
struct GatherSlices<'a> {
    parts: &'a [Range<usize>],
}

impl InplaceOp1 for GatherSlices<'_> {
    fn name(&self) -> &'static str {
        "zero-all-gather"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("zero: parameter is not contiguous") };
        let CpuStorage::F32(p) = s else { candle_core::bail!("zero: the parameter is not f32") };
        let p = &mut p[a..b];
        let w = dpo_runtime::dist::world();
        let mine = p[self.parts[w.rank()].clone()].to_vec();
        let counts: Vec<usize> = self.parts.iter().map(|r| r.len()).collect();
        let displs: Vec<usize> = self.parts.iter().map(|r| r.start).collect();
        dpo_runtime::dist::all_gather_f32(&mine, p, &counts, &displs)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }
}

impl AdamW {
    /// The moments of parameter `i` as f32 tensors of `shape`: `(exp_avg, exp_avg_sq)`, PyTorch's
    /// names for `m` and `v`. Sharded, the ranks' slices are all-gathered (a collective: every
    /// rank calls it, for the same `i`). Errors: f64 moments (only f32 state is saved; f64
    /// policies are test models).
    pub fn moments(&self, i: usize, shape: &[usize]) -> Result<(Tensor, Tensor)> {
        let Moments::F32(m, v) = &self.moments[i] else { bail!("AdamW: saving f64 moments is not supported") };
        let full = |x: &[f32]| -> Result<Tensor> {
            let x = match &self.shards {
                None => x.to_vec(),
                Some(shards) => {
                    let parts = &shards[i];
                    let mut out = vec![0f32; parts.last().map_or(0, |r| r.end)];
                    let counts: Vec<usize> = parts.iter().map(|r| r.len()).collect();
                    let displs: Vec<usize> = parts.iter().map(|r| r.start).collect();
                    dpo_runtime::dist::all_gather_f32(x, &mut out, &counts, &displs)?;
                    out
                }
            };
            Ok(Tensor::from_vec(x, shape, &candle_core::Device::Cpu)?)
        };
        Ok((full(m)?, full(v)?))
    }

    /// Restores parameter `i`'s moments (as [`AdamW::moments`] gave them). Errors: a size or
    /// dtype that is not this parameter's.
    pub fn restore_moments(&mut self, i: usize, m: &Tensor, v: &Tensor) -> Result<()> {
        let Moments::F32(mm, vv) = &mut self.moments[i] else { bail!("AdamW: restoring f64 moments is not supported") };
        let (m, v) = (m.flatten_all()?.to_vec1::<f32>()?, v.flatten_all()?.to_vec1::<f32>()?);
        let n = self.shards.as_ref().map_or(mm.len(), |s| s[i].last().map_or(0, |r| r.end));
        ensure!(
            m.len() == n && v.len() == n,
            "AdamW: parameter {i} has {n} values, the saved moments {} and {}",
            m.len(),
            v.len()
        );
        let r = self.owned[i].clone();
        *mm = m[r.clone()].to_vec();
        *vv = v[r].to_vec();
        Ok(())
    }
}

/// Global L2 norm of all gradients, `sqrt(sum_i ||g_i||^2)` (accumulated in f64).
pub fn global_grad_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sq = 0.0;
    for g in grads {
        sq += tensor_sq_norm(g)?;
    }
    Ok(sq.sqrt())
}

/// `||t||^2` in f64.
pub fn tensor_sq_norm(t: &Tensor) -> Result<f64> {
    fn sq<T: Real>(t: &Tensor) -> candle_core::Result<f64> {
        dpo_kernels::cpu_slice!(T, t => s);
        // The chunks' sums are added in order: a parallel `sum` would group them as work
        // stealing falls out, and the norm (so the clipped update) would change with the load.
        let parts: Vec<f64> =
            s.par_chunks(1 << 14).map(|c| c.iter().map(|&x| x.as_f64() * x.as_f64()).sum::<f64>()).collect();
        Ok(parts.iter().sum())
    }
    fn dispatch(t: &Tensor) -> candle_core::Result<f64> {
        dpo_kernels::by_dtype!(t.dtype(), "grad-norm", sq(t))
    }
    Ok(dispatch(t)?)
}

/// The clipping coefficient of `torch.nn.utils.clip_grad_norm_`: `min(1, max_norm / (norm + 1e-6))`;
/// 1 when `max_norm` is 0 (no clipping).
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        1.0
    } else {
        (max_norm / (norm + 1e-6)).min(1.0)
    }
}

/// Learning-rate schedule after linear warm-up (transformers' `get_scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Linear decay to 0 at the last step.
    Linear,
    /// Half a cosine wave to 0 at the last step.
    Cosine,
    /// Constant after warm-up.
    Constant,
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            "constant" | "constant_with_warmup" => Ok(Self::Constant),
            _ => Err(format!("unknown lr_scheduler_type `{s}` (linear, cosine, constant)")),
        }
    }
}

impl std::fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Linear => "linear",
            Self::Cosine => "cosine",
            Self::Constant => "constant",
        })
    }
}

/// The learning-rate multiplier of optimiser step `step` (0-based) out of `total`, with
/// `warmup` warm-up steps: `step / warmup` during warm-up, then the schedule's decay from 1.
pub fn lr_factor(kind: ScheduleKind, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match kind {
        ScheduleKind::Constant => 1.0,
        ScheduleKind::Linear => (1.0 - progress).max(0.0),
        ScheduleKind::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_matches_the_reference_recurrence() {
        let p = Var::new(&[1.0f64, -2.0, 0.5, 3.0], &Device::Cpu).unwrap().as_tensor().reshape((2, 2)).unwrap();
        let p = Var::from_tensor(&p).unwrap();
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(std::slice::from_ref(&p), cfg).unwrap();
        let (mut want, mut m, mut v) = (vec![1.0f64, -2.0, 0.5, 3.0], [0.0; 4], [0.0; 4]);
        for t in 1..=3 {
            let g: Vec<f64> = want.iter().map(|x| x * x - 1.0).collect();
            let gt = Tensor::from_vec(g.clone(), (2, 2), &Device::Cpu).unwrap();
            opt.step(std::slice::from_ref(&p), &[gt], 0.01, 0.5).unwrap();
            for i in 0..4 {
                let gi = 0.5 * g[i];
                want[i] *= 1.0 - 0.01 * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                want[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = p.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn schedules_and_clipping() {
        assert_eq!(lr_factor(ScheduleKind::Linear, 0, 2, 10), 0.0);
        assert_eq!(lr_factor(ScheduleKind::Linear, 1, 2, 10), 0.5);
        assert_eq!(lr_factor(ScheduleKind::Linear, 2, 2, 10), 1.0);
        assert_eq!(lr_factor(ScheduleKind::Linear, 6, 2, 10), 0.5);
        assert!((lr_factor(ScheduleKind::Cosine, 6, 2, 10) - 0.5).abs() < 1e-12);
        assert_eq!(lr_factor(ScheduleKind::Constant, 9, 2, 10), 1.0);
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
        assert!((clip_coefficient(4.0, 1.0) - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
        let g = Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap();
        assert_eq!(global_grad_norm(&[g.clone(), g]).unwrap(), 50f64.sqrt());
    }
}
