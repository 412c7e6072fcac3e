//! The first step's loss of every TRL 1.16 loss type and loss option dpo-rs has against a
//! perturbed reference (so that the first step is not at policy == reference) equals TRL 1.16's
//! on the golden records. TRL's values were computed by `scripts/oracle/trl_first_step_losses.py`
//! with the oracle (PyTorch + TRL, the reference model = the policy with `model.norm.weight * 0.9`)
//! and are kept in `tests/fixtures/trl_first_step_losses.json`; the reference log-probs given to
//! dpo-rs are the golden file's `ref_perturbed_*_logp` (for LD-DPO, TRL's LD-weighted reference
//! log-probs of the same model, `scripts/oracle/trl_1.16_per_record_options.json`).

mod common;

use common::{dpo, lines, s, shared};
use serde_json::{json, Value};

fn read(p: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// (fixture key, dpo-rs flags). Every dataset is one batch (AOT sorts across it; TRL's values of
/// the other losses are means over batches of 4 pairs, which is the mean over the pairs).
const LOSSES: [(&str, &[&str]); 14] = [
    ("sigmoid", &["--loss", "sigmoid"]),
    ("ipo", &["--loss", "ipo"]),
    ("hinge", &["--loss", "hinge"]),
    ("robust@eps=0.1", &["--loss", "robust", "--label-smoothing", "0.1"]),
    ("aot", &["--loss", "aot"]),
    ("aot_unpaired", &["--loss", "aot_unpaired"]),
    ("discopop@tau=0.05", &["--loss", "discopop", "--discopop-tau", "0.05"]),
    ("sigmoid_norm", &["--loss", "sigmoid_norm"]),
    ("sigmoid@f=forward_kl", &["--f-divergence-type", "forward_kl"]),
    ("sigmoid@f=js_divergence", &["--f-divergence-type", "js_divergence"]),
    (
        "sigmoid@f=alpha_divergence,alpha=0.5",
        &["--f-divergence-type", "alpha_divergence", "--f-alpha-divergence-coef", "0.5"],
    ),
    ("sigmoid@use_weighting", &["--use-weighting"]),
    ("sigmoid@ld_alpha=0.5", &["--ld-alpha", "0.5"]),
    // TRL's `sft` term is a token mean over the batch (not a mean of per-sequence means)
    ("sigmoid+0.5*sft", &["--loss", "sigmoid,sft", "--loss-weights", "1,0.5"]),
];

#[test]
fn first_step_losses_equal_trl() {
    let trl =
        read(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trl_first_step_losses.json"));
    let golden = read(&shared().join("tools/oracle/golden/golden_smollm2_135m.json"));
    let per_record = read(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts/oracle/trl_1.16_per_record_options.json"),
    );
    let model = dpo_runtime::fetch::ensure_default_model().unwrap();
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
        // LD-DPO's reference: shared + 0.5 * tail of the same perturbed reference
        let ld: Vec<String> = golden["datasets"][ds]["records"]
            .as_array()
            .unwrap()
            .iter()
            .zip(per_record[name]["records"].as_array().unwrap())
            .map(|(r, p)| {
                let v = |side: &str| {
                    p[format!("{side}_ref_shared_logp")].as_f64().unwrap()
                        + 0.5 * p[format!("{side}_ref_tail_logp")].as_f64().unwrap()
                };
                json!({"index": r["index"], "chosen_logps": v("chosen"), "rejected_logps": v("rejected"),
                       "chosen_tokens": r["n_chosen_tokens"], "rejected_tokens": r["n_rejected_tokens"]})
                .to_string()
            })
            .collect();
        let ld_file = d.path().join(format!("{name}.ld-ref.jsonl"));
        std::fs::write(&ld_file, ld.join("\n")).unwrap();
        let data = shared().join("tools/oracle/golden").join(format!("{name}.jsonl"));
        for (i, (key, flags)) in LOSSES.iter().enumerate() {
            let out = d.path().join(format!("{name}-{i}"));
            let refs = if key.contains("ld_alpha") { &ld_file } else { &ref_file };
            // A rank-1 adapter on q_proj starts at B = 0: the first step's policy is the model itself
            // (the same log-probs and loss, bit for bit), and the backward pass skips the weight
            // gradients of the full model (a third of the time of these 26 runs).
            let mut args = vec![
                "train",
                "--model",
                s(&model),
                "--data",
                s(&data),
                "--output-dir",
                s(&out),
                "--ref-logps",
                s(refs),
                "--max-steps",
                "1",
                "--use-peft",
                "--lora-r",
                "1",
                "--lora-target-modules",
                "q_proj",
                "--lora-dropout",
                "0",
            ];
            let n = n.to_string();
            args.extend(["--per-device-train-batch-size", &n]);
            args.extend(flags.iter().copied());
            let o = dpo(d.path(), &args);
            assert!(o.status.success(), "{key}: {}", String::from_utf8_lossy(&o.stderr));
            let ours = lines(&out.join("metrics.jsonl"))[0]["loss"].as_f64().unwrap();
            let want = trl["losses"][name][key].as_f64().unwrap();
            let rel = (ours - want).abs() / want.abs();
            assert!(rel < 1e-4, "{name} {key}: first-step loss {ours} vs TRL {want} ({rel:.1e} relative)");
            println!("{name} {key}: dpo-rs {ours:.7} TRL {want:.7} ({rel:.1e} relative)");
            worst = worst.max(rel);
        }
    }
    println!("worst relative difference {worst:.1e}");
}

/// LD-DPO's log-probs (`dpo logps --ld-alpha 0.5`): each completion's first `min(|y_w|, |y_l|)`
/// tokens plus 0.5 times the rest, equal to TRL 1.16's (its per-token log-probs split at the same
/// point, `scripts/oracle/trl_1.16_per_record_options.json`), and the plain sums without it.
#[test]
fn ld_dpo_log_probs_equal_trl() {
    let per_record = read(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts/oracle/trl_1.16_per_record_options.json"),
    );
    let model = dpo_runtime::fetch::ensure_default_model().unwrap();
    let d = tempfile::tempdir().unwrap();
    let data = shared().join("tools/oracle/golden/pairs8.jsonl");
    let (plain, ld) = (d.path().join("plain.jsonl"), d.path().join("ld.jsonl"));
    assert!(dpo(d.path(), &["logps", "--model", s(&model), "--data", s(&data), "--out", s(&plain)]).status.success());
    assert!(dpo(d.path(), &["logps", "--model", s(&model), "--data", s(&data), "--out", s(&ld), "--ld-alpha", "0.5"])
        .status
        .success());
    let mut worst = 0f64;
    let mut tails = 0;
    for ((p, l), r) in lines(&plain).iter().zip(lines(&ld)).zip(per_record["pairs8"]["records"].as_array().unwrap()) {
        for side in ["chosen", "rejected"] {
            let (shared, tail) = (
                r[format!("{side}_policy_shared_logp")].as_f64().unwrap(),
                r[format!("{side}_policy_tail_logp")].as_f64().unwrap(),
            );
            let ours = l[format!("{side}_logps")].as_f64().unwrap();
            let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
            worst = worst.max(rel(ours, shared + 0.5 * tail));
            let full = p[format!("{side}_logps")].as_f64().unwrap();
            worst = worst.max(rel(full, shared + tail));
            tails += usize::from(tail != 0.0);
        }
    }
    assert!(tails >= 4, "only {tails} completions with a tail: the test does not test LD");
    assert!(worst < 1e-5, "LD log-probs differ from TRL's by {worst:.1e} relative");
    println!(
        "LD-DPO log-probs of pairs8 ({tails} completions with a tail): worst relative difference from TRL {worst:.1e}"
    );
}
