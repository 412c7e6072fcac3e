//! Complete checkpoints, and resuming a run where it stopped.
//!
//! `checkpoint-STEP/` holds the policy as a loadable model (a Hugging Face model directory, or a
//! PEFT adapter directory) and, in the spirit of transformers' Trainer, what training needs to go
//! on: `optimizer.safetensors` (the optimizer's state of every trainable tensor, f32, named
//! `<tensor>.<state>` with PyTorch's state names: AdamW's `exp_avg` and `exp_avg_sq`, Lion's
//! `exp_avg`, Adafactor's `exp_avg_sq_row` and `exp_avg_sq_col` or `exp_avg_sq`; bitsandbytes'
//! for 8-bit AdamW: `state1`, `absmax1`, `state2`, `absmax2`, the codes as f32 integers),
//! `trainer_state.json` ([`TrainerState`]: the step, tokens, non-finite counts, data hashes, the
//! run's settings, β-DPO's statistics) and `metrics.jsonl` as it stood at that step. The
//! directory is written atomically ([`dpo_runtime::io::write_dir_atomic`]). The data order, the
//! learning-rate schedule and LoRA's dropout masks are functions of the seed and the step, so a
//! resumed run replays them; the reference log-probs are in the content-keyed cache.

use crate::optim::Optimizer;
use crate::reference::DataHashes;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use dpo_model::policy::Policy;
use dpo_model::{read_safetensors, write_safetensors, Weight};
use dpo_runtime::io::{is_leftover_tmp, remove_dir_atomic, write_atomic};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The file of a checkpoint that holds its [`TrainerState`].
pub const TRAINER_STATE: &str = "trainer_state.json";
/// The file of a checkpoint that holds the optimizer's state.
pub const OPTIMIZER_STATE: &str = "optimizer.safetensors";
/// The run's metrics file (in the output directory, and as it stood in each checkpoint).
pub const METRICS: &str = "metrics.jsonl";

/// Where a run stood when a checkpoint was written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps done (skipped non-finite ones included).
    pub global_step: usize,
    /// Optimizer updates applied (AdamW's bias-correction step `t`, Adafactor's decay step).
    pub optimizer_step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// The run's total optimiser steps.
    pub max_steps: usize,
    /// Training tokens so far, counted as TRL counts `num_tokens`.
    pub num_tokens: usize,
    /// Steps skipped for a non-finite loss or gradient norm: in all, and in a row at the end.
    pub skipped_nonfinite: usize,
    pub nonfinite_in_a_row: usize,
    /// blake3 of the training and evaluation data files (hex).
    pub data_hash: String,
    pub eval_data_hash: Option<String>,
    /// The run's settings (as `train_args.json`).
    pub training_args: Value,
    /// β-DPO's running margin statistics (absent for other losses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_stats: Option<crate::loss::beta_dpo::MarginStats>,
}

/// Settings a resumed run may change: they do not change what is trained.
const MAY_DIFFER: [&str; 8] = [
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "save_steps",
    "save_total_limit",
    "max_nonfinite_steps",
    "zero_stage",
    "report_to",
];

/// `checkpoint-STEP` → STEP.
fn checkpoint_step(name: &str) -> Option<usize> {
    name.strip_prefix("checkpoint-")?.parse().ok()
}

/// The `checkpoint-STEP/` directories of `output_dir`, complete or not, newest first.
fn checkpoints(output_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut found = Vec::new();
    if !output_dir.exists() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(output_dir).with_context(|| format!("reading {}", output_dir.display()))? {
        let entry = entry?;
        if let Some(step) = entry.file_name().to_str().and_then(checkpoint_step) {
            found.push((step, entry.path()));
        }
    }
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    Ok(found)
}

/// The checkpoint `spec` names: a directory, or `latest` (the newest complete `checkpoint-STEP/`
/// of `output_dir`). Errors: no complete checkpoint there; a directory without a trainer state.
pub fn resolve(spec: &Path, output_dir: &Path) -> Result<PathBuf> {
    if spec == Path::new("latest") {
        return checkpoints(output_dir)?
            .into_iter()
            .map(|(_, p)| p)
            .find(|p| p.join(TRAINER_STATE).is_file())
            .with_context(|| {
                format!(
                    "--resume-from-checkpoint latest: {} holds no complete checkpoint-STEP/ directory",
                    output_dir.display()
                )
            });
    }
    ensure!(
        spec.join(TRAINER_STATE).is_file(),
        "--resume-from-checkpoint {}: not a complete checkpoint (no {TRAINER_STATE}; written by an older dpo, or the final model)",
        spec.display()
    );
    Ok(spec.to_path_buf())
}

/// Reads a checkpoint's [`TrainerState`]. Errors name the file.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(TRAINER_STATE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a trainer state", path.display()))
}

/// Refuses to resume `state` (read from `dir`) with the run's settings `args` (as
/// `train_args.json` holds them) that would train something else: another data file `data_path`
/// (by content, `data`), model, loss, batch size, learning rate, ... The error names the first
/// differing setting with both values.
pub fn check(state: &TrainerState, dir: &Path, args: &Value, data_path: &Path, data: &DataHashes) -> Result<()> {
    let at = dir.join(TRAINER_STATE);
    let (Value::Object(then), Value::Object(now)) = (&state.training_args, args) else {
        bail!("{}: `training_args` is not an object", at.display())
    };
    let mut keys: Vec<&String> = then.keys().chain(now.keys()).filter(|k| !MAY_DIFFER.contains(&k.as_str())).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (a, b) = (then.get(k).unwrap_or(&Value::Null), now.get(k).unwrap_or(&Value::Null));
        if a != b {
            bail!(
                "{}: the run was made with `{k}` = {a}, this command has {b}: resume with the run's settings",
                at.display()
            );
        }
    }
    ensure!(
        state.data_hash == data.train,
        "{}: the training data {} changed since the checkpoint was written (its content hash differs)",
        at.display(),
        data_path.display()
    );
    ensure!(
        state.eval_data_hash == data.eval,
        "{}: the evaluation data changed since the checkpoint was written (its content hash differs)",
        at.display()
    );
    Ok(())
}

/// The optimizer's named state of every trainable tensor of `policy`, in order
/// ([`Optimizer::state`]; sharded across ranks, a collective that every rank calls).
pub fn optimizer_state(policy: &Policy, opt: &Optimizer) -> Result<Vec<Vec<(&'static str, Tensor)>>> {
    policy.params.iter().enumerate().map(|(i, (_, var))| opt.state(i, var.dims())).collect()
}

/// Writes the training state into the checkpoint directory `tmp` being filled (beside the policy's
/// files): the optimizer's state `opt_state` ([`optimizer_state`]), `state`, and the metrics file
/// `metrics` as it stands.
pub fn write_state(
    tmp: &Path,
    state: &TrainerState,
    policy: &Policy,
    opt_state: Vec<Vec<(&'static str, Tensor)>>,
    metrics: &Path,
) -> Result<()> {
    let mut tensors = Vec::with_capacity(2 * policy.params.len());
    for ((name, _), bufs) in policy.params.iter().zip(opt_state) {
        tensors.extend(bufs.into_iter().map(|(s, t)| (format!("{name}.{s}"), Weight::Tensor(t))));
    }
    write_safetensors(&tmp.join(OPTIMIZER_STATE), &tensors, safetensors::Dtype::F32)?;
    std::fs::write(tmp.join(TRAINER_STATE), serde_json::to_string_pretty(state)?)
        .with_context(|| format!("writing {TRAINER_STATE}"))?;
    let lines = if metrics.exists() {
        std::fs::read(metrics).with_context(|| format!("reading {}", metrics.display()))?
    } else {
        Vec::new()
    };
    std::fs::write(tmp.join(METRICS), lines).with_context(|| format!("writing {METRICS}"))?;
    Ok(())
}

/// Loads checkpoint `dir` into the freshly built `policy` and `opt` (the trainable tensors'
/// values and the optimizer's state and step) and puts its `metrics.jsonl` back as `metrics`
/// (dropping what was logged after the checkpoint, a torn last line included; `None`: a rank other than 0,
/// which writes no files). Errors: a tensor missing from the checkpoint or of another shape.
pub fn restore(
    dir: &Path,
    state: &TrainerState,
    policy: &Policy,
    opt: &mut Optimizer,
    metrics: Option<&Path>,
) -> Result<()> {
    let weights_file = if policy.lora.is_some() { "adapter_model.safetensors" } else { "model.safetensors" };
    let saved = read_safetensors(&dir.join(weights_file))?;
    let moments = read_safetensors(&dir.join(OPTIMIZER_STATE))?;
    for (i, (name, var)) in policy.params.iter().enumerate() {
        let missing = |file: &str, what: &str| format!("{}: no tensor `{what}`", dir.join(file).display());
        let t = saved.get(name).with_context(|| missing(weights_file, name))?;
        ensure!(
            t.dims() == var.dims(),
            "{}: tensor `{name}` has shape {:?}, the model {:?}",
            dir.join(weights_file).display(),
            t.dims(),
            var.dims()
        );
        var.set(&t.to_dtype(var.dtype())?)?;
        opt.restore(i, var.dims(), &|s| moments.get(&format!("{name}.{s}")).cloned())
            .with_context(|| format!("{}: tensor `{name}`", dir.join(OPTIMIZER_STATE).display()))?;
    }
    opt.set_steps(state.optimizer_step);
    let Some(metrics) = metrics else { return Ok(()) };
    let lines = std::fs::read(dir.join(METRICS)).with_context(|| format!("reading {}", dir.join(METRICS).display()))?;
    write_atomic(metrics, |w| Ok(w.write_all(&lines)?))
}

/// Removes the temporary directories and files that writes killed midway left in `output_dir`.
pub fn remove_leftovers(output_dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(output_dir).with_context(|| format!("reading {}", output_dir.display()))? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(is_leftover_tmp) {
            let p = entry.path();
            if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }
                .with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// Keeps the newest `limit` checkpoints of `output_dir` and `keep` (the one a run resumed from);
/// removes the others (each renamed away first, so none is ever left half-removed).
pub fn prune(output_dir: &Path, limit: usize, keep: Option<&Path>) -> Result<()> {
    for (_, dir) in checkpoints(output_dir)?.into_iter().skip(limit) {
        if keep.is_some_and(|k| k.canonicalize().ok() == dir.canonicalize().ok()) {
            continue;
        }
        remove_dir_atomic(&dir)?;
    }
    Ok(())
}
