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

/// Where a data set comes from, besides its path or name: the split, the configuration (a Hub
/// data set's `config_name`) and the revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataSource {
    pub split: String,
    pub config: Option<String>,
    pub revision: Option<String>,
}

/// The Hugging Face hub cache directory (see the module's documentation).
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = var("HF_HUB_CACHE") {
        return d;
    }
    if let Some(h) = var("HF_HOME") {
        return h.join("hub");
    }
    let cache = var("XDG_CACHE_HOME").unwrap_or_else(|| var("HOME").unwrap_or_else(|| PathBuf::from(".")).join(".cache"));
    cache.join("huggingface").join("hub")
}

/// Whether `s` reads as a Hub repository id `org/name` (letters, digits, `-`, `_`, `.`).
pub fn is_repo_id(s: &str) -> bool {
    let ok = |p: &str| !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
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
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| ["1", "true", "yes", "on"].contains(&v.to_ascii_lowercase().as_str()))
}

/// Downloads the files of `id` at `revision` that `wanted` accepts into the cache (the `hf-hub`
/// crate; skipped when there) and returns the snapshot directory.
fn download(cache: &Path, id: &str, kind: RepoKind, revision: Option<&str>, wanted: &dyn Fn(&str) -> bool) -> Result<PathBuf> {
    let rev = revision.unwrap_or("main");
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf())).with_progress(false);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().context("the Hugging Face Hub client")?;
    let r = api.repo(repo(id, kind, rev));
    let info = r.info().with_context(|| format!("{id} (revision {rev}) is not in the Hugging Face cache {} and the Hub could not be asked", cache.display()))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).filter(|f| wanted(f)).collect();
    ensure!(!files.is_empty(), "{id} (revision {rev}) on the Hub has none of the files dpo-rs reads");
    let mut snapshot = None;
    for f in &files {
        let p = r.get(f).with_context(|| format!("downloading {f} of {id}"))?;
        snapshot = Some(p.ancestors().nth(f.split('/').count()).context("a downloaded file outside a snapshot")?.to_path_buf());
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
        None if offline() => bail!("model {s}: no file of that name, and not in the Hugging Face cache {} (HF_HUB_OFFLINE is set)", cache.display()),
        None => download(&cache, &s, RepoKind::Model, revision, &model_file)?,
    };
    if !snap.join("config.json").exists() {
        let ggufs: Vec<PathBuf> = list(&snap)?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "gguf")).collect();
        if let [one] = &ggufs[..] {
            return Ok(one.clone());
        }
        bail!("model {s}: the snapshot {} has no config.json and {} .gguf files: give the file's path", snap.display(), ggufs.len());
    }
    Ok(snap)
}

/// The files under `dir`, recursively, sorted by path (symbolic links followed).
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
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

/// Whether `name` matches the glob `pattern` (`*` any run of characters but `/`, `**` any run,
/// `?` one character).
fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p {
            [] => n.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=n.len()).any(|i| go(rest, &n[i..])),
            [b'*', rest @ ..] => (0..=n.len()).take_while(|&i| i == 0 || n[i - 1] != b'/').any(|i| go(rest, &n[i..])),
            [b'?', rest @ ..] => !n.is_empty() && go(rest, &n[1..]),
            [c, rest @ ..] => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// The data files a Hub data set's `configs:` (README YAML header) give `split` of `config`
/// (default: the one named `default`, or the only one); `None` when the README declares none.
fn configured_files(snapshot: &Path, files: &[String], config: Option<&str>, split: &str) -> Result<Option<Vec<String>>> {
    let Ok(readme) = std::fs::read_to_string(snapshot.join("README.md")) else { return Ok(None) };
    let Some(header) = readme.strip_prefix("---").and_then(|r| r.split("\n---").next()) else { return Ok(None) };
    let meta: serde_yaml_ng::Value = serde_yaml_ng::from_str(header).with_context(|| format!("{}: the YAML header", snapshot.join("README.md").display()))?;
    let Some(configs) = meta.get("configs").and_then(|c| c.as_sequence()) else { return Ok(None) };
    let name = |c: &serde_yaml_ng::Value| c.get("config_name").and_then(|n| n.as_str()).unwrap_or("default").to_string();
    let names: Vec<String> = configs.iter().map(name).collect();
    let chosen = match config {
        Some(want) => configs.iter().find(|c| name(c) == want).with_context(|| format!("data set {}: no configuration `{want}` (it has: {})", snapshot.display(), names.join(", ")))?,
        None => match configs.iter().find(|c| name(c) == "default") {
            Some(c) => c,
            None if configs.len() == 1 => &configs[0],
            None => bail!("data set {}: several configurations ({}): choose one with --data-config", snapshot.display(), names.join(", ")),
        },
    };
    let as_list = |v: &serde_yaml_ng::Value| -> Vec<String> {
        match v {
            serde_yaml_ng::Value::String(s) => vec![s.clone()],
            serde_yaml_ng::Value::Sequence(s) => s.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            _ => Vec::new(),
        }
    };
    let patterns: Vec<String> = match chosen.get("data_files") {
        Some(serde_yaml_ng::Value::Sequence(entries)) if entries.iter().all(|e| e.get("split").is_some()) => {
            let splits: Vec<&str> = entries.iter().filter_map(|e| e.get("split").and_then(|s| s.as_str())).collect();
            let e = entries
                .iter()
                .find(|e| e.get("split").and_then(|s| s.as_str()) == Some(split))
                .with_context(|| format!("data set {} ({}): no split `{split}` (it has: {})", snapshot.display(), name(chosen), splits.join(", ")))?;
            e.get("path").map(as_list).unwrap_or_default()
        }
        Some(v) if split == "train" => as_list(v),
        Some(_) => bail!("data set {} ({}): only a `train` split", snapshot.display(), name(chosen)),
        None => return Ok(None),
    };
    Ok(Some(files.iter().filter(|f| patterns.iter().any(|p| glob(p, f))).cloned().collect()))
}

/// The data files of `split` by the Hub's naming conventions: files (or directories) named
/// `split`, `split-…`, `split_…` or `split.…`, anywhere in the snapshot.
fn conventional_files(files: &[String], split: &str) -> Vec<String> {
    let named = |part: &str| part == split || [format!("{split}-"), format!("{split}_"), format!("{split}.")].iter().any(|p| part.starts_with(p.as_str()));
    files.iter().filter(|f| f.split('/').any(named)).cloned().collect()
}

/// Whether dpo-rs reads a data file of this name ([`crate::data::Format`]).
fn data_file(f: &str) -> bool {
    [".parquet", ".jsonl", ".jsonl.gz", ".json", ".json.gz", ".arrow"].iter().any(|e| f.ends_with(e))
}

/// A data set given by path or by Hub name, as the one file or directory the data readers take:
/// - an existing file: itself;
/// - a directory written by `DatasetDict.save_to_disk` (`dataset_dict.json`): its `split`
///   subdirectory; by `Dataset.save_to_disk` (`state.json`): itself;
/// - `org/name`: the data set's snapshot in the Hugging Face cache (downloaded first when
///   missing), and in it the files of `source.split` of `source.config`; several files are
///   joined into one JSON Lines file under `DPO_HOME/datasets/` (named by their content).
///
/// Errors: no such file, split or configuration (the error lists those there are).
pub fn data_path(spec: &Path, source: &DataSource) -> Result<PathBuf> {
    let s = spec.to_string_lossy();
    if spec.is_dir() {
        if spec.join("dataset_dict.json").exists() {
            let dict: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(spec.join("dataset_dict.json"))?).with_context(|| format!("{}: not JSON", spec.join("dataset_dict.json").display()))?;
            let splits: Vec<String> = dict["splits"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
            ensure!(splits.contains(&source.split), "{}: no split `{}` (it has: {})", spec.display(), source.split, splits.join(", "));
            return Ok(spec.join(&source.split));
        }
        ensure!(spec.join("state.json").exists(), "{}: a directory, but not one written by `datasets`' save_to_disk (no dataset_dict.json or state.json)", spec.display());
        return Ok(spec.to_path_buf());
    }
    // a missing `dir/file.jsonl` is a missing file, not a Hub name
    if spec.exists() || !is_repo_id(&s) || data_file(&s) {
        return Ok(spec.to_path_buf());
    }
    let cache = cache_dir();
    let snap = match cached_snapshot(&cache, &s, RepoKind::Dataset, source.revision.as_deref()) {
        Some(d) => d,
        None if offline() => bail!("data {s}: no file of that name, and not in the Hugging Face cache {} (HF_HUB_OFFLINE is set)", cache.display()),
        None => download(&cache, &s, RepoKind::Dataset, source.revision.as_deref(), &|f| data_file(f) || f == "README.md")?,
    };
    let files: Vec<String> = list(&snap)?
        .iter()
        .filter_map(|p| p.strip_prefix(&snap).ok().map(|r| r.to_string_lossy().into_owned()))
        .filter(|f| data_file(f))
        .collect();
    let chosen = match configured_files(&snap, &files, source.config.as_deref(), &source.split)? {
        Some(f) => f,
        None => {
            ensure!(source.config.is_none(), "data set {s}: its README declares no configurations, so --data-config {} cannot be chosen", source.config.as_deref().unwrap_or(""));
            conventional_files(&files, &source.split)
        }
    };
    match &chosen[..] {
        [] => bail!("data set {s} ({}): no data file for the split `{}` (files: {})", snap.display(), source.split, files.join(", ")),
        [one] => Ok(snap.join(one)),
        many => joined(&snap, many),
    }
}

/// The records of `files` (in order) as one JSON Lines file under `DPO_HOME/datasets/`, named
/// by the files' content hash; written once (atomically).
fn joined(root: &Path, files: &[String]) -> Result<PathBuf> {
    let mut h = blake3::Hasher::new();
    for f in files {
        h.update(f.as_bytes());
        h.update(crate::reference::file_hash(&root.join(f))?.as_bytes());
    }
    let path = crate::fetch::home().join("datasets").join(format!("{}.jsonl", &h.finalize().to_hex()[..32]));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(path.parent().unwrap())?;
    crate::io::write_atomic(&path, |w| {
        for f in files {
            for (_, record) in crate::data::formats::read_objects(&root.join(f))? {
                writeln!(w, "{}", serde_json::Value::Object(record))?;
            }
        }
        Ok(())
    })?;
    Ok(path)
}

/// The flags that say which revision, configuration and splits Hub names and `save_to_disk`
/// directories stand for (`dpo train`, `dpo sft`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct HubArgs {
    /// The revision (branch, tag or commit) of --model when it is a Hub name (TRL's model_revision).
    #[arg(long)]
    pub revision: Option<String>,
    /// The split of --data when it is a Hub data set or a DatasetDict save (TRL's dataset_train_split).
    #[arg(long, default_value = crate::config::defaults::DATA_SPLIT)]
    pub data_split: String,
    /// The split of --eval-data likewise (TRL's dataset_test_split).
    #[arg(long, default_value = crate::config::defaults::EVAL_DATA_SPLIT)]
    pub eval_data_split: String,
    /// The configuration (config_name) of a Hub data set (TRL's dataset_config).
    #[arg(long)]
    pub data_config: Option<String>,
    /// The revision of a Hub data set.
    #[arg(long)]
    pub data_revision: Option<String>,
}

impl HubArgs {
    /// `cfg` with its model and data sets resolved to local paths ([`model_path`],
    /// [`data_path`]). Errors: as those.
    pub fn resolve(&self, mut cfg: crate::config::TrainConfig) -> Result<crate::config::TrainConfig> {
        cfg.model = model_path(&cfg.model, self.revision.as_deref())?;
        let source = |split: &str| DataSource { split: split.to_string(), config: self.data_config.clone(), revision: self.data_revision.clone() };
        cfg.data = data_path(&cfg.data, &source(&self.data_split))?;
        if let Some(e) = &cfg.eval_data {
            cfg.eval_data = Some(data_path(e, &source(&self.eval_data_split))?);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_globs() {
        assert!(is_repo_id("trl-lib/ultrafeedback_binarized"));
        assert!(is_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        for s in ["pairs.jsonl", "./a/b", "/a/b", "a/b/c", "a/", "../x"] {
            assert!(!is_repo_id(s), "{s}");
        }
        assert!(glob("data/train-*", "data/train-00000-of-00001.parquet"));
        assert!(!glob("data/train-*", "data/test-00000-of-00001.parquet"));
        assert!(!glob("*.parquet", "data/x.parquet"));
        assert!(glob("**.parquet", "data/x.parquet"));
        let files: Vec<String> = ["data/train-0.parquet", "data/test-0.parquet", "train.jsonl", "other/x.jsonl"].map(String::from).to_vec();
        assert_eq!(conventional_files(&files, "train"), ["data/train-0.parquet", "train.jsonl"]);
    }
}
