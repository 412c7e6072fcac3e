//! Loading a model from a GGUF file or a Hugging Face directory, and saving Hugging Face directories.

use super::{Llama, LlamaConfig};
use crate::io::write_dir_atomic;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A model's configuration, f32 tensors (Hugging Face names) and tokenizer.
pub struct Loaded {
    pub config: LlamaConfig,
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
}

impl Loaded {
    /// The model as inference-only tensors.
    pub fn model(&self) -> Result<Llama> {
        Llama::from_tensors(self.config.clone(), &self.tensors)
    }
}

/// Loads `path`: a `.gguf` file, or a Hugging Face model directory (`config.json`,
/// `model.safetensors` or `model.safetensors.index.json`, `tokenizer.json`). Weights become f32.
pub fn load(path: &Path) -> Result<Loaded> {
    if !path.exists() {
        bail!("model {} does not exist", path.display())
    } else if path.is_dir() {
        load_hf_dir(path)
    } else if path.extension().is_some_and(|e| e == "gguf") {
        load_gguf(path)
    } else {
        bail!("model {}: expected a .gguf file or a Hugging Face model directory", path.display())
    }
}

/// The tokenizer of the model at `path` (a `.gguf` file or a Hugging Face directory), without
/// reading its weights.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        Tokenizer::from_hf_dir(path)
    } else if path.extension().is_some_and(|e| e == "gguf") {
        let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let content = gguf_file::Content::read(&mut f).with_context(|| format!("{}: not a GGUF file", path.display()))?;
        Tokenizer::from_gguf(&content)
    } else {
        bail!("model {}: expected a .gguf file or a Hugging Face model directory", path.display())
    }
}

fn load_hf_dir(dir: &Path) -> Result<Loaded> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", cfg_path.display()))?;
    let config = LlamaConfig::from_hf_json(&v).with_context(|| format!("{}", cfg_path.display()))?;
    let files: Vec<std::path::PathBuf> = if dir.join("model.safetensors").exists() {
        vec![dir.join("model.safetensors")]
    } else {
        let idx = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&idx)
            .with_context(|| format!("{}: neither model.safetensors nor model.safetensors.index.json", dir.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", idx.display()))?;
        let map = v["weight_map"].as_object().with_context(|| format!("{}: no weight_map", idx.display()))?;
        let mut f: Vec<_> = map.values().filter_map(|x| x.as_str()).map(|s| dir.join(s)).collect();
        f.sort();
        f.dedup();
        f
    };
    let mut tensors = HashMap::new();
    for f in files {
        let t = candle_core::safetensors::load(&f, &Device::Cpu).with_context(|| format!("reading {}", f.display()))?;
        for (name, t) in t {
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    Ok(Loaded { config, tensors, tokenizer })
}

fn md_u32(md: &HashMap<String, gguf_file::Value>, key: &str) -> Result<usize> {
    Ok(md.get(key).with_context(|| format!("GGUF metadata has no `{key}`"))?.to_u32()? as usize)
}

fn md_f64(md: &HashMap<String, gguf_file::Value>, key: &str) -> Option<f64> {
    md.get(key).and_then(|v| v.to_f32().ok()).map(f64::from)
}

/// GGUF stores the q and k rows of each head interleaved for llama.cpp's rope (`permute` in
/// llama.cpp's `convert_hf_to_gguf.py`); this undoes it: row `h*d + 2i + j` goes back to `h*d + j*d/2 + i`.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    Ok(w.reshape((heads, out / heads / 2, 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))?)
}

fn load_gguf(path: &Path) -> Result<Loaded> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = gguf_file::Content::read(&mut f).with_context(|| format!("{}: not a GGUF file", path.display()))?;
    let md = &content.metadata;
    let arch = md.get("general.architecture").context("GGUF metadata has no general.architecture")?.to_string()?.clone();
    if arch != "llama" && arch != "qwen2" {
        bail!("{}: GGUF architecture `{arch}` is not supported (llama, qwen2)", path.display());
    }
    let k = |s: &str| format!("{arch}.{s}");
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let heads = md_u32(md, &k("attention.head_count"))?;
    let hidden = md_u32(md, &k("embedding_length"))?;
    let tied = !content.tensor_infos.contains_key("output.weight");
    let config = LlamaConfig {
        model_type: if arch == "qwen2" { "qwen2".into() } else { "llama".into() },
        vocab_size: md_u32(md, &k("vocab_size")).unwrap_or(tokenizer.vocab_size()),
        hidden_size: hidden,
        intermediate_size: md_u32(md, &k("feed_forward_length"))?,
        num_hidden_layers: md_u32(md, &k("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: md_u32(md, &k("attention.head_count_kv")).unwrap_or(heads),
        head_dim: md_u32(md, &k("rope.dimension_count")).unwrap_or(hidden / heads),
        rms_norm_eps: md_f64(md, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        rope_theta: md_f64(md, &k("rope.freq_base")).unwrap_or(10_000.0),
        rope_scaling: None,
        max_position_embeddings: md_u32(md, &k("context_length")).unwrap_or(4096),
        tie_word_embeddings: tied,
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        bos_token_id: md.get("tokenizer.ggml.bos_token_id").and_then(|v| v.to_u32().ok()),
        eos_token_id: Some(tokenizer.eos_id),
        pad_token_id: md.get("tokenizer.ggml.padding_token_id").and_then(|v| v.to_u32().ok()),
    };
    let mut tensors = HashMap::new();
    for (gname, _) in content.tensor_infos.iter() {
        let name = match hf_name(gname) {
            Some(n) => n,
            None => continue, // e.g. rope frequency tables
        };
        let t = content.tensor(&mut f, gname, &Device::Cpu)?.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
        let t = match (arch.as_str(), name.rsplit('.').nth(1)) {
            ("llama", Some("q_proj")) if name.ends_with("weight") => unpermute(&t, heads)?,
            ("llama", Some("k_proj")) if name.ends_with("weight") => unpermute(&t, config.num_key_value_heads)?,
            _ => t,
        };
        tensors.insert(name, t);
    }
    Ok(Loaded { config, tensors, tokenizer })
}

/// The Hugging Face name of a GGUF tensor.
fn hf_name(g: &str) -> Option<String> {
    Some(match g {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = g.strip_prefix("blk.")?;
            let (i, rest) = rest.split_once('.')?;
            let (part, kind) = rest.rsplit_once('.')?;
            let m = match part {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{i}.{m}.{kind}")
        }
    })
}

/// Writes `model` as a Hugging Face model directory (`config.json`, `model.safetensors` in f32,
/// `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`) that `transformers`
/// loads. The directory is filled under a temporary name and renamed, so it is never half-written.
pub fn save_hf_dir(model: &Llama, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    write_dir_atomic(dir, |tmp| {
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&model.config.to_hf_json())?)?;
        let tensors: Vec<(String, Tensor)> = model
            .named_tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.contiguous()?)))
            .collect::<Result<_>>()?;
        let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        safetensors::tensor::serialize_to_file(tensors, meta, &tmp.join("model.safetensors"))?;
        tokenizer.save(tmp)?;
        let mut gen = serde_json::json!({"eos_token_id": tokenizer.eos_id});
        if let Some(b) = model.config.bos_token_id {
            gen["bos_token_id"] = b.into();
        }
        std::fs::write(tmp.join("generation_config.json"), serde_json::to_string_pretty(&gen)?)?;
        Ok(())
    })
}
