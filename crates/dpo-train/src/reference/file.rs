//! The `dpo logps` file format: one JSON line per input record, in input order,
//! `{"index": 0, "chosen_logps": -85.07, "rejected_logps": -166.76, "chosen_tokens": 29, "rejected_tokens": 62}`
//! (summed log-probs in nats; token counts of the scored completion tokens) for a pair,
//! `{"index": 0, "logps": [...], "tokens": [...]}` for other examples (rankings; KTO's completion
//! and its mismatched completion), or `{"index": 5, "skipped": "why"}` for a record left out.

use anyhow::{bail, Context, Result};
use dpo_data::{Tokenized, TokenizedSet};
use dpo_runtime::io::{bounded_lines, open_text, write_jsonl_atomic};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// One record's log-probs and token counts, per completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub logps: Vec<f64>,
    pub tokens: Vec<usize>,
}

/// Writes the log-probs of `set`'s examples (`logps[i]` for `set.examples[i]`) in the `dpo logps`
/// format, one line per record of the data file, atomically.
pub fn write_file(path: &Path, set: &TokenizedSet, logps: &[Vec<f64>]) -> Result<()> {
    let mut lines: Vec<(usize, Value)> =
        set.examples.iter().zip(logps).map(|(ex, lp)| (ex.index, line(ex, lp))).collect();
    lines.extend(set.skipped.iter().map(|(o, why)| (o.index, json!({"index": o.index, "skipped": why}))));
    lines.sort_by_key(|(i, _)| *i);
    write_jsonl_atomic(path, lines.iter().map(|(_, v)| v))
}

/// The line of example `ex` with the log-probs `logps` of its completions.
pub fn line(ex: &Tokenized, logps: &[f64]) -> Value {
    let tokens: Vec<usize> = ex.scored_tokens();
    if matches!(ex.kind, dpo_data::ExampleKind::Pair { .. }) && logps.len() == 2 {
        json!({"index": ex.index, "chosen_logps": logps[0], "rejected_logps": logps[1],
               "chosen_tokens": tokens[0], "rejected_tokens": tokens[1]})
    } else {
        json!({"index": ex.index, "logps": logps, "tokens": tokens})
    }
}

/// Reads a `dpo logps` file into record index → entry. Errors name the file, line and field.
pub fn read_file(path: &Path) -> Result<HashMap<usize, Entry>> {
    let mut out = HashMap::new();
    for (i, line) in bounded_lines(open_text(path)?).enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let at = format!("{}:{}", path.display(), i + 1);
        if let Some((index, entry)) = parse_line(&at, &line)? {
            if out.insert(index, entry).is_some() {
                bail!("{at}: record index {index} appears twice");
            }
        }
    }
    Ok(out)
}

/// One line of a `dpo logps` file: `None` for a blank line or a skipped record, else the record
/// index and its entry. `at` (`file:line`) prefixes the errors, which name the field.
pub fn parse_line(at: &str, line: &str) -> Result<Option<(usize, Entry)>> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(line).with_context(|| format!("{at}: not valid JSON"))?;
    let index =
        v.get("index").and_then(Value::as_u64).with_context(|| format!("{at}: missing integer field `index`"))?
            as usize;
    if v.get("skipped").is_some() {
        return Ok(None);
    }
    let num = |k: &str| v.get(k).and_then(Value::as_f64).with_context(|| format!("{at}: missing number field `{k}`"));
    let entry = if v.get("logps").is_some() {
        let list = |k: &str| -> Result<Vec<f64>> {
            v[k].as_array()
                .with_context(|| format!("{at}: field `{k}` must be a list of numbers"))?
                .iter()
                .map(|x| x.as_f64().with_context(|| format!("{at}: field `{k}` must be a list of numbers")))
                .collect()
        };
        Entry { logps: list("logps")?, tokens: list("tokens")?.into_iter().map(|t| t as usize).collect() }
    } else {
        Entry {
            logps: vec![num("chosen_logps")?, num("rejected_logps")?],
            tokens: vec![num("chosen_tokens")? as usize, num("rejected_tokens")? as usize],
        }
    };
    Ok(Some((index, entry)))
}

/// Aligns a log-prob file with `set`: the entry of each example, checked against its token counts
/// (a mismatch means the file was made with other data or tokenization settings).
pub fn align(path: &Path, entries: &HashMap<usize, Entry>, set: &TokenizedSet) -> Result<Vec<Vec<f64>>> {
    set.examples
        .iter()
        .map(|ex| {
            let e = entries.get(&ex.index).with_context(|| {
                format!("{}: no log-probs for record {} of the data (it may have been skipped there)", path.display(), ex.index)
            })?;
            let want = ex.scored_tokens();
            if e.tokens != want {
                bail!(
                    "{}: record {}: token counts {:?} in the file, {:?} after tokenizing with these settings (another model, data or max_length?)",
                    path.display(),
                    ex.index,
                    e.tokens,
                    want
                );
            }
            Ok(e.logps.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    /// A cached reference must give the same bits as one computed in-process: otherwise a run that
    /// reads the cache sees `policy - reference` of one ulp at step 1 instead of exactly 0 (and
    /// `rewards/accuracies` counts ties as wins). Needs serde_json's `float_roundtrip`.
    #[test]
    fn log_probs_survive_the_json_round_trip_bit_for_bit() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let logp = -((x >> 11) as f64 / (1u64 << 53) as f64) * 500.0;
            let line = json!({"chosen_logps": logp}).to_string();
            let back = serde_json::from_str::<Value>(&line).unwrap()["chosen_logps"].as_f64().unwrap();
            assert_eq!(back.to_bits(), logp.to_bits(), "{logp:e} came back as {back:e}");
        }
    }
}
