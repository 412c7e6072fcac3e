//! Progress bars (indicatif) for the library's [`Observer`] reports; plain lines when stderr is
//! not a terminal.

use dpo_runtime::observer::Observer;
use dpo_train::trainer::TrainSummary;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Progress bars and lines; silent on every rank but 0 of a job of several.
pub struct Bars {
    quiet: bool,
    bar: Option<ProgressBar>,
    tty: bool,
    name: String,
    total: usize,
    last_line: Instant,
}

impl Bars {
    pub fn new() -> Self {
        Self {
            quiet: !dpo_runtime::dist::is_main(),
            bar: None,
            tty: std::io::stderr().is_terminal(),
            name: String::new(),
            total: 0,
            last_line: Instant::now(),
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

impl Observer for Bars {
    fn phase(&mut self, name: &str, total: usize, unit: &str) {
        if self.quiet {
            return;
        }
        self.finish();
        self.name = name.to_string();
        self.total = total;
        let bar = ProgressBar::with_draw_target(
            Some(total as u64),
            if self.tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
        );
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed_precise}}<{{eta_precise}} {{msg}}"
            ))
            .unwrap()
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(500));
        self.bar = Some(bar);
        if !self.tty {
            eprintln!("[{name}] 0/{total} {unit}");
        }
    }

    fn advance(&mut self, done: usize, info: &str) {
        if let (Some(b), false) = (&self.bar, self.quiet) {
            b.set_position(done as u64);
            b.set_message(info.to_string());
            if !self.tty && (done == self.total || self.last_line.elapsed() > Duration::from_secs(10)) {
                let eta = b.eta().as_secs();
                eprintln!("[{}] {done}/{} eta {}m{:02}s {info}", self.name, self.total, eta / 60, eta % 60);
                self.last_line = Instant::now();
            }
        }
    }

    fn message(&mut self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) if self.tty => b.println(msg),
            _ => eprintln!("{msg}"),
        }
    }
}

/// The end-of-run summary as text.
pub fn summary_text(s: &TrainSummary) -> String {
    let mut out = format!(
        "done: {} steps ({:.2} epochs) in {:.0}s ({:.0}s training); {:.1} tokens/s ({:.1} packed rows/s); peak RSS {}\n",
        s.steps,
        s.epochs,
        s.total_seconds,
        s.train_seconds,
        s.train_tokens_per_second,
        s.packed_tokens_per_second,
        s.peak_rss_bytes.map(|b| format!("{:.2} GB", b as f64 / 1e9)).unwrap_or_else(|| "n/a".into())
    );
    if s.ranks > 1 {
        let (comm, wait): (f64, f64) = (s.step_comm_seconds.iter().sum(), s.step_wait_seconds.iter().sum());
        out += &format!(
            "{} ranks: {:.1} MB into collectives per step, {:.1}s in them and {:.1}s waiting for the slowest rank ({:.0}% and {:.0}% of training) on rank 0; AdamW state {:.2} GB per rank; peak RSS per rank {}\n",
            s.ranks,
            s.comm_bytes_per_step / 1e6,
            comm,
            wait,
            100.0 * comm / s.train_seconds.max(1e-9),
            100.0 * wait / s.train_seconds.max(1e-9),
            s.optimizer_state_bytes as f64 / 1e9,
            s.peak_rss_bytes_per_rank.iter().map(|b| b.map(|b| format!("{:.2} GB", b as f64 / 1e9)).unwrap_or_else(|| "n/a".into())).collect::<Vec<_>>().join(", ")
        );
    }
    out += &format!("final train: {}\n", dpo_train::metrics::brief(&s.final_train));
    if let Some(e) = &s.final_eval {
        out += &format!("final eval: {}\n", dpo_train::metrics::brief(e));
    }
    out += &format!("outputs in {} (metrics.jsonl, final/, summary.json)", s.output_dir.display());
    out
}
