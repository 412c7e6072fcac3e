//! Per-completion log-probabilities `log pi(y|x) = sum_t log pi(y_t | x, y_<t)`, in nats.

use anyhow::Result;
use candle_core::{Device, Tensor};
use dpo_data::batch::{micro_batches, pack_weighted, PackedBatch};
use dpo_data::Tokenized;
use dpo_model::Llama;

/// Log-probs of the completions of a packed batch.
pub struct CompletionLogps {
    /// `[completions]`: summed log-prob of each completion's tokens, in nats (prompt tokens are
    /// never scored). Differentiable when the model's weights are `Var`s.
    pub logps: Tensor,
    /// Scored tokens per completion (a count).
    pub token_counts: Vec<usize>,
    /// Per completion, `sum_t sum_v logit_{t,v}` over its tokens (for TRL's `logits/*` metrics).
    pub logit_sums: Vec<f64>,
    /// Per completion, how many of its tokens are the model's most likely next token.
    pub argmax_hits: Vec<usize>,
    /// Per completion, the mean over its tokens of `log p(y_t) - log sum_v p(v)^2` (nats; WPO's
    /// aligned log-prob, Zhou et al. 2024 eq. 2 as TRL computes it; with LD weights too, the
    /// plain mean). A constant.
    pub aligned_means: Vec<f64>,
}

impl CompletionLogps {
    /// The summed log-probs as f64 values.
    pub fn values(&self) -> Result<Vec<f64>> {
        Ok(self.logps.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?)
    }

    /// The results of consecutive micro-batches as one.
    pub fn cat(parts: Vec<CompletionLogps>) -> Result<Self> {
        let logps: Vec<Tensor> = parts.iter().map(|p| p.logps.clone()).collect();
        let mut out = CompletionLogps { logps: Tensor::cat(&logps, 0)?, ..Self::empty(parts[0].logps.dtype())? };
        for p in parts {
            out.token_counts.extend(p.token_counts);
            out.logit_sums.extend(p.logit_sums);
            out.argmax_hits.extend(p.argmax_hits);
            out.aligned_means.extend(p.aligned_means);
        }
        Ok(out)
    }

    /// No completions.
    pub fn empty(dtype: candle_core::DType) -> Result<Self> {
        Ok(CompletionLogps {
            logps: Tensor::zeros(0, dtype, &Device::Cpu)?,
            token_counts: vec![],
            logit_sums: vec![],
            argmax_hits: vec![],
            aligned_means: vec![],
        })
    }

    /// The summed log-probs split by example: `[example][completion]` for `examples`, whose
    /// completions these are, in order.
    pub fn per_example(&self, examples: &[&Tokenized]) -> Result<Vec<Vec<f64>>> {
        let values = self.values()?;
        let mut c = 0;
        Ok(examples
            .iter()
            .map(|ex| {
                let k = ex.completions.len();
                c += k;
                values[c - k..c].to_vec()
            })
            .collect())
    }
}

/// One forward pass of `model` over `batch`; returns each completion's summed log-prob. Token
/// log-probs come from the chunked head ([`dpo_kernels::LogpHead`]), so no `[tokens, vocab]`
/// tensor exists at once; they are summed per completion by a `[completions, tokens]` 0/1 matmul.
pub fn completion_logps(model: &Llama, batch: &PackedBatch) -> Result<CompletionLogps> {
    completion_logps_of_hidden(model, batch, &model.hidden_states(&batch.ids, &batch.layout)?)
}

/// [`completion_logps`] from the batch's last hidden states `hidden` `[rows, hidden]` (the
/// output of the decoder layers, before the final norm).
pub fn completion_logps_of_hidden(model: &Llama, batch: &PackedBatch, hidden: &Tensor) -> Result<CompletionLogps> {
    let (token_logps, stats) = model.token_logps(hidden, &batch.pred_rows, batch.targets.clone())?;
    let (c, m) = (batch.completions(), batch.targets.len());
    let mut ind = vec![0f64; c * m];
    for (i, r) in batch.completion_targets.iter().enumerate() {
        match &batch.target_weights {
            None => ind[i * m + r.start..i * m + r.end].iter_mut().for_each(|x| *x = 1.0),
            Some(w) => ind[i * m + r.start..i * m + r.end].copy_from_slice(&w[r.clone()]),
        }
    }
    let ind = Tensor::from_vec(ind, (c, m), &Device::Cpu)?.to_dtype(model.dtype())?;
    let logps = ind.matmul(&token_logps.unsqueeze(1)?)?.squeeze(1)?;
    let stats = stats.lock().unwrap();
    let logit_sums = batch.completion_targets.iter().map(|r| stats.logit_sum[r.clone()].iter().sum()).collect();
    let argmax_hits =
        batch.completion_targets.iter().map(|r| stats.argmax_hit[r.clone()].iter().filter(|&&h| h).count()).collect();
    let token_counts = batch.completion_targets.iter().map(|r| r.len()).collect();
    let lp = token_logps.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    let aligned_means = batch
        .completion_targets
        .iter()
        .map(|r| r.clone().map(|t| lp[t] - stats.log_sum_sq[t]).sum::<f64>() / r.len().max(1) as f64)
        .collect();
    Ok(CompletionLogps { logps, token_counts, logit_sums, argmax_hits, aligned_means })
}

/// Inference-only log-probs of every completion of `examples`, in order, `max_tokens` packed rows
/// per forward pass, with LD-DPO's weights when `ld_alpha` is given ([`pack_weighted`]);
/// `progress(done_examples)` is called after each pass.
pub fn dataset_logps(
    model: &Llama,
    examples: &[&Tokenized],
    max_tokens: usize,
    ld_alpha: Option<f64>,
    mut progress: impl FnMut(usize),
) -> Result<CompletionLogps> {
    let model = model.detached();
    let mut parts = Vec::new();
    for range in micro_batches(examples, max_tokens) {
        let end = range.end;
        parts.push(completion_logps(&model, &pack_weighted(&examples[range], ld_alpha))?);
        progress(end);
    }
    if parts.is_empty() {
        return CompletionLogps::empty(model.dtype());
    }
    CompletionLogps::cat(parts)
}

/// [`dataset_logps`] across the ranks of the job ([`dpo_runtime::dist`]): every rank calls it with the
/// same `examples`; the micro-batches one process would form are divided among the ranks by
/// token count, and every rank gets every completion's results, in order, equal to one process's
/// (the same packed batches are computed). `progress(done)` counts this rank's examples. The
/// log-probs come back as values (`logps` is not differentiable).
pub fn dataset_logps_sharded(
    model: &Llama,
    examples: &[&Tokenized],
    max_tokens: usize,
    ld_alpha: Option<f64>,
    mut progress: impl FnMut(usize),
) -> Result<CompletionLogps> {
    if dpo_runtime::dist::world().size() == 1 {
        return dataset_logps(model, examples, max_tokens, ld_alpha, progress);
    }
    let model = model.detached();
    let ranges = micro_batches(examples, max_tokens);
    let costs: Vec<usize> =
        ranges.iter().map(|r| examples[r.clone()].iter().map(|e| e.packed_tokens()).sum()).collect();
    type Part = (Vec<f64>, Vec<usize>, Vec<f64>, Vec<usize>, Vec<f64>);
    let parts: Vec<Part> = dpo_runtime::dist::map_units(&costs, |mine| {
        let mut done = 0;
        mine.iter()
            .map(|&u| {
                let c = completion_logps(&model, &pack_weighted(&examples[ranges[u].clone()], ld_alpha))?;
                done += ranges[u].len();
                progress(done);
                Ok((c.values()?, c.token_counts, c.logit_sums, c.argmax_hits, c.aligned_means))
            })
            .collect()
    })?;
    let mut values = Vec::new();
    let mut out = CompletionLogps::empty(model.dtype())?;
    for (v, t, l, a, m) in parts {
        values.extend(v);
        out.token_counts.extend(t);
        out.logit_sums.extend(l);
        out.argmax_hits.extend(a);
        out.aligned_means.extend(m);
    }
    let n = values.len();
    out.logps = Tensor::from_vec(values, n, &Device::Cpu)?.to_dtype(model.dtype())?;
    Ok(out)
}

/// [`dataset_logps_sharded`] split by example: `[example][completion]` summed log-probs in nats.
pub fn example_logps_sharded(
    model: &Llama,
    examples: &[&Tokenized],
    max_tokens: usize,
    ld_alpha: Option<f64>,
    progress: impl FnMut(usize),
) -> Result<Vec<Vec<f64>>> {
    dataset_logps_sharded(model, examples, max_tokens, ld_alpha, progress)?.per_example(examples)
}

/// [`dataset_logps`] split by example: `[example][completion]` summed log-probs in nats.
pub fn example_logps(
    model: &Llama,
    examples: &[&Tokenized],
    max_tokens: usize,
    ld_alpha: Option<f64>,
    progress: impl FnMut(usize),
) -> Result<Vec<Vec<f64>>> {
    dataset_logps(model, examples, max_tokens, ld_alpha, progress)?.per_example(examples)
}
