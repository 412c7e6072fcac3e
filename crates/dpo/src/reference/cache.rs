//! The on-disk cache of reference log-probs, keyed by content: the reference model's weights and
//! tokenizer, the data file, how its records were converted, and the tokenization settings.

use super::file::{line, read_lines};
use crate::data::{TokenizeSettings, Tokenized, TokenizedSet};
use crate::logps::example_logps;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A content hash of a model's weights (names, shapes, storage format and values) and tokenizer, hex: the
/// part of the cache key that says which reference model the log-probs belong to.
pub fn model_hash(model: &Llama, tokenizer: &Tokenizer) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(tokenizer.inner.to_string(false).map_err(|e| anyhow::anyhow!("{e}"))?.as_bytes());
    h.update(tokenizer.eos_token.as_bytes());
    h.update(tokenizer.chat_template.as_deref().unwrap_or("").as_bytes());
    for (name, w) in model.named_weights() {
        h.update(name.as_bytes());
        w.hash_into(&mut h)?;
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

/// The reference log-probs of one data set (aligned with its examples) as far as they are known,
/// and the cache file new ones are appended to. An example's log-probs are computed at most once
/// per cache key: on the first run that needs them, when a batch first reaches it.
pub struct RefStore {
    path: PathBuf,
    known: Vec<Option<Vec<f64>>>,
    /// Examples found in the cache when it was opened.
    pub cached: usize,
}

impl RefStore {
    /// The store of `set` at the cache key of (`model_hash`, `data`, `view`, `settings`): the
    /// entries already in the cache file (a torn last line ignored; an entry whose token counts
    /// do not match is recomputed).
    pub fn open(model_hash: &str, data: &Path, view: &str, set: &TokenizedSet, settings: TokenizeSettings) -> Result<Self> {
        let path = cache_path(model_hash, &file_hash(data)?, view, settings);
        let entries = if path.exists() { read_lines(&path, true)? } else { Default::default() };
        let known: Vec<Option<Vec<f64>>> = set
            .examples
            .iter()
            .map(|ex| entries.get(&ex.index).filter(|e| e.tokens == ex.scored_tokens()).map(|e| e.logps.clone()))
            .collect();
        let cached = known.iter().filter(|k| k.is_some()).count();
        Ok(Self { path, known, cached })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether every example's log-probs are known.
    pub fn complete(&self) -> bool {
        self.known.iter().all(Option::is_some)
    }

    /// The log-probs of examples `idx` of `set`: those not known yet are computed with
    /// `reference` (`max_tokens` rows per forward; `progress(done)` after each pass) and appended
    /// to the cache file. Errors: an unknown example and no model to compute it with.
    pub fn get(&mut self, reference: Option<&Llama>, set: &TokenizedSet, idx: &[usize], max_tokens: usize, progress: impl FnMut(usize)) -> Result<Vec<Vec<f64>>> {
        let mut missing: Vec<usize> = idx.iter().copied().filter(|&i| self.known[i].is_none()).collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let model = reference.context("reference log-probs are missing and the reference model is no longer loaded")?;
            let examples: Vec<&Tokenized> = missing.iter().map(|&i| &set.examples[i]).collect();
            let logps = example_logps(model, &examples, max_tokens, progress)?;
            let mut text = String::new();
            for (ex, lp) in examples.iter().zip(&logps) {
                text += &format!("{}\n", line(ex, lp));
            }
            append(&self.path, &text)?;
            for (i, lp) in missing.into_iter().zip(logps) {
                self.known[i] = Some(lp);
            }
        }
        idx.iter().map(|&i| self.known[i].clone().context("reference log-probs missing after computing them")).collect()
    }
}

/// Appends `text` to `path` with one write (the directory is created first).
fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}
