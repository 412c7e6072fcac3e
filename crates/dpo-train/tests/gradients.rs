//! The DPO loss gradient of the whole model (f64, tiny random weights) against central finite
//! differences, for every kind of parameter; and every parameter gets a non-zero gradient.

use candle_core::{DType, Tensor};
use dpo_data::batch::pack_weighted;
use dpo_data::Tokenized;
use dpo_kernels::{Activation, RopeParams, RopeScaling};
use dpo_model::policy::Policy;
use dpo_model::{random_tensors, Family, Features, LayerAttention, Llama, LlamaConfig};
use dpo_train::logps::completion_logps;
use dpo_train::loss::{FDivergence, Loss, LossBatch, Objective};
use dpo_train::step::loss_and_gradients;
use std::collections::HashMap;

mod common;
use common::{config, examples, REFERENCE};

const LOSS: Loss = Loss::Sigmoid { beta: 0.5, label_smoothing: 0.0 };

/// The objective's mean loss over the examples under `tensors`; WPO's weights, constants of the
/// gradient, are `wpo` (those of the unperturbed model).
fn mean_loss(
    config: &LlamaConfig,
    tensors: &HashMap<String, Tensor>,
    objective: &Objective,
    wpo: Option<&[f64]>,
) -> f64 {
    let model = Llama::from_tensors(config.clone(), tensors).unwrap();
    let ex = examples();
    let refs: Vec<&Tokenized> = ex.iter().collect();
    let out = completion_logps(&model, &pack_weighted(&refs, objective.ld_alpha)).unwrap();
    let r: Vec<f64> = REFERENCE.iter().flatten().copied().collect();
    let mut b = LossBatch::new(out.logps, &r, &out.token_counts, 2).unwrap();
    b.f_divergence = objective.f_divergence;
    b.wpo_weights = wpo.map(<[f64]>::to_vec);
    objective.per_example(&b).unwrap().mean_all().unwrap().to_scalar::<f64>().unwrap()
}

/// WPO's weights `exp(mean aligned log-prob)` of every completion under `tensors`.
fn wpo_weights(config: &LlamaConfig, tensors: &HashMap<String, Tensor>) -> Vec<f64> {
    let model = Llama::from_tensors(config.clone(), tensors).unwrap();
    let ex = examples();
    let refs: Vec<&Tokenized> = ex.iter().collect();
    completion_logps(&model, &pack_weighted(&refs, None)).unwrap().aligned_means.iter().map(|m| m.exp()).collect()
}

/// The kind of a parameter tensor (`q_proj`, `q_proj.bias`, `input_layernorm`, ...).
fn kind(name: &str) -> String {
    name.split('.').rev().nth(1).unwrap().to_string() + if name.ends_with("bias") { ".bias" } else { "" }
}

fn check(cfg: LlamaConfig) {
    check_objective(cfg, &Objective::single(LOSS));
}

fn check_objective(cfg: LlamaConfig, objective: &Objective) {
    let tensors = random_tensors(&cfg, 7, 20.0, DType::F64).unwrap();
    let wpo = objective.use_weighting.then(|| wpo_weights(&cfg, &tensors));
    let policy = Policy::new(cfg.clone(), &tensors).unwrap();
    let ex = examples();
    let refs: Vec<&Tokenized> = ex.iter().collect();
    let r: Vec<&[f64]> = REFERENCE.iter().map(|r| r.as_slice()).collect();
    // 12 rows per forward: the three pairs go through two micro-batches whose gradients add up.
    let res =
        loss_and_gradients(&policy, &refs, &r, &dpo_train::task::Task::Preference(objective.clone()), 12, 3).unwrap();
    let loss: f64 = res.stats.iter().map(|s| s.loss).sum::<f64>() / 3.0;
    assert!((loss - mean_loss(&cfg, &tensors, objective, wpo.as_deref())).abs() < 1e-12);
    let mut kinds = std::collections::BTreeSet::new();
    let mut worst = 0f64;
    for ((name, _), g) in policy.params.iter().zip(&res.grads) {
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(g.iter().any(|&x| x != 0.0), "{name}: zero gradient");
        // the entries with the largest gradients, and a spread of others
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        let mut pick: Vec<usize> = idx[..3.min(g.len())].to_vec();
        pick.extend((0..g.len()).step_by((g.len() / 4).max(1)).filter(|i| g[*i] != 0.0).take(4));
        let base = tensors[name].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let (mut num, mut den) = (0.0, 0.0);
        for &j in &pick {
            let at = |d: f64| {
                let mut v = base.clone();
                v[j] += d;
                let mut t = tensors.clone();
                t.insert(name.clone(), Tensor::from_vec(v, tensors[name].dims(), &candle_core::Device::Cpu).unwrap());
                mean_loss(&cfg, &t, objective, wpo.as_deref())
            };
            let eps = 1e-5;
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            num += (fd - g[j]).powi(2);
            den += fd.powi(2);
        }
        let rel = (num / den).sqrt();
        assert!(rel < 1e-5, "{name}: relative error {rel:.2e} against finite differences");
        worst = worst.max(rel);
        kinds.insert(kind(name));
    }
    let want: std::collections::BTreeSet<String> = dpo_model::tensor_names(&cfg).iter().map(|n| kind(n)).collect();
    assert_eq!(kinds, want, "parameter kinds checked");
    println!("{} parameter tensors of {} kinds: worst relative error {worst:.2e}", res.grads.len(), kinds.len());
}

#[test]
fn dpo_gradient_matches_finite_differences_tied_embeddings() {
    check(config(true, false));
}

#[test]
fn dpo_gradient_matches_finite_differences_untied_with_qkv_bias() {
    check(config(false, true));
}

/// Gemma 2: GeGLU, `(1 + w)` norms, scaled embeddings, sandwich norms, attention and final
/// soft-capping, query pre-attention scaling, a sliding window of 2 on layer 0; with o/MLP biases.
#[test]
fn dpo_gradient_matches_finite_differences_gemma2_features() {
    let mut c = config(true, false);
    c.family = Family::Gemma2;
    c.features = Features {
        hidden_act: Activation::GeluTanh,
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        norm_plus_one: true,
        scale_embeddings: true,
        sandwich_norms: true,
        attn_logit_softcapping: Some(0.5),
        final_logit_softcapping: Some(2.0),
        query_pre_attn_scalar: Some(3.0),
        sliding_window: Some(2),
        layer_types: vec![LayerAttention::Sliding, LayerAttention::Full],
        ..Features::default()
    };
    check(c);
}

/// Qwen3 / Gemma 3: per-head q/k norms, sliding layers with their own rotary base, YaRN on the
/// full layers.
#[test]
fn dpo_gradient_matches_finite_differences_qk_norm_and_local_rope() {
    let mut c = config(false, false);
    c.family = Family::Gemma3;
    c.rope = RopeParams {
        theta: 1e4,
        scaling: RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 4.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 1.1,
            truncate: true,
        },
    };
    c.features = Features {
        qk_norm: true,
        norm_plus_one: true,
        sliding_window: Some(3),
        layer_types: vec![LayerAttention::Full, LayerAttention::Sliding],
        rope_local: Some(RopeParams { theta: 100.0, scaling: RopeScaling::Default }),
        ..Features::default()
    };
    check(c);
}

/// The options of every term and the batch-coupled AOT: f-DPO's Jensen–Shannon scores with
/// DiscoPOP, WPO's weights (constants of the gradient, as TRL's) and LD-DPO's token weights; AOT
/// on unpaired log-ratios (the three pairs sorted against each other in one pass).
#[test]
fn trl_options_and_aot_gradients_match_finite_differences() {
    let mut o = Objective::single(Loss::Discopop { beta: 0.5, tau: 0.3 });
    (o.f_divergence, o.use_weighting, o.ld_alpha) = (FDivergence::JsDivergence, true, Some(0.5));
    check_objective(config(true, false), &o);
    check_objective(config(true, false), &Objective::single(Loss::AotUnpaired { beta: 0.5, label_smoothing: 0.1 }));
    check_objective(config(true, false), &Objective::single(Loss::SigmoidNorm { beta: 0.5 }));
}

/// `--bf16` (mixed precision): the same loss and gradients as f32 up to bf16's rounding of the
/// products' operands (8 significant bits: 0.4 % a value at most), every parameter with a non-zero
/// gradient; and after the weights change in place, [`Policy::weights_changed`] makes the bf16
/// copies follow (the log-probs equal those of a mixed model built afresh from the new weights).
#[test]
fn bf16_mixed_precision_follows_f32_and_its_copies_follow_the_weights() {
    let setup = dpo_model::policy::ModelSetup { bf16: true, ..Default::default() };
    for cfg in [config(true, false), config(false, true)] {
        let tensors = random_tensors(&cfg, 7, 20.0, DType::F32).unwrap();
        let (f32_policy, bf16_policy) = (
            Policy::new(cfg.clone(), &tensors).unwrap(),
            Policy::new(cfg.clone(), &tensors).unwrap().in_precision(&setup).unwrap(),
        );
        assert!(bf16_policy.model.has_bf16_products() && !f32_policy.model.has_bf16_products());
        // The reference cache's key tells the precisions apart (the same values, other log-probs).
        let hash = |w: &dpo_model::Weight| {
            let mut h = blake3::Hasher::new();
            w.hash_into(&mut h).unwrap();
            h.finalize()
        };
        let (w32, w16) = (&f32_policy.model.layers[0].projs[0].w, &bf16_policy.model.layers[0].projs[0].w);
        assert_ne!(hash(w32), hash(w16));
        assert_eq!(hash(w32), hash(&w16.to_tensor().unwrap().into()));
        let ex = examples();
        let refs: Vec<&Tokenized> = ex.iter().collect();
        let r: Vec<&[f64]> = REFERENCE.iter().map(|r| r.as_slice()).collect();
        let task = dpo_train::task::Task::Preference(Objective::single(LOSS));
        let a = loss_and_gradients(&f32_policy, &refs, &r, &task, 12, 3).unwrap();
        let b = loss_and_gradients(&bf16_policy, &refs, &r, &task, 12, 3).unwrap();
        let loss = |res: &dpo_train::step::BatchResult| res.stats.iter().map(|s| s.loss).sum::<f64>() / 3.0;
        let (la, lb) = (loss(&a), loss(&b));
        assert!((la - lb).abs() < 1e-2 * la.abs(), "loss f32 {la} vs bf16 {lb}");
        for ((name, _), (ga, gb)) in f32_policy.params.iter().zip(a.grads.iter().zip(&b.grads)) {
            let (ga, gb) = (
                ga.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                gb.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(gb.iter().any(|&x| x != 0.0), "{name}: zero gradient under --bf16");
            let diff: f64 = ga.iter().zip(&gb).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
            let norm: f64 = ga.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            // Measured 0.6-8.6 %: the DPO gradient is the difference of the two completions'
            // log-prob gradients, and this tiny model's weights (scale 20) make it cancel; a bug
            // (a product missing or transposed) is off by ~100 %.
            assert!(diff < 0.15 * norm, "{name}: gradient differs by {diff:.3e} of {norm:.3e}");
        }
        // Move every weight in place, as an optimizer step does, then refresh the copies.
        for (_, v) in &bf16_policy.params {
            v.set(&(v.as_tensor() * 0.9).unwrap()).unwrap();
        }
        bf16_policy.weights_changed().unwrap();
        let moved: HashMap<String, Tensor> =
            bf16_policy.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap())).collect();
        let fresh = Llama::from_tensors(cfg.clone(), &moved).unwrap().with_bf16_products().unwrap();
        let pack = pack_weighted(&refs, None);
        let (x, y) = (completion_logps(&bf16_policy.model, &pack).unwrap(), completion_logps(&fresh, &pack).unwrap());
        assert_eq!(x.logps.to_vec1::<f32>().unwrap(), y.logps.to_vec1::<f32>().unwrap());
    }
}
