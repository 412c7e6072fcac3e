//! The pipeline commands: `sft`, `sample`, `label`, `eval`, `report`, and their errors.

mod common;

use common::{dpo, lines, pairs8, s, shared, tiny_model};
use serde_json::{json, Value};
use std::path::Path;

fn write_jsonl(p: &Path, rows: &[Value]) {
    std::fs::write(p, rows.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();
}

#[test]
fn sampling_is_reproducible_and_its_logps_equal_dpo_logps() {
    let d = tempfile::tempdir().unwrap();
    let model = dpo_runtime::fetch::ensure_default_model().unwrap();
    // Chat-formatted prompts: SmolLM2-Instruct answers briefly and ends with <|im_end|> (its EOS).
    let chat = |q: &str| json!({"prompt": format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")});
    let prompts = d.path().join("prompts.jsonl");
    write_jsonl(
        &prompts,
        &[chat("Say hello in one short sentence."), chat("Name a colour."), chat("What is 2 plus 2? Answer briefly.")],
    );
    let run = |out: &str| {
        let out = d.path().join(out);
        let o = dpo(
            d.path(),
            &[
                "sample",
                "--model",
                s(&model),
                "--prompts",
                s(&prompts),
                "--out",
                s(&out),
                "--n",
                "3",
                "--max-new-tokens",
                "40",
                "--seed",
                "5",
                "--max-batch",
                "4",
            ],
        );
        assert!(o.status.success());
        out
    };
    let (a, b) = (run("a.jsonl"), run("b.jsonl"));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same seed, same samples");
    let samples = lines(&a);
    assert_eq!(samples.len(), 3);
    // `dpo logps` on the same completions (as chosen/rejected pairs).
    let mut pairs = Vec::new();
    let mut sampled = Vec::new();
    for r in &samples {
        let c = r["completions"].as_array().unwrap();
        assert_eq!(c.len(), 3);
        for (i, j) in [(0, 1), (2, 0)] {
            pairs.push(json!({"prompt": r["prompt"], "chosen": c[i], "rejected": c[j]}));
            sampled.push([
                (r["logps"][i].as_f64().unwrap(), r["tokens"][i].as_u64().unwrap()),
                (r["logps"][j].as_f64().unwrap(), r["tokens"][j].as_u64().unwrap()),
            ]);
        }
    }
    let pf = d.path().join("pairs.jsonl");
    write_jsonl(&pf, &pairs);
    let lp = d.path().join("logps.jsonl");
    assert!(dpo(d.path(), &["logps", "--model", s(&model), "--data", s(&pf), "--out", s(&lp)]).status.success());
    let (mut compared, mut worst) = (0, 0f64);
    for (l, smp) in lines(&lp).iter().zip(&sampled) {
        for (k, (logp, tokens)) in ["chosen", "rejected"].iter().zip(smp) {
            // Compare where the text re-tokenizes to the sampled tokens (and the sample ended with EOS,
            // which `dpo logps` appends as text).
            if l[format!("{k}_tokens")].as_u64().unwrap() == *tokens {
                let d = (l[format!("{k}_logps")].as_f64().unwrap() - logp).abs();
                assert!(d < 1e-3, "sampled logp {logp} vs dpo logps {}", l[format!("{k}_logps")]);
                worst = worst.max(d);
                compared += 1;
            }
        }
    }
    assert!(compared >= 8, "only {compared} of 12 completions comparable");
    println!("{compared}/12 sampled completions compared: max |sample logp - dpo logps| = {worst:.2e} nats");
}

#[test]
fn sft_lowers_the_completion_loss() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let out = d.path().join("sft");
    let o = dpo(
        d.path(),
        &[
            "sft",
            "--model",
            s(&model),
            "--data",
            s(&pairs8()),
            "--eval-data",
            s(&pairs8()),
            "--output-dir",
            s(&out),
            "--max-steps",
            "30",
            "--per-device-train-batch-size",
            "8",
            "--learning-rate",
            "3e-3",
            "--lr-scheduler-type",
            "constant",
        ],
    );
    assert!(o.status.success());
    let l = lines(&out.join("metrics.jsonl"));
    let train: Vec<&Value> = l.iter().filter(|x| x.get("loss").is_some()).collect();
    let (first, last) = (train[0]["loss"].as_f64().unwrap(), train[train.len() - 1]["loss"].as_f64().unwrap());
    assert!(last < first - 2.0, "SFT loss {first} -> {last} nats/token");
    assert!(train[0]["mean_token_accuracy"].is_number());
    let eval = l.iter().find(|x| x.get("eval_loss").is_some()).unwrap();
    assert!(eval["eval_mean_token_accuracy"].is_number());
    for f in ["loss.png", "token_accuracy.png", "report.html"] {
        assert!(out.join(f).exists(), "{f}");
    }
}

#[test]
fn label_writes_pairs_and_rankings_and_eval_reports_reward_kl_and_win_rate() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let samples = d.path().join("samples.jsonl");
    write_jsonl(
        &samples,
        &[
            json!({"prompt": "The film", "completions": ["was wonderful and moving", "was dull and bad", "was a film"], "scores": [3, 1, 2]}),
            json!({"prompt": "The cast", "completions": ["did fine", "did fine too"], "scores": [1, 1]}),
        ],
    );
    let pairs = d.path().join("pairs.jsonl");
    assert!(dpo(d.path(), &["label", "--samples", s(&samples), "--out", s(&pairs), "--judge", "sentiment"])
        .status
        .success());
    let p = lines(&pairs);
    assert_eq!(p[0]["chosen"], "was wonderful and moving");
    assert_eq!(p[0]["rejected"], "was dull and bad");
    let rk = d.path().join("rankings.jsonl");
    assert!(dpo(
        d.path(),
        &["label", "--samples", s(&samples), "--out", s(&rk), "--judge", "score", "--mode", "ranking"]
    )
    .status
    .success());
    assert_eq!(lines(&rk)[0]["ranking"], json!([0, 2, 1]));
    // eval on prompts and on pairs, policy = reference: KL 0, win rate by ties only
    let prompts = d.path().join("prompts.jsonl");
    write_jsonl(&prompts, &[json!({"prompt": "The film"}), json!({"prompt": "I watched it and"})]);
    let res = d.path().join("eval.json");
    let o = dpo(
        d.path(),
        &[
            "eval",
            "--policy",
            s(&model),
            "--reference",
            s(&model),
            "--prompts",
            s(&prompts),
            "--data",
            s(&pairs8()),
            "--n",
            "2",
            "--max-new-tokens",
            "8",
            "--out",
            s(&res),
        ],
    );
    assert!(o.status.success());
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&res).unwrap()).unwrap();
    assert!(r["prompts"]["policy"]["kl"].as_f64().unwrap().abs() < 1e-4, "{r}");
    assert_eq!(r["prompts"]["policy"]["win_rate"], 0.5);
    assert_eq!(r["prompts"]["policy"]["reward_mean"], r["prompts"]["reference"]["reward_mean"]);
    assert!((r["preference"]["eval_loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-6);
    assert_eq!(lines(&res.with_extension("samples.jsonl")).len(), 8);
}

#[test]
fn bad_pipeline_input_is_refused_with_file_line_field_and_no_output() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.jsonl");
    let check = |args: &[&str], want: &[&str]| {
        let o = dpo(d.path(), args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        for w in want {
            assert!(err.contains(w), "{args:?}: `{w}` not in {err}");
        }
        assert!(!out.exists(), "{args:?} left an output file");
    };
    let empty = d.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    check(&["sample", "--prompts", s(&empty), "--out", s(&out)], &["empty.jsonl: no prompts"]);
    let noprompt = d.path().join("noprompt.jsonl");
    write_jsonl(&noprompt, &[json!({"prompt": "a"}), json!({"text": "b"})]);
    check(&["sample", "--prompts", s(&noprompt), "--out", s(&out)], &["noprompt.jsonl:2", "missing field `prompt`"]);
    let samples = d.path().join("samples.jsonl");
    write_jsonl(
        &samples,
        &[json!({"prompt": "a", "completions": ["x", "y"]}), json!({"prompt": "b", "completions": ["only one"]})],
    );
    check(
        &["label", "--samples", s(&samples), "--out", s(&out), "--judge", "vibes"],
        &["unknown judge `vibes`", "sentiment, score"],
    );
    check(&["label", "--samples", s(&samples), "--out", s(&out)], &["samples.jsonl:2", "at least 2"]);
    check(
        &["label", "--samples", s(&noprompt), "--out", s(&out)],
        &["noprompt.jsonl:1", "missing field `completions`"],
    );
    check(
        &["label", "--samples", s(&samples), "--out", s(&out), "--judge", "score"],
        &["samples.jsonl:1", "missing field `scores`"],
    );
    assert!(shared().exists());
}
