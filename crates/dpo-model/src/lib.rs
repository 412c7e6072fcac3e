//! The models dpo-rs trains and samples: the decoder families (their configurations and
//! `Features`), loading from GGUF and Hugging Face directories one tensor at a time and saving
//! Hugging Face directories, frozen compact weights, tokenizers ([`tokenizer`]), LoRA adapters in
//! PEFT's format ([`adapter`]), the trainable policy ([`policy`]) and KV-cache sampling
//! ([`sample`]).

pub mod adapter;
pub mod policy;
pub mod sample;
pub mod tokenizer;
pub use safetensors::{for_each_safetensor, read_safetensors, write_safetensors};
mod config;
mod llama;
mod load;
mod safetensors;
mod weight;

pub use config::{Family, Features, LayerAttention, LlamaConfig};
pub use llama::{
    check_weights, hf_module, tensor_names, tensor_specs, Block, EmbeddingNoise, KvCache, Linear, Llama, Proj,
    RopeTables, TensorRole, TensorSpec,
};
pub use load::{
    load, load_sequence_classifier, load_tokenizer, load_with, read_hf_config, save_hf_dir, save_hf_dir_as,
    write_hf_files, LoadOptions, Loaded,
};
pub use weight::Weight;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// Random weights for `config` from a seeded generator (candle's CPU RNG cannot be seeded):
/// matrices uniform in `[-s, s]` with `s = sqrt(3) * 0.02 * scale`, norm weights `1 +- 0.1`
/// (`0 +- 0.1` where the family's norms multiply by `1 + w`: Gemma), biases small. For tests and
/// toy models; `dtype` f32 or f64.
pub fn random_tensors(config: &LlamaConfig, seed: u64, scale: f64, dtype: DType) -> Result<HashMap<String, Tensor>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let s = 3f64.sqrt() * 0.02 * scale;
    let center = if config.features.norm_plus_one { 0.0 } else { 1.0 };
    let mut out = HashMap::new();
    for spec in tensor_specs(config) {
        let n: usize = spec.shape.iter().product();
        let norm = spec.role == TensorRole::Norm;
        let v: Vec<f64> =
            (0..n).map(|_| if norm { center + rng.random_range(-0.1..0.1) } else { rng.random_range(-s..s) }).collect();
        out.insert(spec.name, Tensor::from_vec(v, spec.shape, &Device::Cpu)?.to_dtype(dtype)?);
    }
    Ok(out)
}
