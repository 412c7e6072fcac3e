//! Preparing a data file for a loss: records converted to the view it needs ([`View`]), tokenized,
//! and (KTO) given their mismatched completions.

use super::{self as data, TokenizeSettings, TokenizedSet};
use anyhow::{bail, ensure, Result};
use dpo_model::tokenizer::Tokenizer;
use dpo_runtime::observer::Observer;
use std::path::Path;

/// What the examples of a data file are prepared as: the data the loss that reads them needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// One completion per record, the chosen or best one (SFT).
    Completions,
    /// Preference pairs; rankings become all their ordered pairs.
    Pairs,
    /// Pairs with a score for each side (`score_chosen`, `score_rejected`: ODPO).
    ScoredPairs,
    /// Unpaired completions labelled desirable or not, pairs split into two (KTO); each gets the
    /// completion of its neighbour in its run of `batch` examples for the KL estimate.
    Unpaired { batch: usize },
    /// Rankings, all of one length (Plackett–Luce); a pair is a ranking of 2.
    Rankings,
}

impl View {
    /// How this view is named in the reference cache's key (the view changes the examples).
    pub fn key(&self) -> String {
        match self {
            View::Completions => "completions".into(),
            View::Pairs => "pairs".into(),
            View::ScoredPairs => "scoredpairs".into(),
            View::Unpaired { batch } => format!("unpaired, KL pairs in batches of {batch}"),
            View::Rankings => "rankings".into(),
        }
    }
}

/// Reads and tokenizes a data file as `view`, reporting what was left out. Records of any layout
/// (see [`crate`]) are converted to the view: one completion per record (the chosen or best one);
/// pairs (rankings become all their ordered pairs); rankings (a pair is a ranking of 2; all of
/// one length); unpaired examples (pairs are split), each then given the completion of its
/// neighbour in its batch (TRL's rotation) for the KL estimate. A record that cannot be converted
/// is an error naming its file and line.
pub fn load_examples(
    path: &Path,
    tok: &Tokenizer,
    settings: TokenizeSettings,
    view: View,
    obs: &mut dyn Observer,
) -> Result<TokenizedSet> {
    let (records, report) = data::read_with(path, &data::ReadOptions::for_tokenizer(tok)?)?;
    let records = match view {
        View::Completions => data::to_completions(records),
        View::Pairs | View::ScoredPairs => {
            let r = data::rankings_to_pairs(records)?;
            data::require(&r, data::Layout::Pair)?;
            r
        }
        View::Unpaired { .. } => {
            let r = data::to_unpaired(records)?;
            data::require(&r, data::Layout::Unpaired)?;
            r
        }
        View::Rankings => {
            data::require(&records, data::Layout::Ranking)?;
            records
        }
    };
    if view == View::ScoredPairs {
        for r in &records {
            if let Ok(ex) = &r.example {
                ensure!(
                    matches!(ex.kind, data::ExampleKind::Pair { scores: Some(_) }),
                    "{}: this loss needs a score for each side (`score_chosen`, `score_rejected`)",
                    r.origin
                );
            }
        }
    }
    let mut set = data::tokenize_all(tok, &records, settings)?;
    if view == View::Rankings {
        let k = set.examples.first().map(|e| e.completions.len()).unwrap_or(2);
        if let Some(e) = set.examples.iter().find(|e| e.completions.len() != k) {
            bail!(
                "{}: record {} ranks {} completions, the first ranks {k}: plackett_luce needs rankings of one length",
                path.display(),
                e.index,
                e.completions.len()
            );
        }
    }
    if let View::Unpaired { batch } = view {
        add_kl_completions(&mut set, batch);
    }
    let what = match view {
        View::Completions => "examples",
        View::Unpaired { .. } => "unpaired examples",
        View::Rankings => "rankings",
        View::Pairs | View::ScoredPairs => "pairs",
    };
    obs.message(&format!(
        "{}: {} records, {} {what} used{}{}{}",
        path.display(),
        report.records,
        set.examples.len(),
        if report.conversational > 0 {
            format!(" ({} conversational, chat template applied)", report.conversational)
        } else {
            String::new()
        },
        if report.skipped_disagreeing > 0 {
            format!(", {} skipped (sides disagree before the last \"\\n\\nAssistant:\")", report.skipped_disagreeing)
        } else {
            String::new()
        },
        match set.skipped.len().saturating_sub(report.skipped_disagreeing) {
            0 => String::new(),
            n => format!(", {n} dropped (prompt fills max_length)"),
        }
    ));
    Ok(set)
}

/// KTO's mismatched completions (TRL's `add_kl_completion_ids`): in each run of `batch` examples
/// (file order), example `i` gets the completion of example `i - 1` (the first, of the last) as a
/// second completion, used only to estimate the KL reference point `z0`.
fn add_kl_completions(set: &mut TokenizedSet, batch: usize) {
    for chunk in set.examples.chunks_mut(batch.max(1)) {
        let firsts: Vec<Vec<u32>> = chunk.iter().map(|e| e.completions[0].clone()).collect();
        let n = chunk.len();
        for (i, e) in chunk.iter_mut().enumerate() {
            e.completions.truncate(1);
            e.completions.push(firsts[(i + n - 1) % n].clone());
        }
    }
}

/// [`load_examples`] for preference pairs.
pub fn load_pairs(
    path: &Path,
    tok: &Tokenizer,
    settings: TokenizeSettings,
    obs: &mut dyn Observer,
) -> Result<TokenizedSet> {
    load_examples(path, tok, settings, View::Pairs, obs)
}
