//! The optimizer a run uses (`--optim`, transformers' `optim` names): AdamW, SGD, Lion or
//! Adafactor, behind one interface for the training loop and the checkpoints.

use super::adafactor::{adafactor_step, AdafactorStep, Factoring};
use super::adamw8bit::{adamw8bit_step, Moments8};
use super::elementwise::{lion_step, sgd_step, LionStep};
use super::inplace::Buf;
use super::{AdamStep, AdamW, AdamWConfig, OptimizerSettings};
use anyhow::{ensure, Context, Result};
use candle_core::{Tensor, Var};

/// transformers' `optim` values dpo-rs implements (`--optim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    /// `torch.optim.AdamW` (transformers' default; `adamw_torch_fused` is the same arithmetic).
    #[default]
    #[cfg_attr(feature = "cli", value(name = "adamw_torch", alias = "adamw_torch_fused"))]
    AdamwTorch,
    /// `torch.optim.SGD` without momentum: no state.
    #[cfg_attr(feature = "cli", value(name = "sgd"))]
    Sgd,
    /// bitsandbytes' 32-bit Lion (one moment, 4 bytes per parameter).
    #[cfg_attr(feature = "cli", value(name = "lion_32bit"))]
    Lion32bit,
    /// transformers' Adafactor (factored second moment: a row and a column vector per matrix).
    #[cfg_attr(feature = "cli", value(name = "adafactor"))]
    Adafactor,
    /// bitsandbytes' `AdamW8bit`: block-wise 8-bit moments (2.03 bytes per parameter).
    #[cfg_attr(feature = "cli", value(name = "adamw_8bit", alias = "adamw_bnb_8bit", alias = "paged_adamw_8bit"))]
    Adamw8bit,
}

impl OptimKind {
    /// transformers' name.
    pub fn name(&self) -> &'static str {
        match self {
            OptimKind::AdamwTorch => "adamw_torch",
            OptimKind::Sgd => "sgd",
            OptimKind::Lion32bit => "lion_32bit",
            OptimKind::Adafactor => "adafactor",
            OptimKind::Adamw8bit => "adamw_8bit",
        }
    }
}

impl std::fmt::Display for OptimKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The state of a run's optimizer. AdamW may be sharded across ranks (ZeRO stage 1); the others
/// keep whole state on every rank.
pub enum Optimizer {
    AdamW(AdamW),
    /// 8-bit AdamW: each parameter's moments ([`Moments8`]).
    AdamW8bit {
        config: AdamWConfig,
        step: u64,
        state: Vec<Moments8>,
        decay: Vec<bool>,
    },
    /// SGD, Lion and Adafactor: per parameter, its state buffers (named in [`Optimizer::state`]).
    Other {
        kind: OptimKind,
        config: AdamWConfig,
        step: u64,
        state: Vec<Vec<Buf>>,
        shapes: Vec<Vec<usize>>,
    },
}

impl Optimizer {
    /// A fresh optimizer of `s.optim` over `params`; AdamW sharded over `ranks` (this one being
    /// `rank`) with `s.zero_stage` 1. Errors: `zero_stage` 1 with another optimizer; parameters
    /// other than f32/f64.
    pub fn new(s: &OptimizerSettings, params: &[Var], rank: usize, ranks: usize) -> Result<Self> {
        let (kind, config) = (s.optim, s.adam);
        if kind == OptimKind::AdamwTorch {
            return Ok(Optimizer::AdamW(match s.zero_stage {
                1 => AdamW::sharded(params, config, rank, ranks)?,
                _ => AdamW::new(params, config)?,
            }));
        }
        ensure!(s.zero_stage == 0, "--zero-stage 1 shards AdamW's moments; --optim {kind} keeps its state whole on every rank: use --zero-stage 0");
        if kind == OptimKind::Adamw8bit {
            ensure!(
                params.iter().all(|p| p.dtype() == candle_core::DType::F32),
                "--optim adamw_8bit updates f32 parameters only"
            );
            let state = params.iter().map(|p| Moments8::zeros(p.elem_count())).collect();
            let decay = params.iter().map(|p| p.rank() > 1).collect();
            return Ok(Optimizer::AdamW8bit { config, step: 0, state, decay });
        }
        let shapes: Vec<Vec<usize>> = params.iter().map(|p| p.dims().to_vec()).collect();
        let state = params
            .iter()
            .zip(&shapes)
            .map(|(p, dims)| Self::sizes(kind, dims).into_iter().map(|(_, n)| Buf::zeros_like(p, n)).collect())
            .collect::<Result<_>>()?;
        Ok(Optimizer::Other { kind, config, step: 0, state, shapes })
    }

    /// The state buffers of a parameter of shape `dims` (PyTorch's names) and their sizes.
    fn sizes(kind: OptimKind, dims: &[usize]) -> Vec<(&'static str, usize)> {
        match kind {
            OptimKind::AdamwTorch => vec![("exp_avg", dims.iter().product()), ("exp_avg_sq", dims.iter().product())],
            OptimKind::Sgd => vec![],
            OptimKind::Lion32bit => vec![("exp_avg", dims.iter().product())],
            OptimKind::Adafactor => Factoring::of(dims).buffers(),
            OptimKind::Adamw8bit => unreachable!("8-bit AdamW keeps its own state"),
        }
    }

    /// Updates applied (the step `t` of AdamW's bias correction and Adafactor's decay).
    pub fn steps(&self) -> u64 {
        match self {
            Optimizer::AdamW(a) => a.step,
            Optimizer::AdamW8bit { step, .. } | Optimizer::Other { step, .. } => *step,
        }
    }

    /// Sets the updates applied (resuming).
    pub fn set_steps(&mut self, t: u64) {
        match self {
            Optimizer::AdamW(a) => a.step = t,
            Optimizer::AdamW8bit { step, .. } | Optimizer::Other { step, .. } => *step = t,
        }
    }

    /// Bytes of state this rank holds.
    pub fn state_bytes(&self) -> usize {
        match self {
            Optimizer::AdamW(a) => a.state_bytes(),
            Optimizer::AdamW8bit { state, .. } => state.iter().map(Moments8::bytes).sum(),
            Optimizer::Other { state, .. } => state.iter().flatten().map(Buf::bytes).sum(),
        }
    }

    /// Whether the state is sharded across ranks (ZeRO stage 1).
    pub fn is_sharded(&self) -> bool {
        matches!(self, Optimizer::AdamW(a) if a.is_sharded())
    }

    /// One update of every parameter at learning rate `lr`, each gradient times `grad_scale` (the
    /// clipping coefficient) first. Weight decay applies to tensors of rank > 1, as transformers
    /// groups them.
    pub fn step(&mut self, params: &[Var], grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        let (kind, config, step, state, shapes) = match self {
            Optimizer::AdamW(a) => return a.step(params, grads, lr, grad_scale),
            Optimizer::AdamW8bit { config, step, state, decay } => {
                *step += 1;
                for (((p, g), m), &d) in params.iter().zip(grads).zip(state.iter_mut()).zip(decay.iter()) {
                    let weight_decay = if d { config.weight_decay } else { 0.0 };
                    adamw8bit_step(p, g, m, &AdamStep::new(config, lr, weight_decay, grad_scale, *step))?;
                }
                return Ok(());
            }
            Optimizer::Other { kind, config, step, state, shapes } => (kind, config, step, state, shapes),
        };
        *step += 1;
        for (((p, g), bufs), dims) in params.iter().zip(grads).zip(state.iter_mut()).zip(shapes.iter()) {
            let weight_decay = if dims.len() > 1 { config.weight_decay } else { 0.0 };
            match kind {
                OptimKind::Sgd => sgd_step(p, g, lr, weight_decay, grad_scale)?,
                OptimKind::Lion32bit => {
                    let h = LionStep { lr, beta1: config.beta1, beta2: config.beta2, weight_decay, grad_scale };
                    lion_step(p, g, bufs, &h)?
                }
                OptimKind::Adafactor => {
                    let h = AdafactorStep { lr, weight_decay, grad_scale, t: *step };
                    adafactor_step(p, g, bufs, Factoring::of(dims), &h)?
                }
                OptimKind::AdamwTorch | OptimKind::Adamw8bit => unreachable!("AdamW has its own variants"),
            }
        }
        Ok(())
    }

    /// Parameter `i`'s state as named f32 tensors (PyTorch's names: `exp_avg`, `exp_avg_sq`,
    /// `exp_avg_sq_row`, `exp_avg_sq_col`); `shape` is the parameter's. Sharded AdamW gathers
    /// the ranks' slices (a collective: every rank calls it for the same `i`).
    pub fn state(&self, i: usize, shape: &[usize]) -> Result<Vec<(&'static str, Tensor)>> {
        match self {
            Optimizer::AdamW(a) => {
                let (m, v) = a.moments(i, shape)?;
                Ok(vec![("exp_avg", m), ("exp_avg_sq", v)])
            }
            Optimizer::AdamW8bit { state, .. } => state[i].tensors(),
            Optimizer::Other { kind, state, .. } => Self::sizes(*kind, shape)
                .into_iter()
                .zip(&state[i])
                .map(|((name, n), b)| Ok((name, b.to_tensor(&[n])?)))
                .collect(),
        }
    }

    /// Restores parameter `i`'s state (shape `shape`) from the tensors `saved` finds by name.
    /// Errors: a missing tensor (named), one of another size.
    pub fn restore(&mut self, i: usize, shape: &[usize], saved: &dyn Fn(&str) -> Option<Tensor>) -> Result<()> {
        let kind = match self {
            Optimizer::AdamW(_) => OptimKind::AdamwTorch,
            Optimizer::AdamW8bit { state, .. } => {
                let mut found = Vec::new();
                for name in state[i].names() {
                    found.push(saved(name).with_context(|| format!("no optimizer state `{name}` (adamw_8bit)"))?);
                }
                return state[i].restore(&found);
            }
            Optimizer::Other { kind, .. } => *kind,
        };
        let names = Self::sizes(kind, shape);
        let mut found = Vec::with_capacity(names.len());
        for (name, _) in &names {
            found.push(saved(name).with_context(|| format!("no optimizer state `{name}` ({kind})"))?);
        }
        match self {
            Optimizer::AdamW(a) => a.restore_moments(i, &found[0], &found[1]),
            Optimizer::AdamW8bit { .. } => unreachable!("restored above"),
            Optimizer::Other { state, .. } => {
                for ((b, t), (name, _)) in state[i].iter_mut().zip(&found).zip(&names) {
                    b.restore(t).with_context(|| format!("optimizer state `{name}`"))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use serde_json::Value;

    fn fixture() -> Value {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/optimizer_reference_steps.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    /// The fixture's parameters `w` [4, 3] and `b` [3] (see scripts/oracle/optimizer_reference_steps.py).
    fn params() -> Vec<Var> {
        let w: Vec<f64> = (0..12).map(|i| 0.5 * (0.3 * i as f64).cos()).collect();
        let b: Vec<f64> = (0..3).map(|i| 0.1 * i as f64).collect();
        vec![
            Var::from_tensor(&Tensor::from_vec(w, (4, 3), &Device::Cpu).unwrap()).unwrap(),
            Var::from_tensor(&Tensor::from_vec(b, 3, &Device::Cpu).unwrap()).unwrap(),
        ]
    }

    /// The fixture's gradients at step `t` (before the clipping coefficient).
    fn grads(ps: &[Var], t: usize) -> Vec<Tensor> {
        ps.iter()
            .enumerate()
            .map(|(k, p)| {
                let g: Vec<f64> = (0..p.elem_count())
                    .map(|i| (0.37 * i as f64 + 0.91 * t as f64 + k as f64).sin() * (1.0 + 0.05 * i as f64))
                    .collect();
                Tensor::from_vec(g, p.dims(), &Device::Cpu).unwrap()
            })
            .collect()
    }

    fn settings(kind: OptimKind, f: &Value) -> OptimizerSettings {
        let mut s = OptimizerSettings { optim: kind, ..Default::default() };
        s.adam.weight_decay = f["weight_decay"].as_f64().unwrap();
        s
    }

    fn assert_close(ps: &[Var], want: &Value, what: &str) {
        for (p, key) in ps.iter().zip(["w", "b"]) {
            let got = p.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for (i, (g, w)) in got.iter().zip(want[key].as_array().unwrap()).enumerate() {
                let w = w.as_f64().unwrap();
                assert!((g - w).abs() < 1e-12 * w.abs().max(1.0), "{what} {key}[{i}]: {g} vs reference {w}");
            }
        }
    }

    #[test]
    fn sgd_lion_and_adafactor_match_their_reference_implementations_over_20_steps() {
        let f = fixture();
        let (lr, scale) = (f["lr"].as_f64().unwrap(), f["grad_scale"].as_f64().unwrap());
        for kind in [OptimKind::Sgd, OptimKind::Lion32bit, OptimKind::Adafactor] {
            let ps = params();
            let mut opt = Optimizer::new(&settings(kind, &f), &ps, 0, 1).unwrap();
            for t in 1..=20 {
                opt.step(&ps, &grads(&ps, t), lr, scale).unwrap();
                if t == 1 || t == 20 {
                    assert_close(&ps, &f["optimizers"][kind.name()][format!("step{t}")], &format!("{kind} step {t}"));
                }
            }
            assert_eq!(opt.steps(), 20);
        }
    }

    /// 20 updates of `kind` on the 8-bit fixture's parameters and gradients (f32).
    fn run_8bit_fixture(kind: OptimKind, f: &Value) -> Vec<Vec<f32>> {
        let w: Vec<f32> = (0..4096).map(|i| (0.5 * (0.3 * i as f64).cos()) as f32).collect();
        let b: Vec<f32> = (0..3).map(|i| (0.1 * i as f64) as f32).collect();
        let ps = vec![
            Var::from_tensor(&Tensor::from_vec(w, (64, 64), &Device::Cpu).unwrap()).unwrap(),
            Var::from_tensor(&Tensor::from_vec(b, 3, &Device::Cpu).unwrap()).unwrap(),
        ];
        let mut opt = Optimizer::new(&settings(kind, f), &ps, 0, 1).unwrap();
        for t in 1..=f["steps"].as_u64().unwrap() {
            let grads: Vec<Tensor> = ps
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let g: Vec<f32> = (0..p.elem_count())
                        .map(|i| {
                            let x =
                                (0.37 * i as f64 + 0.91 * t as f64 + k as f64).sin() * (1.0 + 0.05 * (i % 97) as f64);
                            (x * f["grad_scale"].as_f64().unwrap()) as f32
                        })
                        .collect();
                    Tensor::from_vec(g, p.dims(), &Device::Cpu).unwrap()
                })
                .collect();
            opt.step(&ps, &grads, f["lr"].as_f64().unwrap(), 1.0).unwrap();
        }
        ps.iter().map(|p| p.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
    }

    #[test]
    fn adamw_8bit_follows_bitsandbytes_and_stays_near_f32_adamw() {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/adamw_8bit_reference.json");
        let f: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let ours = run_8bit_fixture(OptimKind::Adamw8bit, &f);
        let full = run_8bit_fixture(OptimKind::AdamwTorch, &f);
        let bnb: Vec<Vec<f32>> = ["w", "b"]
            .iter()
            .map(|k| f["adamw_8bit"][k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect();
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let moved = max_diff(&full[0], &params_8bit_start());
        let (to_bnb, to_f32) = (max_diff(&ours[0], &bnb[0]), max_diff(&ours[0], &full[0]));
        let mean_to_f32 = ours[0].iter().zip(&full[0]).map(|(x, y)| (x - y).abs()).sum::<f32>() / 4096.0;
        println!("8-bit [64, 64] after 20 steps: max |ours - bitsandbytes| {to_bnb:.2e}, |ours - f32 AdamW| max {to_f32:.2e} mean {mean_to_f32:.2e}, max movement {moved:.2e}");
        // the 32-bit path of a small tensor is AdamW's
        assert!(max_diff(&ours[1], &bnb[1]) < 1e-7 && max_diff(&ours[1], &full[1]) < 1e-7);
        // f32 rounding: a value at a code's boundary may round to the other code
        assert!(to_bnb < 2e-5, "8-bit AdamW vs bitsandbytes: {to_bnb}");
        // 8-bit moments: within a tenth of the largest movement of an element, 1/100 on average
        assert!(
            to_f32 < 0.1 * moved && mean_to_f32 < 0.01 * moved,
            "8-bit AdamW vs f32 AdamW: {to_f32} of a movement of {moved}"
        );
    }

    fn params_8bit_start() -> Vec<f32> {
        (0..4096).map(|i| (0.5 * (0.3 * i as f64).cos()) as f32).collect()
    }

    #[test]
    fn state_saved_and_restored_continues_the_same_run() {
        let f = fixture();
        for kind in [OptimKind::Lion32bit, OptimKind::Adafactor, OptimKind::AdamwTorch, OptimKind::Adamw8bit] {
            // f32, with a [64, 64] tensor beside the fixture's (8-bit AdamW quantizes it)
            let to_f32 = |ps: Vec<Var>| -> Vec<Var> {
                let big: Vec<f32> = (0..4096).map(|i| (i as f32 * 0.01).sin()).collect();
                let big = Tensor::from_vec(big, (64, 64), &Device::Cpu).unwrap();
                ps.iter()
                    .map(|p| p.to_dtype(candle_core::DType::F32).unwrap())
                    .chain([big])
                    .map(|t| Var::from_tensor(&t).unwrap())
                    .collect()
            };
            let g32 = |ps: &[Var], t| -> Vec<Tensor> {
                grads(ps, t).iter().map(|g| g.to_dtype(candle_core::DType::F32).unwrap()).collect()
            };
            let (a, b) = (to_f32(params()), to_f32(params()));
            let s = settings(kind, &f);
            let mut whole = Optimizer::new(&s, &a, 0, 1).unwrap();
            let mut first = Optimizer::new(&s, &b, 0, 1).unwrap();
            for t in 1..=3 {
                whole.step(&a, &g32(&a, t), 0.01, 0.5).unwrap();
                first.step(&b, &g32(&b, t), 0.01, 0.5).unwrap();
            }
            let saved: Vec<_> = b.iter().enumerate().map(|(i, p)| first.state(i, p.dims()).unwrap()).collect();
            let mut resumed = Optimizer::new(&s, &b, 0, 1).unwrap();
            for (i, p) in b.iter().enumerate() {
                let find = |name: &str| saved[i].iter().find(|(n, _)| *n == name).map(|(_, t)| t.clone());
                resumed.restore(i, p.dims(), &find).unwrap();
            }
            resumed.set_steps(first.steps());
            for t in 4..=6 {
                whole.step(&a, &g32(&a, t), 0.01, 0.5).unwrap();
                resumed.step(&b, &g32(&b, t), 0.01, 0.5).unwrap();
            }
            for (x, y) in a.iter().zip(&b) {
                let (x, y) = (
                    x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                assert_eq!(x, y, "{kind}: resumed from saved state");
            }
            let err = resumed.restore(0, b[0].dims(), &|_| None).unwrap_err().to_string();
            assert!(err.contains("no optimizer state `"), "{kind}: {err}");
        }
    }

    #[test]
    fn state_memory_per_parameter() {
        // [4, 3] and [3]: Lion one f32 moment per element; Adafactor rows + columns and the vector
        let f = fixture();
        let ps: Vec<Var> =
            params().iter().map(|p| Var::from_tensor(&p.to_dtype(candle_core::DType::F32).unwrap()).unwrap()).collect();
        let bytes = |k| Optimizer::new(&settings(k, &f), &ps, 0, 1).unwrap().state_bytes();
        assert_eq!(bytes(OptimKind::AdamwTorch), 2 * 4 * 15);
        assert_eq!(bytes(OptimKind::Lion32bit), 4 * 15);
        assert_eq!(bytes(OptimKind::Adafactor), 4 * (4 + 3 + 3));
        assert_eq!(bytes(OptimKind::Sgd), 0);
        // under 4096 elements 8-bit AdamW keeps f32 moments; a [64, 64] tensor: 2 bytes + 2 f32 per 256
        assert_eq!(bytes(OptimKind::Adamw8bit), 2 * 4 * 15);
        assert_eq!(Moments8::zeros(4096).bytes(), 2 * 4096 + 2 * 4 * 16);
        let mut s = settings(OptimKind::Lion32bit, &f);
        s.zero_stage = 1;
        let err = Optimizer::new(&s, &ps, 0, 2).err().unwrap().to_string();
        assert!(err.contains("--zero-stage 1 shards AdamW's moments"), "{err}");
    }
}
