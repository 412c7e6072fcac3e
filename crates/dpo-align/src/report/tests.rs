//! Tests of both reports: the files written, what the pages show, the errors.

use super::*;
use crate::recipes::demo::DemoConfig;
use crate::summary::{policy_dir, DemoSummary, Kind, PolicyResult, ReferenceResult};
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// A DPO run's `metrics.jsonl`: `steps` training lines, an evaluation every 3 steps.
fn dpo_metrics(steps: usize, beta: f64) -> String {
    let mut out = String::new();
    for s in 1..=steps {
        let t = s as f64 / steps as f64;
        let (rc, rr) = (beta * 2.0 * t, -beta * 3.0 * t);
        let line = json!({
            "step": s, "epoch": t, "loss": 0.693 - 0.3 * t * (1.0 + beta),
            "rewards/chosen": rc, "rewards/rejected": rr, "rewards/margins": rc - rr,
            "rewards/accuracies": if s == 1 { 0.0 } else { 0.5 + 0.45 * t * (0.5 + beta) },
            "logps/chosen": -120.0 + t, "logps/rejected": -130.0 - t,
            "logits/chosen": -1.5, "logits/rejected": -1.4,
            "grad_norm": 10.0 - t, "learning_rate": 1e-6, "num_tokens": 1000 * s,
        });
        out += &format!("{line}\n");
        if s % 3 == 0 {
            let eval = json!({
                "step": s, "epoch": t, "eval_loss": 0.7 - 0.2 * t,
                "eval_rewards/chosen": rc * 0.8, "eval_rewards/rejected": rr * 0.8,
                "eval_rewards/margins": (rc - rr) * 0.8, "eval_rewards/accuracies": 0.5 + 0.3 * t,
            });
            out += &format!("{eval}\n");
        }
    }
    out
}

fn write_dpo_run(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("metrics.jsonl"), dpo_metrics(12, 0.1)).unwrap();
    let args = json!({
        "model": "models/SmolLM2-135M-Instruct.gguf", "data": "train.jsonl", "eval_data": null,
        "loss": {"loss": "sigmoid", "beta": 0.1, "label_smoothing": 0.0},
        "learning_rate": 1e-6, "tokenize": {"max_length": 1024, "max_prompt_length": null},
        "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, "seed": 42,
    });
    fs::write(dir.join("train_args.json"), serde_json::to_string_pretty(&args).unwrap()).unwrap();
    let summary = json!({
        "steps": 12, "epochs": 1.0, "train_seconds": 12.3456, "total_seconds": 3725.2,
        "train_tokens_per_second": 1234.5678, "packed_tokens_per_second": 900.0,
        "peak_rss_bytes": 1_240_000_000u64, "step_seconds": [1.0, 1.1],
        "final_train": {"step": 12, "loss": 0.5, "rewards/accuracies": 0.9},
        "final_eval": null, "output_dir": dir,
    });
    fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary).unwrap()).unwrap();
}

/// A demo directory: the `summary.json` of [`DemoSummary`] (with a key it does not know) and
/// the training runs of its two policies.
fn write_demo(dir: &Path) {
    let policy = |beta: f64, reward_mean: f64, reward_ci95: f64, kl: f64, win_rate: f64| PolicyResult {
        beta,
        reward_mean,
        reward_ci95,
        kl,
        kl_ci95: kl / 10.0,
        win_rate,
        train_pairs: 450,
        final_train_loss: 0.5,
        final_train_accuracy: 0.8,
    };
    let summary = DemoSummary {
        kind: Kind::Demo,
        wall_seconds: 5400.2,
        reference: ReferenceResult { reward_mean: -0.2, reward_ci95: 0.15 },
        policies: vec![policy(0.1, 0.9, 0.2, 6.5, 0.71), policy(0.5, 0.4, 0.18, 1.8, 0.6)],
        pairs: 450,
        ties_dropped: 3,
        sample_tokens_per_second: 250.0,
        settings: serde_json::to_value(DemoConfig {
            learning_rate: Some(4e-5),
            ..DemoConfig::new("models/SmolLM2-135M-Instruct.gguf".into(), dir.to_path_buf())
        })
        .unwrap(),
    };
    let mut summary = serde_json::to_value(&summary).unwrap();
    summary["something_else"] = json!([1, 2, 3]);
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    for beta in [0.1, 0.5] {
        let run = policy_dir(dir, beta);
        fs::create_dir_all(&run).unwrap();
        fs::write(run.join("metrics.jsonl"), dpo_metrics(30, beta)).unwrap();
    }
}

fn assert_png(path: &Path) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.starts_with(PNG_SIGNATURE), "{} is not a PNG", path.display());
    assert!(bytes.len() > 10_000, "{}: only {} bytes", path.display(), bytes.len());
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn run_report_writes_plots_and_page() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_dpo_run(&dir);
    let written = write_run_report(&dir).unwrap();
    assert_eq!(names(&written), ["loss.png", "accuracies.png", "margins.png", "rewards.png", "report.html"]);
    let html = fs::read_to_string(dir.join("report.html")).unwrap();
    for png in &written[..4] {
        assert_png(png);
        let name = png.file_name().unwrap().to_str().unwrap();
        assert!(html.contains(&format!("src=\"{name}\"")), "report.html does not show {name}");
    }
    for expected in
        ["tokenize.max_length", "loss.beta", "1.15 GiB", "1 h 02 min 05 s", "12.346 s", "final_train.loss", "1e-6"]
    {
        assert!(html.contains(expected), "report.html lacks {expected:?}");
    }
    assert!(!html.contains("step_seconds"), "arrays of the summary are left out");
    assert_eq!(
        fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .count(),
        0
    );
}

#[test]
fn run_report_skips_absent_series() {
    // An SFT run: no rewards, a token accuracy, no eval lines, no train_args or summary.
    let tmp = tempfile::tempdir().unwrap();
    let lines: String = (1..=5)
        .map(|s| format!("{}\n", json!({"step": s, "epoch": s as f64 / 5.0, "loss": 2.0 / s as f64, "grad_norm": 1.0, "learning_rate": 2e-5, "num_tokens": 100 * s, "mean_token_accuracy": 0.3 + 0.05 * s as f64})))
        .collect();
    fs::write(tmp.path().join("metrics.jsonl"), lines).unwrap();
    let written = write_run_report(tmp.path()).unwrap();
    assert_eq!(names(&written), ["loss.png", "token_accuracy.png", "report.html"]);
    assert_png(&written[0]);
    let html = fs::read_to_string(&written[2]).unwrap();
    assert!(!html.contains("rewards.png") && !html.contains("Settings"));
}

#[test]
fn malformed_metrics_line_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("metrics.jsonl"), "{\"step\": 1, \"loss\": 0.69}\n{\"step\": 2, \"loss\": \n").unwrap();
    let err = format!("{:#}", write_run_report(tmp.path()).unwrap_err());
    assert!(err.contains("metrics.jsonl:2"), "{err}");
    fs::write(tmp.path().join("metrics.jsonl"), "{\"step\": 1}\n{\"loss\": 0.5}\n").unwrap();
    let err = format!("{:#}", write_run_report(tmp.path()).unwrap_err());
    assert!(err.contains("metrics.jsonl:2: missing numeric \"step\""), "{err}");
    fs::remove_file(tmp.path().join("metrics.jsonl")).unwrap();
    let err = format!("{:#}", write_run_report(tmp.path()).unwrap_err());
    assert!(err.contains("metrics.jsonl"), "{err}");
}

#[test]
fn demo_report_writes_frontier_training_and_page() {
    let tmp = tempfile::tempdir().unwrap();
    write_demo(tmp.path());
    let written = write_demo_report(tmp.path()).unwrap();
    assert_eq!(names(&written), ["frontier.png", "demo_training.png", "report.html"]);
    assert_png(&written[0]);
    assert_png(&written[1]);
    let html = fs::read_to_string(&written[2]).unwrap();
    for expected in [
        "src=\"frontier.png\"",
        "src=\"demo_training.png\"",
        "beta=0.1",
        "beta=0.5",
        "0.9 ± 0.2",
        "71.0%",
        "train_prompts",
        "4e-5",
        "1 h 30 min 00 s",
    ] {
        assert!(html.contains(expected), "report.html lacks {expected:?}");
    }
    // A policy without its training run is an error naming the missing file.
    fs::remove_file(tmp.path().join("policies/beta-0.5/metrics.jsonl")).unwrap();
    let err = format!("{:#}", write_demo_report(tmp.path()).unwrap_err());
    assert!(err.contains("beta-0.5/metrics.jsonl"), "{err}");
}

/// Renders sample reports into `/tmp/report-check` to look at, and the report of the run
/// directory `$DPO_REPORT_RUN` if set:
/// `cargo test -p dpo --lib report::tests::render_samples -- --ignored`.
#[test]
#[ignore]
fn render_samples() {
    let out = Path::new("/tmp/report-check");
    write_dpo_run(&out.join("run"));
    write_run_report(&out.join("run")).unwrap();
    write_demo(&out.join("demo"));
    write_demo_report(&out.join("demo")).unwrap();
    if let Some(run) = std::env::var_os("DPO_REPORT_RUN") {
        write_run_report(Path::new(&run)).unwrap();
    }
}

/// The reference's scores stay the object `demo` has always written into `summary.json`.
#[test]
fn reference_result_json() {
    let text = serde_json::to_string(&ReferenceResult { reward_mean: -0.2, reward_ci95: 0.15 }).unwrap();
    assert_eq!(text, r#"{"reward_mean":-0.2,"reward_ci95":0.15}"#);
}
