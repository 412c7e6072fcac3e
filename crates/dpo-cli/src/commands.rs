//! The subcommands: each parses nothing and computes nothing itself, but calls the library and
//! prints what it returns.

/// `println!` on rank 0 only (every rank of a job computes the same results).
macro_rules! say {
    ($($t:tt)*) => {
        if dpo_runtime::dist::is_main() {
            println!($($t)*)
        }
    };
}

use super::args::{BenchArgs, EvalArgs, LabelArgs, LogpsArgs, MergeArgs, ReportArgs, SampleArgs};
use super::progress::Bars;
use anyhow::Result;
use dpo_align::eval::{on_prompts, PromptEvalConfig};
use dpo_align::judge::Judge;
use dpo_model::tokenizer::Tokenizer;
use dpo_model::{Llama, LoadOptions};
use dpo_runtime::fetch::ensure_model;
use dpo_runtime::observer::Observer;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn logps(a: LogpsArgs) -> Result<()> {
    let mut bars = Bars::new();
    let model_path = ensure_model(&a.model)?;
    bars.message(&format!("loading {}", model_path.display()));
    let loaded = dpo_model::load_with(&model_path, &a.load)?;
    let set = dpo_data::load_pairs(&a.data, &loaded.tokenizer, a.tokenize, &mut bars)?;
    let model = loaded.model()?;
    let examples: Vec<_> = set.examples.iter().collect();
    bars.phase("log-probs", examples.len(), "pairs");
    let t0 = std::time::Instant::now();
    let logps =
        dpo_train::logps::example_logps_sharded(&model, &examples, a.max_tokens_per_forward, a.ld_alpha, |d| {
            bars.advance(d, "")
        })?;
    bars.finish();
    if !dpo_runtime::dist::is_main() {
        return Ok(());
    }
    dpo_train::reference::write_file(&a.out, &set, &logps)?;
    let tokens: usize = examples.iter().map(|e| e.sequence_tokens()).sum();
    eprintln!(
        "wrote {} ({} records, {} scored) in {:.1}s, {:.0} tokens/s",
        a.out.display(),
        set.records,
        set.examples.len(),
        t0.elapsed().as_secs_f64(),
        tokens as f64 / t0.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn train(cfg: dpo_align::recipes::TrainConfig) -> Result<()> {
    let mut bars = Bars::new();
    let s = dpo_align::recipes::train(&cfg, &mut bars)?;
    bars.finish();
    if dpo_runtime::dist::is_main() {
        println!("{}", super::progress::summary_text(&s));
    }
    Ok(())
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let cfg = a.config;
    let mut bars = Bars::new();
    let r = dpo_align::recipes::bench::run(&cfg, &mut bars)?;
    bars.finish();
    println!(
        "== dpo bench: {} pairs, batch {}, max_length {}, {} threads, {} timed steps after {} warm-up",
        cfg.pairs, cfg.batch, cfg.max_length, r.threads, cfg.steps, cfg.warmup
    );
    println!(
        "seconds/step: {:.3}   tokens/step: {:.1}   tokens/s: {:.1}   (packed rows/s: {:.1})",
        r.seconds_per_step, r.tokens_per_step, r.tokens_per_second, r.packed_rows_per_second
    );
    println!("per-step seconds: {}", r.step_seconds.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" "));
    println!(
        "time: forward {:.0}%, backward {:.0}%, clip+AdamW {:.0}%",
        100.0 * r.forward_share,
        100.0 * r.backward_share,
        100.0 * r.optimizer_share
    );
    println!("peak RSS MB: {:.0}", r.peak_rss_bytes.unwrap_or(0) as f64 / (1u64 << 20) as f64);
    if let Some(b) = r.busy {
        println!(
            "threads busy: utilisation {:.3} (CPU time / (wall x {})), serial share of wall {:.1}%, Amdahl speed-up over one core: 16 cores x{:.1}, 32 x{:.1}, 64 x{:.1}",
            b.utilisation(),
            b.threads,
            100.0 * b.serial_share(),
            b.amdahl_speedup(16),
            b.amdahl_speedup(32),
            b.amdahl_speedup(64)
        );
    }
    if let Some(p) = a.json_out {
        dpo_runtime::io::write_atomic(&p, |w| Ok(serde_json::to_writer_pretty(w, &r)?))?;
    }
    Ok(())
}

pub fn sample(a: SampleArgs) -> Result<()> {
    let cfg = a.sampling;
    cfg.validate()?;
    let prompts = dpo_data::samples::read_prompts(&a.prompts)?;
    let mut bars = Bars::new();
    let model_path = ensure_model(&a.model)?;
    bars.message(&format!("loading {}", model_path.display()));
    let loaded = dpo_model::load_with(&model_path, &a.load)?;
    let model = loaded.model()?;
    bars.phase("sampling", prompts.len(), "prompts");
    let t0 = std::time::Instant::now();
    let (records, stats) = dpo_data::samples::sample_texts(&model, &loaded.tokenizer, &prompts, &cfg, |d, g| {
        bars.advance(d, &format!("{:.0} tok/s", g as f64 / t0.elapsed().as_secs_f64()))
    })?;
    bars.finish();
    if !dpo_runtime::dist::is_main() {
        return Ok(());
    }
    dpo_data::samples::write_samples(&a.out, &records)?;
    eprintln!(
        "wrote {} ({} prompts x {} completions): {} tokens in {:.1}s, {:.1} tokens/s",
        a.out.display(),
        records.len(),
        cfg.n,
        stats.tokens,
        stats.seconds,
        stats.tokens_per_second()
    );
    Ok(())
}

pub fn label(a: LabelArgs) -> Result<()> {
    let judge = a.judge.build(dpo_train::trainer::defaults::MAX_TOKENS_PER_FORWARD)?;
    let samples = dpo_align::label::read_samples(&a.samples)?;
    let (records, report) = dpo_align::label::label(&samples, judge.as_ref(), a.mode)?;
    dpo_runtime::io::write_jsonl_atomic(&a.out, &records)?;
    eprintln!(
        "{} prompts judged by `{}` (mean score {:.4}): wrote {} records to {}; {} tied {} dropped",
        report.prompts,
        judge.name(),
        report.mean_score,
        report.written,
        a.out.display(),
        report.ties_dropped,
        if matches!(a.mode, dpo_align::label::LabelMode::Ranking) { "rankings (kept)" } else { "pairs" }
    );
    Ok(())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let mut bars = Bars::new();
    let judge = match &a.prompts {
        Some(_) => Some(a.judge.build(a.max_tokens_per_forward)?),
        None => None,
    };
    a.sampling.validate()?;
    let reference_path = ensure_model(&a.reference)?;
    bars.message(&format!("loading {} and {}", a.policy.display(), reference_path.display()));
    let reference = dpo_model::load_with(&reference_path, &a.load)?.model()?;
    // A PEFT adapter directory as the policy is the reference with that adapter on top.
    let policy = dpo_align::recipes::policy_weights(&reference_path, &a.load, std::slice::from_ref(&a.policy));
    let tok = &dpo_model::load_tokenizer(&policy.0)?;
    let mut out = serde_json::Map::new();
    if let Some(data) = &a.data {
        out.insert("preference".into(), eval_preferences(&a, data, &policy, &reference, tok, &mut bars)?);
    }
    if let (Some(prompts), Some(judge)) = (&a.prompts, &judge) {
        out.insert("prompts".into(), eval_prompts(&a, prompts, judge.as_ref(), &policy, &reference, tok, &mut bars)?);
    }
    if let (Some(o), true) = (&a.out, dpo_runtime::dist::is_main()) {
        dpo_runtime::io::write_atomic(o, |w| Ok(serde_json::to_writer_pretty(w, &out)?))?;
    }
    Ok(())
}

/// `dpo eval --data`: the `eval_` metrics of the policy on preference pairs.
fn eval_preferences(
    a: &EvalArgs,
    data: &Path,
    policy: &(PathBuf, LoadOptions),
    reference: &Llama,
    tok: &Tokenizer,
    bars: &mut Bars,
) -> Result<Value> {
    let policy = dpo_model::load_with(&policy.0, &policy.1)?.model()?;
    let task = dpo_train::task::Task::dpo(a.beta);
    let set = dpo_data::load_examples(data, tok, a.tokenize, dpo_data::View::Pairs, bars)?;
    let m = dpo_train::evaluate::preference_eval(&policy, reference, &set, &task, a.max_tokens_per_forward)?;
    say!("preference data {}: {}", data.display(), dpo_train::metrics::brief(&m));
    for (k, v) in &m {
        say!("  {k}: {v}");
    }
    Ok(Value::Object(m))
}

/// `dpo eval --prompts`: the policy's and the reference's samples judged, the win rate and KL.
fn eval_prompts(
    a: &EvalArgs,
    prompts_path: &Path,
    judge: &dyn Judge,
    policy: &(PathBuf, LoadOptions),
    reference: &Llama,
    tok: &Tokenizer,
    bars: &mut Bars,
) -> Result<Value> {
    let prompts = dpo_data::samples::read_prompts(prompts_path)?;
    let cfg = PromptEvalConfig {
        prompts: &prompts,
        sampling: a.sampling,
        judge,
        max_tokens_per_forward: a.max_tokens_per_forward,
    };
    let r = on_prompts(reference, tok, &[("policy".to_string(), policy.0.clone(), policy.1.clone())], &cfg, bars)?;
    bars.finish();
    let ((rm, rci), c) = (r.reference_reward, &r.policies[0].eval);
    say!(
        "prompts {} ({} samples each, judge `{}`): policy reward {:.4} ± {:.4}, reference {:.4} ± {:.4}; win rate {:.3}; KL(policy||reference) {:.3} ± {:.3} nats",
        prompts_path.display(), a.sampling.n, judge.name(), c.reward_mean, c.reward_ci95, rm, rci, c.win_rate, c.kl, c.kl_ci95
    );
    if let (Some(o), true) = (&a.out, dpo_runtime::dist::is_main()) {
        dpo_runtime::io::write_jsonl_atomic(&o.with_extension("samples.jsonl"), &r.rows)?;
    }
    Ok(serde_json::json!({"policy": c, "reference": {"reward_mean": rm, "reward_ci95": rci}}))
}

pub fn demo(cfg: dpo_align::recipes::demo::DemoConfig) -> Result<()> {
    let mut bars = Bars::new();
    let s = dpo_align::recipes::demo::run(&cfg, &mut bars)?;
    bars.finish();
    let r = &s.reference;
    println!("demo done in {:.0}s; {} training pairs ({} prompts tied)", s.wall_seconds, s.pairs, s.ties_dropped);
    println!("{:<10} {:>18} {:>10} {:>9}", "model", "judge reward", "KL (nats)", "win rate");
    println!("{:<10} {:>10.4} ± {:<6.4} {:>10} {:>9}", "reference", r.reward_mean, r.reward_ci95, "0", "-");
    for p in &s.policies {
        println!(
            "{:<10} {:>10.4} ± {:<6.4} {:>10.3} {:>9.3}",
            format!("beta={}", p.beta),
            p.reward_mean,
            p.reward_ci95,
            p.kl,
            p.win_rate
        );
    }
    println!("report: {}", cfg.output_dir.join("report.html").display());
    Ok(())
}

pub fn iterate(cfg: dpo_align::recipes::iterate::IterateConfig) -> Result<()> {
    let mut bars = Bars::new();
    let s = dpo_align::recipes::iterate::run(&cfg, &mut bars)?;
    bars.finish();
    println!("{} rounds, judge `{}`", s.rounds.len(), s.judge);
    println!("{:<9} {:>6} {:>18} {:>16} {:>9}", "model", "pairs", "judge reward", "KL (nats)", "win rate");
    println!(
        "{:<9} {:>6} {:>10.4} ± {:<6.4} {:>16} {:>9}",
        "initial", "-", s.reference.reward_mean, s.reference.reward_ci95, "0", "-"
    );
    for r in &s.rounds {
        println!(
            "{:<9} {:>6} {:>10.4} ± {:<6.4} {:>8.3} ± {:<5.3} {:>9.3}",
            format!("round {}", r.round),
            r.pairs,
            r.reward_mean,
            r.reward_ci95,
            r.kl,
            r.kl_ci95,
            r.win_rate
        );
    }
    println!("report: {}", cfg.output_dir.join("report.html").display());
    Ok(())
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let base = ensure_model(&a.model)?;
    let load =
        dpo_model::LoadOptions { base_dtype: dpo_kernels::qmatmul::BaseDType::F32, adapters: a.adapters.clone() };
    eprintln!("loading {} with {} adapter(s)", base.display(), a.adapters.len());
    let loaded = dpo_model::load_with(&base, &load)?;
    let dtype = if a.dtype == "bf16" { candle_core::DType::BF16 } else { candle_core::DType::F32 };
    dpo_model::save_hf_dir_as(&loaded.model()?, &loaded.tokenizer, &a.output_dir, dtype)?;
    println!("wrote {} ({})", a.output_dir.display(), a.dtype);
    Ok(())
}

pub fn report(a: ReportArgs) -> Result<()> {
    for f in dpo_align::report::write_report(&a.run_dir)? {
        println!("{}", f.display());
    }
    Ok(())
}
