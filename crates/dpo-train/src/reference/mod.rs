//! Reference log-probs: computed once before training, cached on disk, read back.
//!
//! The reference model never changes during DPO, so `log pi_ref(y|x)` of every completion is
//! computed once (with the initial policy weights, which are the reference) and training keeps
//! only the policy in memory ([`References::Fixed`]): of the examples a run uses, when a batch
//! first needs them (LoRA) or before the first step (full fine-tuning, which then frees the
//! reference), each computed once per cache key. TR-DPO's reference moves and stays in memory
//! ([`References::Moving`]). The file format is that of `dpo logps` ([`file`](mod@file)); the cache is
//! keyed by content ([`cache`]).

pub mod cache;
pub mod file;

pub use cache::{cache_path, model_hash, DataHashes, RefStore};
pub use file::{align, read_file, write_file, Entry};

use crate::logps::{example_logps, example_logps_sharded};
use crate::task::Task;
use anyhow::{ensure, Result};
use dpo_data::{TokenizeSettings, Tokenized, TokenizedSet, View};
use dpo_model::tokenizer::Tokenizer;
use dpo_model::Llama;
use dpo_runtime::observer::Observer;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The defaults of TR-DPO's reference update (TRL `ref_model_mixup_alpha`, `ref_model_sync_steps`).
pub mod defaults {
    pub const REF_MODEL_MIXUP_ALPHA: f64 = 0.6;
    pub const REF_MODEL_SYNC_STEPS: usize = 512;
}

/// TR-DPO's reference update (Gorbatovski et al. 2024, §3; TRL's `sync_ref_model`): after every
/// `steps` optimiser steps, `theta_ref <- (1 - alpha) * theta_ref + alpha * theta` (`alpha` = 1
/// is the paper's hard update). The reference then stays in memory and is run on every batch:
/// the reference cache is bypassed. TRL's defaults: alpha 0.6, every 512 steps ([`defaults`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SyncReference {
    pub alpha: f64,
    pub steps: usize,
}

impl SyncReference {
    /// The update with `alpha` every `steps` steps. Errors: `alpha` outside [0, 1], `steps` 0.
    pub fn new(alpha: f64, steps: usize) -> Result<Self> {
        ensure!(
            (0.0..=1.0).contains(&alpha) && steps > 0,
            "--ref-model-mixup-alpha must be in [0, 1] and --ref-model-sync-steps at least 1"
        );
        Ok(Self { alpha, steps })
    }
}

/// Where a run's reference log-probs come from. The field names are the flags'.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReferenceSettings {
    /// A `dpo logps` file of the training data (default: computed once, cached).
    pub ref_logps: Option<PathBuf>,
    /// Compute the reference log-probs of every example the run uses before the first step
    /// (full fine-tuning always does, to free the reference; a LoRA run otherwise computes them
    /// when a batch first needs them).
    pub precompute_ref_log_probs: bool,
    /// TR-DPO: the reference moves toward the policy during training.
    pub sync_ref: Option<SyncReference>,
}

/// A data set as the reference cache keys it: its file (for messages), the hash of its content
/// and its examples.
#[derive(Clone, Copy)]
pub struct KeyedSet<'a> {
    pub path: &'a Path,
    pub hash: &'a str,
    pub set: &'a TokenizedSet,
}

/// The data sets of a run, and how their examples were made (the cache key's other parts).
pub struct RunSets<'a> {
    pub tokenizer: &'a Tokenizer,
    pub tokenize: TokenizeSettings,
    /// How the records were converted for the loss ([`Task::view`]).
    pub view: View,
    /// The training set (`None`: the run makes its own examples, online).
    pub train: Option<KeyedSet<'a>>,
    pub eval: Option<KeyedSet<'a>>,
}

/// Where the reference log-probs of the examples come from during a run (one value a run, so
/// the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
pub enum References {
    /// The task needs none (SFT, reference-free losses).
    None,
    /// A fixed reference: the training set's log-probs from `--ref-logps`, or (both sets) from
    /// the content-keyed cache, computed with `model` when a batch first needs them. `model` is
    /// `None` once everything the run needs is known (full fine-tuning computes that before the
    /// first step and frees the reference; a LoRA run's reference is its own frozen base, kept).
    Fixed { model: Option<Llama>, train: Option<TrainSource>, eval: Option<RefStore>, ld_alpha: Option<f64> },
    /// TR-DPO: the reference model itself, run on every batch, moved every `sync.steps` steps.
    Moving { model: Llama, sync: SyncReference, ld_alpha: Option<f64> },
}

/// The training set's reference log-probs: given in a file, or from the cache.
pub enum TrainSource {
    Given(Vec<Vec<f64>>),
    Cached(RefStore),
}

impl References {
    /// The reference log-probs a run of `task` needs, as `settings` say, of `sets`. `reference`
    /// is the frozen reference model (the initial policy; a LoRA run's base without its
    /// adapter). Nothing is computed yet: see [`References::prefetch`].
    pub fn prepare(
        settings: &ReferenceSettings,
        task: &Task,
        reference: Llama,
        sets: &RunSets,
        obs: &mut dyn Observer,
    ) -> Result<Self> {
        if !task.needs_reference() {
            return Ok(Self::None);
        }
        let ld_alpha = task.ld_alpha();
        if let Some(sync) = settings.sync_ref {
            obs.message(&format!(
                "TR-DPO: the reference moves toward the policy (alpha {}) every {} steps; its log-probs are computed on each batch, the reference cache is not used",
                sync.alpha, sync.steps
            ));
            return Ok(Self::Moving { model: reference, sync, ld_alpha });
        }
        let hash = model_hash(&reference, sets.tokenizer)?;
        let open = |k: &KeyedSet, obs: &mut dyn Observer| -> Result<RefStore> {
            let store = RefStore::open(&hash, k.hash, &sets.view.key(), k.set, sets.tokenize, ld_alpha)?;
            obs.message(&format!(
                "reference log-probs of {}: {} of {} examples in the cache {}",
                k.path.display(),
                store.cached,
                k.set.examples.len(),
                store.path().display()
            ));
            Ok(store)
        };
        let train = match (&settings.ref_logps, &sets.train) {
            (Some(g), Some(t)) => {
                obs.message(&format!("reference log-probs read from {}", g.display()));
                Some(TrainSource::Given(align(g, &read_file(g)?, t.set)?))
            }
            (None, Some(t)) => Some(TrainSource::Cached(open(t, obs)?)),
            (_, None) => None,
        };
        let eval = sets.eval.as_ref().map(|e| open(e, obs)).transpose()?;
        Ok(Self::Fixed { model: Some(reference), train, eval, ld_alpha })
    }

    /// Computes what the training examples `visited` (all the run will use) and the whole
    /// evaluation set still lack (across ranks, every rank calls it).
    pub fn prefetch(
        &mut self,
        sets: &RunSets,
        visited: &[usize],
        max_tokens: usize,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let Self::Fixed { model, train, eval, .. } = self else { return Ok(()) };
        if let (Some(TrainSource::Cached(store)), Some(t)) = (train, &sets.train) {
            obs.phase("reference log-probs of the training examples", visited.len(), "examples");
            store.fill(model.as_ref(), t.set, visited, max_tokens, |d| obs.advance(d, ""))?;
        }
        if let (Some(store), Some(e)) = (eval, &sets.eval) {
            let all: Vec<usize> = (0..e.set.examples.len()).collect();
            obs.phase("reference log-probs of the evaluation examples", all.len(), "examples");
            store.fill(model.as_ref(), e.set, &all, max_tokens, |d| obs.advance(d, ""))?;
        }
        Ok(())
    }

    /// Frees a fixed reference model once everything the run needs is known (after
    /// [`References::prefetch`]): full fine-tuning keeps only the policy in memory.
    pub fn release_model(&mut self) {
        if let Self::Fixed { model, .. } = self {
            *model = None;
        }
    }

    /// The reference log-probs of the training examples `idx` of `set`.
    pub fn train_batch(&mut self, set: &TokenizedSet, idx: &[usize], max_tokens: usize) -> Result<Vec<Vec<f64>>> {
        Ok(match self {
            Self::Fixed { train: Some(TrainSource::Given(v)), .. } => idx.iter().map(|&i| v[i].clone()).collect(),
            Self::Fixed { model, train: Some(TrainSource::Cached(store)), .. } => {
                store.get(model.as_ref(), set, idx, max_tokens, |_| {})?
            }
            Self::Moving { .. } => {
                let examples: Vec<&Tokenized> = idx.iter().map(|&i| &set.examples[i]).collect();
                self.of_examples(&examples, max_tokens)?
            }
            Self::None | Self::Fixed { train: None, .. } => vec![Vec::new(); idx.len()],
        })
    }

    /// The reference log-probs of `examples` made during the run (online samples), computed now
    /// with the reference model in this process; empty lists when the task needs none.
    pub fn of_examples(&self, examples: &[&Tokenized], max_tokens: usize) -> Result<Vec<Vec<f64>>> {
        match self {
            Self::None => Ok(vec![Vec::new(); examples.len()]),
            Self::Fixed { model: Some(model), ld_alpha, .. } | Self::Moving { model, ld_alpha, .. } => {
                example_logps(model, examples, max_tokens, *ld_alpha, |_| {})
            }
            Self::Fixed { model: None, .. } => {
                anyhow::bail!("reference log-probs are missing and the reference model is no longer loaded")
            }
        }
    }

    /// Whether a batch's reference log-probs are computed when it is trained on (TR-DPO), rather
    /// than looked up.
    pub fn per_batch(&self) -> bool {
        matches!(self, Self::Moving { .. })
    }

    /// The reference log-probs of the evaluation set's examples (across ranks, every rank calls
    /// it).
    pub fn eval(&mut self, set: &TokenizedSet, max_tokens: usize) -> Result<Vec<Vec<f64>>> {
        let all: Vec<usize> = (0..set.examples.len()).collect();
        Ok(match self {
            Self::Fixed { model, eval: Some(store), .. } => store.get(model.as_ref(), set, &all, max_tokens, |_| {})?,
            Self::Moving { model, ld_alpha, .. } => {
                let examples: Vec<&Tokenized> = set.examples.iter().collect();
                example_logps_sharded(model, &examples, max_tokens, *ld_alpha, |_| {})?
            }
            _ => vec![Vec::new(); set.examples.len()],
        })
    }

    /// After optimiser step `done`: TR-DPO's update `theta_ref <- (1 - alpha) theta_ref + alpha theta`.
    pub fn after_step(&mut self, done: usize, policy: &Llama, obs: &mut dyn Observer) -> Result<()> {
        if let Self::Moving { model, sync, .. } = self {
            if done.is_multiple_of(sync.steps.max(1)) {
                let p: HashMap<String, candle_core::Tensor> = policy.named_tensors()?.into_iter().collect();
                let mut mixed = HashMap::new();
                for (name, r) in model.named_tensors()? {
                    mixed.insert(name.clone(), ((r * (1.0 - sync.alpha))? + (p[&name].detach() * sync.alpha)?)?);
                }
                let synced = Llama::from_tensors(model.config.clone(), &mixed)?;
                // A `--bf16` reference keeps computing in bf16.
                *model = if model.has_bf16_products() { synced.with_bf16_products()? } else { synced };
                obs.message(&format!(
                    "step {done}: reference <- {:.2} * reference + {:.2} * policy",
                    1.0 - sync.alpha,
                    sync.alpha
                ));
            }
        }
        Ok(())
    }
}
