//! Property tests of the reference log-prob file's parser (`dpo logps` lines, untrusted input),
//! with a fixed number of cases: on arbitrary or mangled lines it returns a value or an error,
//! never panics.

use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() }
}

/// A value of a log-prob line's fields, of any JSON type (numbers huge, negative, fractional).
fn field_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|x| serde_json::json!(x)),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z0-9 ]{0,8}".prop_map(serde_json::Value::from),
        prop::collection::vec(any::<f64>().prop_map(|x| serde_json::json!(x)), 0..4).prop_map(serde_json::Value::from),
    ]
}

/// A log-prob line's fields, some dropped, each of any type.
fn line() -> impl Strategy<Value = serde_json::Value> {
    let keys =
        ["index", "chosen_logps", "rejected_logps", "chosen_tokens", "rejected_tokens", "logps", "tokens", "skipped"];
    prop::collection::vec((prop::sample::select(keys.to_vec()), field_value()), 0..8)
        .prop_map(|kv| serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn reference_log_prob_lines(v in line(), s in "\\PC{0,80}") {
        let _ = dpo_train::reference::file::parse_line("f:1", &v.to_string());
        let _ = dpo_train::reference::file::parse_line("f:1", &s);
    }
}
