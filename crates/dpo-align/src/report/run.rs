//! The report of one training run: a PNG per metric plot and `report.html`.

use super::html::{esc, figure, flatten, leaves_table, write_page};
use super::plot::{line_chart, render_png, Series, BLUE, GREEN, ORANGE, RED, UNIT_RANGE};
use super::read::{metric_series, read_metrics};
use anyhow::{Context, Result};
use plotters::style::RGBColor;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

/// A plot of a run report: the file, its title and y axis, a fixed y range if any, and the
/// series it shows as `(metrics.jsonl key, legend name, colour)`; `eval_` series get markers.
struct RunPlot {
    file: &'static str,
    title: &'static str,
    y_desc: &'static str,
    y_range: Option<(f64, f64)>,
    series: &'static [(&'static str, &'static str, RGBColor)],
}

const RUN_PLOTS: &[RunPlot] = &[
    RunPlot {
        file: "loss.png",
        title: "Loss",
        y_desc: "loss",
        y_range: None,
        series: &[("loss", "train", BLUE), ("eval_loss", "eval", ORANGE)],
    },
    RunPlot {
        file: "accuracies.png",
        title: "Reward accuracy: fraction of pairs with r(chosen) > r(rejected)",
        y_desc: "rewards/accuracies",
        y_range: UNIT_RANGE,
        series: &[("rewards/accuracies", "train", BLUE), ("eval_rewards/accuracies", "eval", ORANGE)],
    },
    RunPlot {
        file: "margins.png",
        title: "Reward margin: r(chosen) - r(rejected)",
        y_desc: "rewards/margins",
        y_range: None,
        series: &[("rewards/margins", "train", BLUE), ("eval_rewards/margins", "eval", ORANGE)],
    },
    RunPlot {
        file: "rewards.png",
        title: "Implicit rewards r = β·log(π / π_ref)",
        y_desc: "reward",
        y_range: None,
        series: &[
            ("rewards/chosen", "chosen (train)", GREEN),
            ("rewards/rejected", "rejected (train)", RED),
            ("eval_rewards/chosen", "chosen (eval)", BLUE),
            ("eval_rewards/rejected", "rejected (eval)", ORANGE),
        ],
    },
    RunPlot {
        file: "token_accuracy.png",
        title: "Mean token accuracy",
        y_desc: "mean_token_accuracy",
        y_range: UNIT_RANGE,
        series: &[("mean_token_accuracy", "train", BLUE), ("eval_mean_token_accuracy", "eval", ORANGE)],
    },
    RunPlot {
        file: "online_rewards.png",
        title: "Online: the judge's scores of the policy's samples",
        y_desc: "judge score",
        y_range: None,
        series: &[
            ("online/judge_reward", "every sample", BLUE),
            ("online/chosen_reward", "chosen", GREEN),
            ("online/rejected_reward", "rejected", RED),
        ],
    },
    RunPlot {
        file: "online_win_rate.png",
        title: "Online: fraction of prompts whose chosen sample the judge scores higher (ties 1/2)",
        y_desc: "online/chosen_win_rate",
        y_range: UNIT_RANGE,
        series: &[("online/chosen_win_rate", "train", BLUE)],
    },
];

/// Writes the report of a training run into `run_dir` and returns the paths written.
///
/// Reads `run_dir/metrics.jsonl` (required; one JSON object per line, each with a numeric
/// `"step"`), and `train_args.json` and `summary.json` when present. Writes, over steps, with the
/// train series and the `eval_` series (markers) where present:
/// - `loss.png`: `loss`;
/// - `accuracies.png`: `rewards/accuracies`;
/// - `margins.png`: `rewards/margins`;
/// - `rewards.png`: `rewards/chosen` and `rewards/rejected`;
/// - `token_accuracy.png`: `mean_token_accuracy` (SFT runs);
/// - `online_rewards.png`: `online/judge_reward`, `online/chosen_reward`,
///   `online/rejected_reward`, and `online_win_rate.png`: `online/chosen_win_rate` (online runs);
///
/// skipping a plot none of whose series occur (an SFT run has no rewards), then `report.html`: a
/// self-contained page (inline CSS, the PNGs by relative path) with the plots, the settings
/// (`train_args.json` flattened, nested keys joined with `.`) and the summary's scalars.
///
/// Errors: `metrics.jsonl` missing, or a line of it that is not a JSON object with a numeric
/// `"step"` (the message names the file and line: `.../metrics.jsonl:2: ...`); a malformed
/// `train_args.json` or `summary.json`; a file that cannot be written.
pub fn write_run_report(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let lines = read_metrics(&run_dir.join("metrics.jsonl"))?;
    let train_args = read_json_if_present(&run_dir.join("train_args.json"))?;
    let summary = read_json_if_present(&run_dir.join("summary.json"))?;

    let mut written = Vec::new();
    let mut figures = String::new();
    for plot in RUN_PLOTS {
        let series: Vec<Series> = plot
            .series
            .iter()
            .map(|&(key, name, color)| Series {
                name: name.to_string(),
                points: metric_series(&lines, key),
                color,
                markers: key.starts_with("eval_"),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let path = run_dir.join(plot.file);
        render_png(&path, (960, 560), |area| line_chart(area, plot.title, "step", plot.y_desc, plot.y_range, &series))?;
        figures += &figure(plot.file, plot.title);
        written.push(path);
    }

    let name = run_dir.canonicalize().unwrap_or_else(|_| run_dir.to_path_buf());
    let name = name.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut body = format!("<h1>Training report: {}</h1>\n", esc(&name));
    let train_lines = lines.iter().filter(|l| l.contains_key("loss")).count();
    let eval_lines = lines.iter().filter(|l| l.keys().any(|k| k.starts_with("eval_"))).count();
    body += &format!(
        "<p>Run directory <code>{}</code>: {train_lines} training and {eval_lines} evaluation lines in <code>metrics.jsonl</code>.</p>\n",
        esc(&run_dir.display().to_string())
    );
    body += "<h2>Metrics</h2>\n";
    body +=
        if figures.is_empty() { "<p>No known metric series in <code>metrics.jsonl</code>.</p>\n" } else { &figures };
    if let Some(args) = &train_args {
        body += "<h2>Settings <small>(train_args.json)</small></h2>\n";
        body += &leaves_table(flatten(args));
    }
    if let Some(summary) = &summary {
        body += "<h2>Summary <small>(summary.json)</small></h2>\n";
        body += &leaves_table(flatten(summary).into_iter().filter(|(_, v)| !v.is_array()));
    }
    let html = run_dir.join("report.html");
    write_page(&html, &format!("Training report: {name}"), &body)?;
    written.push(html);
    Ok(written)
}

/// The JSON in `path`, or `None` if there is no such file.
fn read_json_if_present(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", path.display()))?))
}
