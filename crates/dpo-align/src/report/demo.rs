//! The report of the pipeline demo (`dpo demo`): the reward/KL frontier, the policies' training
//! curves and `report.html`.

use super::html::{esc, figure, flatten, format_number, format_seconds, leaves_table, table, write_page};
use super::plot::{frontier_chart, line_chart, palette, render_png, FrontierPoint, Series, GREY, UNIT_RANGE};
use super::read::{metric_series, read_metrics};
use crate::summary::{policy_dir, DemoSummary, PolicyResult};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// The name of a policy in the plots and the table: `beta=0.1`.
fn label(p: &PolicyResult) -> String {
    format!("beta={}", p.beta)
}

/// The training run directory of a policy, relative to the demo directory.
fn run_dir(p: &PolicyResult) -> PathBuf {
    policy_dir(Path::new(""), p.beta)
}

/// Writes the report of the pipeline demo into `demo_dir` and returns the paths written.
///
/// Reads `demo_dir/summary.json`, the [`DemoSummary`] that `dpo demo` writes:
/// `{"wall_seconds", "reference": {"reward_mean", "reward_ci95"}, "policies": [{"beta",
/// "reward_mean", "reward_ci95", "kl", "win_rate", ...}], ..., "settings": {...}}` (other keys
/// ignored), and each policy's training metrics `demo_dir/policies/beta-<beta>/metrics.jsonl`
/// (see [`policy_dir`]). Writes:
/// - `frontier.png`: judge reward (mean, 95% CI bar) against KL(policy ‖ reference) in nats,
///   the reference at KL 0 and one point per beta (the DPO paper's reward/KL frontier);
/// - `demo_training.png`: training loss and `rewards/accuracies` over steps, one line per beta;
/// - `report.html`: what the pipeline does, the scores as a table (one row per model), the two
///   plots and the `settings` table.
///
/// Errors: a missing or malformed `summary.json` (one lacking a field of [`DemoSummary`]), a
/// missing or malformed policy `metrics.jsonl` (naming the file and line), a file that cannot be
/// written.
pub fn write_demo_report(demo_dir: &Path) -> Result<Vec<PathBuf>> {
    let summary_path = demo_dir.join("summary.json");
    let text = fs::read_to_string(&summary_path).with_context(|| format!("reading {}", summary_path.display()))?;
    let summary: DemoSummary =
        serde_json::from_str(&text).with_context(|| format!("{}: not a demo summary", summary_path.display()))?;
    let mut written = vec![frontier_png(demo_dir, &summary)?];
    let training = training_png(demo_dir, &summary)?;
    written.extend(training.clone());
    let mut body = String::from("<h1>DPO pipeline demo</h1>\n");
    body += PIPELINE;
    body += &format!("<p>Wall time of the whole pipeline: {}.</p>\n", esc(&format_seconds(summary.wall_seconds)));
    body += "<h2>Results</h2>\n";
    body += &results_table(demo_dir, &summary);
    body += &figure("frontier.png", "Judge reward against KL(π ‖ π_ref): the reward/KL frontier (DPO paper, Fig. 2 left). Bars: 95% confidence intervals.");
    if training.is_some() {
        body += "<h2>Training</h2>\n";
        body += &figure("demo_training.png", "Training loss and reward accuracy of each policy, per optimizer step.");
    }
    body += "<h2>Settings</h2>\n";
    body += &leaves_table(flatten(&summary.settings));
    let html = demo_dir.join("report.html");
    write_page(&html, "DPO pipeline demo", &body)?;
    written.push(html);
    Ok(written)
}

/// What the pipeline does, at the top of its page.
const PIPELINE: &str = "<p>The demo runs the whole preference-learning loop of Rafailov et al. (2023) on one model:</p>\n<ol>\n\
    <li><b>Sample</b> completions of the prompts from the reference model &pi;<sub>ref</sub>.</li>\n\
    <li><b>Judge</b>: a judge scores every completion with a scalar reward.</li>\n\
    <li><b>Pairs</b>: completions of the same prompt become preference pairs, the higher-scored one <i>chosen</i>, the other <i>rejected</i>.</li>\n\
    <li><b>DPO</b>: a policy is trained from the reference on these pairs at each of several values of &beta; \
    (a smaller &beta; lets the policy move further from the reference).</li>\n\
    <li><b>Evaluate</b>: each policy samples completions of evaluation prompts; the judge scores them (mean and 95% confidence interval), \
    KL(&pi; &#8214; &pi;<sub>ref</sub>) measures how far the policy moved (nats), and the win rate is how often the judge prefers the policy's completion to the reference's.</li>\n</ol>\n";

/// `frontier.png`: the reference at KL 0 and one point per beta.
fn frontier_png(demo_dir: &Path, summary: &DemoSummary) -> Result<PathBuf> {
    let r = &summary.reference;
    let mut points = vec![FrontierPoint {
        label: "reference".into(),
        kl: 0.0,
        mean: r.reward_mean,
        ci95: r.reward_ci95,
        color: GREY,
    }];
    for (i, p) in summary.policies.iter().enumerate() {
        points.push(FrontierPoint {
            label: label(p),
            kl: p.kl,
            mean: p.reward_mean,
            ci95: p.reward_ci95,
            color: palette(i),
        });
    }
    let frontier = demo_dir.join("frontier.png");
    render_png(&frontier, (960, 620), |area| frontier_chart(area, &points))?;
    Ok(frontier)
}

/// `demo_training.png`: each policy's training loss and reward accuracy (`None` when no
/// run logged them).
fn training_png(demo_dir: &Path, summary: &DemoSummary) -> Result<Option<PathBuf>> {
    let (mut losses, mut accuracies) = (Vec::new(), Vec::new());
    for (i, p) in summary.policies.iter().enumerate() {
        let lines = read_metrics(&demo_dir.join(run_dir(p)).join("metrics.jsonl"))?;
        let (name, color) = (label(p), palette(i));
        losses.push(Series { name: name.clone(), points: metric_series(&lines, "loss"), color, markers: false });
        accuracies.push(Series { name, points: metric_series(&lines, "rewards/accuracies"), color, markers: false });
    }
    losses.retain(|s| !s.points.is_empty());
    accuracies.retain(|s| !s.points.is_empty());
    if losses.is_empty() && accuracies.is_empty() {
        return Ok(None);
    }
    let path = demo_dir.join("demo_training.png");
    render_png(&path, (1500, 560), |area| {
        let panels = area.split_evenly((1, 2));
        line_chart(&panels[0], "Training loss", "step", "loss", None, &losses)?;
        line_chart(&panels[1], "Training reward accuracy", "step", "rewards/accuracies", UNIT_RANGE, &accuracies)
    })?;
    Ok(Some(path))
}

/// The results table: one row per model, with a link to each policy's training report.
fn results_table(demo_dir: &Path, summary: &DemoSummary) -> String {
    let r = &summary.reference;
    let reference = esc(&format!("{} ± {}", format_number(r.reward_mean), format_number(r.reward_ci95)));
    let mut rows = vec![vec!["reference".to_string(), reference, "0".to_string(), "—".to_string(), "—".to_string()]];
    for p in &summary.policies {
        let run = run_dir(p);
        let shown = esc(&run.display().to_string());
        let run = if demo_dir.join(&run).join("report.html").exists() {
            format!("<a href=\"{shown}/report.html\">{shown}</a>")
        } else {
            format!("<code>{shown}</code>")
        };
        rows.push(vec![
            esc(&label(p)),
            esc(&format!("{} ± {}", format_number(p.reward_mean), format_number(p.reward_ci95))),
            esc(&format_number(p.kl)),
            esc(&format!("{:.1}%", 100.0 * p.win_rate)),
            run,
        ]);
    }
    let header =
        ["model", "judge reward (mean ± 95% CI)", "KL(π ‖ π_ref), nats", "win rate vs reference", "training run"];
    table(&header, &rows)
}
