//! `--judge llm:MODEL`: a language model as a pairwise judge, read from its next-token
//! probabilities (no text is generated or parsed).
//!
//! For two completions `a`, `b` of a prompt, the template (placeholders `{prompt}`,
//! `{response_a}`, `{response_b}`) is filled, sent as the user turn of the judge's chat template
//! (with the generation prompt; the bare text when the model has no template), and the judge's
//! logits `z` of the first answer token compared on the two labels `A` and `B`:
//! `P_A(a, b) = exp(z_A) / (exp(z_A) + exp(z_B))`. Position bias (Zheng et al. 2023, "Judging
//! LLM-as-a-Judge", §3.3) is cancelled by asking both orders:
//! `P(a > b) = (P_A(a, b) + P_B(b, a)) / 2`, so `P(a > b) + P(b > a) = 1`.

use super::{Judge, JudgeInput};
use anyhow::{bail, ensure, Context, Result};
use candle_core::DType;
use dpo_data::batch::row_batches;
use dpo_data::chat::{ChatTemplate, GenerationPrompt, Message};
use dpo_model::tokenizer::Tokenizer;
use dpo_model::{Llama, LoadOptions};
use std::path::Path;

/// The default pairwise template (`crates/dpo/assets/judge_pairwise.txt`): which response is more
/// helpful, correct and clear, answered with one letter.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../assets/judge_pairwise.txt");
/// The placeholders a template must contain.
pub const PLACEHOLDERS: [&str; 3] = ["{prompt}", "{response_a}", "{response_b}"];
/// The answer labels, in the order of the template's responses.
pub const LABELS: [&str; 2] = ["A", "B"];

/// A language model judging pairs; see the module documentation.
pub struct LlmJudge {
    model: Llama,
    tokenizer: Tokenizer,
    chat: Option<ChatTemplate>,
    template: String,
    /// The token ids of [`LABELS`].
    labels: [u32; 2],
    name: String,
    /// Packed tokens per forward pass.
    max_tokens: usize,
}

impl LlmJudge {
    /// Loads the judge model (`.gguf` file or Hugging Face directory, `load` as `--base-dtype`
    /// says) with `template` (a file's text; [`DEFAULT_TEMPLATE`] when `None`).
    ///
    /// Errors: a template without one of [`PLACEHOLDERS`] (naming `template_origin`), a label that
    /// is not one token of the judge's vocabulary, what model loading refuses.
    pub fn load(model: &Path, load: &LoadOptions, template: Option<(&str, &str)>, max_tokens: usize) -> Result<Self> {
        let (template, origin) = template.unwrap_or((DEFAULT_TEMPLATE, "the default judge template"));
        for p in PLACEHOLDERS {
            ensure!(
                template.contains(p),
                "{origin}: the judge template has no `{p}` (it needs {})",
                PLACEHOLDERS.join(", ")
            );
        }
        let path = dpo_runtime::fetch::ensure_model(model)?;
        let loaded = dpo_model::load_with(&path, load)?;
        let tokenizer = loaded.tokenizer.clone();
        let chat = ChatTemplate::from_tokenizer(&tokenizer)?;
        let mut labels = [0u32; 2];
        for (slot, l) in labels.iter_mut().zip(LABELS) {
            let ids = tokenizer.encode_raw(l)?;
            ensure!(ids.len() == 1, "judge {}: the label `{l}` is {} tokens, not one", model.display(), ids.len());
            *slot = ids[0];
        }
        Ok(Self {
            model: loaded.model()?,
            tokenizer,
            chat,
            template: template.to_string(),
            labels,
            name: format!("llm:{}", model.display()),
            max_tokens: max_tokens.max(1),
        })
    }

    /// The judge's input for `prompt` with `a` as response A and `b` as response B.
    fn input_ids(&self, prompt: &str, a: &str, b: &str) -> Result<Vec<u32>> {
        // One pass over the template, so a response that contains a placeholder stays as it is.
        let mut text = String::with_capacity(self.template.len() + prompt.len() + a.len() + b.len());
        let mut rest = self.template.as_str();
        while let Some(k) = rest.find('{') {
            text.push_str(&rest[..k]);
            let tail = &rest[k..];
            match PLACEHOLDERS.iter().zip([prompt, a, b]).find(|(p, _)| tail.starts_with(**p)) {
                Some((p, v)) => {
                    text.push_str(v);
                    rest = &tail[p.len()..];
                }
                None => {
                    text.push('{');
                    rest = &tail[1..];
                }
            }
        }
        text.push_str(rest);
        match &self.chat {
            Some(chat) => {
                self.tokenizer.encode_raw(&chat.render(&[Message::new("user", text)], GenerationPrompt::Add)?)
            }
            None => self.tokenizer.encode(&text),
        }
    }

    /// `P_A` for each judge input: the probability of label `A` against `B` at the next token.
    fn label_probabilities(&self, inputs: &[Vec<u32>]) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(inputs.len());
        let lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
        for range in row_batches(&lens, self.max_tokens) {
            let refs: Vec<&[u32]> = inputs[range].iter().map(Vec::as_slice).collect();
            let (hidden, _) = self.model.prefill(&refs)?;
            let z = self.model.logits(&hidden)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for row in z {
                let (za, zb) = (row[self.labels[0] as usize] as f64, row[self.labels[1] as usize] as f64);
                out.push(1.0 / (1.0 + (zb - za).exp()));
            }
        }
        Ok(out)
    }

    /// `P(a > b)` for every ordered pair `(a, b)` of different completions, both orders averaged:
    /// `[a][b]`, with `0.5` on the diagonal.
    pub fn preferences(&self, prompt: &str, completions: &[String]) -> Result<Vec<Vec<f64>>> {
        let n = completions.len();
        let pairs: Vec<(usize, usize)> =
            (0..n).flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b))).collect();
        let inputs: Vec<Vec<u32>> = pairs
            .iter()
            .map(|&(a, b)| self.input_ids(prompt, &completions[a], &completions[b]))
            .collect::<Result<_>>()?;
        let p_first = self.label_probabilities(&inputs)?;
        let mut first = vec![vec![0.5; n]; n];
        for (&(a, b), p) in pairs.iter().zip(p_first) {
            first[a][b] = p; // P_A with a shown first
        }
        // P(a > b) = (P_A(a, b) + P_B(b, a)) / 2, and P_B(b, a) = 1 - P_A(b, a).
        Ok((0..n)
            .map(|a| (0..n).map(|b| if a == b { 0.5 } else { 0.5 * (first[a][b] + 1.0 - first[b][a]) }).collect())
            .collect())
    }
}

impl Judge for LlmJudge {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_pairwise(&self) -> bool {
        true
    }

    /// Each completion's mean preference over the others, `mean_b P(a > b)` in [0, 1] (two
    /// completions: `P(a > b)` and `P(b > a)`, summing to 1); a single completion scores 0.5.
    fn score(&self, input: &JudgeInput) -> Result<Vec<f64>> {
        let n = input.completions.len();
        if n == 0 {
            bail!("{}: no completions to judge", input.origin);
        }
        let p = self
            .preferences(input.prompt, input.completions)
            .with_context(|| format!("{}: judging with {}", input.origin, self.name))?;
        Ok((0..n)
            .map(
                |a| {
                    if n == 1 {
                        0.5
                    } else {
                        (0..n).filter(|&b| b != a).map(|b| p[a][b]).sum::<f64>() / (n - 1) as f64
                    }
                },
            )
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_template_has_every_placeholder() {
        for p in PLACEHOLDERS {
            assert_eq!(DEFAULT_TEMPLATE.matches(p).count(), 1, "{p}");
        }
    }
}
