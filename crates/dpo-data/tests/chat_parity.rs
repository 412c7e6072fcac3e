//! Conversational data: the chat template rendered and tokenized as TRL 1.16 does
//! (`apply_chat_template`, no special tokens added, no EOS appended), checked against the oracle's
//! golden `pairs8_chat` records (`../shared/tools/oracle/golden/`, `trl_tokenize` with
//! `conversational=True` on `golden.py`'s `to_chat` of `pairs8.jsonl`).

use dpo_data::{read_with, tokenize_all, ExampleKind, ReadOptions, TokenizeSettings};
use serde_json::{json, Value};
use std::path::PathBuf;

fn shared() -> PathBuf {
    let p = std::env::var_os("DPO_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    assert!(p.join("tools/oracle/golden").is_dir(), "the shared data is not at {} (set DPO_SHARED)", p.display());
    p
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The default model's tokenizer (and chat template) from its GGUF metadata, without the weights.
fn tokenizer() -> dpo_model::tokenizer::Tokenizer {
    let path = dpo_runtime::fetch::ensure_default_model().unwrap();
    let mut f = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    dpo_model::tokenizer::Tokenizer::from_gguf(&content).unwrap()
}

#[test]
fn conversational_pairs_tokenize_like_trl() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("tools/oracle/golden/golden_smollm2_135m.json")).unwrap(),
    )
    .unwrap();
    let ds = &golden["datasets"][2];
    assert_eq!(ds["name"], "pairs8_chat");
    let want = ds["records"].as_array().unwrap();

    // golden.py's to_chat
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs8_chat.jsonl");
    let plain = std::fs::read_to_string(shared().join("tools/oracle/golden/pairs8.jsonl")).unwrap();
    let lines: Vec<String> = plain
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            json!({"prompt": [{"role": "user", "content": r["prompt"]}],
                   "chosen": [{"role": "assistant", "content": r["chosen"]}],
                   "rejected": [{"role": "assistant", "content": r["rejected"]}]})
            .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();

    let tok = tokenizer();
    assert!(tok.chat_template.is_some(), "the GGUF file carries tokenizer.chat_template");
    let (recs, report) = read_with(&data, &ReadOptions::for_tokenizer(&tok).unwrap()).unwrap();
    assert_eq!((report.records, report.conversational, report.prompt_not_prefix), (want.len(), want.len(), 0));
    // the rendered text is transformers' apply_chat_template's
    for (r, g) in recs.iter().zip(want) {
        let ex = r.example.as_ref().unwrap();
        assert_eq!(ex.prompt, g["prompt_text"].as_str().unwrap(), "record {}", r.origin.index);
        let rendered = ex.rendered.as_ref().unwrap();
        assert_eq!(rendered[0], g["prompt_chosen_text"].as_str().unwrap());
        assert_eq!(rendered[1], g["prompt_rejected_text"].as_str().unwrap());
    }
    // and the token ids are TRL's
    let set = tokenize_all(&tok, &recs, TokenizeSettings::default()).unwrap();
    assert_eq!(set.examples.len(), want.len());
    for (ex, g) in set.examples.iter().zip(want) {
        assert_eq!(ex.index, g["index"].as_u64().unwrap() as usize);
        assert_eq!(ex.prompt, ids(&g["prompt_ids"]), "prompt of record {}", ex.index);
        assert_eq!(ex.completions[0], ids(&g["chosen_ids"]), "chosen of record {}", ex.index);
        assert_eq!(ex.completions[1], ids(&g["rejected_ids"]), "rejected of record {}", ex.index);
        assert_eq!(ex.kind, ExampleKind::Pair { scores: None });
    }
}
