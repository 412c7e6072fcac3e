//! `log sigmoid(x)`, stable for large |x|, with its exact derivative.

use super::{by_dtype, cpu_slice, dispatch_float, slice_of, tensor_of, Real};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};

/// `log sigma(x) = -softplus(-x)`, computed as `x - log1p(e^x)` for `x < 0` and `-log1p(e^-x)`
/// otherwise (LOSSES.md: "always compute log sigma(z) as -softplus(-z)"). Its derivative is
/// `sigma(-x)`, exact at `x = 0`: composing it from `relu`/`abs` would give a kinked subgradient
/// exactly where DPO starts (`policy == reference`, margin 0).
pub struct LogSigmoid;

const OP: &str = "log-sigmoid";

fn value<T: Real>(x: T) -> T {
    if x < T::zero() {
        x - x.exp().ln_1p()
    } else {
        -(-x).exp().ln_1p()
    }
}

impl CustomOp1 for LogSigmoid {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(s, OP, |T| {
            let y: Vec<T> = slice_of::<T>(s, l, OP)?.iter().map(|&x| value(x)).collect();
            Ok((<T as WithDType>::to_cpu_storage_owned(y), l.shape().clone()))
        })
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(by_dtype!(x.dtype(), OP, bwd_t(x, g))?))
    }
}

fn bwd_t<T: Real>(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    cpu_slice!(T, x => xs);
    cpu_slice!(T, g => gs);
    let dx: Vec<T> = xs.iter().zip(gs).map(|(&x, &g)| g / (T::one() + x.exp())).collect();
    tensor_of(dx, x.shape())
}

/// Elementwise `log sigma(x)` (see [`LogSigmoid`]).
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(LogSigmoid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{check_grad, rand_t};

    #[test]
    fn values_and_gradient() {
        let x = Tensor::new(&[-800.0f64, -1.0, 0.0, 2.0, 800.0], &candle_core::Device::Cpu).unwrap();
        let y = log_sigmoid(&x).unwrap().to_vec1::<f64>().unwrap();
        let want = [-800.0, -(1.0 + (-1f64).exp()).ln() - 0.0 + 0.0, -(2f64).ln(), -(1.0 + (-2f64).exp()).ln(), 0.0];
        let want1 = -(1.0 + 1f64.exp()).ln();
        assert_eq!(y[0], want[0]);
        assert!((y[1] - want1).abs() < 1e-15 && (y[2] - want[2]).abs() < 1e-15 && (y[3] - want[3]).abs() < 1e-15);
        assert_eq!(y[4], 0.0);
        let v = candle_core::Var::from_tensor(&x.narrow(0, 2, 1).unwrap()).unwrap();
        let g = log_sigmoid(v.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&v).unwrap().to_vec1::<f64>().unwrap(), vec![0.5], "sigma(-0) exactly");
        check_grad(&[(rand_t(&[7], 31) * 6.0).unwrap()], &|t| log_sigmoid(&t[0]), 1e-7);
    }
}
