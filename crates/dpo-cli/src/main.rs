//! `dpo`: preference optimisation of language models from the command line.
//!
//! A thin layer over the `dpo` library: argument parsing (clap, or a TOML file), progress bars
//! (indicatif) and printing. Every subcommand is one function of the library.

mod args;
mod progress;

use anyhow::Result;

fn main() {
    let cli = args::Cli::parse_with_config();
    // The thread count must be fixed before rayon's pool (and candle's gemm) first runs.
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    if let Err(e) = run(cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: args::Command) -> Result<()> {
    match cmd {
        args::Command::Logps(a) => commands::logps(a),
        args::Command::Train(a) => commands::train(a.into_config()?),
        args::Command::Sft(a) => commands::train(a.run.into_config(dpo::task::Task::Sft, 2e-5)?),
        args::Command::Bench(a) => commands::bench(a),
    }
}

mod commands {
    use super::args::{BenchArgs, LogpsArgs};
    use super::progress::Bars;
    use anyhow::Result;
    use dpo::train::Observer;

    pub fn logps(a: LogpsArgs) -> Result<()> {
        let mut bars = Bars::new();
        let model_path = super::args::model_or_default(a.model)?;
        bars.message(&format!("loading {}", model_path.display()));
        let loaded = dpo::model::load(&model_path)?;
        let set = dpo::train::load_pairs(&a.data, &loaded.tokenizer, a.tokenize.settings(), &mut bars)?;
        let model = loaded.model()?;
        let examples: Vec<_> = set.examples.iter().collect();
        bars.phase("log-probs", examples.len(), "pairs");
        let t0 = std::time::Instant::now();
        let out = dpo::logps::dataset_logps(&model, &examples, a.max_tokens_per_forward, |d| bars.advance(d, ""))?;
        let logps: Vec<Vec<f64>> = out.into_iter().map(|e| e.logps).collect();
        dpo::reference::write_file(&a.out, &set, &logps)?;
        bars.finish();
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

    pub fn train(cfg: dpo::train::TrainConfig) -> Result<()> {
        let mut bars = Bars::new();
        let s = dpo::train::train(&cfg, &mut bars)?;
        bars.finish();
        println!("{}", super::progress::summary_text(&s));
        Ok(())
    }

    pub fn bench(a: BenchArgs) -> Result<()> {
        let cfg = dpo::bench::BenchConfig {
            model: super::args::model_or_default(a.model)?,
            data: a.data,
            pairs: a.pairs,
            batch: a.batch,
            max_length: a.max_length,
            steps: a.steps,
            warmup: a.warmup,
            max_tokens_per_forward: a.max_tokens_per_forward,
        };
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
}
