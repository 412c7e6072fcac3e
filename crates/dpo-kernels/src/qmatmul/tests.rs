use super::*;
use crate::Output;
use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::sync::Arc;

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

/// Seeded values uniform in [-1, 1).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

/// Seeded values that are exactly representable in bf16.
fn rand_bf16_exact(n: usize, seed: u64) -> Vec<f32> {
    rand_vec(n, seed).into_iter().map(|x| half::bf16::from_f32(x).to_f32()).collect()
}

/// `x[m, cols] · W^T` in f64 for `W` `[rows, cols]`.
fn ref_forward(w: &[f64], rows: usize, cols: usize, x: &[f32], m: usize) -> Vec<f64> {
    let mut y = vec![0f64; m * rows];
    y.par_chunks_mut(rows).enumerate().for_each(|(i, yi)| {
        let xi = &x[i * cols..(i + 1) * cols];
        for (r, v) in yi.iter_mut().enumerate() {
            *v = w[r * cols..(r + 1) * cols].iter().zip(xi).map(|(&a, &b)| a * b as f64).sum();
        }
    });
    y
}

/// `dy[m, rows] · W` in f64.
fn ref_backward(w: &[f64], rows: usize, cols: usize, dy: &[f32], m: usize) -> Vec<f64> {
    let mut dx = vec![0f64; m * cols];
    dx.par_chunks_mut(cols).enumerate().for_each(|(i, dxi)| {
        for r in 0..rows {
            let g = dy[i * rows + r] as f64;
            for (d, &a) in dxi.iter_mut().zip(&w[r * cols..(r + 1) * cols]) {
                *d += g * a;
            }
        }
    });
    dx
}

/// `‖got - want‖ / ‖want‖`.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut d, mut n) = (0.0, 0.0);
    for (&g, &w) in got.iter().zip(want) {
        d += (g as f64 - w).powi(2);
        n += w * w;
    }
    (d / n.max(1e-300)).sqrt()
}

/// The formats under test: (name, dtype used to build it).
const BLOCK32: [GgmlDType; 7] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q8_1,
    GgmlDType::F16,
];
const BLOCK256: [GgmlDType; 6] =
    [GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K, GgmlDType::Q8K];

/// (m, rows, cols) for formats whose block divides 32, and for the K-quants (256).
const SHAPES32: [(usize, usize, usize); 7] =
    [(1, 5, 64), (3, 33, 96), (17, 192, 576), (64, 1000, 64), (200, 33, 576), (200, 1000, 96), (64, 5, 576)];
const SHAPES256: [(usize, usize, usize); 5] =
    [(1, 5, 256), (3, 33, 512), (17, 192, 256), (64, 1000, 256), (200, 33, 512)];

/// Checks forward and input gradient of `w` against the f64 products of its dequantized weight,
/// with and without accumulation; returns the largest relative error.
/// The output mode of a test case that adds to its output or not.
fn output(accumulate: bool) -> Output {
    if accumulate {
        Output::Add
    } else {
        Output::Overwrite
    }
}

fn check_products(w: &FrozenMatrix, m: usize, kernel: Kernel, bf16_inputs: bool, seed: u64) -> f64 {
    let (rows, cols) = (w.rows(), w.cols());
    let wd = w.dequantize_f64();
    let gen = |n, s| if bf16_inputs { rand_bf16_exact(n, s) } else { rand_vec(n, s) };
    let (x, dy) = (gen(m * cols, seed), gen(m * rows, seed + 1));
    let (y0, dx0) = (rand_vec(m * rows, seed + 2), rand_vec(m * cols, seed + 3));
    let (yr, dxr) = (ref_forward(&wd, rows, cols, &x, m), ref_backward(&wd, rows, cols, &dy, m));
    let mut worst = 0f64;
    for accumulate in [false, true] {
        let mut y = if accumulate { y0.clone() } else { vec![f32::NAN; m * rows] };
        w.forward_with(kernel, &x, m, &mut y, output(accumulate)).unwrap();
        let want: Vec<f64> = yr.iter().zip(&y0).map(|(&r, &a)| r + if accumulate { a as f64 } else { 0.0 }).collect();
        let e = rel_err(&y, &want);
        assert!(e < 1e-5, "{w:?} {kernel:?} forward m={m} accumulate={accumulate}: relative error {e:e}");
        worst = worst.max(e);

        let mut dx = if accumulate { dx0.clone() } else { vec![f32::NAN; m * cols] };
        w.backward_input_with(kernel, &dy, m, &mut dx, output(accumulate)).unwrap();
        let want: Vec<f64> = dxr.iter().zip(&dx0).map(|(&r, &a)| r + if accumulate { a as f64 } else { 0.0 }).collect();
        let e = rel_err(&dx, &want);
        assert!(e < 1e-5, "{w:?} {kernel:?} input gradient m={m} accumulate={accumulate}: relative error {e:e}");
        worst = worst.max(e);
    }
    worst
}

fn kernels() -> Vec<Kernel> {
    if bf16_simd_available() {
        vec![Kernel::Auto, Kernel::Portable]
    } else {
        eprintln!("no AVX512-BF16 on this CPU: only the portable bf16 path is tested");
        vec![Kernel::Portable]
    }
}

#[test]
fn bf16_products_match_reference() {
    for kernel in kernels() {
        let mut worst = 0f64;
        for (i, &(m, rows, cols)) in SHAPES32.iter().chain(&[(2, 7, 3), (13, 40, 33), (25, 64, 1)]).enumerate() {
            let w = FrozenMatrix::bf16_from_f32(&rand_vec(rows * cols, 10 + i as u64), rows, cols).unwrap();
            worst = worst.max(check_products(&w, m, kernel, true, 100 + i as u64));
        }
        eprintln!("bf16 {kernel:?}: max relative error {worst:.2e}");
    }
}

#[test]
fn bf16_simd_rounds_activations_like_the_portable_path() {
    if !bf16_simd_available() {
        return;
    }
    let (m, rows, cols) = (37, 70, 150);
    let w = FrozenMatrix::bf16_from_f32(&rand_vec(rows * cols, 1), rows, cols).unwrap();
    // Values that are not bf16: both paths must round them to nearest even the same way.
    let (x, dy) = (rand_vec(m * cols, 2), rand_vec(m * rows, 3));
    let (mut y1, mut y2) = (vec![0f32; m * rows], vec![0f32; m * rows]);
    w.forward_with(Kernel::Auto, &x, m, &mut y1, Output::Overwrite).unwrap();
    w.forward_with(Kernel::Portable, &x, m, &mut y2, Output::Overwrite).unwrap();
    let e = rel_err(&y1, &y2.iter().map(|&v| v as f64).collect::<Vec<_>>());
    assert!(e < 1e-6, "forward: simd vs portable {e:e}");
    let (mut d1, mut d2) = (vec![0f32; m * cols], vec![0f32; m * cols]);
    w.backward_input_with(Kernel::Auto, &dy, m, &mut d1, Output::Overwrite).unwrap();
    w.backward_input_with(Kernel::Portable, &dy, m, &mut d2, Output::Overwrite).unwrap();
    let e = rel_err(&d1, &d2.iter().map(|&v| v as f64).collect::<Vec<_>>());
    assert!(e < 1e-6, "input gradient: simd vs portable {e:e}");
}

#[test]
fn dense_products_match_reference() {
    let mut worst = 0f64;
    for (i, &(m, rows, cols)) in SHAPES32.iter().enumerate() {
        let w = FrozenMatrix::from_f32(rand_vec(rows * cols, 20 + i as u64), rows, cols).unwrap();
        worst = worst.max(check_products(&w, m, Kernel::Auto, false, 200 + i as u64));
    }
    eprintln!("f32: max relative error {worst:.2e}");
    // f64 storage with f64 activations: the f64 gemm.
    let (m, rows, cols) = (9, 13, 21);
    let wv: Vec<f64> = rand_vec(rows * cols, 5).into_iter().map(f64::from).collect();
    let w = FrozenMatrix::from_f64(wv.clone(), rows, cols).unwrap();
    let x: Vec<f64> = rand_vec(m * cols, 6).into_iter().map(f64::from).collect();
    let mut y = vec![0f64; m * rows];
    w.forward(&x, m, &mut y, Output::Overwrite).unwrap();
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    for (a, b) in y.iter().zip(ref_forward(&wv, rows, cols, &x32, m)) {
        assert!((a - b).abs() < 1e-12);
    }
    let dy: Vec<f64> = rand_vec(m * rows, 7).into_iter().map(f64::from).collect();
    let mut dx = vec![1f64; m * cols];
    w.backward_input(&dy, m, &mut dx, Output::Add).unwrap();
    let dy32: Vec<f32> = dy.iter().map(|&v| v as f32).collect();
    for (a, b) in dx.iter().zip(ref_backward(&wv, rows, cols, &dy32, m)) {
        assert!((a - 1.0 - b).abs() < 1e-12);
    }
}

#[test]
fn block_products_match_reference() {
    for (dtypes, shapes, seed) in [(&BLOCK32[..], &SHAPES32[..], 300), (&BLOCK256[..], &SHAPES256[..], 400)] {
        for &dtype in dtypes {
            let mut worst = 0f64;
            for (i, &(m, rows, cols)) in shapes.iter().enumerate() {
                let w = FrozenMatrix::quantize(&rand_vec(rows * cols, seed + i as u64), rows, cols, dtype).unwrap();
                worst = worst.max(check_products(&w, m, Kernel::Auto, false, seed + 50 + i as u64));
            }
            eprintln!("{dtype:?}: max relative error {worst:.2e}");
        }
    }
}

#[test]
fn quantize_matches_candle_bit_for_bit() {
    for &dtype in BLOCK32.iter().chain(&BLOCK256) {
        let (rows, cols) = (19, if dtype.block_size() == 256 { 512 } else { 96 });
        let data = rand_vec(rows * cols, 7);
        let w = FrozenMatrix::quantize(&data, rows, cols, dtype).unwrap();
        let t = Tensor::from_vec(data.clone(), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let Storage::Blocks(b) = &w.storage else { panic!("{dtype:?} is not stored as blocks") };
        assert_eq!(b.raw(), &q.data().unwrap()[..], "{dtype:?}: bytes differ from QTensor::quantize");
        let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = w.dequantize();
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype:?}: dequantization differs");
        let from_q = FrozenMatrix::from_qtensor(&q).unwrap();
        assert_eq!(from_q.dtype(), FrozenDType::Ggml(dtype));
        assert!(from_q.dequantize().iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
        let mut row = vec![0f32; cols];
        from_q.row_into(rows - 1, &mut row).unwrap();
        assert_eq!(row, want[(rows - 1) * cols..]);
    }
}

#[test]
fn ggml_f32_and_bf16_data_become_dense_and_packed_storage() {
    let (rows, cols) = (3, 5);
    let data = rand_bf16_exact(rows * cols, 9);
    let t = Tensor::from_vec(data.clone(), (rows, cols), &Device::Cpu).unwrap();
    for (dtype, want) in [
        (GgmlDType::F32, FrozenDType::F32),
        (GgmlDType::BF16, FrozenDType::Bf16),
        (GgmlDType::F16, FrozenDType::Ggml(GgmlDType::F16)),
    ] {
        let q = QTensor::quantize(&t, dtype).unwrap();
        let w = FrozenMatrix::from_qtensor(&q).unwrap();
        assert_eq!(w.dtype(), want);
        assert_eq!(w.dequantize(), data, "{dtype:?}");
    }
}

#[test]
fn rows_and_dequantize_agree_for_every_format() {
    let (rows, cols) = (37, 256);
    let data = rand_vec(rows * cols, 11);
    let mut ws = vec![
        FrozenMatrix::from_f32(data.clone(), rows, cols).unwrap(),
        FrozenMatrix::bf16_from_f32(&data, rows, cols).unwrap(),
    ];
    ws.extend(BLOCK32.iter().chain(&BLOCK256).map(|&d| FrozenMatrix::quantize(&data, rows, cols, d).unwrap()));
    for w in &ws {
        let all = w.dequantize();
        let mut row = vec![0f32; cols];
        for r in [0, 1, 31, 32, 36] {
            w.row_into(r, &mut row).unwrap();
            assert_eq!(row, all[r * cols..(r + 1) * cols], "{w:?} row {r}");
        }
        assert!(w.row_into(rows, &mut row).is_err());
    }
    // bf16 is round-to-nearest-even of each value.
    let b = FrozenMatrix::bf16_from_f32(&data, rows, cols).unwrap().dequantize();
    assert!(b.iter().zip(&data).all(|(&b, &d)| b == half::bf16::from_f32(d).to_f32()));
}

#[test]
fn bytes_match_the_format() {
    let data = rand_vec(576 * 576, 1);
    let q4 = FrozenMatrix::convert(&data, 576, 576, BaseDType::Q4_0).unwrap();
    assert_eq!(q4.bytes(), 576 * 18 * 18);
    let q8 = FrozenMatrix::convert(&data, 576, 576, BaseDType::Q8_0).unwrap();
    assert_eq!(q8.bytes(), 576 * 18 * 34);
    let b = FrozenMatrix::convert(&data, 576, 576, BaseDType::Bf16).unwrap();
    assert_eq!(b.bytes(), 576 * 576 * 2);
    let f = FrozenMatrix::convert(&data, 576, 576, BaseDType::F32).unwrap();
    assert_eq!(f.bytes(), 576 * 576 * 4);
    for d in [BaseDType::F32, BaseDType::Bf16, BaseDType::Q8_0, BaseDType::Q4_0] {
        let w = FrozenMatrix::convert(&data, 576, 576, d).unwrap();
        assert_eq!(w.bytes() as f64, d.bytes_per_param().unwrap() * (576 * 576) as f64, "{d}");
    }
    // bf16 pads rows and columns to multiples of 32.
    assert_eq!(FrozenMatrix::bf16_from_f32(&data[..5 * 33], 5, 33).unwrap().bytes(), 2 * 32 * 64);
    let k = FrozenMatrix::quantize(&data[..3 * 512], 3, 512, GgmlDType::Q4K).unwrap();
    assert_eq!(k.bytes(), 3 * 2 * 144);
}

#[test]
fn bad_input_is_an_error_naming_the_shape() {
    let data = rand_vec(4 * 100, 1);
    let e = FrozenMatrix::quantize(&data, 4, 100, GgmlDType::Q4_0).unwrap_err().to_string();
    assert!(e.contains("[4, 100]") && e.contains("32"), "{e}");
    let e = FrozenMatrix::quantize(&data, 4, 100, GgmlDType::Q4K).unwrap_err().to_string();
    assert!(e.contains("256"), "{e}");
    assert!(FrozenMatrix::from_f32(data.clone(), 4, 99).is_err());
    assert!(FrozenMatrix::from_ggml_bytes(&[0u8; 17], 1, 32, GgmlDType::Q4_0).is_err());
    assert!(FrozenMatrix::convert(&data, 4, 100, BaseDType::Gguf).is_err());
    let w = FrozenMatrix::bf16_from_f32(&data, 4, 100).unwrap();
    let e = w.forward(&[0f32; 99], 1, &mut [0f32; 4], Output::Overwrite).unwrap_err().to_string();
    assert!(e.contains("[1, 100]"), "{e}");
    assert!(w.backward_input(&[0f32; 4], 1, &mut [0f32; 99], Output::Overwrite).is_err());
    let e = w.forward(&[0f64; 100], 1, &mut [0f64; 4], Output::Overwrite).unwrap_err().to_string();
    assert!(e.contains("F64"), "{e}");
    let w64 = FrozenMatrix::from_f64(vec![0.0; 400], 4, 100).unwrap();
    assert!(w64.forward(&[0f32; 100], 1, &mut [0f32; 4], Output::Overwrite).is_err());
}

#[test]
fn base_dtype_names() {
    for d in BaseDType::ALL {
        assert_eq!(d.to_string().parse::<BaseDType>().unwrap(), d);
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(j, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<BaseDType>(&j).unwrap(), d);
    }
    assert_eq!("Q8_0".parse::<BaseDType>().unwrap(), BaseDType::Q8_0);
    let e = "q5_k".parse::<BaseDType>().unwrap_err();
    assert!(e.contains("f32, bf16, q8_0, q4_0, gguf"), "{e}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn transpose_group_pairs_rows() {
    if !bf16_simd_available() {
        return;
    }
    // A forward panel block: 16 k-pairs x 32 rows; word (j, l) = (W[l, 2j], W[l, 2j+1]).
    let w = |r: usize, c: usize| (r * 64 + c) as u32;
    let src: Vec<u32> = (0..512).map(|i| (w(i % 32, 2 * (i / 32))) | w(i % 32, 2 * (i / 32) + 1) << 16).collect();
    let mut dst = vec![0u32; 512];
    bf16::transpose_group_for_test(&src, &mut dst);
    for i in 0..16 {
        for c in 0..32 {
            assert_eq!(dst[i * 32 + c], w(2 * i, c) | w(2 * i + 1, c) << 16, "row pair {i}, column {c}");
        }
    }
}

#[test]
fn frozen_linear_forward_and_backward() {
    let mut formats = vec![
        FrozenMatrix::from_f32(rand_vec(33 * 64, 1), 33, 64).unwrap(),
        FrozenMatrix::bf16_from_f32(&rand_vec(33 * 64, 2), 33, 64).unwrap(),
    ];
    formats.push(FrozenMatrix::quantize(&rand_vec(33 * 64, 3), 33, 64, GgmlDType::Q4_0).unwrap());
    for w in formats {
        let w = Arc::new(w);
        let (rows, cols) = (w.rows(), w.cols());
        let x = rand_bf16_exact(2 * 5 * cols, 4);
        let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (2, 5, cols), &Device::Cpu).unwrap()).unwrap();
        let y = frozen_linear(xv.as_tensor(), &w).unwrap();
        assert_eq!(y.dims(), &[2, 5, rows]);
        let wd = w.dequantize_f64();
        let e = rel_err(&y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &ref_forward(&wd, rows, cols, &x, 10));
        assert!(e < 1e-6, "{w:?}: forward {e:e}");
        let probe_v = rand_bf16_exact(10 * rows, 5);
        let probe = Tensor::from_vec(probe_v.clone(), (2, 5, rows), &Device::Cpu).unwrap();
        let loss = (y * probe).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let dx = grads.get(&xv).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let e = rel_err(&dx, &ref_backward(&wd, rows, cols, &probe_v, 10));
        assert!(e < 1e-6, "{w:?}: input gradient {e:e}");
        eprintln!("frozen_linear {:?}: input gradient relative error {e:.2e}", w.dtype());
        assert!(
            frozen_linear(&Tensor::zeros((2, cols + 1), candle_core::DType::F32, &Device::Cpu).unwrap(), &w).is_err()
        );
    }
}

#[test]
fn frozen_linear_f64_matches_finite_differences() {
    use crate::testutil::{check_grad, rand_t};
    let (rows, cols) = (7, 11);
    let w: Vec<f64> = rand_t(&[rows * cols], 3).to_vec1().unwrap();
    let w = Arc::new(FrozenMatrix::from_f64(w, rows, cols).unwrap());
    check_grad(&[rand_t(&[6, cols], 4)], &|t| frozen_linear(&t[0], &w), 1e-7);
}

#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "timing"]
fn micro_kernel_peak() {
    if !bf16_simd_available() {
        return;
    }
    for kc in [32, 64, 128, 256] {
        let best = (0..20).map(|_| bf16::micro_peak_for_test(kc, 20000)).fold(0f64, f64::max);
        eprintln!("micro-kernel kc={kc}: {best:.1} GFLOP/s");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn bf16_simd_work_splits_agree() {
    use bf16::Strategy;
    if !bf16_simd_available() {
        return;
    }
    // Shapes where each split has several tasks, k blocks, partial panels and row tails.
    for (i, &(m, rows, cols)) in [(5, 900, 70), (200, 1000, 96), (430, 67, 800), (37, 2100, 33)].iter().enumerate() {
        let w = FrozenMatrix::bf16_from_f32(&rand_vec(rows * cols, 60 + i as u64), rows, cols).unwrap();
        let Storage::Bf16(b) = &w.storage else { unreachable!() };
        let wd = w.dequantize_f64();
        let (x, dy) = (rand_bf16_exact(m * cols, 70 + i as u64), rand_bf16_exact(m * rows, 80 + i as u64));
        let (yr, dxr) = (ref_forward(&wd, rows, cols, &x, m), ref_backward(&wd, rows, cols, &dy, m));
        let mut worst = 0f64;
        for s in [
            Strategy::Rows(1),
            Strategy::Rows(7),
            Strategy::SplitK(1, 1),
            Strategy::SplitK(3, 1),
            Strategy::SplitK(8, 3),
            Strategy::SplitGroups(1),
            Strategy::SplitGroups(5),
        ] {
            for accumulate in [false, true] {
                let base = if accumulate { 1.0 } else { 0.0 };
                if !matches!(s, Strategy::SplitK(..)) {
                    let mut y = vec![base as f32; m * rows];
                    b.simd_with(false, s, &x, m, &mut y, output(accumulate));
                    let want: Vec<f64> = yr.iter().map(|v| v + base).collect();
                    let e = rel_err(&y, &want);
                    assert!(e < 1e-5, "forward {m}x{cols}->{rows} {s:?} accumulate={accumulate}: {e:e}");
                    worst = worst.max(e);
                }
                let mut dx = vec![base as f32; m * cols];
                b.simd_with(true, s, &dy, m, &mut dx, output(accumulate));
                let want: Vec<f64> = dxr.iter().map(|v| v + base).collect();
                let e = rel_err(&dx, &want);
                assert!(e < 1e-5, "input gradient {m}x{rows}->{cols} {s:?} accumulate={accumulate}: {e:e}");
                worst = worst.max(e);
            }
        }
        eprintln!("bf16 work splits, m={m} rows={rows} cols={cols}: max relative error {worst:.2e}");
    }
}

#[test]
fn fast_dequantization_matches_candle_on_arbitrary_blocks() {
    use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ4_1, BlockQ8_0, GgmlType};
    fn candle_values<B: GgmlType>(bytes: &[u8], n: usize) -> Vec<f32> {
        let q = QTensor::new(
            candle_core::quantized::QStorage::from_data(std::borrow::Cow::Borrowed(bytes), &Device::Cpu, B::DTYPE)
                .unwrap(),
            (1, n),
        )
        .unwrap();
        q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }
    let (rows, cols) = (7, 96);
    let mut r = rng(5);
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
        // Random bytes: every scale bit pattern (subnormal, infinite, NaN) and every quant.
        let bytes: Vec<u8> = (0..rows * cols / 32 * dtype.type_size()).map(|_| r.random()).collect();
        let w = FrozenMatrix::from_ggml_bytes(&bytes, rows, cols, dtype).unwrap();
        let want = match dtype {
            GgmlDType::Q8_0 => candle_values::<BlockQ8_0>(&bytes, rows * cols),
            GgmlDType::Q4_0 => candle_values::<BlockQ4_0>(&bytes, rows * cols),
            _ => candle_values::<BlockQ4_1>(&bytes, rows * cols),
        };
        for (i, (a, b)) in w.dequantize().iter().zip(&want).enumerate() {
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{dtype:?} value {i}: {a} vs candle {b}");
        }
    }
}

#[test]
fn gather_rows_keeps_the_format() {
    let (rows, cols) = (40, 64);
    let data = rand_vec(rows * cols, 17);
    let order: Vec<usize> = (0..rows).rev().chain([3, 3]).collect();
    let mut ws = vec![
        FrozenMatrix::from_f32(data.clone(), rows, cols).unwrap(),
        FrozenMatrix::from_f64(data.iter().map(|&v| v as f64).collect(), rows, cols).unwrap(),
        FrozenMatrix::bf16_from_f32(&data, rows, cols).unwrap(),
    ];
    ws.extend(
        [GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::F16]
            .map(|d| FrozenMatrix::quantize(&data, rows, cols, d).unwrap()),
    );
    for w in &ws {
        let g = w.gather_rows(&order).unwrap();
        assert_eq!((g.rows(), g.cols(), g.dtype()), (order.len(), cols, w.dtype()));
        let (a, b) = (w.dequantize(), g.dequantize());
        for (i, &r) in order.iter().enumerate() {
            assert_eq!(b[i * cols..(i + 1) * cols], a[r * cols..(r + 1) * cols], "{w:?} row {i}");
        }
        assert!(w.gather_rows(&[rows]).is_err() && w.gather_rows(&[]).is_err());
    }
}
