//! Optimizers whose update of an element reads that element only: SGD and Lion. Each is one
//! parallel in-place pass over a parameter, its gradient and its state.

use super::inplace::{update, Buf, Slices};
use anyhow::Result;
use candle_core::{Tensor, Var};
use dpo_kernels::Real;
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Plain SGD as `torch.optim.SGD(lr, weight_decay)` computes it (transformers' `optim="sgd"`,
/// no momentum): `g <- grad_scale * g + wd * p ; p <- p - lr * g` (weight decay is an L2 term of
/// the gradient, coupled, as torch's SGD has it; transformers gives it to tensors of rank > 1).
/// No state.
pub fn sgd_step(p: &Var, grad: &Tensor, lr: f64, weight_decay: f64, grad_scale: f64) -> Result<()> {
    fn run<T: Real>(p: &mut [T], g: &[T], lr: f64, wd: f64, gs: f64) {
        let c = |x: f64| T::from(x).unwrap();
        let (lr, wd, gs) = (c(lr), c(wd), c(gs));
        p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(p, g)| {
            for (p, &g) in p.iter_mut().zip(g) {
                *p = *p - lr * (g * gs + wd * *p);
            }
        });
    }
    update(p, grad, &mut [], &mut |s| {
        match s {
            Slices::F32(p, g, _) => run(p, g, lr, weight_decay, grad_scale),
            Slices::F64(p, g, _) => run(p, g, lr, weight_decay, grad_scale),
        }
        Ok(())
    })
}

/// Lion's hyper-parameters (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
/// arXiv 2302.06675, Algorithm 2). transformers' `optim="lion_32bit"` passes its `adam_beta1`,
/// `adam_beta2` (0.9, 0.999) as Lion's betas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LionStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub grad_scale: f64,
}

/// Lion as bitsandbytes' 32-bit `Lion` (its `kOptimizer32bit1State` LION case) computes it, with
/// `g` the gradient times `grad_scale` and `m` the one moment (`exp_avg`):
/// ```text
/// p <- p * (1 - lr * wd)
/// p <- p - lr * sign(b1 m + (1 - b1) g)        (sign(0) = 0)
/// m <- b2 m + (1 - b2) g
/// ```
/// State: `bufs[0]` = `m`, as many elements as `p`.
pub fn lion_step(p: &Var, grad: &Tensor, bufs: &mut [Buf], h: &LionStep) -> Result<()> {
    fn run<T: Real>(p: &mut [T], g: &[T], m: &mut [T], h: &LionStep) {
        let c = |x: f64| T::from(x).unwrap();
        let (b1, b2, gs) = (c(h.beta1), c(h.beta2), c(h.grad_scale));
        let (one_b1, one_b2) = (c(1.0 - h.beta1), c(1.0 - h.beta2));
        let (shrink, lr) = (c(1.0 - h.lr * h.weight_decay), c(h.lr));
        let zero = T::zero();
        p.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(g.par_chunks(CHUNK)).for_each(|((p, m), g)| {
            for ((p, m), &g) in p.iter_mut().zip(m.iter_mut()).zip(g) {
                let g = g * gs;
                let u = b1 * *m + one_b1 * g;
                // the sign as the difference of two comparisons, without branches: the loop vectorizes
                let sign = T::from(i8::from(u > zero) - i8::from(u < zero)).unwrap();
                *p = *p * shrink - lr * sign;
                *m = b2 * *m + one_b2 * g;
            }
        });
    }
    update(p, grad, bufs, &mut |s| {
        match s {
            Slices::F32(p, g, mut b) => run(p, g, b[0], h),
            Slices::F64(p, g, mut b) => run(p, g, b[0], h),
        }
        Ok(())
    })
}
