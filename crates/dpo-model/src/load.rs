//! Loading a model from a GGUF file or a Hugging Face directory, tensor by tensor into the form
//! it is kept in (f32 tensors, or frozen compact matrices for `--base-dtype bf16 | q8_0 | q4_0 |
//! gguf`), with a LoRA adapter merged in on the way; and saving Hugging Face directories.
//!
//! Peak memory while loading is the loaded model plus one tensor (read, converted to f32,
//! merged, converted to its final form): tensors are read from the file one at a time, never the
//! whole file at once.

use super::adapter::Adapter;
use super::llama::{checkpoint_weights, unfuse};
use super::safetensors::{for_each_safetensor, write_safetensors};
use super::LayerAttention;
use super::{check_weights, Family, Features, Llama, LlamaConfig, Proj, Weight};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{DType, Device, Tensor};
use dpo_kernels::qmatmul::{BaseDType, FrozenMatrix};
use dpo_kernels::{Activation, Llama3Scaling, RopeParams, RopeScaling, RopeTable};
use dpo_runtime::io::write_dir_atomic;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A model's configuration, weights (Hugging Face names) and tokenizer.
pub struct Loaded {
    pub config: LlamaConfig,
    /// Norms and biases as f32 tensors; matrices as f32 tensors (`--base-dtype f32`) or frozen
    /// compact matrices.
    pub tensors: HashMap<String, Weight>,
    pub tokenizer: Tokenizer,
}

impl Loaded {
    /// The model (inference-only unless its tensors are made `Var`s, see [`crate::policy`]).
    pub fn model(&self) -> Result<Llama> {
        Llama::from_weights(self.config.clone(), &self.tensors)
    }
}

/// How a model is loaded: `--base-dtype` and `--adapter`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default)]
pub struct LoadOptions {
    /// How the model's weight matrices are kept: f32, bf16, q8_0, q4_0, or gguf (a GGUF file's own block quantization). Anything but f32 freezes them (LoRA, inference).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = BaseDType::F32))]
    pub base_dtype: BaseDType,
    /// A LoRA adapter directory (ours or PEFT's) merged into the model's weights at load (an SFT adapter makes the SFT model the reference); repeat to merge several, in order.
    #[cfg_attr(feature = "cli", arg(long = "adapter"))]
    pub adapters: Vec<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { base_dtype: BaseDType::F32, adapters: Vec::new() }
    }
}

/// Loads `path` with f32 weights and no adapter ([`load_with`]).
pub fn load(path: &Path) -> Result<Loaded> {
    load_with(path, &LoadOptions::default())
}

/// Loads `path`: a `.gguf` file, or a Hugging Face model directory (`config.json`,
/// `model.safetensors` or `model.safetensors.index.json` with its shards in f32, f16 or bf16,
/// `tokenizer.json`). Each weight matrix gets the adapter's `s * B A` added (in f32) and is then
/// kept as `opts.base_dtype` says; norms and biases stay f32.
///
/// Errors: a missing file, a file that is not what its name says, a tensor whose offsets or size
/// do not fit the file, an architecture or dtype we do not read, an adapter that does not fit.
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    if !path.exists() {
        bail!("model {} does not exist", path.display())
    } else if path.is_dir() {
        load_hf_dir(path, opts)
    } else if path.extension().is_some_and(|e| e == "gguf") {
        load_gguf(path, opts)
    } else {
        bail!("model {}: expected a .gguf file or a Hugging Face model directory", path.display())
    }
}

/// Turns tensors into the model's weights: the adapters merged, matrices converted.
struct Converter {
    base: BaseDType,
    adapters: Vec<Adapter>,
}

impl Converter {
    fn new(config: &LlamaConfig, opts: &LoadOptions) -> Result<Self> {
        let adapters = opts.adapters.iter().map(|d| Adapter::load(d, config)).collect::<Result<_>>()?;
        Ok(Self { base: opts.base_dtype, adapters })
    }

    /// The adapters' summed `s * B A` for the matrix called `name`, if any adapts it.
    fn delta(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(rest) = name.strip_prefix("model.layers.") else { return Ok(None) };
        let Some((layer, module)) = rest.split_once('.') else { return Ok(None) };
        let Ok(layer) = layer.parse::<usize>() else { return Ok(None) };
        let Some(proj) = Proj::ALL.into_iter().find(|p| module == format!("{}.weight", p.path())) else {
            return Ok(None);
        };
        let mut sum: Option<Tensor> = None;
        for a in &self.adapters {
            if let Some(m) = a.module(layer, proj) {
                let d = a.delta(m)?;
                sum = Some(match sum {
                    Some(s) => (s + d)?,
                    None => d,
                });
            }
        }
        Ok(sum)
    }

    /// The weight `name` from its f32 values: a vector stays a tensor; a matrix gets the
    /// adapters' delta and the base dtype (`ggml`: keep this block format instead, for `gguf`).
    /// The values are read in place (no copy) when converting to a compact format.
    fn finish(&self, name: &str, t: Tensor, ggml: Option<GgmlDType>) -> Result<Weight> {
        if t.rank() != 2 {
            return Ok(Weight::Tensor(t));
        }
        let t = match self.delta(name)? {
            Some(d) => (t + d)?,
            None => t,
        };
        let (rows, cols) = t.dims2()?;
        let convert = |data: &[f32]| match (self.base, ggml) {
            (BaseDType::Gguf, Some(g)) => FrozenMatrix::quantize(data, rows, cols, g),
            (b, _) => FrozenMatrix::convert(data, rows, cols, b),
        };
        let m = match (self.base, ggml) {
            (BaseDType::F32, _) | (BaseDType::Gguf, None | Some(GgmlDType::F32)) => return Ok(Weight::Tensor(t)),
            _ => {
                let t = t.to_dtype(DType::F32)?.contiguous()?;
                let (storage, layout) = t.storage_and_layout();
                let candle_core::Storage::Cpu(cpu) = &*storage else { bail!("tensor `{name}`: not on the CPU") };
                convert(dpo_kernels::slice_of::<f32>(cpu, layout, "load")?)
            }
        };
        Ok(Weight::Frozen(Arc::new(m.with_context(|| format!("tensor `{name}`"))?)))
    }
}

/// The tokenizer of the model at `path` (a `.gguf` file or a Hugging Face directory), without
/// reading its weights.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        Tokenizer::from_hf_dir(path)
    } else if path.extension().is_some_and(|e| e == "gguf") {
        let mut f =
            std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?);
        let content =
            gguf_file::Content::read(&mut f).with_context(|| format!("{}: not a GGUF file", path.display()))?;
        Tokenizer::from_gguf(&content)
    } else {
        bail!("model {}: expected a .gguf file or a Hugging Face model directory", path.display())
    }
}

/// The parsed `config.json` of a Hugging Face directory. Errors name the file.
pub fn read_hf_config(dir: &Path) -> Result<serde_json::Value> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", cfg_path.display()))
}

fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let v = read_hf_config(dir)?;
    load_hf_dir_as(dir, &v, opts)
}

/// A sequence-classification model (`*ForSequenceClassification`, e.g. a reward model): the
/// decoder of a Hugging Face directory, and its `score.weight` head `[num_labels, hidden]` (f32).
/// The decoder has no language-model head (its output weight is the embedding, unused).
///
/// Errors: what [`load_with`] refuses, an architecture that is not a sequence classifier, a
/// missing or misshapen `score.weight`.
pub fn load_sequence_classifier(dir: &Path) -> Result<(Loaded, Tensor)> {
    let mut v = read_hf_config(dir)?;
    let arch =
        v.get("architectures").and_then(|a| a.get(0)).and_then(serde_json::Value::as_str).unwrap_or("").to_string();
    if !arch.ends_with("ForSequenceClassification") {
        bail!(
            "{}: architectures is `{arch}`, not a *ForSequenceClassification model (a reward model)",
            dir.join("config.json").display()
        );
    }
    // The classifier has no lm_head: read the decoder as if the head were tied (it is not used).
    v["tie_word_embeddings"] = serde_json::Value::Bool(true);
    let mut loaded = load_hf_dir_as(dir, &v, &LoadOptions::default())?;
    let score = loaded
        .tensors
        .remove("score.weight")
        .with_context(|| format!("{}: no tensor `score.weight` (the reward head)", dir.display()))?
        .to_tensor()?;
    let (_, hidden) = score.dims2().with_context(|| format!("{}: `score.weight` must be a matrix", dir.display()))?;
    if hidden != loaded.config.hidden_size {
        bail!(
            "{}: `score.weight` has {hidden} columns, the model's hidden size is {}",
            dir.display(),
            loaded.config.hidden_size
        );
    }
    Ok((loaded, score.to_dtype(DType::F32)?))
}

fn load_hf_dir_as(dir: &Path, v: &serde_json::Value, opts: &LoadOptions) -> Result<Loaded> {
    let cfg_path = dir.join("config.json");
    let config = LlamaConfig::from_hf_json(v).with_context(|| format!("{}", cfg_path.display()))?;
    let files: Vec<PathBuf> = if dir.join("model.safetensors").exists() {
        vec![dir.join("model.safetensors")]
    } else {
        let idx = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&idx).with_context(|| {
            format!("{}: neither model.safetensors nor model.safetensors.index.json", dir.display())
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", idx.display()))?;
        let map = v["weight_map"].as_object().with_context(|| format!("{}: no weight_map", idx.display()))?;
        let mut f: Vec<_> = map.values().filter_map(|x| x.as_str()).map(|s| dir.join(s)).collect();
        f.sort();
        f.dedup();
        f
    };
    let conv = Converter::new(&config, opts)?;
    let mut tensors = HashMap::new();
    for f in files {
        for_each_safetensor(&f, |name, t| {
            for (name, t) in unfuse(&config, name, t)? {
                let w = conv.finish(&name, t, None)?;
                tensors.insert(name, w);
            }
            Ok(())
        })?;
    }
    check_weights(&config, &tensors).with_context(|| format!("{} (with {})", dir.display(), cfg_path.display()))?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    Ok(Loaded { config, tensors, tokenizer })
}

fn md_u32(md: &HashMap<String, gguf_file::Value>, key: &str) -> Result<usize> {
    Ok(md.get(key).with_context(|| format!("GGUF metadata has no `{key}`"))?.to_u32()? as usize)
}

/// A numeric metadata value of any GGUF number type.
fn md_f64(md: &HashMap<String, gguf_file::Value>, key: &str) -> Option<f64> {
    use gguf_file::Value as V;
    Some(match md.get(key)? {
        V::F32(x) => *x as f64,
        V::F64(x) => *x,
        V::U8(x) => *x as f64,
        V::I8(x) => *x as f64,
        V::U16(x) => *x as f64,
        V::I16(x) => *x as f64,
        V::U32(x) => *x as f64,
        V::I32(x) => *x as f64,
        V::U64(x) => *x as f64,
        V::I64(x) => *x as f64,
        _ => return None,
    })
}

/// GGUF stores the q and k rows of each head interleaved for llama.cpp's rope (`permute` in
/// llama.cpp's `convert_hf_to_gguf.py`): Hugging Face row `h*d + j*d/2 + i` is GGUF row
/// `h*d + 2i + j`. The GGUF row of each Hugging Face row, for `rows` rows in `heads` heads.
fn unpermuted_rows(rows: usize, heads: usize) -> Vec<usize> {
    let d = rows / heads;
    (0..rows)
        .map(|r| {
            let (h, rest) = (r / d, r % d);
            let (j, i) = (rest / (d / 2), rest % (d / 2));
            h * d + 2 * i + j
        })
        .collect()
}

/// The family of a GGUF `general.architecture`.
fn gguf_family(arch: &str) -> Option<Family> {
    Some(match arch {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        "gemma" => Family::Gemma,
        "gemma2" => Family::Gemma2,
        "gemma3" => Family::Gemma3,
        "phi3" => Family::Phi3,
        _ => return None,
    })
}

/// f32 values of a small GGUF tensor (rope factor tables).
fn gguf_vector(
    content: &gguf_file::Content,
    f: &mut std::io::BufReader<std::fs::File>,
    name: &str,
) -> Result<Option<Vec<f64>>> {
    if !content.tensor_infos.contains_key(name) {
        return Ok(None);
    }
    let t = content.tensor(f, name, &Device::Cpu)?.dequantize(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?;
    Ok(Some(t.to_vec1::<f64>()?))
}

/// The rotary embedding a GGUF file describes (llama.cpp's keys and factor tensors). Llama 3.1/3.2's
/// scaling is stored only as `rope_freqs` (per-frequency divisors): it is matched against the
/// published llama3 parameters, and refused when none gives those divisors.
fn gguf_rope(
    content: &gguf_file::Content,
    f: &mut std::io::BufReader<std::fs::File>,
    k: &dyn Fn(&str) -> String,
    head_dim: usize,
    theta: f64,
) -> Result<RopeParams> {
    let md = &content.metadata;
    let kind = md.get(&k("rope.scaling.type")).and_then(|v| v.to_string().ok()).cloned();
    let factor = md_f64(md, &k("rope.scaling.factor"));
    let original = md_f64(md, &k("rope.scaling.original_context_length"));
    let attn_factor = md_f64(md, &k("rope.scaling.attn_factor"));
    let scaling = if let Some(divisors) = gguf_vector(content, f, "rope_freqs.weight")? {
        let default = RopeParams { theta, scaling: RopeScaling::Default };
        let inv = |r: &RopeParams| -> Result<Vec<f64>> { Ok(RopeTable::new::<f64>(head_dim, r, &[1])?.angles()) };
        let base = inv(&default)?;
        let mut found = None;
        let candidates = [8192.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 16384.0, 32768.0]
            .into_iter()
            .flat_map(|original| [8.0, 16.0, 32.0, 4.0].map(|factor| (factor, original)));
        for (factor, original) in candidates {
            let s = Llama3Scaling {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: original,
            };
            let scaled = inv(&RopeParams { theta, scaling: RopeScaling::Llama3(s) })?;
            if base.iter().zip(&scaled).zip(&divisors).all(|((b, s), d)| (b / s - d).abs() <= 1e-4 * d) {
                found = Some(RopeScaling::Llama3(s));
                break;
            }
        }
        found.context("GGUF tensor `rope_freqs.weight`: rotary divisors that no llama3 scaling (factor 4-32, low 1, high 4, original 2^4-2^15) gives are not supported")?
    } else if let (Some(short), Some(long)) =
        (gguf_vector(content, f, "rope_factors_short.weight")?, gguf_vector(content, f, "rope_factors_long.weight")?)
    {
        RopeScaling::LongRope {
            short_factor: short,
            long_factor: long,
            original_max_position_embeddings: original
                .context("GGUF: LongRoPE factors without rope.scaling.original_context_length")?,
            attention_factor: attn_factor.unwrap_or(1.0),
        }
    } else {
        match kind.as_deref() {
            None | Some("none") => RopeScaling::Default,
            Some("linear") => RopeScaling::Linear { factor: factor.context("GGUF: linear rope scaling without rope.scaling.factor")? },
            Some("yarn") => {
                let factor = factor.context("GGUF: yarn without rope.scaling.factor")?;
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original.context("GGUF: yarn without rope.scaling.original_context_length")?,
                    beta_fast: md_f64(md, &k("rope.scaling.yarn_beta_fast")).unwrap_or(32.0),
                    beta_slow: md_f64(md, &k("rope.scaling.yarn_beta_slow")).unwrap_or(1.0),
                    attention_factor: attn_factor.unwrap_or(if factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 }),
                    truncate: true,
                }
            }
            Some(t) => bail!("GGUF rope.scaling.type `{t}` is not supported (none, linear, yarn, llama3 via rope_freqs, longrope via rope_factors)"),
        }
    };
    Ok(RopeParams { theta, scaling })
}

/// The architecture a GGUF file's metadata describes, with the features of its family (as
/// llama.cpp reads them: Gemma 2 slides every other layer, Gemma 3 five of six; the attention
/// scale is `head_dim^-0.5`, or `(hidden / heads)^-0.5` for Gemma 2 27B, as llama.cpp sets it).
fn gguf_config(
    content: &gguf_file::Content,
    f: &mut std::io::BufReader<std::fs::File>,
    family: Family,
    arch: &str,
    tokenizer: &Tokenizer,
) -> Result<LlamaConfig> {
    let md = &content.metadata;
    let k = |s: &str| format!("{arch}.{s}");
    let heads = md_u32(md, &k("attention.head_count"))?;
    let hidden = md_u32(md, &k("embedding_length"))?;
    let layers = md_u32(md, &k("block_count"))?;
    let head_dim = md_u32(md, &k("attention.key_length"))
        .or_else(|_| md_u32(md, &k("rope.dimension_count")))
        .unwrap_or(hidden / heads.max(1));
    let theta =
        md_f64(md, &k("rope.freq_base")).unwrap_or(if family == Family::Gemma3 { 1_000_000.0 } else { 10_000.0 });
    let rope = gguf_rope(content, f, &k, head_dim, theta)?;
    let has = |t: &str| content.tensor_infos.contains_key(t);
    let window = md_u32(md, &k("attention.sliding_window")).ok().filter(|&w| w > 0);
    let gemma = family.is_gemma();
    let cap = |key: &str| md_f64(md, &k(key)).filter(|&c| c > 0.0);
    let features = Features {
        hidden_act: if gemma { Activation::GeluTanh } else { Activation::Silu },
        qkv_bias: has("blk.0.attn_q.bias"),
        o_bias: has("blk.0.attn_output.bias"),
        mlp_bias: has("blk.0.ffn_up.bias"),
        qk_norm: has("blk.0.attn_q_norm.weight"),
        norm_plus_one: gemma,
        scale_embeddings: gemma,
        sandwich_norms: has("blk.0.post_ffw_norm.weight"),
        attn_logit_softcapping: if family == Family::Gemma2 { cap("attn_logit_softcapping") } else { None },
        final_logit_softcapping: cap("final_logit_softcapping"),
        query_pre_attn_scalar: match family {
            Family::Gemma2 if layers == 46 => Some((hidden / heads) as f64),
            Family::Gemma2 | Family::Gemma3 => Some(head_dim as f64),
            _ => None,
        },
        sliding_window: window,
        layer_types: match (family, window) {
            (_, None) => Vec::new(),
            (Family::Gemma2, _) => {
                (0..layers).map(|i| if i % 2 == 0 { LayerAttention::Sliding } else { LayerAttention::Full }).collect()
            }
            (Family::Gemma3, _) => (0..layers)
                .map(|i| if (i + 1) % 6 != 0 { LayerAttention::Sliding } else { LayerAttention::Full })
                .collect(),
            _ => vec![LayerAttention::Sliding; layers],
        },
        rope_local: (family == Family::Gemma3).then(|| RopeParams {
            theta: md_f64(md, &k("rope.freq_base_swa")).unwrap_or(10_000.0),
            scaling: RopeScaling::Default,
        }),
    };
    LlamaConfig {
        family,
        vocab_size: md_u32(md, &k("vocab_size")).unwrap_or(tokenizer.vocab_size()),
        hidden_size: hidden,
        intermediate_size: md_u32(md, &k("feed_forward_length"))?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: md_u32(md, &k("attention.head_count_kv")).unwrap_or(heads),
        head_dim,
        rms_norm_eps: md_f64(md, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        rope,
        max_position_embeddings: md_u32(md, &k("context_length")).unwrap_or(4096),
        tie_word_embeddings: !has("output.weight"),
        features,
        bos_token_id: md.get("tokenizer.ggml.bos_token_id").and_then(|v| v.to_u32().ok()),
        eos_token_id: Some(tokenizer.eos_id),
        pad_token_id: md.get("tokenizer.ggml.padding_token_id").and_then(|v| v.to_u32().ok()),
    }
    .validated()
}

fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let mut f =
        std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let content = gguf_file::Content::read(&mut f).with_context(|| format!("{}: not a GGUF file", path.display()))?;
    let md = &content.metadata;
    let arch =
        md.get("general.architecture").context("GGUF metadata has no general.architecture")?.to_string()?.clone();
    let family = gguf_family(&arch).with_context(|| {
        format!(
            "{}: GGUF architecture `{arch}` is not supported (llama, qwen2, qwen3, gemma, gemma2, gemma3, phi3)",
            path.display()
        )
    })?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let config = gguf_config(&content, &mut f, family, &arch, &tokenizer)
        .with_context(|| format!("{}: metadata", path.display()))?;
    let conv = Converter::new(&config, opts)?;
    let mut tensors = HashMap::new();
    let mut names: Vec<(&String, u64)> = content.tensor_infos.iter().map(|(n, i)| (n, i.offset)).collect();
    names.sort_by_key(|(_, o)| *o);
    for (gname, _) in names {
        let Some(name) = hf_name(gname, family) else { continue }; // e.g. rope frequency tables
        let q = content
            .tensor(&mut f, gname, &Device::Cpu)
            .with_context(|| format!("{}: tensor `{gname}`", path.display()))?;
        // llama.cpp's q/k row permutation: the llama architecture only, weights and biases.
        let heads = match (arch.as_str(), name.rsplit('.').nth(1)) {
            ("llama", Some("q_proj")) => Some(config.num_attention_heads),
            ("llama", Some("k_proj")) => Some(config.num_key_value_heads),
            _ => None,
        };
        let fused = name.ends_with("qkv_proj.weight") || name.ends_with("gate_up_proj.weight");
        let keep = (opts.base_dtype == BaseDType::Gguf && q.rank() == 2 && q.dtype() != GgmlDType::F32 && !fused)
            .then(|| q.dtype());
        if let (Some(_), None) = (keep, conv.delta(&name)?) {
            // The file's own blocks, rows reordered for q and k (a row is whole blocks).
            let m = FrozenMatrix::from_qtensor(&q).with_context(|| format!("tensor `{name}`"))?;
            let m = match heads {
                Some(h) => m.gather_rows(&unpermuted_rows(m.rows(), h))?,
                None => m,
            };
            tensors.insert(name, Weight::Frozen(Arc::new(m)));
            continue;
        }
        let t = q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
        drop(q);
        let t = match heads {
            Some(h) => t.index_select(
                &Tensor::new(
                    unpermuted_rows(t.dim(0)?, h).iter().map(|&r| r as u32).collect::<Vec<_>>(),
                    &Device::Cpu,
                )?,
                0,
            )?,
            None => t,
        };
        // llama.cpp stores Gemma's norm weights as 1 + w.
        let t = if family.is_gemma() && name.ends_with("norm.weight") { t.affine(1.0, -1.0)? } else { t };
        for (name, t) in unfuse(&config, name, t)? {
            let w = conv.finish(&name, t, keep)?;
            tensors.insert(name, w);
        }
    }
    check_weights(&config, &tensors).with_context(|| format!("{}", path.display()))?;
    Ok(Loaded { config, tensors, tokenizer })
}

/// The Hugging Face name of a GGUF tensor of a model of `family` (llama.cpp's names; Gemma 2/3's
/// `ffn_norm` is the pre-feed-forward norm, Phi-3's `attn_qkv` and `ffn_up` are fused).
fn hf_name(g: &str, family: Family) -> Option<String> {
    let sandwich = matches!(family, Family::Gemma2 | Family::Gemma3);
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
                "attn_qkv" => "self_attn.qkv_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "attn_output" => "self_attn.o_proj",
                "post_attention_norm" if sandwich => "post_attention_layernorm",
                "ffn_norm" if sandwich => "pre_feedforward_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "post_ffw_norm" if sandwich => "post_feedforward_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" if family == Family::Phi3 => "mlp.gate_up_proj",
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
    save_hf_dir_as(model, tokenizer, dir, DType::F32)
}

/// [`save_hf_dir`] with the weights in `dtype` (f32 or bf16). Tensors are converted one at a
/// time as the file is written (a frozen compact matrix is dequantized then), so writing needs
/// one tensor's memory beyond the model.
pub fn save_hf_dir_as(model: &Llama, tokenizer: &Tokenizer, dir: &Path, dtype: DType) -> Result<()> {
    write_dir_atomic(dir, |tmp| write_hf_files(model, tokenizer, tmp, dtype))
}

/// Writes the files of a Hugging Face model directory (`config.json`, `model.safetensors` in
/// `dtype` = f32 or bf16, the tokenizer's files, `generation_config.json`) into the existing
/// directory `tmp`; [`save_hf_dir_as`] makes that atomic.
pub fn write_hf_files(model: &Llama, tokenizer: &Tokenizer, tmp: &Path, dtype: DType) -> Result<()> {
    let (st_dtype, torch) = match dtype {
        DType::F32 => (safetensors::Dtype::F32, "float32"),
        DType::BF16 => (safetensors::Dtype::BF16, "bfloat16"),
        d => bail!("saving a model in {d:?} is not supported (f32, bf16)"),
    };
    let mut config = model.config.to_hf_json();
    config["torch_dtype"] = torch.into();
    std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    write_safetensors(
        &tmp.join("model.safetensors"),
        &checkpoint_weights(&model.config, model.named_weights())?,
        st_dtype,
    )?;
    tokenizer.save(tmp)?;
    let eos = match tokenizer.stop_ids.as_slice() {
        [one] => serde_json::json!(one),
        many => serde_json::json!(many),
    };
    let mut gen = serde_json::json!({"eos_token_id": eos});
    if let Some(b) = model.config.bos_token_id {
        gen["bos_token_id"] = b.into();
    }
    std::fs::write(tmp.join("generation_config.json"), serde_json::to_string_pretty(&gen)?)?;
    Ok(())
}
