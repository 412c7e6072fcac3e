//! Judges: a reward model (`--judge reward-model:DIR`) scores as transformers 5.23 does; the
//! LLM judge (`llm:MODEL`) and the implicit reward (`implicit:POLICY[,REFERENCE]`) judge samples
//! through `dpo label`.

use serde_json::Value;
use std::path::PathBuf;

mod common;
use common::{dpo, lines, model_dir, s};

fn reward_fixtures() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward_models");
    ["llama", "qwen2"]
        .iter()
        .map(|c| {
            (
                c.to_string(),
                serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{c}.json"))).unwrap()).unwrap(),
            )
        })
        .collect()
}

/// `LlamaForSequenceClassification` and `Qwen2ForSequenceClassification` (tiny, random, saved by
/// transformers; `scripts/oracle/reward_model_goldens.py`) score the golden completions (and two
/// sequences ending in padding ids, which transformers skips when it picks the token to read)
/// within 1e-4 of transformers, one at a time and packed together.
#[test]
fn reward_models_score_as_transformers() {
    let smol = dpo_model::load_tokenizer(&dpo_runtime::fetch::ensure_default_model().unwrap()).unwrap();
    let home = tempfile::tempdir().unwrap();
    for (case, fx) in reward_fixtures() {
        let dir = model_dir(&fx, &smol, &home.path().join(&case));
        let seqs = fx["sequences"].as_array().unwrap();
        let ids: Vec<Vec<u32>> = seqs
            .iter()
            .map(|q| q["ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
            .collect();
        // packed: every sequence in one forward pass; alone: one per pass
        for max_tokens in [4096, 1] {
            let rm = dpo_align::judge::RewardModel::load(&dir, max_tokens).unwrap();
            let got = rm.score_ids(&ids).unwrap();
            let mut worst = 0f64;
            for (i, (q, g)) in seqs.iter().zip(&got).enumerate() {
                if let Some(text) = q["text"].as_str().filter(|_| q["trailing_pads"].as_u64() == Some(0)) {
                    assert_eq!(rm.encode("", text).unwrap(), ids[i], "{case} sequence {i}: tokenization");
                }
                for key in ["score_single", "score_batched"] {
                    worst = worst.max((g - q[key].as_f64().unwrap()).abs());
                }
            }
            eprintln!(
                "{case}: {} sequences, max tokens {max_tokens}: worst |reward - transformers| {worst:.2e}",
                ids.len()
            );
            assert!(worst < 1e-4, "{case}: {worst}");
        }
        // through the CLI: `dpo label` orders each record's two completions by the reward model
        let samples = home.path().join(format!("{case}.samples.jsonl"));
        let mut text = String::new();
        for r in 0..8 {
            let of = |w: &str| seqs.iter().find(|q| q["record"].as_u64() == Some(r) && q["which"] == w).unwrap();
            let (c, j) = (of("chosen"), of("rejected"));
            text += &serde_json::json!({"prompt": "", "completions": [c["text"], j["text"]]}).to_string();
            text.push('\n');
        }
        std::fs::write(&samples, text).unwrap();
        let out = home.path().join(format!("{case}.pairs.jsonl"));
        let judge = format!("reward-model:{}", s(&dir));
        let o = dpo(home.path(), &["label", "--samples", s(&samples), "--out", s(&out), "--judge", &judge]);
        assert!(o.status.success(), "{case}: dpo label: {}", String::from_utf8_lossy(&o.stderr));
        for (r, l) in lines(&out).iter().enumerate() {
            let of = |w: &str| {
                seqs.iter().find(|q| q["record"].as_u64() == Some(r as u64) && q["which"] == w).unwrap()["score_single"]
                    .as_f64()
                    .unwrap()
            };
            let (hi, lo) = (of("chosen").max(of("rejected")), of("chosen").min(of("rejected")));
            assert!(
                (l["score_chosen"].as_f64().unwrap() - hi).abs() < 1e-4
                    && (l["score_rejected"].as_f64().unwrap() - lo).abs() < 1e-4,
                "{case} record {r}: {l}"
            );
        }
    }
    // A causal LM is not a reward model, and says so.
    let e =
        dpo_align::judge::RewardModel::load(&dpo_runtime::fetch::ensure_default_model().unwrap(), 64).err().unwrap();
    assert!(format!("{e:#}").contains("Hugging Face directory") || format!("{e:#}").contains("config.json"), "{e:#}");
}

/// The LLM judge's order-averaged preferences are complementary (`P(a > b) + P(b > a) = 1`) and
/// informative (not one half); the label probabilities of one order alone are not symmetric (the
/// position bias the averaging cancels). A template without a placeholder is refused by name.
#[test]
fn llm_judge_averages_both_orders_and_refuses_a_bad_template() {
    let model = dpo_runtime::fetch::ensure_default_model().unwrap();
    let judge = dpo_align::judge::LlmJudge::load(&model, &Default::default(), None, 4096).unwrap();
    let c = vec![
        "Keep basil in a glass of water on the counter, like cut flowers.".to_string(),
        "Basil is green.".to_string(),
        "I do not know.".to_string(),
    ];
    let p = judge.preferences("How do I keep basil fresh?", &c).unwrap();
    for a in 0..3 {
        for b in 0..3 {
            assert!((p[a][b] + p[b][a] - 1.0).abs() < 1e-12, "{p:?}");
        }
    }
    assert!((0..3).any(|a| (0..3).any(|b| (p[a][b] - 0.5).abs() > 1e-3)), "{p:?}");
    let f = serde_json::Map::new();
    let scores = dpo_align::judge::Judge::score(
        &judge,
        &dpo_align::judge::JudgeInput {
            prompt: "How do I keep basil fresh?",
            completions: &c,
            fields: &f,
            origin: "x:1",
        },
    )
    .unwrap();
    for (a, s) in scores.iter().enumerate() {
        let want = (0..3).filter(|&b| b != a).map(|b| p[a][b]).sum::<f64>() / 2.0;
        assert!((s - want).abs() < 1e-12, "{scores:?}");
    }
    eprintln!("LLM judge preferences {p:?}, scores {scores:?}");
    let home = tempfile::tempdir().unwrap();
    let t = home.path().join("template.txt");
    std::fs::write(&t, "Which is better? {prompt} A: {response_a}").unwrap();
    let samples = home.path().join("samples.jsonl");
    std::fs::write(&samples, "{\"prompt\": \"Hi\", \"completions\": [\"a\", \"b\"]}\n").unwrap();
    let out = home.path().join("pairs.jsonl");
    let judge = format!("llm:{}", s(&model));
    let o = dpo(
        home.path(),
        &["label", "--samples", s(&samples), "--out", s(&out), "--judge", &judge, "--judge-template", s(&t)],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("template.txt: the judge template has no `{response_b}`") && !out.exists(),
        "{err}"
    );
}

/// The implicit reward of a policy against itself is zero; a policy trained with DPO on pairs8
/// (a `dpo train` output directory: its beta and reference are read from train_args.json)
/// rewards the chosen completions above the rejected ones, as `dpo label` shows.
#[test]
fn implicit_judge_reads_a_trained_policy_and_its_reference() {
    let home = tempfile::tempdir().unwrap();
    let model = common::tiny_model(home.path());
    let samples = home.path().join("samples.jsonl");
    let mut text = String::new();
    for r in lines(&common::pairs8()) {
        text += &serde_json::json!({"prompt": r["prompt"], "completions": [r["rejected"], r["chosen"]]}).to_string();
        text.push('\n');
    }
    std::fs::write(&samples, text).unwrap();
    let same = format!("implicit:{},{}", s(&model), s(&model));
    let out = home.path().join("same.jsonl");
    let o =
        dpo(home.path(), &["label", "--samples", s(&samples), "--out", s(&out), "--judge", &same, "--mode", "ranking"]);
    assert!(o.status.success());
    for l in lines(&out) {
        assert!(l["scores"].as_array().unwrap().iter().all(|x| x.as_f64() == Some(0.0)), "{l}");
    }
    let run = home.path().join("run");
    let o = dpo(
        home.path(),
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&common::pairs8()),
            "--output-dir",
            s(&run),
            "--max-steps",
            "6",
            "--per-device-train-batch-size",
            "8",
            "--learning-rate",
            "3e-3",
            "--warmup-steps",
            "0",
            "--beta",
            "0.5",
        ],
    );
    assert!(o.status.success());
    let out = home.path().join("trained.jsonl");
    let judge = format!("implicit:{}", s(&run));
    let o = dpo(
        home.path(),
        &["label", "--samples", s(&samples), "--out", s(&out), "--judge", &judge, "--mode", "ranking"],
    );
    assert!(o.status.success());
    let got = lines(&out);
    // completions were [rejected, chosen]: ranking [1, 0] puts the chosen first
    let right = got.iter().filter(|l| l["ranking"][0] == 1).count();
    eprintln!("implicit judge of the trained policy ranks the chosen first in {right} of {} records", got.len());
    assert!(right >= 7, "{got:?}");
}

/// `dpo demo --task instructions`: instructions in the chat template, the model judging its own
/// samples pairwise (one pair per prompt from two samples), each policy sample judged against
/// the reference's (the reference's reward is 1/2 by construction).
#[test]
fn demo_instruction_task_is_judged_by_the_model_itself() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("demo");
    let o = dpo(
        home.path(),
        &[
            "demo",
            "--task",
            "instructions",
            "--output-dir",
            s(&out),
            "--train-prompts",
            "4",
            "--eval-prompts",
            "2",
            "--eval-samples",
            "2",
            "--max-new-tokens",
            "6",
            "--betas",
            "0.1",
            "--batch",
            "2",
        ],
    );
    assert!(o.status.success());
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["settings"]["task"], "instructions");
    assert_eq!(summary["settings"]["samples"], 2);
    assert_eq!(summary["reference"]["reward_mean"], 0.5);
    let p = &summary["policies"][0];
    let r = p["reward_mean"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&r) && p["kl"].as_f64().unwrap().is_finite(), "{p}");
    let pairs = lines(&out.join("pairs.jsonl"));
    assert!(!pairs.is_empty() && pairs.len() <= 4);
    for l in &pairs {
        assert!(l["prompt"].as_str().unwrap().contains("<|im_start|>user\n"), "{l}");
        let (c, r) = (l["score_chosen"].as_f64().unwrap(), l["score_rejected"].as_f64().unwrap());
        assert!(c > r && (c + r - 1.0).abs() < 1e-9, "P(a > b) + P(b > a) = 1: {l}");
    }
    assert_eq!(lines(&out.join("eval_samples.jsonl")).len(), 2 * 2 * 2);
    assert!(out.join("report.html").exists());
}
