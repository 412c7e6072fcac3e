//! Reports: PNG plots of a run's metrics and a self-contained HTML page that ties them together.
//!
//! - [`write_run_report`]: one training run directory (`metrics.jsonl`, `train_args.json`,
//!   `summary.json`) → `loss.png`, `accuracies.png`, `margins.png`, `rewards.png`,
//!   `token_accuracy.png` (those whose series exist) and `report.html`.
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
