//! File helpers: compressed input, and writes that never leave a half-written file or directory.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// A buffered reader over `path`, gunzipped when the name ends in `.gz`.
pub fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(f)))
    } else {
        Box::new(BufReader::new(f))
    })
}

/// The longest line of a text file read, bytes: a longer one (a corrupt file, a gzip bomb) is
/// refused instead of being held in memory.
pub const MAX_LINE_BYTES: usize = 64 << 20;
/// The largest whole JSON document read (a `.json` list of records), bytes.
pub const MAX_JSON_BYTES: u64 = 2 << 30;

/// The lines of `reader` without their line ends, as `BufRead::lines` gives them, but each at
/// most [`MAX_LINE_BYTES`] long (else an `InvalidData` error naming the bound).
pub fn bounded_lines(mut reader: impl BufRead) -> impl Iterator<Item = std::io::Result<String>> {
    use std::io::{Error, ErrorKind, Read};
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut buf = Vec::new();
        match reader.by_ref().take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut buf) {
            Err(e) => {
                done = true;
                return Some(Err(e));
            }
            Ok(0) => return None,
            Ok(_) => {}
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        } else if buf.len() > MAX_LINE_BYTES {
            done = true;
            return Some(Err(Error::new(
                ErrorKind::InvalidData,
                format!("a line longer than {} MiB", MAX_LINE_BYTES >> 20),
            )));
        }
        Some(
            String::from_utf8(buf)
                .map_err(|_| Error::new(ErrorKind::InvalidData, "stream did not contain valid UTF-8")),
        )
    })
}

/// A sibling path of `path` for temporary content: `.NAME.tmp-PID-N`.
fn sibling_tmp(path: &Path, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Writes `path` through a temporary file in the same directory, then renames it into place: a
/// reader sees the old file or the whole new one, never a part.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = sibling_tmp(path, "tmp");
    let result = (|| {
        let mut f = std::io::BufWriter::new(File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
        write(&mut f)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes one compact JSON line per row, in order, through [`write_atomic`].
pub fn write_jsonl_atomic<T: serde::Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> Result<()> {
    write_atomic(path, |w| {
        for r in rows {
            serde_json::to_writer(&mut *w, &r)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Fills a new directory through `fill(tmp_dir)`, flushes its files to disk, then renames it to
/// `dir` (replacing an older `dir` only once the new one is complete) and flushes the parent
/// directory. A crash, a kill or a full disk leaves either the old directory or the new one.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = sibling_tmp(dir, "tmp");
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    if let Err(e) = fill(&tmp).and_then(|()| sync_dir_and_files(&tmp)) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!("writing {}", dir.display())));
    }
    if dir.exists() {
        let old = sibling_tmp(dir, "old");
        fs::rename(dir, &old)?;
        fs::rename(&tmp, dir)?;
        fs::remove_dir_all(&old)?;
    } else {
        fs::rename(&tmp, dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    }
    File::open(parent).and_then(|d| d.sync_all()).with_context(|| format!("flushing {}", parent.display()))
}

/// Removes `dir` by first renaming it to a hidden sibling, so that a crash mid-removal never
/// leaves a partial directory under its name.
pub fn remove_dir_atomic(dir: &Path) -> Result<()> {
    let old = sibling_tmp(dir, "old");
    fs::rename(dir, &old).with_context(|| format!("removing {}", dir.display()))?;
    fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))
}

/// `fsync` of every file directly in `dir`, then of `dir` itself.
fn sync_dir_and_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            File::open(&path).and_then(|f| f.sync_all()).with_context(|| format!("flushing {}", path.display()))?;
        }
    }
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("flushing {}", dir.display()))
}

/// Whether `name` is one of the temporary siblings [`write_atomic`] and [`write_dir_atomic`]
/// leave behind when killed (`.NAME.tmp-PID-N`, `.NAME.old-PID-N`).
pub fn is_leftover_tmp(name: &str) -> bool {
    name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-"))
}

/// Peak resident set size of this process in bytes (`VmHWM`), if the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A content hash of a file, hex; of a directory (a `datasets` save), of its files' names and
/// contents.
pub fn file_hash(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    if path.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .map(|e| Ok(e?.file_name()))
            .collect::<Result<_>>()?;
        names.sort();
        for n in names {
            h.update(n.as_encoded_bytes());
            h.update(file_hash(&path.join(&n))?.as_bytes());
        }
    } else {
        h.update_reader(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)?;
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Reads an f64 that JSON may hold as `null`: serde_json writes a NaN or an infinity as `null`
/// (a confidence interval of one sample, a metric a run did not log), and this reads it back as
/// NaN. For `#[serde(deserialize_with = "f64_or_nan")]`.
pub fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_written_as_null_reads_back_as_nan() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct S {
            #[serde(deserialize_with = "f64_or_nan")]
            x: f64,
        }
        let text = serde_json::to_string(&S { x: f64::NAN }).unwrap();
        assert_eq!(text, r#"{"x":null}"#);
        assert!(serde_json::from_str::<S>(&text).unwrap().x.is_nan());
        assert_eq!(serde_json::from_str::<S>(r#"{"x":0.5}"#).unwrap().x, 0.5);
    }

    #[test]
    fn failed_writes_leave_the_old_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        write_atomic(&p, |w| Ok(w.write_all(b"old")?)).unwrap();
        let r = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            anyhow::bail!("crash")
        });
        assert!(r.is_err());
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        let dir = d.path().join("ckpt");
        write_dir_atomic(&dir, |t| Ok(fs::write(t.join("x"), "1")?)).unwrap();
        assert!(write_dir_atomic(&dir, |t| {
            fs::write(t.join("x"), "2")?;
            anyhow::bail!("crash")
        })
        .is_err());
        assert_eq!(fs::read_to_string(dir.join("x")).unwrap(), "1");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2, "no temporary left behind");
    }
}
