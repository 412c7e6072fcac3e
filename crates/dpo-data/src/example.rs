//! Examples as text and where each came from: what every reader and converter of data shares.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// How a file's records are numbered in [`Origin`]: by line, or by position among the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Position {
    /// JSON Lines: `line` is the 1-based line number (`FILE:LINE`).
    #[default]
    Line,
    /// A JSON list or a Parquet file: `line` is the 1-based record number (`FILE: record N`).
    Record,
}

/// Where a record came from: its file, its 1-based line (or, in a JSON list or a Parquet file, its
/// 1-based record number: see [`Position`]), and its 0-based index among the records (after a
/// conversion such as [`super::to_unpaired`], its index in the converted list).
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub index: usize,
    pub position: Position,
}

impl Origin {
    pub fn new(file: &Path, line: usize, index: usize, position: Position) -> Self {
        Self { file: file.to_path_buf(), line, index, position }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.position {
            Position::Line => write!(f, "{}:{}", self.file.display(), self.line),
            Position::Record => write!(f, "{}: record {}", self.file.display(), self.line),
        }
    }
}

/// What the completions of an example are, and what a loss may use besides them.
#[derive(Debug, Clone, PartialEq)]
pub enum ExampleKind {
    /// `[chosen, rejected]`, with a score each when the data has them (UltraFeedback's
    /// `score_chosen`/`score_rejected`; the offset of ODPO).
    Pair { scores: Option<[f64; 2]> },
    /// Completions ranked best first (Plackett–Luce), with their scores when the data has them.
    Ranking { scores: Option<Vec<f64>> },
    /// One completion labelled desirable or undesirable (KTO).
    Unpaired { desirable: bool },
    /// One completion to imitate (SFT).
    Completion,
}

impl ExampleKind {
    /// KTO's label of an unpaired example (`None` for every other kind).
    pub fn desirable(&self) -> Option<bool> {
        match self {
            ExampleKind::Unpaired { desirable } => Some(*desirable),
            _ => None,
        }
    }

    /// The scores of the completions, when the data has them (ODPO's offsets, rankings).
    pub fn scores(&self) -> Option<&[f64]> {
        match self {
            ExampleKind::Pair { scores: Some(s) } => Some(s),
            ExampleKind::Ranking { scores: Some(s) } => Some(s),
            _ => None,
        }
    }
}

/// One example as text: a prompt and its completions.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The prompt (conversational records: rendered by the chat template with the generation prompt).
    pub prompt: String,
    /// The completions (conversational records: the assistant messages' text), see [`ExampleKind`].
    pub completions: Vec<String>,
    pub kind: ExampleKind,
    /// Conversational records only: each `prompt + completion` conversation rendered by the chat
    /// template; tokenized whole (no EOS appended, no special tokens added), as TRL does.
    pub rendered: Option<Vec<String>>,
}

impl Example {
    /// A plain-text preference pair.
    pub fn pair(prompt: impl Into<String>, chosen: impl Into<String>, rejected: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            completions: vec![chosen.into(), rejected.into()],
            kind: ExampleKind::Pair { scores: None },
            rendered: None,
        }
    }

    /// A plain-text prompt and one completion (SFT).
    pub fn completion(prompt: impl Into<String>, completion: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            completions: vec![completion.into()],
            kind: ExampleKind::Completion,
            rendered: None,
        }
    }

    /// A plain-text prompt and one completion labelled desirable or undesirable (KTO).
    pub fn unpaired(prompt: impl Into<String>, completion: impl Into<String>, desirable: bool) -> Self {
        Self {
            prompt: prompt.into(),
            completions: vec![completion.into()],
            kind: ExampleKind::Unpaired { desirable },
            rendered: None,
        }
    }

    /// A plain-text prompt and completions ranked best first, with their scores if known.
    pub fn ranking(prompt: impl Into<String>, completions: Vec<String>, scores: Option<Vec<f64>>) -> Self {
        Self { prompt: prompt.into(), completions, kind: ExampleKind::Ranking { scores }, rendered: None }
    }
}

/// A record of a data file: the example it holds, or why it was skipped.
#[derive(Debug, Clone)]
pub struct Record {
    pub origin: Origin,
    pub example: std::result::Result<Example, String>,
}

/// The name of a JSON value's type in error messages ("a string", "a list", ...).
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
