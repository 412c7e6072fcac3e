//! Text examples → token ids, by TRL 1.16's rule, then truncation.

use super::{Example, ExampleKind, Origin, Record};
use anyhow::Result;
use dpo_model::tokenizer::Tokenizer;
use rayon::prelude::*;
use serde::Serialize;

/// Truncation settings. They change the token ids, so they are part of the reference-log-prob
/// cache key.
///
/// Rules, applied in this order after tokenization:
/// 1. `max_prompt_length`: a longer prompt keeps its **last** `max_prompt_length` tokens (the
///    rule of TRL ≤ 0.26; TRL 1.16 has no such option).
/// 2. `max_length`: an example whose prompt alone has `max_length` tokens or more is dropped (as
///    TRL 1.16 filters it); otherwise every completion keeps its **first**
///    `max_length - prompt_tokens` tokens, i.e. each `prompt + completion` sequence keeps its
///    first `max_length` tokens (TRL 1.16's default `truncation_mode = "keep_start"`).
///
/// `Default` truncates nothing; the training commands' default is
/// [`DEFAULT_MAX_LENGTH`] (TRL's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct TokenizeSettings {
    /// Keep at most this many tokens of each prompt+completion (completion tail cut; prompt >= this: pair dropped). 0: no limit.
    #[cfg_attr(feature = "cli", arg(long, default_value = DEFAULT_MAX_LENGTH_TEXT.as_str(), value_parser = parse_limit))]
    pub max_length: ::std::option::Option<usize>,
    /// Keep at most the last this many prompt tokens (unset: no limit).
    #[cfg_attr(feature = "cli", arg(long))]
    pub max_prompt_length: Option<usize>,
}

/// Tokens of each prompt + completion the training commands keep by default (TRL 1.16
/// `max_length`).
pub const DEFAULT_MAX_LENGTH: usize = 1024;

/// The command line's default `--max-length`, as clap wants it (text).
#[cfg(feature = "cli")]
static DEFAULT_MAX_LENGTH_TEXT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| DEFAULT_MAX_LENGTH.to_string());

/// A token limit on the command line: a count, 0 meaning none.
#[cfg(feature = "cli")]
fn parse_limit(s: &str) -> std::result::Result<Option<usize>, String> {
    let n: usize = s.parse().map_err(|_| format!("`{s}` is not a token count"))?;
    Ok(Some(n).filter(|&n| n > 0))
}

impl TokenizeSettings {
    /// Each prompt + completion keeps its first `max_length` tokens (0: no limit); prompts are not cut.
    pub fn truncating(max_length: usize) -> Self {
        Self { max_length: Some(max_length).filter(|&m| m > 0), max_prompt_length: None }
    }
}

/// An example's token ids, the prompt's and each completion's, or why it was dropped.
pub type Split = std::result::Result<(Vec<u32>, Vec<Vec<u32>>), String>;

/// An example as token ids: the prompt, and each completion (plain text: ending in EOS unless
/// truncated; conversational: as the chat template ends a turn).
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    /// Index of the record in its file.
    pub index: usize,
    pub prompt: Vec<u32>,
    pub completions: Vec<Vec<u32>>,
    pub kind: ExampleKind,
}

impl Tokenized {
    /// Tokens in the packed layout: the prompt once, then every completion.
    pub fn packed_tokens(&self) -> usize {
        self.prompt.len() + self.completions.iter().map(Vec::len).sum::<usize>()
    }

    /// Tokens scored per completion (a completion's first token is not scored after an empty
    /// prompt: nothing predicts it).
    pub fn scored_tokens(&self) -> Vec<usize> {
        self.completions
            .iter()
            .map(|c| if self.prompt.is_empty() { c.len().saturating_sub(1) } else { c.len() })
            .collect()
    }

    /// Tokens counted the way TRL counts `num_tokens`: every `prompt + completion` sequence whole.
    pub fn sequence_tokens(&self) -> usize {
        self.completions.iter().map(|c| self.prompt.len() + c.len()).sum()
    }
}

/// The tokenized examples of a data file, and the records that were left out with the reason.
#[derive(Debug, Clone, Default)]
pub struct TokenizedSet {
    pub examples: Vec<Tokenized>,
    pub skipped: Vec<(Origin, String)>,
    pub records: usize,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// TRL's split of tokenized `prompt + completion` sequences `full`: the prompt ids are the longest
/// prefix of `prompt_ids` common to all of them, each completion the rest of its sequence (a token
/// merged across the boundary goes to the completion).
pub fn split_at_prompt(prompt_ids: &[u32], full: Vec<Vec<u32>>) -> (Vec<u32>, Vec<Vec<u32>>) {
    let plen = full.iter().map(|f| common_prefix(prompt_ids, f)).min().unwrap_or(prompt_ids.len());
    let completions = full.into_iter().map(|f| f[plen..].to_vec()).collect();
    (prompt_ids[..plen].to_vec(), completions)
}

/// TRL 1.16's rule (`DPOTrainer._prepare_dataset`; `trl_tokenize` in the oracle). Plain text:
/// append the EOS text to each completion that does not already end with it; tokenize `prompt`
/// and every `prompt + completion` (with the tokenizer's special tokens, e.g. a BOS).
/// Conversational (`rendered` is set): tokenize the rendered prompt and each rendered conversation
/// as they are, adding no special tokens and no EOS (the chat template wrote what there is; as
/// `apply_chat_template(..., tokenize=True)`). Then in both cases the prompt ids are the longest
/// prefix common to all of them, and each completion is the rest of its sequence (a token merged
/// across the boundary goes to the completion). Then the truncation of [`TokenizeSettings`];
/// `Err(reason)` if the example is dropped.
pub fn tokenize_example(tok: &Tokenizer, ex: &Example, settings: TokenizeSettings) -> Result<Split> {
    let (prompt_ids, full) = match &ex.rendered {
        Some(rendered) => {
            let full = rendered.iter().map(|t| tok.encode_raw(t)).collect::<Result<Vec<_>>>()?;
            (tok.encode_raw(&ex.prompt)?, full)
        }
        None => {
            let mut full = Vec::with_capacity(ex.completions.len());
            for c in &ex.completions {
                let text = if c.ends_with(&tok.eos_token) {
                    format!("{}{c}", ex.prompt)
                } else {
                    format!("{}{c}{}", ex.prompt, tok.eos_token)
                };
                full.push(tok.encode(&text)?);
            }
            (tok.encode(&ex.prompt)?, full)
        }
    };
    let (mut prompt, mut completions) = split_at_prompt(&prompt_ids, full);
    if let Some(m) = settings.max_prompt_length {
        if prompt.len() > m {
            prompt.drain(..prompt.len() - m);
        }
    }
    if let Some(m) = settings.max_length {
        if prompt.len() >= m {
            return Ok(Err(format!("the prompt's {} tokens fill max_length {m}", prompt.len())));
        }
        for c in &mut completions {
            c.truncate(m - prompt.len());
        }
    }
    Ok(Ok((prompt, completions)))
}

/// Tokenizes every record (in parallel, results in record order).
pub fn tokenize_all(tok: &Tokenizer, records: &[Record], settings: TokenizeSettings) -> Result<TokenizedSet> {
    let results: Vec<Result<std::result::Result<Tokenized, String>>> = records
        .par_iter()
        .map(|r| match &r.example {
            Err(why) => Ok(Err(why.clone())),
            Ok(ex) => Ok(tokenize_example(tok, ex, settings)?.map(|(prompt, completions)| Tokenized {
                index: r.origin.index,
                prompt,
                completions,
                kind: ex.kind.clone(),
            })),
        })
        .collect();
    let mut set = TokenizedSet { records: records.len(), ..Default::default() };
    for (r, res) in records.iter().zip(results) {
        match res? {
            Ok(t) => set.examples.push(t),
            Err(why) => set.skipped.push((r.origin.clone(), why)),
        }
    }
    Ok(set)
}
