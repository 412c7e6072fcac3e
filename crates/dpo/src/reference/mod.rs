//! Reference log-probs: computed once before training, cached on disk, read back.
//!
//! The reference model never changes during DPO, so `log pi_ref(y|x)` of every completion is
//! computed once (with the initial policy weights, which are the reference) and training keeps
//! only the policy in memory ([`References::Fixed`]). TR-DPO's reference moves and stays in memory
//! ([`References::Moving`]). The file format is that of `dpo logps` ([`file`]); the cache is
//! keyed by content ([`cache`]).

pub mod cache;
pub mod file;

pub use cache::{cache_path, file_hash, model_hash, reference_logps, Origin};
pub use file::{align, read_file, write_file, Entry};

use crate::config::{SyncReference, TrainConfig};
use crate::data::{data_view, Tokenized, TokenizedSet};
use crate::logps::example_logps;
use crate::model::{self, Llama};
use crate::observer::Observer;
use anyhow::Result;
use std::collections::HashMap;
use std::path::Path;

/// Where the reference log-probs of the examples come from during a run.
pub enum References {
    /// The task needs none (SFT, reference-free losses).
    None,
    /// Computed once before training (or read from `--ref-logps`, or from the cache): per example
    /// of the training set and of the evaluation set.
    Fixed { train: Vec<Vec<f64>>, eval: Option<Vec<Vec<f64>>> },
    /// TR-DPO: the reference model itself, run on every batch, moved every `sync.steps` steps.
    Moving { model: Llama, sync: SyncReference },
}

impl References {
    pub fn prepare(cfg: &TrainConfig, loaded: &model::Loaded, train: &TokenizedSet, eval: Option<&TokenizedSet>, obs: &mut dyn Observer) -> Result<Self> {
        if !cfg.task.needs_reference() {
            return Ok(Self::None);
        }
        let reference = loaded.model()?;
        if let Some(sync) = cfg.sync_ref {
            obs.message(&format!(
                "TR-DPO: the reference moves toward the policy (alpha {}) every {} steps; its log-probs are computed on each batch, the reference cache is not used",
                sync.alpha, sync.steps
            ));
            return Ok(Self::Moving { model: reference, sync });
        }
        let hash = model_hash(&reference, &loaded.tokenizer)?;
        let view = data_view(&cfg.task, cfg.per_device_train_batch_size)?;
        let mut logps_of = |set: &TokenizedSet, data: &Path, given: Option<&Path>| -> Result<Vec<Vec<f64>>> {
            obs.phase(&format!("reference log-probs of {}", data.display()), set.examples.len(), "examples");
            let (v, origin) =
                reference_logps(&reference, &hash, data, &view, set, cfg.tokenize, given, cfg.max_tokens_per_forward, |d| obs.advance(d, ""))?;
            obs.message(&match origin {
                Origin::Given(p) => format!("reference log-probs read from {}", p.display()),
                Origin::Cache(p) => format!("reference log-probs reused from the cache {}", p.display()),
                Origin::Computed(p) => format!("reference log-probs computed and cached in {}", p.display()),
            });
            Ok(v)
        };
        let train = logps_of(train, &cfg.data, cfg.ref_logps.as_deref())?;
        let eval = match (eval, &cfg.eval_data) {
            (Some(s), Some(p)) => Some(logps_of(s, p, None)?),
            _ => None,
        };
        Ok(Self::Fixed { train, eval })
    }

    /// The reference log-probs of the training examples `idx` (`examples[i]` is example `idx[i]`).
    pub fn train_batch(&self, idx: &[usize], examples: &[&Tokenized], max_tokens: usize) -> Result<Vec<Vec<f64>>> {
        Ok(match self {
            Self::None => vec![Vec::new(); idx.len()],
            Self::Fixed { train, .. } => idx.iter().map(|&i| train[i].clone()).collect(),
            Self::Moving { model, .. } => example_logps(model, examples, max_tokens, |_| {})?,
        })
    }

    /// The reference log-probs of the evaluation set's examples.
    pub fn eval(&self, examples: &[&Tokenized], max_tokens: usize) -> Result<Vec<Vec<f64>>> {
        Ok(match self {
            Self::Fixed { eval: Some(e), .. } => e.clone(),
            Self::Moving { model, .. } => example_logps(model, examples, max_tokens, |_| {})?,
            _ => vec![Vec::new(); examples.len()],
        })
    }

    /// After optimiser step `done`: TR-DPO's update `theta_ref <- (1 - alpha) theta_ref + alpha theta`.
    pub fn after_step(&mut self, done: usize, policy: &Llama, obs: &mut dyn Observer) -> Result<()> {
        if let Self::Moving { model, sync } = self {
            if done % sync.steps.max(1) == 0 {
                let p: HashMap<String, candle_core::Tensor> = policy.named_tensors().into_iter().collect();
                let mut mixed = HashMap::new();
                for (name, r) in model.named_tensors() {
                    mixed.insert(name.clone(), ((r * (1.0 - sync.alpha))? + (p[&name].detach() * sync.alpha)?)?);
                }
                *model = Llama::from_tensors(model.config.clone(), &mixed)?;
                obs.message(&format!("step {done}: reference <- {:.2} * reference + {:.2} * policy", 1.0 - sync.alpha, sync.alpha));
            }
        }
        Ok(())
    }
}
