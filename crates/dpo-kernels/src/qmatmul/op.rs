//! `frozen_linear`: a frozen matrix as a candle custom op, so that autograd reaches the input.

use super::FrozenMatrix;
use crate::{by_dtype, cpu_slice, dispatch_float, slice_of, tensor_of, Output, Real};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use std::sync::Arc;

const OP: &str = "frozen-linear";

/// `y = x W^T` for a frozen `W` ([`FrozenMatrix::forward`]), whose backward pass gives
/// `dx = dy W` ([`FrozenMatrix::backward_input`]). `W` is not a tensor argument, so no gradient
/// for it is ever formed.
pub struct FrozenLinear {
    w: Arc<FrozenMatrix>,
}

impl FrozenLinear {
    pub fn new(w: Arc<FrozenMatrix>) -> Self {
        Self { w }
    }

    /// The weight.
    pub fn weight(&self) -> &Arc<FrozenMatrix> {
        &self.w
    }

    /// `(m, output dims)` for an input of dims `dims` (`[..., cols]`), or an error naming both shapes.
    fn out_dims(&self, dims: &[usize]) -> Result<(usize, Vec<usize>)> {
        match dims.split_last() {
            Some((&c, lead)) if c == self.w.cols() => {
                let mut out = lead.to_vec();
                out.push(self.w.rows());
                Ok((lead.iter().product(), out))
            }
            _ => bail!("{OP}: input {dims:?} does not end in in_features = {} ({:?})", self.w.cols(), self.w),
        }
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, out_dims) = self.out_dims(l.dims())?;
        dispatch_float!(s, OP, |T| {
            let x = slice_of::<T>(s, l, OP)?;
            let mut y = vec![<T as num_traits::Zero>::zero(); m * self.w.rows()];
            self.w.forward(x, m, &mut y, Output::Overwrite)?;
            Ok((<T as WithDType>::to_cpu_storage_owned(y), Shape::from(out_dims)))
        })
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(by_dtype!(g.dtype(), OP, bwd_t(self, x, g))?))
    }
}

fn bwd_t<T: Real>(op: &FrozenLinear, x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (m, _) = op.out_dims(x.dims())?;
    cpu_slice!(T, g => gs);
    let mut dx = vec![T::zero(); m * op.w.cols()];
    op.w.backward_input(gs, m, &mut dx, Output::Overwrite)?;
    tensor_of(dx, x.shape())
}

/// `y[..., rows] = x[..., cols] · W^T` for a frozen `W` on CPU tensors (`x` f32, or f64 with f64
/// storage), differentiable in `x`: its backward pass is `dx = dy · W`.
///
/// Errors when the last dimension of `x` is not `W.cols()` or the dtype does not fit the storage.
pub fn frozen_linear(x: &Tensor, w: &Arc<FrozenMatrix>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenLinear::new(w.clone()))
}
