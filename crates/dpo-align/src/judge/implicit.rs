//! `--judge implicit:POLICY[,REFERENCE]`: DPO's implicit reward, `beta * log pi(y|x) / pi_ref(y|x)`
//! (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
//! Reward Model", eq. 5; the prompt-only term `beta * log Z(x)` is the same for every completion
//! of a prompt and is left out, so rewards compare completions of one prompt).

use super::{Judge, JudgeInput};
use anyhow::{bail, ensure, Context, Result};
use dpo_data::{ExampleKind, Tokenized};
use dpo_model::tokenizer::Tokenizer;
use dpo_model::{Llama, LoadOptions};
use dpo_train::logps::example_logps;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A policy and its reference: see the module documentation.
pub struct ImplicitReward {
    policy: Llama,
    reference: Llama,
    tokenizer: Tokenizer,
    /// `beta`: the trained run's (its `train_args.json`), else [`dpo_train::loss::defaults::BETA`].
    pub beta: f64,
    name: String,
    max_tokens: usize,
}

/// How `POLICY` of `implicit:POLICY[,REFERENCE]` is loaded, and its beta and reference when it is
/// the output directory of `dpo train` (holding `train_args.json` and `final/`): the trained
/// policy (a full model, or the base with its LoRA adapter), the run's beta, the run's `--model`.
struct PolicySpec {
    path: PathBuf,
    load: LoadOptions,
    beta: Option<f64>,
    reference: Option<(PathBuf, LoadOptions)>,
}

fn policy_spec(policy: &Path, load: &LoadOptions) -> Result<PolicySpec> {
    let args = policy.join("train_args.json");
    if !args.exists() {
        return Ok(PolicySpec { path: policy.to_path_buf(), load: load.clone(), beta: None, reference: None });
    }
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(&args).with_context(|| format!("reading {}", args.display()))?)
            .with_context(|| format!("{}: invalid JSON", args.display()))?;
    let model = PathBuf::from(v["model"].as_str().with_context(|| format!("{}: no field `model`", args.display()))?);
    let base_adapters: Vec<PathBuf> = v["setup"]["load"]["adapters"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(PathBuf::from).collect())
        .unwrap_or_default();
    let beta = v["task"]["objective"]["terms"][0][0]["beta"].as_f64();
    let fin = policy.join("final");
    ensure!(fin.exists(), "{}: no `final` (the run did not finish)", policy.display());
    let base_load = LoadOptions { base_dtype: load.base_dtype, adapters: base_adapters };
    let spec = if v["setup"]["lora"]["use_peft"].as_bool().unwrap_or(false) {
        let mut with = base_load.clone();
        with.adapters.push(fin);
        PolicySpec { path: model.clone(), load: with, beta, reference: Some((model, base_load)) }
    } else {
        PolicySpec {
            path: fin,
            load: LoadOptions { base_dtype: load.base_dtype, adapters: Vec::new() },
            beta,
            reference: Some((model, base_load)),
        }
    };
    Ok(spec)
}

impl ImplicitReward {
    /// Loads the policy and the reference of `spec` (`POLICY[,REFERENCE]`): a model (`.gguf`,
    /// Hugging Face directory or Hub name) or a `dpo train` output directory, whose reference
    /// and beta are the run's when `REFERENCE` is not given. Errors: a plain model without a
    /// reference, models with different tokenizers, what loading refuses.
    pub fn load(spec: &str, load: &LoadOptions, max_tokens: usize) -> Result<Self> {
        let (policy, reference) = match spec.split_once(',') {
            Some((p, r)) => (p, Some(r)),
            None => (spec, None),
        };
        let ps = policy_spec(Path::new(policy), load)?;
        let (ref_path, ref_load) = match (reference, ps.reference) {
            (Some(r), _) => (PathBuf::from(r), load.clone()),
            (None, Some(r)) => r,
            (None, None) => bail!("implicit:{policy}: name the reference as implicit:POLICY,REFERENCE (the policy is not a `dpo train` output directory)"),
        };
        let p = dpo_model::load_with(&dpo_runtime::fetch::ensure_model(&ps.path)?, &ps.load)?;
        let r = dpo_model::load_with(&dpo_runtime::fetch::ensure_model(&ref_path)?, &ref_load)?;
        ensure!(
            p.tokenizer.vocab_size() == r.tokenizer.vocab_size(),
            "implicit:{spec}: the policy and the reference have different vocabularies ({} and {} tokens)",
            p.tokenizer.vocab_size(),
            r.tokenizer.vocab_size()
        );
        let beta = ps.beta.unwrap_or(dpo_train::loss::defaults::BETA);
        Ok(Self {
            policy: p.model()?,
            reference: r.model()?,
            tokenizer: p.tokenizer,
            beta,
            name: format!("implicit:{spec}"),
            max_tokens: max_tokens.max(1),
        })
    }

    /// `beta * (log pi(y|x) - log pi_ref(y|x))` in nats times beta for each completion of each
    /// prompt, `[prompt][completion]`, of token ids (prompt non-empty).
    pub fn rewards_of_ids(&self, prompts: &[Vec<u32>], completions: &[Vec<Vec<u32>>]) -> Result<Vec<Vec<f64>>> {
        let items: Vec<Tokenized> = prompts
            .iter()
            .zip(completions)
            .enumerate()
            .map(|(i, (p, c))| Tokenized {
                index: i,
                prompt: p.clone(),
                completions: c.clone(),
                kind: ExampleKind::Ranking { scores: None },
            })
            .collect();
        let refs: Vec<&Tokenized> = items.iter().collect();
        let pi = example_logps(&self.policy, &refs, self.max_tokens, None, |_| {})?;
        let rf = example_logps(&self.reference, &refs, self.max_tokens, None, |_| {})?;
        Ok(pi.iter().zip(&rf).map(|(a, b)| a.iter().zip(b).map(|(x, y)| self.beta * (x - y)).collect()).collect())
    }

    /// The prompt's and each completion's token ids as TRL splits text: the prompt tokenized
    /// alone and each `prompt + completion` whole, cut after their shared prefix
    /// ([`dpo_data::tokenize::split_at_prompt`]; no EOS is appended to sampled text).
    fn split(&self, prompt: &str, completions: &[String]) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
        let p = self.tokenizer.encode(prompt)?;
        let full =
            completions.iter().map(|c| self.tokenizer.encode(&format!("{prompt}{c}"))).collect::<Result<Vec<_>>>()?;
        Ok(dpo_data::tokenize::split_at_prompt(&p, full))
    }
}

impl Judge for ImplicitReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, input: &JudgeInput) -> Result<Vec<f64>> {
        let (p, cs) = self.split(input.prompt, input.completions)?;
        ensure!(
            !p.is_empty(),
            "{}: an empty prompt has no implicit reward (nothing predicts the first token)",
            input.origin
        );
        Ok(self
            .rewards_of_ids(&[p], &[cs])
            .with_context(|| format!("{}: judging with {}", input.origin, self.name))?
            .remove(0))
    }
}
