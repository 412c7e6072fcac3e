//! Throughput of the mixed-precision weight gradient (`dpo_kernels::qmatmul::bf16_weight_grad`,
//! `dW[rows, cols] = bf16(dy)^T bf16(x)`) against the f32 one (candle's matmul of `dy^T` and `x`,
//! the product full fine-tuning computes in f32), on SmolLM2-135M shapes.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p dpo-kernels --example weight_grad_bench`
//!
//! Prints GFLOP/s = 2·m·rows·cols / seconds, best of 5, for each shape `m x rows x cols`.

use candle_core::{Device, Tensor};
use dpo_kernels::qmatmul::{bf16_weight_grad, bf16_weight_grad_with, Kernel};
use dpo_kernels::Output;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let shapes = [(1400, 576, 576), (1400, 192, 576), (1400, 1536, 576), (1400, 576, 1536), (128, 49152, 576)];
    for (m, rows, cols) in shapes {
        let (dy, x) = (rand_vec(m * rows, 1), rand_vec(m * cols, 2));
        let flop = 2.0 * (m * rows * cols) as f64 / 1e9;
        let (tdy, tx) = (
            Tensor::from_vec(dy.clone(), (m, rows), &Device::Cpu).unwrap(),
            Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).unwrap(),
        );
        let f32_s = best(5, || {
            tdy.t().unwrap().matmul(&tx).unwrap();
        });
        let mut dw = vec![0f32; rows * cols];
        let bf16_s = best(5, || bf16_weight_grad(&dy, &x, m, &mut dw, Output::Overwrite).unwrap());
        let port_s =
            best(2, || bf16_weight_grad_with(Kernel::Portable, &dy, &x, m, &mut dw, Output::Overwrite).unwrap());
        // the kernel alone, on x^T packed once and dy^T made once
        let xt: Vec<f32> = (0..cols * m).map(|i| x[(i % m) * cols + i / m]).collect();
        let dyt: Vec<f32> = (0..rows * m).map(|i| dy[(i % m) * rows + i / m]).collect();
        let packed = dpo_kernels::FrozenMatrix::bf16_from_f32(&xt, cols, m).unwrap();
        let kernel_s = best(5, || packed.forward(&dyt, rows, &mut dw, Output::Overwrite).unwrap());
        println!(
            "{m:5} x {rows:5} x {cols:5}: f32 (candle) {:6.1} GFLOP/s, bf16 {:6.1} (kernel alone {:6.1}), bf16 portable {:6.1}",
            flop / f32_s,
            flop / bf16_s,
            flop / kernel_s,
            flop / port_s
        );
    }
}
