//! The report of iterative DPO (`dpo iterate`): every round on the reward/KL frontier.

use super::html::{esc, figure, flatten, format_number, format_seconds, leaves_table, table, write_page};
use super::plot::{frontier_chart, palette, render_png, FrontierPoint, GREY};
use crate::summary::{round_dir, IterateSummary};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Writes `frontier.png` (judge reward, mean with a 95% CI bar, against KL(policy ‖ initial
/// model) in nats: the initial model at 0 and one point per round) and `report.html` (the rounds
/// as a table, with links to each round's training report, and the settings) into `dir`, from
/// `dir/summary.json` ([`IterateSummary`]). Errors: a missing or malformed summary, a file that
/// cannot be written.
pub fn write_iterate_report(dir: &Path) -> Result<Vec<PathBuf>> {
    let path = dir.join("summary.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let s: IterateSummary =
        serde_json::from_str(&text).with_context(|| format!("{}: not an iterate summary", path.display()))?;
    let mut points = vec![FrontierPoint {
        label: "initial".into(),
        kl: 0.0,
        mean: s.reference.reward_mean,
        ci95: s.reference.reward_ci95,
        color: GREY,
    }];
    for (i, r) in s.rounds.iter().enumerate() {
        points.push(FrontierPoint {
            label: format!("round {}", r.round),
            kl: r.kl,
            mean: r.reward_mean,
            ci95: r.reward_ci95,
            color: palette(i),
        });
    }
    let frontier = dir.join("frontier.png");
    render_png(&frontier, (960, 620), |area| frontier_chart(area, &points))?;
    let mut body = String::from("<h1>Iterative DPO</h1>\n");
    body += &format!(
        "<p>Each round samples completions of the training prompts from the policy of the round before, has the judge <code>{}</code> score them, pairs them by rank and trains the next policy with DPO; each policy is then evaluated on held-out prompts against the initial model.</p>\n",
        esc(&s.judge)
    );
    let mut rows = vec![vec![
        "initial".to_string(),
        "—".into(),
        "—".into(),
        esc(&format!("{} ± {}", format_number(s.reference.reward_mean), format_number(s.reference.reward_ci95))),
        "0".into(),
        "—".into(),
        "—".into(),
    ]];
    for r in &s.rounds {
        let run = round_dir(Path::new(""), r.round).join("policy");
        let shown = esc(&run.display().to_string());
        rows.push(vec![
            format!("<a href=\"{shown}/report.html\">round {}</a>", r.round),
            r.pairs.to_string(),
            esc(&format_number(r.train_sample_reward)),
            esc(&format!("{} ± {}", format_number(r.reward_mean), format_number(r.reward_ci95))),
            esc(&format!("{} ± {}", format_number(r.kl), format_number(r.kl_ci95))),
            esc(&format!("{:.1}%", 100.0 * r.win_rate)),
            esc(&format_seconds(r.seconds)),
        ]);
    }
    body += &table(
        &[
            "model",
            "pairs",
            "judge score of its training samples",
            "held-out judge reward (mean ± 95% CI)",
            "KL(π ‖ π_initial), nats",
            "win rate vs initial",
            "time",
        ],
        &rows,
    );
    body += &figure(
        "frontier.png",
        "Judge reward against KL from the initial model, one point per round. Bars: 95% confidence intervals.",
    );
    body += "<h2>Settings</h2>\n";
    body += &leaves_table(flatten(&serde_json::to_value(&s.settings)?));
    let html = dir.join("report.html");
    write_page(&html, "Iterative DPO", &body)?;
    Ok(vec![frontier, html])
}
