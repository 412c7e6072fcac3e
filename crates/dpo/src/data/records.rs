//! Reading preference records.
//!
//! Layouts, recognised per record:
//! - explicit: `{"prompt": str, "chosen": str, "rejected": str}`;
//! - prompt-completion (SFT): `{"prompt": str, "completion": str}`;
//! - Anthropic HH raw: `{"chosen": str, "rejected": str}` holding whole transcripts; the prompt is
//!   each side's text up to and including its last `"\n\nAssistant:"`, and a pair whose two sides
//!   disagree on that prompt is skipped (and counted).

use crate::io::open_text;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Where a record came from: its file, 1-based line, and 0-based index among the file's records.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub index: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
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
        Self { prompt: prompt.into(), completions: vec![completion.into()], kind: ExampleKind::Completion, rendered: None }
    }
}

/// A record of a data file: the example it holds, or why it was skipped.
#[derive(Debug, Clone)]
pub struct Record {
    pub origin: Origin,
    pub example: std::result::Result<Example, String>,
}

/// What [`read`] found.
#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    pub records: usize,
    /// HH pairs whose sides disagree before the last `"\n\nAssistant:"`.
    pub skipped_disagreeing: usize,
}

const HH_MARK: &str = "\n\nAssistant:";

fn string_field(obj: &Map<String, Value>, key: &str, origin: &Origin) -> Result<String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => bail!("{origin}: field `{key}` must be a string, found {}", kind(v)),
        None => bail!("{origin}: missing field `{key}`"),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Splits an HH transcript pair into prompt and completions, or says why it cannot.
pub fn split_hh(chosen: &str, rejected: &str) -> std::result::Result<Example, String> {
    let cut = |s: &str| s.rfind(HH_MARK).map(|k| k + HH_MARK.len());
    match (cut(chosen), cut(rejected)) {
        (Some(a), Some(b)) if chosen[..a] == rejected[..b] => {
            Ok(Example::pair(&chosen[..a], &chosen[a..], &rejected[b..]))
        }
        (Some(_), Some(_)) => Err("chosen and rejected disagree before their last \"\\n\\nAssistant:\"".into()),
        _ => Err("no \"\\n\\nAssistant:\" in the transcript".into()),
    }
}

fn parse_record(obj: &Map<String, Value>, origin: &Origin) -> Result<std::result::Result<Example, String>> {
    if obj.contains_key("prompt") && obj.contains_key("completion") {
        let prompt = string_field(obj, "prompt", origin)?;
        let completion = string_field(obj, "completion", origin)?;
        return Ok(Ok(Example::completion(prompt, completion)));
    }
    if obj.contains_key("prompt") {
        let prompt = string_field(obj, "prompt", origin)?;
        let chosen = string_field(obj, "chosen", origin)?;
        let rejected = string_field(obj, "rejected", origin)?;
        return Ok(Ok(Example::pair(prompt, chosen, rejected)));
    }
    if obj.contains_key("chosen") || obj.contains_key("rejected") {
        let chosen = string_field(obj, "chosen", origin)?;
        let rejected = string_field(obj, "rejected", origin)?;
        return Ok(split_hh(&chosen, &rejected));
    }
    bail!("{origin}: missing field `prompt` (explicit and prompt-completion layouts) or `chosen`/`rejected` (HH transcripts)")
}

/// Reads every record of a `.jsonl` or `.jsonl.gz` file, in order. A line that is not a JSON
/// object, or a record missing a field, stops with an error naming the file, line and field.
pub fn read(path: &Path) -> Result<(Vec<Record>, ReadReport)> {
    let reader = open_text(path)?;
    let mut out = Vec::new();
    let mut report = ReadReport::default();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: reading", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let origin = Origin { file: path.to_path_buf(), line: i + 1, index: out.len() };
        let v: Value = serde_json::from_str(&line).with_context(|| format!("{origin}: not valid JSON"))?;
        let Value::Object(obj) = v else { bail!("{origin}: expected a JSON object, found {}", kind(&v)) };
        let example = parse_record(&obj, &origin)?;
        if example.is_err() {
            report.skipped_disagreeing += 1;
        }
        out.push(Record { origin, example });
    }
    report.records = out.len();
    if out.is_empty() {
        bail!("{}: no records", path.display());
    }
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.jsonl");
        std::fs::write(&p, lines).unwrap();
        (d, p)
    }

    #[test]
    fn reads_both_layouts_and_skips_disagreeing_hh_pairs() {
        let (_d, p) = write(concat!(
            r#"{"prompt":"P","chosen":" a","rejected":" b"}"#, "\n\n",
            r#"{"chosen":"\n\nHuman: hi\n\nAssistant: yo","rejected":"\n\nHuman: hi\n\nAssistant: no"}"#, "\n",
            r#"{"chosen":"\n\nHuman: hi\n\nAssistant: a\n\nAssistant: b","rejected":"\n\nHuman: hi\n\nAssistant: c"}"#, "\n",
        ));
        let (recs, rep) = read(&p).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].example.as_ref().unwrap(), &Example::pair("P", " a", " b"));
        assert_eq!(recs[1].example.as_ref().unwrap(), &Example::pair("\n\nHuman: hi\n\nAssistant:", " yo", " no"));
        assert!(recs[2].example.is_err());
        assert_eq!((recs[2].origin.line, recs[2].origin.index), (4, 2));
        assert_eq!(rep.skipped_disagreeing, 1);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let (_d, p) = write("{\"prompt\":\"P\",\"chosen\":\"a\",\"rejected\":\"b\"}\n{\"prompt\":\"P\",\"chosen\":\"a\"}\n");
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("`rejected`"), "{e}");
        let (_d, p) = write("{\"prompt\":\"P\",\"chosen\":3,\"rejected\":\"b\"}\n");
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:1") && e.contains("`chosen` must be a string"), "{e}");
        let (_d, p) = write("{oops\n");
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("d.jsonl:1: not valid JSON"));
    }
}
