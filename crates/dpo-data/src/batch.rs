//! Packing tokenized examples into one forward pass, with the prompt shared by its completions.

use crate::Tokenized;
use dpo_kernels::{AttentionLayout, Group};
use std::ops::Range;
use std::sync::Arc;

/// Examples packed row after row as `prompt | completion 1 | completion 2 | …`, with the
/// attention layout that makes each completion see its prompt and itself only (see
/// [`dpo_kernels::Group`]). No padding: every row is a real token.
#[derive(Debug, Clone)]
pub struct PackedBatch {
    /// Token id of every row.
    pub ids: Vec<u32>,
    pub layout: Arc<AttentionLayout>,
    /// For every scored completion token, the row whose hidden state predicts it: the last prompt
    /// row for a completion's first token, else the row of the previous completion token.
    pub pred_rows: Vec<u32>,
    /// The scored completion tokens.
    pub targets: Arc<Vec<u32>>,
    /// For each completion (example by example, in completion order), its range in `targets`.
    pub completion_targets: Vec<Range<usize>>,
    /// The weight of each target's log-prob in its completion's sum (`None`: all 1; LD-DPO's,
    /// [`pack_weighted`]).
    pub target_weights: Option<Vec<f64>>,
}

impl PackedBatch {
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    pub fn completions(&self) -> usize {
        self.completion_targets.len()
    }
}

/// Packs `examples` in order. A completion's first token has no predictor when its prompt is
/// empty and is then not scored (as in TRL, which never scores a sequence's first token).
pub fn pack(examples: &[&Tokenized]) -> PackedBatch {
    let mut ids = Vec::new();
    let mut groups = Vec::with_capacity(examples.len());
    let mut pred_rows = Vec::new();
    let mut targets = Vec::new();
    let mut completion_targets = Vec::new();
    for ex in examples {
        let p0 = ids.len();
        ids.extend_from_slice(&ex.prompt);
        let prompt = p0..ids.len();
        let mut branches = Vec::with_capacity(ex.completions.len());
        for c in &ex.completions {
            let b0 = ids.len();
            ids.extend_from_slice(c);
            let t0 = targets.len();
            for (j, &tok) in c.iter().enumerate() {
                let pred =
                    if j > 0 { Some(b0 + j - 1) } else { prompt.end.checked_sub(1).filter(|_| !prompt.is_empty()) };
                if let Some(r) = pred {
                    pred_rows.push(r as u32);
                    targets.push(tok);
                }
            }
            completion_targets.push(t0..targets.len());
            branches.push(b0..ids.len());
        }
        groups.push(Group { prompt, branches });
    }
    let rows = ids.len();
    PackedBatch {
        ids,
        layout: Arc::new(AttentionLayout { groups, rows }),
        pred_rows,
        targets: Arc::new(targets),
        completion_targets,
        target_weights: None,
    }
}

/// [`pack`] with LD-DPO's token weights (Liu et al. 2024, "Length Desensitization in Directed
/// Preference Optimization", eq. 9; TRL's `ld_alpha`): in each pair, the tokens of the longer
/// completion past the shorter one's length weigh `ld_alpha` in its summed log-prob (the shorter
/// one is unchanged). `None`, or examples that are not pairs: every token weighs 1.
pub fn pack_weighted(examples: &[&Tokenized], ld_alpha: Option<f64>) -> PackedBatch {
    let mut b = pack(examples);
    let Some(alpha) = ld_alpha else { return b };
    let mut w = vec![1.0; b.targets.len()];
    let mut c = 0;
    for ex in examples {
        let k = ex.completions.len();
        if k == 2 {
            let (chosen, rejected) = (b.completion_targets[c].clone(), b.completion_targets[c + 1].clone());
            let shared = chosen.len().min(rejected.len());
            for r in [chosen, rejected] {
                w[r.start + shared..r.end].iter_mut().for_each(|x| *x = alpha);
            }
        }
        c += k;
    }
    b.target_weights = Some(w);
    b
}

/// Splits `examples` (in order) into micro-batches of at most `max_tokens` packed rows each (an
/// example larger than that gets a micro-batch of its own).
pub fn micro_batches(examples: &[&Tokenized], max_tokens: usize) -> Vec<Range<usize>> {
    let rows: Vec<usize> = examples.iter().map(|e| e.packed_tokens()).collect();
    row_batches(&rows, max_tokens)
}

/// Splits items of `rows[i]` packed rows each (in order) into consecutive ranges of at most
/// `max_tokens` rows (an item larger than that gets a range of its own).
pub fn row_batches(rows: &[usize], max_tokens: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut sum) = (0, 0);
    for (i, &n) in rows.iter().enumerate() {
        if i > start && sum + n > max_tokens {
            out.push(start..i);
            start = i;
            sum = 0;
        }
        sum += n;
    }
    if start < rows.len() {
        out.push(start..rows.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExampleKind;

    #[test]
    fn packs_prompt_once_and_predicts_each_completion_from_the_prompt() {
        let a = Tokenized {
            index: 0,
            prompt: vec![10, 11],
            completions: vec![vec![20, 21], vec![30]],
            kind: ExampleKind::Pair { scores: None },
        };
        let b = Tokenized {
            index: 1,
            prompt: vec![],
            completions: vec![vec![40, 41]],
            kind: ExampleKind::Pair { scores: None },
        };
        let p = pack(&[&a, &b]);
        assert_eq!(p.ids, vec![10, 11, 20, 21, 30, 40, 41]);
        assert_eq!(p.layout.positions(), vec![0, 1, 2, 3, 2, 0, 1]);
        assert_eq!(*p.targets, vec![20, 21, 30, 41]);
        assert_eq!(p.pred_rows, vec![1, 2, 1, 5]);
        assert_eq!(p.completion_targets, vec![0..2, 2..3, 3..4]);
        assert_eq!(micro_batches(&[&a, &b, &a], 7), vec![0..2, 2..3]);
        assert_eq!(micro_batches(&[&a, &b, &a], 4), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn ld_weights_scale_the_longer_completions_tail_only() {
        let a = Tokenized {
            index: 0,
            prompt: vec![10, 11],
            completions: vec![vec![20, 21, 22, 23], vec![30, 31]],
            kind: ExampleKind::Pair { scores: None },
        };
        let b = Tokenized {
            index: 1,
            prompt: vec![12],
            completions: vec![vec![40], vec![50, 51, 52]],
            kind: ExampleKind::Pair { scores: None },
        };
        let p = pack_weighted(&[&a, &b], Some(0.25));
        assert_eq!(p.completion_targets, vec![0..4, 4..6, 6..7, 7..10]);
        assert_eq!(p.target_weights.unwrap(), vec![1.0, 1.0, 0.25, 0.25, 1.0, 1.0, 1.0, 1.0, 0.25, 0.25]);
        assert!(pack_weighted(&[&a], None).target_weights.is_none());
    }
}
