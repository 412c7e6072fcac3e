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
    let loaded = dpo_model::load(&dpo_runtime::fetch::ensure_default_model().unwrap()).unwrap();
    let mut c = loaded.config.clone();
    (
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    ) = (16, 32, 2, 4, 2, 4);
    let t = dpo_model::random_tensors(&c, 3, 5.0, candle_core::DType::F32).unwrap();
    let model = dpo_model::Llama::from_tensors(c, &t).unwrap();
    let out = dir.join("tiny");
    dpo_model::save_hf_dir(&model, &loaded.tokenizer, &out).unwrap();
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

// ---- models rebuilt from the fixtures of scripts/oracle/family_goldens.py and reward_model_goldens.py

const M64: u64 = u64::MAX;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & M64
}

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// The fixture's weights: `center + scale * u(name, i)` in f64, rounded to f32, with
/// `u = (splitmix64(fnv1a64(name) ^ i) >> 11) * 2^-53 * 2 - 1` (see the script).
pub fn weights(fx: &Value) -> Vec<(String, dpo_model::Weight)> {
    fx["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap().to_string();
            let shape: Vec<usize> =
                t["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            let (center, scale) = (t["center"].as_f64().unwrap(), t["scale"].as_f64().unwrap());
            let h = fnv1a64(&name);
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n as u64)
                .map(|i| {
                    let u = (splitmix64(h ^ i) >> 11) as f64 * 2f64.powi(-53) * 2.0 - 1.0;
                    (center + scale * u) as f32
                })
                .collect();
            for (k, want) in t["first"].as_array().unwrap().iter().enumerate() {
                assert_eq!(v[k] as f64, want.as_f64().unwrap(), "{name}[{k}]: the fill differs from the script's");
            }
            (
                name,
                dpo_model::Weight::Tensor(candle_core::Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()),
            )
        })
        .collect()
}

/// A Hugging Face directory as transformers saved the fixture's model, with SmolLM2's tokenizer.
pub fn model_dir(fx: &Value, tokenizer: &dpo_model::tokenizer::Tokenizer, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&fx["config"]).unwrap()).unwrap();
    if !fx["generation_config"].is_null() {
        std::fs::write(dir.join("generation_config.json"), fx["generation_config"].to_string()).unwrap();
    }
    dpo_model::write_safetensors(&dir.join("model.safetensors"), &weights(fx), ::safetensors::Dtype::F32).unwrap();
    tokenizer.save(dir).unwrap();
    dir.to_path_buf()
}
