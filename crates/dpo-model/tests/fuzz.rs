//! Property tests of the model files' parsers of untrusted input, with a fixed number of cases:
//! on arbitrary or mangled bytes each returns a value or an error, never panics and never
//! allocates without bound. safetensors headers and GGUF headers.

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

proptest! {
    #![proptest_config(config())]

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
        let _ = dpo_model::for_each_safetensor(&p, |_, _| Ok(()));
    }

    #[test]
    fn gguf_headers(version in 1u32..5, counts in (any::<u64>(), any::<u64>()), body in prop::collection::vec(any::<u8>(), 0..512)) {
        let bytes = [b"GGUF".as_slice(), &version.to_le_bytes(), &(counts.0 % 64).to_le_bytes(), &(counts.1 % 64).to_le_bytes(), &body].concat();
        let d = tempfile::tempdir().unwrap();
        let _ = dpo_model::load(&write(d.path(), "m.gguf", &bytes));
    }
}
