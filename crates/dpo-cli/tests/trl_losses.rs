//! The first step's loss of `sigmoid`, `ipo`, `hinge` and `robust` against a perturbed reference
//! (so that the first step is not at policy == reference) equals TRL 1.16's on the golden records.
//! TRL's values were computed by `scripts/oracle/trl_first_step_losses.py` with the oracle
//! (PyTorch + TRL, the reference model = the policy with `model.norm.weight * 0.9`) and are kept
//! in `tests/fixtures/trl_first_step_losses.json`; the reference log-probs given to dpo-rs are the
//! golden file's `ref_perturbed_*_logp`.

mod common;

use common::{dpo, lines, s, shared};
use serde_json::{json, Value};

fn read(p: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// (dpo-rs --loss, --label-smoothing, fixture key)
const LOSSES: [(&str, f64, &str); 4] = [("sigmoid", 0.0, "sigmoid"), ("ipo", 0.0, "ipo"), ("hinge", 0.0, "hinge"), ("robust", 0.1, "robust@eps=0.1")];

#[test]
fn first_step_losses_equal_trl() {
    let trl = read(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trl_first_step_losses.json"));
    let golden = read(&shared().join("tools/oracle/golden/golden_smollm2_135m.json"));
    let model = dpo::fetch::ensure_default_model().unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut worst = 0f64;
    for (ds, name, n) in [(0, "pairs8", 8), (1, "hh_harmless32", 32)] {
        // the perturbed reference as a `dpo logps` file
        let refs: Vec<String> = golden["datasets"][ds]["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                json!({"index": r["index"], "chosen_logps": r["ref_perturbed_chosen_logp"], "rejected_logps": r["ref_perturbed_rejected_logp"],
                       "chosen_tokens": r["n_chosen_tokens"], "rejected_tokens": r["n_rejected_tokens"]})
                .to_string()
            })
            .collect();
        let ref_file = d.path().join(format!("{name}.ref.jsonl"));
        std::fs::write(&ref_file, refs.join("\n")).unwrap();
        let data = shared().join("tools/oracle/golden").join(format!("{name}.jsonl"));
        for (loss, eps, key) in LOSSES {
            let out = d.path().join(format!("{name}-{loss}"));
            let o = dpo(d.path(), &["train", "--model", s(&model), "--data", s(&data), "--output-dir", s(&out), "--ref-logps", s(&ref_file),
                "--loss", loss, "--label-smoothing", &eps.to_string(), "--max-steps", "1", "--per-device-train-batch-size", &n.to_string()]);
            assert!(o.status.success());
            let ours = lines(&out.join("metrics.jsonl"))[0]["loss"].as_f64().unwrap();
            let want = trl["losses"][name][key].as_f64().unwrap();
            let rel = (ours - want).abs() / want.abs();
            assert!(rel < 1e-3, "{name} {loss}: first-step loss {ours} vs TRL {want} ({rel:.1e} relative)");
            println!("{name} {key}: dpo-rs {ours:.7} TRL {want:.7} ({rel:.1e} relative)");
            worst = worst.max(rel);
        }
    }
    println!("worst relative difference {worst:.1e}");
}
