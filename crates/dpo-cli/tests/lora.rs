//! LoRA from the command line on a tiny random model (SmolLM2's tokenizer): PEFT adapter
//! directories, SFT-LoRA then DPO-LoRA with the SFT model as the reference, merging, compact
//! bases, reference log-probs computed only for the examples a run reaches.

mod common;

use common::{dpo, lines, pairs8, s, tiny_model};
use serde_json::Value;
use std::path::Path;

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// `dpo logps` of pairs8 as (chosen, rejected) per record.
fn logps(home: &Path, out: &Path, extra: &[&str]) -> Vec<(f64, f64)> {
    let mut args = vec!["logps", "--data", s(&pairs8()).to_string().leak(), "--out", s(out).to_string().leak()];
    args.extend_from_slice(extra);
    let o = dpo(home, &args);
    assert!(o.status.success());
    lines(out).iter().map(|l| (l["chosen_logps"].as_f64().unwrap(), l["rejected_logps"].as_f64().unwrap())).collect()
}

fn max_diff(a: &[(f64, f64)], b: &[(f64, f64)]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x.0 - y.0).abs().max((x.1 - y.1).abs())).fold(0.0, f64::max)
}

#[test]
fn sft_lora_then_dpo_lora_then_merge() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let model = tiny_model(home);
    let m = s(&model);
    let run = |cmd: &str, out: &str, extra: &[&str]| {
        let out = home.join(out);
        let mut args = vec![
            cmd,
            "--model",
            m,
            "--data",
            s(&pairs8()).to_string().leak(),
            "--output-dir",
            s(&out).to_string().leak(),
            "--use-peft",
            "--lora-r",
            "4",
            "--max-steps",
            "3",
            "--per-device-train-batch-size",
            "4",
            "--learning-rate",
            "1e-2",
            "--seed",
            "3",
        ];
        args.extend_from_slice(extra);
        let o = dpo(home, &args);
        assert!(o.status.success(), "{cmd} failed");
        out
    };
    // SFT with an adapter: the checkpoint is a PEFT adapter directory.
    let sft = run("sft", "sft", &[]);
    let cfg = read_json(&sft.join("final/adapter_config.json"));
    assert_eq!(
        (cfg["peft_type"].as_str(), cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()),
        (Some("LORA"), Some(4), Some(32.0))
    );
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7, "all-linear: q, k, v, o, gate, up, down");
    assert!(sft.join("final/adapter_model.safetensors").exists() && !sft.join("final/model.safetensors").exists());
    // DPO with an adapter on top of the SFT model: its reference is the SFT model, so the first
    // step is at policy == reference (loss log 2).
    let dpo_run = run("train", "dpo", &["--adapter", s(&sft.join("final")).to_string().leak()]);
    let l = lines(&dpo_run.join("metrics.jsonl"));
    assert!(
        (l[0]["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-6,
        "step 1 at policy == reference: {}",
        l[0]["loss"]
    );
    assert!(l[2]["loss"].as_f64().unwrap() < 2f64.ln(), "the adapter learns");
    // The same command again gives the same metrics (dropout masks are seeded).
    let again = run("train", "dpo-again", &["--adapter", s(&sft.join("final")).to_string().leak()]);
    assert_eq!(lines(&again.join("metrics.jsonl")), l);
    // Merged weights give the log-probs of the stacked adapters.
    let merged = home.join("merged");
    let (a1, a2) = (sft.join("final"), dpo_run.join("final"));
    let o = dpo(home, &["merge", "--model", m, "--adapter", s(&a1), "--adapter", s(&a2), "--output-dir", s(&merged)]);
    assert!(o.status.success());
    let stacked = logps(home, &home.join("stacked.jsonl"), &["--model", m, "--adapter", s(&a1), "--adapter", s(&a2)]);
    let from_merged = logps(home, &home.join("merged.jsonl"), &["--model", s(&merged)]);
    let base = logps(home, &home.join("base.jsonl"), &["--model", m]);
    let diff = max_diff(&stacked, &from_merged);
    println!("stacked adapters vs merged model: {diff:.2e} nats; vs base: {:.2e}", max_diff(&stacked, &base));
    assert!(diff < 1e-4, "{diff}");
    assert!(max_diff(&stacked, &base) > 1e-3, "the adapters change the model");
    // A compact base needs an adapter to train.
    let o = dpo(
        home,
        &["train", "--model", m, "--data", s(&pairs8()), "--output-dir", s(&home.join("x")), "--base-dtype", "bf16"],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("add --use-peft"));
}

#[test]
fn reference_log_probs_only_for_the_examples_a_run_reaches() {
    for peft in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let home = d.path();
        let model = tiny_model(home);
        let mut args = vec![
            "train",
            "--model",
            s(&model).to_string().leak(),
            "--data",
            s(&pairs8()).to_string().leak(),
            "--output-dir",
            s(&home.join("run")).to_string().leak(),
            "--max-steps",
            "1",
            "--per-device-train-batch-size",
            "2",
        ];
        if peft {
            args.push("--use-peft");
        }
        assert!(dpo(home, &args).status.success());
        let cache: Vec<_> = std::fs::read_dir(home.join("ref-logps")).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(cache.len(), 1);
        assert_eq!(
            lines(&cache[0]).len(),
            2,
            "one step of 2 of the 8 pairs: 2 reference log-probs computed (use_peft {peft})"
        );
    }
}

#[test]
fn compact_bases_give_the_numbers_of_their_weights() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let gguf = dpo_runtime::fetch::ensure_default_model().unwrap();
    let m = s(&gguf);
    let f32 = logps(home, &home.join("f32.jsonl"), &["--model", m]);
    // The GGUF file's own blocks (q/k rows reordered block-wise): the f32 model is their exact
    // dequantization, so the products are the same up to summation order.
    let gg = logps(home, &home.join("gguf.jsonl"), &["--model", m, "--base-dtype", "gguf"]);
    let (bf16, q8) = (
        logps(home, &home.join("bf16.jsonl"), &["--model", m, "--base-dtype", "bf16"]),
        logps(home, &home.join("q8.jsonl"), &["--model", m, "--base-dtype", "q8_0"]),
    );
    let (e_gg, e_bf, e_q8) = (max_diff(&gg, &f32), max_diff(&bf16, &f32), max_diff(&q8, &f32));
    println!("largest log-prob difference from the f32 model on pairs8: gguf blocks {e_gg:.2e}, bf16 {e_bf:.3}, q8_0 {e_q8:.3} nats");
    assert!(e_gg < 1e-3, "{e_gg}");
    assert!(
        e_bf < 1.0 && e_q8 < 1.0,
        "bf16 {e_bf}, q8_0 {e_q8}: rounding the weights moves a completion's log-prob by a fraction of a nat"
    );
}
