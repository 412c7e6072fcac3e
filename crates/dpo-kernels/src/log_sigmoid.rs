//! Scalar functions of the losses, applied elementwise with their exact derivatives.

use super::{by_dtype, cpu_slice, dispatch_float, slice_of, tensor_of, Real};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};

/// An elementwise function `y = f(x)` with derivative `f'(x)`, both evaluated in f64. Used for
/// the few scalar functions of the losses whose composition from candle ops would be inexact or
/// kinked (see [`log_sigmoid`], [`log1mexp`]).
pub struct Elementwise {
    pub name: &'static str,
    pub f: fn(f64) -> f64,
    pub df: fn(f64) -> f64,
}

impl CustomOp1 for Elementwise {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(s, self.name, |T| {
            let y: Vec<T> = slice_of::<T>(s, l, self.name)?
                .iter()
                .map(|&x| <T as WithDType>::from_f64((self.f)(x.as_f64())))
                .collect();
            Ok((<T as WithDType>::to_cpu_storage_owned(y), l.shape().clone()))
        })
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(by_dtype!(x.dtype(), self.name, bwd_t(x, g, self.df))?))
    }
}

fn bwd_t<T: Real>(x: &Tensor, g: &Tensor, df: fn(f64) -> f64) -> Result<Tensor> {
    cpu_slice!(T, x => xs);
    cpu_slice!(T, g => gs);
    let dx: Vec<T> = xs.iter().zip(gs).map(|(&x, &g)| g * T::from(df(x.as_f64())).unwrap()).collect();
    tensor_of(dx, x.shape())
}

/// `log sigma(x) = -softplus(-x)`: `x - log1p(e^x)` for `x < 0`, `-log1p(e^-x)` otherwise
/// (LOSSES.md: "always compute log sigma(z) as -softplus(-z)").
pub fn log_sigmoid_f64(x: f64) -> f64 {
    if x < 0.0 {
        x - x.exp().ln_1p()
    } else {
        -(-x).exp().ln_1p()
    }
}

/// `sigma(-x) = 1 / (1 + e^x)`, the derivative of `log sigma(x)`.
fn sigmoid_neg(x: f64) -> f64 {
    1.0 / (1.0 + x.exp())
}

/// Elementwise `log sigma(x)`, stable for large `|x|`, with the derivative `sigma(-x)` — exact at
/// `x = 0`, where DPO starts (`policy == reference`); composing it from `relu`/`abs` would give a
/// kinked subgradient exactly there.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Elementwise { name: "log-sigmoid", f: log_sigmoid_f64, df: sigmoid_neg })
}

/// Elementwise `sigma(x) = exp(log sigma(x))`, differentiable.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    log_sigmoid(x)?.exp()
}

/// `log(1 - e^x)` for `x < 0` (Mächler 2012: `log1p(-e^x)` below `-ln 2`, `log(-expm1(x))`
/// above), whose derivative is `-1 / (e^-x - 1)`. The log-odds of ORPO: `log odds(p) = log p -
/// log(1 - p)` with `log p` the average token log-prob. `x >= 0` gives NaN.
pub fn log1mexp_f64(x: f64) -> f64 {
    if x < -std::f64::consts::LN_2 {
        (-x.exp()).ln_1p()
    } else {
        (-x.exp_m1()).ln()
    }
}

fn d_log1mexp(x: f64) -> f64 {
    -1.0 / (-x).exp_m1()
}

/// Elementwise `log(1 - e^x)` (see [`log1mexp_f64`]).
pub fn log1mexp(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Elementwise { name: "log1mexp", f: log1mexp_f64, df: d_log1mexp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{check_grad, rand_t};

    #[test]
    fn log_sigmoid_values_and_gradient() {
        let x = Tensor::new(&[-800.0f64, -1.0, 0.0, 2.0, 800.0], &candle_core::Device::Cpu).unwrap();
        let y = log_sigmoid(&x).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(y[0], -800.0);
        assert!((y[1] + (1.0 + 1f64.exp()).ln()).abs() < 1e-15);
        assert!((y[2] + 2f64.ln()).abs() < 1e-15);
        assert!((y[3] + (1.0 + (-2f64).exp()).ln()).abs() < 1e-15);
        assert_eq!(y[4], 0.0);
        let v = candle_core::Var::from_tensor(&x.narrow(0, 2, 1).unwrap()).unwrap();
        let g = log_sigmoid(v.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&v).unwrap().to_vec1::<f64>().unwrap(), vec![0.5], "sigma(-0) exactly");
        check_grad(&[(rand_t(&[7], 31) * 6.0).unwrap()], &|t| log_sigmoid(&t[0]), 1e-7);
        check_grad(&[(rand_t(&[7], 32) * 6.0).unwrap()], &|t| sigmoid(&t[0]), 1e-7);
    }

    #[test]
    fn log1mexp_is_accurate_near_zero_and_differentiable() {
        for x in [-1e-10f64, -1e-3, -0.5, -0.7, -3.0, -40.0] {
            let want = (-(x.exp_m1())).ln();
            assert!((log1mexp_f64(x) - want).abs() <= 1e-12 * want.abs().max(1.0), "{x}");
        }
        let xs = ((rand_t(&[9], 33) - 1.5).unwrap() * 2.0).unwrap(); // in (-5, -1)
        check_grad(&[xs], &|t| log1mexp(&t[0]), 1e-7);
    }
}
