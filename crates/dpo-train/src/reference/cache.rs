//! The on-disk cache of reference log-probs, keyed by content: the reference model's weights and
//! tokenizer, the data file, how its records were converted, and the tokenization settings.

use super::file::{line, parse_line};
use crate::logps::example_logps;
use anyhow::{Context, Result};
use dpo_data::{TokenizeSettings, Tokenized, TokenizedSet};
use dpo_model::tokenizer::Tokenizer;
use dpo_model::Llama;
use dpo_runtime::io::file_hash;
use std::collections::HashMap;
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

/// Content hashes (blake3, hex) of a run's training and evaluation data files: part of the
/// reference cache's key and of a checkpoint's state, computed once per run.
#[derive(Debug, Clone, PartialEq)]
pub struct DataHashes {
    pub train: String,
    pub eval: Option<String>,
}

impl DataHashes {
    /// Hashes `train` and `eval`. Errors: a file that cannot be read.
    pub fn of(train: &Path, eval: Option<&Path>) -> Result<Self> {
        Ok(Self { train: file_hash(train)?, eval: eval.map(file_hash).transpose()? })
    }
}

/// Where the cache keeps the reference log-probs of this model, data file, view of the data (how
/// its records were converted: pairs, unpaired, ...) and tokenization: `DPO_HOME/ref-logps/<hash>.jsonl`.
pub fn cache_path(model_hash: &str, data_hash: &str, view: &str, settings: TokenizeSettings) -> PathBuf {
    let key = format!("{model_hash}|{data_hash}|{view}|{}", serde_json::to_string(&settings).unwrap());
    let name = blake3::hash(key.as_bytes()).to_hex();
    dpo_runtime::fetch::home().join("ref-logps").join(format!("{}.jsonl", &name[..32]))
}

/// The reference log-probs of one data set (aligned with its examples) as far as they are known,
/// and the cache file new ones are appended to. An example's log-probs are computed at most once
/// per cache key: on the first run that needs them, when a batch first reaches it.
///
/// The file is append-only and may be shared (the training and evaluation sets of one run are
/// the same file, or two runs share a cache): before computing, a store reads what was appended
/// since it last looked, and the first entry of a record wins. A line that is not a valid entry
/// (an append cut short by a crash) is ignored: that record is computed again.
pub struct RefStore {
    path: PathBuf,
    known: Vec<Option<Vec<f64>>>,
    /// Record index → position in the set, with the token counts the entry must have.
    position: HashMap<usize, (usize, Vec<usize>)>,
    /// Bytes of the cache file read so far (up to the end of its last complete line).
    read_to: u64,
    /// Examples found in the cache when it was opened.
    pub cached: usize,
    /// LD-DPO's weight of the tokens past a pair's shorter completion (part of the cache key).
    ld_alpha: Option<f64>,
}

impl RefStore {
    /// The store of `set` at the cache key of (`model_hash`, `data_hash`, `view`, `settings`),
    /// with the entries already in the cache file (an entry whose token counts do not match is
    /// recomputed). Errors: the cache file cannot be read.
    /// With `ld_alpha`, the log-probs are LD-DPO's ([`dpo_data::batch::pack_weighted`]) and the key
    /// says so.
    pub fn open(
        model_hash: &str,
        data_hash: &str,
        view: &str,
        set: &TokenizedSet,
        settings: TokenizeSettings,
        ld_alpha: Option<f64>,
    ) -> Result<Self> {
        let view = match ld_alpha {
            Some(a) => format!("{view}|ld_alpha={a}"),
            None => view.to_string(),
        };
        let mut store = Self::at(cache_path(model_hash, data_hash, &view, settings), set)?;
        store.ld_alpha = ld_alpha;
        Ok(store)
    }

    /// The store of `set` in the cache file `path`, with the entries already there.
    fn at(path: PathBuf, set: &TokenizedSet) -> Result<Self> {
        let position = set.examples.iter().enumerate().map(|(i, ex)| (ex.index, (i, ex.scored_tokens()))).collect();
        let mut store =
            Self { path, known: vec![None; set.examples.len()], position, read_to: 0, cached: 0, ld_alpha: None };
        store.read_new()?;
        store.cached = store.known.iter().filter(|k| k.is_some()).count();
        Ok(store)
    }

    /// Reads the complete lines appended to the cache file since the last read.
    fn read_new(&mut self) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("opening {}", self.path.display()))),
        };
        f.seek(SeekFrom::Start(self.read_to)).with_context(|| format!("reading {}", self.path.display()))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).with_context(|| format!("reading {}", self.path.display()))?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        for raw in bytes[..complete].split(|&b| b == b'\n') {
            let Ok(Some((index, entry))) =
                std::str::from_utf8(raw).map_err(anyhow::Error::from).and_then(|l| parse_line("", l))
            else {
                continue;
            };
            if let Some((i, tokens)) = self.position.get(&index) {
                if self.known[*i].is_none() && entry.tokens == *tokens {
                    self.known[*i] = Some(entry.logps);
                }
            }
        }
        self.read_to += complete as u64;
        Ok(())
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether every example's log-probs are known.
    pub fn complete(&self) -> bool {
        self.known.iter().all(Option::is_some)
    }

    /// The log-probs of examples `idx` of `set`: those not known yet (nor appended to the cache
    /// since) are computed with `reference` (`max_tokens` rows per forward; `progress(done)` after
    /// each pass) and appended to the cache file. Errors: an unknown example and no model to
    /// compute it with; the cache file cannot be read or written.
    pub fn get(
        &mut self,
        reference: Option<&Llama>,
        set: &TokenizedSet,
        idx: &[usize],
        max_tokens: usize,
        progress: impl FnMut(usize),
    ) -> Result<Vec<Vec<f64>>> {
        if idx.iter().any(|&i| self.known[i].is_none()) {
            self.read_new()?;
        }
        let mut missing: Vec<usize> = idx.iter().copied().filter(|&i| self.known[i].is_none()).collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let model =
                reference.context("reference log-probs are missing and the reference model is no longer loaded")?;
            let examples: Vec<&Tokenized> = missing.iter().map(|&i| &set.examples[i]).collect();
            let logps = example_logps(model, &examples, max_tokens, self.ld_alpha, progress)?;
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

impl RefStore {
    /// Makes the log-probs of examples `idx` of `set` known, across the ranks of the job (every
    /// rank calls it with the same `idx`; with one rank it is [`RefStore::get`]): rank 0's view of
    /// the cache file decides what is missing and gives every rank the entries it has; the
    /// missing ones are computed by all ranks, each a share of the micro-batches
    /// ([`crate::logps::example_logps_sharded`]: the values one process computes), and rank 0
    /// appends them to the cache file. `progress(done)` counts this rank's examples. Errors: as
    /// [`RefStore::get`].
    pub fn fill(
        &mut self,
        reference: Option<&Llama>,
        set: &TokenizedSet,
        idx: &[usize],
        max_tokens: usize,
        progress: impl FnMut(usize),
    ) -> Result<()> {
        if dpo_runtime::dist::world().size() == 1 {
            return self.get(reference, set, idx, max_tokens, progress).map(drop);
        }
        let mut idx = idx.to_vec();
        idx.sort_unstable();
        idx.dedup();
        let seen: Vec<Option<Vec<f64>>> = dpo_runtime::dist::broadcast(|| {
            self.read_new()?;
            Ok(idx.iter().map(|&i| self.known[i].clone()).collect())
        })?;
        for (&i, v) in idx.iter().zip(seen) {
            self.known[i] = v;
        }
        let missing: Vec<usize> = idx.into_iter().filter(|&i| self.known[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let model = reference.context("reference log-probs are missing and the reference model is no longer loaded")?;
        let examples: Vec<&Tokenized> = missing.iter().map(|&i| &set.examples[i]).collect();
        let logps = crate::logps::example_logps_sharded(model, &examples, max_tokens, self.ld_alpha, progress)?;
        if dpo_runtime::dist::is_main() {
            let text: String = examples.iter().zip(&logps).map(|(ex, lp)| format!("{}\n", line(ex, lp))).collect();
            append(&self.path, &text)?;
        }
        for (i, lp) in missing.into_iter().zip(logps) {
            self.known[i] = Some(lp);
        }
        Ok(())
    }
}

/// Appends `text` to `path` with one write (the directory is created first).
fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // After an append cut short (no final newline), start a new line: the torn one stays invalid.
    let mut last = [b'\n'];
    if f.seek(SeekFrom::End(-1)).is_ok() {
        f.read_exact(&mut last).with_context(|| format!("reading {}", path.display()))?;
    }
    let torn = last[0] != b'\n';
    let text = if torn { format!("\n{text}") } else { text.to_string() };
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpo_data::ExampleKind;

    fn pair(index: usize) -> Tokenized {
        Tokenized {
            index,
            prompt: vec![1, 2],
            completions: vec![vec![3, 4], vec![5, 6, 7]],
            kind: ExampleKind::Pair { scores: None },
        }
    }

    fn store(path: &Path, set: &TokenizedSet) -> RefStore {
        RefStore::at(path.to_path_buf(), set).unwrap()
    }

    /// The cache is shared and append-only: a store sees what others appended after it opened,
    /// the first entry of a record wins, and a torn line (a crash mid-append) is skipped.
    #[test]
    fn shared_cache_tolerates_duplicates_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let set = TokenizedSet { examples: vec![pair(0), pair(1), pair(2)], skipped: vec![], records: 3 };
        let entry = |i: usize, lp: f64| format!("{}\n", line(&set.examples[i], &[lp, lp - 1.0]));
        std::fs::write(&path, entry(0, -1.0) + "{\"index\": 1, \"chosen_lo").unwrap();
        let mut a = store(&path, &set);
        assert_eq!(a.known.iter().filter(|k| k.is_some()).count(), 1, "the torn line is not an entry");
        // Another store appends record 1 (after the torn line) and a second, different record 0.
        append(&path, &(entry(1, -2.0) + &entry(0, -9.0))).unwrap();
        let got = a.get(None, &set, &[1, 0], 64, |_| {}).unwrap();
        assert_eq!(got, vec![vec![-2.0, -3.0], vec![-1.0, -2.0]], "appended entries read, first entry wins");
        let err = a.get(None, &set, &[2], 64, |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("no longer loaded"), "{err:#}");
        // A fresh store reads the same; the torn line stays on its own line.
        let b = store(&path, &set);
        assert_eq!(b.known[..2], [Some(vec![-1.0, -2.0]), Some(vec![-2.0, -3.0])]);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 4);
    }
}
