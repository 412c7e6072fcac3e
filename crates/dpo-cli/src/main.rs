//! `dpo`: preference optimisation of language models from the command line.
//!
//! A thin layer over the library crates: argument parsing (clap over the library's settings
//! structs, or a configuration file), progress bars (indicatif) and printing. Every subcommand is
//! one function of the library ([`commands`]).

mod args;
mod commands;
mod config_file;
mod progress;
mod train_args;
mod trl;

use anyhow::Result;

fn main() {
    let cli = config_file::parse();
    // The thread count must be fixed before rayon's pool (and candle's gemm) first runs. Ranks of
    // a job on one machine share its CPUs.
    let local_ranks = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let threads = cli
        .threads
        .unwrap_or_else(|| (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) / local_ranks).max(1));
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // candle's element-wise ops (the residual adds, and the gradient sums of its backward pass)
    // run on a barrier pool of their own, as many threads as rayon's. Its workers spin 25,000
    // rounds after each op by default, stealing the cores from rayon's (our kernels, gemm): a
    // short spin lets them sleep while the kernels run. On one thread instead, every such op is
    // serial: a third of a full fine-tuning step on 2 threads had one thread at work (dpo bench's
    // "threads busy" line), which caps the speed-up at x4-5 on any number of cores.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200");
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    // Under mpirun/srun this process is one rank of a job (alone, a job of one).
    #[cfg(feature = "mpi")]
    let _mpi = match dpo_runtime::dist::mpi::init() {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(cli.command) {
        let world = dpo_runtime::dist::world();
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
    let ranks = dpo_runtime::dist::world().size();
    if ranks > 1
        && !matches!(
            cmd,
            args::Command::Logps(_)
                | args::Command::Train(_)
                | args::Command::Sft(_)
                | args::Command::Sample(_)
                | args::Command::Eval(_)
        )
    {
        anyhow::bail!("this subcommand runs in one process: only logps, train, sft, sample and eval divide their work among {ranks} ranks; start it without mpirun");
    }
    if ranks > 1 {
        // Every rank divides the work by the same rule: they must run the same command.
        dpo_runtime::dist::check_agree("command line", &std::env::args().skip(1).collect::<Vec<_>>().join(" "))?;
    }
    match cmd {
        args::Command::Logps(a) => commands::logps(a),
        args::Command::Train(a) => commands::train(a.into_config()?),
        args::Command::Sft(a) => commands::train(a.into_config()?),
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
