//! Prompt files (`{"prompt": str}` records) and sample files (`dpo sample`'s output: a prompt's
//! completions with their log-probs), and sampling text prompts into such records.

use crate::example::kind;
use crate::read_objects;
use anyhow::{bail, ensure, Result};
use dpo_model::sample::{sample_ids, SampleConfig};
use dpo_model::tokenizer::{SpecialTokens, Tokenizer};
use dpo_model::Llama;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// A prompt's samples as text, the line format of `dpo sample`'s output.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SampleRecord {
    pub prompt: String,
    pub completions: Vec<String>,
    /// Summed log-prob of each completion under the sampling model (nats), EOS included when sampled.
    pub logps: Vec<f64>,
    /// Tokens of each completion.
    pub tokens: Vec<usize>,
}

/// Reads `{"prompt": str}` records (other fields ignored) from any data file format (see
/// [`crate`]). Errors name the file, line and field; an empty file is an error.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (origin, obj) in read_objects(path)? {
        match obj.get("prompt") {
            Some(Value::String(p)) => out.push(p.clone()),
            Some(other) => bail!("{origin}: field `prompt` must be a string, found {}", kind(other)),
            None => bail!("{origin}: missing field `prompt`"),
        }
    }
    ensure!(!out.is_empty(), "{}: no prompts", path.display());
    Ok(out)
}

/// Throughput of a sampling run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SampleStats {
    pub tokens: usize,
    pub seconds: f64,
}

impl SampleStats {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Samples completions of text prompts and decodes them (EOS and other special tokens dropped
/// from the text).
pub fn sample_texts(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[String],
    cfg: &SampleConfig,
    progress: impl FnMut(usize, usize),
) -> Result<(Vec<SampleRecord>, SampleStats)> {
    let t0 = Instant::now();
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p)).collect::<Result<_>>()?;
    if let Some(i) = ids.iter().position(Vec::is_empty) {
        bail!("prompt {} is empty: there is nothing to continue", i + 1);
    }
    let samples = sample_ids(model, &ids, &tok.stop_ids, cfg, progress)?;
    let mut tokens = 0;
    let mut out = Vec::with_capacity(prompts.len());
    for (p, s) in prompts.iter().zip(samples) {
        tokens += s.iter().map(|x| x.tokens.len()).sum::<usize>();
        out.push(SampleRecord {
            prompt: p.clone(),
            completions: s.iter().map(|x| tok.decode(&x.tokens, SpecialTokens::Skip)).collect::<Result<_>>()?,
            logps: s.iter().map(|x| x.logp).collect(),
            tokens: s.iter().map(|x| x.tokens.len()).collect(),
        });
    }
    Ok((out, SampleStats { tokens, seconds: t0.elapsed().as_secs_f64() }))
}

/// Writes sample records as JSONL, atomically.
pub fn write_samples(path: &Path, records: &[SampleRecord]) -> Result<()> {
    dpo_runtime::io::write_jsonl_atomic(path, records)
}
