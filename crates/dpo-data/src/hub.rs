//! Data sets by Hub name or `datasets` directory (`--data org/name`, a `save_to_disk` directory):
//! which files of a data set's snapshot make a split, found as the Hub finds them — the `configs:`
//! of the README's YAML header (`config_name`, `data_files: [{split, path}]`, paths with `*`
//! patterns), else the files named after the split (`data/train-00000-of-00001.parquet`,
//! `train.jsonl`, `train/…`). The snapshot itself comes from the Hugging Face cache, or is
//! downloaded ([`dpo_runtime::hub`]).

use anyhow::{bail, ensure, Context, Result};
use dpo_runtime::hub::{cache_dir, cached_snapshot, download, is_repo_id, list, offline, RepoKind};
use std::path::{Path, PathBuf};

/// The default split of `--data` (TRL `dataset_train_split`).
pub const DEFAULT_TRAIN_SPLIT: &str = "train";
/// The default split of `--eval-data` (TRL `dataset_test_split`).
pub const DEFAULT_EVAL_SPLIT: &str = "test";

/// Where a data set comes from, besides its path or name: the split, the configuration (a Hub
/// data set's `config_name`) and the revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataSource {
    pub split: String,
    pub config: Option<String>,
    pub revision: Option<String>,
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
fn configured_files(
    snapshot: &Path,
    files: &[String],
    config: Option<&str>,
    split: &str,
) -> Result<Option<Vec<String>>> {
    let Ok(readme) = std::fs::read_to_string(snapshot.join("README.md")) else { return Ok(None) };
    let Some(header) = readme.strip_prefix("---").and_then(|r| r.split("\n---").next()) else { return Ok(None) };
    let meta: serde_yaml_ng::Value = serde_yaml_ng::from_str(header)
        .with_context(|| format!("{}: the YAML header", snapshot.join("README.md").display()))?;
    let Some(configs) = meta.get("configs").and_then(|c| c.as_sequence()) else { return Ok(None) };
    let name =
        |c: &serde_yaml_ng::Value| c.get("config_name").and_then(|n| n.as_str()).unwrap_or("default").to_string();
    let names: Vec<String> = configs.iter().map(name).collect();
    let chosen = match config {
        Some(want) => configs.iter().find(|c| name(c) == want).with_context(|| {
            format!("data set {}: no configuration `{want}` (it has: {})", snapshot.display(), names.join(", "))
        })?,
        None => match configs.iter().find(|c| name(c) == "default") {
            Some(c) => c,
            None if configs.len() == 1 => &configs[0],
            None => bail!(
                "data set {}: several configurations ({}): choose one with --data-config",
                snapshot.display(),
                names.join(", ")
            ),
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
            let e =
                entries.iter().find(|e| e.get("split").and_then(|s| s.as_str()) == Some(split)).with_context(|| {
                    format!(
                        "data set {} ({}): no split `{split}` (it has: {})",
                        snapshot.display(),
                        name(chosen),
                        splits.join(", ")
                    )
                })?;
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
    let named = |part: &str| {
        part == split
            || [format!("{split}-"), format!("{split}_"), format!("{split}.")]
                .iter()
                .any(|p| part.starts_with(p.as_str()))
    };
    files.iter().filter(|f| f.split('/').any(named)).cloned().collect()
}

/// Whether dpo-rs reads a data file of this name ([`crate::Format`]).
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
            let dict: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(spec.join("dataset_dict.json"))?)
                    .with_context(|| format!("{}: not JSON", spec.join("dataset_dict.json").display()))?;
            let splits: Vec<String> = dict["splits"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            ensure!(
                splits.contains(&source.split),
                "{}: no split `{}` (it has: {})",
                spec.display(),
                source.split,
                splits.join(", ")
            );
            return Ok(spec.join(&source.split));
        }
        ensure!(
            spec.join("state.json").exists(),
            "{}: a directory, but not one written by `datasets`' save_to_disk (no dataset_dict.json or state.json)",
            spec.display()
        );
        return Ok(spec.to_path_buf());
    }
    // a missing `dir/file.jsonl` is a missing file, not a Hub name
    if spec.exists() || !is_repo_id(&s) || data_file(&s) {
        return Ok(spec.to_path_buf());
    }
    let cache = cache_dir();
    let snap = match cached_snapshot(&cache, &s, RepoKind::Dataset, source.revision.as_deref()) {
        Some(d) => d,
        None if offline() => bail!(
            "data {s}: no file of that name, and not in the Hugging Face cache {} (HF_HUB_OFFLINE is set)",
            cache.display()
        ),
        None => {
            download(&cache, &s, RepoKind::Dataset, source.revision.as_deref(), &|f| data_file(f) || f == "README.md")?
        }
    };
    let files: Vec<String> = list(&snap)?
        .iter()
        .filter_map(|p| p.strip_prefix(&snap).ok().map(|r| r.to_string_lossy().into_owned()))
        .filter(|f| data_file(f))
        .collect();
    let chosen = match configured_files(&snap, &files, source.config.as_deref(), &source.split)? {
        Some(f) => f,
        None => {
            ensure!(
                source.config.is_none(),
                "data set {s}: its README declares no configurations, so --data-config {} cannot be chosen",
                source.config.as_deref().unwrap_or("")
            );
            conventional_files(&files, &source.split)
        }
    };
    match &chosen[..] {
        [] => bail!(
            "data set {s} ({}): no data file for the split `{}` (files: {})",
            snap.display(),
            source.split,
            files.join(", ")
        ),
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
        h.update(dpo_runtime::io::file_hash(&root.join(f))?.as_bytes());
    }
    let path = dpo_runtime::fetch::home().join("datasets").join(format!("{}.jsonl", &h.finalize().to_hex()[..32]));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(path.parent().unwrap())?;
    dpo_runtime::io::write_atomic(&path, |w| {
        for f in files {
            for (_, record) in crate::formats::read_objects(&root.join(f))? {
                writeln!(w, "{}", serde_json::Value::Object(record))?;
            }
        }
        Ok(())
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_conventional_split_files() {
        assert!(glob("data/train-*", "data/train-00000-of-00001.parquet"));
        assert!(!glob("data/train-*", "data/test-00000-of-00001.parquet"));
        assert!(!glob("*.parquet", "data/x.parquet"));
        assert!(glob("**.parquet", "data/x.parquet"));
        let files: Vec<String> =
            ["data/train-0.parquet", "data/test-0.parquet", "train.jsonl", "other/x.jsonl"].map(String::from).to_vec();
        assert_eq!(conventional_files(&files, "train"), ["data/train-0.parquet", "train.jsonl"]);
    }
}
