//! Reading a training run's `metrics.jsonl` (the run page and the demo page plot its series).

use anyhow::{anyhow, bail, Context, Result};
use dpo_train::metrics::Metrics;
use serde_json::Value;
use std::fs;
use std::path::Path;

/// The lines of a `metrics.jsonl` file, each a JSON object with a numeric `"step"`.
pub(super) fn read_metrics(path: &Path) -> Result<Vec<Metrics>> {
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
pub(super) fn metric_series(lines: &[Metrics], key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| Some((l.get("step")?.as_f64()?, l.get(key)?.as_f64()?)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}
