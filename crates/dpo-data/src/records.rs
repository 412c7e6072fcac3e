//! Records: examples as text, where each came from, and reading a data file into them.
//!
//! [`read_with`] reads a file ([`super::formats`]), recognises each record's layout
//! ([`super::layouts`]) and renders conversational records with the chat template
//! ([`super::chat`]).

use super::chat::ChatTemplate;
use super::example::Record;
use super::formats::read_objects;
use super::layouts::{parse_record, Chat};
use anyhow::{bail, Result};
use dpo_model::tokenizer::Tokenizer;
use std::path::Path;

/// What [`read_with`] found.
#[derive(Debug, Clone, Default)]
pub struct ReadReport {
    pub records: usize,
    /// HH pairs whose sides disagree before the last `"\n\nAssistant:"`.
    pub skipped_disagreeing: usize,
    /// Records rendered with the chat template.
    pub conversational: usize,
    /// Conversational records whose rendered prompt is not a prefix of a rendered conversation.
    pub prompt_not_prefix: usize,
}

/// How conversational records are rendered while reading.
#[derive(Debug, Default)]
pub struct ReadOptions {
    /// The chat template (and special tokens) conversational records are rendered with; without
    /// one, a conversational record is an error.
    pub chat_template: Option<ChatTemplate>,
    /// Why there is no template, for that error.
    no_template: Option<String>,
}

impl ReadOptions {
    /// Renders with `tok`'s chat template (`tokenizer_config.json`, `chat_template.jinja`, or the
    /// GGUF metadata `tokenizer.chat_template`). Fails if the template does not compile.
    pub fn for_tokenizer(tok: &Tokenizer) -> Result<Self> {
        let chat_template = ChatTemplate::from_tokenizer(tok)?;
        Ok(Self {
            no_template: chat_template.is_none().then(|| "the model's tokenizer has no chat template".into()),
            chat_template,
        })
    }

    /// Renders with `template`.
    pub fn with_template(template: ChatTemplate) -> Self {
        Self { chat_template: Some(template), no_template: None }
    }

    fn chat(&self) -> Chat<'_> {
        match &self.chat_template {
            Some(t) => Chat::Template(t),
            None => Chat::Missing(self.no_template.as_deref().unwrap_or("the data was read without a tokenizer (read it with `data::read_with` and `ReadOptions::for_tokenizer`)")),
        }
    }
}

/// Reads every record of a data file, in order, in any format of [`super::formats`] and any
/// layout of [`super::layouts`]; conversational records are rendered with `opts`' chat template.
/// A malformed record stops with an error naming the file, line (or record number) and field.
/// Records that are kept but unusable (HH pairs whose sides disagree) have `Err(reason)` examples.
/// When a rendered prompt is not a prefix of its rendered conversation (TRL's warning), a warning
/// with the count is logged once for the file.
pub fn read_with(path: &Path, opts: &ReadOptions) -> Result<(Vec<Record>, ReadReport)> {
    let chat = opts.chat();
    let mut out = Vec::new();
    let mut report = ReadReport::default();
    for (origin, obj) in read_objects(path)? {
        let parsed = parse_record(&obj, &origin, &chat)?;
        report.skipped_disagreeing += usize::from(parsed.example.is_err());
        report.conversational += usize::from(parsed.conversational);
        report.prompt_not_prefix += usize::from(parsed.prompt_not_prefix);
        out.push(Record { origin, example: parsed.example });
    }
    report.records = out.len();
    if out.is_empty() {
        bail!("{}: no records", path.display());
    }
    if report.prompt_not_prefix > 0 {
        tracing::warn!(
            "{}: in {} of {} conversational records the chat template's rendering of the prompt (with the generation prompt) \
             is not a prefix of its rendering of prompt + completion; the token ids of the prompt are then their common prefix, \
             as TRL does, and the rest goes to the completion",
            path.display(),
            report.prompt_not_prefix,
            report.conversational
        );
    }
    Ok((out, report))
}

/// [`read_with`] without a chat template: plain-text layouts only (a conversational record is an
/// error saying that a template is needed).
pub fn read(path: &Path) -> Result<(Vec<Record>, ReadReport)> {
    read_with(path, &ReadOptions::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::{Example, ExampleKind};
    use std::path::PathBuf;

    fn write(lines: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.jsonl");
        std::fs::write(&p, lines).unwrap();
        (d, p)
    }

    #[test]
    fn reads_both_layouts_and_skips_disagreeing_hh_pairs() {
        let (_d, p) = write(concat!(
            r#"{"prompt":"P","chosen":" a","rejected":" b"}"#,
            "\n\n",
            r#"{"chosen":"\n\nHuman: hi\n\nAssistant: yo","rejected":"\n\nHuman: hi\n\nAssistant: no"}"#,
            "\n",
            r#"{"chosen":"\n\nHuman: hi\n\nAssistant: a\n\nAssistant: b","rejected":"\n\nHuman: hi\n\nAssistant: c"}"#,
            "\n",
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
        let (_d, p) =
            write("{\"prompt\":\"P\",\"chosen\":\"a\",\"rejected\":\"b\"}\n{\"prompt\":\"P\",\"chosen\":\"a\"}\n");
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("`rejected`"), "{e}");
        let (_d, p) = write("{\"prompt\":\"P\",\"chosen\":3,\"rejected\":\"b\"}\n");
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:1") && e.contains("`chosen` must be a string"), "{e}");
        let (_d, p) = write("{oops\n");
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("d.jsonl:1: not valid JSON"));
    }

    #[test]
    fn conversational_records_need_read_with_a_template() {
        let (_d, p) = write(concat!(
            r#"{"prompt":"P","chosen":" a","rejected":" b"}"#,
            "\n",
            r#"{"prompt":[{"role":"user","content":"Q"}],"chosen":[{"role":"assistant","content":"A"}],"rejected":[{"role":"assistant","content":"B"}]}"#,
            "\n",
        ));
        let e = read(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:2: a conversational record", p.display())) && e.contains("read_with"),
            "{e}"
        );
        let opts = ReadOptions::with_template(crate::chat::tests::smol());
        let (recs, rep) = read_with(&p, &opts).unwrap();
        assert_eq!((rep.records, rep.conversational, rep.prompt_not_prefix), (2, 1, 0));
        assert_eq!(recs[0].example.as_ref().unwrap(), &Example::pair("P", " a", " b"));
        let ex = recs[1].example.as_ref().unwrap();
        assert!(ex.prompt.ends_with("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"));
        assert_eq!(ex.completions, ["A", "B"]);
        // a template that does not render the prompt as a prefix is counted (and warned about)
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}:{% endif %}",
            None,
            None,
            None,
        )
        .unwrap();
        let (_, rep) = read_with(&p, &ReadOptions::with_template(t)).unwrap();
        assert_eq!((rep.conversational, rep.prompt_not_prefix), (1, 1));
    }

    #[test]
    fn json_list_files_name_records_by_position() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.json");
        std::fs::write(&p, r#"[{"prompt":"P","completion":"c"}, {"prompt":"P","completion":"c","label":true}, {"prompt":"P","completion":"c","label":1}]"#).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert_eq!(e, format!("{}: record 3: field `label` must be a boolean, found a number", p.display()));
        std::fs::write(&p, r#"[{"prompt":"P","completion":"c"}, {"prompt":"P","completion":"d","label":true}]"#)
            .unwrap();
        let (recs, _) = read(&p).unwrap();
        assert_eq!(recs[1].example.as_ref().unwrap(), &Example::unpaired("P", "d", true));
        assert_eq!(
            (recs[1].origin.line, recs[1].origin.index, recs[1].origin.to_string()),
            (2, 1, format!("{}: record 2", p.display()))
        );
        std::fs::write(&p, "[]").unwrap();
        assert!(read(&p).unwrap_err().to_string().ends_with("d.json: no records"));
    }

    #[test]
    fn parquet_files_in_ultrafeedback_layout() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("uf.parquet");
        crate::formats::tests::write_parquet(
            &p,
            &[
                ("Q1", &[("user", "Q1"), ("assistant", "A")], &[("user", "Q1"), ("assistant", "B")], [7.5, 1.0]),
                ("Q2", &[("user", "Q2"), ("assistant", "C")], &[("user", "Q2")], [2.0, 3.0]),
            ],
        );
        let e = read(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: record 1: a conversational record", p.display())), "{e}");
        let opts = ReadOptions::with_template(crate::chat::tests::smol());
        let (recs, rep) = read_with(&p, &opts).unwrap();
        assert_eq!((rep.records, rep.conversational), (2, 2));
        let ex = recs[0].example.as_ref().unwrap();
        assert_eq!(
            (ex.completions.as_slice(), &ex.kind),
            (&["A".to_string(), "B".to_string()][..], &ExampleKind::Pair { scores: Some([7.5, 1.0]) })
        );
        assert!(ex.prompt.ends_with("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n"));
        // TRL's extract_prompt when one side is a prefix of the other: the shorter side's last message
        // (here the only one) starts the completions, so the prompt is empty
        let ex = recs[1].example.as_ref().unwrap();
        assert_eq!(ex.completions, ["Q2C", "Q2"]);
        assert_eq!(ex.prompt, "<|im_start|>assistant\n");
    }
}
