//! The loss family end to end on a tiny random model: reference-free losses never touch a
//! reference, TR-DPO moves the reference, KTO and Plackett–Luce train on their layouts, mixtures
//! add up, and data that does not fit a loss is refused.

mod common;

use common::{dpo, lines, pairs8, s, shared, tiny_model};
use serde_json::{json, Value};
use std::path::Path;

fn train(home: &Path, model: &Path, data: &Path, out: &Path, extra: &[&str]) -> (Vec<Value>, String) {
    let mut args = vec![
        "train",
        "--model",
        s(model),
        "--data",
        s(data),
        "--output-dir",
        s(out),
        "--per-device-train-batch-size",
        "4",
        "--learning-rate",
        "1e-3",
        "--lr-scheduler-type",
        "constant",
    ];
    args.extend_from_slice(extra);
    let o = dpo(home, &args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    (lines(&out.join("metrics.jsonl")), err)
}

#[test]
fn reference_free_losses_compute_no_reference() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    for loss in ["simpo", "orpo", "simper", "cpo", "cpo_hinge", "cpo_ipo", "cpo_simpo"] {
        let (m, err) = train(d.path(), &model, &pairs8(), &d.path().join(loss), &["--loss", loss, "--max-steps", "3"]);
        assert!(!err.contains("reference log-probs"), "{loss}: {err}");
        assert!(m[0]["loss"].is_number() && m[2]["rewards/margins"].is_number());
    }
    assert!(!d.path().join("ref-logps").exists(), "no reference cache written");
}

#[test]
fn tr_dpo_hard_update_makes_the_reference_the_policy() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (m, err) = train(
        d.path(),
        &model,
        &pairs8(),
        &d.path().join("tr"),
        &[
            "--sync-ref-model",
            "--ref-model-mixup-alpha",
            "1.0",
            "--ref-model-sync-steps",
            "2",
            "--max-steps",
            "4",
            "--per-device-train-batch-size",
            "8",
        ],
    );
    assert!(err.contains("reference cache is not used"), "{err}");
    let loss = |i: usize| m[i]["loss"].as_f64().unwrap();
    assert!((loss(0) - 2f64.ln()).abs() < 1e-6);
    assert!((loss(1) - 2f64.ln()).abs() > 1e-4, "the policy moved at step 1");
    assert!(
        (loss(2) - 2f64.ln()).abs() < 1e-6,
        "after the hard update at step 2 the reference is the policy: {}",
        loss(2)
    );
}

#[test]
fn kto_trains_on_unpaired_conversational_data_and_splits_pairs() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let kto = shared().join("data/llama-factory/kto_en_demo.json");
    let (m, err) = train(
        d.path(),
        &model,
        &kto,
        &d.path().join("kto"),
        &["--loss", "kto", "--max-steps", "3", "--max-length", "256"],
    );
    assert!(err.contains("unpaired examples used") && err.contains("conversational"), "{err}");
    for k in ["loss", "kl", "rewards/chosen", "logps/chosen"] {
        assert!(m[2].get(k).is_some_and(Value::is_number), "missing {k} in {}", m[2]);
    }
    // pairs are split into desirable and undesirable examples
    let (_, err) =
        train(d.path(), &model, &pairs8(), &d.path().join("kto-pairs"), &["--loss", "kto", "--max-steps", "1"]);
    assert!(err.contains("16 unpaired examples used"), "{err}");
}

#[test]
fn plackett_luce_trains_on_rankings_and_mixtures_add_an_nll_term() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let rk = d.path().join("rankings.jsonl");
    let rows: Vec<String> = (0..8)
        .map(|i| json!({"prompt": format!("Review {i}: the film"), "completions": [" was great.", " was fine.", " was poor."], "scores": [0.9, 0.1, -0.6]}).to_string())
        .collect();
    std::fs::write(&rk, rows.join("\n")).unwrap();
    let (m, _) = train(d.path(), &model, &rk, &d.path().join("pl"), &["--loss", "plackett_luce", "--max-steps", "6"]);
    let first = m[0]["loss"].as_f64().unwrap();
    // at policy == reference each ranking of 3 costs log 3! = log 6
    assert!((first - 6f64.ln()).abs() < 1e-6, "{first}");
    assert!(m[5]["loss"].as_f64().unwrap() < first);
    // the same rankings as pairs for a pairwise loss: 3 ordered pairs each
    let (_, err) = train(d.path(), &model, &rk, &d.path().join("pairs"), &["--loss", "sigmoid", "--max-steps", "1"]);
    assert!(err.contains("24 pairs used"), "{err}");
    // sigmoid + 0.5 * sft: the first step's loss is log 2 + 0.5 * (NLL per token of the chosen)
    let (m, _) = train(
        d.path(),
        &model,
        &pairs8(),
        &d.path().join("mix"),
        &["--loss", "sigmoid,sft", "--loss-weights", "1,0.5", "--max-steps", "1", "--per-device-train-batch-size", "8"],
    );
    let (m0, _) = train(
        d.path(),
        &model,
        &pairs8(),
        &d.path().join("sft-only"),
        &["--loss", "sft", "--max-steps", "1", "--per-device-train-batch-size", "8"],
    );
    let want = 2f64.ln() + 0.5 * m0[0]["loss"].as_f64().unwrap();
    assert!((m[0]["loss"].as_f64().unwrap() - want).abs() < 1e-6, "{} vs {want}", m[0]["loss"]);
}

#[test]
fn dpop_starts_at_log_2_and_alphapo_trains() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    // at policy == reference DPOP's penalty is 0: DPO's log 2
    let (m, _) = train(d.path(), &model, &pairs8(), &d.path().join("dpop"), &["--loss", "dpop", "--max-steps", "2"]);
    assert!((m[0]["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-6, "{}", m[0]["loss"]);
    let flags = ["--loss", "alphapo", "--alphapo-alpha", "0.25", "--beta", "2.0", "--max-steps", "3"];
    let (m, _) = train(d.path(), &model, &pairs8(), &d.path().join("alphapo"), &flags);
    assert!(m.iter().all(|r| r["loss"].as_f64().unwrap().is_finite()));
}

#[test]
fn data_that_does_not_fit_the_loss_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let o = dpo(
        d.path(),
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&pairs8()),
            "--output-dir",
            s(&d.path().join("x")),
            "--loss",
            "odpo",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("pairs8.jsonl:1") && err.contains("score_chosen"), "{err}");
    let o = dpo(
        d.path(),
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&pairs8()),
            "--output-dir",
            s(&d.path().join("x")),
            "--loss",
            "kto,sigmoid",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("need different data"));
    let o = dpo(d.path(), &["train", "--loss-help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for n in dpo_train::loss::NAMES {
        assert!(help.contains(&format!("\n{n}\n")), "{n} missing from --loss-help");
    }
}
