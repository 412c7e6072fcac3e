//! `dpo`: preference optimisation of language models from the command line.
//!
//! A thin layer over the `dpo` library: argument parsing (clap over the library's settings
//! structs, or a TOML file), progress bars (indicatif) and printing. Every subcommand is one
//! function of the library.

mod args;
mod trl;
mod progress;

use anyhow::Result;

fn main() {
    let cli = args::Cli::parse_with_config();
    // The thread count must be fixed before rayon's pool (and candle's gemm) first runs. Ranks of
    // a job on one machine share its CPUs.
    let local_ranks = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let threads = cli.threads.unwrap_or_else(|| (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) / local_ranks).max(1));
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // candle's element-wise ops run on a pool of spinning threads of their own; beside rayon's
    // (our kernels, gemm) they compete for the same cores and spin while waiting (measured here:
    // 15 % of a LoRA step in candle's barrier wait, 25-35 % slower steps). One thread for them.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    // Under mpirun/srun this process is one rank of a job (alone, a job of one).
    #[cfg(feature = "mpi")]
    let _mpi = match dpo::dist::mpi::init() {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(cli.command) {
        let world = dpo::dist::world();
        if world.size() > 1 {
            // The other ranks wait in a collective for this one: end them all now.
            eprintln!("error on rank {} of {}: {e:#}", world.rank(), world.size());
            world.abort(1);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: args::Command) -> Result<()> {
    let ranks = dpo::dist::world().size();
    if ranks > 1 && !matches!(cmd, args::Command::Logps(_) | args::Command::Train(_) | args::Command::Sft(_) | args::Command::Sample(_) | args::Command::Eval(_)) {
        anyhow::bail!("this subcommand runs in one process: only logps, train, sft, sample and eval divide their work among {ranks} ranks; start it without mpirun");
    }
    if ranks > 1 {
        // Every rank divides the work by the same rule: they must run the same command.
        dpo::dist::check_agree("command line", &std::env::args().skip(1).collect::<Vec<_>>().join(" "))?;
    }
    match cmd {
        args::Command::Logps(a) => commands::logps(a),
        args::Command::Train(a) => commands::train(a.into_config()?),
        args::Command::Sft(a) => commands::train(a.hub.resolve(dpo::config::TrainConfig { task: dpo::task::Task::Sft, ..a.run })?),
        args::Command::Bench(a) => commands::bench(a),
        args::Command::Sample(a) => commands::sample(a),
        args::Command::Label(a) => commands::label(a),
        args::Command::Eval(a) => commands::eval(a),
        args::Command::Demo(a) => commands::demo(a),
        args::Command::Iterate(a) => commands::iterate(a),
        args::Command::Report(a) => commands::report(a),
        args::Command::Merge(a) => commands::merge(a),
    }
}

mod commands {
    /// `println!` on rank 0 only (every rank of a job computes the same results).
    macro_rules! say {
        ($($t:tt)*) => {
            if dpo::dist::is_main() {
                println!($($t)*)
            }
        };
    }

    use super::args::{BenchArgs, EvalArgs, LabelArgs, LogpsArgs, MergeArgs, ReportArgs, SampleArgs};
    use super::progress::Bars;
    use anyhow::Result;
    use dpo::fetch::ensure_model;
    use dpo::observer::Observer;

    pub fn logps(a: LogpsArgs) -> Result<()> {
        let mut bars = Bars::new();
        let model_path = ensure_model(&a.model)?;
        bars.message(&format!("loading {}", model_path.display()));
        let loaded = dpo::model::load_with(&model_path, &a.load)?;
        let set = dpo::data::load_pairs(&a.data, &loaded.tokenizer, a.tokenize, &mut bars)?;
        let model = loaded.model()?;
        let examples: Vec<_> = set.examples.iter().collect();
        bars.phase("log-probs", examples.len(), "pairs");
        let t0 = std::time::Instant::now();
        let logps = dpo::logps::example_logps_sharded(&model, &examples, a.max_tokens_per_forward, a.ld_alpha, |d| bars.advance(d, ""))?;
        bars.finish();
        if !dpo::dist::is_main() {
            return Ok(());
        }
        dpo::reference::write_file(&a.out, &set, &logps)?;
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

    pub fn train(cfg: dpo::config::TrainConfig) -> Result<()> {
        let mut bars = Bars::new();
        let s = dpo::train::train(&cfg, &mut bars)?;
        bars.finish();
        if dpo::dist::is_main() {
            println!("{}", super::progress::summary_text(&s));
        }
        Ok(())
    }

    pub fn bench(a: BenchArgs) -> Result<()> {
        let cfg = a.config;
        let mut bars = Bars::new();
        let r = dpo::bench::run(&cfg, &mut bars)?;
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
        if let Some(p) = a.json_out {
            dpo::io::write_atomic(&p, |w| Ok(serde_json::to_writer_pretty(w, &r)?))?;
        }
        Ok(())
    }

    pub fn sample(a: SampleArgs) -> Result<()> {
        let cfg = a.sampling;
        cfg.validate()?;
        let prompts = dpo::sample::read_prompts(&a.prompts)?;
        let mut bars = Bars::new();
        let model_path = ensure_model(&a.model)?;
        bars.message(&format!("loading {}", model_path.display()));
        let loaded = dpo::model::load_with(&model_path, &a.load)?;
        let model = loaded.model()?;
        bars.phase("sampling", prompts.len(), "prompts");
        let t0 = std::time::Instant::now();
        let (records, stats) = dpo::sample::sample_texts(&model, &loaded.tokenizer, &prompts, &cfg, |d, g| {
            bars.advance(d, &format!("{:.0} tok/s", g as f64 / t0.elapsed().as_secs_f64()))
        })?;
        bars.finish();
        if !dpo::dist::is_main() {
            return Ok(());
        }
        dpo::sample::write_samples(&a.out, &records)?;
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
        let judge = a.judge.build(dpo::config::defaults::MAX_TOKENS_PER_FORWARD)?;
        let samples = dpo::label::read_samples(&a.samples)?;
        let (records, report) = dpo::label::label(&samples, judge.as_ref(), a.mode)?;
        dpo::io::write_jsonl_atomic(&a.out, &records)?;
        eprintln!(
            "{} prompts judged by `{}` (mean score {:.4}): wrote {} records to {}; {} tied {} dropped",
            report.prompts,
            judge.name(),
            report.mean_score,
            report.written,
            a.out.display(),
            report.ties_dropped,
            if matches!(a.mode, dpo::label::LabelMode::Ranking) { "rankings (kept)" } else { "pairs" }
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
        let reference_loaded = dpo::model::load_with(&reference_path, &a.load)?;
        let reference = reference_loaded.model()?;
        // A PEFT adapter directory as the policy is the reference with that adapter on top.
        let (policy_path, policy_load) = if a.policy.join("adapter_config.json").exists() {
            let mut load = a.load.clone();
            load.adapters.push(a.policy.clone());
            (reference_path.clone(), load)
        } else {
            (a.policy.clone(), dpo::model::LoadOptions { base_dtype: a.load.base_dtype, adapters: Vec::new() })
        };
        let tok = &dpo::model::load_tokenizer(&policy_path)?;
        let mut out = serde_json::Map::new();
        if let Some(data) = &a.data {
            let policy = dpo::model::load_with(&policy_path, &policy_load)?.model()?;
            let task = dpo::task::Task::dpo(a.beta);
            let set = dpo::data::load_examples(data, tok, a.tokenize, &task, 1, &mut bars)?;
            let m = dpo::eval::preference_eval(&policy, &reference, &set, &task, a.max_tokens_per_forward)?;
            say!("preference data {}: {}", data.display(), dpo::metrics::brief(&m));
            for (k, v) in &m {
                say!("  {k}: {v}");
            }
            out.insert("preference".into(), serde_json::Value::Object(m));
        }
        if let (Some(prompts_path), Some(judge)) = (&a.prompts, &judge) {
            let prompts = dpo::sample::read_prompts(prompts_path)?;
            let cfg = dpo::eval::PromptEvalConfig { prompts: &prompts, sampling: a.sampling, judge: judge.as_ref(), max_tokens_per_forward: a.max_tokens_per_forward };
            let r = dpo::eval::on_prompts(&reference, tok, &[("policy".to_string(), policy_path.clone(), policy_load.clone())], &cfg, &mut bars)?;
            bars.finish();
            let ((rm, rci), c) = (r.reference_reward, &r.policies[0].eval);
            say!(
                "prompts {} ({} samples each, judge `{}`): policy reward {:.4} ± {:.4}, reference {:.4} ± {:.4}; win rate {:.3}; KL(policy||reference) {:.3} ± {:.3} nats",
                prompts_path.display(), a.sampling.n, judge.name(), c.reward_mean, c.reward_ci95, rm, rci, c.win_rate, c.kl, c.kl_ci95
            );
            out.insert("prompts".into(), serde_json::json!({"policy": c, "reference": {"reward_mean": rm, "reward_ci95": rci}}));
            if let (Some(o), true) = (&a.out, dpo::dist::is_main()) {
                dpo::io::write_jsonl_atomic(&o.with_extension("samples.jsonl"), &r.rows)?;
            }
        }
        if let (Some(o), true) = (&a.out, dpo::dist::is_main()) {
            dpo::io::write_atomic(o, |w| Ok(serde_json::to_writer_pretty(w, &out)?))?;
        }
        Ok(())
    }

    pub fn demo(cfg: dpo::demo::DemoConfig) -> Result<()> {
        let mut bars = Bars::new();
        let s = dpo::demo::run(&cfg, &mut bars)?;
        bars.finish();
        let r = &s.reference;
        println!("demo done in {:.0}s; {} training pairs ({} prompts tied)", s.wall_seconds, s.pairs, s.ties_dropped);
        println!("{:<10} {:>18} {:>10} {:>9}", "model", "judge reward", "KL (nats)", "win rate");
        println!("{:<10} {:>10.4} ± {:<6.4} {:>10} {:>9}", "reference", r.reward_mean, r.reward_ci95, "0", "-");
        for p in &s.policies {
            println!("{:<10} {:>10.4} ± {:<6.4} {:>10.3} {:>9.3}", format!("beta={}", p.beta), p.reward_mean, p.reward_ci95, p.kl, p.win_rate);
        }
        println!("report: {}", cfg.output_dir.join("report.html").display());
        Ok(())
    }

    pub fn iterate(cfg: dpo::iterate::IterateConfig) -> Result<()> {
        let mut bars = Bars::new();
        let s = dpo::iterate::run(&cfg, &mut bars)?;
        bars.finish();
        println!("{} rounds, judge `{}`", s.rounds.len(), s.judge);
        println!("{:<9} {:>6} {:>18} {:>16} {:>9}", "model", "pairs", "judge reward", "KL (nats)", "win rate");
        println!("{:<9} {:>6} {:>10.4} ± {:<6.4} {:>16} {:>9}", "initial", "-", s.reference.reward_mean, s.reference.reward_ci95, "0", "-");
        for r in &s.rounds {
            println!("{:<9} {:>6} {:>10.4} ± {:<6.4} {:>8.3} ± {:<5.3} {:>9.3}", format!("round {}", r.round), r.pairs, r.reward_mean, r.reward_ci95, r.kl, r.kl_ci95, r.win_rate);
        }
        println!("report: {}", cfg.output_dir.join("report.html").display());
        Ok(())
    }

    pub fn merge(a: MergeArgs) -> Result<()> {
        let base = ensure_model(&a.model)?;
        let load = dpo::model::LoadOptions { base_dtype: dpo::ops::qmatmul::BaseDType::F32, adapters: a.adapters.clone() };
        eprintln!("loading {} with {} adapter(s)", base.display(), a.adapters.len());
        let loaded = dpo::model::load_with(&base, &load)?;
        let dtype = if a.dtype == "bf16" { dpo::candle_core::DType::BF16 } else { dpo::candle_core::DType::F32 };
        dpo::model::save_hf_dir_as(&loaded.model()?, &loaded.tokenizer, &a.output_dir, dtype)?;
        println!("wrote {} ({})", a.output_dir.display(), a.dtype);
        Ok(())
    }

    pub fn report(a: ReportArgs) -> Result<()> {
        let files = if a.run_dir.join("policies").is_dir() && a.run_dir.join("summary.json").exists() {
            dpo::report::write_demo_report(&a.run_dir)?
        } else {
            dpo::report::write_run_report(&a.run_dir)?
        };
        for f in files {
            println!("{}", f.display());
        }
        Ok(())
    }
}
