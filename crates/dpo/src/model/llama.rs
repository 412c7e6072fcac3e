//! The Llama decoder, built only from ops that have a backward pass.

use super::adapter::Lora;
use super::{LlamaConfig, Weight};
use crate::ops::{attention, decode_attention, logp_head, logp_head_frozen, lora_linear, rms_norm, AttentionLayout, Group, LogpHeadStats, Rope, RopeTable, SwiGlu};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
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

    /// Whether the config gives this projection a bias (Qwen2's q/k/v).
    pub fn has_bias(self, c: &LlamaConfig) -> bool {
        c.attention_bias && matches!(self, Proj::Q | Proj::K | Proj::V)
    }
}

/// A tensor of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerPart {
    InputNorm,
    PostNorm,
    Proj(Proj),
}

/// The tensors of a decoder layer in checkpoint order (a projection's bias follows its weight).
const LAYER_ORDER: [LayerPart; 9] = [
    LayerPart::InputNorm,
    LayerPart::Proj(Proj::Q),
    LayerPart::Proj(Proj::K),
    LayerPart::Proj(Proj::V),
    LayerPart::Proj(Proj::O),
    LayerPart::PostNorm,
    LayerPart::Proj(Proj::Gate),
    LayerPart::Proj(Proj::Up),
    LayerPart::Proj(Proj::Down),
];

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
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for part in LAYER_ORDER {
            match part {
                LayerPart::InputNorm => out.push(spec(format!("{p}.input_layernorm.weight"), vec![h], TensorRole::Norm)),
                LayerPart::PostNorm => out.push(spec(format!("{p}.post_attention_layernorm.weight"), vec![h], TensorRole::Norm)),
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

/// The Hugging Face names of a model's tensors, in checkpoint order ([`tensor_specs`]).
pub fn tensor_names(c: &LlamaConfig) -> Vec<String> {
    tensor_specs(c).into_iter().map(|s| s.name).collect()
}

/// One decoder layer: pre-norm attention and pre-norm SwiGLU MLP, each with a residual.
#[derive(Clone)]
pub struct Block {
    pub input_norm: Tensor,
    /// The projections, indexed by [`Proj`] (see [`Block::proj`]).
    pub projs: Vec<Linear>,
    pub post_norm: Tensor,
}

impl Block {
    pub fn proj(&self, p: Proj) -> &Linear {
        &self.projs[p as usize]
    }
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
}

impl Llama {
    /// Builds the model from f32/f64 tensors named as in a Hugging Face checkpoint
    /// ([`tensor_specs`]); see [`Llama::from_weights`].
    pub fn from_tensors(config: LlamaConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let weights: HashMap<String, Weight> = tensors.iter().map(|(n, t)| (n.clone(), Weight::Tensor(t.clone()))).collect();
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
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            let (mut input_norm, mut post_norm, mut projs) = (None, None, Vec::with_capacity(Proj::ALL.len()));
            for part in LAYER_ORDER {
                match part {
                    LayerPart::InputNorm => input_norm = Some(tensor(next()?)?),
                    LayerPart::PostNorm => post_norm = Some(tensor(next()?)?),
                    LayerPart::Proj(p) => {
                        let w = next()?;
                        let b = if p.has_bias(&config) { Some(tensor(next()?)?) } else { None };
                        projs.push(Linear { w, b, lora: None });
                    }
                }
            }
            let (Some(input_norm), Some(post_norm)) = (input_norm, post_norm) else { bail!("a layer without its norms") };
            layers.push(Block { input_norm, projs, post_norm });
        }
        let norm = tensor(next()?)?;
        let lm_head = if config.tie_word_embeddings { None } else { Some(next()?) };
        Ok(Self { config, embed, layers, norm, lm_head, dropout_seed: None })
    }

    /// The model's weights with their Hugging Face names, in [`tensor_specs`] order (adapters
    /// not included).
    pub fn named_weights(&self) -> Vec<(String, Weight)> {
        let mut out = vec![self.embed.clone()];
        for l in &self.layers {
            for part in LAYER_ORDER {
                match part {
                    LayerPart::InputNorm => out.push(l.input_norm.clone().into()),
                    LayerPart::PostNorm => out.push(l.post_norm.clone().into()),
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
            l.input_norm = l.input_norm.detach();
            l.post_norm = l.post_norm.detach();
            for p in &mut l.projs {
                p.w = p.w.detach();
                p.b = p.b.as_ref().map(Tensor::detach);
                p.lora = p.lora.as_ref().map(Lora::detach);
            }
        }
        m.dropout_seed = None;
        m
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

    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// The output projection `[vocab, hidden]` (the embedding when tied).
    pub fn output_weight(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Rotary angles for the given positions, in the model's dtype.
    pub fn rope_table(&self, positions: &[u32]) -> Result<Arc<RopeTable>> {
        let c = &self.config;
        Ok(Arc::new(match self.dtype() {
            DType::F32 => RopeTable::new::<f32>(c.head_dim, c.rope_theta, c.rope_scaling, positions),
            DType::F64 => RopeTable::new::<f64>(c.head_dim, c.rope_theta, c.rope_scaling, positions),
            d => bail!("model dtype {d:?} is not supported (f32, f64)"),
        }))
    }

    /// Hidden states after the last layer (before the final norm), `[rows, hidden]`, for the token
    /// ids of a packed batch whose attention is described by `layout`.
    pub fn hidden_states(&self, ids: &[u32], layout: &Arc<AttentionLayout>) -> Result<Tensor> {
        if ids.len() != layout.rows {
            bail!("{} token ids for a layout of {} rows", ids.len(), layout.rows);
        }
        let c = &self.config;
        self.forward_rows(ids, &layout.positions(), &mut |_, q, k, v| {
            Ok(attention(q, k, v, layout, c.num_attention_heads, c.num_key_value_heads)?)
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
            Ok(attention(q, k, v, &layout, c.num_attention_heads, c.num_key_value_heads)?)
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
            let out = decode_attention(&q32, &ks, &vs, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
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

    /// The token embeddings of `ids`, `[ids, hidden]`. Errors: an id outside the vocabulary.
    pub fn embed_rows(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            bail!("token id {t} is outside the vocabulary of {}", self.config.vocab_size);
        }
        self.embed.rows(ids)
    }

    /// Decoder layer `i` over rows `x` `[rows, hidden]` at the rotary positions of `rope`;
    /// `attend(i, q, k, v)` computes the attention output (rotary already applied to q and k).
    pub fn layer(&self, i: usize, x: &Tensor, rope: &Arc<RopeTable>, attend: &mut dyn FnMut(usize, &Tensor, &Tensor, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let c = &self.config;
        let b = &self.layers[i];
        let rot = || Rope { table: rope.clone(), head_dim: c.head_dim };
        let lin = |p: Proj, x: &Tensor| b.proj(p).forward(x, self.mask_seed(i, p));
        let h = rms_norm(x, &b.input_norm, c.rms_norm_eps)?;
        let q = lin(Proj::Q, &h)?.apply_op1(rot())?;
        let k = lin(Proj::K, &h)?.apply_op1(rot())?;
        let v = lin(Proj::V, &h)?;
        let a = attend(i, &q, &k, &v)?;
        let x = (x + lin(Proj::O, &a)?)?;
        let h = rms_norm(&x, &b.post_norm, c.rms_norm_eps)?;
        let m = lin(Proj::Gate, &h)?.apply_op2(&lin(Proj::Up, &h)?, SwiGlu)?;
        Ok((x + lin(Proj::Down, &m)?)?)
    }

    /// [`Llama::layer`] with the attention of a packed batch's `layout` (training and scoring).
    pub fn packed_layer(&self, i: usize, x: &Tensor, rope: &Arc<RopeTable>, layout: &Arc<AttentionLayout>) -> Result<Tensor> {
        let c = &self.config;
        self.layer(i, x, rope, &mut |_, q, k, v| Ok(attention(q, k, v, layout, c.num_attention_heads, c.num_key_value_heads)?))
    }

    /// The seed of the dropout mask of projection `p` of layer `i` in this forward pass (`None`
    /// outside training).
    fn mask_seed(&self, i: usize, p: Proj) -> Option<u64> {
        self.dropout_seed.map(|s| crate::ops::mix_seed(s, (i * Proj::ALL.len() + p as usize) as u64))
    }

    /// `log pi(target_i | prefix)` in nats, `[n]`, for the hidden rows `pred_rows[i]` of
    /// [`Llama::hidden_states`] (the row before each target token): final norm, then the chunked
    /// output projection + log-softmax of [`crate::ops::LogpHead`]. Also returns the per-row
    /// log-sum-exp and logit sums of that forward.
    pub fn token_logps(&self, hidden: &Tensor, pred_rows: &[u32], targets: Arc<Vec<u32>>) -> Result<(Tensor, Arc<Mutex<LogpHeadStats>>)> {
        let h = hidden.index_select(&Tensor::new(pred_rows, &Device::Cpu)?, 0)?;
        let h = rms_norm(&h, &self.norm, self.config.rms_norm_eps)?;
        Ok(match self.output_weight() {
            Weight::Tensor(w) => logp_head(&h, w, targets)?,
            Weight::Frozen(w) => logp_head_frozen(&h, w, targets)?,
        })
    }

    /// Full-vocabulary logits `[rows, vocab]` of the given hidden rows (inference and tests only).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = rms_norm(hidden, &self.norm, self.config.rms_norm_eps)?;
        self.output_weight().matmul_t(&h)
    }
}
