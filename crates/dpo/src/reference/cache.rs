//! The on-disk cache of reference log-probs, keyed by content: the reference model's weights and
//! tokenizer, the data file, how its records were converted, and the tokenization settings.

use super::file::{align, read_file, write_file};
use crate::data::{TokenizeSettings, TokenizedSet};
use crate::logps::example_logps;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

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
    let logps = example_logps(reference, &examples, max_tokens, progress)?;
    write_file(&path, set, &logps)?;
    Ok((logps, Origin::Computed(path)))
}

