//! Reference log-probs: computed once before training, cached on disk, read back.
//!
//! The reference model never changes during DPO, so `log pi_ref(y|x)` of every completion is
//! computed once (with the initial policy weights, which are the reference) and training keeps
//! only the policy in memory ([`References::Fixed`]): of the examples a run uses, when a batch
//! first needs them (LoRA) or before the first step (full fine-tuning, which then frees the
//! reference), each computed once per cache key. TR-DPO's reference moves and stays in memory
//! ([`References::Moving`]). The file format is that of `dpo logps` ([`file`]); the cache is
//! keyed by content ([`cache`]).

pub mod cache;
pub mod file;

pub use cache::{cache_path, file_hash, model_hash, DataHashes, RefStore};
pub use file::{align, read_file, write_file, Entry};

use crate::config::{SyncReference, TrainConfig};
use crate::data::{data_view, Tokenized, TokenizedSet};
use crate::logps::example_logps;
use crate::model::Llama;
use crate::observer::Observer;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use std::collections::HashMap;

/// Where the reference log-probs of the examples come from during a run.
pub enum References {
    /// The task needs none (SFT, reference-free losses).
    None,
    /// A fixed reference: the training set's log-probs from `--ref-logps`, or (both sets) from
    /// the content-keyed cache, computed with `model` when a batch first needs them. `model` is
    /// `None` once everything the run needs is known (full fine-tuning computes that before the
    /// first step and frees the reference; a LoRA run's reference is its own frozen base, kept).
    Fixed { model: Option<Llama>, train: TrainSource, eval: Option<RefStore> },
    /// TR-DPO: the reference model itself, run on every batch, moved every `sync.steps` steps.
    Moving { model: Llama, sync: SyncReference, ld_alpha: Option<f64> },
}

/// The training set's reference log-probs: given in a file, or from the cache.
pub enum TrainSource {
    Given(Vec<Vec<f64>>),
    Cached(RefStore),
}

impl References {
    /// The reference log-probs a run of `cfg` needs. `reference` is the frozen reference model
    /// (the initial policy; a LoRA run's base without its adapter). With `prefetch`, the
    /// log-probs of the training examples `visited` (all the run will use) and of the whole
    /// evaluation set are computed now (only those not cached); otherwise as batches reach them.
    /// Without `keep_model` (only with `prefetch`), the model is then dropped. `data_hashes`
    /// are the contents' hashes of `cfg.data` and `cfg.eval_data` (the cache key's data part).
    #[allow(clippy::too_many_arguments)]
    pub fn prepare(
        cfg: &TrainConfig,
        reference: Llama,
        tokenizer: &Tokenizer,
        train: &TokenizedSet,
        eval: Option<&TokenizedSet>,
        data_hashes: &DataHashes,
        prefetch: bool,
        keep_model: bool,
        visited: &[usize],
        obs: &mut dyn Observer,
    ) -> Result<Self> {
        if !cfg.task.needs_reference() {
            return Ok(Self::None);
        }
        if let Some(sync) = cfg.sync_ref {
            obs.message(&format!(
                "TR-DPO: the reference moves toward the policy (alpha {}) every {} steps; its log-probs are computed on each batch, the reference cache is not used",
                sync.alpha, sync.steps
            ));
            return Ok(Self::Moving { model: reference, sync, ld_alpha: cfg.task.ld_alpha() });
        }
        let hash = model_hash(&reference, tokenizer)?;
        let view = data_view(&cfg.task, cfg.per_device_train_batch_size)?;
        let open = |set: &TokenizedSet, data: &std::path::Path, data_hash: &str, obs: &mut dyn Observer| -> Result<RefStore> {
            let store = RefStore::open(&hash, data_hash, &view, set, cfg.tokenize, cfg.task.ld_alpha())?;
            obs.message(&format!("reference log-probs of {}: {} of {} examples in the cache {}", data.display(), store.cached, set.examples.len(), store.path().display()));
            Ok(store)
        };
        let train_source = match &cfg.ref_logps {
            Some(g) => {
                obs.message(&format!("reference log-probs read from {}", g.display()));
                TrainSource::Given(align(g, &read_file(g)?, train)?)
            }
            None => TrainSource::Cached(open(train, &cfg.data, &data_hashes.train, obs)?),
        };
        let eval_store = match (eval, &cfg.eval_data, &data_hashes.eval) {
            (Some(s), Some(p), Some(h)) => Some(open(s, p, h, obs)?),
            _ => None,
        };
        let mut refs = Self::Fixed { model: Some(reference), train: train_source, eval: eval_store };
        if prefetch {
            refs.prefetch(train, eval, visited, cfg.max_tokens_per_forward, obs)?;
            if !keep_model {
                if let Self::Fixed { model, .. } = &mut refs {
                    *model = None;
                }
            }
        }
        Ok(refs)
    }

    /// Computes what `visited` and the evaluation set still lack.
    fn prefetch(&mut self, train: &TokenizedSet, eval: Option<&TokenizedSet>, visited: &[usize], max_tokens: usize, obs: &mut dyn Observer) -> Result<()> {
        let Self::Fixed { model, train: source, eval: eval_store } = self else { return Ok(()) };
        if let TrainSource::Cached(store) = source {
            obs.phase("reference log-probs of the training examples", visited.len(), "examples");
            store.fill(model.as_ref(), train, visited, max_tokens, |d| obs.advance(d, ""))?;
        }
        if let (Some(store), Some(set)) = (eval_store, eval) {
            let all: Vec<usize> = (0..set.examples.len()).collect();
            obs.phase("reference log-probs of the evaluation examples", all.len(), "examples");
            store.fill(model.as_ref(), set, &all, max_tokens, |d| obs.advance(d, ""))?;
        }
        Ok(())
    }

    /// The reference log-probs of the training examples `idx` of `set`.
    pub fn train_batch(&mut self, set: &TokenizedSet, idx: &[usize], max_tokens: usize) -> Result<Vec<Vec<f64>>> {
        Ok(match self {
            Self::None => vec![Vec::new(); idx.len()],
            Self::Fixed { train: TrainSource::Given(v), .. } => idx.iter().map(|&i| v[i].clone()).collect(),
            Self::Fixed { model, train: TrainSource::Cached(store), .. } => store.get(model.as_ref(), set, idx, max_tokens, |_| {})?,
            Self::Moving { model, ld_alpha, .. } => {
                let examples: Vec<&Tokenized> = idx.iter().map(|&i| &set.examples[i]).collect();
                example_logps(model, &examples, max_tokens, *ld_alpha, |_| {})?
            }
        })
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
                crate::logps::example_logps_sharded(model, &examples, max_tokens, *ld_alpha, |_| {})?
            }
            _ => vec![Vec::new(); set.examples.len()],
        })
    }

    /// After optimiser step `done`: TR-DPO's update `theta_ref <- (1 - alpha) theta_ref + alpha theta`.
    pub fn after_step(&mut self, done: usize, policy: &Llama, obs: &mut dyn Observer) -> Result<()> {
        if let Self::Moving { model, sync, .. } = self {
            if done % sync.steps.max(1) == 0 {
                let p: HashMap<String, candle_core::Tensor> = policy.named_tensors()?.into_iter().collect();
                let mut mixed = HashMap::new();
                for (name, r) in model.named_tensors()? {
                    mixed.insert(name.clone(), ((r * (1.0 - sync.alpha))? + (p[&name].detach() * sync.alpha)?)?);
                }
                *model = Llama::from_tensors(model.config.clone(), &mixed)?;
                obs.message(&format!("step {done}: reference <- {:.2} * reference + {:.2} * policy", 1.0 - sync.alpha, sync.alpha));
            }
        }
        Ok(())
    }
}
