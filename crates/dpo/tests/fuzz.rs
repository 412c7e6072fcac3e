//! Property tests of every parser of untrusted input, with a fixed number of cases so that CI
//! runs them in seconds: on arbitrary or mangled bytes each returns a value or an error, never
//! panics and never allocates without bound. Data records (JSON Lines, JSON), reference
//! log-prob lines, safetensors headers, GGUF headers and chat templates.

use dpo::data::{ChatTemplate, Message};
use proptest::prelude::*;
use std::path::Path;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A JSON value of records' field names and shapes, mangled: fields dropped, types swapped,
/// deep nesting.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|x| serde_json::json!(x)),
        "[a-z <|>]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::vec(
                (prop::sample::select(vec!["prompt", "chosen", "rejected", "completion", "label", "messages", "role", "content", "conversations", "score_chosen", "completions", "ranking"]), inner),
                0..5
            )
            .prop_map(|kv| serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn record_files(lines in prop::collection::vec(json_value(), 0..6), junk in prop::collection::vec(any::<u8>(), 0..64)) {
        let d = tempfile::tempdir().unwrap();
        let mut text: String = lines.iter().map(|v| format!("{v}\n")).collect();
        let _ = dpo::data::read(&write(d.path(), "a.jsonl", text.as_bytes()));
        let _ = dpo::data::read(&write(d.path(), "a.json", serde_json::Value::from(lines.clone()).to_string().as_bytes()));
        text.push_str(&String::from_utf8_lossy(&junk));
        let _ = dpo::data::read(&write(d.path(), "b.jsonl", text.as_bytes()));
        let _ = dpo::data::read(&write(d.path(), "c.jsonl.gz", &junk));
        let _ = dpo::data::read(&write(d.path(), "c.parquet", &[b"PAR1".as_slice(), &junk, b"PAR1"].concat()));
    }

    #[test]
    fn reference_log_prob_lines(v in json_value(), s in "\\PC{0,80}") {
        let _ = dpo::reference::file::parse_line("f:1", &v.to_string());
        let _ = dpo::reference::file::parse_line("f:1", &s);
    }

    #[test]
    fn safetensors_headers(
        entries in prop::collection::vec(("[a-z.]{1,8}", prop::sample::select(vec!["F32", "F16", "BF16", "I64", "U8", ""]), prop::collection::vec(0usize..1 << 40, 0..4), any::<u64>(), any::<u64>()), 0..4),
        size in prop_oneof![Just(None), any::<u64>().prop_map(Some)],
        data in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let header: serde_json::Map<String, serde_json::Value> = entries
            .into_iter()
            .map(|(n, dt, shape, a, b)| (n, serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [a % 512, b % 512]})))
            .collect();
        let h = serde_json::Value::Object(header).to_string();
        let n = size.unwrap_or(h.len() as u64);
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "m.safetensors", &[&n.to_le_bytes()[..], h.as_bytes(), &data].concat());
        let _ = dpo::model::for_each_safetensor(&p, |_, _| Ok(()));
    }

    #[test]
    fn gguf_headers(version in 1u32..5, counts in (any::<u64>(), any::<u64>()), body in prop::collection::vec(any::<u8>(), 0..512)) {
        let bytes = [b"GGUF".as_slice(), &version.to_le_bytes(), &(counts.0 % 64).to_le_bytes(), &(counts.1 % 64).to_le_bytes(), &body].concat();
        let d = tempfile::tempdir().unwrap();
        let _ = dpo::model::load(&write(d.path(), "m.gguf", &bytes));
    }

    #[test]
    fn chat_templates(parts in prop::collection::vec(prop::sample::select(vec![
        "{% for m in messages %}", "{% endfor %}", "{{ m['content'] }}", "{{ m.role }}", "{% if loop.first %}", "{% endif %}",
        "{{ raise_exception('x') }}", "{% for i in range(100000) %}", "{{ messages[5] }}", "{% set x = x ~ x %}", "{{ (messages|tojson)[0:3] }}",
        "{% macro f() %}{{ f() }}{% endmacro %}", "{{ f() }}", "{{ 1/0 }}", "{{", "}}", "text",
    ]), 0..10)) {
        let source: String = parts.concat();
        if let Ok(t) = ChatTemplate::new(&source, Some("<s>"), Some("</s>"), None) {
            let _ = t.render(&[Message::new("user", "hi"), Message::new("assistant", "yo")], true);
        }
    }
}
