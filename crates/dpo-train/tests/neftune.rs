//! NEFTune: the noise on the input embeddings is uniform in `[-alpha/sqrt(L*hidden), +...]`,
//! drawn from the step's seed (the same noise for the same seed, other noise for another); a step
//! with it changes the loss, and gradient checkpointing sees the same noise (the same loss and
//! gradients).

use candle_core::{DType, Tensor};
use dpo_data::Tokenized;
use dpo_model::policy::Policy;
use dpo_model::{random_tensors, EmbeddingNoise, Llama};
use dpo_train::loss::{Loss, Objective};
use dpo_train::step::{step_gradients, Neftune, StepSettings};
use dpo_train::task::Task;

mod common;
use common::{config, examples, REFERENCE};

fn tensors() -> std::collections::HashMap<String, Tensor> {
    random_tensors(&config(false, false), 7, 20.0, DType::F64).unwrap()
}

fn model() -> Llama {
    Llama::from_tensors(config(false, false), &tensors()).unwrap()
}

#[test]
fn embedding_noise_is_uniform_within_its_magnitude_and_seeded() {
    let m = model();
    let ids: Vec<u32> = (0..200).map(|i| (i % 23) as u32).collect();
    let clean = m.embed_rows(&ids).unwrap();
    let noisy = |seed| m.with_neftune(EmbeddingNoise { magnitude: 0.25, seed }).embed_rows(&ids).unwrap();
    let d = (noisy(3) - &clean).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!(d.iter().all(|x| x.abs() <= 0.25));
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64;
    // U(-a, a): mean 0, variance a^2 / 3 (1600 draws)
    assert!(mean.abs() < 0.02 && (var - 0.25f64.powi(2) / 3.0).abs() < 0.003, "mean {mean}, variance {var}");
    let same = (noisy(3) - noisy(3)).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    let other = (noisy(3) - noisy(4)).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    assert_eq!(same, 0.0);
    assert!(other > 1.0);
    // the magnitude: alpha / sqrt(L * hidden), L the longest prompt + completion of the pass
    let ex = examples();
    let refs: Vec<&Tokenized> = ex.iter().collect();
    let longest = ex.iter().map(|e| e.prompt.len() + e.completions.iter().map(Vec::len).max().unwrap()).max().unwrap();
    let n = Neftune { alpha: 5.0, seed: 1 }.noise(&refs, 8, 0);
    assert!((n.magnitude - 5.0 / ((longest * 8) as f64).sqrt()).abs() < 1e-15);
}

fn step(policy: &Policy, neftune: Option<Neftune>, recompute: bool) -> (f64, Vec<Tensor>) {
    let ex = examples();
    let refs: Vec<&Tokenized> = ex.iter().collect();
    let r: Vec<&[f64]> = REFERENCE.iter().map(|r| r.as_slice()).collect();
    let task = Task::Preference(Objective::single(Loss::Sigmoid { beta: 0.5, label_smoothing: 0.0 }));
    let s = StepSettings { max_tokens: 12, batch_size: 3, dropout_seed: None, recompute, neftune, beta_dpo: None };
    let res = step_gradients(policy, &refs, &r, &task, &s).unwrap();
    (res.stats.iter().map(|s| s.loss).sum::<f64>() / 3.0, res.grads)
}

#[test]
fn a_noisy_step_changes_the_loss_and_checkpointing_sees_the_same_noise() {
    let policy = Policy::new(config(false, false), &tensors()).unwrap();
    let n = Some(Neftune { alpha: 5.0, seed: 9 });
    let (clean, _) = step(&policy, None, false);
    let (noisy, g) = step(&policy, n, false);
    let (again, _) = step(&policy, n, false);
    let (recomputed, g2) = step(&policy, n, true);
    assert!((noisy - clean).abs() > 1e-6, "{noisy} vs {clean}");
    assert_eq!(noisy, again);
    assert!((recomputed - noisy).abs() < 1e-12);
    for (a, b) in g.iter().zip(&g2) {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-10, "gradient with recomputation differs by {d}");
    }
}
