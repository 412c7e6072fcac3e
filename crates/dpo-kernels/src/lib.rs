//! Fused CPU kernels with hand-written backward passes, exposed as candle custom ops.
//!
//! candle's own `rms_norm`, `rope`, `softmax_last_dim` and `sdpa` have no backward pass (they drop
//! gradients silently), and composing them from elementwise ops keeps many `[tokens, hidden]`
//! temporaries alive for the backward pass. Each op here computes its forward in one pass, saves
//! what its backward needs (or recomputes it), and implements `bwd` so candle's autograd calls it.
//!
//! Every op works on `f32` (training) and `f64` (finite-difference tests) contiguous CPU tensors.

mod attention;
mod glu;
mod linear;
mod log_sigmoid;
mod logp_head;
mod lora;
pub mod qmatmul;
mod rmsnorm;
mod rope;

pub use attention::{attention, decode_attention, Attention, AttentionLayout, AttentionParams, Group};
pub use glu::{Activation, Glu};
pub use linear::{linear, DenseLinear};
pub use log_sigmoid::{log1mexp, log1mexp_f64, log_sigmoid, log_sigmoid_f64, sigmoid, Elementwise};
pub use logp_head::{logp_head, logp_head_frozen, logp_head_mixed, LogpHead, LogpHeadStats};
pub use lora::{apply_dropout, lora_linear, LoraLinear};
pub use qmatmul::{frozen_linear, mixed_linear, BaseDType, Bf16Copy, FrozenDType, FrozenLinear, FrozenMatrix, Kernel};
pub use rmsnorm::{rms_norm, RmsNorm};
pub use rope::{Llama3Scaling, Rope, RopeParams, RopeScaling, RopeTable};

use candle_core::{bail, CpuStorage, Device, Layout, Result, Shape, Tensor, WithDType};

/// What a product does with its output buffer: overwrite it, or add the product to what is there
/// (a gradient summed over several products).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Overwrite,
    Add,
}

impl Output {
    /// Whether the product is added to the output.
    pub fn adds(self) -> bool {
        self == Output::Add
    }
}

/// The float types our kernels are written for.
pub trait Real: WithDType + num_traits::Float + Send + Sync + std::ops::AddAssign + std::iter::Sum + 'static {
    fn as_f64(self) -> f64 {
        WithDType::to_f64(self)
    }
    /// The mutable data of a storage of this type.
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}
impl Real for f32 {
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
}
impl Real for f64 {
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
}

/// The data of a contiguous storage seen through `layout` (for [`cpu_slice!`]).
#[doc(hidden)]
pub fn slice_of<'a, T: Real>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: expects a contiguous input, got strides {:?}", l.stride()),
    }
}

/// Binds `$name: &[$t]` to the data of `$tensor` (made contiguous first) for the rest of the scope.
#[macro_export]
macro_rules! cpu_slice {
    ($t:ty, $tensor:expr => $name:ident) => {
        let __contiguous = $tensor.contiguous()?;
        let __guard = __contiguous.storage_and_layout();
        let $name: &[$t] = match &*__guard.0 {
            candle_core::Storage::Cpu(cs) => $crate::slice_of(cs, __guard.1, "cpu_slice")?,
            _ => candle_core::bail!("dpo kernels run on the CPU only"),
        };
    };
}

/// Dispatches a generic method on a tensor's dtype (f32 or f64).
#[macro_export]
macro_rules! by_dtype {
    ($dtype:expr, $op:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            candle_core::DType::F32 => $f::<f32>($($arg),*),
            candle_core::DType::F64 => $f::<f64>($($arg),*),
            d => candle_core::bail!("{}: unsupported dtype {d:?} (f32 or f64 only)", $op),
        }
    };
}

/// A tensor on the CPU from a vector.
pub(crate) fn tensor_of<T: Real>(v: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// A raw pointer that may be shared between rayon tasks which write disjoint regions.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// `dst[m×n] = scale·A[m×k]·B[k×n]` (or `+=` when `accumulate`), matrices given by pointer, row
/// stride and column stride in elements. `threads` > 1 lets gemm split the work with rayon.
///
/// # Safety
/// The pointers must cover the matrices their strides describe; `dst` must not alias `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    a: *const T,
    a_rs: usize,
    a_cs: usize,
    b: *const T,
    b_rs: usize,
    b_cs: usize,
    scale: T,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.add(i * dst_rs + j * dst_cs) = T::zero();
                }
            }
        }
        return;
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        T::one(),
        scale,
        false,
        false,
        false,
        par,
    )
}

/// SplitMix64's output function (Steele et al. 2014): a well-mixed 64-bit hash of `x`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed derived from `seed` and a stream number (distinct streams give unrelated seeds).
pub fn mix_seed(seed: u64, stream: u64) -> u64 {
    splitmix64(seed ^ splitmix64(stream.wrapping_add(0x632B_E59B_D9B4_E019)))
}

/// A uniform draw in `[0, 1)` from `mix_seed(seed, stream)` (its top 53 bits): the same value
/// for the same seed and stream, whichever thread draws it.
pub fn uniform(seed: u64, stream: u64) -> f64 {
    (mix_seed(seed, stream) >> 11) as f64 / (1u64 << 53) as f64
}

/// The number of threads kernels may use (`RAYON_NUM_THREADS`, as candle's matmul reads it).
pub(crate) fn num_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Dispatches a generic kernel on the dtype of a CPU storage.
macro_rules! dispatch_float {
    ($storage:expr, $op:expr, |$t:ident| $body:expr) => {
        match $storage {
            candle_core::CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            candle_core::CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            _ => candle_core::bail!("{}: unsupported dtype (f32 or f64 only)", $op),
        }
    };
}
pub(crate) use dispatch_float;

#[cfg(test)]
pub(crate) mod testutil {
    use candle_core::{DType, Device, Result, Tensor, Var};
    use rand::{Rng, SeedableRng};

    /// A seeded f64 tensor with entries uniform in [-1, 1).
    pub fn rand_t(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Checks d(sum(f(x) * probe))/dx from autograd against central finite differences.
    pub fn check_grad(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>, tol: f64) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts).unwrap();
        let probe = rand_t(out.dims(), 999);
        let loss = (out * &probe).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let eps = 1e-6;
        for (i, v) in vars.iter().enumerate() {
            let g = grads.get(v).expect("no gradient").flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let base = inputs[i].flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let stride = (base.len() / 23).max(1);
            for j in (0..base.len()).step_by(stride) {
                let eval = |d: f64| {
                    let mut b = base.clone();
                    b[j] += d;
                    let mut xs = inputs.to_vec();
                    xs[i] = Tensor::from_vec(b, inputs[i].dims(), &Device::Cpu).unwrap();
                    let o = f(&xs).unwrap();
                    (o * &probe).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                let err = (fd - g[j]).abs() / fd.abs().max(g[j].abs()).max(1e-3);
                assert!(err < tol, "input {i} elem {j}: autograd {} vs finite diff {fd}", g[j]);
            }
        }
        assert_eq!(inputs[0].dtype(), DType::F64);
    }
}
