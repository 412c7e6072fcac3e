//! LoRA on a frozen base (f64, tiny random model): the DPO loss gradient of every A and B against
//! central finite differences, and recomputation (gradient checkpointing) giving the gradients
//! of the plain backward pass, for LoRA (with dropout) and for full fine-tuning.

use candle_core::{DType, Device, Tensor};
use dpo_data::Tokenized;
use dpo_model::adapter::{Adapter, LoraConfig};
use dpo_model::policy::Policy;
use dpo_model::{random_tensors, Llama, LlamaConfig};
use dpo_train::loss::{Loss, Objective};
use dpo_train::step::{step_gradients, StepSettings};
use dpo_train::task::Task;
use rand::{Rng, SeedableRng};

mod common;
use common::{examples, REFERENCE};

/// The shared tiny model, untied, with q/k/v biases (every kind of tensor).
fn config() -> LlamaConfig {
    common::config(false, true)
}

fn task() -> Task {
    Task::Preference(Objective::single(Loss::Sigmoid { beta: 0.5, label_smoothing: 0.0 }))
}

/// An adapter on every projection with random A and B (B nonzero, so every A gets a gradient).
fn adapter(cfg: &LlamaConfig, dropout: f64) -> Adapter {
    let lora = LoraConfig { use_peft: true, lora_r: 3, lora_alpha: 6.0, lora_dropout: dropout, ..Default::default() };
    let mut a = Adapter::init(&lora, cfg, "tiny", 5, DType::F64).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for m in &mut a.modules {
        let (out, r) = m.b.dims2().unwrap();
        let v: Vec<f64> = (0..out * r).map(|_| rng.random_range(-0.5..0.5)).collect();
        m.b = Tensor::from_vec(v, (out, r), &Device::Cpu).unwrap();
    }
    a
}

fn settings(recompute: bool, dropout_seed: Option<u64>) -> StepSettings {
    StepSettings { max_tokens: 12, batch_size: 3, dropout_seed, recompute, neftune: None, beta_dpo: None }
}

/// The mean DPO loss of the adapted model (no dropout).
fn mean_loss(base: &Llama, a: &Adapter) -> f64 {
    let policy = Policy::lora(base, a).unwrap();
    let ex = examples();
    let refs: Vec<&Tokenized> = ex.iter().collect();
    let r: Vec<&[f64]> = REFERENCE.iter().map(|r| r.as_slice()).collect();
    let res = step_gradients(&policy, &refs, &r, &task(), &settings(false, None)).unwrap();
    res.stats.iter().map(|s| s.loss).sum::<f64>() / 3.0
}

#[test]
fn lora_gradients_match_finite_differences() {
    let cfg = config();
    let base = Llama::from_tensors(cfg.clone(), &random_tensors(&cfg, 7, 20.0, DType::F64).unwrap()).unwrap();
    let a = adapter(&cfg, 0.0);
    let policy = Policy::lora(&base, &a).unwrap();
    assert_eq!(
        policy.params.len(),
        2 * 7 * cfg.num_hidden_layers,
        "an A and a B for each of the 7 projections of each layer"
    );
    let ex = examples();
    let refs: Vec<&Tokenized> = ex.iter().collect();
    let r: Vec<&[f64]> = REFERENCE.iter().map(|r| r.as_slice()).collect();
    let res = step_gradients(&policy, &refs, &r, &task(), &settings(false, None)).unwrap();
    let mut worst = 0f64;
    for (i, ((name, _), g)) in policy.params.iter().zip(&res.grads).enumerate() {
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(g.iter().any(|&x| x != 0.0), "{name}: zero gradient");
        let (m, which) = (i / 2, i % 2);
        let base_t = if which == 0 { &a.modules[m].a } else { &a.modules[m].b };
        let dims = base_t.dims().to_vec();
        let values = base_t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let (mut num, mut den) = (0.0, 0.0);
        for j in (0..g.len()).step_by((g.len() / 5).max(1)) {
            let at = |d: f64| {
                let mut v = values.clone();
                v[j] += d;
                let mut a2 = a.clone();
                let t = Tensor::from_vec(v, dims.as_slice(), &Device::Cpu).unwrap();
                if which == 0 {
                    a2.modules[m].a = t;
                } else {
                    a2.modules[m].b = t;
                }
                mean_loss(&base, &a2)
            };
            let eps = 1e-5;
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            num += (fd - g[j]).powi(2);
            den += fd.powi(2);
        }
        let rel = (num / den.max(1e-30)).sqrt();
        assert!(rel < 1e-5, "{name}: relative error {rel:.2e} against finite differences");
        worst = worst.max(rel);
    }
    println!("{} adapter tensors: worst relative error {worst:.2e}", res.grads.len());
}

/// The largest per-tensor relative difference `|a - b| / |b|` (norms) between two gradient lists.
fn worst_relative(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
            let n = y.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
            d / n.max(1e-300)
        })
        .fold(0.0, f64::max)
}

#[test]
fn recomputation_gives_the_gradients_of_the_plain_backward_pass() {
    let cfg = config();
    let tensors = random_tensors(&cfg, 7, 20.0, DType::F64).unwrap();
    let ex = examples();
    let refs: Vec<&Tokenized> = ex.iter().collect();
    let r: Vec<&[f64]> = REFERENCE.iter().map(|r| r.as_slice()).collect();
    // full fine-tuning (the tied embedding gets its gradient from the head and from the lookup)
    let full = Policy::new(cfg.clone(), &tensors).unwrap();
    let plain = step_gradients(&full, &refs, &r, &task(), &settings(false, None)).unwrap();
    let again = step_gradients(&full, &refs, &r, &task(), &settings(true, None)).unwrap();
    let full_rel = worst_relative(&again.grads, &plain.grads);
    assert!(full_rel < 1e-12, "full fine-tuning: {full_rel:.2e}");
    assert_eq!(plain.stats, again.stats);
    // LoRA with dropout: the recomputed layers draw the same masks
    let base = Llama::from_tensors(cfg.clone(), &tensors).unwrap();
    let lora = Policy::lora(&base, &adapter(&cfg, 0.3)).unwrap();
    let plain = step_gradients(&lora, &refs, &r, &task(), &settings(false, Some(9))).unwrap();
    let again = step_gradients(&lora, &refs, &r, &task(), &settings(true, Some(9))).unwrap();
    let lora_rel = worst_relative(&again.grads, &plain.grads);
    assert!(lora_rel < 1e-12, "LoRA: {lora_rel:.2e}");
    let no_dropout = step_gradients(&lora, &refs, &r, &task(), &settings(false, None)).unwrap();
    assert!(worst_relative(&no_dropout.grads, &plain.grads) > 1e-3, "dropout changes the gradients");
    println!("recomputed vs plain: full {full_rel:.1e}, LoRA with dropout {lora_rel:.1e}");
}
