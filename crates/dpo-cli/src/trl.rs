//! TRL configuration files as they are (`dpo train --config run.yaml`): the field names of TRL
//! 1.16's `DPOConfig` (with transformers' `TrainingArguments`), `ModelConfig` and
//! `ScriptArguments`, translated to dpo-rs flags.
//!
//! A key that is a dpo-rs flag (`learning_rate`, `beta`, `lora_r`, ...) is that flag. Other TRL
//! fields are, by [`field`]: renamed (`loss_type` → `--loss`, `model_name_or_path` →
//! `--model`, `dataset_name` → `--data`, ...); accepted with a printed note when they cannot
//! change the trained numbers here (logging, hardware, Hub upload: category "b"/"c" of
//! `scripts/oracle/trl_1.16_config_notes.md`) or hold TRL's default; refused by name, with what to
//! use instead, when they would change the numbers and dpo-rs cannot honour them. A key TRL does
//! not know either is refused. The field list (`trl_fields.json`, made from
//! `scripts/oracle/trl_1.16_config_fields.json`) holds each field's class, default and category.

use serde::Deserialize;
use serde_json::Value;
use std::sync::LazyLock;

/// One TRL field: its class, default, whether it changes the trained numbers (`a`) or not
/// (`b`: performance, logging, Hub; `c`: deprecated or no-op for DPO), and why.
#[derive(Debug, Deserialize)]
pub struct TrlField {
    pub name: String,
    pub class: String,
    pub default: Value,
    pub category: String,
    pub reason: String,
}

static FIELDS: LazyLock<Vec<TrlField>> =
    LazyLock::new(|| serde_json::from_str(include_str!("trl_fields.json")).expect("trl_fields.json is valid"));

/// What becomes of a TRL field.
#[derive(Debug, Clone, PartialEq)]
pub enum Treatment {
    /// The dpo-rs flag (long name, without `--`), the value to give it, and a note to print.
    Flag(&'static str, Value, Option<String>),
    /// Nothing to pass: the note says why (printed).
    Note(String),
    /// An error: the field would change the numbers and dpo-rs cannot honour it.
    Refuse(String),
    /// Not a TRL field.
    Unknown,
}

/// TRL's names that dpo-rs calls otherwise.
const RENAMED: [(&str, &str); 7] = [
    ("loss_type", "loss"),
    ("model_name_or_path", "model"),
    ("model_revision", "revision"),
    ("dataset_name", "data"),
    ("dataset_config", "data-config"),
    ("dataset_train_split", "data-split"),
    ("dataset_test_split", "eval-data-split"),
];

/// Whether `v` is TRL's default `d` (numbers by value).
fn same(v: &Value, d: &Value) -> bool {
    match (v, d) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::String(b)) | (Value::String(b), Value::Array(a)) => {
            a.len() == 1 && a[0].as_str() == Some(b)
        }
        _ => v == d,
    }
}

/// The treatment of TRL field `key` set to `value` (see the module's documentation).
pub fn field(key: &str, value: &Value) -> Treatment {
    if let Some((_, flag)) = RENAMED.iter().find(|(k, _)| *k == key) {
        return Treatment::Flag(flag, value.clone(), None);
    }
    let truthy = matches!(value, Value::Bool(true));
    let shown = match value {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    match key {
        "fp16" | "fp16_full_eval" if truthy => {
            return Treatment::Refuse(format!("`{key}: true`: dpo-rs has no fp16 mixed precision (it needs loss scaling); use `bf16: true` (--bf16), the same autocast with bf16 operands"))
        }
        "fp16" | "fp16_full_eval" | "tf32" | "bf16_full_eval" if value.is_boolean() => {
            return Treatment::Note(if key == "bf16_full_eval" {
                format!("`{key}: {shown}`: evaluation computes as training does (--bf16 or f32)")
            } else {
                format!("`{key}: {shown}`: no effect on a CPU; --bf16 sets mixed precision")
            })
        }
        "load_in_4bit" | "load_in_8bit" if truthy => {
            let (bits, dtype) = if key == "load_in_4bit" { ("4", "q4_0") } else { ("8", "q8_0") };
            return Treatment::Flag("base-dtype", Value::String(dtype.into()), Some(format!("`{key}`: the frozen base in GGML {dtype} ({bits} bits, llama.cpp's format), not bitsandbytes'")));
        }
        "logging_steps" | "logging_strategy" | "logging_first_step" => {
            return Treatment::Note(format!("`{key}`: dpo-rs logs every step to metrics.jsonl (and TensorBoard with --report-to tensorboard); TRL averages over the logging window"))
        }
        "eval_strategy" => {
            return match value.as_str() {
                Some("no") => Treatment::Note("`eval_strategy: no`: no evaluation unless --eval-data is given".into()),
                Some("steps") => Treatment::Note("`eval_strategy: steps`: the --eval-data-split of the data set is evaluated every --eval-steps and at the end".into()),
                _ => Treatment::Note(format!("`eval_strategy: {shown}`: dpo-rs evaluates every --eval-steps and at the end")),
            }
        }
        "disable_dropout" => {
            return Treatment::Note(format!(
                "`disable_dropout: {shown}`: dpo-rs's models have no dropout but LoRA's; TRL's disable_dropout (default true) also turns LoRA dropout off, and so does a TRL config here (--lora-dropout 0) unless it is false"
            ))
        }
        "save_strategy" if value.as_str() == Some("no") => return Treatment::Note("`save_strategy: no`: no checkpoint-STEP/ unless --save-steps; the final model is always written".into()),
        "push_to_hub" if truthy => return Treatment::Refuse("`push_to_hub: true`: dpo-rs does not upload; OUTPUT_DIR/final is a Hugging Face model (or PEFT adapter) directory to upload with `huggingface-cli upload`".into()),
        _ => {}
    }
    let Some(f) = FIELDS.iter().find(|f| f.name == key) else { return Treatment::Unknown };
    match f.category.as_str() {
        "b" | "c" => Treatment::Note(format!("`{key}` ({}): no effect on the numbers, not used by dpo-rs ({})", f.class, f.reason)),
        _ if value.is_null() || same(value, &f.default) => Treatment::Note(format!("`{key}` ({}) at TRL's default {}: dpo-rs has no such setting", f.class, f.default)),
        _ => Treatment::Refuse(format!("`{key}` ({}) is TRL's ({}); dpo-rs has no such setting: remove it (its default is {}) or see README's \"Coming from TRL\"", f.class, f.reason, f.default)),
    }
}

/// The flags a TRL config implies beyond its keys (`entries`; `set`: the flags they gave), as
/// TRL acts on it: the data set's test split evaluated when `eval_strategy` is not `no`; with
/// `use_peft`, PEFT's default target modules for the Llama family (q_proj, v_proj) when none are
/// named, and no LoRA dropout unless `disable_dropout: false` (TRL turns dropout off after
/// wrapping the model). Each with the note to print.
pub fn implied(entries: &[(String, Value)], set: &[String]) -> Vec<(&'static str, String, String)> {
    let get = |key: &str| entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let given = |flag: &str| set.iter().any(|f| f == flag);
    let mut out = Vec::new();
    if get("eval_strategy").and_then(Value::as_str).is_some_and(|s| s != "no") && !given("eval-data") {
        if let Some(Value::String(name)) = get("dataset_name") {
            out.push((
                "eval-data",
                name.clone(),
                format!("`eval_strategy`: {name}'s --eval-data-split is evaluated, as TRL's script does"),
            ));
        }
    }
    if get("use_peft") == Some(&Value::Bool(true)) {
        if !given("lora-target-modules") {
            out.push((
                "lora-target-modules",
                "q_proj,v_proj".into(),
                "no `lora_target_modules`: PEFT's default for Llama-family models, q_proj,v_proj, as TRL gets it"
                    .into(),
            ));
        }
        if get("disable_dropout") != Some(&Value::Bool(false)) {
            out.push((
                "lora-dropout",
                "0".into(),
                "LoRA dropout 0: TRL's disable_dropout (default true) turns it off after wrapping the model".into(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trl_fields_are_renamed_noted_or_refused_by_name() {
        assert_eq!(field("loss_type", &json!(["sigmoid"])), Treatment::Flag("loss", json!(["sigmoid"]), None));
        assert_eq!(
            field("dataset_name", &json!("trl-lib/ultrafeedback_binarized")),
            Treatment::Flag("data", json!("trl-lib/ultrafeedback_binarized"), None)
        );
        assert!(matches!(field("dataloader_num_workers", &json!(4)), Treatment::Note(n) if n.contains("no effect")));
        assert!(matches!(field("fp16", &json!(true)), Treatment::Refuse(n) if n.contains("bf16: true")));
        assert!(matches!(field("fp16", &json!(false)), Treatment::Note(_)));
        assert!(matches!(field("tf32", &json!(true)), Treatment::Note(_)));
        assert!(matches!(field("use_dora", &json!(true)), Treatment::Refuse(n) if n.contains("use_dora")));
        assert!(matches!(field("use_dora", &json!(false)), Treatment::Note(_)));
        assert_eq!(field("betta", &json!(0.1)), Treatment::Unknown);
        assert!(FIELDS.len() > 150);
    }
}
