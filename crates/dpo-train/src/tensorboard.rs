//! TensorBoard event files (`--report-to tensorboard`): the metrics of `metrics.jsonl` as the
//! scalars TRL's TensorBoard callback writes, readable by `tensorboard --logdir OUTPUT_DIR/runs`.
//!
//! Layout and names as transformers' `TensorBoardCallback` (via torch's `SummaryWriter`):
//! `OUTPUT_DIR/runs/<Mon DD_HH-MM-SS>_<host>/events.out.tfevents.<seconds>.<host>.<pid>.0`, one
//! directory per run (a resumed run starts a new one, as TRL's does). Tags follow transformers'
//! `rewrite_logs`: `eval_X` becomes `eval/X`, every other key `train/X`; the line's `step` is the
//! event's step; numbers (and booleans, as 0/1) become `simple_value` scalars. The run's settings
//! are the text summary `args/text_summary` at step 0, as TRL writes its `TrainingArguments`.
//!
//! The file format is TensorFlow's: a sequence of records, each `u64 length (LE) | u32 masked
//! CRC32C of the length | data | u32 masked CRC32C of the data`, the data a serialised `Event`
//! protocol buffer (`tensorflow/core/util/event.proto`, `summary.proto`); the first event holds
//! `file_version = "brain.Event:2"`. Records are appended with one write each and flushed, so a
//! crash leaves at most a torn last record, which TensorBoard skips.

use anyhow::{Context, Result};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `tensorflow.Event`: wall time (seconds since the epoch), step, and what it holds.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: a tag with a scalar, or a tensor with its plugin's metadata.
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
    #[prost(oneof = "ValueKind", tags = "2, 8")]
    value: Option<ValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// `tensorflow.SummaryMetadata` (only the plugin data).
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

/// `tensorflow.TensorProto` for a string tensor of shape `[n]`.
#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Dim {
    #[prost(int64, tag = "1")]
    size: i64,
}

/// `DT_STRING` of `tensorflow.DataType`.
const DT_STRING: i32 = 7;

/// TFRecord's masked CRC32C (Castagnoli): `rotr(crc, 15) + 0xa282ead8`, mod 2^32.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, data, its masked CRC.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The TensorBoard tag of a `metrics.jsonl` key (transformers' `rewrite_logs`).
pub fn tag(key: &str) -> String {
    match key.strip_prefix("eval_") {
        Some(k) => format!("eval/{k}"),
        None => match key.strip_prefix("test_") {
            Some(k) => format!("test/{k}"),
            None => format!("train/{key}"),
        },
    }
}

/// An event file being written.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl EventWriter {
    /// A new event file in a new run directory under `runs` (`OUTPUT_DIR/runs`), named as
    /// TRL's; `args` (the run's settings, JSON) is written as the text summary
    /// `args/text_summary`. Errors: the directory or file cannot be created or written.
    pub fn create(runs: &Path, args: &Value) -> Result<Self> {
        let host = hostname();
        let dir = runs.join(format!("{}_{host}", chrono::Local::now().format("%b%d_%H-%M-%S")));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("events.out.tfevents.{:010}.{host}.{}.0", now() as u64, std::process::id()));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let w = Self { path, file };
        w.write(&Event { wall_time: now(), step: 0, what: Some(What::FileVersion("brain.Event:2".into())) })?;
        let text = serde_json::to_string_pretty(args)?;
        let value = SummaryValue {
            tag: "args/text_summary".into(),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData { plugin_name: "text".into(), content: Vec::new() }),
            }),
            value: Some(ValueKind::Tensor(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShape { dim: vec![Dim { size: 1 }] }),
                string_val: vec![text.into_bytes()],
            })),
        };
        w.write(&Event { wall_time: now(), step: 0, what: Some(What::Summary(Summary { value: vec![value] })) })?;
        Ok(w)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, e: &Event) -> Result<()> {
        self.append(&record(&prost::Message::encode_to_vec(e)))
    }

    /// Appends `bytes` with one write.
    fn append(&self, bytes: &[u8]) -> Result<()> {
        let mut f = &self.file;
        f.write_all(bytes).and_then(|_| f.flush()).with_context(|| format!("writing {}", self.path.display()))
    }

    /// One event per numeric metric of a `metrics.jsonl` line (`step` is the events' step; other
    /// values, such as text, are skipped), as TRL's callback writes them: one scalar per event.
    pub fn write_line(&self, line: &serde_json::Map<String, Value>) -> Result<()> {
        let step = line.get("step").and_then(Value::as_i64).unwrap_or(0);
        let wall_time = now();
        let mut bytes = Vec::new();
        for (k, v) in line {
            let x = match v {
                Value::Number(n) => n.as_f64(),
                Value::Bool(b) => Some(f64::from(u8::from(*b))),
                _ => None,
            };
            let Some(x) = x.filter(|_| k != "step") else { continue };
            let value = SummaryValue { tag: tag(k), metadata: None, value: Some(ValueKind::SimpleValue(x as f32)) };
            let e = Event { wall_time, step, what: Some(What::Summary(Summary { value: vec![value] })) };
            bytes.extend(record(&prost::Message::encode_to_vec(&e)));
        }
        self.append(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_framing_are_tensorflows() {
        // CRC32C check value (RFC 3720 B.4): "123456789" -> 0xe3069283
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let r = record(b"abc");
        assert_eq!(r.len(), 3 + 16);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(u32::from_le_bytes(r[15..].try_into().unwrap()), masked_crc32c(b"abc"));
        assert_eq!(tag("eval_rewards/margins"), "eval/rewards/margins");
        assert_eq!(tag("rewards/chosen"), "train/rewards/chosen");
    }

    #[test]
    fn a_scalar_event_has_torchs_bytes() {
        // torch's SummaryWriter.add_scalar("train/loss", v, 1): 09 <f64> 10 01 2a 13 0a 11 0a 0a "train/loss" 15 <f32>
        use prost::Message;
        let v = SummaryValue { tag: "train/loss".into(), metadata: None, value: Some(ValueKind::SimpleValue(0.5)) };
        let e = Event { wall_time: 1.0, step: 1, what: Some(What::Summary(Summary { value: vec![v] })) };
        let b = e.encode_to_vec();
        let mut want = vec![0x09];
        want.extend(1f64.to_le_bytes());
        want.extend([0x10, 0x01, 0x2a, 0x13, 0x0a, 0x11, 0x0a, 0x0a]);
        want.extend(b"train/loss");
        want.push(0x15);
        want.extend(0.5f32.to_le_bytes());
        assert_eq!(b, want);
    }
}
