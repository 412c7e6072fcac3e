//! Preparing a data file for a task: records converted to the layout its loss needs, tokenized,
//! and (KTO) given their mismatched completions.

use super::{self as data, TokenizeSettings, TokenizedSet};
use crate::loss::Needs;
use crate::observer::Observer;
use crate::task::Task;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Result};
use std::path::Path;

/// How the examples of a data file are prepared for a task: the layout its loss needs, and (for
/// KTO) the batch size that pairs each example with a mismatched completion.
pub fn data_view(task: &Task, batch_size: usize) -> Result<String> {
    Ok(match task {
        Task::Sft => "completions".into(),
        Task::Preference(o) => match o.needs()? {
            Needs::Unpaired => format!("unpaired, KL pairs in batches of {batch_size}"),
            n => format!("{n:?}").to_lowercase(),
        },
    })
}

/// Reads and tokenizes a data file for `task`, reporting what was left out. Records of any layout
/// (see [`crate::data`]) are converted to what the task needs: for SFT one completion per record
/// (the chosen or best one); pairs for the pairwise losses (rankings become all their ordered
/// pairs); rankings for Plackett–Luce (a pair is a ranking of 2; all of one length); unpaired
/// examples for KTO (pairs are split), each then given the completion of its neighbour in its
/// batch of `batch_size` (TRL's rotation) for the KL estimate. A record that cannot be converted
/// is an error naming its file and line.
pub fn load_examples(path: &Path, tok: &Tokenizer, settings: TokenizeSettings, task: &Task, batch_size: usize, obs: &mut dyn Observer) -> Result<TokenizedSet> {
    let (records, report) = data::read_with(path, &data::ReadOptions::for_tokenizer(tok)?)?;
    let needs = match task {
        Task::Sft => None,
        Task::Preference(o) => Some(o.needs()?),
    };
    let records = match needs {
        None => data::to_completions(records),
        Some(Needs::Pairs | Needs::ScoredPairs | Needs::Any) => {
            let r = data::rankings_to_pairs(records)?;
            data::require(&r, data::Layout::Pair)?;
            r
        }
        Some(Needs::Unpaired) => {
            let r = data::to_unpaired(records)?;
            data::require(&r, data::Layout::Unpaired)?;
            r
        }
        Some(Needs::Rankings) => {
            data::require(&records, data::Layout::Ranking)?;
            records
        }
    };
    if needs == Some(Needs::ScoredPairs) {
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
    if needs == Some(Needs::Rankings) {
        let k = set.examples.first().map(|e| e.completions.len()).unwrap_or(2);
        if let Some(e) = set.examples.iter().find(|e| e.completions.len() != k) {
            bail!("{}: record {} ranks {} completions, the first ranks {k}: plackett_luce needs rankings of one length", path.display(), e.index, e.completions.len());
        }
    }
    if needs == Some(Needs::Unpaired) {
        add_kl_completions(&mut set, batch_size);
    }
    let what = match needs {
        None => "examples",
        Some(Needs::Unpaired) => "unpaired examples",
        Some(Needs::Rankings) => "rankings",
        _ => "pairs",
    };
    obs.message(&format!(
        "{}: {} records, {} {what} used{}{}{}",
        path.display(),
        report.records,
        set.examples.len(),
        if report.conversational > 0 { format!(" ({} conversational, chat template applied)", report.conversational) } else { String::new() },
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
pub fn load_pairs(path: &Path, tok: &Tokenizer, settings: TokenizeSettings, obs: &mut dyn Observer) -> Result<TokenizedSet> {
    load_examples(path, tok, settings, &Task::dpo(0.1), 1, obs)
}

