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
        args::Command::Train(a) => commands::train(a),
    }
}

mod commands {
    use super::args::{LogpsArgs, TrainArgs};
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

    pub fn train(a: TrainArgs) -> Result<()> {
        let cfg = a.into_config()?;
        let mut bars = Bars::new();
        let s = dpo::train::train(&cfg, &mut bars)?;
        bars.finish();
        println!("{}", super::progress::summary_text(&s));
        Ok(())
    }
}
