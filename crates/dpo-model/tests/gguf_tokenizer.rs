//! A GGUF file's byte-level BPE tokenizer under Llama 3's and Qwen2's pre-tokenizers
//! (`tokenizer.ggml.pre` = `llama-bpe`, `qwen2`): the ids transformers 5.23 gives the same
//! vocabulary and merges with the split its GGUF loader sets (fixture by
//! `scripts/oracle/gguf_pretokenizer_goldens.py`, on SmolLM2's vocabulary: digits, contractions,
//! runs of whitespace and newlines, non-Latin text, special tokens).

use candle_core::quantized::gguf_file;
use serde_json::Value;

#[test]
fn llama3_and_qwen2_pre_tokenizers_split_like_transformers() {
    let fx: Value = serde_json::from_str(include_str!("fixtures/gguf_pretokenizers.json")).unwrap();
    let path = dpo_runtime::fetch::ensure_default_model().unwrap();
    let mut f = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let texts: Vec<&str> = fx["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let plain = dpo_model::tokenizer::Tokenizer::from_gguf(&content).unwrap(); // `smollm`: GPT-2's split
    for pre in ["llama-bpe", "qwen2"] {
        let mut c =
            gguf_file::Content { metadata: content.metadata.clone(), tensor_infos: Default::default(), ..content };
        c.metadata.insert("tokenizer.ggml.pre".into(), gguf_file::Value::String(pre.into()));
        let tok = dpo_model::tokenizer::Tokenizer::from_gguf(&c).unwrap();
        for (text, want) in texts.iter().zip(fx["ids"][pre].as_array().unwrap()) {
            let want: Vec<u32> = want.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode_raw(text).unwrap(), want, "{pre}: {text:?}");
        }
        let differ = texts.iter().filter(|t| tok.encode_raw(t).unwrap() != plain.encode_raw(t).unwrap()).count();
        assert!(differ > 0, "{pre}: the split changes nothing on these texts");
    }
    // an unknown pre-tokenizer is refused by name
    let mut c = gguf_file::Content { metadata: content.metadata.clone(), tensor_infos: Default::default(), ..content };
    c.metadata.insert("tokenizer.ggml.pre".into(), gguf_file::Value::String("tekken".into()));
    let err = dpo_model::tokenizer::Tokenizer::from_gguf(&c).err().unwrap().to_string();
    assert!(err.contains("`tekken` is not supported"), "{err}");
}
