//! Hugging Face Hub names for models and data sets (`--model org/name`, `--data org/name`):
//! found in the local Hugging Face cache first, downloaded from the Hub when they are not there
//! and a network is (`HF_HUB_OFFLINE=1` forbids it); and data sets written by `datasets`'
//! `save_to_disk`.
//!
//! The cache is `huggingface_hub`'s: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; a repository is
//! `models--org--name/` (`datasets--org--name/`) with `refs/<branch or tag>` holding a commit
//! hash and `snapshots/<commit>/` the files (links into `blobs/`). Downloads go through the
//! `hf-hub` crate into the same layout (`$HF_ENDPOINT`, token in `$HF_HOME/token`).
//!
//! A data set's split is chosen as the Hub does: the `configs:` of the README's YAML header
//! (`config_name`, `data_files: [{split, path}]`, paths with `*` patterns), else the files named
//! after the split (`data/train-00000-of-00001.parquet`, `train.jsonl`, `train/…`).

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// The Hugging Face hub cache directory (see the module's documentation).
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = var("HF_HUB_CACHE") {
        return d;
    }
    if let Some(h) = var("HF_HOME") {
        return h.join("hub");
    }
    let cache =
        var("XDG_CACHE_HOME").unwrap_or_else(|| var("HOME").unwrap_or_else(|| PathBuf::from(".")).join(".cache"));
    cache.join("huggingface").join("hub")
}

/// Whether `s` reads as a Hub repository id `org/name` (letters, digits, `-`, `_`, `.`).
pub fn is_repo_id(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!(s.split('/').collect::<Vec<_>>()[..], [org, name] if ok(org) && ok(name))
}

/// `models` or `datasets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

fn repo(id: &str, kind: RepoKind, revision: &str) -> hf_hub::Repo {
    let t = match kind {
        RepoKind::Model => hf_hub::RepoType::Model,
        RepoKind::Dataset => hf_hub::RepoType::Dataset,
    };
    hf_hub::Repo::with_revision(id.to_string(), t, revision.to_string())
}

/// The snapshot directory of `id` at `revision` (a branch, a tag or a commit hash; default
/// `main`) in the cache `cache`, if it is there.
pub fn cached_snapshot(cache: &Path, id: &str, kind: RepoKind, revision: Option<&str>) -> Option<PathBuf> {
    let rev = revision.unwrap_or("main");
    let dir = cache.join(repo(id, kind, rev).folder_name());
    let commit = match std::fs::read_to_string(dir.join("refs").join(rev)) {
        Ok(c) => c.trim().to_string(),
        Err(_) => rev.to_string(),
    };
    let snap = dir.join("snapshots").join(&commit);
    snap.is_dir().then_some(snap)
}

/// Whether downloads are forbidden (`HF_HUB_OFFLINE` set to 1/true/yes/on).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| ["1", "true", "yes", "on"].contains(&v.to_ascii_lowercase().as_str()))
}

/// Downloads the files of `id` at `revision` that `wanted` accepts into the cache (the `hf-hub`
/// crate; skipped when there) and returns the snapshot directory.
pub fn download(
    cache: &Path,
    id: &str,
    kind: RepoKind,
    revision: Option<&str>,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<PathBuf> {
    let rev = revision.unwrap_or("main");
    let mut builder =
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf())).with_progress(false);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().context("the Hugging Face Hub client")?;
    let r = api.repo(repo(id, kind, rev));
    let info = r.info().with_context(|| {
        format!(
            "{id} (revision {rev}) is not in the Hugging Face cache {} and the Hub could not be asked",
            cache.display()
        )
    })?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).filter(|f| wanted(f)).collect();
    ensure!(!files.is_empty(), "{id} (revision {rev}) on the Hub has none of the files dpo-rs reads");
    let mut snapshot = None;
    for f in &files {
        let p = r.get(f).with_context(|| format!("downloading {f} of {id}"))?;
        snapshot = Some(
            p.ancestors().nth(f.split('/').count()).context("a downloaded file outside a snapshot")?.to_path_buf(),
        );
    }
    snapshot.context("nothing downloaded")
}

/// The files of a model repository dpo-rs reads: configuration, tokenizer, chat template,
/// safetensors weights (and their index), GGUF files.
fn model_file(f: &str) -> bool {
    let name = f.rsplit('/').next().unwrap_or(f);
    !f.contains('/')
        && (name.ends_with(".safetensors")
            || name.ends_with(".gguf")
            || name.ends_with(".json")
            || name.ends_with(".jinja")
            || name == "tokenizer.model")
}

/// A model given by path or by Hub name: `spec` itself when it exists (or is not a repository
/// id); else the snapshot of `org/name` at `revision` in the Hugging Face cache, downloaded
/// first when missing. A snapshot with one `.gguf` file and no `config.json` is that file.
/// Errors: the model is neither on disk nor in the cache and cannot be downloaded.
pub fn model_path(spec: &Path, revision: Option<&str>) -> Result<PathBuf> {
    let s = spec.to_string_lossy();
    if spec.exists() || !is_repo_id(&s) || s.ends_with(".gguf") {
        return Ok(spec.to_path_buf());
    }
    let cache = cache_dir();
    let snap = match cached_snapshot(&cache, &s, RepoKind::Model, revision) {
        Some(d) => d,
        None if offline() => bail!(
            "model {s}: no file of that name, and not in the Hugging Face cache {} (HF_HUB_OFFLINE is set)",
            cache.display()
        ),
        None => download(&cache, &s, RepoKind::Model, revision, &model_file)?,
    };
    if !snap.join("config.json").exists() {
        let ggufs: Vec<PathBuf> =
            list(&snap)?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "gguf")).collect();
        if let [one] = &ggufs[..] {
            return Ok(one.clone());
        }
        bail!(
            "model {s}: the snapshot {} has no config.json and {} .gguf files: give the file's path",
            snap.display(),
            ggufs.len()
        );
    }
    Ok(snap)
}

/// The files under `dir`, recursively, sorted by path (symbolic links followed).
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(is_repo_id("trl-lib/ultrafeedback_binarized"));
        assert!(is_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        for s in ["pairs.jsonl", "./a/b", "/a/b", "a/b/c", "a/", "../x"] {
            assert!(!is_repo_id(s), "{s}");
        }
    }
}
