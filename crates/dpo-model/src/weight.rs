//! A weight matrix of the model: a candle tensor (trainable in full fine-tuning) or a frozen
//! matrix in a compact format (the base of a LoRA run, an inference copy).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use dpo_kernels::qmatmul::{frozen_linear, mixed_linear, Bf16Copy, FrozenDType, FrozenMatrix};
use std::sync::Arc;

/// A matrix `[out, in]` (a linear layer's weight, the embedding `[vocab, hidden]`).
#[derive(Clone)]
pub enum Weight {
    /// An f32 or f64 tensor: trainable when it is a `Var`'s tensor (full fine-tuning).
    Tensor(Tensor),
    /// A frozen matrix (f32, bf16 or GGML blocks): products by [`dpo_kernels::qmatmul`], no
    /// weight gradient, never an f32 copy of the whole matrix.
    Frozen(Arc<FrozenMatrix>),
    /// A trainable f32 matrix in mixed precision (`--bf16`): the f32 `master` (a `Var`'s tensor,
    /// what the optimizer updates) and the bf16 `copy` that its products read (bf16 operands, f32
    /// accumulation, [`dpo_kernels::qmatmul::mixed_linear`]); [`Weight::refresh`] re-rounds the
    /// copy after the master changes. Embedding lookups read the master.
    Mixed { master: Tensor, copy: Arc<Bf16Copy> },
}

impl From<Tensor> for Weight {
    fn from(t: Tensor) -> Self {
        Weight::Tensor(t)
    }
}

impl Weight {
    /// `[out, in]` (or the dims of a 1-D tensor).
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Tensor(t) | Weight::Mixed { master: t, .. } => t.dims().to_vec(),
            Weight::Frozen(m) => vec![m.rows(), m.cols()],
        }
    }

    /// The dtype of the activations this weight multiplies (f32, or f64 for f64 tests).
    pub fn dtype(&self) -> DType {
        match self {
            Weight::Tensor(t) | Weight::Mixed { master: t, .. } => t.dtype(),
            Weight::Frozen(m) if m.dtype() == FrozenDType::F64 => DType::F64,
            Weight::Frozen(_) => DType::F32,
        }
    }

    /// `y = x W^T` for `x` `[rows, in]`: `[rows, out]`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Weight::Tensor(w) => dpo_kernels::linear(x, w)?,
            Weight::Frozen(m) => frozen_linear(x, m)?,
            Weight::Mixed { master, copy } => mixed_linear(x, master, copy)?,
        })
    }

    /// The rows `ids` of the matrix, `[ids, in]` (an embedding lookup); differentiable for a
    /// trainable tensor, a plain f32/f64 tensor for a frozen matrix.
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        match self {
            Weight::Tensor(w) | Weight::Mixed { master: w, .. } => Ok(w.embedding(&Tensor::new(ids, &Device::Cpu)?)?),
            Weight::Frozen(m) => {
                let cols = m.cols();
                if m.dtype() == FrozenDType::F64 {
                    let mut out = vec![0f64; ids.len() * cols];
                    for (o, &i) in out.chunks_mut(cols).zip(ids) {
                        m.row_into(i as usize, o)?;
                    }
                    Ok(Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)?)
                } else {
                    let mut out = vec![0f32; ids.len() * cols];
                    for (o, &i) in out.chunks_mut(cols).zip(ids) {
                        m.row_into(i as usize, o)?;
                    }
                    Ok(Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)?)
                }
            }
        }
    }

    /// The matrix as a tensor (a frozen one dequantized to f32): for saving and merging.
    pub fn to_tensor(&self) -> Result<Tensor> {
        match self {
            Weight::Tensor(t) | Weight::Mixed { master: t, .. } => Ok(t.clone()),
            Weight::Frozen(m) if m.dtype() == FrozenDType::F64 => {
                Ok(Tensor::from_vec(m.dequantize_f64(), (m.rows(), m.cols()), &Device::Cpu)?)
            }
            Weight::Frozen(m) => Ok(Tensor::from_vec(m.dequantize(), (m.rows(), m.cols()), &Device::Cpu)?),
        }
    }

    /// The tensor of a trainable weight; an error naming `what` for a frozen one.
    pub fn tensor(&self, what: &str) -> Result<&Tensor> {
        match self {
            Weight::Tensor(t) | Weight::Mixed { master: t, .. } => Ok(t),
            Weight::Frozen(m) => bail!("{what} is a frozen {} matrix; training every weight needs an f32 model (--base-dtype f32), or train an adapter (--use-peft)", m.dtype()),
        }
    }

    /// The same weight without gradient tracking (shares storage).
    pub fn detach(&self) -> Self {
        match self {
            Weight::Tensor(t) => Weight::Tensor(t.detach()),
            Weight::Frozen(m) => Weight::Frozen(m.clone()),
            Weight::Mixed { master, copy } => Weight::Mixed { master: master.detach(), copy: copy.clone() },
        }
    }

    /// This weight in mixed precision (`--bf16`): an f32 tensor becomes [`Weight::Mixed`] with
    /// a fresh bf16 copy (sharing the tensor's storage, so a `Var`'s updates reach the master);
    /// other weights are returned as they are.
    pub fn with_bf16_products(&self) -> Result<Self> {
        Ok(match self {
            Weight::Tensor(t) if t.dtype() == DType::F32 && t.rank() == 2 => {
                let (rows, cols) = t.dims2()?;
                let copy = with_f32(t, |data| Ok(Bf16Copy::new(data, rows, cols)?))?;
                Weight::Mixed { master: t.clone(), copy: Arc::new(copy) }
            }
            w => w.clone(),
        })
    }

    /// Re-rounds a mixed-precision weight's bf16 copy from its master (after an optimizer step or
    /// a restore); nothing for other weights.
    pub fn refresh(&self) -> Result<()> {
        if let Weight::Mixed { master, copy } = self {
            with_f32(master, |data| Ok(copy.refresh(data)?))?;
        }
        Ok(())
    }

    /// Bytes held (for memory accounting).
    pub fn bytes(&self) -> usize {
        match self {
            Weight::Tensor(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Weight::Frozen(m) => m.bytes(),
            Weight::Mixed { master, copy } => master.elem_count() * 4 + copy.bytes(),
        }
    }

    /// Feeds the weight's content (dims, format, values) to a hasher: what the reference-log-prob
    /// cache key says about the model.
    pub fn hash_into(&self, h: &mut blake3::Hasher) -> Result<()> {
        h.update(format!("{:?}", self.dims()).as_bytes());
        match self {
            Weight::Tensor(t) => hash_f32(h, b"f32", t)?,
            // Products in bf16 give other log-probs: the reference cache tells them apart.
            Weight::Mixed { master, .. } => hash_f32(h, b"f32, bf16 products", master)?,
            Weight::Frozen(m) => {
                // The dequantized values, a few rows at a time (never the whole matrix in f32).
                h.update(m.dtype().to_string().as_bytes());
                let rows_per = (1 << 16) / m.cols() + 1;
                let mut buf = vec![0f32; rows_per * m.cols()];
                for r0 in (0..m.rows()).step_by(rows_per) {
                    let r1 = (r0 + rows_per).min(m.rows());
                    let out = &mut buf[..(r1 - r0) * m.cols()];
                    m.rows_into(r0, r1, out)?;
                    // SAFETY: reinterpreting f32s as their bytes.
                    h.update(unsafe {
                        std::slice::from_raw_parts(out.as_ptr() as *const u8, std::mem::size_of_val(out))
                    });
                }
            }
        }
        Ok(())
    }
}

/// `f` of the f32 values of `t`, row-major: the tensor's own storage when it is a contiguous f32
/// tensor (a `Var`'s), no copy.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.to_dtype(DType::F32)?.flatten_all()?;
    let (s, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*s else { bail!("model on the CPU expected") };
    f(dpo_kernels::slice_of::<f32>(s, l, "weight")?)
}

/// Feeds `tag` and the f32 bytes of `t` to `h` (a plain f32 tensor gives the bytes a frozen f32
/// matrix of the same values gives).
fn hash_f32(h: &mut blake3::Hasher, tag: &[u8], t: &Tensor) -> Result<()> {
    h.update(tag);
    with_f32(t, |data| {
        // SAFETY: reinterpreting f32s as their bytes.
        h.update(unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) });
        Ok(())
    })
}
