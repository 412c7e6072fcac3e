//! Loading any size: a sharded f32 Hugging Face model read into a q4_0 base takes, at its peak,
//! the loaded model plus about one tensor in f32 (tensors are read and converted one at a time).
//! Alone in its test binary, so that the process's peak RSS is this test's.

use candle_core::{Device, Tensor};
use dpo_kernels::qmatmul::BaseDType;
use dpo_model::{load_with, tensor_specs, LlamaConfig, LoadOptions};

/// A field of /proc/self/status in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn loading_takes_the_model_plus_one_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({"model_type": "llama", "vocab_size": 8192, "hidden_size": 512, "intermediate_size": 2048,
        "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64, "tie_word_embeddings": true});
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let config = LlamaConfig::from_hf_json(&cfg).unwrap();
    dpo_model::load_tokenizer(&dpo_runtime::fetch::ensure_default_model().unwrap()).unwrap().save(dir.path()).unwrap();
    // one shard per tensor, written one at a time
    let mut map = serde_json::Map::new();
    let (mut params, mut largest) = (0usize, 0usize);
    for (i, s) in tensor_specs(&config).iter().enumerate() {
        let n: usize = s.shape.iter().product();
        let v: Vec<f32> = (0..n).map(|j| ((j * 7919 + i) % 1000) as f32 * 1e-4 - 0.05).collect();
        let file = format!("shard-{i:03}.safetensors");
        let t = Tensor::from_vec(v, s.shape.as_slice(), &Device::Cpu).unwrap();
        safetensors::tensor::serialize_to_file([(s.name.clone(), t)], None, &dir.path().join(&file)).unwrap();
        map.insert(s.name.clone(), file.into());
        params += n;
        largest = largest.max(n);
    }
    std::fs::write(dir.path().join("model.safetensors.index.json"), serde_json::json!({"weight_map": map}).to_string())
        .unwrap();

    // Reset the peak RSS (Linux: writing 5 to clear_refs), then load.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_bytes("VmRSS:");
    let loaded = load_with(dir.path(), &LoadOptions { base_dtype: BaseDType::Q4_0, adapters: vec![] }).unwrap();
    let peak = status_bytes("VmHWM:") - before;
    let after = status_bytes("VmRSS:") - before;
    // The tokenizer is part of the loaded model: measure what it alone takes.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let t0 = status_bytes("VmRSS:");
    let tok = dpo_model::load_tokenizer(dir.path()).unwrap();
    let tokenizer = status_bytes("VmHWM:") - t0;
    drop(tok);
    let kept: usize = loaded.tensors.values().map(|w| w.bytes()).sum();
    let file_bytes = params * 4;
    let budget = kept + tokenizer as usize + largest * 4 + (16 << 20);
    println!(
        "{params} parameters ({:.0} MB in f32 on disk), loaded as q4_0: {:.1} MB, tokenizer {:.1} MB, RSS after loading +{:.1} MB; largest tensor {:.1} MB in f32; peak RSS while loading +{:.1} MB (budget: model + tokenizer + one tensor + 16 MB = {:.1} MB)",
        file_bytes as f64 / 1e6,
        kept as f64 / 1e6,
        tokenizer as f64 / 1e6,
        after as f64 / 1e6,
        largest as f64 * 4.0 / 1e6,
        peak as f64 / 1e6,
        budget as f64 / 1e6
    );
    assert!(
        (peak as usize) < budget,
        "peak RSS while loading grew by {peak} bytes: more than the model ({kept}) plus one f32 tensor ({})",
        largest * 4
    );
    assert!((peak as usize) < file_bytes / 2, "the loader must not hold the f32 model");
}
