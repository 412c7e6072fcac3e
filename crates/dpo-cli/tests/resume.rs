//! Durable runs on a tiny random model: `dpo train` killed with SIGKILL at random moments and
//! resumed with `--resume-from-checkpoint latest` ends byte-identical to the uninterrupted run
//! (full fine-tuning and LoRA, with AdamW, Adafactor, Lion and 8-bit AdamW, and β-DPO's running
//! statistics); a resume with other settings is refused by name; non-finite steps
//! are skipped, then stop the run.

mod common;

use common::{dpo, lines, pairs8, s, tiny_model};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn train_args<'a>(model: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--model",
        s(model),
        "--data",
        s(&PAIRS),
        "--eval-data",
        s(&PAIRS),
        "--output-dir",
        s(out),
        "--max-steps",
        "12",
        "--per-device-train-batch-size",
        "2",
        "--learning-rate",
        "1e-3",
        "--save-steps",
        "2",
        "--save-total-limit",
        "2",
        "--eval-steps",
        "5",
        "--seed",
        "7",
    ];
    a.extend_from_slice(extra);
    a
}

static PAIRS: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(pairs8);

/// The files an uninterrupted run and a resumed one must share byte for byte.
fn outcome(out: &Path, weights: &str) -> (Vec<u8>, Vec<u8>) {
    (std::fs::read(out.join("metrics.jsonl")).unwrap(), std::fs::read(out.join("final").join(weights)).unwrap())
}

/// The command that goes on with the run in `out`: from its latest checkpoint if it has one,
/// else from the start.
fn go_on<'a>(model: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let resume = out
        .read_dir()
        .is_ok_and(|mut r| r.any(|e| e.unwrap().file_name().to_string_lossy().starts_with("checkpoint-")));
    let mut args = train_args(model, out, extra);
    args.extend_from_slice(if resume {
        &["--resume-from-checkpoint", "latest"][..]
    } else {
        &["--overwrite-output-dir"][..]
    });
    args
}

/// Runs the training command of `extra` once whole, then again killed with SIGKILL `kills` times
/// at pseudo-random moments (resuming from `latest` each time there is a checkpoint, starting
/// over otherwise), and checks that the run finished by resuming equals the whole one.
fn killed_and_resumed_equals_whole(extra: &[&str], weights: &str, kills: usize) {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let whole = d.path().join("whole");
    let t0 = Instant::now();
    assert!(dpo(d.path(), &train_args(&model, &whole, extra)).status.success());
    let span = t0.elapsed();
    let want = outcome(&whole, weights);

    let out = d.path().join("killed");
    let (mut done, mut starts, mut resumed, mut seed) = (0, 0, 0, 0x9E37_79B9_7F4A_7C15u64);
    while done < kills {
        let args = go_on(&model, &out, extra);
        resumed += args.contains(&"latest") as usize;
        let mut child = Command::new(env!("CARGO_BIN_EXE_dpo"))
            .env("DPO_HOME", d.path())
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        starts += 1;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait = span.mul_f64(0.15 + 0.5 * (seed >> 11) as f64 / (1u64 << 53) as f64);
        let t = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(status.success(), "run {starts} failed: {err}");
                // Finished before its kill: start over, so that every kill interrupts a run.
                std::fs::remove_dir_all(&out).unwrap();
                break;
            }
            if t.elapsed() >= wait {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                done += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let o = dpo(d.path(), &go_on(&model, &out, extra));
    assert!(o.status.success());
    let got = outcome(&out, weights);
    assert!(
        got.0 == want.0,
        "metrics.jsonl differs after {kills} kills:\n{}\nvs\n{}",
        String::from_utf8_lossy(&got.0),
        String::from_utf8_lossy(&want.0)
    );
    assert!(got.1 == want.1, "final/{weights} differs after {kills} kills");
    // --save-total-limit 2: two checkpoints at most (the one resumed from may be a third).
    let n = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("checkpoint-"))
        .count();
    assert!(n <= 3, "{n} checkpoints kept");
    eprintln!(
        "{kills} kills over {starts} starts, {resumed} of them resumed; uninterrupted run {:.2} s",
        span.as_secs_f64()
    );
    assert!(
        resumed >= kills / 2,
        "only {resumed} of {starts} starts resumed from a checkpoint: the kills came too early to test resuming"
    );
}

#[test]
fn full_fine_tuning_survives_kill_9() {
    killed_and_resumed_equals_whole(&[], "model.safetensors", 20);
}

#[test]
fn lora_survives_kill_9() {
    killed_and_resumed_equals_whole(
        &["--use-peft", "--lora-r", "4", "--learning-rate", "1e-2"],
        "adapter_model.safetensors",
        20,
    );
}

#[test]
fn adafactor_lion_and_8bit_adamw_survive_kill_9() {
    killed_and_resumed_equals_whole(&["--optim", "adafactor"], "model.safetensors", 8);
    killed_and_resumed_equals_whole(&["--optim", "adamw_8bit"], "model.safetensors", 8);
    killed_and_resumed_equals_whole(
        &["--optim", "lion_32bit", "--use-peft", "--lora-r", "4", "--learning-rate", "1e-4"],
        "adapter_model.safetensors",
        8,
    );
}

#[test]
fn beta_dpo_survives_kill_9() {
    // its running margin statistics are in trainer_state.json
    killed_and_resumed_equals_whole(&["--loss", "beta_dpo"], "model.safetensors", 8);
}

#[test]
fn resume_checks_the_checkpoint_against_the_command() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let out = d.path().join("run");
    let mut args = train_args(&model, &out, &["--max-steps", "4"]);
    assert!(dpo(d.path(), &args).status.success());
    let ckpt = out.join("checkpoint-2");
    for f in ["model.safetensors", "config.json", "optimizer.safetensors", "trainer_state.json", "metrics.jsonl"] {
        assert!(ckpt.join(f).is_file(), "checkpoint-2/{f}");
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["global_step"], 2);
    assert_eq!(state["optimizer_step"], 2);
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    // Another learning rate: refused by name, nothing written.
    args.extend(["--resume-from-checkpoint", "latest", "--learning-rate", "2e-3"]);
    let o = dpo(d.path(), &args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("`learning_rate` = 0.001, this command has 0.002"), "{err}");
    assert!(err.contains("checkpoint-2/trainer_state.json"), "{err}");
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);
    // A directory that is not a complete checkpoint (the final model) is refused.
    let o = dpo(
        d.path(),
        &[&train_args(&model, &out, &["--max-steps", "4"])[..], &["--resume-from-checkpoint", s(&out.join("final"))]]
            .concat(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("not a complete checkpoint (no trainer_state.json"), "{err}");
    // Nothing to resume from.
    let fresh = d.path().join("fresh");
    let o = dpo(d.path(), &[&train_args(&model, &fresh, &[])[..], &["--resume-from-checkpoint", "latest"]].concat());
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds no complete checkpoint-STEP/ directory"));
    // Resuming from checkpoint-2 of the 4-step run gives its metrics and final weights again.
    let want = outcome(&out, "model.safetensors");
    let o = dpo(
        d.path(),
        &[&train_args(&model, &out, &["--max-steps", "4"])[..], &["--resume-from-checkpoint", s(&ckpt)]].concat(),
    );
    assert!(o.status.success());
    assert!(outcome(&out, "model.safetensors") == want);
}

#[test]
fn non_finite_steps_are_skipped_then_stop_the_run() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let refs = d.path().join("ref.jsonl");
    assert!(dpo(d.path(), &["logps", "--model", s(&model), "--data", s(&PAIRS), "--out", s(&refs)]).status.success());
    // Reference log-probs of +-1e308: the reference margin overflows to infinity.
    let huge: Vec<String> = lines(&refs)
        .into_iter()
        .map(|mut l| {
            l["chosen_logps"] = 1e308.into();
            l["rejected_logps"] = (-1e308).into();
            l.to_string()
        })
        .collect();
    let bad = d.path().join("huge.jsonl");
    std::fs::write(&bad, huge.join("\n")).unwrap();
    let run = |name: &str, limit: &str| {
        let out = d.path().join(name);
        let o = dpo(
            d.path(),
            &[
                "train",
                "--model",
                s(&model),
                "--data",
                s(&PAIRS),
                "--output-dir",
                s(&out),
                "--ref-logps",
                s(&bad),
                "--max-steps",
                "4",
                "--per-device-train-batch-size",
                "2",
                "--learning-rate",
                "1e-3",
                "--save-steps",
                "1",
                "--max-nonfinite-steps",
                limit,
            ],
        );
        (out, o)
    };
    // Under the limit: every step is skipped and the weights stay the initial ones.
    let (out, o) = run("skipped", "10");
    assert!(o.status.success());
    let m = lines(&out.join("metrics.jsonl"));
    assert_eq!(m.iter().map(|l| l["skipped_nonfinite"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let initial = read_tensors(&model.join("model.safetensors"));
    assert_eq!(read_tensors(&out.join("final/model.safetensors")), initial, "a skipped step changed the weights");
    assert_eq!(read_tensors(&out.join("checkpoint-2/model.safetensors")), initial);
    // At the limit: the run stops, naming the step and its records.
    let (out, o) = run("stopped", "3");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("step 3: loss")
            && err.contains("3 steps in a row were not finite (--max-nonfinite-steps 3)"),
        "{err}"
    );
    assert!(err.contains("pairs8.jsonl: ["), "{err}");
    assert!(!out.join("final").exists());
    assert_eq!(lines(&out.join("metrics.jsonl")).len(), 3);
}

/// A safetensors file's tensors by name, as f32 values.
fn read_tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let mut out = std::collections::BTreeMap::new();
    dpo_model::for_each_safetensor(path, |name, t| {
        out.insert(name, t.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    })
    .unwrap();
    out
}

/// A full disk (here a file-size limit, `ulimit -f`, with SIGXFSZ ignored so that writes fail
/// with EFBIG as on a full file system) while a checkpoint is written: the run fails naming the
/// checkpoint, the previous checkpoint stays complete, and resuming from it later gives the
/// uninterrupted run's result.
#[test]
fn a_full_disk_fails_clearly_and_keeps_the_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let whole = d.path().join("whole");
    assert!(dpo(d.path(), &train_args(&model, &whole, &["--max-steps", "6"])).status.success());
    let out = d.path().join("run");
    // Steps 1-2 and checkpoint-2 with room enough, then stopped.
    let mut child = Command::new(env!("CARGO_BIN_EXE_dpo"))
        .env("DPO_HOME", d.path())
        .args(train_args(&model, &out, &["--max-steps", "6"]))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !out.join("checkpoint-2").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before checkpoint-2");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = std::fs::read(out.join("checkpoint-2/model.safetensors")).unwrap();
    // Resumed with files limited to 1 MiB: the model file of checkpoint-4 (3 MB) does not fit.
    let mut args = train_args(&model, &out, &["--max-steps", "6", "--resume-from-checkpoint", "latest"]);
    let quoted: Vec<String> = args.drain(..).map(|a| format!("'{a}'")).collect();
    let o = Command::new("bash")
        .env("DPO_HOME", d.path())
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f 1024; exec {} {}", env!("CARGO_BIN_EXE_dpo"), quoted.join(" ")))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("checkpoint-4") && err.contains("File too large"), "{err}");
    eprintln!("{}", err.lines().last().unwrap_or(""));
    assert!(!out.join("checkpoint-4").exists(), "a partial checkpoint-4 was left");
    assert_eq!(std::fs::read(out.join("checkpoint-2/model.safetensors")).unwrap(), kept);
    let o = dpo(d.path(), &train_args(&model, &out, &["--max-steps", "6", "--resume-from-checkpoint", "latest"]));
    assert!(o.status.success());
    assert!(outcome(&out, "model.safetensors") == outcome(&whole, "model.safetensors"));
}
