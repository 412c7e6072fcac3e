//! Data-parallel jobs over MPI (`cargo test -p dpo-cli --features mpi --test mpi`; needs Open
//! MPI's `mpirun`, as `.ci/run` installs it): `-np 2` trains to the weights and metrics of one
//! process (DPO, SFT, KTO's batch-coupled reference point), `--zero-stage 1` to exactly those of
//! `-np 2` without it, `dpo logps`, `dpo sample` and `dpo eval` write the files of one process,
//! and a rank that fails on its input, runs another command, or is killed ends the whole job
//! within seconds, naming the rank; the last checkpoint then resumes.
#![cfg(feature = "mpi")]

mod common;

use common::{lines, s, shared, tiny_model};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The jobs share this machine's CPUs: one at a time.
static ONE_JOB: Mutex<()> = Mutex::new(());

const BIN: &str = env!("CARGO_BIN_EXE_dpo");

fn mpirun() -> Command {
    let mut c = Command::new("mpirun");
    // root in CI containers; 2 ranks may exceed the cores Open MPI counts; no cross-memory
    // attach between ranks (containers often forbid ptrace), shared memory copies instead
    c.args(["--allow-run-as-root", "--oversubscribe"]).env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

/// `dpo ARGS` as one process, or as a job of `ranks` ranks under mpirun.
fn run(home: &Path, ranks: usize, args: &[&str]) -> Output {
    let mut c = if ranks == 1 {
        Command::new(BIN)
    } else {
        let mut c = mpirun();
        c.args(["-np", &ranks.to_string(), BIN]);
        c
    };
    let out =
        c.env("DPO_HOME", home).args(args).output().expect("mpirun (Open MPI) must be installed for the mpi tests");
    assert!(out.status.success(), "dpo {args:?} on {ranks} ranks failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn smollm2() -> PathBuf {
    dpo_runtime::fetch::ensure_default_model().unwrap()
}

/// The first `n` HH-RLHF test pairs (helpful-base) as a JSONL file in `dir`.
fn hh_pairs(dir: &Path, n: usize) -> PathBuf {
    let f = dpo_runtime::io::open_text(&shared().join("data/hh-rlhf/helpful-base/test.jsonl.gz")).unwrap();
    let text: String = std::io::BufRead::lines(f).take(n).map(|l| l.unwrap() + "\n").collect();
    let p = dir.join(format!("hh{n}.jsonl"));
    std::fs::write(&p, text).unwrap();
    p
}

fn tensors(p: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()))
        .collect()
}

/// The largest per-tensor `||a - b|| / ||a||` of two safetensors files.
fn weights_rel_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(n, x)| {
            let y = &b[n];
            let d: f64 = x.iter().zip(y).map(|(&p, &q)| (p as f64 - q as f64).powi(2)).sum::<f64>().sqrt();
            let norm: f64 = x.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
            d / norm.max(1e-30)
        })
        .fold(0.0, f64::max)
}

/// Compares two `metrics.jsonl`: the same lines, keys and integers; each number within `tol(step)`
/// relative (absolute below 1). Returns the largest difference seen per step.
fn metrics_close(a: &Path, b: &Path, tol: impl Fn(u64) -> f64) -> Vec<f64> {
    let (a, b) = (lines(a), lines(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let (x, y) = (x.as_object().unwrap(), y.as_object().unwrap());
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            let step = x["step"].as_u64().unwrap();
            let mut worst: f64 = 0.0;
            for (k, v) in x {
                match (v, &y[k]) {
                    (Value::Number(p), Value::Number(q)) if p.is_f64() || q.is_f64() => {
                        let (p, q) = (p.as_f64().unwrap(), q.as_f64().unwrap());
                        let d = (p - q).abs() / p.abs().max(1.0);
                        assert!(d <= tol(step), "step {step} `{k}`: {p} vs {q} ({d:.1e})");
                        worst = worst.max(d);
                    }
                    (p, q) => assert_eq!(p, q, "step {step} `{k}`"),
                }
            }
            worst
        })
        .collect()
}

#[test]
fn training_on_two_ranks_equals_one_process() {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (home, model, data) = (dir.path().join("home"), smollm2(), hh_pairs(dir.path(), 12));
    // `dpo train` or `dpo sft`, 2 steps of 6 pairs
    let job = |cmd: &str, home: &Path, ranks: usize, out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut a = vec![
            cmd,
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--output-dir",
            s(&out),
            "--max-steps",
            "2",
            "--max-length",
            "128",
            "--per-device-train-batch-size",
            "6",
            "--max-tokens-per-forward",
            "512",
            "--seed",
            "3",
        ];
        a.extend_from_slice(extra);
        run(home, ranks, &a);
        out
    };
    let train = |home: &Path, ranks: usize, out: &str, extra: &[&str]| job("train", home, ranks, out, extra);
    let weights = |out: &Path| out.join("final/model.safetensors");

    // DPO, full fine-tuning. Each computes the reference log-probs into a cache of its own (the
    // 2-rank job divides them among the ranks).
    let home2 = dir.path().join("home2");
    let one = train(&home, 1, "dpo1", &[]);
    let two = train(&home2, 2, "dpo2", &[]);
    let zero = train(&home, 2, "dpo2z", &["--zero-stage", "1"]);
    let w = weights_rel_diff(&weights(&one), &weights(&two));
    let m = metrics_close(
        &one.join("metrics.jsonl"),
        &two.join("metrics.jsonl"),
        |step| if step == 1 { 1e-6 } else { 2e-5 },
    );
    eprintln!("DPO 1 vs 2 ranks: weights {w:.1e} (worst per-tensor relative), metrics per step {m:?}");
    assert!(w < 1e-5, "{w}");
    // the reference cache the ranks filled together equals one process's
    let cache = |h: &Path| -> Vec<String> {
        let mut files = walk(&h.join("ref-logps"));
        files.sort();
        files.into_iter().map(|p| std::fs::read_to_string(p).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(cache(&home).len(), 1);
    assert_eq!(cache(&home), cache(&home2), "reference log-prob caches");
    // ZeRO stage 1: the same arithmetic element by element
    assert_eq!(std::fs::read(weights(&zero)).unwrap(), std::fs::read(weights(&two)).unwrap(), "--zero-stage 1 weights");
    assert_eq!(std::fs::read(zero.join("metrics.jsonl")).unwrap(), std::fs::read(two.join("metrics.jsonl")).unwrap());
    let summary = |out: &Path| {
        serde_json::from_str::<Value>(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
    };
    let (full, sharded) = (
        summary(&two)["optimizer_state_bytes"].as_u64().unwrap(),
        summary(&zero)["optimizer_state_bytes"].as_u64().unwrap(),
    );
    assert_eq!(full, 8 * 134_515_008, "two f32 moments of SmolLM2-135M's tensors");
    assert!(sharded.abs_diff(full / 2) <= 8, "rank 0 holds half the moments: {sharded} of {full}");
    assert!(
        summary(&two)["comm_bytes_per_step"].as_f64().unwrap() >= 4.0 * 134_515_008.0,
        "one all-reduce of every gradient per step"
    );

    // SFT
    let (one, two) = (job("sft", &home, 1, "sftA", &[]), job("sft", &home, 2, "sftB", &[]));
    let w = weights_rel_diff(&weights(&one), &weights(&two));
    let m = metrics_close(&one.join("metrics.jsonl"), &two.join("metrics.jsonl"), |_| 1e-6);
    eprintln!("SFT 1 vs 2 ranks: weights {w:.1e}, metrics per step {m:?}");
    assert!(w < 1e-5, "{w}");

    // KTO: each batch's reference point z0 is summed across the ranks' parts of it
    let kto = ["--loss", "kto", "--per-device-train-batch-size", "3", "--gradient-accumulation-steps", "2"];
    let (one, two) = (train(&home, 1, "kto1", &kto), train(&home, 2, "kto2", &kto));
    let w = weights_rel_diff(&weights(&one), &weights(&two));
    let m = metrics_close(
        &one.join("metrics.jsonl"),
        &two.join("metrics.jsonl"),
        |step| if step == 1 { 1e-6 } else { 1e-3 },
    );
    eprintln!("KTO 1 vs 2 ranks: weights {w:.1e}, metrics per step {m:?}");
    assert!(w < 1e-5, "{w}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    rd.flat_map(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p)
        } else {
            vec![p]
        }
    })
    .collect()
}

#[test]
fn logps_sample_and_eval_on_two_ranks_write_the_files_of_one_process() {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (home, model, data) = (dir.path().join("home"), smollm2(), hh_pairs(dir.path(), 10));
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        [
            "Human: Tell me about the sea.",
            "The best film I ever saw",
            "Human: How do I bake bread?",
            "My neighbour's dog",
            "Once upon a time",
        ]
        .iter()
        .map(|p| serde_json::json!({"prompt": p}).to_string() + "\n")
        .collect::<String>(),
    )
    .unwrap();
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    for ranks in [1, 2] {
        let f = |name: &str| dir.path().join(format!("{name}{ranks}"));
        run(
            &home,
            ranks,
            &[
                "logps",
                "--model",
                s(&model),
                "--data",
                s(&data),
                "--out",
                s(&f("logps")),
                "--max-tokens-per-forward",
                "400",
                "--max-length",
                "160",
            ],
        );
        run(
            &home,
            ranks,
            &[
                "sample",
                "--model",
                s(&model),
                "--prompts",
                s(&prompts),
                "--out",
                s(&f("samples")),
                "--n",
                "2",
                "--max-new-tokens",
                "10",
                "--max-batch",
                "4",
            ],
        );
        run(
            &home,
            ranks,
            &[
                "eval",
                "--policy",
                s(&model),
                "--reference",
                s(&model),
                "--data",
                s(&data),
                "--prompts",
                s(&prompts),
                "--n",
                "2",
                "--max-new-tokens",
                "6",
                "--max-length",
                "160",
                "--max-tokens-per-forward",
                "400",
                "--out",
                s(&f("eval")),
            ],
        );
    }
    for name in ["logps", "samples", "eval"] {
        assert_eq!(read(dir.path().join(format!("{name}1"))), read(dir.path().join(format!("{name}2"))), "{name}");
    }
    assert_eq!(
        read(dir.path().join("eval1").with_extension("samples.jsonl")),
        read(dir.path().join("eval2").with_extension("samples.jsonl"))
    );
    assert_eq!(lines(&dir.path().join("logps2")).len(), 10);
}

/// Runs `cmd`, returning its exit status, stderr and wall time.
fn timed(mut cmd: Command) -> (std::process::ExitStatus, String, Duration) {
    let t0 = Instant::now();
    let out = cmd.output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned(), t0.elapsed())
}

#[test]
fn a_failing_differing_or_killed_rank_ends_the_job_naming_it() {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let model = tiny_model(dir.path());
    let good = common::pairs8();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&good).unwrap() + "{\"prompt\": \"x\", \"chosen\": \"y\", \"rejected\": 5}\n",
    )
    .unwrap();

    // Rank 1's copy of the data is malformed (as on a machine with a corrupt local copy: mpirun's
    // `:` starts each rank in its own directory, with the same command line).
    let (d0, d1) = (dir.path().join("node0"), dir.path().join("node1"));
    for (d, f) in [(&d0, &good), (&d1, &bad)] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::copy(f, d.join("data.jsonl")).unwrap();
    }
    let job = |args: &[&str]| {
        let mut c = mpirun();
        c.env("DPO_HOME", &home);
        c.args(["-np", "1", "-wdir", s(&d0), BIN]).args(args).args([":", "-np", "1", "-wdir", s(&d1), BIN]).args(args);
        timed(c)
    };
    let (status, err, took) = job(&["logps", "--model", s(&model), "--data", "data.jsonl", "--out", "logps.jsonl"]);
    assert!(!status.success() && took < Duration::from_secs(30), "{status:?} after {took:?}");
    assert!(err.contains("error on rank 1 of 2: data.jsonl:9: field `rejected`"), "{err}");
    assert!(!d0.join("logps.jsonl").exists() && !d1.join("logps.jsonl").exists());
    eprintln!("malformed input on rank 1: job ended in {took:.1?}");

    // Rank 1 trains on other (well-formed) data: refused before the first step.
    std::fs::write(
        d1.join("data.jsonl"),
        std::fs::read_to_string(&good).unwrap().lines().rev().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let (status, err, took) =
        job(&["train", "--model", s(&model), "--data", "data.jsonl", "--output-dir", "out", "--max-steps", "2"]);
    assert!(!status.success() && took < Duration::from_secs(30), "{status:?} after {took:?}");
    assert!(err.contains("rank 1 has another run settings or data"), "{err}");
    // ... and another command line, before anything is read.
    let mut c = mpirun();
    c.env("DPO_HOME", &home).args([
        "-np",
        "1",
        BIN,
        "logps",
        "--model",
        s(&model),
        "--data",
        s(&good),
        "--out",
        s(&dir.path().join("a.jsonl")),
    ]);
    c.args([
        ":",
        "-np",
        "1",
        BIN,
        "logps",
        "--model",
        s(&model),
        "--data",
        s(&good),
        "--out",
        s(&dir.path().join("b.jsonl")),
    ]);
    let (status, err, _) = timed(c);
    assert!(!status.success() && err.contains("rank 1 has another command line"), "{err}");

    // Rank 1 is killed mid-run: the job ends, naming it; the last checkpoint resumes.
    let out = dir.path().join("killed");
    let args = [
        "train",
        "--model",
        s(&model),
        "--data",
        s(&good),
        "--output-dir",
        s(&out),
        "--max-steps",
        "400",
        "--per-device-train-batch-size",
        "2",
        "--save-steps",
        "1",
        "--save-total-limit",
        "2",
        "--learning-rate",
        "1e-3",
    ];
    let mut c = mpirun();
    c.env("DPO_HOME", &home).args(["-np", "2", BIN]).args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut job = c.spawn().unwrap();
    let started = Instant::now();
    while !out.join("checkpoint-2").exists() {
        assert!(started.elapsed() < Duration::from_secs(120) && job.try_wait().unwrap().is_none(), "no checkpoint-2");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rank1 = rank_pid(1).expect("rank 1's process");
    let t0 = Instant::now();
    Command::new("kill").args(["-9", &rank1.to_string()]).status().unwrap();
    let out_job = job.wait_with_output().unwrap();
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out_job.stderr);
    assert!(!out_job.status.success() && took < Duration::from_secs(30), "{:?} after {took:?}", out_job.status);
    assert!(err.contains("process rank 1") && err.contains("signal 9"), "{err}");
    eprintln!("rank 1 killed: job ended in {took:.1?}");
    let mut again: Vec<&str> = args.to_vec();
    again.extend(["--resume-from-checkpoint", "latest"]);
    run(&home, 2, &again);
    assert_eq!(lines(&out.join("metrics.jsonl")).last().unwrap()["step"], 400);
}

/// The pid of this user's `dpo` process that is rank `rank` of an Open MPI job.
fn rank_pid(rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        exe.is_some_and(|e| e == Path::new(BIN).canonicalize().unwrap_or_default())
            && env.split(|&b| b == 0).any(|v| v == want.as_bytes())
    })
}
