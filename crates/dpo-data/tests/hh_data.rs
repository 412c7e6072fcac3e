//! The Anthropic HH transcript layout, read from the real files in `../shared/data`.

use serde_json::Value;
use std::path::PathBuf;

fn shared() -> PathBuf {
    std::env::var_os("DPO_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

#[test]
fn hh_transcripts_split_like_the_oracle_and_disagreeing_pairs_are_counted() {
    let (recs, report) = dpo_data::read(&shared().join("data/hh-rlhf/harmless-base/test.jsonl.gz")).unwrap();
    assert_eq!(report.records, 2312);
    let golden = std::fs::read_to_string(shared().join("tools/oracle/golden/hh_harmless32.jsonl")).unwrap();
    let ours = recs.iter().filter_map(|r| r.example.as_ref().ok());
    for (line, ex) in golden.lines().zip(ours) {
        let g: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            ex,
            &dpo_data::Example::pair(
                g["prompt"].as_str().unwrap(),
                g["chosen"].as_str().unwrap(),
                g["rejected"].as_str().unwrap()
            )
        );
    }
    // helpful-base: 9 of 2,354 pairs disagree before the last "\n\nAssistant:" (data README)
    let (recs, report) = dpo_data::read(&shared().join("data/hh-rlhf/helpful-base/test.jsonl.gz")).unwrap();
    assert_eq!((report.records, report.skipped_disagreeing), (2354, 9));
    let bad = recs.iter().find(|r| r.example.is_err()).unwrap();
    assert!(bad.origin.line > 0 && bad.origin.file.ends_with("test.jsonl.gz"));
}
