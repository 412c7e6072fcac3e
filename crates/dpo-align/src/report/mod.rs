//! Reports: PNG plots of a run's metrics and a self-contained HTML page that ties them together.
//!
//! - [`write_run_report`]: one training run directory (`metrics.jsonl`, `train_args.json`,
//!   `summary.json`) → `loss.png`, `accuracies.png`, `margins.png`, `rewards.png`,
//!   `token_accuracy.png` (those whose series exist) and `report.html`.
//! - [`write_iterate_report`]: iterative DPO's directory → `frontier.png` (every round) and
//!   `report.html`;
//! - [`write_demo_report`]: the pipeline demo directory → `frontier.png` (judge reward against
//!   KL, DPO paper Fig. 2 left), `demo_training.png` and `report.html`.
//!
//! Plots are drawn with plotters into bitmaps. Text uses DejaVu Sans compiled into the binary
//! (the `dejavu` crate, drawn by plotters' ab_glyph backend), so a report renders the same on a
//! machine without system fonts or fontconfig.
//!
//! The parts: `run` and `demo` build the two pages, `read` reads `metrics.jsonl`, `plot` draws
//! the charts and `html` writes the page.

mod demo;
mod html;
mod iterate;
mod plot;
mod read;
mod run;
#[cfg(test)]
mod tests;

pub use demo::write_demo_report;
pub use iterate::write_iterate_report;
pub use run::write_run_report;

use crate::summary::Kind;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Writes the report of whatever made `dir` ([`Kind::of_dir`]): a run of the training loop
/// (`train`, `sft`, `online`), iterative DPO or the demo. Returns the files written.
pub fn write_report(dir: &Path) -> Result<Vec<PathBuf>> {
    match Kind::of_dir(dir)? {
        Kind::Train | Kind::Sft | Kind::Online => write_run_report(dir),
        Kind::Iterate => write_iterate_report(dir),
        Kind::Demo => write_demo_report(dir),
    }
}
