//! The Llama decoder, built only from ops that have a backward pass.

use super::adapter::Lora;
use super::config::LayerAttention;
use super::{LlamaConfig, Weight};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use dpo_kernels::{
    attention, decode_attention, logp_head, logp_head_frozen, logp_head_mixed, lora_linear, rms_norm, AttentionLayout,
    AttentionParams, Glu, Group, LogpHeadStats, Rope, RopeTable,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// `y = x W^T + b (+ LoRA)`: `x` `[rows, in]`, `w` `[out, in]`, `b` `[out]`; with an adapter,
/// `+ s (dropout(x) A^T) B^T` ([`Lora`]).
#[derive(Clone)]
pub struct Linear {
    pub w: Weight,
    pub b: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    /// `mask_seed`: in training, the seed of this call's LoRA dropout mask (`None`: no dropout).
    fn forward(&self, x: &Tensor, mask_seed: Option<u64>) -> Result<Tensor> {
        let y = match (&self.w, &self.lora) {
            (Weight::Frozen(w), Some(l)) => lora_linear(x, w, &l.a, &l.b, l.scale, l.dropout, mask_seed)?,
            (w, Some(l)) => (w.matmul_t(x)? + l.forward(x, mask_seed)?)?,
            (w, None) => w.matmul_t(x)?,
        };
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// The rotated keys and values of one sequence, per layer `[len * n_kv_heads * head_dim]` (f32),
/// for generation.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// Tokens cached.
    pub len: usize,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        Self { k: vec![Vec::new(); layers], v: vec![Vec::new(); layers], len: 0 }
    }
}

/// The linear projections of a decoder layer, by their Hugging Face / PEFT module names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    /// Every projection, in checkpoint order.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// The module name (`q_proj`, ..., PEFT's `target_modules` names).
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// The module's path inside a layer (`self_attn.q_proj`, `mlp.gate_proj`, ...).
    pub fn path(self) -> String {
        let parent = if matches!(self, Proj::Gate | Proj::Up | Proj::Down) { "mlp" } else { "self_attn" };
        format!("{parent}.{}", self.name())
    }

    /// `[out_features, in_features]` of the weight.
    pub fn shape(self, c: &LlamaConfig) -> [usize; 2] {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let (q, kv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        match self {
            Proj::Q => [q, h],
            Proj::K | Proj::V => [kv, h],
            Proj::O => [h, q],
            Proj::Gate | Proj::Up => [i, h],
            Proj::Down => [h, i],
        }
    }

    /// Whether the config gives this projection a bias (Qwen2's q/k/v; `attention_bias`, `mlp_bias`).
    pub fn has_bias(self, c: &LlamaConfig) -> bool {
        let f = &c.features;
        match self {
            Proj::Q | Proj::K | Proj::V => f.qkv_bias,
            Proj::O => f.o_bias,
            Proj::Gate | Proj::Up | Proj::Down => f.mlp_bias,
        }
    }
}

/// A norm of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Norm {
    /// `input_layernorm`: before attention.
    Input,
    /// `post_attention_layernorm`: before the MLP (Llama), or on the attention output (Gemma 2/3).
    PostAttention,
    /// `self_attn.q_norm` / `k_norm` `[head_dim]`: each query / key head (Qwen3, Gemma 3).
    Query,
    Key,
    /// `pre_feedforward_layernorm`, `post_feedforward_layernorm` (Gemma 2/3).
    PreFeedForward,
    PostFeedForward,
}

impl Norm {
    fn path(self) -> &'static str {
        match self {
            Norm::Input => "input_layernorm",
            Norm::PostAttention => "post_attention_layernorm",
            Norm::Query => "self_attn.q_norm",
            Norm::Key => "self_attn.k_norm",
            Norm::PreFeedForward => "pre_feedforward_layernorm",
            Norm::PostFeedForward => "post_feedforward_layernorm",
        }
    }
}

/// A tensor of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerPart {
    Norm(Norm),
    Proj(Proj),
}

/// The tensors of a decoder layer of this config in checkpoint order (a projection's bias
/// follows its weight).
fn layer_parts(c: &LlamaConfig) -> Vec<LayerPart> {
    use LayerPart::{Norm as N, Proj as P};
    let f = &c.features;
    let mut out = vec![N(Norm::Input), P(Proj::Q), P(Proj::K), P(Proj::V)];
    if f.qk_norm {
        out.extend([N(Norm::Query), N(Norm::Key)]);
    }
    out.extend([P(Proj::O), N(Norm::PostAttention)]);
    if f.sandwich_norms {
        out.push(N(Norm::PreFeedForward));
    }
    out.extend([P(Proj::Gate), P(Proj::Up), P(Proj::Down)]);
    if f.sandwich_norms {
        out.push(N(Norm::PostFeedForward));
    }
    out
}

/// What a tensor of the model is (decides its random initialisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    Embedding,
    /// The weight of a [`Proj`], or the untied output projection.
    Matrix,
    Bias,
    /// An RMSNorm weight.
    Norm,
}

/// One tensor of a checkpoint: its Hugging Face name, shape and role.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: TensorRole,
}

/// Checks that `weights` hold every tensor a model of `config` reads ([`tensor_specs`]), each of
/// its shape. Errors name the first missing or misshapen tensor.
pub fn check_weights(config: &LlamaConfig, weights: &HashMap<String, Weight>) -> Result<()> {
    for s in tensor_specs(config) {
        let w = weights.get(&s.name).with_context(|| format!("missing tensor `{}`", s.name))?;
        if w.dims() != s.shape {
            bail!("tensor `{}` has shape {:?}, the config needs {:?}", s.name, w.dims(), s.shape);
        }
    }
    Ok(())
}

/// The tensors of a model with this config, in checkpoint order: the one table that loading,
/// saving, the policy's parameter list and random initialisation all read.
pub fn tensor_specs(c: &LlamaConfig) -> Vec<TensorSpec> {
    let spec = |name: String, shape: Vec<usize>, role| TensorSpec { name, shape, role };
    let h = c.hidden_size;
    let mut out = vec![spec("model.embed_tokens.weight".into(), vec![c.vocab_size, h], TensorRole::Embedding)];
    let parts = layer_parts(c);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for &part in &parts {
            match part {
                LayerPart::Norm(n) => {
                    let width = if matches!(n, Norm::Query | Norm::Key) { c.head_dim } else { h };
                    out.push(spec(format!("{p}.{}.weight", n.path()), vec![width], TensorRole::Norm))
                }
                LayerPart::Proj(proj) => {
                    let [o, n] = proj.shape(c);
                    out.push(spec(format!("{p}.{}.weight", proj.path()), vec![o, n], TensorRole::Matrix));
                    if proj.has_bias(c) {
                        out.push(spec(format!("{p}.{}.bias", proj.path()), vec![o], TensorRole::Bias));
                    }
                }
            }
        }
    }
    out.push(spec("model.norm.weight".into(), vec![h], TensorRole::Norm));
    if !c.tie_word_embeddings {
        out.push(spec("lm_head.weight".into(), vec![c.vocab_size, h], TensorRole::Matrix));
    }
    out
}

/// Phi-3's fused projections: (fused module, the projections it holds in row order).
const FUSED: [(&str, &[Proj]); 2] =
    [("self_attn.qkv_proj", &[Proj::Q, Proj::K, Proj::V]), ("mlp.gate_up_proj", &[Proj::Gate, Proj::Up])];

/// The module that holds projection `p` in a checkpoint of `family`, as PEFT targets it: its path
/// in the layer and the projections it holds, in row order (Phi-3's fused `self_attn.qkv_proj`
/// and `mlp.gate_up_proj`; otherwise `p` alone).
pub fn hf_module(family: super::Family, p: Proj) -> (String, Vec<Proj>) {
    if family == super::Family::Phi3 {
        if let Some((fused, projs)) = FUSED.iter().find(|(_, projs)| projs.contains(&p)) {
            return (fused.to_string(), projs.to_vec());
        }
    }
    (p.path(), vec![p])
}

/// A checkpoint tensor as the model keeps it: Phi-3's fused `qkv_proj` (rows: q, then k, then
/// v) and `gate_up_proj` (rows: gate, then up) split into their projections; any other tensor
/// (and every tensor of another family) as is. Errors: a fused tensor whose rows do not add up to its projections'.
pub fn unfuse(c: &LlamaConfig, name: String, t: Tensor) -> Result<Vec<(String, Tensor)>> {
    if c.family != super::Family::Phi3 {
        return Ok(vec![(name, t)]);
    }
    for (fused, projs) in FUSED {
        let Some(prefix) = name.strip_suffix(&format!("{fused}.weight")) else { continue };
        let rows: Vec<usize> = projs.iter().map(|p| p.shape(c)[0]).collect();
        if t.dim(0)? != rows.iter().sum::<usize>() {
            bail!(
                "tensor `{name}` has {} rows, its projections {:?} need {}",
                t.dim(0)?,
                rows,
                rows.iter().sum::<usize>()
            );
        }
        let mut out = Vec::with_capacity(projs.len());
        let mut at = 0;
        for (p, n) in projs.iter().zip(rows) {
            out.push((format!("{prefix}{}.weight", p.path()), t.narrow(0, at, n)?.contiguous()?));
            at += n;
        }
        return Ok(out);
    }
    Ok(vec![(name, t)])
}

/// The tensors of a checkpoint of the model's family from its weights ([`Llama::named_weights`]):
/// Phi-3's projections fused back into `qkv_proj` and `gate_up_proj` (as f32 tensors); other
/// families as they are.
pub fn checkpoint_weights(c: &LlamaConfig, named: Vec<(String, Weight)>) -> Result<Vec<(String, Weight)>> {
    if c.family != super::Family::Phi3 {
        return Ok(named);
    }
    let map: HashMap<String, Weight> = named.iter().cloned().collect();
    let mut out = Vec::with_capacity(named.len());
    for (name, w) in named {
        // the projection this weight is, and the module that holds it ([`hf_module`])
        let held = Proj::ALL.into_iter().find_map(|p| {
            let prefix = name.strip_suffix(&format!("{}.weight", p.path()))?;
            Some((prefix.to_string(), p, hf_module(c.family, p)))
        });
        match held {
            Some((prefix, p, (module, parts))) if parts.len() > 1 => {
                if p != parts[0] {
                    continue; // written with the module's first part
                }
                let parts = parts
                    .iter()
                    .map(|q| {
                        map.get(&format!("{prefix}{}.weight", q.path()))
                            .context("a fused projection's part is missing")?
                            .to_tensor()
                    })
                    .collect::<Result<Vec<_>>>()?;
                out.push((format!("{prefix}{module}.weight"), Weight::Tensor(Tensor::cat(&parts, 0)?)));
            }
            _ => out.push((name, w)),
        }
    }
    Ok(out)
}

/// The Hugging Face names of a model's tensors, in checkpoint order ([`tensor_specs`]).
pub fn tensor_names(c: &LlamaConfig) -> Vec<String> {
    tensor_specs(c).into_iter().map(|s| s.name).collect()
}

/// One decoder layer: pre-norm attention and pre-norm gated MLP, each with a residual (and,
/// for Gemma 2/3, a norm on each branch's output).
#[derive(Clone)]
pub struct Block {
    /// The projections, indexed by [`Proj`] (see [`Block::proj`]).
    pub projs: Vec<Linear>,
    /// The norm weights, indexed by [`Norm`] (`None`: the family has no such norm).
    norms: [Option<Tensor>; 6],
}

impl Block {
    pub fn proj(&self, p: Proj) -> &Linear {
        &self.projs[p as usize]
    }

    fn norm(&self, n: Norm) -> Option<&Tensor> {
        self.norms[n as usize].as_ref()
    }

    /// Every norm weight of the layer, mutably (for [`Llama::detached`]).
    fn norms_mut(&mut self) -> impl Iterator<Item = &mut Tensor> {
        self.norms.iter_mut().flatten()
    }
}

/// The rotary tables of one forward pass: the full layers', and the sliding layers' where they
/// have their own parameters (Gemma 3).
#[derive(Clone)]
pub struct RopeTables {
    full: Arc<RopeTable>,
    local: Option<Arc<RopeTable>>,
}

/// A Llama-family causal language model (Touvron et al. 2023), f32 or f64.
///
/// The weights are plain tensors: when they are the tensors of `candle_core::Var`s the forward
/// pass records the graph for the backward pass; [`Llama::detached`] gives an inference-only view
/// sharing the same storage, so an optimiser update is seen by both.
#[derive(Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    /// `[vocab, hidden]`.
    pub embed: Weight,
    pub layers: Vec<Block>,
    /// Final RMSNorm weight `[hidden]`.
    pub norm: Tensor,
    /// `[vocab, hidden]`, `None` when tied to `embed`.
    pub lm_head: Option<Weight>,
    /// Training mode: `Some(seed)` draws the LoRA dropout masks of a forward pass from `seed`
    /// (one mask per layer and projection); `None` (evaluation, reference passes): no dropout.
    pub dropout_seed: Option<u64>,
    /// Training mode with NEFTune ([`Llama::with_neftune`]): the noise added to the embeddings of
    /// a forward pass; `None`: none.
    pub neftune: Option<EmbeddingNoise>,
}

/// NEFTune's noise on the input embeddings (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve
/// Instruction Finetuning", arXiv 2310.05914, Algorithm 1; transformers'
/// `neftune_post_forward_hook`): each element of `[rows, hidden]` gets `U(-magnitude, magnitude)`,
/// `magnitude = alpha / sqrt(L * hidden)` for sequences of length `L`, drawn from `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmbeddingNoise {
    pub magnitude: f64,
    pub seed: u64,
}

/// `U(-magnitude, magnitude)` noise of `shape` (`[rows, hidden]`), element `k` drawn from
/// `dpo_kernels::uniform(seed, k)`: the same values for the same seed, whatever the thread count.
fn uniform_noise(n: EmbeddingNoise, shape: (usize, usize), dtype: DType) -> Result<Tensor> {
    use rayon::prelude::*;
    let v: Vec<f64> = (0..shape.0 * shape.1)
        .into_par_iter()
        .map(|k| (2.0 * dpo_kernels::uniform(n.seed, k as u64) - 1.0) * n.magnitude)
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

impl Llama {
    /// Builds the model from f32/f64 tensors named as in a Hugging Face checkpoint
    /// ([`tensor_specs`]); see [`Llama::from_weights`].
    pub fn from_tensors(config: LlamaConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let weights: HashMap<String, Weight> =
            tensors.iter().map(|(n, t)| (n.clone(), Weight::Tensor(t.clone()))).collect();
        Self::from_weights(config, &weights)
    }

    /// Builds the model from weights named as in a Hugging Face checkpoint ([`tensor_specs`]):
    /// matrices may be frozen compact ones, norms and biases are tensors. Errors name a missing
    /// tensor or a tensor whose shape does not fit the config.
    pub fn from_weights(config: LlamaConfig, weights: &HashMap<String, Weight>) -> Result<Self> {
        check_weights(&config, weights)?;
        let mut specs = tensor_specs(&config).into_iter();
        let mut next = || -> Result<Weight> {
            let s = specs.next().context("fewer tensors in the table than the model reads")?;
            Ok(weights.get(&s.name).with_context(|| format!("missing tensor `{}`", s.name))?.clone())
        };
        // Norms and biases are always tensors.
        let tensor = |w: Weight| -> Result<Tensor> { Ok(w.tensor("a norm or bias")?.clone()) };
        let embed = next()?;
        let parts = layer_parts(&config);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            let (mut norms, mut projs) = (<[Option<Tensor>; 6]>::default(), Vec::with_capacity(Proj::ALL.len()));
            for &part in &parts {
                match part {
                    LayerPart::Norm(n) => norms[n as usize] = Some(tensor(next()?)?),
                    LayerPart::Proj(p) => {
                        let w = next()?;
                        let b = if p.has_bias(&config) { Some(tensor(next()?)?) } else { None };
                        projs.push(Linear { w, b, lora: None });
                    }
                }
            }
            layers.push(Block { projs, norms });
        }
        let norm = tensor(next()?)?;
        let lm_head = if config.tie_word_embeddings { None } else { Some(next()?) };
        Ok(Self { config, embed, layers, norm, lm_head, dropout_seed: None, neftune: None })
    }

    /// The model's weights with their Hugging Face names, in [`tensor_specs`] order (adapters
    /// not included).
    pub fn named_weights(&self) -> Vec<(String, Weight)> {
        let mut out = vec![self.embed.clone()];
        let parts = layer_parts(&self.config);
        for l in &self.layers {
            for &part in &parts {
                match part {
                    LayerPart::Norm(n) => out.extend(l.norm(n).cloned().map(Weight::from)),
                    LayerPart::Proj(p) => {
                        out.push(l.proj(p).w.clone());
                        out.extend(l.proj(p).b.clone().map(Weight::from));
                    }
                }
            }
        }
        out.push(self.norm.clone().into());
        out.extend(self.lm_head.clone());
        tensor_names(&self.config).into_iter().zip(out).collect()
    }

    /// The model's tensors with their Hugging Face names, in [`tensor_specs`] order (frozen
    /// matrices dequantized to f32; adapters not included).
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.named_weights().into_iter().map(|(n, w)| Ok((n, w.to_tensor()?))).collect()
    }

    /// An inference-only view: the same storage, no gradient tracking, no dropout.
    pub fn detached(&self) -> Self {
        let mut m = self.clone();
        m.embed = m.embed.detach();
        m.lm_head = m.lm_head.map(|w| w.detach());
        m.norm = m.norm.detach();
        for l in &mut m.layers {
            for n in l.norms_mut() {
                *n = n.detach();
            }
            for p in &mut l.projs {
                p.w = p.w.detach();
                p.b = p.b.as_ref().map(Tensor::detach);
                p.lora = p.lora.as_ref().map(Lora::detach);
            }
        }
        m.dropout_seed = None;
        m.neftune = None;
        m
    }

    /// The same model computing in mixed precision (`--bf16`): every trainable f32 weight
    /// matrix that takes part in a product (the projections, the output head, and the embedding
    /// when tied to it) becomes [`Weight::Mixed`], sharing its tensor's storage, with a bf16 copy
    /// for the products; norms, biases, embedding lookups and frozen matrices are unchanged.
    pub fn with_bf16_products(&self) -> Result<Self> {
        let mut m = self.clone();
        if m.config.tie_word_embeddings {
            m.embed = m.embed.with_bf16_products()?;
        }
        m.lm_head = m.lm_head.as_ref().map(Weight::with_bf16_products).transpose()?;
        for l in &mut m.layers {
            for p in &mut l.projs {
                p.w = p.w.with_bf16_products()?;
            }
        }
        Ok(m)
    }

    /// Re-rounds the bf16 copies of a mixed-precision model from their masters: after an
    /// optimizer step or a restore changed the weights in place. Nothing for other models.
    pub fn refresh_bf16_copies(&self) -> Result<()> {
        self.embed.refresh()?;
        self.lm_head.as_ref().map(Weight::refresh).transpose()?;
        self.layers.iter().flat_map(|l| &l.projs).try_for_each(|p| p.w.refresh())
    }

    /// Whether the model's products run in mixed precision ([`Llama::with_bf16_products`]).
    pub fn has_bf16_products(&self) -> bool {
        matches!(self.output_weight(), Weight::Mixed { .. })
            || self.layers.iter().flat_map(|l| &l.projs).any(|p| matches!(p.w, Weight::Mixed { .. }))
    }

    /// The model without its adapters (a LoRA run's reference: the frozen base).
    pub fn without_adapters(&self) -> Self {
        let mut m = self.clone();
        for l in &mut m.layers {
            for p in &mut l.projs {
                p.lora = None;
            }
        }
        m
    }

    /// The same model in training mode, its LoRA dropout masks drawn from `seed`.
    pub fn with_dropout(&self, seed: u64) -> Self {
        Self { dropout_seed: Some(seed), ..self.clone() }
    }

    /// The same model with NEFTune's `noise` added to the embeddings of its forward passes.
    pub fn with_neftune(&self, noise: EmbeddingNoise) -> Self {
        Self { neftune: Some(noise), ..self.clone() }
    }

    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// The output projection `[vocab, hidden]` (the embedding when tied).
    pub fn output_weight(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Rotary angles for the given positions, in the model's dtype: the full layers' table, and
    /// the sliding layers' where their parameters differ (Gemma 3).
    pub fn rope_table(&self, positions: &[u32]) -> Result<RopeTables> {
        let c = &self.config;
        let table = |r| -> Result<Arc<RopeTable>> {
            Ok(Arc::new(match self.dtype() {
                DType::F32 => RopeTable::new::<f32>(c.head_dim, r, positions)?,
                DType::F64 => RopeTable::new::<f64>(c.head_dim, r, positions)?,
                d => bail!("model dtype {d:?} is not supported (f32, f64)"),
            }))
        };
        let local = match &c.features.rope_local {
            Some(r) if c.features.sliding_window.is_some() => Some(table(r)?),
            _ => None,
        };
        Ok(RopeTables { full: table(&c.rope)?, local })
    }

    /// The attention scale, soft-capping and window of layer `i`.
    pub fn attention_params(&self, i: usize) -> AttentionParams {
        let (c, f) = (&self.config, &self.config.features);
        AttentionParams {
            scale: 1.0 / f.query_pre_attn_scalar.unwrap_or(c.head_dim as f64).sqrt(),
            softcap: f.attn_logit_softcapping,
            window: match c.layer_attention(i) {
                LayerAttention::Sliding => f.sliding_window,
                LayerAttention::Full => None,
            },
        }
    }

    /// Hidden states after the last layer (before the final norm), `[rows, hidden]`, for the token
    /// ids of a packed batch whose attention is described by `layout`.
    pub fn hidden_states(&self, ids: &[u32], layout: &Arc<AttentionLayout>) -> Result<Tensor> {
        if ids.len() != layout.rows {
            bail!("{} token ids for a layout of {} rows", ids.len(), layout.rows);
        }
        let c = &self.config;
        self.forward_rows(ids, &layout.positions(), &mut |i, q, k, v| {
            Ok(attention(q, k, v, layout, c.num_attention_heads, c.num_key_value_heads, self.attention_params(i))?)
        })
    }

    /// Hidden states of packed prompts (one attention group each) and every prompt's key/value
    /// cache, for generation. Returns the hidden state of each prompt's last token `[prompts, hidden]`.
    pub fn prefill(&self, prompts: &[&[u32]]) -> Result<(Tensor, Vec<KvCache>)> {
        let c = &self.config;
        let mut ids = Vec::new();
        let mut groups = Vec::new();
        for p in prompts {
            if p.is_empty() {
                bail!("cannot generate after an empty prompt (no token to condition on)");
            }
            groups.push(Group { prompt: ids.len()..ids.len() + p.len(), branches: vec![] });
            ids.extend_from_slice(p);
        }
        let layout = Arc::new(AttentionLayout { rows: ids.len(), groups });
        let mut caches = vec![KvCache::new(c.num_hidden_layers); prompts.len()];
        let hidden = self.forward_rows(&ids, &layout.positions(), &mut |layer, q, k, v| {
            let (k32, v32) = (k.to_dtype(DType::F32)?.to_vec2::<f32>()?, v.to_dtype(DType::F32)?.to_vec2::<f32>()?);
            for (cache, g) in caches.iter_mut().zip(&layout.groups) {
                cache.k[layer] = k32[g.prompt.clone()].concat();
                cache.v[layer] = v32[g.prompt.clone()].concat();
            }
            Ok(attention(q, k, v, &layout, c.num_attention_heads, c.num_key_value_heads, self.attention_params(layer))?)
        })?;
        for (cache, p) in caches.iter_mut().zip(prompts) {
            cache.len = p.len();
        }
        let last: Vec<u32> = layout.groups.iter().map(|g| (g.prompt.end - 1) as u32).collect();
        Ok((hidden.index_select(&Tensor::new(last.as_slice(), &Device::Cpu)?, 0)?, caches))
    }

    /// One generation step: token `ids[b]` of sequence `b` at position `caches[b].len`, attending to
    /// its cache, which grows by one. Returns the new hidden states `[sequences, hidden]`.
    pub fn decode_step(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let c = &self.config;
        let positions: Vec<u32> = caches.iter().map(|k| k.len as u32).collect();
        let hidden = self.forward_rows(ids, &positions, &mut |layer, q, k, v| {
            let (k32, v32) = (k.to_dtype(DType::F32)?.to_vec2::<f32>()?, v.to_dtype(DType::F32)?.to_vec2::<f32>()?);
            for ((cache, kr), vr) in caches.iter_mut().zip(k32).zip(v32) {
                cache.k[layer].extend(kr);
                cache.v[layer].extend(vr);
            }
            let q32 = q.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let ks: Vec<&[f32]> = caches.iter().map(|k| k.k[layer].as_slice()).collect();
            let vs: Vec<&[f32]> = caches.iter().map(|k| k.v[layer].as_slice()).collect();
            let out = decode_attention(
                &q32,
                &ks,
                &vs,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim,
                self.attention_params(layer),
            );
            Ok(Tensor::from_vec(out, q.shape(), &Device::Cpu)?.to_dtype(q.dtype())?)
        })?;
        for k in caches.iter_mut() {
            k.len += 1;
        }
        Ok(hidden)
    }

    /// The layers over rows of token ids at the given rotary positions; `attend(layer, q, k, v)`
    /// (rotary already applied to `q` and `k`) computes each layer's attention output.
    fn forward_rows(
        &self,
        ids: &[u32],
        positions: &[u32],
        attend: &mut dyn FnMut(usize, &Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let rope = self.rope_table(positions)?;
        let mut x = self.embed_rows(ids)?;
        for i in 0..self.layers.len() {
            x = self.layer(i, &x, &rope, attend)?;
        }
        Ok(x)
    }

    /// The input of the first layer for `ids`, `[ids, hidden]`: the token embeddings (Gemma:
    /// times `sqrt(hidden)` rounded to the model's dtype, as transformers' `normalizer`).
    /// Errors: an id outside the vocabulary.
    pub fn embed_rows(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            bail!("token id {t} is outside the vocabulary of {}", self.config.vocab_size);
        }
        let mut x = self.embed.rows(ids)?;
        if self.config.features.scale_embeddings {
            let s = (self.config.hidden_size as f64).sqrt();
            let s = if x.dtype() == DType::F32 { s as f32 as f64 } else { s };
            x = x.affine(s, 0.0)?;
        }
        match self.neftune {
            Some(n) => Ok((&x + uniform_noise(n, x.dims2()?, x.dtype())?)?),
            None => Ok(x),
        }
    }

    /// RMSNorm of the rows of `x` with weight `w` (Gemma: `1 + w`).
    fn rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        Ok(if self.config.features.norm_plus_one {
            rms_norm(x, &w.affine(1.0, 1.0)?, eps)?
        } else {
            rms_norm(x, w, eps)?
        })
    }

    /// RMSNorm of every head of `x` `[rows, heads*head_dim]` with weight `w` `[head_dim]`.
    fn rms_heads(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (rows, width) = x.dims2()?;
        let d = self.config.head_dim;
        self.rms(&x.reshape((rows * width / d, d))?, w)?.reshape((rows, width)).map_err(Into::into)
    }

    /// Decoder layer `i` over rows `x` `[rows, hidden]` at the rotary positions of `rope`;
    /// `attend(i, q, k, v)` computes the attention output (rotary already applied to q and k).
    pub fn layer(
        &self,
        i: usize,
        x: &Tensor,
        rope: &RopeTables,
        attend: &mut dyn FnMut(usize, &Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let b = &self.layers[i];
        let table = match (c.layer_attention(i), &rope.local) {
            (LayerAttention::Sliding, Some(t)) => t,
            _ => &rope.full,
        };
        let rot = || Rope { table: table.clone(), head_dim: c.head_dim };
        let lin = |p: Proj, x: &Tensor| b.proj(p).forward(x, self.mask_seed(i, p));
        let norm = |n: Norm| b.norm(n).with_context(|| format!("layer {i} has no {}", n.path()));
        let h = self.rms(x, norm(Norm::Input)?)?;
        let (mut q, mut k) = (lin(Proj::Q, &h)?, lin(Proj::K, &h)?);
        if c.features.qk_norm {
            q = self.rms_heads(&q, norm(Norm::Query)?)?;
            k = self.rms_heads(&k, norm(Norm::Key)?)?;
        }
        let (q, k) = (q.apply_op1(rot())?, k.apply_op1(rot())?);
        let v = lin(Proj::V, &h)?;
        let a = lin(Proj::O, &attend(i, &q, &k, &v)?)?;
        let sandwich = c.features.sandwich_norms;
        let x = if sandwich { (x + self.rms(&a, norm(Norm::PostAttention)?)?)? } else { (x + a)? };
        let h = self.rms(&x, norm(if sandwich { Norm::PreFeedForward } else { Norm::PostAttention })?)?;
        let m = lin(Proj::Gate, &h)?.apply_op2(&lin(Proj::Up, &h)?, Glu(c.features.hidden_act))?;
        let m = lin(Proj::Down, &m)?;
        Ok(if sandwich { (x + self.rms(&m, norm(Norm::PostFeedForward)?)?)? } else { (x + m)? })
    }

    /// [`Llama::layer`] with the attention of a packed batch's `layout` (training and scoring).
    pub fn packed_layer(
        &self,
        i: usize,
        x: &Tensor,
        rope: &RopeTables,
        layout: &Arc<AttentionLayout>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let params = self.attention_params(i);
        self.layer(i, x, rope, &mut |_, q, k, v| {
            Ok(attention(q, k, v, layout, c.num_attention_heads, c.num_key_value_heads, params)?)
        })
    }

    /// The seed of the dropout mask of projection `p` of layer `i` in this forward pass (`None`
    /// outside training).
    /// The projections of one fused module (Phi-3's `qkv_proj`) share their module's mask, as
    /// PEFT drops out the module's input once.
    fn mask_seed(&self, i: usize, p: Proj) -> Option<u64> {
        self.dropout_seed.map(|s| {
            let p = hf_module(self.config.family, p).1[0];
            dpo_kernels::mix_seed(s, (i * Proj::ALL.len() + p as usize) as u64)
        })
    }

    /// `log pi(target_i | prefix)` in nats, `[n]`, for the hidden rows `pred_rows[i]` of
    /// [`Llama::hidden_states`] (the row before each target token): final norm, then the chunked
    /// output projection (soft-capped for Gemma 2/3) + log-softmax of [`dpo_kernels::LogpHead`].
    /// Also returns the per-row log-sum-exp and logit sums of that forward.
    pub fn token_logps(
        &self,
        hidden: &Tensor,
        pred_rows: &[u32],
        targets: Arc<Vec<u32>>,
    ) -> Result<(Tensor, Arc<Mutex<LogpHeadStats>>)> {
        let h = hidden.index_select(&Tensor::new(pred_rows, &Device::Cpu)?, 0)?;
        let h = self.rms(&h, &self.norm)?;
        let cap = self.config.features.final_logit_softcapping;
        Ok(match self.output_weight() {
            Weight::Tensor(w) => logp_head(&h, w, targets, cap)?,
            Weight::Frozen(w) => logp_head_frozen(&h, w, targets, cap)?,
            Weight::Mixed { master, copy } => logp_head_mixed(&h, master, copy, targets, cap)?,
        })
    }

    /// The final norm of hidden rows `[rows, hidden]` of [`Llama::hidden_states`] (what
    /// transformers' `last_hidden_state` holds, the input of the output or score head).
    pub fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        self.rms(hidden, &self.norm)
    }

    /// Full-vocabulary logits `[rows, vocab]` of the given hidden rows, soft-capped where the
    /// family caps them (inference and tests only).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.rms(hidden, &self.norm)?;
        let z = self.output_weight().matmul_t(&h)?;
        Ok(match self.config.features.final_logit_softcapping {
            Some(cap) => ((z / cap)?.tanh()? * cap)?,
            None => z,
        })
    }
}
