//! Hyper-parameters of a Llama-family decoder, read from a Hugging Face `config.json` or GGUF
//! metadata, and written back as a `config.json` that `transformers` loads.

use crate::ops::Llama3Scaling;
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

/// Architecture of a Llama-family model (Llama 2/3, SmolLM, Mistral; Qwen2 with q/k/v bias).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`: written back as `model_type`.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub max_position_embeddings: usize,
    /// The output projection is the token embedding (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// q, k and v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

fn get_usize(v: &Value, key: &str) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .with_context(|| format!("config.json: missing or non-integer field `{key}`"))
}

fn get_token(v: &Value, key: &str) -> Option<u32> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64().map(|x| x as u32),
        Value::Array(a) => a.first().and_then(Value::as_u64).map(|x| x as u32),
        _ => None,
    }
}

impl LlamaConfig {
    /// Parses a Hugging Face `config.json` (transformers 4.x `rope_theta` or 5.x `rope_parameters`).
    /// Errors name the missing field; unsupported architectures are refused.
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("llama").to_string();
        if !["llama", "mistral", "qwen2"].contains(&model_type.as_str()) {
            bail!("config.json: model_type `{model_type}` is not supported (llama, mistral, qwen2)");
        }
        let heads = get_usize(v, "num_attention_heads")?;
        let hidden = get_usize(v, "hidden_size")?;
        let rope = v.get("rope_parameters").or_else(|| v.get("rope_scaling")).filter(|r| !r.is_null());
        let rope_theta = v
            .get("rope_theta")
            .or_else(|| rope.and_then(|r| r.get("rope_theta")))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        let rope_scaling = match rope {
            Some(r) if r.get("rope_type").and_then(Value::as_str) == Some("llama3") => Some(Llama3Scaling {
                factor: r["factor"].as_f64().context("rope_scaling.factor")?,
                low_freq_factor: r["low_freq_factor"].as_f64().context("rope_scaling.low_freq_factor")?,
                high_freq_factor: r["high_freq_factor"].as_f64().context("rope_scaling.high_freq_factor")?,
                original_max_position_embeddings: r["original_max_position_embeddings"]
                    .as_f64()
                    .context("rope_scaling.original_max_position_embeddings")?,
            }),
            Some(r) => match r.get("rope_type").and_then(Value::as_str) {
                None | Some("default") => None,
                Some(t) => bail!("config.json: rope_type `{t}` is not supported (default, llama3)"),
            },
            None => None,
        };
        Self {
            vocab_size: get_usize(v, "vocab_size")?,
            hidden_size: hidden,
            intermediate_size: get_usize(v, "intermediate_size")?,
            num_hidden_layers: get_usize(v, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: get_usize(v, "num_key_value_heads").unwrap_or(heads),
            head_dim: v.get("head_dim").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(hidden / heads.max(1)),
            rms_norm_eps: v.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: get_usize(v, "max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            attention_bias: v
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(model_type == "qwen2"),
            bos_token_id: get_token(v, "bos_token_id"),
            eos_token_id: get_token(v, "eos_token_id"),
            pad_token_id: get_token(v, "pad_token_id"),
            model_type,
        }
        .validated()
    }

    /// `self` if its sizes make a model: at least one layer, head, key-value head and
    /// vocabulary entry, heads a multiple of key-value heads, an even head dimension (rope).
    /// Errors name the field.
    pub fn validated(self) -> Result<Self> {
        for (field, n) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            ensure!(n > 0, "`{field}` is 0: must be at least 1");
        }
        ensure!(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "`num_attention_heads` {} is not a multiple of `num_key_value_heads` {}",
            self.num_attention_heads,
            self.num_key_value_heads
        );
        ensure!(self.head_dim % 2 == 0, "`head_dim` {} is odd: rotary embeddings need an even one", self.head_dim);
        Ok(self)
    }

    /// The `config.json` of a Hugging Face model directory for this architecture (f32 weights).
    pub fn to_hf_json(&self) -> Value {
        let arch = match self.model_type.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let mut v = json!({
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": false,
            "attention_dropout": 0.0,
            "torch_dtype": "float32",
            "use_cache": true,
        });
        if let Some(s) = self.rope_scaling {
            v["rope_scaling"] = json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        for (k, t) in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id), ("pad_token_id", self.pad_token_id)] {
            if let Some(t) = t {
                v[k] = json!(t);
            }
        }
        v
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_attention_heads * d;
        let kv = self.num_key_value_heads * d;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h + bias;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_hidden_layers * layer + h + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_transformers_5_rope_parameters_and_round_trips() {
        let v = json!({"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
            "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"rms_norm_eps":1e-5,
            "rope_parameters":{"rope_theta":100000.0,"rope_type":"default"},"tie_word_embeddings":true,
            "max_position_embeddings":8192,"eos_token_id":2});
        let c = LlamaConfig::from_hf_json(&v).unwrap();
        assert_eq!((c.head_dim, c.rope_theta, c.eos_token_id), (64, 100000.0, Some(2)));
        assert_eq!(c.num_parameters(), 134_515_008);
        assert_eq!(LlamaConfig::from_hf_json(&c.to_hf_json()).unwrap(), c);
    }

    #[test]
    fn names_the_missing_field() {
        let err = LlamaConfig::from_hf_json(&json!({"hidden_size": 8})).unwrap_err().to_string();
        assert!(err.contains("num_attention_heads"), "{err}");
    }
}
