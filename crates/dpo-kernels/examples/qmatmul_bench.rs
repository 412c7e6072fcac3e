//! Throughput of the frozen-weight products (`dpo_kernels::qmatmul`) on SmolLM2-135M shapes.
//!
//! `RAYON_NUM_THREADS=2 cargo run -p dpo --example qmatmul_bench [--reps N] [--shape M,COLS,ROWS]...`
//!
//! Prints GFLOP/s = 2·m·rows·cols / seconds (best of the repetitions; the formats of one shape
//! are timed in turn within each repetition, so that load from other jobs hits them alike) for
//! the forward product `y = x W^T` and the input gradient `dx = dy W`, the time to convert the
//! whole weight to f32 one tile at a time on one thread (`deq ms/1t`; for f32 a copy), and that
//! time split over the threads as a share of the forward product's time (the dequantisation
//! share of the tiled formats).

use candle_core::quantized::GgmlDType;
use dpo_kernels::qmatmul::{bf16_simd_available, FrozenMatrix, Kernel};
use rand::{Rng, SeedableRng};
use std::time::Instant;

struct Format {
    name: &'static str,
    kernel: Kernel,
    build: fn(&[f32], usize, usize) -> FrozenMatrix,
}

fn formats() -> Vec<Format> {
    vec![
        Format {
            name: "f32 (gemm)",
            kernel: Kernel::Auto,
            build: |w, r, c| FrozenMatrix::from_f32(w.to_vec(), r, c).unwrap(),
        },
        Format { name: "bf16", kernel: Kernel::Auto, build: |w, r, c| FrozenMatrix::bf16_from_f32(w, r, c).unwrap() },
        Format {
            name: "bf16 portable",
            kernel: Kernel::Portable,
            build: |w, r, c| FrozenMatrix::bf16_from_f32(w, r, c).unwrap(),
        },
        Format {
            name: "q8_0",
            kernel: Kernel::Auto,
            build: |w, r, c| FrozenMatrix::quantize(w, r, c, GgmlDType::Q8_0).unwrap(),
        },
        Format {
            name: "q4_0",
            kernel: Kernel::Auto,
            build: |w, r, c| FrozenMatrix::quantize(w, r, c, GgmlDType::Q4_0).unwrap(),
        },
        Format {
            name: "q4_1",
            kernel: Kernel::Auto,
            build: |w, r, c| FrozenMatrix::quantize(w, r, c, GgmlDType::Q4_1).unwrap(),
        },
    ]
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

/// The core clock in GHz, from a loop of one-cycle dependent steps (best of a few tries).
fn clock_ghz() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let n: u64 = 20_000_000;
        let mut best = f64::INFINITY;
        for _ in 0..30 {
            let t = Instant::now();
            // SAFETY: a register-only countdown loop (one `dec`/`jnz` pair per cycle).
            unsafe { std::arch::asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) n => _, options(nomem, nostack)) };
            best = best.min(t.elapsed().as_secs_f64());
        }
        Some(n as f64 / best / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut reps = 5;
    let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
    let mut only: Option<String> = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--reps" => reps = args[i + 1].parse().expect("--reps N"),
            "--only" => only = Some(args[i + 1].clone()),
            "--shape" => {
                let v: Vec<usize> = args[i + 1].split(',').map(|s| s.parse().expect("--shape M,COLS,ROWS")).collect();
                shapes.push((v[0], v[1], v[2]));
            }
            a => panic!("unknown argument {a}"),
        }
        i += 2;
    }
    if shapes.is_empty() {
        shapes = vec![(2048, 576, 576), (2048, 576, 1536), (2048, 1536, 576), (128, 576, 49152), (64, 576, 1536)];
    }
    println!(
        "threads {}, AVX512-BF16 {}, clock ~{:.2} GHz (dependent-loop estimate)",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "(all)".into()),
        bf16_simd_available(),
        clock_ghz().unwrap_or(f64::NAN)
    );
    let threads = candle_core::utils::get_num_threads();
    println!(
        "{:>18} {:>14} {:>10} {:>10} {:>8} {:>8} {:>10} {:>9}",
        "m,cols,rows", "format", "fwd GF/s", "bwd GF/s", "fwd/f32", "bwd/f32", "deq ms/1t", "deq/fwd"
    );
    for &(m, cols, rows) in &shapes {
        let w = rand_vec(rows * cols, 1);
        let x = rand_vec(m * cols, 2);
        let dy = rand_vec(m * rows, 3);
        let fmts: Vec<Format> = formats()
            .into_iter()
            .filter(|f| only.as_ref().is_none_or(|o| f.name.contains(o.as_str()) || f.name.starts_with("f32")))
            .collect();
        let mats: Vec<FrozenMatrix> = fmts.iter().map(|f| (f.build)(&w, rows, cols)).collect();
        let (mut y, mut dx) = (vec![0f32; m * rows], vec![0f32; m * cols]);
        let mut best = vec![[f64::INFINITY; 3]; fmts.len()];
        let tile_rows = (256 << 10) / (4 * cols);
        let mut tile = vec![0f32; tile_rows * cols];
        for _ in 0..reps {
            for (k, (f, mat)) in fmts.iter().zip(&mats).enumerate() {
                let t = Instant::now();
                mat.forward_with(f.kernel, &x, m, &mut y, dpo_kernels::Output::Overwrite).unwrap();
                best[k][0] = best[k][0].min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                mat.backward_input_with(f.kernel, &dy, m, &mut dx, dpo_kernels::Output::Overwrite).unwrap();
                best[k][1] = best[k][1].min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                for r0 in (0..rows).step_by(tile_rows) {
                    let r1 = (r0 + tile_rows).min(rows);
                    mat.rows_into(r0, r1, &mut tile[..(r1 - r0) * cols]).unwrap();
                }
                best[k][2] = best[k][2].min(t.elapsed().as_secs_f64());
            }
        }
        let flop = 2.0 * (m * rows * cols) as f64;
        for (k, f) in fmts.iter().enumerate() {
            let (fw, bw) = (flop / best[k][0] / 1e9, flop / best[k][1] / 1e9);
            println!(
                "{:>18} {:>14} {:>10.1} {:>10.1} {:>8.2} {:>8.2} {:>10.2} {:>8.1}%",
                format!("{m},{cols},{rows}"),
                f.name,
                fw,
                bw,
                best[0][0] / best[k][0],
                best[0][1] / best[k][1],
                best[k][2] * 1e3,
                100.0 * best[k][2] / threads as f64 / best[k][0]
            );
        }
    }
}
