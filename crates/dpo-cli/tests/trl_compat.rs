//! A TRL user's run as it is: a TRL YAML config (TRL's documented DPO run on UltraFeedback,
//! adapted to the local SmolLM2 and a tiny data set), Hub names resolved in a Hugging Face cache
//! laid out by the real `huggingface_hub` (`tests/fixtures/hf_cache`, made by
//! `scripts/oracle/make_hf_fixtures.py`), directories written by `datasets`' `save_to_disk`, and
//! TensorBoard event files read back by TensorBoard's own `EventAccumulator`.

mod common;

use common::{lines, s};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `dpo ARGS` in `cwd` with the Hugging Face cache `hub` (offline: nothing is downloaded).
fn dpo_in(cwd: &Path, hub: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_dpo"))
        .current_dir(cwd)
        .env("DPO_HOME", cwd.join("dpo-home"))
        .env("HF_HUB_CACHE", hub)
        .env("HF_HUB_OFFLINE", "1")
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A copy of the fixture cache (links kept) with `HuggingFaceTB/SmolLM2-135M-Instruct` added as a
/// snapshot holding the default GGUF model (a Hub repository may hold a GGUF file).
fn cache_with_smollm2(dir: &Path) -> PathBuf {
    let hub = dir.join("hub");
    assert!(Command::new("cp").args(["-a", s(&fixtures().join("hf_cache")), s(&hub)]).status().unwrap().success());
    let gguf = dpo_runtime::fetch::ensure_default_model().unwrap();
    let repo = hub.join("models--HuggingFaceTB--SmolLM2-135M-Instruct");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::os::unix::fs::symlink(&gguf, repo.join("snapshots").join(commit).join(gguf.file_name().unwrap())).unwrap();
    hub
}

#[test]
fn a_trl_yaml_config_runs_as_it_is_and_unknown_fields_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let hub = cache_with_smollm2(d.path());
    let config = fixtures().join("trl_dpo_config.yaml");
    let o = dpo_in(d.path(), &hub, &["train", "--config", s(&config)]);
    assert!(o.status.success());
    let err = stderr(&o);
    for noted in ["--bf16 with --use-peft", "`remove_unused_columns`", "`logging_steps`", "`eval_strategy: steps`"] {
        assert!(err.contains(noted), "no note on {noted}: {err}");
    }
    let out = d.path().join("trl-dpo-out");
    let args = read(&out.join("train_args.json"));
    assert_eq!(args["learning_rate"], 5e-6);
    assert_eq!(args["max_steps"], 2);
    assert_eq!(args["per_device_train_batch_size"], 2);
    assert_eq!(args["setup"]["lora"]["lora_r"], 32);
    assert_eq!(args["setup"]["lora"]["lora_alpha"], 16.0);
    assert_eq!(args["setup"]["gradient_checkpointing"], true);
    // `bf16: true` is --bf16 (mixed precision), and a LoRA run's base is then kept in bf16
    assert_eq!(args["setup"]["bf16"], true);
    assert_eq!(args["setup"]["load"]["base_dtype"], "bf16");
    // LoRA as TRL builds it from this config: PEFT's default modules, dropout off (disable_dropout)
    assert_eq!(args["setup"]["lora"]["lora_target_modules"], serde_json::json!(["q_proj", "v_proj"]));
    assert_eq!(args["setup"]["lora"]["lora_dropout"], 0.0);
    assert!(args["model"].as_str().unwrap().contains("models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/"));
    assert!(args["data"].as_str().unwrap().ends_with("data/train-00000-of-00001.parquet"), "{}", args["data"]);
    assert!(args["eval_data"].as_str().unwrap().ends_with("data/test-00000-of-00001.parquet"), "{}", args["eval_data"]);
    let m = lines(&out.join("metrics.jsonl"));
    assert_eq!(m.iter().filter(|l| l.get("loss").is_some()).count(), 2);
    assert!(m.last().unwrap()["eval_loss"].as_f64().unwrap().is_finite());
    // the adapter names its base by Hub name
    let adapter = read(&out.join("final/adapter_config.json"));
    assert_eq!(adapter["base_model_name_or_path"], "HuggingFaceTB/SmolLM2-135M-Instruct");

    let base = std::fs::read_to_string(&config).unwrap();
    for (extra, named) in [
        ("betta: 0.1\n", "`betta` is not an option of `dpo train` nor a field of TRL"),
        ("use_dora: true\n", "`use_dora` (ModelConfig) is TRL's"),
        ("optim: adamw_apex_fused\n", "invalid value 'adamw_apex_fused' for '--optim"),
        ("report_to: wandb\n", "invalid value 'wandb' for '--report-to"),
    ] {
        let bad = d.path().join("bad.yaml");
        std::fs::write(&bad, format!("{}{extra}", base.replace("report_to: none\n", ""))).unwrap();
        let o = dpo_in(d.path(), &hub, &["train", "--config", s(&bad), "--output-dir", "refused"]);
        assert!(!o.status.success(), "{extra} accepted");
        assert!(stderr(&o).contains(named), "{extra}: {}", stderr(&o));
        assert!(!d.path().join("refused").exists());
    }
    // the command line wins over the file
    let o = dpo_in(
        d.path(),
        &hub,
        &["train", "--config", s(&config), "--output-dir", "cli-wins", "--max-steps", "1", "--loss", "ipo"],
    );
    assert!(o.status.success());
    let args = read(&d.path().join("cli-wins/train_args.json"));
    assert_eq!(
        (args["max_steps"].as_u64(), args["task"]["objective"]["terms"][0][0]["loss"].as_str()),
        (Some(1), Some("ipo"))
    );
}

#[test]
fn hub_names_resolve_in_a_cache_written_by_huggingface_hub() {
    let manifest = read(&fixtures().join("hf_fixtures.json"));
    let d = tempfile::tempdir().unwrap();
    let hub = fixtures().join("hf_cache");
    let run = |name: &str, extra: &[&str]| -> Output {
        let mut args = vec![
            "train",
            "--model",
            "dpo-rs/tiny-llama",
            "--data",
            "dpo-rs/tiny-pairs",
            "--output-dir",
            name,
            "--max-steps",
            "1",
            "--per-device-train-batch-size",
            "4",
        ];
        args.extend(extra);
        dpo_in(d.path(), &hub, &args)
    };
    let o = run("main", &["--eval-data", "dpo-rs/tiny-pairs"]);
    assert!(o.status.success());
    let args = read(&d.path().join("main/train_args.json"));
    let commits = |k: &str| manifest.to_string().contains(k);
    let model = args["model"].as_str().unwrap();
    let main_commit = model.rsplit('/').next().unwrap();
    assert!(commits(main_commit) && model.contains("models--dpo-rs--tiny-llama/snapshots/"), "{model}");
    assert!(args["eval_data"].as_str().unwrap().ends_with("data/test-00000-of-00001.parquet"));
    assert_eq!(lines(&d.path().join("main/metrics.jsonl")).len(), 2);

    // a tag, and a configuration with conversational records
    let o = run("tag", &["--revision", "v0.1", "--data-config", "conversational"]);
    assert!(o.status.success());
    let args = read(&d.path().join("tag/train_args.json"));
    let older = std::fs::read_to_string(hub.join("models--dpo-rs--tiny-llama/refs/v0.1")).unwrap();
    assert!(args["model"].as_str().unwrap().ends_with(older.trim()) && older.trim() != main_commit);
    assert!(args["data"].as_str().unwrap().ends_with("conversational/train-00000-of-00001.parquet"));

    for (extra, named) in [
        (&["--data-split", "validation"][..], "no split `validation` (it has: train, test)"),
        (&["--data-config", "nope"][..], "no configuration `nope` (it has: conversational, default)"),
        (&["--revision", "v9"][..], "not in the Hugging Face cache"),
    ] {
        let o = run("refused", extra);
        assert!(!o.status.success() && stderr(&o).contains(named), "{extra:?}: {}", stderr(&o));
    }
    let o = dpo_in(
        d.path(),
        &hub,
        &["train", "--model", "dpo-rs/not-there", "--data", "dpo-rs/tiny-pairs", "--output-dir", "x"],
    );
    assert!(
        !o.status.success()
            && stderr(&o).contains("model dpo-rs/not-there: no file of that name, and not in the Hugging Face cache"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn datasets_saved_to_disk_train() {
    let d = tempfile::tempdir().unwrap();
    let hub = fixtures().join("hf_cache");
    for (name, data, extra) in [
        ("dict", "saved_dataset", &["--eval-data", "saved_dataset"][..]),
        ("single", "saved_dataset_single", &[][..]),
        ("conversational", "saved_dataset_conversational", &[][..]),
    ] {
        let data = fixtures().join(data);
        let mut args = vec![
            "train",
            "--model",
            "dpo-rs/tiny-llama",
            "--data",
            s(&data),
            "--output-dir",
            name,
            "--max-steps",
            "1",
            "--per-device-train-batch-size",
            "4",
        ];
        let eval: Vec<String> =
            extra
                .iter()
                .map(|e| {
                    if e.starts_with("saved") {
                        fixtures().join(e).to_string_lossy().into_owned()
                    } else {
                        e.to_string()
                    }
                })
                .collect();
        args.extend(eval.iter().map(String::as_str));
        let o = dpo_in(d.path(), &hub, &args);
        assert!(o.status.success(), "{name}");
        let m = lines(&d.path().join(name).join("metrics.jsonl"));
        assert!(m[0]["loss"].as_f64().unwrap().is_finite(), "{name}");
        assert!(stderr(&o).contains("16 records") || stderr(&o).contains("8 records"), "{name}: {}", stderr(&o));
    }
    let o = dpo_in(
        d.path(),
        &hub,
        &[
            "train",
            "--model",
            "dpo-rs/tiny-llama",
            "--data",
            s(&fixtures().join("saved_dataset")),
            "--data-split",
            "dev",
            "--output-dir",
            "x",
        ],
    );
    assert!(!o.status.success() && stderr(&o).contains("no split `dev` (it has: train, test)"), "{}", stderr(&o));
}

/// A Python with the `tensorboard` package: `$DPO_TB_PYTHON`, the oracle venv's or `python3` if
/// one has it, else a venv made here (`python3 -m venv`, `pip install tensorboard==2.21.0`, ~20 s
/// the first time; a fresh machine has Python 3 and pip).
fn tensorboard_python() -> String {
    let has = |p: &str| Command::new(p).args(["-c", "import tensorboard"]).output().is_ok_and(|o| o.status.success());
    let candidates =
        [std::env::var("DPO_TB_PYTHON").ok(), Some("/tmp/oracle/venv/bin/python".into()), Some("python3".into())];
    if let Some(p) = candidates.into_iter().flatten().find(|p| has(p)) {
        return p;
    }
    let venv = std::env::temp_dir().join("dpo-rs-tensorboard-venv");
    let python = venv.join("bin/python").to_string_lossy().into_owned();
    if !has(&python) {
        assert!(
            Command::new("python3").args(["-m", "venv", s(&venv)]).status().unwrap().success(),
            "python3 -m venv {}",
            venv.display()
        );
        let pip =
            Command::new(venv.join("bin/pip")).args(["install", "--quiet", "tensorboard==2.21.0"]).status().unwrap();
        assert!(pip.success() && has(&python), "pip install tensorboard==2.21.0 into {}", venv.display());
    }
    python
}

#[test]
fn tensorboard_reads_every_scalar_and_step_of_metrics_jsonl() {
    let python = tensorboard_python();
    let d = tempfile::tempdir().unwrap();
    let hub = fixtures().join("hf_cache");
    let o = dpo_in(
        d.path(),
        &hub,
        &[
            "train",
            "--model",
            "dpo-rs/tiny-llama",
            "--data",
            "dpo-rs/tiny-pairs",
            "--eval-data",
            "dpo-rs/tiny-pairs",
            "--output-dir",
            "out",
            "--max-steps",
            "3",
            "--per-device-train-batch-size",
            "4",
            "--eval-steps",
            "2",
            "--report-to",
            "tensorboard",
        ],
    );
    assert!(o.status.success());
    let out = d.path().join("out");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/oracle/tb_scalars.py");
    let r = Command::new(&python).arg(&script).arg(out.join("runs")).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let tb: Value = serde_json::from_slice(&r.stdout).unwrap();
    let runs = tb["runs"].as_object().unwrap();
    assert_eq!(runs.len(), 1);
    let run = runs.values().next().unwrap();
    // every number of every line, under TRL's tag, at its step, in order
    let mut want: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
    for line in lines(&out.join("metrics.jsonl")) {
        let step = line["step"].as_i64().unwrap();
        for (k, v) in line.as_object().unwrap() {
            if let (false, Some(x)) = (k == "step", v.as_f64()) {
                want.entry(dpo_train::tensorboard::tag(k)).or_default().push((step, x));
            }
        }
    }
    let scalars = run["scalars"].as_object().unwrap();
    assert_eq!(
        scalars.len(),
        want.len(),
        "tags: {:?} vs {:?}",
        scalars.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let mut n = 0;
    for (tag, points) in &want {
        let got = scalars[tag].as_array().unwrap_or_else(|| panic!("no {tag}"));
        assert_eq!(got.len(), points.len(), "{tag}");
        for (g, (step, x)) in got.iter().zip(points) {
            assert_eq!(g[0].as_i64(), Some(*step), "{tag}");
            let v = g[1].as_f64().unwrap();
            assert!(
                (v - x).abs() <= 1e-6 * x.abs().max(1e-30) || v == *x as f32 as f64,
                "{tag} at step {step}: {v} vs {x}"
            );
            n += 1;
        }
    }
    assert!(
        want.contains_key("train/loss")
            && want.contains_key("eval/rewards/margins")
            && want.contains_key("train/learning_rate")
    );
    assert!(run["text"].as_array().unwrap().iter().any(|t| t["tag"] == "args/text_summary"));
    println!("{n} scalars of {} tags read back by TensorBoard's EventAccumulator", want.len());
}
