//! Configuration files as flags: `--config FILE` (YAML, TRL's format, or TOML) with dpo-rs's
//! flag names or TRL's field names ([`crate::trl`]).

use crate::args::Cli;
use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser};

/// Parses the command line; a subcommand's `--config FILE` contributes its keys as flags placed
/// before the command line's own, so that flags given explicitly win. `dpo train --loss-help`
/// prints the losses without needing the flags a run requires. Exits (status 2) on bad input.
pub fn parse() -> Cli {
    let argv: Vec<String> = std::env::args().collect();
    if subcommand_index(&argv).is_some_and(|i| argv[i] == "train") && argv.iter().any(|a| a == "--loss-help") {
        print!("{}", dpo_train::loss::help_text());
        std::process::exit(0);
    }
    match expand_config(&argv).and_then(|a| expand_trl_flags(&a)) {
        Ok(expanded) => Cli::parse_from(with_bf16_base(expanded)),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Where the subcommand is in `argv`: the first word that is neither a flag nor the value of the
/// global `--threads`.
pub fn subcommand_index(argv: &[String]) -> Option<usize> {
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

/// `argv` with `--base-dtype bf16` added when it asks for `--bf16` and `--use-peft` without a
/// `--base-dtype`: under mixed precision a LoRA run's frozen base is kept in bf16, as TRL + PEFT
/// hold a bf16 checkpoint under autocast (`--base-dtype f32` keeps it in f32). Printed as a note.
pub fn with_bf16_base(mut argv: Vec<String>) -> Vec<String> {
    let has = |f: &str| argv.iter().any(|a| a == f || a.strip_prefix(f).is_some_and(|r| r.starts_with('=')));
    if !has("--bf16") || !has("--use-peft") || has("--base-dtype") {
        return argv;
    }
    let Some(sub) = subcommand_index(&argv) else { return argv };
    let cmd = Cli::command();
    let takes =
        cmd.find_subcommand(&argv[sub]).is_some_and(|c| c.get_arguments().any(|a| a.get_long() == Some("base-dtype")));
    if takes {
        eprintln!("note: --bf16 with --use-peft: the frozen base is kept in bf16 (--base-dtype bf16; --base-dtype f32 keeps it in f32)");
        argv.splice(sub + 1..sub + 1, ["--base-dtype".to_string(), "bf16".to_string()]);
    }
    argv
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
            let serde_json::Value::Object(env) = v else {
                bail!("{path}: `env` must be a mapping of variable names to values")
            };
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
        Value::Array(items) => {
            vec![format!("--{long}"), items.iter().map(scalar).collect::<Result<Vec<_>>>()?.join(",")]
        }
        v => vec![format!("--{long}"), scalar(v)?],
    })
}

/// `argv` with the keys of `--config FILE` inserted as flags right after the subcommand. Keys
/// are this command's flags (`beta`, `learning_rate`), or TRL's field names ([`crate::trl`]):
/// renamed, noted (printed on stderr) or refused by name.
pub fn expand_config(argv: &[String]) -> Result<Vec<String>> {
    let Some(pos) = argv.iter().position(|a| a == "--config" || a.starts_with("--config=")) else {
        return Ok(argv.to_vec());
    };
    let path = match argv[pos].strip_prefix("--config=") {
        Some(p) => p.to_string(),
        None => argv.get(pos + 1).context("--config needs a file")?.clone(),
    };
    let entries = read_config(&path)?;
    let sub = subcommand_index(argv).context("no subcommand")?;
    let flags = entries_to_flags(&path, &entries, &argv[sub])?;
    let mut out = argv[..=sub].to_vec();
    out.extend(flags);
    out.extend(argv[sub + 1..].iter().cloned());
    Ok(out)
}

/// The flags of `entries` (keys and values of a configuration file, or TRL-spelled words of the
/// command line; `source` names them in notes and errors) for `dpo SUBCOMMAND`.
fn entries_to_flags(source: &str, entries: &[(String, serde_json::Value)], subcommand: &str) -> Result<Vec<String>> {
    let cmd = Cli::command();
    let sub_cmd = cmd.find_subcommand(subcommand).with_context(|| format!("unknown subcommand {subcommand}"))?;
    let known = |long: &str| long != "config" && sub_cmd.get_arguments().any(|a| a.get_long() == Some(long));
    let (mut flags, mut set, mut trl_config) = (Vec::new(), Vec::new(), false);
    for (key, value) in entries {
        let long = key.replace('_', "-");
        // TRL's `max_steps: -1` (its default) means no limit
        if key == "max_steps" && value.as_i64().is_some_and(|v| v < 0) {
            eprintln!("note: {source}: `max_steps: {value}`: no limit (--num-train-epochs decides), as in TRL");
            continue;
        }
        if known(&long) {
            flags.extend(flag_words(source, key, &long, value)?);
            set.push(long);
            continue;
        }
        trl_config = true;
        match crate::trl::field(key, value) {
            crate::trl::Treatment::Flag(long, v, note) if known(long) => {
                flags.extend(flag_words(source, key, long, &v)?);
                set.push(long.to_string());
                if let Some(n) = note {
                    eprintln!("note: {source}: {n}");
                }
            }
            crate::trl::Treatment::Flag(long, ..) => bail!("{source}: `{key}` (TRL's name of --{long}) is not an option of `dpo {subcommand}`"),
            crate::trl::Treatment::Note(n) => eprintln!("note: {source}: {n}"),
            crate::trl::Treatment::Refuse(r) => bail!("{source}: {r}"),
            crate::trl::Treatment::Unknown => bail!("{source}: `{key}` is not an option of `dpo {subcommand}` nor a field of TRL's DPOConfig, ModelConfig or ScriptArguments"),
        }
    }
    if trl_config {
        for (flag, value, note) in crate::trl::implied(entries, &set) {
            if known(flag) {
                flags.extend([format!("--{flag}"), value]);
                eprintln!("note: {source}: {note}");
            }
        }
    }
    Ok(flags)
}

/// A word of TRL's command line as its parser (`HfArgumentParser`) reads it: `true`/`false`
/// (`yes`/`no`, any case) a boolean, a number a number, anything else a string.
fn trl_word(word: &str) -> serde_json::Value {
    use serde_json::Value;
    match word.to_ascii_lowercase().as_str() {
        "true" | "yes" => return Value::Bool(true),
        "false" | "no" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = word.parse::<i64>() {
        return Value::from(i);
    }
    match word.parse::<f64>() {
        Ok(f) if f.is_finite() => Value::from(f),
        _ => Value::String(word.to_string()),
    }
}

/// `dpo train` with TRL's command line (`trl dpo --model_name_or_path M --dataset_name D
/// --lora_target_modules q_proj v_proj --bf16 ...`): every `--name` that is not a flag of `dpo
/// train` but is spelled as TRL spells its fields (with `_`, or a TRL field's name) is read as
/// TRL's parser reads it — `--name value`, `--name=value`, several values for a list, a bare
/// boolean meaning true — and goes through the same table as a TRL config file ([`crate::trl`]):
/// renamed, noted or refused by name. The other words stay as they are, after these flags.
/// Errors: a TRL field refused by name, or a name neither dpo-rs nor TRL has.
pub fn expand_trl_flags(argv: &[String]) -> Result<Vec<String>> {
    let Some(sub) = subcommand_index(argv).filter(|&i| argv[i] == "train") else { return Ok(argv.to_vec()) };
    let cmd = Cli::command();
    let sub_cmd = cmd.find_subcommand("train").context("no train subcommand")?;
    let ours = |name: &str| sub_cmd.get_arguments().find(|a| a.get_long() == Some(name));
    let trl_spelled = |name: &str| {
        name.contains('_') || crate::trl::field(name, &serde_json::Value::Null) != crate::trl::Treatment::Unknown
    };
    let (mut entries, mut rest) = (Vec::new(), Vec::new());
    let mut i = sub + 1;
    while i < argv.len() {
        let word = &argv[i];
        let Some(name) = word.strip_prefix("--").map(|n| n.split('=').next().unwrap_or(n)) else {
            rest.push(word.clone());
            i += 1;
            continue;
        };
        let arg = ours(name);
        if arg.is_some() || name == "help" || !trl_spelled(name) {
            // TRL's `--bf16 true` / `--use_peft false` of a flag of ours that takes no value
            let switch = arg.is_some_and(|a| !a.get_action().takes_values());
            match argv.get(i + 1).map(|v| trl_word(v)) {
                Some(serde_json::Value::Bool(on)) if switch && !word.contains('=') => {
                    rest.extend(on.then(|| word.clone()));
                    i += 2;
                }
                _ => {
                    rest.push(word.clone());
                    i += 1;
                }
            }
            continue;
        }
        // `--name=value` is one value; `--name v1 v2 ...` takes every word up to the next flag.
        let (mut values, inline) = match word.split_once('=') {
            Some((_, v)) => (vec![trl_word(v)], true),
            None => (Vec::new(), false),
        };
        i += 1;
        while let Some(v) = argv.get(i).filter(|v| !inline && !v.starts_with("--")) {
            values.push(trl_word(v));
            i += 1;
        }
        let value = match values.len() {
            0 => serde_json::Value::Bool(true),
            1 => values.remove(0),
            _ => serde_json::Value::Array(values),
        };
        entries.push((name.to_string(), value));
    }
    let mut out = argv[..=sub].to_vec();
    out.extend(entries_to_flags("command line", &entries, "train")?);
    out.extend(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Command;
    use dpo_train::optim::OptimKind;
    use std::path::PathBuf;

    #[test]
    fn config_file_keys_become_flags_and_the_command_line_wins() {
        let d = tempfile_dir();
        let p = d.join("run.toml");
        std::fs::write(&p, "beta = 0.5\ndata = \"a.jsonl\"\noutput_dir = \"out\"\nlearning_rate = 5e-7\n").unwrap();
        let argv: Vec<String> =
            ["dpo", "train", "--config", p.to_str().unwrap(), "--beta", "0.2"].map(String::from).to_vec();
        let cli = Cli::parse_from(expand_config(&argv).unwrap());
        let Command::Train(t) = cli.command else { panic!() };
        assert_eq!(
            (t.loss.params.beta, t.common.optimizer.learning_rate, t.common.inputs.data),
            (0.2, 5e-7, PathBuf::from("a.jsonl"))
        );
        std::fs::write(&p, "betta = 0.5\n").unwrap();
        let e = expand_config(&argv).unwrap_err().to_string();
        assert!(e.contains("`betta` is not an option"), "{e}");
    }

    #[test]
    fn trl_optim_names_choose_the_optimizer_or_are_refused() {
        let d = tempfile_dir();
        let p = d.join("optim.yaml");
        for (optim, want) in [
            ("lion_32bit", Some(OptimKind::Lion32bit)),
            ("adafactor", Some(OptimKind::Adafactor)),
            ("sgd", Some(OptimKind::Sgd)),
            ("adamw_torch_fused", Some(OptimKind::AdamwTorch)),
            ("paged_adamw_8bit", Some(OptimKind::Adamw8bit)),
            ("adamw_apex_fused", None),
        ] {
            std::fs::write(
                &p,
                format!("model_name_or_path: m.gguf\ndataset_name: d.jsonl\noutput_dir: out\noptim: {optim}\n"),
            )
            .unwrap();
            let argv: Vec<String> = ["dpo", "train", "--config", p.to_str().unwrap()].map(String::from).to_vec();
            match (Cli::try_parse_from(expand_config(&argv).unwrap()), want) {
                (Ok(cli), Some(kind)) => {
                    let Command::Train(t) = cli.command else { panic!() };
                    assert_eq!(t.common.optimizer.optim, kind);
                }
                (Err(e), None) => assert!(e.to_string().contains("adamw_apex_fused"), "{e}"),
                (r, _) => panic!("optim: {optim}: {:?}", r.map(|_| ())),
            }
        }
    }

    #[test]
    fn trl_neftune_and_loss_options_reach_their_flags() {
        let d = tempfile_dir();
        let p = d.join("neftune.yaml");
        std::fs::write(&p, "model_name_or_path: m.gguf\ndataset_name: d.jsonl\noutput_dir: out\nneftune_noise_alpha: 5.0\nloss_type: [sigmoid, sft]\nrpo_alpha: 0.5\n").unwrap();
        let argv: Vec<String> = ["dpo", "train", "--config", p.to_str().unwrap()].map(String::from).to_vec();
        let Command::Train(t) = Cli::parse_from(expand_config(&argv).unwrap()).command else { panic!() };
        assert_eq!(t.common.run.neftune_noise_alpha, Some(5.0));
        assert_eq!((t.loss.loss.len(), t.loss.rpo_alpha), (2, 0.5));
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
        assert_eq!(
            (t.common.inputs.model.to_str(), t.common.inputs.data.to_str(), t.common.run.max_steps),
            (Some("m.gguf"), Some("d.jsonl"), None)
        );
        assert_eq!(
            (t.loss.loss.clone(), t.loss.loss_weights.clone()),
            (vec!["sigmoid".to_string(), "sft".to_string()], vec![1.0, 0.2])
        );
        assert_eq!((t.common.optimizer.learning_rate, t.common.optimizer.warmup_ratio), (5e-7, 0.1));
        assert!(t.common.run.reports_to_tensorboard());
        // TRL's LoRA: the named modules, and dropout off (disable_dropout's default)
        assert_eq!(
            (t.common.setup.lora.lora_target_modules.clone(), t.common.setup.lora.lora_dropout),
            (vec!["q_proj".to_string(), "k_proj".to_string()], 0.0)
        );
    }

    #[test]
    fn trls_command_line_becomes_flags() {
        let words = "dpo train --model_name_or_path m.gguf --dataset_name d.jsonl --per_device_train_batch_size 2 \
                     --learning_rate=5e-7 --lora_target_modules q_proj v_proj --use_peft --gradient_checkpointing true \
                     --max_steps -1 --beta 0.2 --output_dir out --logging_steps 25 --loss_type sigmoid sft --seed 3 \
                     --bf16 false --use-rslora true";
        let argv: Vec<String> = words.split_whitespace().map(String::from).collect();
        let expanded = expand_trl_flags(&argv).unwrap();
        let cli = Cli::parse_from(expanded);
        let Command::Train(t) = cli.command else { panic!() };
        assert_eq!(
            (t.common.inputs.model.to_str(), t.common.inputs.data.to_str(), t.common.run.max_steps),
            (Some("m.gguf"), Some("d.jsonl"), None)
        );
        assert_eq!((t.common.run.per_device_train_batch_size, t.common.optimizer.learning_rate), (2, 5e-7));
        assert_eq!((t.loss.params.beta, t.common.run.seed), (0.2, 3));
        assert_eq!(t.loss.loss, vec!["sigmoid".to_string(), "sft".to_string()]);
        assert!(
            t.common.setup.lora.use_peft && t.common.setup.gradient_checkpointing && t.common.setup.lora.use_rslora
        );
        assert!(!t.common.setup.bf16);
        assert_eq!(
            (t.common.setup.lora.lora_target_modules.clone(), t.common.setup.lora.lora_dropout),
            (vec!["q_proj".to_string(), "v_proj".to_string()], 0.0)
        );
        // refusals and unknown names as in a config file; other subcommands untouched
        let bad = |w: &str| {
            expand_trl_flags(&w.split_whitespace().map(String::from).collect::<Vec<_>>()).unwrap_err().to_string()
        };
        assert!(bad("dpo train --fp16").contains("`fp16: true`"), "{}", bad("dpo train --fp16"));
        assert!(bad("dpo train --learnin_rate 1").contains("`learnin_rate` is not an option of `dpo train`"));
        let logps: Vec<String> = "dpo logps --some_name x".split_whitespace().map(String::from).collect();
        assert_eq!(expand_trl_flags(&logps).unwrap(), logps);
        let native: Vec<String> =
            "dpo train --data d --bf16 false --beta 0.3".split_whitespace().map(String::from).collect();
        assert_eq!(expand_trl_flags(&native).unwrap(), ["dpo", "train", "--data", "d", "--beta", "0.3"]);
    }

    #[test]
    fn trls_documented_run_is_the_same_as_a_yaml_file_or_a_command_line() {
        // tests/trl_compat.rs's TRL config, key by key as `trl dpo --key value ...` words.
        let yaml = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/trl_dpo_config.yaml");
        let mut words: Vec<String> = ["dpo", "train"].map(String::from).to_vec();
        for (key, value) in read_config(yaml).unwrap() {
            words.push(format!("--{key}"));
            match value {
                serde_json::Value::Bool(true) => {}
                serde_json::Value::Array(items) => words.extend(items.iter().map(|v| v.as_str().unwrap().to_string())),
                serde_json::Value::String(v) => words.push(v),
                v => words.push(v.to_string()),
            }
        }
        let from_yaml = expand_config(&["dpo", "train", "--config", yaml].map(String::from)).unwrap();
        let (a, b) = (Cli::parse_from(from_yaml), Cli::parse_from(expand_trl_flags(&words).unwrap()));
        let a = format!("{a:?}").replace(&format!("config: Some({yaml:?})"), "config: None");
        assert_eq!(a, format!("{b:?}"), "{words:?}");
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("dpo-args-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
