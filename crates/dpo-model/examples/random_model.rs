//! Writes a random-initialised Hugging Face model directory for a published config, for speed
//! and memory measurements at sizes no real checkpoint is at hand for (scripts/scale/).
//!
//!     cargo run --release -p dpo --example random_model -- CONFIG.json OUT_DIR [bf16|f32] [SEED]
//!
//! `config.json` is the given config; the weights (`model-0000k-of-0000n.safetensors` shards of
//! at most 2 GiB and `model.safetensors.index.json`) are drawn tensor by tensor
//! ([`dpo_model::random_tensors`]' distribution: matrices uniform in +-sqrt(3)*0.02, norms
//! 1 +- 0.1), so memory stays at one shard; the tokenizer is SmolLM2's (the default model's).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use dpo_model::{tensor_specs, LlamaConfig, TensorRole};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::PathBuf;

const SHARD_BYTES: usize = 2 << 30;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!("usage: random_model CONFIG.json OUT_DIR [bf16|f32] [SEED]");
    }
    let (config_path, out) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let dtype = match args.get(3).map(String::as_str).unwrap_or("bf16") {
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        d => bail!("dtype {d}: bf16 or f32"),
    };
    let seed: u64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let config = LlamaConfig::from_hf_json(&v)?;
    std::fs::create_dir_all(&out)?;
    let mut hf = v.clone();
    hf["torch_dtype"] = if dtype == DType::BF16 { "bfloat16" } else { "float32" }.into();
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&hf)?)?;
    dpo_model::load_tokenizer(&dpo_runtime::fetch::ensure_default_model()?)?.save(&out)?;

    // Shards: consecutive tensors up to SHARD_BYTES each.
    let specs = tensor_specs(&config);
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut bytes = 0;
    for (i, s) in specs.iter().enumerate() {
        let b = s.shape.iter().product::<usize>() * dtype.size_in_bytes();
        if bytes + b > SHARD_BYTES && !shards.last().unwrap().is_empty() {
            shards.push(Vec::new());
            bytes = 0;
        }
        shards.last_mut().unwrap().push(i);
        bytes += b;
    }
    let n = shards.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let scale = 3f32.sqrt() * 0.02;
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (k, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        let mut tensors = Vec::new();
        for &i in shard {
            let s = &specs[i];
            let count: usize = s.shape.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|_| {
                    if s.role == TensorRole::Norm {
                        1.0 + rng.random_range(-0.1f32..0.1)
                    } else {
                        rng.random_range(-scale..scale)
                    }
                })
                .collect();
            tensors
                .push((s.name.clone(), Tensor::from_vec(values, s.shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?));
            weight_map.insert(s.name.clone(), file.clone().into());
            total += count;
        }
        let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        safetensors::tensor::serialize_to_file(tensors, meta, &out.join(&file))?;
        eprintln!("wrote {file}");
    }
    let index =
        serde_json::json!({"metadata": {"total_size": total * dtype.size_in_bytes()}, "weight_map": weight_map});
    std::fs::write(out.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index)?)?;
    println!("{}: {total} parameters, {n} shard(s), {dtype:?}", out.display());
    Ok(())
}
