//! `--judge reward-model:DIR`: a sequence-classification reward model (a Bradley–Terry reward
//! model as TRL's RewardTrainer writes it: `LlamaForSequenceClassification`,
//! `Qwen2ForSequenceClassification`, ... with `num_labels = 1`).

use super::{Judge, JudgeInput};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use dpo_data::batch::row_batches;
use dpo_kernels::{AttentionLayout, Group};
use dpo_model::tokenizer::Tokenizer;
use dpo_model::{load_sequence_classifier, Llama};
use std::path::Path;
use std::sync::Arc;

/// A reward model: the decoder, then the `score` head `[1, hidden]` read at one token per
/// sequence, as transformers' `*ForSequenceClassification` does: the last token that is not
/// `pad_token_id` (the rightmost; the last token when the config has no pad id). The reward is
/// that logit, in the model's own units (a Bradley–Terry logit: `P(a > b) = sigmoid(r_a - r_b)`).
pub struct RewardModel {
    model: Llama,
    /// `[1, hidden]`, f32.
    score: Tensor,
    pad_id: Option<u32>,
    tokenizer: Tokenizer,
    name: String,
    /// Packed tokens per forward pass.
    max_tokens: usize,
}

impl RewardModel {
    /// Loads the reward model of the Hugging Face directory `dir` (`config.json`,
    /// `model.safetensors`, `tokenizer.json`). Errors: not a sequence classifier, a head with
    /// more than one label (a reward model has one), what model loading refuses.
    pub fn load(dir: &Path, max_tokens: usize) -> Result<Self> {
        let (loaded, score) = load_sequence_classifier(dir)?;
        let labels = score.dims2()?.0;
        if labels != 1 {
            bail!("{}: `score.weight` has {labels} labels; a reward model has one (num_labels = 1)", dir.display());
        }
        let config = dpo_model::read_hf_config(dir)?;
        let pad_id =
            match config.get("pad_token_id") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(v.as_u64().with_context(|| {
                    format!("{}: `pad_token_id` must be a token id", dir.join("config.json").display())
                })? as u32),
            };
        let model = loaded.model()?;
        Ok(Self {
            model,
            score,
            pad_id,
            tokenizer: loaded.tokenizer,
            name: format!("reward-model:{}", dir.display()),
            max_tokens: max_tokens.max(1),
        })
    }

    /// The row each sequence is read at: the rightmost token that is not the pad id (the first
    /// token when every token is padding, as transformers' argmax over an all-zero mask gives).
    fn pooled_row(&self, ids: &[u32]) -> usize {
        match self.pad_id {
            None => ids.len() - 1,
            Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
        }
    }

    /// The reward of each token sequence (non-empty), in order; sequences are packed into forward
    /// passes of at most `max_tokens` rows (one sequence per attention group; a longer sequence
    /// alone). Errors: an empty sequence, a token outside the vocabulary.
    pub fn score_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<f64>> {
        if let Some(i) = seqs.iter().position(Vec::is_empty) {
            bail!("sequence {} is empty: a reward model needs at least one token", i + 1);
        }
        let mut out = Vec::with_capacity(seqs.len());
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        for range in row_batches(&lens, self.max_tokens) {
            let (mut ids, mut groups, mut pooled) = (Vec::new(), Vec::new(), Vec::new());
            for s in &seqs[range] {
                pooled.push((ids.len() + self.pooled_row(s)) as u32);
                groups.push(Group { prompt: ids.len()..ids.len() + s.len(), branches: vec![] });
                ids.extend_from_slice(s);
            }
            let layout = Arc::new(AttentionLayout { rows: ids.len(), groups });
            let hidden = self.model.hidden_states(&ids, &layout)?;
            let h = hidden.index_select(&Tensor::new(pooled.as_slice(), &Device::Cpu)?, 0)?;
            let h = self.model.final_norm(&h)?.to_dtype(DType::F32)?;
            let r = h.matmul(&self.score.t()?)?.flatten_all()?.to_vec1::<f32>()?;
            out.extend(r.into_iter().map(f64::from));
        }
        Ok(out)
    }

    /// The token ids the model reads for a prompt and its completion: `prompt + completion`
    /// tokenized as one text with the tokenizer's special tokens (as `tokenizer(text)`).
    pub fn encode(&self, prompt: &str, completion: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(&format!("{prompt}{completion}"))
    }
}

impl Judge for RewardModel {
    fn name(&self) -> &str {
        &self.name
    }

    /// The reward of `prompt + completion` for each completion, in one batch.
    fn score(&self, input: &JudgeInput) -> Result<Vec<f64>> {
        let seqs: Vec<Vec<u32>> =
            input.completions.iter().map(|c| self.encode(input.prompt, c)).collect::<Result<_>>()?;
        self.score_ids(&seqs).with_context(|| format!("{}: scoring with {}", input.origin, self.name))
    }
}
