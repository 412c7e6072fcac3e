//! The optimizers' access to a parameter's data: one in-place pass over the parameter with its
//! gradient and its state buffers, in the parameter's dtype (f32, or f64 for test models).

use anyhow::{bail, Result};
use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor, Var};
use std::cell::RefCell;

/// One state buffer of a parameter (a moment, a factored second moment), in the parameter's dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Buf {
    /// `n` zeros in the dtype of `p`. Errors: a dtype other than f32 or f64.
    pub fn zeros_like(p: &Var, n: usize) -> Result<Self> {
        Ok(match p.dtype() {
            candle_core::DType::F32 => Buf::F32(vec![0.0; n]),
            candle_core::DType::F64 => Buf::F64(vec![0.0; n]),
            d => bail!("optimizer: parameters of dtype {d:?} are not supported (f32 or f64)"),
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Buf::F32(v) => 4 * v.len(),
            Buf::F64(v) => 8 * v.len(),
        }
    }

    /// The buffer as an f32 tensor of `shape` (checkpoints keep f32 state). Errors: f64 state (test
    /// models), or `shape` of another size.
    pub fn to_tensor(&self, shape: &[usize]) -> Result<Tensor> {
        let Buf::F32(v) = self else { bail!("optimizer: saving f64 state is not supported") };
        Ok(Tensor::from_vec(v.clone(), shape, &candle_core::Device::Cpu)?)
    }

    /// Replaces the values with those of `t` (as [`Buf::to_tensor`] gave them). Errors: another size,
    /// or f64 state.
    pub fn restore(&mut self, t: &Tensor) -> Result<()> {
        let Buf::F32(v) = self else { bail!("optimizer: restoring f64 state is not supported") };
        let saved = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        anyhow::ensure!(saved.len() == v.len(), "{} saved values for a state of {}", saved.len(), v.len());
        *v = saved;
        Ok(())
    }
}

/// A parameter's data, its gradient and its state buffers, all of one dtype.
pub enum Slices<'a> {
    F32(&'a mut [f32], &'a [f32], Vec<&'a mut [f32]>),
    F64(&'a mut [f64], &'a [f64], Vec<&'a mut [f64]>),
}

/// What a pass runs on the parameter's slices.
type UpdateFn<'f> = &'f mut dyn FnMut(Slices<'_>) -> Result<()>;

struct Pass<'a, 'f> {
    grad: &'a CpuStorage,
    grad_layout: &'a Layout,
    bufs: RefCell<Option<&'a mut [Buf]>>,
    f: RefCell<UpdateFn<'f>>,
}

impl InplaceOp1 for Pass<'_, '_> {
    fn name(&self) -> &'static str {
        "optimizer-update"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let err = |e: anyhow::Error| candle_core::Error::Msg(format!("{e:#}"));
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("optimizer: parameter is not contiguous") };
        let bufs = self.bufs.borrow_mut().take().expect("one pass per call");
        let mut f = self.f.borrow_mut();
        match s {
            CpuStorage::F32(p) => {
                let g = dpo_kernels::slice_of::<f32>(self.grad, self.grad_layout, "optimizer")?;
                let bufs = bufs
                    .iter_mut()
                    .map(|b| match b {
                        Buf::F32(v) => Ok(&mut v[..]),
                        Buf::F64(_) => Err(candle_core::Error::Msg("optimizer: f64 state for an f32 parameter".into())),
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                f(Slices::F32(&mut p[a..b], g, bufs)).map_err(err)
            }
            CpuStorage::F64(p) => {
                let g = dpo_kernels::slice_of::<f64>(self.grad, self.grad_layout, "optimizer")?;
                let bufs = bufs
                    .iter_mut()
                    .map(|b| match b {
                        Buf::F64(v) => Ok(&mut v[..]),
                        Buf::F32(_) => Err(candle_core::Error::Msg("optimizer: f32 state for an f64 parameter".into())),
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                f(Slices::F64(&mut p[a..b], g, bufs)).map_err(err)
            }
            _ => candle_core::bail!("optimizer: parameters of this dtype are not supported (f32 or f64)"),
        }
    }
}

/// Runs `f` once on parameter `p`'s data (in place), its gradient `grad` and the state `bufs`.
/// Errors: a gradient of another size or dtype, state of another dtype, what `f` returns.
pub fn update(p: &Var, grad: &Tensor, bufs: &mut [Buf], f: &mut dyn FnMut(Slices<'_>) -> Result<()>) -> Result<()> {
    anyhow::ensure!(
        grad.elem_count() == p.elem_count() && grad.dtype() == p.dtype(),
        "optimizer: a gradient of {} {:?} values for a parameter of {} {:?}",
        grad.elem_count(),
        grad.dtype(),
        p.elem_count(),
        p.dtype()
    );
    let g = grad.contiguous()?;
    let (gs, gl) = g.storage_and_layout();
    let candle_core::Storage::Cpu(gs) = &*gs else { bail!("the optimizers run on the CPU") };
    let pass = Pass { grad: gs, grad_layout: gl, bufs: RefCell::new(Some(bufs)), f: RefCell::new(f) };
    p.as_tensor().inplace_op1(&pass)?;
    Ok(())
}
