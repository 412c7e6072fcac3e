//! Parity with the reference implementation (PyTorch + transformers + TRL 1.16) on SmolLM2-135M-Instruct:
//! the golden values of `../shared/tools/oracle/golden/` (see its README).

use dpo_data::{tokenize_all, TokenizeSettings, Tokenized};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn shared() -> PathBuf {
    let p = std::env::var_os("DPO_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    assert!(p.join("tools/oracle/golden").is_dir(), "the shared data is not at {} (set DPO_SHARED)", p.display());
    p
}

fn golden() -> Value {
    let p = shared().join("tools/oracle/golden/golden_smollm2_135m.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

const DATASETS: [(usize, &str); 2] = [(0, "pairs8.jsonl"), (1, "hh_harmless32.jsonl")];

#[test]
fn logps_command_gives_golden_token_ids_and_logps() {
    let model = dpo_runtime::fetch::ensure_default_model().unwrap();
    let loaded = dpo_model::load(&model).unwrap();
    let g = golden();
    let dir = tempfile::tempdir().unwrap();
    for (ds, file) in DATASETS {
        let data = shared().join("tools/oracle/golden").join(file);
        let records = g["datasets"][ds]["records"].as_array().unwrap();
        // token ids, exactly (library path used by every command)
        let (recs, _) = dpo_data::read(&data).unwrap();
        let set = tokenize_all(&loaded.tokenizer, &recs, TokenizeSettings::default()).unwrap();
        assert_eq!(set.examples.len(), records.len());
        for (ex, r) in set.examples.iter().zip(records) {
            let want = Tokenized {
                index: ex.index,
                prompt: ids(&r["prompt_ids"]),
                completions: vec![ids(&r["chosen_ids"]), ids(&r["rejected_ids"])],
                kind: dpo_data::ExampleKind::Pair { scores: None },
            };
            assert_eq!(ex, &want, "{file} record {}", ex.index);
        }
        // log-probs through the `dpo logps` command
        let out = dir.path().join(format!("{file}.logps.jsonl"));
        let status = Command::new(env!("CARGO_BIN_EXE_dpo"))
            .args(["logps", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        let lines: Vec<Value> =
            std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), records.len(), "one line per record");
        let mut worst = 0f64;
        for (l, r) in lines.iter().zip(records) {
            assert_eq!(l["index"], r["index"]);
            assert_eq!(l["chosen_tokens"], r["n_chosen_tokens"]);
            assert_eq!(l["rejected_tokens"], r["n_rejected_tokens"]);
            for (a, b) in [("chosen_logps", "chosen_logp"), ("rejected_logps", "rejected_logp")] {
                let d = (l[a].as_f64().unwrap() - r[b].as_f64().unwrap()).abs();
                assert!(d < 1e-2, "{file} record {}: {a} differs by {d} nats", r["index"]);
                worst = worst.max(d);
            }
        }
        println!("{file}: token ids equal; worst |logp - golden| = {worst:.2e} nats");
    }
}

#[test]
fn gradient_norms_against_the_perturbed_reference_match_golden() {
    let model = dpo_runtime::fetch::ensure_default_model().unwrap();
    let loaded = dpo_model::load(&model).unwrap();
    let policy = dpo_model::policy::Policy::new(loaded.config.clone(), &loaded.tensors).unwrap();
    let g = golden();
    let loss = dpo_train::loss::Loss::Sigmoid { beta: g["meta"]["beta"].as_f64().unwrap(), label_smoothing: 0.0 };
    for (ds, file) in DATASETS {
        let (recs, _) = dpo_data::read(&shared().join("tools/oracle/golden").join(file)).unwrap();
        let set = tokenize_all(&loaded.tokenizer, &recs, TokenizeSettings::default()).unwrap();
        let gd = &g["datasets"][ds];
        let refs: Vec<Vec<f64>> = gd["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                vec![
                    r["ref_perturbed_chosen_logp"].as_f64().unwrap(),
                    r["ref_perturbed_rejected_logp"].as_f64().unwrap(),
                ]
            })
            .collect();
        let refs: Vec<&[f64]> = refs.iter().map(Vec::as_slice).collect();
        let examples: Vec<&Tokenized> = set.examples.iter().collect();
        let res = dpo_train::step::loss_and_gradients(
            &policy,
            &examples,
            &refs,
            &dpo_train::task::Task::Preference(dpo_train::loss::Objective::single(loss)),
            1024,
            64,
        )
        .unwrap();
        let gold = &gd["grad_ref_perturbed"];
        let mean_loss = res.stats.iter().map(|s| s.loss).sum::<f64>() / res.stats.len() as f64;
        assert!(
            (mean_loss - gold["loss"].as_f64().unwrap()).abs() < 1e-4,
            "{file}: loss {mean_loss} vs {}",
            gold["loss"]
        );
        let per = gold["per_tensor"].as_object().unwrap();
        assert_eq!(per.len(), policy.params.len());
        let mut worst = (0f64, "");
        for ((name, _), grad) in policy.params.iter().zip(&res.grads) {
            let norm = dpo_train::optim::tensor_sq_norm(grad).unwrap().sqrt();
            assert!(norm > 0.0, "{name}: no gradient");
            let want = per[name].as_f64().unwrap();
            let rel = (norm - want).abs() / want;
            assert!(rel < 1e-3, "{file}: {name} gradient norm {norm} vs golden {want} ({rel:.2e} relative)");
            if rel > worst.0 {
                worst = (rel, name);
            }
        }
        println!(
            "{file}: loss {mean_loss:.7}; {} gradient norms within {:.2e} relative (worst {})",
            per.len(),
            worst.0,
            worst.1
        );
    }
}
