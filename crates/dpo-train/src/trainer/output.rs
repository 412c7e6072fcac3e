//! A run's output directory, checked before anything is loaded: a directory that holds another
//! run is refused, and a checkpoint to resume from is found and held against the run's settings.

use super::settings::LoopSettings;
use crate::checkpoint::{self, TrainerState};
use crate::reference::DataHashes;
use anyhow::{bail, ensure, Result};
use serde_json::Value;
use std::path::PathBuf;

/// What a run records about itself in its files.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// What made the run (`summary.json`'s `kind`).
    pub kind: super::RunKind,
    /// The run's settings as `train_args.json` holds them: compared with a checkpoint's on
    /// resume, TensorBoard's text summary.
    pub args: Value,
    /// The training data (named by messages) and the content hashes of both data sets.
    pub data: PathBuf,
    pub hashes: DataHashes,
}

/// An output directory a run may write into, and the checkpoint it resumes from.
pub struct OutputDir {
    pub(super) resume: Option<(PathBuf, TrainerState)>,
}

impl OutputDir {
    /// Checks `settings.output_dir` for a run described by `record`: with
    /// `--resume-from-checkpoint` the checkpoint must exist, be complete and have been made with
    /// the same settings and data; otherwise the directory must hold no run (`metrics.jsonl`)
    /// unless `--overwrite-output-dir`. `not_resumable` says why a run cannot go on from a
    /// checkpoint, if it cannot (TR-DPO keeps its moving reference in memory only). Nothing is
    /// written.
    pub fn check(settings: &LoopSettings, record: &RunRecord, not_resumable: Option<&str>) -> Result<Self> {
        let metrics = settings.output_dir.join(checkpoint::METRICS);
        let resume = match &settings.resume_from_checkpoint {
            Some(spec) => {
                if let Some(why) = not_resumable {
                    bail!("--resume-from-checkpoint: {why}");
                }
                let dir = checkpoint::resolve(spec, &settings.output_dir)?;
                let state = checkpoint::read_state(&dir)?;
                checkpoint::check(&state, &dir, &record.args, &record.data, &record.hashes)?;
                Some((dir, state))
            }
            None => {
                ensure!(
                    !metrics.exists() || settings.overwrite_output_dir,
                    "{} already holds a run (metrics.jsonl); choose another --output-dir, pass --overwrite-output-dir, or --resume-from-checkpoint latest",
                    settings.output_dir.display()
                );
                None
            }
        };
        Ok(Self { resume })
    }
}
