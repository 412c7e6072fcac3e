//! Frozen weight matrices stored compactly (bf16 or GGML blocks), and the two products a frozen
//! linear layer needs in training: the forward product and the input gradient.
//!
//! A [`FrozenMatrix`] holds `W` `[rows = out_features, cols = in_features]` (row-major, as
//! `dpo_model::Linear` stores it: `y = x W^T`). Its weight is never trained, so only
//!
//! - the forward product `y[m, rows] = x[m, cols] · W^T` ([`FrozenMatrix::forward`]) and
//! - the input gradient `dx[m, cols] = dy[m, rows] · W` ([`FrozenMatrix::backward_input`])
//!
//! are computed, never `dW`. The full matrix never exists in f32: the products convert a tile of
//! the weight at a time (at most 1 MB of f32, about Zen 4's L2 cache) and run the f32 GEMM of the
//! gemm crate on the tile; bf16 weights on CPUs with AVX512-BF16 go through our own
//! GEMM (`vdpbf16ps`, twice the f32 FMA rate) that reads the packed weight directly.
//!
//! Numerics: f32/f64 storage is the plain GEMM; the GGML block formats give the f32 product of
//! the exactly dequantized weight (candle's `to_float`, i.e. llama.cpp's `dequantize_row_*`);
//! bf16 rounds the activations to bf16 (nearest, ties to even) and accumulates bf16 x bf16
//! products (exact in f32) in f32, as PyTorch's bf16 autocast does.
//!
//! Parallel work uses `crate::num_threads()` threads of the rayon pool; the bf16 kernel keeps
//! up to 2.3 MB of scratch per thread between calls.
//!
//! [`frozen_linear`] wraps the products in a candle custom op for autograd.

mod bf16;
mod blocks;
mod mixed;
mod op;
mod tiled;

pub use mixed::{bf16_weight_grad, bf16_weight_grad_with, mixed_linear, Bf16Copy, MixedLinear};
pub use op::{frozen_linear, FrozenLinear};

use super::{gemm, num_threads, Real, SendPtr};
use crate::Output;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, Result};
use std::any::TypeId;

use self::bf16::PackedBf16;
use self::blocks::BlockMatrix;
use self::tiled::TileSource;

/// How a frozen base model's weight matrices are stored (`--base-dtype`).
///
/// Bytes per parameter: `f32` 4, `bf16` 2, `q8_0` 34/32 = 1.0625, `q4_0` 18/32 = 0.5625 (GGML
/// block formats: a block of 32 weights is an f16 scale and 32 int8, or 16 bytes of 4-bit
/// values; llama.cpp `ggml-quants.c`). `gguf` keeps each tensor of a GGUF file in the file's own
/// format (Q4_K, Q6_K, ...), at that format's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BaseDType {
    /// Plain f32, 4 bytes per parameter.
    #[serde(rename = "f32")]
    F32,
    /// bfloat16 (round-to-nearest-even from f32), 2 bytes per parameter; products round the
    /// activations to bf16 and accumulate in f32 (as PyTorch's bf16 autocast does).
    #[serde(rename = "bf16")]
    Bf16,
    /// GGML Q8_0: blocks of 32 int8 with one f16 scale, 34/32 bytes per parameter.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// GGML Q4_0: blocks of 32 4-bit values with one f16 scale, 18/32 bytes per parameter.
    #[serde(rename = "q4_0")]
    Q4_0,
    /// The GGUF file's own block quantization, tensor by tensor (handled by the loader, which
    /// builds each matrix with [`FrozenMatrix::from_qtensor`]).
    #[serde(rename = "gguf")]
    Gguf,
}

impl BaseDType {
    /// Every variant, in the order of [`BaseDType::NAMES`].
    pub const ALL: [BaseDType; 5] = [Self::F32, Self::Bf16, Self::Q8_0, Self::Q4_0, Self::Gguf];
    /// The names `FromStr` accepts (and `Display` writes).
    pub const NAMES: [&'static str; 5] = ["f32", "bf16", "q8_0", "q4_0", "gguf"];

    /// The name of this variant (`f32`, `bf16`, `q8_0`, `q4_0`, `gguf`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Gguf => "gguf",
        }
    }

    /// Bytes per parameter of a matrix whose `cols` is a multiple of the block size and whose
    /// `rows` and `cols` are multiples of 32 (bf16 pads both to 32); `None` for `gguf`, whose size
    /// depends on the file.
    pub fn bytes_per_param(self) -> Option<f64> {
        match self {
            Self::F32 => Some(4.0),
            Self::Bf16 => Some(2.0),
            Self::Q8_0 => Some(34.0 / 32.0),
            Self::Q4_0 => Some(18.0 / 32.0),
            Self::Gguf => None,
        }
    }
}

impl std::fmt::Display for BaseDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BaseDType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|d| d.name() == lower)
            .ok_or_else(|| format!("unknown base dtype `{s}` ({})", Self::NAMES.join(", ")))
    }
}

/// The storage format of a [`FrozenMatrix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrozenDType {
    /// Plain f32.
    F32,
    /// Plain f64 (finite-difference tests: products take f64 activations).
    F64,
    /// bfloat16, packed for the forward micro-kernel.
    Bf16,
    /// Raw GGML blocks of this type (quantized formats, and F16).
    Ggml(GgmlDType),
}

impl std::fmt::Display for FrozenDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::F32 => f.write_str("f32"),
            Self::F64 => f.write_str("f64"),
            Self::Bf16 => f.write_str("bf16"),
            Self::Ggml(d) => write!(f, "{d:?}"),
        }
    }
}

/// Which implementation the bf16 products use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernel {
    /// The AVX512-BF16 micro-kernel when the CPU has it (detected once), else the portable path.
    #[default]
    Auto,
    /// Always the portable path: convert a tile to f32 and run the f32 GEMM on it (the
    /// activations are still rounded to bf16 first, so both paths compute the same products up
    /// to summation order, and the flushing of denormals to zero by the AVX512-BF16 instructions).
    Portable,
}

/// Whether this CPU runs the AVX512-BF16 micro-kernel (`avx512f`, `avx512bw`, `avx512bf16`;
/// detected once).
pub fn bf16_simd_available() -> bool {
    bf16::simd_available()
}

enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bf16(PackedBf16),
    Blocks(BlockMatrix),
}

/// A frozen weight matrix `W` `[rows = out_features, cols = in_features]` (row-major order of
/// the logical matrix), stored compactly; see the [module documentation](self).
///
/// Products take row-major activations as flat slices with an explicit row count `m`.
/// Dense storage (`F32`, `F64`) is generic over [`Real`] (f64 activations need `F64` storage);
/// the compact formats take f32 activations only.
pub struct FrozenMatrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

impl std::fmt::Debug for FrozenMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrozenMatrix[{}x{}; {}; {} bytes]", self.rows, self.cols, self.dtype(), self.bytes())
    }
}

fn check_shape(rows: usize, cols: usize, len: usize, what: &str) -> Result<()> {
    if rows == 0 || cols == 0 {
        bail!("frozen matrix: empty shape [{rows}, {cols}]");
    }
    if rows.checked_mul(cols) != Some(len) {
        bail!("frozen matrix: {len} {what} for shape [{rows}, {cols}]");
    }
    Ok(())
}

/// The pointer in `p`: a function, so that a closure calling it captures the whole `SendPtr`
/// (which is `Send`) rather than its raw-pointer field.
fn raw<T>(p: SendPtr<T>) -> *mut T {
    p.0
}

/// `x` as f32 data when `T` is f32.
fn as_f32<T: Real>(x: &[T]) -> Option<&[f32]> {
    // SAFETY: T is f32 (same TypeId), so the slice's memory is a valid [f32] of the same length.
    (TypeId::of::<T>() == TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
}

/// `x` as mutable f32 data when `T` is f32.
fn as_f32_mut<T: Real>(x: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: T is f32 (same TypeId); the borrow is moved into the new slice.
    (TypeId::of::<T>() == TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
}

/// `x` as the element type `U` when `T` is `U`.
fn cast_slice<T: Real, U: Real>(x: &[T]) -> Option<&[U]> {
    // SAFETY: T and U are the same type (same TypeId).
    (TypeId::of::<T>() == TypeId::of::<U>())
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const U, x.len()) })
}

impl FrozenMatrix {
    /// Plain f32 storage of `data` `[rows, cols]` row-major (4 bytes per parameter).
    ///
    /// Errors when `data.len() != rows * cols` or the shape is empty.
    pub fn from_f32(data: Vec<f32>, rows: usize, cols: usize) -> Result<Self> {
        check_shape(rows, cols, data.len(), "values")?;
        Ok(Self { rows, cols, storage: Storage::F32(data) })
    }

    /// Plain f64 storage of `data` `[rows, cols]` row-major, for finite-difference tests (products
    /// take f64 activations).
    pub fn from_f64(data: Vec<f64>, rows: usize, cols: usize) -> Result<Self> {
        check_shape(rows, cols, data.len(), "values")?;
        Ok(Self { rows, cols, storage: Storage::F64(data) })
    }

    /// bf16 storage of `data` `[rows, cols]` (f32, row-major), each value rounded to the nearest
    /// bf16 (ties to even; `half::bf16::from_f32`). 2 bytes per parameter, with `rows` and `cols`
    /// padded to multiples of 32 (the micro-kernel's panel layout, packed once here).
    pub fn bf16_from_f32(data: &[f32], rows: usize, cols: usize) -> Result<Self> {
        check_shape(rows, cols, data.len(), "values")?;
        Ok(Self { rows, cols, storage: Storage::Bf16(PackedBf16::from_f32(data, rows, cols)) })
    }

    /// bf16 storage of bf16 values `data` `[rows, cols]` row-major (a bf16 checkpoint, a GGUF BF16
    /// tensor), packed as [`FrozenMatrix::bf16_from_f32`] does.
    pub fn from_bf16(data: &[half::bf16], rows: usize, cols: usize) -> Result<Self> {
        check_shape(rows, cols, data.len(), "values")?;
        Ok(Self {
            rows,
            cols,
            storage: Storage::Bf16(PackedBf16::from_fn(rows, cols, |r, c| data[r * cols + c].to_bits())),
        })
    }

    /// `data` `[rows, cols]` (f32, row-major) in the format `dtype`: F32 is plain storage, BF16
    /// is [`FrozenMatrix::bf16_from_f32`], and block formats quantize each row with candle's
    /// `GgmlType::from_float` (llama.cpp's `quantize_row_*`), bit for bit what
    /// `QTensor::quantize` gives.
    ///
    /// Errors when `cols` is not a multiple of the format's block size (32 for Q4_0/Q8_0/...,
    /// 256 for the K-quants), naming the shape.
    pub fn quantize(data: &[f32], rows: usize, cols: usize, dtype: GgmlDType) -> Result<Self> {
        check_shape(rows, cols, data.len(), "values")?;
        match dtype {
            GgmlDType::F32 => Self::from_f32(data.to_vec(), rows, cols),
            GgmlDType::BF16 => Self::bf16_from_f32(data, rows, cols),
            _ => Ok(Self { rows, cols, storage: Storage::Blocks(BlockMatrix::quantize(data, rows, cols, dtype)?) }),
        }
    }

    /// `data` `[rows, cols]` (f32, row-major) in the format of `--base-dtype`. `Gguf` is an error
    /// here: the loader builds those matrices from the file's tensors ([`FrozenMatrix::from_qtensor`]).
    pub fn convert(data: &[f32], rows: usize, cols: usize, base: BaseDType) -> Result<Self> {
        match base {
            BaseDType::F32 => Self::from_f32(data.to_vec(), rows, cols),
            BaseDType::Bf16 => Self::bf16_from_f32(data, rows, cols),
            BaseDType::Q8_0 => Self::quantize(data, rows, cols, GgmlDType::Q8_0),
            BaseDType::Q4_0 => Self::quantize(data, rows, cols, GgmlDType::Q4_0),
            BaseDType::Gguf => bail!(
                "frozen matrix [{rows}, {cols}]: base dtype `gguf` keeps a GGUF file's own tensors (use from_qtensor)"
            ),
        }
    }

    /// A matrix from raw GGML data: `rows * cols / block_size` consecutive blocks of `dtype`, row
    /// `r` being blocks `r * cols / block_size ..` (GGUF tensor data; `QTensor::data()`).
    /// F32 and BF16 data become plain f32 and packed bf16 storage; F16 and the block formats
    /// are kept as they are.
    ///
    /// Errors when `cols` is not a multiple of the block size or `bytes` has the wrong length.
    pub fn from_ggml_bytes(bytes: &[u8], rows: usize, cols: usize, dtype: GgmlDType) -> Result<Self> {
        if rows == 0 || cols == 0 {
            bail!("frozen matrix: empty shape [{rows}, {cols}]");
        }
        let want = blocks::byte_len(rows, cols, dtype)?;
        if bytes.len() != want {
            bail!("frozen matrix [{rows}, {cols}] {dtype:?}: {} bytes of data, expected {want}", bytes.len());
        }
        match dtype {
            GgmlDType::F32 => {
                let v = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                Self::from_f32(v, rows, cols)
            }
            GgmlDType::BF16 => {
                let v: Vec<half::bf16> =
                    bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]])).collect();
                Self::from_bf16(&v, rows, cols)
            }
            _ => Ok(Self { rows, cols, storage: Storage::Blocks(BlockMatrix::from_bytes(bytes, rows, cols, dtype)?) }),
        }
    }

    /// A matrix from a 2-D CPU `QTensor` `[rows, cols]` (a GGUF file's tensor, kept in its own
    /// format), through [`FrozenMatrix::from_ggml_bytes`].
    pub fn from_qtensor(t: &QTensor) -> Result<Self> {
        let (rows, cols) = t.shape().dims2()?;
        Self::from_ggml_bytes(&t.data()?, rows, cols, t.dtype())
    }

    /// The matrix whose row `i` is row `order[i]` of this one, in the same format without
    /// re-quantizing (e.g. to undo the q/k row interleaving of GGUF files, llama.cpp's
    /// `convert_hf_to_gguf.py` `permute`, on quantized data).
    ///
    /// Errors when `order` is empty or holds a row index `>= rows`.
    pub fn gather_rows(&self, order: &[usize]) -> Result<Self> {
        if order.is_empty() {
            bail!("frozen matrix [{}, {}]: gathering no rows", self.rows, self.cols);
        }
        if let Some(&r) = order.iter().find(|&&r| r >= self.rows) {
            bail!("frozen matrix [{}, {}]: row {r} out of range", self.rows, self.cols);
        }
        let c = self.cols;
        let storage = match &self.storage {
            Storage::F32(v) => {
                Storage::F32(order.iter().flat_map(|&r| v[r * c..(r + 1) * c].iter().copied()).collect())
            }
            Storage::F64(v) => {
                Storage::F64(order.iter().flat_map(|&r| v[r * c..(r + 1) * c].iter().copied()).collect())
            }
            Storage::Bf16(b) => Storage::Bf16(b.gather_rows(order)),
            Storage::Blocks(b) => Storage::Blocks(b.gather_rows(order)?),
        };
        Ok(Self { rows: order.len(), cols: c, storage })
    }

    /// `out_features`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `in_features`.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The storage format.
    pub fn dtype(&self) -> FrozenDType {
        match &self.storage {
            Storage::F32(_) => FrozenDType::F32,
            Storage::F64(_) => FrozenDType::F64,
            Storage::Bf16(_) => FrozenDType::Bf16,
            Storage::Blocks(b) => FrozenDType::Ggml(b.dtype()),
        }
    }

    /// Bytes of weight data held: `4 rows cols` (f32), `8 rows cols` (f64), `2 ⌈rows/32⌉·32
    /// ⌈cols/32⌉·32` (bf16, padded panels), `rows · cols/block_size · type_size` (GGML blocks, e.g.
    /// 18 bytes per 32 weights for Q4_0).
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(v) => v.len() * 4,
            Storage::F64(v) => v.len() * 8,
            Storage::Bf16(b) => b.bytes(),
            Storage::Blocks(b) => b.bytes(),
        }
    }

    /// Row `r` of `W` (dequantized, converted) into `out` (`cols` values): an embedding lookup.
    /// Dense storage writes its own type; compact formats write f32.
    ///
    /// Errors when `r >= rows`, `out.len() != cols`, or `T` is f64 without f64 storage.
    pub fn row_into<T: Real>(&self, r: usize, out: &mut [T]) -> Result<()> {
        if r >= self.rows || out.len() != self.cols {
            bail!("frozen matrix [{}, {}]: row {r} into {} values", self.rows, self.cols, out.len());
        }
        let c = self.cols;
        match &self.storage {
            Storage::F32(v) => match as_f32_mut(out) {
                Some(o) => o.copy_from_slice(&v[r * c..(r + 1) * c]),
                None => bail!("frozen matrix: f32 storage gives f32 rows (asked for {:?})", T::DTYPE),
            },
            Storage::F64(v) => out.copy_from_slice(cast_slice::<f64, T>(&v[r * c..(r + 1) * c]).ok_or_else(|| {
                candle_core::Error::Msg(format!("frozen matrix: f64 storage gives f64 rows (asked for {:?})", T::DTYPE))
            })?),
            Storage::Bf16(b) => b.fill(r, r + 1, 0, c, self.f32_out(out)?),
            Storage::Blocks(b) => b.fill(r, r + 1, 0, c, self.f32_out(out)?),
        }
        Ok(())
    }

    /// Rows `r0..r1` of `W` in f32 into `out` (`(r1 - r0) x cols`, row-major; f64 storage is
    /// rounded to f32): a tile for merging adapters or a chunked head, without the whole matrix.
    ///
    /// Errors when `r0 > r1`, `r1 > rows`, or `out.len() != (r1 - r0) * cols`.
    pub fn rows_into(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        let c = self.cols;
        if r0 > r1 || r1 > self.rows || out.len() != (r1 - r0) * c {
            bail!("frozen matrix [{}, {}]: rows {r0}..{r1} into {} values", self.rows, self.cols, out.len());
        }
        match &self.storage {
            Storage::F32(v) => out.copy_from_slice(&v[r0 * c..r1 * c]),
            Storage::F64(v) => out.iter_mut().zip(&v[r0 * c..r1 * c]).for_each(|(o, &x)| *o = x as f32),
            Storage::Bf16(b) => b.fill(r0, r1, 0, c, out),
            Storage::Blocks(b) => b.fill(r0, r1, 0, c, out),
        }
        Ok(())
    }

    fn f32_out<'a, T: Real>(&self, out: &'a mut [T]) -> Result<&'a mut [f32]> {
        match as_f32_mut(out) {
            Some(o) => Ok(o),
            None => bail!(
                "frozen matrix [{}, {}] {}: takes f32 data, got {:?}",
                self.rows,
                self.cols,
                self.dtype(),
                T::DTYPE
            ),
        }
    }

    fn f32_in<'a, T: Real>(&self, x: &'a [T]) -> Result<&'a [f32]> {
        match as_f32(x) {
            Some(o) => Ok(o),
            None => bail!(
                "frozen matrix [{}, {}] {}: takes f32 data, got {:?}",
                self.rows,
                self.cols,
                self.dtype(),
                T::DTYPE
            ),
        }
    }

    /// The whole matrix `[rows, cols]` row-major in f32 (tests, merging adapters into the base);
    /// f64 storage is rounded to f32.
    pub fn dequantize(&self) -> Vec<f32> {
        match &self.storage {
            Storage::F32(v) => v.clone(),
            Storage::F64(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::Bf16(b) => tiled::dequantize(b),
            Storage::Blocks(b) => tiled::dequantize(b),
        }
    }

    /// The whole matrix `[rows, cols]` row-major in f64 (exact for every format).
    pub fn dequantize_f64(&self) -> Vec<f64> {
        match &self.storage {
            Storage::F64(v) => v.clone(),
            _ => self.dequantize().into_iter().map(f64::from).collect(),
        }
    }

    /// Errors unless the input is `[m, a]` and the output `[m, b]`.
    fn check_product(
        &self,
        what: &str,
        m: usize,
        (a, a_len): (usize, usize),
        (b, b_len): (usize, usize),
    ) -> Result<()> {
        if Some(a_len) != m.checked_mul(a) || Some(b_len) != m.checked_mul(b) {
            bail!(
                "frozen matrix [{}, {}] {what}: input of {a_len} values for [{m}, {a}], output of {b_len} values for [{m}, {b}]",
                self.rows, self.cols
            );
        }
        Ok(())
    }

    /// The forward product `y[m, rows] = x[m, cols] · W^T` (`y +=` when `accumulate`).
    ///
    /// bf16 rounds `x` to bf16 (nearest, ties to even) and accumulates in f32; the block formats
    /// compute the f32 product of the dequantized weight. Errors on slice lengths that do not fit
    /// `m`, or f64 activations without f64 storage.
    pub fn forward<T: Real>(&self, x: &[T], m: usize, y: &mut [T], output: Output) -> Result<()> {
        self.forward_with(Kernel::Auto, x, m, y, output)
    }

    /// [`FrozenMatrix::forward`] with a choice of bf16 kernel (tests and benchmarks).
    pub fn forward_with<T: Real>(&self, kernel: Kernel, x: &[T], m: usize, y: &mut [T], output: Output) -> Result<()> {
        let (r, c) = (self.rows, self.cols);
        self.check_product("forward", m, (c, x.len()), (r, y.len()))?;
        if m == 0 {
            return Ok(());
        }
        match &self.storage {
            Storage::F32(w) => dense_forward(self.typed_weight::<T, f32>(w)?, x, m, r, c, y, output),
            Storage::F64(w) => dense_forward(self.typed_weight::<T, f64>(w)?, x, m, r, c, y, output),
            Storage::Bf16(b) => b.forward(kernel, self.f32_in(x)?, m, self.f32_out(y)?, output),
            Storage::Blocks(b) => tiled::forward(b, self.f32_in(x)?, m, self.f32_out(y)?, output),
        }
        Ok(())
    }

    /// The input gradient `dx[m, cols] = dy[m, rows] · W` (`dx +=` when `accumulate`), with the
    /// same numerics as [`FrozenMatrix::forward`] (bf16 rounds `dy`). No weight gradient exists.
    pub fn backward_input<T: Real>(&self, dy: &[T], m: usize, dx: &mut [T], output: Output) -> Result<()> {
        self.backward_input_with(Kernel::Auto, dy, m, dx, output)
    }

    /// [`FrozenMatrix::backward_input`] with a choice of bf16 kernel (tests and benchmarks).
    pub fn backward_input_with<T: Real>(
        &self,
        kernel: Kernel,
        dy: &[T],
        m: usize,
        dx: &mut [T],
        output: Output,
    ) -> Result<()> {
        let (r, c) = (self.rows, self.cols);
        self.check_product("input gradient", m, (r, dy.len()), (c, dx.len()))?;
        if m == 0 {
            return Ok(());
        }
        match &self.storage {
            Storage::F32(w) => dense_backward(self.typed_weight::<T, f32>(w)?, dy, m, r, c, dx, output),
            Storage::F64(w) => dense_backward(self.typed_weight::<T, f64>(w)?, dy, m, r, c, dx, output),
            Storage::Bf16(b) => b.backward(kernel, self.f32_in(dy)?, m, self.f32_out(dx)?, output),
            Storage::Blocks(b) => tiled::backward(b, self.f32_in(dy)?, m, self.f32_out(dx)?, output),
        }
        Ok(())
    }

    /// Dense weight `w` (of type `U`) seen as activations' type `T`, or an error naming both.
    fn typed_weight<'a, T: Real, U: Real>(&self, w: &'a [U]) -> Result<&'a [T]> {
        match cast_slice::<U, T>(w) {
            Some(w) => Ok(w),
            None => bail!(
                "frozen matrix [{}, {}] {}: takes {:?} data, got {:?}",
                self.rows,
                self.cols,
                self.dtype(),
                U::DTYPE,
                T::DTYPE
            ),
        }
    }
}

/// `y = x W^T` for dense `W` through the gemm crate.
fn dense_forward<T: Real>(w: &[T], x: &[T], m: usize, rows: usize, cols: usize, y: &mut [T], output: Output) {
    // SAFETY: x is m x cols, w is rows x cols (read as cols x rows with strides 1, cols), y is m x rows;
    // lengths were checked by the caller; y does not alias x or w.
    unsafe {
        gemm(
            m,
            rows,
            cols,
            y.as_mut_ptr(),
            rows,
            1,
            output.adds(),
            x.as_ptr(),
            cols,
            1,
            w.as_ptr(),
            1,
            cols,
            T::one(),
            num_threads(),
        )
    }
}

/// `dx = dy W` for dense `W` through the gemm crate.
fn dense_backward<T: Real>(w: &[T], dy: &[T], m: usize, rows: usize, cols: usize, dx: &mut [T], output: Output) {
    // SAFETY: dy is m x rows, w is rows x cols, dx is m x cols; lengths were checked by the caller.
    unsafe {
        gemm(
            m,
            cols,
            rows,
            dx.as_mut_ptr(),
            cols,
            1,
            output.adds(),
            dy.as_ptr(),
            rows,
            1,
            w.as_ptr(),
            cols,
            1,
            T::one(),
            num_threads(),
        )
    }
}

#[cfg(test)]
mod tests;
