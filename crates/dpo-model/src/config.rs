//! Hyper-parameters of a decoder of the Llama family (Llama 2/3, SmolLM, Mistral, Qwen2/2.5/3,
//! Gemma 1/2/3, Phi-3), read from a Hugging Face `config.json` or GGUF metadata, and written back
//! as a `config.json` that `transformers` loads.
//!
//! What a family changes in the Llama decoder is a handful of named [`Features`]; `model_type`
//! decides them (as transformers' `modeling_<family>.py` do). A config that asks for something
//! the model does not compute (mixture-of-experts, a vision tower, an unknown rope type, ...) is
//! refused naming it: never wrong numbers.

use anyhow::{bail, ensure, Context, Result};
use dpo_kernels::{Activation, Llama3Scaling, RopeParams, RopeScaling};
use serde_json::{json, Map, Value};

/// The architecture families we load, by their transformers `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma,
    Gemma2,
    Gemma3,
    Phi3,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma,
        Family::Gemma2,
        Family::Gemma3,
        Family::Phi3,
    ];

    /// transformers' `model_type` (`gemma3_text`: Gemma 3's text-only decoder).
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma => "gemma",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
            Family::Phi3 => "phi3",
        }
    }

    /// The `architectures` entry of its `config.json`.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma => "GemmaForCausalLM",
            Family::Gemma2 => "Gemma2ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
        }
    }

    pub fn from_model_type(t: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == t)
    }

    /// Gemma's RMSNorm multiplies by `1 + weight` and its embeddings are scaled by `sqrt(hidden)`.
    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma | Family::Gemma2 | Family::Gemma3)
    }
}

/// Attention of one decoder layer: over the whole prefix, or over the last `sliding_window` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerAttention {
    Full,
    Sliding,
}

/// What a family changes in the Llama decoder; `Features::default()` is Llama.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Features {
    /// The MLP's gate activation: SiLU (SwiGLU) or tanh-approximated GELU (Gemma's GeGLU).
    pub hidden_act: Activation,
    /// q, k and v projections carry a bias (Qwen2; Llama, Qwen3 and Gemma with `attention_bias`).
    pub qkv_bias: bool,
    /// The output projection carries a bias (`attention_bias` in Llama, Mistral, Qwen3, Gemma).
    pub o_bias: bool,
    /// gate, up and down projections carry a bias (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// RMSNorm of each query and key head before rotary (Qwen3, Gemma 3: `q_norm`, `k_norm`;
    /// "QK-norm", Dehghani et al. 2023).
    pub qk_norm: bool,
    /// RMSNorm multiplies by `1 + weight` (Gemma; Gemma Team 2024, transformers' `GemmaRMSNorm`).
    pub norm_plus_one: bool,
    /// Embeddings are multiplied by `sqrt(hidden_size)`, rounded to the model's dtype (Gemma).
    pub scale_embeddings: bool,
    /// Norms after attention and after the MLP too (Gemma 2/3): `post_attention_layernorm`
    /// normalises the attention output, `pre_feedforward_layernorm` the MLP input and
    /// `post_feedforward_layernorm` its output.
    pub sandwich_norms: bool,
    /// `cap * tanh(scores / cap)` on the attention scores (Gemma 2; Gemma Team 2024b, sec. 2).
    pub attn_logit_softcapping: Option<f64>,
    /// `cap * tanh(logits / cap)` on the output logits (Gemma 2/3).
    pub final_logit_softcapping: Option<f64>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5` instead of `head_dim^-0.5` (Gemma 2/3).
    pub query_pre_attn_scalar: Option<f64>,
    /// Keys a sliding layer sees: query `i` sees key `j` when `0 <= i - j < sliding_window`.
    pub sliding_window: Option<usize>,
    /// Each layer's attention; empty: every layer full.
    pub layer_types: Vec<LayerAttention>,
    /// Rotary parameters of the sliding layers when they differ from the full layers' (Gemma 3's
    /// local base frequency).
    pub rope_local: Option<RopeParams>,
}

/// Architecture of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// Rotary position embedding (of the full-attention layers).
    pub rope: RopeParams,
    pub max_position_embeddings: usize,
    /// The output projection is the token embedding (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    pub features: Features,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl Default for LlamaConfig {
    /// A tiny Llama (vocabulary 32, hidden 8, one layer of 2 heads): a base for tests.
    fn default() -> Self {
        Self {
            family: Family::Llama,
            vocab_size: 32,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope: RopeParams { theta: 10_000.0, scaling: RopeScaling::Default },
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            features: Features::default(),
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
        }
    }
}

fn get_usize(v: &Value, key: &str) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .with_context(|| format!("config.json: missing or non-integer field `{key}`"))
}

fn opt_f64(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// `v[key]` as a number; `default` when the key is absent, `None` when it is null.
fn or_default(v: &Value, key: &str, default: Option<f64>) -> Option<f64> {
    match v.get(key) {
        None => default,
        Some(x) => x.as_f64(),
    }
}

fn get_token(v: &Value, key: &str) -> Option<u32> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64().map(|x| x as u32),
        Value::Array(a) => a.first().and_then(Value::as_u64).map(|x| x as u32),
        _ => None,
    }
}

/// The first thing in a config that no family here computes, for the error naming it.
fn unsupported_feature(v: &Value) -> Option<&'static str> {
    let t = v.get("model_type").and_then(Value::as_str).unwrap_or("");
    let has = |k: &str| v.get(k).is_some_and(|x| !x.is_null() && x != &json!(0) && x != &json!(false));
    if t.contains("moe")
        || t == "mixtral"
        || ["num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size"].iter().any(|k| has(k))
    {
        Some("mixture-of-experts layers")
    } else if has("vision_config") || has("vision_tower") || has("mm_vision_tower") {
        Some("a vision tower")
    } else if t.contains("mamba")
        || t == "jamba"
        || ["ssm_cfg", "mamba_d_state", "attn_layer_indices"].iter().any(|k| has(k))
    {
        Some("Mamba (state-space) layers")
    } else if has("text_config") {
        Some("a multimodal wrapper (`text_config`): load its text model instead")
    } else if t.contains("bert") || t == "t5" || has("is_encoder_decoder") {
        Some("an encoder (not a causal decoder)")
    } else {
        None
    }
}

/// `rope_type` and parameters of one rope dict (transformers 4.x `rope_scaling` or 5.x
/// `rope_parameters`), `theta` when the dict has none. `top`: the whole config (Phi-3 keeps
/// `original_max_position_embeddings` there). Errors name the rope type or missing field.
fn parse_rope(r: Option<&Value>, theta: f64, top: &Value) -> Result<RopeParams> {
    let Some(r) = r.filter(|r| !r.is_null()) else { return Ok(RopeParams { theta, scaling: RopeScaling::Default }) };
    let theta = opt_f64(r, "rope_theta").unwrap_or(theta);
    let num = |k: &str| {
        r.get(k).and_then(Value::as_f64).with_context(|| format!("config.json: rope `{k}` missing or not a number"))
    };
    let original_max = || -> Result<f64> {
        opt_f64(r, "original_max_position_embeddings")
            .or_else(|| opt_f64(top, "original_max_position_embeddings"))
            .or_else(|| opt_f64(top, "max_position_embeddings"))
            .context("config.json: rope `original_max_position_embeddings` missing")
    };
    let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(Value::as_str).unwrap_or("default");
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3(Llama3Scaling {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: original_max()?,
        }),
        "yarn" => {
            let factor = match opt_f64(r, "factor") {
                Some(f) => f,
                None => {
                    opt_f64(top, "max_position_embeddings").context("config.json: yarn without `factor`")?
                        / original_max()?
                }
            };
            let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attention_factor =
                match (opt_f64(r, "attention_factor"), opt_f64(r, "mscale"), opt_f64(r, "mscale_all_dim")) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(a)) if m != 0.0 && a != 0.0 => mscale(factor, m) / mscale(factor, a),
                    _ => mscale(factor, 1.0),
                };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original_max()?,
                beta_fast: opt_f64(r, "beta_fast").unwrap_or(32.0),
                beta_slow: opt_f64(r, "beta_slow").unwrap_or(1.0),
                attention_factor,
                truncate: r.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            }
        }
        "longrope" | "su" => {
            let factors = |k: &str| -> Result<Vec<f64>> {
                r.get(k)
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                    .with_context(|| format!("config.json: rope `{k}` missing or not a list of numbers"))
            };
            // transformers (`_compute_longrope_parameters`): the factor is max / original max
            // positions when the config has the original top-level (Phi-3).
            // Phi-3's top-level original overrides the rope dict's.
            let original = match opt_f64(top, "original_max_position_embeddings") {
                Some(o) => o,
                None => original_max()?,
            };
            let factor =
                opt_f64(r, "factor").unwrap_or(opt_f64(top, "max_position_embeddings").unwrap_or(original) / original);
            let attention_factor = opt_f64(r, "attention_factor").unwrap_or(if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / original.ln()).sqrt()
            });
            RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor,
            }
        }
        t => bail!("config.json: rope_type `{t}` is not supported (default, linear, llama3, yarn, longrope)"),
    };
    Ok(RopeParams { theta, scaling })
}

/// The family of a `config.json`'s `model_type`. Errors: an unsupported family or feature
/// (mixture-of-experts, vision towers, partial rotary, bidirectional attention, ...).
fn hf_family(v: &Value, model_type: &str) -> Result<Family> {
    if let Some(f) = unsupported_feature(v) {
        bail!("config.json: model_type `{model_type}` has {f}, which dpo-rs does not implement");
    }
    let supported: Vec<&str> = Family::ALL.iter().map(|f| f.model_type()).collect();
    let family = Family::from_model_type(model_type).with_context(|| {
        format!("config.json: model_type `{model_type}` is not supported ({})", supported.join(", "))
    })?;
    let partial = opt_f64(v, "partial_rotary_factor")
        .or_else(|| v.get("rope_parameters").and_then(|r| opt_f64(r, "partial_rotary_factor")));
    if let Some(p) = partial.filter(|&p| p != 1.0) {
        bail!("config.json: {model_type} with partial_rotary_factor {p} is not supported (rotary over the whole head only)");
    }
    if flag(v, "use_bidirectional_attention") {
        bail!("config.json: {model_type} with use_bidirectional_attention is not a causal decoder");
    }
    Ok(family)
}

/// A boolean field of `config.json`, false when absent.
fn flag(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

/// The rotary embedding of the (full-attention) layers and, for Gemma 3, of the sliding ones:
/// 5.x `rope_parameters` (per layer type for Gemma 3) or 4.x `rope_theta` + `rope_scaling`.
fn hf_rope(v: &Value, family: Family) -> Result<(RopeParams, Option<RopeParams>)> {
    let params = v.get("rope_parameters").filter(|r| !r.is_null());
    let theta = opt_f64(v, "rope_theta").unwrap_or(if family == Family::Gemma3 { 1_000_000.0 } else { 10_000.0 });
    Ok(match params.and_then(|p| p.get("full_attention")) {
        Some(full) => {
            let local = params.and_then(|p| p.get("sliding_attention"));
            (parse_rope(Some(full), theta, v)?, Some(parse_rope(local, 10_000.0, v)?))
        }
        None => {
            let rope = parse_rope(params.or_else(|| v.get("rope_scaling")), theta, v)?;
            let local = (family == Family::Gemma3).then(|| RopeParams {
                theta: opt_f64(v, "rope_local_base_freq").unwrap_or(10_000.0),
                scaling: RopeScaling::Default,
            });
            (rope, local)
        }
    })
}

/// The MLP's activation. Gemma 2/3 read `hidden_activation` only; Gemma 1 reads `hidden_act` and
/// takes "gelu" as the tanh approximation.
fn hf_activation(v: &Value, family: Family, model_type: &str) -> Result<Activation> {
    let act = match family {
        Family::Gemma2 | Family::Gemma3 => v.get("hidden_activation"),
        _ => v.get("hidden_act"),
    };
    Ok(match act.and_then(Value::as_str) {
        None if family.is_gemma() => Activation::GeluTanh,
        None => Activation::Silu,
        Some("silu" | "swish") => Activation::Silu,
        Some("gelu") if family == Family::Gemma => Activation::GeluTanh,
        Some("gelu_pytorch_tanh" | "gelu_new" | "gelu_fast") => Activation::GeluTanh,
        Some(a) => bail!("config.json: {model_type} with hidden_act `{a}` is not supported (silu, gelu_pytorch_tanh)"),
    })
}

/// The sliding window, if the family slides any layer.
fn hf_sliding_window(v: &Value, family: Family) -> Option<usize> {
    match family {
        Family::Llama | Family::Gemma => None,
        // Qwen2/3 apply `sliding_window` only with `use_sliding_window`.
        Family::Qwen2 | Family::Qwen3 if !flag(v, "use_sliding_window") => None,
        // transformers' defaults when the key is absent (null: no window).
        _ => match v.get("sliding_window") {
            None if family == Family::Phi3 => None,
            None => Some(4096),
            Some(w) => w.as_u64().map(|w| w as usize),
        },
    }
}

/// Which of the `layers` layers attend within the sliding window: `layer_types`, else each
/// family's rule. Errors: an unknown layer type, or one per layer missing.
fn hf_layer_types(v: &Value, family: Family, layers: usize) -> Result<Vec<LayerAttention>> {
    let types = match (family, v.get("layer_types").and_then(Value::as_array)) {
        // Mistral and Phi-3 slide every layer (transformers ignores their `layer_types`).
        (Family::Mistral | Family::Phi3, _) => vec![LayerAttention::Sliding; layers],
        (_, Some(a)) => a
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("full_attention") => Ok(LayerAttention::Full),
                Some("sliding_attention") => Ok(LayerAttention::Sliding),
                _ => bail!("config.json: layer_types[{i}] = {t} is not supported (full_attention, sliding_attention)"),
            })
            .collect::<Result<Vec<_>>>()?,
        (_, None) => (0..layers)
            .map(|i| if slides(v, family, i) { LayerAttention::Sliding } else { LayerAttention::Full })
            .collect(),
    };
    ensure!(types.len() == layers, "config.json: layer_types has {} entries for {layers} layers", types.len());
    Ok(types)
}

/// Whether layer `i` slides when `config.json` has no `layer_types` (transformers' defaults).
fn slides(v: &Value, family: Family, i: usize) -> bool {
    let get = |k: &str, d: u64| v.get(k).and_then(Value::as_u64).unwrap_or(d) as usize;
    match family {
        Family::Gemma2 => i.is_multiple_of(2),
        Family::Gemma3 => !(i + 1).is_multiple_of(get("sliding_window_pattern", 6)),
        Family::Qwen2 | Family::Qwen3 => i >= get("max_window_layers", 28),
        _ => false,
    }
}

/// The architecture's [`Features`] as `config.json` and the family's defaults give them.
fn hf_features(
    v: &Value,
    family: Family,
    model_type: &str,
    layers: usize,
    rope_local: Option<RopeParams>,
) -> Result<Features> {
    let hidden_act = hf_activation(v, family, model_type)?;
    let sliding_window = hf_sliding_window(v, family);
    let layer_types = hf_layer_types(v, family, layers)?;
    // Biases (transformers 5.23): Qwen2 q/k/v always; `attention_bias` q/k/v/o in Llama,
    // Qwen3 and Gemma; `mlp_bias` in Llama; none in Mistral and Phi-3.
    let attention_bias = flag(v, "attention_bias")
        && matches!(family, Family::Llama | Family::Qwen3 | Family::Gemma | Family::Gemma2 | Family::Gemma3);
    Ok(Features {
        hidden_act,
        qkv_bias: attention_bias || family == Family::Qwen2,
        o_bias: attention_bias,
        mlp_bias: flag(v, "mlp_bias") && family == Family::Llama,
        qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
        norm_plus_one: family.is_gemma(),
        scale_embeddings: family.is_gemma(),
        sandwich_norms: matches!(family, Family::Gemma2 | Family::Gemma3),
        // Gemma 2's defaults when the keys are absent: caps 50 and 30, scalar 256 (Gemma 3: 256).
        // Gemma 3 keeps the key but never caps its attention.
        attn_logit_softcapping: if family == Family::Gemma2 {
            or_default(v, "attn_logit_softcapping", Some(50.0))
        } else {
            None
        },
        final_logit_softcapping: or_default(v, "final_logit_softcapping", (family == Family::Gemma2).then_some(30.0)),
        query_pre_attn_scalar: match family {
            Family::Gemma2 | Family::Gemma3 => or_default(v, "query_pre_attn_scalar", Some(256.0)),
            _ => None,
        },
        sliding_window,
        layer_types: if sliding_window.is_some() { layer_types } else { Vec::new() },
        rope_local,
    })
}

impl LlamaConfig {
    /// Parses a Hugging Face `config.json` (transformers 4.x `rope_theta`/`rope_scaling` or 5.x
    /// `rope_parameters`). Errors name the missing field, or the first unsupported feature
    /// (mixture-of-experts, vision towers, Mamba layers, unknown rope types or activations,
    /// partial rotary) with the architecture.
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("llama");
        let family = hf_family(v, model_type)?;
        let heads = get_usize(v, "num_attention_heads")?;
        let hidden = get_usize(v, "hidden_size")?;
        let layers = get_usize(v, "num_hidden_layers")?;
        let (rope, rope_local) = hf_rope(v, family)?;
        let features = hf_features(v, family, model_type, layers, rope_local)?;
        Self {
            family,
            vocab_size: get_usize(v, "vocab_size")?,
            hidden_size: hidden,
            intermediate_size: get_usize(v, "intermediate_size")?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: get_usize(v, "num_key_value_heads").unwrap_or(heads),
            // transformers' defaults: Gemma 256, Qwen3 128; Qwen2 and Phi-3 have no such field.
            head_dim: match (family, v.get("head_dim")) {
                (Family::Qwen2 | Family::Phi3, _) => hidden / heads.max(1),
                (f, None) if f.is_gemma() => 256,
                (Family::Qwen3, None) => 128,
                (_, h) => h.and_then(Value::as_u64).map(|x| x as usize).unwrap_or(hidden / heads.max(1)),
            },
            rms_norm_eps: v.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope,
            max_position_embeddings: get_usize(v, "max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(family.is_gemma()),
            features,
            bos_token_id: get_token(v, "bos_token_id"),
            eos_token_id: get_token(v, "eos_token_id"),
            pad_token_id: get_token(v, "pad_token_id"),
        }
        .validated()
    }

    /// `self` if its sizes make a model: at least one layer, head, key-value head and
    /// vocabulary entry, heads a multiple of key-value heads, an even head dimension (rope),
    /// a layer type per layer, LongRoPE factors for every rotary frequency.
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
            self.num_attention_heads.is_multiple_of(self.num_key_value_heads),
            "`num_attention_heads` {} is not a multiple of `num_key_value_heads` {}",
            self.num_attention_heads,
            self.num_key_value_heads
        );
        ensure!(
            self.head_dim.is_multiple_of(2),
            "`head_dim` {} is odd: rotary embeddings need an even one",
            self.head_dim
        );
        let f = &self.features;
        ensure!(
            f.layer_types.is_empty() || f.layer_types.len() == self.num_hidden_layers,
            "`layer_types` has {} entries for {} layers",
            f.layer_types.len(),
            self.num_hidden_layers
        );
        ensure!(f.sliding_window != Some(0), "`sliding_window` is 0: must be at least 1");
        for r in std::iter::once(&self.rope).chain(&f.rope_local) {
            if let RopeScaling::LongRope { short_factor, long_factor, .. } = &r.scaling {
                for (k, v) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    ensure!(
                        v.len() == self.head_dim / 2,
                        "rope `{k}` has {} entries, head_dim / 2 is {}",
                        v.len(),
                        self.head_dim / 2
                    );
                }
            }
        }
        Ok(self)
    }

    /// The attention of layer `i`.
    pub fn layer_attention(&self, i: usize) -> LayerAttention {
        match (self.features.sliding_window, self.features.layer_types.get(i)) {
            (Some(_), Some(&t)) => t,
            _ => LayerAttention::Full,
        }
    }

    /// The rotary parameters of layer `i` (Gemma 3's sliding layers have their own).
    pub fn layer_rope(&self, i: usize) -> &RopeParams {
        match (self.layer_attention(i), &self.features.rope_local) {
            (LayerAttention::Sliding, Some(r)) => r,
            _ => &self.rope,
        }
    }

    /// The `config.json` of a Hugging Face model directory for this architecture (f32 weights),
    /// in transformers 4.x form (`rope_theta`, `rope_scaling`), which transformers 5 reads too.
    pub fn to_hf_json(&self) -> Value {
        let f = &self.features;
        let mut v = json!({
            "architectures": [self.family.architecture()],
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "torch_dtype": "float32",
            "use_cache": true,
        });
        let act = match f.hidden_act {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        };
        let o = v.as_object_mut().expect("an object");
        let mut set = |k: &str, x: Value| {
            o.insert(k.to_string(), x);
        };
        set(if self.family.is_gemma() { "hidden_activation" } else { "hidden_act" }, act.into());
        if !matches!(self.family, Family::Qwen2 | Family::Mistral | Family::Phi3) {
            set("attention_bias", f.o_bias.into());
        }
        if self.family == Family::Llama {
            set("mlp_bias", f.mlp_bias.into());
        }
        if let Some(s) = rope_scaling_json(&self.rope.scaling) {
            set("rope_scaling", s);
        }
        if let RopeScaling::LongRope { original_max_position_embeddings, .. } = self.rope.scaling {
            set("original_max_position_embeddings", json!(original_max_position_embeddings as u64));
        }
        if let Some(r) = &f.rope_local {
            set("rope_local_base_freq", r.theta.into());
        }
        self.sliding_window_json(&mut set);
        if matches!(self.family, Family::Gemma2 | Family::Gemma3) {
            // an int in transformers 5.23's Gemma2Config / Gemma3TextConfig (a float is refused)
            let scalar = f.query_pre_attn_scalar.unwrap_or(self.head_dim as f64);
            set("query_pre_attn_scalar", if scalar.fract() == 0.0 { json!(scalar as u64) } else { json!(scalar) });
            set("attn_logit_softcapping", json!(f.attn_logit_softcapping));
            set("final_logit_softcapping", json!(f.final_logit_softcapping));
        }
        for (k, t) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if let Some(t) = t {
                set(k, json!(t));
            }
        }
        v
    }

    /// The sliding window's keys of `config.json`, as each family's transformers config has them.
    fn sliding_window_json(&self, set: &mut impl FnMut(&str, Value)) {
        match self.features.sliding_window {
            Some(w) => {
                set("sliding_window", w.into());
                if matches!(self.family, Family::Qwen2 | Family::Qwen3) {
                    set("use_sliding_window", true.into());
                }
                let types: Vec<&str> = (0..self.num_hidden_layers)
                    .map(|i| match self.layer_attention(i) {
                        LayerAttention::Full => "full_attention",
                        LayerAttention::Sliding => "sliding_attention",
                    })
                    .collect();
                if !matches!(self.family, Family::Mistral | Family::Phi3) {
                    set("layer_types", json!(types));
                }
            }
            None if self.family != Family::Llama => {
                set("sliding_window", Value::Null);
                if matches!(self.family, Family::Qwen2 | Family::Qwen3) {
                    set("use_sliding_window", false.into());
                }
            }
            None => {}
        }
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        super::tensor_specs(self).iter().map(|s| s.shape.iter().product::<usize>()).sum()
    }
}

/// transformers 4.x `rope_scaling` for a scaling (`None`: the default rotary).
fn rope_scaling_json(s: &RopeScaling) -> Option<Value> {
    let mut m = Map::new();
    match s {
        RopeScaling::Default => return None,
        RopeScaling::Linear { factor } => {
            m.insert("rope_type".into(), "linear".into());
            m.insert("factor".into(), json!(factor));
        }
        RopeScaling::Llama3(s) => {
            m.insert("rope_type".into(), "llama3".into());
            m.insert("factor".into(), json!(s.factor));
            m.insert("low_freq_factor".into(), json!(s.low_freq_factor));
            m.insert("high_freq_factor".into(), json!(s.high_freq_factor));
            m.insert("original_max_position_embeddings".into(), json!(s.original_max_position_embeddings as u64));
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate,
        } => {
            m.insert("rope_type".into(), "yarn".into());
            m.insert("factor".into(), json!(factor));
            m.insert("original_max_position_embeddings".into(), json!(*original_max_position_embeddings as u64));
            m.insert("beta_fast".into(), json!(beta_fast));
            m.insert("beta_slow".into(), json!(beta_slow));
            m.insert("attention_factor".into(), json!(attention_factor));
            m.insert("truncate".into(), json!(truncate));
        }
        RopeScaling::LongRope { short_factor, long_factor, .. } => {
            m.insert("rope_type".into(), "longrope".into());
            m.insert("short_factor".into(), json!(short_factor));
            m.insert("long_factor".into(), json!(long_factor));
        }
    }
    Some(Value::Object(m))
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
        assert_eq!((c.head_dim, c.rope.theta, c.eos_token_id), (64, 100000.0, Some(2)));
        assert_eq!(c.num_parameters(), 134_515_008);
        assert_eq!(LlamaConfig::from_hf_json(&c.to_hf_json()).unwrap(), c);
    }

    #[test]
    fn names_the_missing_field() {
        let err = LlamaConfig::from_hf_json(&json!({"hidden_size": 8})).unwrap_err().to_string();
        assert!(err.contains("num_attention_heads"), "{err}");
    }

    fn base(model_type: &str) -> Value {
        json!({"model_type": model_type, "vocab_size": 32, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4})
    }

    #[test]
    fn every_family_round_trips_through_its_config_json() {
        let mut cases = vec![];
        for f in Family::ALL {
            cases.push(base(f.model_type()));
        }
        let mut g2 = base("gemma2");
        (
            g2["sliding_window"],
            g2["attn_logit_softcapping"],
            g2["final_logit_softcapping"],
            g2["query_pre_attn_scalar"],
        ) = (json!(3), json!(50.0), json!(30.0), json!(24));
        let mut g3 = base("gemma3_text");
        g3["rope_parameters"] = json!({"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}});
        g3["sliding_window"] = json!(3);
        g3["layer_types"] = json!(["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]);
        let mut phi = base("phi3");
        (phi["rope_scaling"], phi["original_max_position_embeddings"], phi["max_position_embeddings"]) = (
            json!({"type": "longrope", "short_factor": [1.0, 1.5], "long_factor": [2.0, 4.0]}),
            json!(4096),
            json!(16384),
        );
        let mut yarn = base("qwen2");
        yarn["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16});
        let mut mistral = base("mistral");
        mistral["sliding_window"] = json!(5);
        let mut llama = base("llama");
        (llama["attention_bias"], llama["mlp_bias"]) = (json!(true), json!(true));
        llama["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
        cases.extend([g2, g3, phi, yarn, mistral, llama]);
        for v in cases {
            let c = LlamaConfig::from_hf_json(&v).unwrap();
            let out = c.to_hf_json();
            assert_eq!(LlamaConfig::from_hf_json(&out).unwrap(), c, "{v}");
            if let Some(x) = out.get("query_pre_attn_scalar") {
                assert!(x.is_u64(), "transformers refuses a float query_pre_attn_scalar: {x}");
            }
        }
        let m = LlamaConfig::from_hf_json(&{
            let mut m = base("mistral");
            m["sliding_window"] = json!(5);
            m
        })
        .unwrap();
        assert_eq!(m.layer_attention(3), LayerAttention::Sliding);
        let g2 = LlamaConfig::from_hf_json(&{
            let mut g = base("gemma2");
            g["sliding_window"] = json!(5);
            g
        })
        .unwrap();
        assert_eq!((g2.layer_attention(0), g2.layer_attention(1)), (LayerAttention::Sliding, LayerAttention::Full));
        assert!(g2.features.norm_plus_one && g2.features.sandwich_norms && g2.tie_word_embeddings);
    }

    #[test]
    fn unsupported_architectures_are_named() {
        for (t, extra, want) in [
            ("mixtral", json!({}), "mixture-of-experts"),
            ("qwen2_moe", json!({}), "mixture-of-experts"),
            ("qwen3", json!({"num_experts": 8}), "mixture-of-experts"),
            ("llava", json!({"vision_config": {}}), "vision tower"),
            ("gemma3", json!({"text_config": {}}), "multimodal"),
            ("jamba", json!({}), "Mamba"),
            ("falcon_mamba", json!({}), "Mamba"),
            ("gpt2", json!({}), "not supported"),
            ("phi3", json!({"partial_rotary_factor": 0.75}), "partial_rotary_factor"),
            ("llama", json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}), "dynamic"),
            ("gemma2", json!({"hidden_activation": "gelu"}), "hidden_act `gelu`"),
        ] {
            let mut v = base(t);
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            let err = format!("{:#}", LlamaConfig::from_hf_json(&v).unwrap_err());
            assert!(err.contains(want) && err.contains(t), "{t}: {err}");
        }
    }
}
