//! The policy/reference model: architecture, loading (GGUF, Hugging Face) and saving.

mod config;
mod llama;
mod load;

pub use config::LlamaConfig;
pub use llama::{tensor_names, Block, KvCache, Linear, Llama};
pub use load::{load, save_hf_dir, Loaded};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// Random weights for `config` from a seeded generator (candle's CPU RNG cannot be seeded):
/// matrices uniform in `[-s, s]` with `s = sqrt(3) * 0.02 * scale`, norm weights `1 +- 0.1`,
/// biases small. For tests and toy models; `dtype` f32 or f64.
pub fn random_tensors(config: &LlamaConfig, seed: u64, scale: f64, dtype: DType) -> Result<HashMap<String, Tensor>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (h, d, i) = (config.hidden_size, config.head_dim, config.intermediate_size);
    let (q, kv) = (config.num_attention_heads * d, config.num_key_value_heads * d);
    let shape = |name: &str| -> Vec<usize> {
        let leaf = name.rsplit('.').nth(1).unwrap_or("");
        let bias = name.ends_with(".bias");
        match (leaf, bias) {
            ("embed_tokens", _) | ("lm_head", _) => vec![config.vocab_size, h],
            ("q_proj", false) => vec![q, h],
            ("k_proj", false) | ("v_proj", false) => vec![kv, h],
            ("q_proj", true) => vec![q],
            ("k_proj", true) | ("v_proj", true) => vec![kv],
            ("o_proj", _) => vec![h, q],
            ("gate_proj", _) | ("up_proj", _) => vec![i, h],
            ("down_proj", _) => vec![h, i],
            _ => vec![h], // norms
        }
    };
    let s = 3f64.sqrt() * 0.02 * scale;
    let mut out = HashMap::new();
    for name in tensor_names(config) {
        let dims = shape(&name);
        let n: usize = dims.iter().product();
        let norm = name.ends_with("norm.weight");
        let v: Vec<f64> = (0..n)
            .map(|_| if norm { 1.0 + rng.random_range(-0.1..0.1) } else { rng.random_range(-s..s) })
            .collect();
        out.insert(name, Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)?);
    }
    Ok(out)
}
