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

use crate::io::write_atomic;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::element::ComposedElement;
use plotters::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fs;
use std::path::{Path, PathBuf};

/// The font family every text style below asks for (registered by [`register_fonts`]).
const FONT: &str = "sans-serif";

// Tableau 10 colours: distinct, and readable on white.
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const BROWN: RGBColor = RGBColor(140, 86, 75);
const PINK: RGBColor = RGBColor(227, 119, 194);
const OLIVE: RGBColor = RGBColor(188, 189, 34);
const CYAN: RGBColor = RGBColor(23, 190, 207);
const PALETTE: [RGBColor; 9] = [BLUE, ORANGE, GREEN, RED, PURPLE, BROWN, PINK, OLIVE, CYAN];
const GREY: RGBColor = RGBColor(127, 127, 127);

/// A plot of a run report: the file, its title and y axis, a fixed y range if any, and the
/// series it shows as `(metrics.jsonl key, legend name, colour)`; `eval_` series get markers.
struct RunPlot {
    file: &'static str,
    title: &'static str,
    y_desc: &'static str,
    y_range: Option<(f64, f64)>,
    series: &'static [(&'static str, &'static str, RGBColor)],
}

/// Accuracies are fractions: keep the whole [0, 1] in view, with a little room for the lines.
const UNIT_RANGE: Option<(f64, f64)> = Some((-0.03, 1.03));

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
    body += if figures.is_empty() { "<p>No known metric series in <code>metrics.jsonl</code>.</p>\n" } else { &figures };
    if let Some(args) = &train_args {
        body += "<h2>Settings <small>(train_args.json)</small></h2>\n";
        body += &kv_table(flatten(args).into_iter().map(|(k, v)| (k.clone(), format_value(&k, &v))));
    }
    if let Some(summary) = &summary {
        body += "<h2>Summary <small>(summary.json)</small></h2>\n";
        let scalars = flatten(summary).into_iter().filter(|(_, v)| !v.is_array());
        body += &kv_table(scalars.map(|(k, v)| (k.clone(), format_value(&k, &v))));
    }
    let html = run_dir.join("report.html");
    write_text(&html, &page(&format!("Training report: {name}"), &body))?;
    written.push(html);
    Ok(written)
}

/// `summary.json` of the pipeline demo (keys other than these are ignored).
#[derive(Debug, Deserialize)]
struct DemoSummary {
    wall_seconds: Option<f64>,
    reference: ReferenceScore,
    policies: Vec<PolicyScore>,
    settings: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ReferenceScore {
    reward_mean: f64,
    reward_ci95: f64,
}

#[derive(Debug, Deserialize)]
struct PolicyScore {
    beta: f64,
    reward_mean: f64,
    reward_ci95: f64,
    kl: f64,
    win_rate: f64,
}

impl PolicyScore {
    /// The training run directory of this policy, relative to the demo directory.
    fn run_dir(&self) -> String {
        format!("policies/beta-{}", self.beta)
    }
}

/// Writes the report of the pipeline demo into `demo_dir` and returns the paths written.
///
/// Reads `demo_dir/summary.json`: `{"wall_seconds", "reference": {"reward_mean", "reward_ci95"},
/// "policies": [{"beta", "reward_mean", "reward_ci95", "kl", "win_rate"}], "settings": {...}}`
/// (`settings` optional, other keys ignored), and each policy's training metrics
/// `demo_dir/policies/beta-<beta>/metrics.jsonl` (`<beta>` as Rust's `{}` prints the f64: `0.1`).
/// Writes:
/// - `frontier.png`: judge reward (mean, 95% CI bar) against KL(policy ‖ reference) in nats,
///   the reference at KL 0 and one point per beta (the DPO paper's reward/KL frontier);
/// - `demo_training.png`: training loss and `rewards/accuracies` over steps, one line per beta;
/// - `report.html`: what the pipeline does, the scores as a table (one row per model), the two
///   plots and the `settings` table.
///
/// Errors: a missing or malformed `summary.json`, a missing or malformed policy `metrics.jsonl`
/// (naming the file and line), a file that cannot be written.
pub fn write_demo_report(demo_dir: &Path) -> Result<Vec<PathBuf>> {
    let summary_path = demo_dir.join("summary.json");
    let text = fs::read_to_string(&summary_path).with_context(|| format!("reading {}", summary_path.display()))?;
    let summary: DemoSummary = serde_json::from_str(&text).with_context(|| format!("{}: not a demo summary", summary_path.display()))?;
    let mut written = Vec::new();

    let mut points = vec![FrontierPoint {
        label: "reference".into(),
        kl: 0.0,
        mean: summary.reference.reward_mean,
        ci95: summary.reference.reward_ci95,
        color: GREY,
    }];
    for (i, p) in summary.policies.iter().enumerate() {
        points.push(FrontierPoint {
            label: format!("beta={}", p.beta),
            kl: p.kl,
            mean: p.reward_mean,
            ci95: p.reward_ci95,
            color: PALETTE[i % PALETTE.len()],
        });
    }
    let frontier = demo_dir.join("frontier.png");
    render_png(&frontier, (960, 620), |area| frontier_chart(area, &points))?;
    written.push(frontier);

    let (mut losses, mut accuracies) = (Vec::new(), Vec::new());
    for (i, p) in summary.policies.iter().enumerate() {
        let lines = read_metrics(&demo_dir.join(p.run_dir()).join("metrics.jsonl"))?;
        let color = PALETTE[i % PALETTE.len()];
        let name = format!("beta={}", p.beta);
        losses.push(Series { name: name.clone(), points: metric_series(&lines, "loss"), color, markers: false });
        accuracies.push(Series { name, points: metric_series(&lines, "rewards/accuracies"), color, markers: false });
    }
    losses.retain(|s| !s.points.is_empty());
    accuracies.retain(|s| !s.points.is_empty());
    let has_training = !losses.is_empty() || !accuracies.is_empty();
    if has_training {
        let path = demo_dir.join("demo_training.png");
        render_png(&path, (1500, 560), |area| {
            let panels = area.split_evenly((1, 2));
            line_chart(&panels[0], "Training loss", "step", "loss", None, &losses)?;
            line_chart(&panels[1], "Training reward accuracy", "step", "rewards/accuracies", UNIT_RANGE, &accuracies)
        })?;
        written.push(path);
    }

    let mut body = String::from("<h1>DPO pipeline demo</h1>\n");
    body += "<p>The demo runs the whole preference-learning loop of Rafailov et al. (2023) on one model:</p>\n<ol>\n\
        <li><b>Sample</b> completions of the prompts from the reference model &pi;<sub>ref</sub>.</li>\n\
        <li><b>Judge</b>: a judge scores every completion with a scalar reward.</li>\n\
        <li><b>Pairs</b>: completions of the same prompt become preference pairs, the higher-scored one <i>chosen</i>, the other <i>rejected</i>.</li>\n\
        <li><b>DPO</b>: a policy is trained from the reference on these pairs at each of several values of &beta; \
        (a smaller &beta; lets the policy move further from the reference).</li>\n\
        <li><b>Evaluate</b>: each policy samples completions of evaluation prompts; the judge scores them (mean and 95% confidence interval), \
        KL(&pi; &#8214; &pi;<sub>ref</sub>) measures how far the policy moved (nats), and the win rate is how often the judge prefers the policy's completion to the reference's.</li>\n</ol>\n";
    if let Some(s) = summary.wall_seconds {
        body += &format!("<p>Wall time of the whole pipeline: {}.</p>\n", esc(&format_seconds(s)));
    }
    body += "<h2>Results</h2>\n";
    let mut rows = vec![vec![
        "reference".to_string(),
        esc(&format!("{} ± {}", format_number(summary.reference.reward_mean), format_number(summary.reference.reward_ci95))),
        "0".to_string(),
        "—".to_string(),
        "—".to_string(),
    ]];
    for p in &summary.policies {
        let report = demo_dir.join(p.run_dir()).join("report.html");
        let run = if report.exists() {
            format!("<a href=\"{0}/report.html\">{0}</a>", esc(&p.run_dir()))
        } else {
            format!("<code>{}</code>", esc(&p.run_dir()))
        };
        rows.push(vec![
            esc(&format!("beta={}", p.beta)),
            esc(&format!("{} ± {}", format_number(p.reward_mean), format_number(p.reward_ci95))),
            esc(&format_number(p.kl)),
            esc(&format!("{:.1}%", 100.0 * p.win_rate)),
            run,
        ]);
    }
    body += &table(&["model", "judge reward (mean ± 95% CI)", "KL(π ‖ π_ref), nats", "win rate vs reference", "training run"], &rows);
    body += &figure("frontier.png", "Judge reward against KL(π ‖ π_ref): the reward/KL frontier (DPO paper, Fig. 2 left). Bars: 95% confidence intervals.");
    if has_training {
        body += "<h2>Training</h2>\n";
        body += &figure("demo_training.png", "Training loss and reward accuracy of each policy, per optimizer step.");
    }
    if let Some(settings) = &summary.settings {
        body += "<h2>Settings</h2>\n";
        body += &kv_table(flatten(settings).into_iter().map(|(k, v)| (k.clone(), format_value(&k, &v))));
    }
    let html = demo_dir.join("report.html");
    write_text(&html, &page("DPO pipeline demo", &body))?;
    written.push(html);
    Ok(written)
}

// ---------------------------------------------------------------------------------------------
// Reading

/// The lines of a `metrics.jsonl` file, each a JSON object with a numeric `"step"`.
fn read_metrics(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let value: Value = serde_json::from_str(line).map_err(|e| anyhow!("{}: not a JSON object: {e}", at()))?;
        let Value::Object(obj) = value else { bail!("{}: not a JSON object", at()) };
        if !obj.get("step").is_some_and(Value::is_number) {
            bail!("{}: missing numeric \"step\"", at());
        }
        lines.push(obj);
    }
    Ok(lines)
}

/// `(step, value)` of every line holding a finite number under `key`.
fn metric_series(lines: &[Map<String, Value>], key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| Some((l.get("step")?.as_f64()?, l.get(key)?.as_f64()?)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}

/// The JSON in `path`, or `None` if there is no such file.
fn read_json_if_present(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", path.display()))?))
}

/// The leaves of a JSON value, nested object keys joined with `.` (`tokenize.max_length`).
fn flatten(v: &Value) -> Vec<(String, Value)> {
    fn go(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    go(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            _ => out.push((prefix.to_string(), v.clone())),
        }
    }
    let mut out = Vec::new();
    go("", v, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Formatting

/// A value for a table, by the convention of its key's last part: `*bytes` in KiB/MiB/GiB,
/// `*_seconds` as a duration, `*per_second` as a rate, other numbers to 6 significant digits.
fn format_value(key: &str, v: &Value) -> String {
    let name = key.rsplit('.').next().unwrap_or(key);
    match v {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if name.ends_with("bytes") {
                format_bytes(x)
            } else if name == "seconds" || name.ends_with("_seconds") {
                format_seconds(x)
            } else if name.ends_with("per_second") {
                format!("{} /s", format_number(x))
            } else if n.is_i64() || n.is_u64() {
                n.to_string()
            } else {
                format_number(x)
            }
        }
        other => other.to_string(),
    }
}

/// A number to 6 significant digits, without trailing zeros; very small or large ones in `e` notation.
fn format_number(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-4..1e9).contains(&a) {
        let s = format!("{x:.4e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{exp}", trim_zeros(mantissa));
    }
    let decimals = (5 - a.log10().floor() as i32).clamp(0, 12) as usize;
    trim_zeros(&format!("{x:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

fn format_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} bytes")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

fn format_seconds(s: f64) -> String {
    if !s.is_finite() || s < 60.0 {
        return format!("{} s", format_number((s * 1000.0).round() / 1000.0));
    }
    let whole = s.round() as u64;
    let (h, m, sec) = (whole / 3600, whole / 60 % 60, whole % 60);
    let hms = if h > 0 { format!("{h} h {m:02} min {sec:02} s") } else { format!("{m} min {sec:02} s") };
    format!("{hms} ({s:.1} s)")
}

// ---------------------------------------------------------------------------------------------
// HTML

/// `s` with HTML's special characters escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const CSS: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.3em}
h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h2 small{font-weight:normal;color:#777;font-size:.7em}
figure{margin:1.2em 0}
figure img{max-width:100%;height:auto;border:1px solid #e4e4e4}
figcaption{color:#555;font-size:.92em}
table{border-collapse:collapse;font-size:.92em;margin:.8em 0}
th,td{border:1px solid #ddd;padding:.3em .8em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
";

/// A whole HTML page: `body` (HTML) under the title `title` (text), styles inline.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        esc(title)
    )
}

/// An image (by relative path) with a caption (text).
fn figure(src: &str, caption: &str) -> String {
    format!("<figure><img src=\"{}\" alt=\"{1}\"><figcaption>{1}</figcaption></figure>\n", esc(src), esc(caption))
}

/// A table with a header row (text) and rows of cells given as HTML.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table>\n<tr>");
    for h in header {
        s += &format!("<th>{}</th>", esc(h));
    }
    s += "</tr>\n";
    for row in rows {
        s += "<tr>";
        for cell in row {
            s += &format!("<td>{cell}</td>");
        }
        s += "</tr>\n";
    }
    s + "</table>\n"
}

/// A two-column table of names (as `<code>`) and values (text).
fn kv_table(rows: impl IntoIterator<Item = (String, String)>) -> String {
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(k, v)| vec![format!("<code>{}</code>", esc(&k)), esc(&v)]).collect();
    table(&["name", "value"], &rows)
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, |w| Ok(w.write_all(text.as_bytes())?))
}

// ---------------------------------------------------------------------------------------------
// Plots

/// Makes DejaVu Sans (embedded) the `sans-serif` family of plotters, once per process.
fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fonts = [(FontStyle::Normal, dejavu::sans::regular()), (FontStyle::Bold, dejavu::sans::bold())];
        for (style, bytes) in fonts {
            assert!(plotters::style::register_font(FONT, style, bytes).is_ok(), "the embedded DejaVu font does not parse");
        }
    });
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing: {e}")
}

/// Renders `path` (a PNG of `size` pixels, white background) with `draw`. The image is written to
/// a temporary sibling and renamed into place, so a reader never sees half a PNG.
fn render_png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    register_fonts();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The extension stays `.png`: the encoder picks the format from it.
    let tmp = path.with_file_name(format!(".tmp-{}-{name}", std::process::id()));
    let result = (|| {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
        drop(root);
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// A named line of a chart; `markers` draws a dot at every point (evaluation series, which have few).
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    markers: bool,
}

/// The range of `values` widened by `pad` of its span on each side (a unit span around a single value).
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= 1e-12 * lo.abs().max(1.0) {
        let half = (lo.abs() * 0.1).max(0.5);
        return (lo - half, hi + half);
    }
    (lo - pad * span, hi + pad * span)
}

/// The corner of the plot where the legend hides the fewest points.
fn legend_corner(points: impl Iterator<Item = (f64, f64)>, x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    let mut counts = [0usize; 4]; // upper right, upper left, lower right, lower left
    for (px, py) in points {
        let fx = (px - x.0) / (x.1 - x.0);
        let fy = (py - y.0) / (y.1 - y.0);
        let right = fx > 0.55;
        let left = fx < 0.45;
        let upper = fy > 0.6;
        let lower = fy < 0.4;
        for (i, hit) in [upper && right, upper && left, lower && right, lower && left].into_iter().enumerate() {
            counts[i] += hit as usize;
        }
    }
    let best = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    vec![SeriesLabelPosition::UpperRight, SeriesLabelPosition::UpperLeft, SeriesLabelPosition::LowerRight, SeriesLabelPosition::LowerLeft]
        .swap_remove(best)
}

/// The legend sample of a series at `at`: a short line, with a dot when the series has markers
/// (otherwise a dot of radius 0, hidden under the line, which keeps one element type for both).
fn legend_sample<DB: DrawingBackend>(color: RGBColor, markers: bool, at: (i32, i32)) -> ComposedElement<(i32, i32), DB, PathElement<(i32, i32)>, Circle<(i32, i32), i32>> {
    EmptyElement::at(at)
        + PathElement::new(vec![(0, 0), (22, 0)], color.stroke_width(3))
        + Circle::new((11, 0), if markers { 4 } else { 0 }, color.filled())
}

/// Draws a line chart of `series` on `area`: a title, labelled axes, light grid, one line per
/// series (dots where it has markers or a single point) and a legend in the emptiest corner.
/// `y_range` fixes the y axis; otherwise it fits the data.
fn line_chart(area: &Area, title: &str, x_desc: &str, y_desc: &str, y_range: Option<(f64, f64)>, series: &[Series]) -> Result<()> {
    let all = || series.iter().flat_map(|s| s.points.iter().copied());
    let x = padded_range(all().map(|p| p.0), 0.02);
    let y = y_range.unwrap_or_else(|| padded_range(all().map(|p| p.1), 0.08));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 24))
        .margin(18)
        .x_label_area_size(52)
        .y_label_area_size(80)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .max_light_lines(4)
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(215, 215, 215))
        .x_label_formatter(&|v| format_tick(*v))
        .y_label_formatter(&|v| format_tick(*v))
        .draw()
        .map_err(plot_err)?;
    for s in series {
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), s.color.stroke_width(2)))
            .map_err(plot_err)?
            .label(s.name.as_str())
            .legend(move |at| legend_sample(s.color, s.markers, at));
        if s.markers || s.points.len() == 1 {
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, s.color.filled()))).map_err(plot_err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(legend_corner(all(), x, y))
        .margin(12)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(190, 190, 190))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// A tick label: short, without float noise (`0.30000000000000004` → `0.3`).
fn format_tick(v: f64) -> String {
    let s = format_number((v * 1e6).round() / 1e6);
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// One model on the reward/KL plane.
struct FrontierPoint {
    label: String,
    kl: f64,
    mean: f64,
    ci95: f64,
    color: RGBColor,
}

/// Judge reward (mean with a 95% CI bar) against KL(policy ‖ reference), one labelled point per
/// model, joined in order of KL by a thin grey line.
fn frontier_chart(area: &Area, points: &[FrontierPoint]) -> Result<()> {
    let max_kl = points.iter().map(|p| p.kl).fold(0.0, f64::max);
    let span = if max_kl > 0.0 { max_kl } else { 1.0 };
    let x = (-0.06 * span, max_kl.max(0.0) + 0.18 * span);
    let ends = points.iter().flat_map(|p| [p.mean - p.ci95, p.mean + p.ci95]);
    let y = padded_range(ends, 0.12);
    let mut chart = ChartBuilder::on(area)
        .caption("Judge reward against KL from the reference", (FONT, 24))
        .margin(18)
        .x_label_area_size(52)
        .y_label_area_size(80)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("KL(policy ‖ reference), nats")
        .y_desc("judge reward (mean ± 95% CI)")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .max_light_lines(4)
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(215, 215, 215))
        .x_label_formatter(&|v| format_tick(*v))
        .y_label_formatter(&|v| format_tick(*v))
        .draw()
        .map_err(plot_err)?;
    let mut by_kl: Vec<(f64, f64)> = points.iter().map(|p| (p.kl, p.mean)).collect();
    by_kl.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart.draw_series(LineSeries::new(by_kl, RGBColor(200, 200, 200).stroke_width(1))).map_err(plot_err)?;
    for p in points {
        let style = p.color.stroke_width(2);
        chart
            .draw_series([ErrorBar::new_vertical(p.kl, p.mean - p.ci95, p.mean, p.mean + p.ci95, style, 12)])
            .map_err(plot_err)?;
        chart
            .draw_series([EmptyElement::at((p.kl, p.mean))
                + Circle::new((0, 0), 6, p.color.filled())
                + Text::new(p.label.clone(), (10, -20), (FONT, 16).into_font().color(&p.color))])
            .map_err(plot_err)?
            .label(p.label.as_str())
            .legend(move |at| legend_sample(p.color, true, at));
    }
    let centres = points.iter().map(|p| (p.kl, p.mean));
    chart
        .configure_series_labels()
        .position(legend_corner(centres, x, y))
        .margin(12)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(190, 190, 190))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

    /// A DPO run's `metrics.jsonl`: `steps` training lines, an evaluation every 3 steps.
    fn dpo_metrics(steps: usize, beta: f64) -> String {
        let mut out = String::new();
        for s in 1..=steps {
            let t = s as f64 / steps as f64;
            let (rc, rr) = (beta * 2.0 * t, -beta * 3.0 * t);
            let line = json!({
                "step": s, "epoch": t, "loss": 0.693 - 0.3 * t * (1.0 + beta),
                "rewards/chosen": rc, "rewards/rejected": rr, "rewards/margins": rc - rr,
                "rewards/accuracies": if s == 1 { 0.0 } else { 0.5 + 0.45 * t * (0.5 + beta) },
                "logps/chosen": -120.0 + t, "logps/rejected": -130.0 - t,
                "logits/chosen": -1.5, "logits/rejected": -1.4,
                "grad_norm": 10.0 - t, "learning_rate": 1e-6, "num_tokens": 1000 * s,
            });
            out += &format!("{line}\n");
            if s % 3 == 0 {
                let eval = json!({
                    "step": s, "epoch": t, "eval_loss": 0.7 - 0.2 * t,
                    "eval_rewards/chosen": rc * 0.8, "eval_rewards/rejected": rr * 0.8,
                    "eval_rewards/margins": (rc - rr) * 0.8, "eval_rewards/accuracies": 0.5 + 0.3 * t,
                });
                out += &format!("{eval}\n");
            }
        }
        out
    }

    fn write_dpo_run(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("metrics.jsonl"), dpo_metrics(12, 0.1)).unwrap();
        let args = json!({
            "model": "models/SmolLM2-135M-Instruct.gguf", "data": "train.jsonl", "eval_data": null,
            "loss": {"loss": "sigmoid", "beta": 0.1, "label_smoothing": 0.0},
            "learning_rate": 1e-6, "tokenize": {"max_length": 1024, "max_prompt_length": null},
            "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, "seed": 42,
        });
        fs::write(dir.join("train_args.json"), serde_json::to_string_pretty(&args).unwrap()).unwrap();
        let summary = json!({
            "steps": 12, "epochs": 1.0, "train_seconds": 12.3456, "total_seconds": 3725.2,
            "train_tokens_per_second": 1234.5678, "packed_tokens_per_second": 900.0,
            "peak_rss_bytes": 1_240_000_000u64, "step_seconds": [1.0, 1.1],
            "final_train": {"step": 12, "loss": 0.5, "rewards/accuracies": 0.9},
            "final_eval": null, "output_dir": dir,
        });
        fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    }

    fn write_demo(dir: &Path) {
        let summary = json!({
            "wall_seconds": 5400.2,
            "reference": {"reward_mean": -0.2, "reward_ci95": 0.15},
            "policies": [
                {"beta": 0.1, "reward_mean": 0.9, "reward_ci95": 0.2, "kl": 6.5, "win_rate": 0.71},
                {"beta": 0.5, "reward_mean": 0.4, "reward_ci95": 0.18, "kl": 1.8, "win_rate": 0.6},
            ],
            "settings": {"model": "SmolLM2-135M-Instruct", "prompts": 256, "sampling": {"temperature": 1.0, "max_new_tokens": 128}},
            "something_else": [1, 2, 3],
        });
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary).unwrap()).unwrap();
        for beta in [0.1, 0.5] {
            let run = dir.join(format!("policies/beta-{beta}"));
            fs::create_dir_all(&run).unwrap();
            fs::write(run.join("metrics.jsonl"), dpo_metrics(30, beta)).unwrap();
        }
    }

    fn assert_png(path: &Path) {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.starts_with(PNG_SIGNATURE), "{} is not a PNG", path.display());
        assert!(bytes.len() > 10_000, "{}: only {} bytes", path.display(), bytes.len());
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn run_report_writes_plots_and_page() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        write_dpo_run(&dir);
        let written = write_run_report(&dir).unwrap();
        assert_eq!(names(&written), ["loss.png", "accuracies.png", "margins.png", "rewards.png", "report.html"]);
        let html = fs::read_to_string(dir.join("report.html")).unwrap();
        for png in &written[..4] {
            assert_png(png);
            let name = png.file_name().unwrap().to_str().unwrap();
            assert!(html.contains(&format!("src=\"{name}\"")), "report.html does not show {name}");
        }
        for expected in ["tokenize.max_length", "loss.beta", "1.15 GiB", "1 h 02 min 05 s", "12.346 s", "final_train.loss", "1e-6"] {
            assert!(html.contains(expected), "report.html lacks {expected:?}");
        }
        assert!(!html.contains("step_seconds"), "arrays of the summary are left out");
        assert_eq!(fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.')).count(), 0);
    }

    #[test]
    fn run_report_skips_absent_series() {
        // An SFT run: no rewards, a token accuracy, no eval lines, no train_args or summary.
        let tmp = tempfile::tempdir().unwrap();
        let lines: String = (1..=5)
            .map(|s| format!("{}\n", json!({"step": s, "epoch": s as f64 / 5.0, "loss": 2.0 / s as f64, "grad_norm": 1.0, "learning_rate": 2e-5, "num_tokens": 100 * s, "mean_token_accuracy": 0.3 + 0.05 * s as f64})))
            .collect();
        fs::write(tmp.path().join("metrics.jsonl"), lines).unwrap();
        let written = write_run_report(tmp.path()).unwrap();
        assert_eq!(names(&written), ["loss.png", "token_accuracy.png", "report.html"]);
        assert_png(&written[0]);
        let html = fs::read_to_string(&written[2]).unwrap();
        assert!(!html.contains("rewards.png") && !html.contains("Settings"));
    }

    #[test]
    fn malformed_metrics_line_names_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("metrics.jsonl"), "{\"step\": 1, \"loss\": 0.69}\n{\"step\": 2, \"loss\": \n").unwrap();
        let err = format!("{:#}", write_run_report(tmp.path()).unwrap_err());
        assert!(err.contains("metrics.jsonl:2"), "{err}");
        fs::write(tmp.path().join("metrics.jsonl"), "{\"step\": 1}\n{\"loss\": 0.5}\n").unwrap();
        let err = format!("{:#}", write_run_report(tmp.path()).unwrap_err());
        assert!(err.contains("metrics.jsonl:2: missing numeric \"step\""), "{err}");
        fs::remove_file(tmp.path().join("metrics.jsonl")).unwrap();
        let err = format!("{:#}", write_run_report(tmp.path()).unwrap_err());
        assert!(err.contains("metrics.jsonl"), "{err}");
    }

    #[test]
    fn demo_report_writes_frontier_training_and_page() {
        let tmp = tempfile::tempdir().unwrap();
        write_demo(tmp.path());
        let written = write_demo_report(tmp.path()).unwrap();
        assert_eq!(names(&written), ["frontier.png", "demo_training.png", "report.html"]);
        assert_png(&written[0]);
        assert_png(&written[1]);
        let html = fs::read_to_string(&written[2]).unwrap();
        for expected in ["src=\"frontier.png\"", "src=\"demo_training.png\"", "beta=0.1", "beta=0.5", "0.9 ± 0.2", "71.0%", "sampling.temperature", "1 h 30 min 00 s"] {
            assert!(html.contains(expected), "report.html lacks {expected:?}");
        }
        // A policy without its training run is an error naming the missing file.
        fs::remove_file(tmp.path().join("policies/beta-0.5/metrics.jsonl")).unwrap();
        let err = format!("{:#}", write_demo_report(tmp.path()).unwrap_err());
        assert!(err.contains("beta-0.5/metrics.jsonl"), "{err}");
    }

    #[test]
    fn number_formats() {
        assert_eq!(format_number(0.693147181), "0.693147");
        assert_eq!(format_number(1234.56789), "1234.57");
        assert_eq!(format_number(1e-6), "1e-6");
        assert_eq!(format_number(-2.5), "-2.5");
        assert_eq!(format_bytes(512.0), "512 bytes");
        assert_eq!(format_bytes(3.0 * 1024.0 * 1024.0), "3.00 MiB");
        assert_eq!(format_seconds(75.0), "1 min 15 s (75.0 s)");
        assert_eq!(format_tick(0.1 + 0.2), "0.3");
    }

    /// Renders sample reports into `/tmp/report-check` to look at, and the report of the run
    /// directory `$DPO_REPORT_RUN` if set:
    /// `cargo test -p dpo --lib report::tests::render_samples -- --ignored`.
    #[test]
    #[ignore]
    fn render_samples() {
        let out = Path::new("/tmp/report-check");
        write_dpo_run(&out.join("run"));
        write_run_report(&out.join("run")).unwrap();
        write_demo(&out.join("demo"));
        write_demo_report(&out.join("demo")).unwrap();
        if let Some(run) = std::env::var_os("DPO_REPORT_RUN") {
            write_run_report(Path::new(&run)).unwrap();
        }
    }
}
