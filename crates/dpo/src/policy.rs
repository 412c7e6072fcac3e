//! The trainable policy: a [`Llama`] whose weights are candle `Var`s.

use crate::model::{tensor_names, Llama, LlamaConfig};
use anyhow::{Context, Result};
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// The policy model and its parameters (Hugging Face names, [`tensor_names`] order). The model's
/// tensors are the `Var`s' own, so the forward pass records the graph for autograd and an
/// optimiser step (in place) is seen by the model at once.
pub struct Policy {
    pub model: Llama,
    pub params: Vec<(String, Var)>,
}

impl Policy {
    /// Copies `tensors` into fresh `Var`s and builds the model on them.
    pub fn new(config: LlamaConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let mut params = Vec::new();
        let mut named = HashMap::new();
        for name in tensor_names(&config) {
            let t = tensors.get(&name).with_context(|| format!("missing tensor `{name}`"))?;
            let v = Var::from_tensor(&t.contiguous()?)?;
            named.insert(name.clone(), v.as_tensor().clone());
            params.push((name, v));
        }
        Ok(Self { model: Llama::from_tensors(config, &named)?, params })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }
}
