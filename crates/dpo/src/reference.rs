//! Reference log-probs: computed once before training, cached on disk, read back.
//!
//! The reference model never changes during DPO, so `log pi_ref(y|x)` of every completion is
//! computed once (with the initial policy weights, which are the reference) and training keeps
//! only the policy in memory. The file format is that of `dpo logps`: one JSON line per input
//! record, in input order,
//! `{"index": 0, "chosen_logps": -85.07, "rejected_logps": -166.76, "chosen_tokens": 29, "rejected_tokens": 62}`
//! (summed log-probs in nats; token counts of the scored completion tokens) for a pair,
//! `{"index": 0, "logps": [...], "tokens": [...]}` for other examples (rankings; KTO's completion
//! and its mismatched completion), or `{"index": 5, "skipped": "why"}` for a record left out.

use crate::data::{TokenizeSettings, TokenizedSet};
use crate::io::{open_text, write_jsonl_atomic};
use crate::logps::dataset_logps;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// One record's log-probs and token counts, per completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub logps: Vec<f64>,
    pub tokens: Vec<usize>,
}

/// Writes the log-probs of `set`'s examples (`logps[i]` for `set.examples[i]`) in the `dpo logps`
/// format, one line per record of the data file, atomically.
pub fn write_file(path: &Path, set: &TokenizedSet, logps: &[Vec<f64>]) -> Result<()> {
    let mut lines: Vec<(usize, Value)> = set
        .examples
        .iter()
        .zip(logps)
        .map(|(ex, lp)| {
            let tokens: Vec<usize> = scored_tokens(ex);
            let v = if matches!(ex.kind, crate::data::ExampleKind::Pair { .. }) && lp.len() == 2 {
                json!({"index": ex.index, "chosen_logps": lp[0], "rejected_logps": lp[1],
                       "chosen_tokens": tokens[0], "rejected_tokens": tokens[1]})
            } else {
                json!({"index": ex.index, "logps": lp, "tokens": tokens})
            };
            (ex.index, v)
        })
        .collect();
    lines.extend(set.skipped.iter().map(|(o, why)| (o.index, json!({"index": o.index, "skipped": why}))));
    lines.sort_by_key(|(i, _)| *i);
    write_jsonl_atomic(path, lines.iter().map(|(_, v)| v))
}

/// Tokens scored per completion (a completion's first token is not scored after an empty prompt).
pub fn scored_tokens(ex: &crate::data::Tokenized) -> Vec<usize> {
    ex.completions.iter().map(|c| if ex.prompt.is_empty() { c.len().saturating_sub(1) } else { c.len() }).collect()
}

/// Reads a `dpo logps` file into record index → entry. Errors name the file, line and field.
pub fn read_file(path: &Path) -> Result<HashMap<usize, Entry>> {
    let mut out = HashMap::new();
    for (i, line) in open_text(path)?.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: Value = serde_json::from_str(&line).with_context(|| format!("{at}: not valid JSON"))?;
        let index = v.get("index").and_then(Value::as_u64).with_context(|| format!("{at}: missing integer field `index`"))? as usize;
        if v.get("skipped").is_some() {
            continue;
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
        if out.insert(index, entry).is_some() {
            bail!("{at}: record index {index} appears twice");
        }
    }
    Ok(out)
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
            let want = scored_tokens(ex);
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

/// A content hash of a model's weights (names, shapes and f32 bytes) and tokenizer, hex: the
/// part of the cache key that says which reference model the log-probs belong to.
pub fn model_hash(model: &Llama, tokenizer: &Tokenizer) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(tokenizer.inner.to_string(false).map_err(|e| anyhow::anyhow!("{e}"))?.as_bytes());
    h.update(tokenizer.eos_token.as_bytes());
    h.update(tokenizer.chat_template.as_deref().unwrap_or("").as_bytes());
    for (name, t) in model.named_tensors() {
        h.update(name.as_bytes());
        h.update(format!("{:?}", t.dims()).as_bytes());
        let t = t.to_dtype(candle_core::DType::F32)?.flatten_all()?;
        let (s, l) = t.storage_and_layout();
        let candle_core::Storage::Cpu(s) = &*s else { bail!("model on the CPU expected") };
        let data = crate::ops::slice_of::<f32>(s, l, "model-hash")?;
        // SAFETY: reinterpreting f32s as bytes.
        h.update(unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, data.len() * 4) });
    }
    Ok(h.finalize().to_hex().to_string())
}

/// A content hash of a file, hex.
pub fn file_hash(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)?;
    Ok(h.finalize().to_hex().to_string())
}

/// Where the cache keeps the reference log-probs of this model, data file, view of the data (how
/// its records were converted: pairs, unpaired, ...) and tokenization: `DPO_HOME/ref-logps/<hash>.jsonl`.
pub fn cache_path(model_hash: &str, data_hash: &str, view: &str, settings: TokenizeSettings) -> PathBuf {
    let key = format!("{model_hash}|{data_hash}|{view}|{}", serde_json::to_string(&settings).unwrap());
    let name = blake3::hash(key.as_bytes()).to_hex();
    crate::fetch::home().join("ref-logps").join(format!("{}.jsonl", &name[..32]))
}

/// Where the reference log-probs came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// The file given by the user.
    Given(PathBuf),
    /// A cached file of an earlier run.
    Cache(PathBuf),
    /// Computed now and written to the cache.
    Computed(PathBuf),
}

/// The reference log-probs of `set` (aligned with its examples): read from `given` if set, else
/// from the cache, else computed with `reference` (`max_tokens` rows per forward) and cached.
/// `view` says how the data file's records became `set` (part of the cache key).
#[allow(clippy::too_many_arguments)]
pub fn reference_logps(
    reference: &Llama,
    model_hash: &str,
    data: &Path,
    view: &str,
    set: &TokenizedSet,
    settings: TokenizeSettings,
    given: Option<&Path>,
    max_tokens: usize,
    progress: impl FnMut(usize),
) -> Result<(Vec<Vec<f64>>, Origin)> {
    if let Some(g) = given {
        return Ok((align(g, &read_file(g)?, set)?, Origin::Given(g.to_path_buf())));
    }
    let path = cache_path(model_hash, &file_hash(data)?, view, settings);
    if path.exists() {
        if let Ok(v) = read_file(&path).and_then(|e| align(&path, &e, set)) {
            return Ok((v, Origin::Cache(path)));
        }
    }
    let examples: Vec<_> = set.examples.iter().collect();
    let logps: Vec<Vec<f64>> = dataset_logps(reference, &examples, max_tokens, progress)?.into_iter().map(|e| e.logps).collect();
    write_file(&path, set, &logps)?;
    Ok((logps, Origin::Computed(path)))
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
