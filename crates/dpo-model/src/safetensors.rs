//! Safetensors files, read and written one tensor at a time (the format: an 8-byte
//! little-endian header size, a JSON header `{name: {dtype, shape, data_offsets}}`, the data).

use super::Weight;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// One tensor's entry in a safetensors header.
#[derive(serde::Deserialize)]
struct SafetensorsEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Reads the tensors of a safetensors file one at a time (as f32) and hands each to `f`. The
/// header is checked against the file: offsets inside the data, sizes that match the shapes.
pub fn for_each_safetensor(path: &Path, mut f: impl FnMut(String, Tensor) -> Result<()>) -> Result<()> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n)
        .with_context(|| format!("{}: not a safetensors file (shorter than its header size)", path.display()))?;
    let n = u64::from_le_bytes(n);
    ensure!(
        n <= size.saturating_sub(8) && n <= 100 << 20,
        "{}: header size {n} does not fit the file ({size} bytes)",
        path.display()
    );
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)?;
    let mut entries: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .with_context(|| format!("{}: the header is not a JSON object", path.display()))?;
    entries.remove("__metadata__");
    let data_start = 8 + n;
    let mut list = Vec::with_capacity(entries.len());
    for (name, v) in entries {
        let e: SafetensorsEntry = serde_json::from_value(v)
            .with_context(|| format!("{}: tensor `{name}`: not a dtype/shape/data_offsets entry", path.display()))?;
        list.push((name, e));
    }
    list.sort_by_key(|(_, e)| e.data_offsets[0]);
    for (name, e) in list {
        let width = match e.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            d => bail!("{}: tensor `{name}` has dtype {d} (f32, f16 and bf16 are read)", path.display()),
        };
        let [a, b] = e.data_offsets;
        let count = e.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        ensure!(
            a <= b
                && data_start.checked_add(b).is_some_and(|end| end <= size)
                && count.and_then(|c| c.checked_mul(width)) == Some(b - a),
            "{}: tensor `{name}`: offsets {a}..{b} and shape {:?} do not fit the file ({size} bytes)",
            path.display(),
            e.shape
        );
        // Read in chunks straight into the f32 values: one tensor's f32 memory, no second copy.
        file.seek(SeekFrom::Start(data_start + a))?;
        let mut values: Vec<f32> = Vec::with_capacity(((b - a) / width) as usize);
        let mut chunk = vec![0u8; (4 << 20) - (4 << 20) % width as usize];
        let mut left = (b - a) as usize;
        while left > 0 {
            let n = left.min(chunk.len());
            file.read_exact(&mut chunk[..n]).with_context(|| format!("{}: reading tensor `{name}`", path.display()))?;
            let c = &chunk[..n];
            match e.dtype.as_str() {
                "F32" => values.extend(c.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
                "F16" => values.extend(c.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
                _ => values.extend(c.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
            }
            left -= n;
        }
        f(name, Tensor::from_vec(values, e.shape, &Device::Cpu)?)?;
    }
    Ok(())
}

/// Every tensor of a safetensors file by name, as f32 ([`for_each_safetensor`]).
pub fn read_safetensors(path: &Path) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut out = std::collections::HashMap::new();
    for_each_safetensor(path, |name, t| {
        out.insert(name, t);
        Ok(())
    })?;
    Ok(out)
}

/// Writes `weights` as a safetensors file (the format: an 8-byte little-endian header size, a
/// JSON header of `{name: {dtype, shape, data_offsets}}` padded with spaces to a multiple of 8,
/// then the data), each tensor converted to `dtype` (F32 or BF16) only when its turn comes.
pub fn write_safetensors(path: &Path, weights: &[(String, Weight)], dtype: safetensors::Dtype) -> Result<()> {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, w) in weights {
        let len = w.dims().iter().product::<usize>() * dtype.bitsize() / 8;
        let dt = if dtype == safetensors::Dtype::BF16 { "BF16" } else { "F32" };
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dt, "shape": w.dims(), "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::to_string(&header)?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    f.write_all(&(text.len() as u64).to_le_bytes())?;
    f.write_all(text.as_bytes())?;
    for (name, w) in weights {
        let values = w
            .to_tensor()?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()
            .with_context(|| format!("converting `{name}`"))?;
        let bytes: Vec<u8> = match dtype {
            safetensors::Dtype::BF16 => values.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
            _ => values.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        };
        f.write_all(&bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}
