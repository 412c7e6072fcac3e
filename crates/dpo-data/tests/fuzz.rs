//! Property tests of the data parsers of untrusted input, with a fixed number of cases so that
//! CI runs them in seconds: on arbitrary or mangled bytes each returns a value or an error, never
//! panics and never allocates without bound. Data records (JSON Lines, JSON, gzip, Parquet) and
//! chat templates.

use dpo_data::{ChatTemplate, GenerationPrompt, Message};
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
                (
                    prop::sample::select(vec![
                        "prompt",
                        "chosen",
                        "rejected",
                        "completion",
                        "label",
                        "messages",
                        "role",
                        "content",
                        "conversations",
                        "score_chosen",
                        "completions",
                        "ranking"
                    ]),
                    inner
                ),
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
        let _ = dpo_data::read(&write(d.path(), "a.jsonl", text.as_bytes()));
        let _ = dpo_data::read(&write(d.path(), "a.json", serde_json::Value::from(lines.clone()).to_string().as_bytes()));
        text.push_str(&String::from_utf8_lossy(&junk));
        let _ = dpo_data::read(&write(d.path(), "b.jsonl", text.as_bytes()));
        let _ = dpo_data::read(&write(d.path(), "c.jsonl.gz", &junk));
        let _ = dpo_data::read(&write(d.path(), "c.parquet", &[b"PAR1".as_slice(), &junk, b"PAR1"].concat()));
    }

    #[test]
    fn chat_templates(parts in prop::collection::vec(prop::sample::select(vec![
        "{% for m in messages %}", "{% endfor %}", "{{ m['content'] }}", "{{ m.role }}", "{% if loop.first %}", "{% endif %}",
        "{{ raise_exception('x') }}", "{% for i in range(100000) %}", "{{ messages[5] }}", "{% set x = x ~ x %}", "{{ (messages|tojson)[0:3] }}",
        "{% macro f() %}{{ f() }}{% endmacro %}", "{{ f() }}", "{{ 1/0 }}", "{{", "}}", "text",
    ]), 0..10)) {
        let source: String = parts.concat();
        if let Ok(t) = ChatTemplate::new(&source, Some("<s>"), Some("</s>"), None) {
            let _ = t.render(&[Message::new("user", "hi"), Message::new("assistant", "yo")], GenerationPrompt::Add);
        }
    }
}
