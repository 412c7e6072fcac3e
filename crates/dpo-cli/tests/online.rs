//! Online DPO (`dpo train --online`) and iterative DPO (`dpo iterate`) on a tiny model.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{dpo, lines, s};

fn prompts(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("prompts.jsonl");
    let text: String = dpo_align::recipes::demo::embedded_prompts()
        .iter()
        .take(n)
        .map(|q| serde_json::json!({ "prompt": q }).to_string() + "\n")
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// Each step samples two completions per prompt from the policy, judges them and trains on the
/// untied pairs; the metrics carry the judge's view; the policy moves. What online DPO cannot do
/// is refused before anything is written.
#[test]
fn online_dpo_samples_judges_and_trains_every_step() {
    let home = tempfile::tempdir().unwrap();
    let model = common::tiny_model(home.path());
    let data = prompts(home.path(), 8);
    let out = home.path().join("online");
    let o = dpo(
        home.path(),
        &[
            "train",
            "--online",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--output-dir",
            s(&out),
            "--max-steps",
            "3",
            "--per-device-train-batch-size",
            "4",
            "--online-max-new-tokens",
            "12",
            "--learning-rate",
            "1e-2",
            "--warmup-steps",
            "0",
        ],
    );
    assert!(o.status.success());
    let m = lines(&out.join("metrics.jsonl"));
    assert_eq!(m.len(), 3);
    for l in &m {
        let pairs = l["online/pairs"].as_u64().unwrap() as f64;
        let ties = l["online/ties"].as_f64().unwrap();
        assert!((pairs + ties * 4.0 - 4.0).abs() < 1e-9, "{l}");
        let tokens = l["online/completion_tokens"].as_f64().unwrap();
        assert!((1.0..=12.0).contains(&tokens), "{l}");
        let r = l["online/judge_reward"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&r), "{l}");
        if pairs > 0.0 {
            assert!(
                l["loss"].as_f64().unwrap().is_finite()
                    && l["online/chosen_reward"].as_f64() > l["online/rejected_reward"].as_f64(),
                "{l}"
            );
        }
    }
    assert!(m.iter().any(|l| l["online/pairs"].as_u64().unwrap() > 0));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 3);
    let before = dpo_model::load(&model).unwrap().model().unwrap().named_tensors().unwrap();
    let after = dpo_model::load(&out.join("final")).unwrap().model().unwrap().named_tensors().unwrap();
    let moved = before
        .iter()
        .zip(&after)
        .filter(|((_, a), (_, b))| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0)
        .count();
    assert!(moved > 0, "the policy did not change");
    // Every key of an offline run's metrics line is in an online one (online adds its own).
    let offline = home.path().join("offline");
    let o = dpo(
        home.path(),
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&common::pairs8()),
            "--output-dir",
            s(&offline),
            "--max-steps",
            "1",
        ],
    );
    assert!(o.status.success());
    let keys = |l: &Value| l.as_object().unwrap().keys().cloned().collect::<std::collections::BTreeSet<String>>();
    let missing: Vec<String> =
        keys(&lines(&offline.join("metrics.jsonl"))[0]).difference(&keys(&m[0])).cloned().collect();
    assert!(missing.is_empty(), "an online metrics line lacks {missing:?}");
    assert_eq!(summary["kind"], "online");
    // `dpo report` reads an online run, with its online plots.
    let o = dpo(home.path(), &["report", s(&out)]);
    let written = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && written.contains("online_rewards.png") && written.contains("report.html"),
        "{written}"
    );

    for (extra, want) in [
        (vec!["--loss", "kto"], "use a pairwise loss"),
        (vec!["--ref-logps", "r.jsonl"], "--ref-logps and --sync-ref-model do not apply"),
        (vec!["--judge", "nope"], "unknown judge `nope`"),
    ] {
        let bad = home.path().join("bad");
        let mut args = vec![
            "train",
            "--online",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--output-dir",
            s(&bad),
            "--max-steps",
            "1",
        ];
        args.extend(extra);
        let o = dpo(home.path(), &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want) && !bad.exists(), "{want}: {err}");
    }
}

/// `dpo train --online` on the tiny model: 6 steps of 4 prompts, a checkpoint every step.
fn online_args<'a>(model: &'a Path, data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["train", "--online", "--model", s(model), "--data", s(data), "--output-dir", s(out)];
    a.extend(["--max-steps", "6", "--per-device-train-batch-size", "4", "--online-max-new-tokens", "12"]);
    a.extend(["--learning-rate", "1e-2", "--save-steps", "1", "--seed", "5"]);
    a.extend_from_slice(extra);
    a
}

/// Killed with SIGKILL as soon as its second checkpoint is complete and resumed from `latest`, an
/// online run ends with the uninterrupted run's metrics lines and weights, byte for byte: the
/// prompts' order, the samples of each step (seeded by the step) and the judge's pairs replay.
#[test]
fn online_dpo_resumes_after_sigkill_to_the_uninterrupted_result() {
    let home = tempfile::tempdir().unwrap();
    let model = common::tiny_model(home.path());
    let data = prompts(home.path(), 8);
    let eval = common::pairs8();
    let whole = home.path().join("whole");
    let extra = ["--eval-data", s(&eval), "--eval-steps", "2", "--save-total-limit", "3"];
    assert!(dpo(home.path(), &online_args(&model, &data, &whole, &extra)).status.success());
    let out = home.path().join("killed");
    let mut killed = false;
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(&out);
        let mut child = Command::new(env!("CARGO_BIN_EXE_dpo"))
            .env("DPO_HOME", home.path())
            .args(online_args(&model, &data, &out, &extra))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() && !out.join("checkpoint-2/trainer_state.json").exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap(); // SIGKILL (a no-op when it finished first: then try again)
        child.wait().unwrap();
        if !out.join("final").exists() {
            killed = true;
            break;
        }
    }
    assert!(killed, "every run finished before it could be killed after its second checkpoint");
    let o = dpo(
        home.path(),
        &online_args(&model, &data, &out, &[&extra[..], &["--resume-from-checkpoint", "latest"]].concat()),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("resuming from"), "{err}");
    for f in ["metrics.jsonl", "final/model.safetensors"] {
        assert!(
            std::fs::read(whole.join(f)).unwrap() == std::fs::read(out.join(f)).unwrap(),
            "{f} differs after the resume"
        );
    }
}

/// An online run whose every step is not finite (beta NaN makes every loss NaN) skips each
/// update and stops after `--max-nonfinite-steps`, naming the step, as an offline run does.
#[test]
fn online_dpo_stops_after_max_nonfinite_steps() {
    let home = tempfile::tempdir().unwrap();
    let model = common::tiny_model(home.path());
    let data = prompts(home.path(), 8);
    let out = home.path().join("nan");
    let o = dpo(home.path(), &online_args(&model, &data, &out, &["--beta", "nan", "--max-nonfinite-steps", "2"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("2 steps in a row were not finite (--max-nonfinite-steps 2)"), "{err}");
    let m = lines(&out.join("metrics.jsonl"));
    assert_eq!(m.iter().map(|l| l["skipped_nonfinite"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert!(!out.join("final").exists());
}

/// Two rounds, then the same command with `--rounds 3` goes on after the finished rounds (their
/// results kept as they were); other settings in the same directory are refused.
#[test]
fn iterate_runs_rounds_and_goes_on_after_the_finished_ones() {
    let home = tempfile::tempdir().unwrap();
    let model = common::tiny_model(home.path());
    let data = prompts(home.path(), 12);
    let out = home.path().join("iter");
    let args = |rounds: &'static str, beta: &'static str| -> Vec<String> {
        [
            "iterate",
            "--model",
            s(&model),
            "--prompts",
            s(&data),
            "--output-dir",
            s(&out),
            "--rounds",
            rounds,
            "--train-prompts",
            "8",
            "--eval-prompts",
            "4",
            "--samples",
            "4",
            "--eval-samples",
            "2",
            "--max-new-tokens",
            "8",
            "--batch",
            "4",
            "--learning-rate",
            "1e-2",
            "--beta",
            beta,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let run = |a: Vec<String>| dpo(home.path(), &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run(args("2", "0.1")).status.success());
    let first: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(first["rounds"].as_array().unwrap().len(), 2);
    for r in 1..=2 {
        let d = out.join(format!("round-{r}"));
        for f in
            ["train_samples.jsonl", "pairs.jsonl", "eval_samples.jsonl", "round.json", "policy/final/model.safetensors"]
        {
            assert!(d.join(f).exists(), "round {r}: {f}");
        }
    }
    assert!(out.join("round-2/ref_logps.jsonl").exists() && !out.join("round-1/ref_logps.jsonl").exists());
    assert!(out.join("report.html").exists() && out.join("frontier.png").exists());
    // `dpo report` reads an iterate directory (its frontier of rounds), written anew.
    std::fs::remove_file(out.join("frontier.png")).unwrap();
    let o = run(vec!["report".into(), s(&out).into()]);
    let written = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && written.contains("frontier.png") && out.join("frontier.png").exists(), "{written}");
    let o = run(args("3", "0.1"));
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("round 1: finished before") && err.contains("round 2: finished before"), "{err}");
    let again: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let rounds = again["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    assert_eq!(rounds[..2], first["rounds"].as_array().unwrap()[..]);
    assert_eq!(again["reference"], first["reference"]);
    let o = run(args("3", "0.5"));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("other settings"));
}
