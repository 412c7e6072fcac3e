//! `dpo train` and `dpo logps` end to end on a tiny random model (SmolLM2's tokenizer): determinism,
//! learning, checkpoints, reference-log-prob files, configuration files and bad input.

mod common;

use common::{dpo, lines, pairs8, s, tiny_model};
use serde_json::Value;

#[test]
fn training_is_deterministic_logs_every_metric_and_writes_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let run = |name: &str| {
        let out = d.path().join(name);
        let o = dpo(
            d.path(),
            &[
                "train",
                "--model",
                s(&model),
                "--data",
                s(&pairs8()),
                "--eval-data",
                s(&pairs8()),
                "--output-dir",
                s(&out),
                "--max-steps",
                "4",
                "--per-device-train-batch-size",
                "2",
                "--learning-rate",
                "1e-3",
                "--save-steps",
                "2",
                "--eval-steps",
                "2",
                "--seed",
                "7",
            ],
        );
        assert!(o.status.success());
        out
    };
    let (a, b) = (run("a"), run("b"));
    let (la, lb) = (lines(&a.join("metrics.jsonl")), lines(&b.join("metrics.jsonl")));
    assert_eq!(la, lb, "same seed and inputs, same metrics");
    let train: Vec<&Value> = la.iter().filter(|l| l.get("loss").is_some()).collect();
    let eval: Vec<&Value> = la.iter().filter(|l| l.get("eval_loss").is_some()).collect();
    assert_eq!(train.len(), 4);
    assert_eq!(eval.len(), 2, "at step 2 and at the end");
    for k in [
        "step",
        "epoch",
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "grad_norm",
        "learning_rate",
        "num_tokens",
    ] {
        assert!(train[0][k].is_number(), "missing {k}");
    }
    assert!((train[0]["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-6, "policy == reference at step 1");
    assert_eq!(train[3]["epoch"].as_f64().unwrap(), 1.0);
    for k in ["eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen", "eval_logits/chosen"]
    {
        assert!(eval[1][k].is_number(), "missing {k}");
    }
    for ck in ["checkpoint-2", "final"] {
        for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            assert!(a.join(ck).join(f).exists(), "{ck}/{f}");
        }
    }
    // the final checkpoint is the trained policy, loadable as a model
    let reloaded = dpo_model::load(&a.join("final")).unwrap();
    assert_eq!(reloaded.tensors.len(), dpo_model::tensor_names(&reloaded.config).len());
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 4);
    // a second run into the same directory is refused
    let o = dpo(
        d.path(),
        &["train", "--model", s(&model), "--data", s(&pairs8()), "--output-dir", s(&a), "--max-steps", "1"],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--overwrite-output-dir"));
}

#[test]
fn dpo_fits_the_training_pairs() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let out = d.path().join("run");
    let o = dpo(
        d.path(),
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&pairs8()),
            "--output-dir",
            s(&out),
            "--max-steps",
            "40",
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
    let (first, last) = (&l[0], &l[l.len() - 1]);
    assert!((first["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-6);
    assert!(last["loss"].as_f64().unwrap() < 0.3, "loss {}", last["loss"]);
    assert_eq!(last["rewards/accuracies"].as_f64().unwrap(), 1.0);
    assert!(last["rewards/margins"].as_f64().unwrap() > 1.0);
}

#[test]
fn reference_logps_files_are_used_and_checked() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let refs = d.path().join("ref.jsonl");
    assert!(dpo(d.path(), &["logps", "--model", s(&model), "--data", s(&pairs8()), "--out", s(&refs)])
        .status
        .success());
    let r = lines(&refs);
    assert_eq!(r.len(), 8);
    // shift the reference: the first step's loss is then the offset loss, not log 2
    let shifted: Vec<String> = r
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l["chosen_logps"] = (l["chosen_logps"].as_f64().unwrap() - 2.0).into();
            l.to_string()
        })
        .collect();
    let sref = d.path().join("shifted.jsonl");
    std::fs::write(&sref, shifted.join("\n")).unwrap();
    let out = d.path().join("run");
    let o = dpo(
        d.path(),
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&pairs8()),
            "--output-dir",
            s(&out),
            "--ref-logps",
            s(&sref),
            "--max-steps",
            "1",
            "--per-device-train-batch-size",
            "8",
        ],
    );
    assert!(o.status.success());
    let first = &lines(&out.join("metrics.jsonl"))[0];
    let want = (1.0 + (-0.1f64 * 2.0).exp()).ln(); // -log sigma(beta * 2)
    assert!((first["loss"].as_f64().unwrap() - want).abs() < 1e-5, "{} vs {want}", first["loss"]);
    // a file made with other tokenization settings is refused, naming the record
    let short = d.path().join("short.jsonl");
    assert!(dpo(
        d.path(),
        &["logps", "--model", s(&model), "--data", s(&pairs8()), "--out", s(&short), "--max-length", "14"]
    )
    .status
    .success());
    let o = dpo(
        d.path(),
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&pairs8()),
            "--output-dir",
            s(&d.path().join("run2")),
            "--ref-logps",
            s(&short),
            "--max-steps",
            "1",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("short.jsonl") && err.contains("token counts"), "{err}");
}

#[test]
fn a_toml_config_is_an_alternative_to_flags() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let out = d.path().join("run");
    let cfg = d.path().join("run.toml");
    std::fs::write(&cfg, format!("model = {:?}\ndata = {:?}\noutput_dir = {:?}\nmax_steps = 2\nbeta = 0.5\nper_device_train_batch_size = 4\n",
        s(&model), s(&pairs8()), s(&out))).unwrap();
    assert!(dpo(d.path(), &["train", "--config", s(&cfg), "--max-steps", "3"]).status.success());
    assert_eq!(lines(&out.join("metrics.jsonl")).len(), 3, "the command line wins");
    let args: Value = serde_json::from_str(&std::fs::read_to_string(out.join("train_args.json")).unwrap()).unwrap();
    assert_eq!(args["task"]["objective"]["terms"][0][0]["beta"], 0.5);
}

#[test]
fn bad_input_names_file_line_and_field_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let bad = d.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n\n{\"prompt\":\"a\",\"chosen\":\"b\"}\n",
    )
    .unwrap();
    let out = d.path().join("out.jsonl");
    let o = dpo(d.path(), &["logps", "--model", s(&model), "--data", s(&bad), "--out", s(&out)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.jsonl:3") && err.contains("missing field `rejected`"), "{err}");
    assert!(!out.exists());
    let run = d.path().join("run");
    let o = dpo(d.path(), &["train", "--model", s(&model), "--data", s(&bad), "--output-dir", s(&run)]);
    assert!(!o.status.success());
    assert!(!run.exists(), "nothing written for a run that could not start");
    let o = dpo(
        d.path(),
        &["train", "--model", s(&d.path().join("nope.gguf")), "--data", s(&pairs8()), "--output-dir", s(&run)],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.gguf does not exist"));
}
