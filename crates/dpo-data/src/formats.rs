//! File formats: each record of a data file as a JSON object, with its [`Origin`].
//!
//! The format is chosen by the file name:
//! - `.json`, `.json.gz`: a JSON list of objects; a record is named by its 1-based position in the
//!   list (`FILE: record 17`). A `.json` file whose first character is `{` is read as JSON Lines
//!   (what `datasets`' `Dataset.to_json` writes);
//! - `.parquet`: one record a row (`FILE: record 17`), columns as fields, nested lists and structs as
//!   JSON lists and objects (Parquet's record API; uncompressed, Snappy or gzip pages);
//! - a directory written by `datasets`' `Dataset.save_to_disk` (`state.json` and Arrow IPC stream
//!   files), or one `.arrow` stream file: one record a row (`FILE: record 17`, numbered across the
//!   directory's files), as [`Format::Parquet`];
//! - anything else (`.jsonl`, `.jsonl.gz`): JSON Lines, one object a line (`FILE:LINE`), blank
//!   lines skipped; `.gz` files are gunzipped.

use super::example::{kind, Origin, Position};
use anyhow::{bail, ensure, Context, Result};
use dpo_runtime::io::{bounded_lines, open_text, MAX_JSON_BYTES};
use serde_json::{Map, Value};
use std::io::{BufRead, Read};
use std::path::Path;

/// The file formats a data file may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    /// A JSON list of objects (`.json`, `.json.gz`).
    JsonList,
    Parquet,
    /// Arrow IPC streams: a `save_to_disk` directory, or one `.arrow` file.
    Arrow,
}

impl Format {
    /// The format of `path`, by its name.
    pub fn of(path: &Path) -> Format {
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if path.is_dir() || name.ends_with(".arrow") {
            Format::Arrow
        } else if name.ends_with(".parquet") {
            Format::Parquet
        } else if name.ends_with(".json") || name.ends_with(".json.gz") {
            Format::JsonList
        } else {
            Format::JsonLines
        }
    }
}

/// One record: where it is, and its fields.
pub(crate) type RawRecord = (Origin, Map<String, Value>);

fn object(v: Value, origin: &Origin) -> Result<Map<String, Value>> {
    match v {
        Value::Object(o) => Ok(o),
        v => bail!("{origin}: expected a JSON object, found {}", kind(&v)),
    }
}

fn json_lines(path: &Path, reader: impl BufRead) -> Result<Vec<RawRecord>> {
    let mut out = Vec::new();
    for (i, line) in bounded_lines(reader).enumerate() {
        let line = line.with_context(|| format!("{}:{}: reading", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let origin = Origin::new(path, i + 1, out.len(), Position::Line);
        let v: Value = serde_json::from_str(&line).with_context(|| format!("{origin}: not valid JSON"))?;
        out.push((origin.clone(), object(v, &origin)?));
    }
    Ok(out)
}

fn json_list(path: &Path) -> Result<Vec<RawRecord>> {
    let mut text = String::new();
    open_text(path)?
        .take(MAX_JSON_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("{}: reading", path.display()))?;
    ensure!(
        text.len() as u64 <= MAX_JSON_BYTES,
        "{}: a JSON document over {} GiB: write the records as JSON Lines (one per line)",
        path.display(),
        MAX_JSON_BYTES >> 30
    );
    match text.trim_start().chars().next() {
        Some('{') => {
            return json_lines(path, text.as_bytes()).map_err(|e| match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(_)) => anyhow::anyhow!(
                    "{}: expected a JSON list of objects (or JSON Lines), found one object",
                    path.display()
                ),
                _ => e,
            })
        }
        Some('[') => {}
        _ => bail!("{}: expected a JSON list of objects", path.display()),
    }
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let Value::Array(items) = v else { unreachable!("starts with '['") };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let origin = Origin::new(path, i + 1, i, Position::Record);
            Ok((origin.clone(), object(v, &origin)?))
        })
        .collect()
}

fn parquet(path: &Path) -> Result<Vec<RawRecord>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = SerializedFileReader::new(f).with_context(|| format!("{}: not a Parquet file", path.display()))?;
    let rows = reader.get_row_iter(None).with_context(|| format!("{}: reading Parquet rows", path.display()))?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let origin = Origin::new(path, i + 1, i, Position::Record);
        let row = row.with_context(|| format!("{origin}: reading the Parquet row"))?;
        out.push((origin.clone(), object(row.to_json_value(), &origin)?));
    }
    Ok(out)
}

/// The rows of a `save_to_disk` directory (its `state.json`'s `_data_files`, in order) or of one
/// Arrow IPC stream file, as JSON objects (`arrow-json`: lists and structs as JSON lists and
/// objects, nulls left out).
fn arrow(path: &Path) -> Result<Vec<RawRecord>> {
    let files = if path.is_dir() {
        let state_path = path.join("state.json");
        let state: Value = serde_json::from_str(&std::fs::read_to_string(&state_path).with_context(|| {
            format!("{}: a directory without state.json (not a `datasets` save_to_disk)", path.display())
        })?)
        .with_context(|| format!("{}: not valid JSON", state_path.display()))?;
        let files: Vec<std::path::PathBuf> = state["_data_files"]
            .as_array()
            .with_context(|| format!("{}: no `_data_files` list", state_path.display()))?
            .iter()
            .map(|f| {
                f["filename"]
                    .as_str()
                    .map(|n| path.join(n))
                    .with_context(|| format!("{}: a `_data_files` entry without `filename`", state_path.display()))
            })
            .collect::<Result<_>>()?;
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for file in files {
        let f = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
        let reader = arrow_ipc::reader::StreamReader::try_new(std::io::BufReader::new(f), None)
            .with_context(|| format!("{}: not an Arrow IPC stream", file.display()))?;
        for batch in reader {
            let batch = batch.with_context(|| format!("{}: reading an Arrow record batch", file.display()))?;
            let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
            w.write(&batch).with_context(|| format!("{}: converting Arrow rows to JSON", file.display()))?;
            w.finish()?;
            for line in w.into_inner().split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let origin = Origin::new(path, out.len() + 1, out.len(), Position::Record);
                let v: Value = serde_json::from_slice(line).with_context(|| format!("{origin}: not valid JSON"))?;
                out.push((origin.clone(), object(v, &origin)?));
            }
        }
    }
    Ok(out)
}

/// Reads every record of `path` as a JSON object, in file order ([`Format::of`] decides how).
/// A record that is not a JSON object is an error naming the file and line (or record number).
pub fn read_objects(path: &Path) -> Result<Vec<RawRecord>> {
    match Format::of(path) {
        Format::JsonLines => json_lines(path, open_text(path)?),
        Format::JsonList => json_list(path),
        Format::Parquet => parquet(path),
        Format::Arrow => arrow(path),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    /// A row of [`write_parquet`]: prompt, chosen and rejected messages `(role, content)`, scores.
    pub(crate) type ParquetRow<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)], [f64; 2]);

    /// Writes a Parquet file as `pyarrow` writes a `datasets` table with a string column `prompt`,
    /// `list<struct<content, role>>` columns `chosen` and `rejected` (optional at every level) and a
    /// double columns `score_chosen`, `score_rejected`, Snappy-compressed. `rows`: (prompt, chosen,
    /// rejected, scores),
    /// each message `(role, content)`.
    pub(crate) fn write_parquet(path: &Path, rows: &[ParquetRow]) {
        let schema = parse_message_type(
            "message schema {
                OPTIONAL BYTE_ARRAY prompt (UTF8);
                OPTIONAL group chosen (LIST) { REPEATED group list { OPTIONAL group element {
                    OPTIONAL BYTE_ARRAY content (UTF8); OPTIONAL BYTE_ARRAY role (UTF8); } } }
                OPTIONAL group rejected (LIST) { REPEATED group list { OPTIONAL group element {
                    OPTIONAL BYTE_ARRAY content (UTF8); OPTIONAL BYTE_ARRAY role (UTF8); } } }
                OPTIONAL DOUBLE score_chosen;
                OPTIONAL DOUBLE score_rejected;
            }",
        )
        .unwrap();
        let props = WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build();
        let mut w =
            SerializedFileWriter::new(std::fs::File::create(path).unwrap(), Arc::new(schema), Arc::new(props)).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let bytes = |s: &str| ByteArray::from(s);
        // prompt
        let mut c = rg.next_column().unwrap().unwrap();
        let v: Vec<ByteArray> = rows.iter().map(|r| bytes(r.0)).collect();
        c.typed::<ByteArrayType>().write_batch(&v, Some(&vec![1; rows.len()]), None).unwrap();
        c.close().unwrap();
        // chosen.content, chosen.role, rejected.content, rejected.role: definition level 4 (all
        // levels present), repetition 0 for a row's first message and 1 for the others
        for side in 0..2 {
            for field in 0..2 {
                let mut c = rg.next_column().unwrap().unwrap();
                let (mut v, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
                for r in rows {
                    let msgs = if side == 0 { r.1 } else { r.2 };
                    for (i, (role, content)) in msgs.iter().enumerate() {
                        v.push(bytes(if field == 0 { content } else { role }));
                        def.push(4);
                        rep.push(i16::from(i > 0));
                    }
                }
                c.typed::<ByteArrayType>().write_batch(&v, Some(&def), Some(&rep)).unwrap();
                c.close().unwrap();
            }
        }
        for k in 0..2 {
            let mut c = rg.next_column().unwrap().unwrap();
            let v: Vec<f64> = rows.iter().map(|r| r.3[k]).collect();
            c.typed::<DoubleType>().write_batch(&v, Some(&vec![1; rows.len()]), None).unwrap();
            c.close().unwrap();
        }
        rg.close().unwrap();
        w.close().unwrap();
    }

    #[test]
    fn parquet_rows_read_as_json_objects() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.parquet");
        write_parquet(
            &p,
            &[
                ("Q1", &[("user", "Q1"), ("assistant", "A")], &[("user", "Q1"), ("assistant", "B")], [7.5, 1.0]),
                ("Q2", &[("user", "Q2"), ("assistant", "C")], &[("user", "Q2"), ("assistant", "D")], [2.0, 3.0]),
            ],
        );
        let recs = read_objects(&p).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].0.to_string(), format!("{}: record 2", p.display()));
        assert_eq!(
            Value::Object(recs[0].1.clone()),
            serde_json::json!({"prompt": "Q1", "chosen": [{"content": "Q1", "role": "user"}, {"content": "A", "role": "assistant"}],
                "rejected": [{"content": "Q1", "role": "user"}, {"content": "B", "role": "assistant"}], "score_chosen": 7.5, "score_rejected": 1.0})
        );
        std::fs::write(&p, b"not parquet").unwrap();
        assert!(format!("{:#}", read_objects(&p).unwrap_err()).contains("t.parquet: not a Parquet file"));
    }

    #[test]
    fn json_lists_name_records_by_position() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        std::fs::write(&p, "[\n {\"a\": 1},\n {\"a\": 2},\n 3\n]").unwrap();
        let e = read_objects(&p).unwrap_err().to_string();
        assert!(e.ends_with("a.json: record 3: expected a JSON object, found a number"), "{e}");
        // `Dataset.to_json` writes JSON Lines under a .json name
        std::fs::write(&p, "{\"a\": 1}\n\n{\"a\": 2}\n").unwrap();
        let r = read_objects(&p).unwrap();
        assert_eq!((r.len(), r[1].0.line, r[1].0.position), (2, 3, Position::Line));
        std::fs::write(&p, "{\n \"a\": 1\n}").unwrap();
        assert!(read_objects(&p)
            .unwrap_err()
            .to_string()
            .ends_with("a.json: expected a JSON list of objects (or JSON Lines), found one object"));
        std::fs::write(&p, "\"x\"").unwrap();
        assert!(read_objects(&p).unwrap_err().to_string().contains("expected a JSON list of objects"));
        let p = d.path().join("a.json.gz");
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"[{\"a\": 1}]").unwrap();
        gz.finish().unwrap();
        assert_eq!(read_objects(&p).unwrap()[0].0.to_string(), format!("{}: record 1", p.display()));
    }
}
