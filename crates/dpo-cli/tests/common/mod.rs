//! Helpers shared by the CLI tests.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn shared() -> PathBuf {
    std::env::var_os("DPO_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

pub fn pairs8() -> PathBuf {
    shared().join("tools/oracle/golden/pairs8.jsonl")
}

/// A Hugging Face directory holding a tiny random Llama with SmolLM2's tokenizer.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let loaded = dpo::model::load(&dpo::fetch::ensure_default_model().unwrap()).unwrap();
    let mut c = loaded.config.clone();
    (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) =
        (16, 32, 2, 4, 2, 4);
    let t = dpo::model::random_tensors(&c, 3, 5.0, dpo::candle_core::DType::F32).unwrap();
    let model = dpo::model::Llama::from_tensors(c, &t).unwrap();
    let out = dir.join("tiny");
    dpo::model::save_hf_dir(&model, &loaded.tokenizer, &out).unwrap();
    out
}

pub fn dpo(home: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_dpo")).env("DPO_HOME", home).args(args).output().unwrap();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

pub fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

