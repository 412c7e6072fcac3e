//! The runs of the training loop a user starts: offline preference optimisation and SFT
//! (`dpo train`, `dpo sft`: a data set, its reference log-probs computed once) and online DPO
//! (`dpo train --online`: prompts, each step's pairs sampled and judged).
//!
//! [`train`] loads the model (the base in its `--base-dtype`, `--adapter`s merged), reads,
//! converts and tokenizes the data ([`load_examples`], as the task's [`Task::view`]), makes the
//! trainable policy (every weight, or with `--use-peft` LoRA adapters on the frozen base, which
//! is then also the reference), gets the reference log-probs ([`References`]: from `--ref-logps`,
//! the cache, or one pass of the initial model) and runs the loop ([`trainer::train`]) with a
//! [`DatasetSource`]; then the run's report. With [`TrainConfig::online`] the same loop runs
//! with online DPO's source instead ([`OnlineSource`]), the reference model kept to score the
//! fresh samples.

use super::online::{OnlineSettings, OnlineSource};
use crate::report::write_run_report;
use anyhow::{bail, ensure, Context, Result};
use candle_core::DType;
use dpo_data::samples::read_prompts;
use dpo_data::{load_examples, TokenizeSettings, TokenizedSet, View};
use dpo_model::adapter::Adapter;
use dpo_model::policy::{ModelSetup, Policy};
use dpo_model::tokenizer::Tokenizer;
use dpo_model::{load_with, Llama, Loaded};
use dpo_runtime::fetch::{base_model_name, ensure_model};
use dpo_runtime::observer::Observer;
use dpo_train::loss::defaults::BETA;
use dpo_train::loss::Needs;
use dpo_train::optim::OptimizerSettings;
use dpo_train::reference::{DataHashes, KeyedSet, ReferenceSettings, References, RunSets};
use dpo_train::task::Task;
use dpo_train::trainer::{
    self, visited_units, DatasetSource, LoopSettings, OutputDir, Run, RunKind, RunRecord, TrainSummary,
};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What `dpo train` and `dpo sft` run (and, with `online`, `dpo train --online`): the settings of
/// each part the run is made of. Serialized as the run's `train_args.json`, with the parts'
/// fields side by side under their flags' names.
#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    /// The initial policy and the reference: a `.gguf` file or a Hugging Face directory.
    pub model: PathBuf,
    /// Training data (online: prompts).
    pub data: PathBuf,
    /// Evaluation data, evaluated every `--eval-steps` and at the end.
    pub eval_data: Option<PathBuf>,
    /// What is optimised: a preference objective or SFT.
    pub task: Task,
    #[serde(flatten)]
    pub run: LoopSettings,
    #[serde(flatten)]
    pub optimizer: OptimizerSettings,
    pub tokenize: TokenizeSettings,
    pub setup: ModelSetup,
    #[serde(flatten)]
    pub reference: ReferenceSettings,
    /// Online DPO: every step's pairs sampled from the policy and judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<OnlineSettings>,
}

impl TrainConfig {
    /// The defaults of every part for the given model, data and output directory (DPO with
    /// beta 0.1, TRL's `max_length`).
    pub fn new(model: PathBuf, data: PathBuf, output_dir: PathBuf) -> Self {
        Self {
            model,
            data,
            eval_data: None,
            task: Task::dpo(BETA),
            run: LoopSettings::new(output_dir),
            optimizer: OptimizerSettings::default(),
            tokenize: TokenizeSettings::truncating(dpo_data::tokenize::DEFAULT_MAX_LENGTH),
            setup: ModelSetup::default(),
            reference: ReferenceSettings::default(),
            online: None,
        }
    }

    /// Refuses settings no run can use: zero batch sizes or forward budget, a warm-up ratio
    /// outside [0, 1], a compact base without an adapter to train, an invalid adapter, TR-DPO
    /// on an adapter.
    pub fn validate(&self) -> Result<()> {
        self.optimizer.validate()?;
        self.run.validate()?;
        if self.setup.lora.use_peft && self.reference.sync_ref.is_some() {
            bail!("--sync-ref-model (TR-DPO) moves the reference toward the policy's weights; with --use-peft the reference is the frozen base: train every weight for TR-DPO");
        }
        self.setup.validate()
    }

    /// What the run is: online DPO, SFT, or preference optimisation on a data set.
    pub fn kind(&self) -> RunKind {
        match (&self.online, &self.task) {
            (Some(_), _) => RunKind::Online,
            (None, Task::Sft) => RunKind::Sft,
            (None, Task::Preference(_)) => RunKind::Train,
        }
    }

    /// What the run records about itself: these settings and the data's content hashes.
    pub fn record(&self) -> Result<RunRecord> {
        let hashes = DataHashes::of(&self.data, self.eval_data.as_deref())?;
        Ok(RunRecord { kind: self.kind(), args: serde_json::to_value(self)?, data: self.data.clone(), hashes })
    }

    /// The evaluation set as the reference cache keys it (its file and content hash).
    fn keyed_eval<'a>(&'a self, set: Option<&'a TokenizedSet>, record: &'a RunRecord) -> Option<KeyedSet<'a>> {
        let (path, hash) = (self.eval_data.as_deref()?, record.hashes.eval.as_deref()?);
        Some(KeyedSet { path, hash, set: set? })
    }

    /// The run of the loop over `policy`'s `source`, as these settings say.
    fn run<'a>(
        &'a self,
        policy: Policy,
        loaded: &Loaded,
        source: Box<dyn trainer::StepSource + 'a>,
        eval: Eval,
        record: RunRecord,
        output: OutputDir,
    ) -> Run<'a> {
        Run {
            policy,
            tokenizer: loaded.tokenizer.clone(),
            base_model: base_model_name(&self.model),
            task: self.task.clone(),
            source,
            eval_set: eval.0,
            record,
            output,
            settings: &self.run,
            optimizer: &self.optimizer,
            recompute: self.setup.gradient_checkpointing,
        }
    }
}

/// A run's evaluation set, if it has one.
struct Eval(Option<TokenizedSet>);

/// Trains the policy as `cfg` says (offline, SFT or online), writes the run's report, and
/// returns its summary. Errors: bad settings or data, a directory holding another run, a
/// checkpoint made with other settings — each before anything is written.
pub fn train(cfg: &TrainConfig, obs: &mut dyn Observer) -> Result<TrainSummary> {
    cfg.validate()?;
    let summary = match &cfg.online {
        Some(settings) => online(cfg, settings, obs)?,
        None => offline(cfg, obs)?,
    };
    if dpo_runtime::dist::is_main() {
        write_run_report(&cfg.run.output_dir)?;
        obs.message(&format!("report: {}", cfg.run.output_dir.join("report.html").display()));
    }
    Ok(summary)
}

/// Offline training on `cfg.data` (see the module documentation).
fn offline(cfg: &TrainConfig, obs: &mut dyn Observer) -> Result<TrainSummary> {
    let record = cfg.record()?;
    let tr_dpo = "a TR-DPO run (--sync-ref-model) keeps its moving reference in memory only and cannot be resumed";
    let output = OutputDir::check(&cfg.run, &record, cfg.reference.sync_ref.map(|_| tr_dpo))?;
    let loaded = load_model(cfg, obs)?;
    let view = cfg.task.view(cfg.run.per_device_train_batch_size)?;
    let train_set = load_set(cfg, &loaded, &cfg.data, view, obs)?;
    ensure!(!train_set.examples.is_empty(), "{}: no usable examples", cfg.data.display());
    let eval_set = cfg.eval_data.as_ref().map(|p| load_set(cfg, &loaded, p, view, obs)).transpose()?;
    let sets = RunSets {
        tokenizer: &loaded.tokenizer,
        tokenize: cfg.tokenize,
        view,
        train: Some(KeyedSet { path: &cfg.data, hash: &record.hashes.train, set: &train_set }),
        eval: cfg.keyed_eval(eval_set.as_ref(), &record),
    };
    let visited = visited_units(&cfg.run, train_set.examples.len());
    let (policy, references) = policy_and_references(cfg, &loaded, &sets, &visited, obs)?;
    let source = DatasetSource::new(
        train_set,
        references,
        &cfg.task,
        cfg.run.per_device_train_batch_size,
        cfg.run.max_tokens_per_forward,
    );
    let run = cfg.run(policy, &loaded, Box::new(source), Eval(eval_set), record, output);
    drop(loaded);
    trainer::train(run, obs)
}

/// The policy and the reference log-probs of an offline run. With LoRA the reference is the
/// frozen base itself (the adapter switched off: no second model), its log-probs computed up
/// front with `--precompute-ref-log-probs` or several ranks (divided among them), else as
/// batches reach them. Full fine-tuning computes the log-probs of every example the run uses
/// (`visited`) first, frees the reference, and only then makes the policy.
fn policy_and_references(
    cfg: &TrainConfig,
    loaded: &Loaded,
    sets: &RunSets,
    visited: &[usize],
    obs: &mut dyn Observer,
) -> Result<(Policy, References)> {
    let max_tokens = cfg.run.max_tokens_per_forward;
    if cfg.setup.lora.use_peft {
        let policy = lora_policy(cfg, loaded)?;
        let mut references =
            References::prepare(&cfg.reference, &cfg.task, policy.model.without_adapters(), sets, obs)?;
        if cfg.reference.precompute_ref_log_probs || dpo_runtime::dist::world().size() > 1 {
            references.prefetch(sets, visited, max_tokens, obs)?;
        }
        let lora = &cfg.setup.lora;
        obs.message(&format!(
            "LoRA: {} trainable parameters (r {}, alpha {}), base {}",
            policy.num_parameters(),
            lora.lora_r,
            lora.lora_alpha,
            cfg.setup.load.base_dtype
        ));
        Ok((policy, references))
    } else {
        let reference = cfg.setup.in_precision(loaded.model()?)?;
        let mut references = References::prepare(&cfg.reference, &cfg.task, reference, sets, obs)?;
        references.prefetch(sets, visited, max_tokens, obs)?;
        references.release_model();
        Ok((Policy::new(loaded.config.clone(), &loaded.tensors)?.in_precision(&cfg.setup)?, references))
    }
}

/// LoRA adapters, freshly initialised from the run's seed, on the frozen base `loaded`.
fn lora_policy(cfg: &TrainConfig, loaded: &Loaded) -> Result<Policy> {
    let adapter =
        Adapter::init(&cfg.setup.lora, &loaded.config, &base_model_name(&cfg.model), cfg.run.seed, DType::F32)?;
    Policy::lora(&loaded.model()?, &adapter)
}

/// The run's model as `--base-dtype` and `--adapter` say.
fn load_model(cfg: &TrainConfig, obs: &mut dyn Observer) -> Result<Loaded> {
    obs.message(&format!("loading {}", cfg.model.display()));
    load_with(&ensure_model(&cfg.model)?, &cfg.setup.load)
}

/// A data file of the run, read and tokenized as `view`.
fn load_set(
    cfg: &TrainConfig,
    loaded: &Loaded,
    path: &Path,
    view: View,
    obs: &mut dyn Observer,
) -> Result<TokenizedSet> {
    load_examples(path, &loaded.tokenizer, cfg.tokenize, view, obs)
}

/// Refuses what online DPO does not do.
fn check_online(cfg: &TrainConfig, online: &OnlineSettings) -> Result<()> {
    let Task::Preference(o) = &cfg.task else { bail!("--online trains a preference loss, not SFT") };
    let pairs = matches!(o.main().needs(), Needs::Pairs | Needs::ScoredPairs | Needs::Rankings);
    ensure!(
        pairs && !o.sorts_batch(),
        "--online makes scored pairs: use a pairwise loss (sigmoid, ipo, hinge, odpo, ...), not `{}`",
        o.main().name()
    );
    ensure!(dpo_runtime::dist::world().size() == 1, "--online runs in one process (mpirun -np 1)");
    ensure!(
        cfg.reference.ref_logps.is_none() && cfg.reference.sync_ref.is_none(),
        "--online computes the reference log-probs of its own samples: --ref-logps and --sync-ref-model do not apply"
    );
    ensure!(
        online.max_new_tokens > 0 && online.temperature > 0.0,
        "--online-max-new-tokens must be at least 1 and --online-temperature positive"
    );
    Ok(())
}

/// The prompts of `cfg.data` as text and token ids (none may be empty).
fn online_prompts(cfg: &TrainConfig, tok: &Tokenizer) -> Result<(Vec<String>, Vec<Vec<u32>>)> {
    let texts = read_prompts(&cfg.data)?;
    let ids: Vec<Vec<u32>> = texts.iter().map(|p| tok.encode(p)).collect::<Result<_>>()?;
    if let Some(i) = ids.iter().position(Vec::is_empty) {
        bail!("{}: prompt {} is empty: there is nothing to continue", cfg.data.display(), i + 1);
    }
    Ok((texts, ids))
}

/// The policy and its fixed reference model: LoRA adapters on the frozen base (the base itself
/// the reference), or every weight against the initial model kept in memory.
fn online_policy(cfg: &TrainConfig, loaded: &Loaded) -> Result<(Policy, Llama)> {
    if cfg.setup.lora.use_peft {
        let policy = lora_policy(cfg, loaded)?;
        let reference = policy.model.without_adapters();
        Ok((policy, reference))
    } else {
        let policy = Policy::new(loaded.config.clone(), &loaded.tensors)?.in_precision(&cfg.setup)?;
        Ok((policy, cfg.setup.in_precision(loaded.model()?)?))
    }
}

/// Online DPO on the prompts of `cfg.data` ([`super::online`]).
fn online(cfg: &TrainConfig, online: &OnlineSettings, obs: &mut dyn Observer) -> Result<TrainSummary> {
    check_online(cfg, online)?;
    let record = cfg.record()?;
    let output = OutputDir::check(&cfg.run, &record, None)?;
    let loaded = load_model(cfg, obs)?;
    let (texts, ids) = online_prompts(cfg, &loaded.tokenizer)?;
    let view = cfg.task.view(cfg.run.per_device_train_batch_size)?;
    let eval_set = cfg.eval_data.as_ref().map(|p| load_set(cfg, &loaded, p, view, obs)).transpose()?;
    let judge = online.judge.build(cfg.run.max_tokens_per_forward).context("--judge")?;
    let (policy, reference) = online_policy(cfg, &loaded)?;
    let eval = cfg.keyed_eval(eval_set.as_ref(), &record);
    let sets = RunSets { tokenizer: &loaded.tokenizer, tokenize: cfg.tokenize, view, train: None, eval };
    let references = References::prepare(&cfg.reference, &cfg.task, reference, &sets, obs)?;
    let per_step = cfg.run.per_step();
    obs.message(&format!(
        "online DPO: {} prompts, {per_step} per step, 2 samples each, judge `{}`",
        texts.len(),
        judge.name()
    ));
    let (seed, max_tokens) = (cfg.run.seed, cfg.run.max_tokens_per_forward);
    let source = OnlineSource::new(online, (texts, ids), loaded.tokenizer.clone(), judge, references, seed, max_tokens);
    let run = cfg.run(policy, &loaded, Box::new(source), Eval(eval_set), record, output);
    drop(loaded);
    trainer::train(run, obs)
}
