//! The trainable policy: every weight of a [`Llama`] (full fine-tuning), or LoRA adapters on its
//! frozen base ([`Policy::lora`]). Trainable tensors are candle `Var`s.

use crate::adapter::{peft_name, Adapter, AdapterModule, Lora, LoraConfig};
use crate::hf_module;
use crate::LoadOptions;
use crate::{tensor_names, Llama, LlamaConfig, Weight};
use anyhow::bail;
use anyhow::{Context, Result};
use candle_core::{DType, Tensor, Var};
use dpo_kernels::qmatmul::BaseDType;
use dpo_kernels::qmatmul::FrozenMatrix;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// How the policy is built and run, for every command that trains (`train`, `sft`, `bench`,
/// `demo`): the form the base is loaded in, an adapter merged into it, LoRA, recomputation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default)]
pub struct ModelSetup {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub load: LoadOptions,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub lora: LoraConfig,
    /// Keep each decoder layer's input only and recompute the layer in the backward pass (less activation memory, one more forward of compute; same gradients).
    #[cfg_attr(feature = "cli", arg(long))]
    pub gradient_checkpointing: bool,
    /// Mixed precision as transformers' `bf16=True` (TRL's name): f32 master weights and AdamW moments, every matrix product of the trained weights with bf16 operands and f32 accumulation (forward, input and weight gradients), norms, softmax, log-probs and losses in f32; the reference pass too.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bf16: bool,
}

impl ModelSetup {
    /// Refuses a compact base without an adapter to train, and an invalid adapter.
    pub fn validate(&self) -> Result<()> {
        if self.lora.use_peft {
            self.lora.validate()
        } else if self.load.base_dtype != BaseDType::F32 {
            bail!("--base-dtype {} keeps the weights frozen: add --use-peft to train an adapter on it (full fine-tuning trains every weight in f32)", self.load.base_dtype)
        } else {
            Ok(())
        }
    }

    /// `model` as `--bf16` computes it: with bf16 products ([`Llama::with_bf16_products`]), or
    /// as it is.
    pub fn in_precision(&self, model: Llama) -> Result<Llama> {
        if self.bf16 {
            model.with_bf16_products()
        } else {
            Ok(model)
        }
    }
}

/// Something a policy's initial tensor can be read from: a tensor, or a loaded [`Weight`] (which
/// must then be a tensor: full fine-tuning trains f32 weights).
pub trait TensorSource {
    fn tensor_for(&self, name: &str) -> Result<Tensor>;
}

impl TensorSource for Tensor {
    fn tensor_for(&self, _: &str) -> Result<Tensor> {
        Ok(self.clone())
    }
}

impl TensorSource for Weight {
    fn tensor_for(&self, name: &str) -> Result<Tensor> {
        Ok(self.tensor(&format!("tensor `{name}`"))?.clone())
    }
}

/// The policy model and its trainable parameters. The model's trainable tensors are the `Var`s'
/// own, so the forward pass records the graph for autograd and an optimiser step (in place) is
/// seen by the model at once.
pub struct Policy {
    pub model: Llama,
    /// `(name, var)`: Hugging Face names in [`tensor_names`] order (full fine-tuning), or PEFT's
    /// `...lora_A.weight` / `...lora_B.weight` names, layer by layer (LoRA).
    pub params: Vec<(String, Var)>,
    /// The LoRA settings when the parameters are adapters.
    pub lora: Option<LoraConfig>,
}

impl Policy {
    /// Full fine-tuning: copies `tensors` into fresh `Var`s and builds the model on them.
    pub fn new<W: TensorSource>(config: LlamaConfig, tensors: &HashMap<String, W>) -> Result<Self> {
        let mut params = Vec::new();
        let mut named = HashMap::new();
        for name in tensor_names(&config) {
            let t = tensors.get(&name).with_context(|| format!("missing tensor `{name}`"))?.tensor_for(&name)?;
            let v = Var::from_tensor(&t.contiguous()?)?;
            named.insert(name.clone(), v.as_tensor().clone());
            params.push((name, v));
        }
        Ok(Self { model: Llama::from_tensors(config, &named)?, params, lora: None })
    }

    /// LoRA: the base's weight matrices frozen (an f32/f64 tensor becomes a frozen matrix of the
    /// same values, so that no weight gradient is ever formed), `adapter`'s `A` and `B` as the
    /// trainable `Var`s (PEFT names).
    pub fn lora(base: &Llama, adapter: &Adapter) -> Result<Self> {
        let mut model = freeze(base)?;
        let scale = adapter.config.scale();
        let mut params = Vec::with_capacity(2 * adapter.modules.len());
        let family = base.config.family;
        for m in &adapter.modules {
            // One A and one B per PEFT module: the parts of a fused one (Phi-3's qkv_proj) share
            // its A and read their rows of its B.
            let parts = hf_module(family, m.proj).1;
            if parts[0] != m.proj {
                continue;
            }
            let members: Vec<&AdapterModule> = parts.iter().filter_map(|&p| adapter.module(m.layer, p)).collect();
            let bs: Vec<Tensor> = members.iter().map(|x| x.b.clone()).collect();
            let (a, b) =
                (Var::from_tensor(&m.a.contiguous()?)?, Var::from_tensor(&Tensor::cat(&bs, 0)?.contiguous()?)?);
            let mut row = 0;
            for x in members {
                let rows = x.b.dim(0)?;
                let lin = &mut model.layers[x.layer].projs[x.proj as usize];
                let part = if parts.len() == 1 { b.as_tensor().clone() } else { b.as_tensor().narrow(0, row, rows)? };
                lin.lora =
                    Some(Lora { a: a.as_tensor().clone(), b: part, scale, dropout: adapter.config.lora_dropout });
                row += rows;
            }
            params.push((peft_name(family, m.layer, m.proj, 'A'), a));
            params.push((peft_name(family, m.layer, m.proj, 'B'), b));
        }
        Ok(Self { model, params, lora: Some(adapter.config.clone()) })
    }

    /// The policy with its model's products in mixed precision when `setup` says `--bf16`
    /// ([`ModelSetup::in_precision`]); the trainable `Var`s are the same.
    pub fn in_precision(mut self, setup: &ModelSetup) -> Result<Self> {
        self.model = setup.in_precision(self.model)?;
        Ok(self)
    }

    /// After the trainable weights changed in place (an optimizer step, a restored checkpoint):
    /// the bf16 copies of a mixed-precision model follow ([`Llama::refresh_bf16_copies`]).
    pub fn weights_changed(&self) -> Result<()> {
        self.model.refresh_bf16_copies()
    }

    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The trained adapter (LoRA policies), its tensors the current values of the `Var`s.
    pub fn adapter(&self, base_model: &str) -> Option<Adapter> {
        let config = self.lora.clone()?;
        let modules = self
            .model
            .layers
            .iter()
            .enumerate()
            .flat_map(|(layer, l)| {
                crate::Proj::ALL.into_iter().filter_map(move |proj| {
                    let lora = l.proj(proj).lora.as_ref()?;
                    Some(AdapterModule { layer, proj, a: lora.a.detach(), b: lora.b.detach() })
                })
            })
            .collect();
        Some(Adapter { config, family: self.model.config.family, base_model: base_model.to_string(), modules })
    }
}

/// `model` with every weight matrix frozen: f32/f64 tensors become frozen matrices of the same
/// values (compact ones stay as they are). Norms and biases stay tensors (they are not trained).
pub fn freeze(model: &Llama) -> Result<Llama> {
    let freeze_w = |w: &Weight| -> Result<Weight> {
        Ok(match w {
            Weight::Tensor(t) => {
                let (rows, cols) = t.dims2()?;
                let m = match t.dtype() {
                    DType::F64 => FrozenMatrix::from_f64(t.flatten_all()?.to_vec1::<f64>()?, rows, cols)?,
                    _ => FrozenMatrix::from_f32(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, rows, cols)?,
                };
                Weight::Frozen(Arc::new(m))
            }
            w => w.clone(),
        })
    };
    let mut m = model.detached();
    m.embed = freeze_w(&m.embed)?;
    m.lm_head = m.lm_head.as_ref().map(freeze_w).transpose()?;
    for l in &mut m.layers {
        for p in &mut l.projs {
            p.w = freeze_w(&p.w)?;
        }
    }
    Ok(m)
}
