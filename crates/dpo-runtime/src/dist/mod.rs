//! Data parallelism over processes: the ranks of a job, who computes what, and the collectives
//! that combine their results.
//!
//! One process is a job of one rank ([`Single`]). `mpirun -np N dpo ...` with a binary built with
//! the cargo feature `mpi` makes N ranks of one job over the system's MPI (`dist::mpi`); the binary
//! installs that world once ([`install`]) and the library asks [`world`]. Every rank runs the
//! same program on the same inputs; work is divided by a deterministic rule ([`balance`]) that
//! every rank computes alike, so no rank ever tells another what to do, and the results are
//! combined by collectives that every rank calls in the same order: a sum of gradients
//! ([`all_reduce_tensors`]), the gathering of per-unit results in input order ([`map_units`]),
//! rank 0's view of a shared file ([`broadcast`]). Only rank 0 writes files.
//!
//! Collectives are called from the main thread only (MPI's "funneled" threading level): the
//! kernels' worker threads never communicate.

#[cfg(feature = "mpi")]
pub mod mpi;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The collectives of a job of `size` ranks. Every rank calls each collective in the same order
/// (a rank that does not, or fails first, must end the job with [`Collective::abort`]).
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of ranks of the job.
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place; every rank ends with the same values.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// [`Collective::all_reduce_sum_f32`] for f64.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Every rank's `mine`, on every rank, by rank (the lengths may differ).
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Rank `r`'s `mine` into `out[displs[r]..displs[r] + counts[r]]` on every rank
    /// (`counts[rank] == mine.len()`; `out` at least as long as the last part's end).
    fn all_gather_f32_into(&self, mine: &[f32], out: &mut [f32], counts: &[usize], displs: &[usize]) -> Result<()>;
    /// Rank 0's `buf`, on every rank (other ranks' `buf` is ignored).
    fn broadcast_bytes(&self, buf: Vec<u8>) -> Result<Vec<u8>>;
    /// Ends every rank of the job now with exit status `code` (after this rank printed why).
    fn abort(&self, code: i32) -> !;
}

/// The job of one process.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
    fn all_gather_f32_into(&self, mine: &[f32], out: &mut [f32], _: &[usize], displs: &[usize]) -> Result<()> {
        out[displs[0]..displs[0] + mine.len()].copy_from_slice(mine);
        Ok(())
    }
    fn broadcast_bytes(&self, buf: Vec<u8>) -> Result<Vec<u8>> {
        Ok(buf)
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

static WORLD: OnceLock<Box<dyn Collective>> = OnceLock::new();

/// Makes `world` the job of this process (once, before any other call of this module).
/// Errors: a world was already installed or used.
pub fn install(world: Box<dyn Collective>) -> Result<()> {
    WORLD.set(world).map_err(|_| anyhow::anyhow!("the process's world of ranks is already set"))
}

/// The job this process belongs to ([`Single`] unless one was installed).
pub fn world() -> &'static dyn Collective {
    WORLD.get_or_init(|| Box::new(Single)).as_ref()
}

/// Whether this process writes the job's files and shows its progress: rank 0.
pub fn is_main() -> bool {
    world().rank() == 0
}

/// Payload bytes this rank has sent into collectives and the seconds it spent in them, since the
/// process started ([`traffic`]).
static BYTES: AtomicU64 = AtomicU64::new(0);
static NANOS: AtomicU64 = AtomicU64::new(0);

/// (bytes, seconds) this rank has put into collectives so far: the payload of each call (an
/// all-reduce of `n` f32 counts `4n` bytes; what the MPI library moves on the wire depends on its
/// algorithm: a ring all-reduce sends `2 (N - 1) / N` times the payload per rank) and the wall
/// time spent inside them (waiting for slower ranks included).
pub fn traffic() -> (u64, f64) {
    (BYTES.load(Ordering::Relaxed), NANOS.load(Ordering::Relaxed) as f64 * 1e-9)
}

fn count<T>(bytes: usize, t0: Instant, r: T) -> T {
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    NANOS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    r
}

/// Deterministic longest-processing-time split of units of work with `costs` (tokens) over
/// `ranks`: units in decreasing cost (ties: lower index first) go each to the rank with the least
/// cost so far (ties: lower rank). Returns each rank's unit indices, ascending. Every rank
/// computes the same split; the most loaded rank carries at most 4/3 of the optimum (Graham 1969).
pub fn balance(costs: &[usize], ranks: usize) -> Vec<Vec<usize>> {
    let ranks = ranks.max(1);
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0usize; ranks];
    let mut out = vec![Vec::new(); ranks];
    for u in order {
        let r = (0..ranks).min_by_key(|&r| (load[r], r)).unwrap();
        load[r] += costs[u];
        out[r].push(u);
    }
    out.iter_mut().for_each(|v| v.sort_unstable());
    out
}

/// Every rank's `mine`, by rank (serialised with bincode).
pub fn all_gather<T: Serialize + DeserializeOwned>(mine: &T) -> Result<Vec<T>> {
    let w = world();
    if w.size() == 1 {
        // no copy through bytes for a job of one
        return Ok(vec![bincode::deserialize(&bincode::serialize(mine)?)?]);
    }
    let bytes = bincode::serialize(mine).context("encoding a collective's payload")?;
    let t0 = Instant::now();
    let parts = count(bytes.len(), t0, w.all_gather_bytes(&bytes))?;
    parts
        .iter()
        .enumerate()
        .map(|(r, b)| bincode::deserialize(b).with_context(|| format!("decoding rank {r}'s payload")))
        .collect()
}

/// Rank 0's `value` on every rank (`value` is only evaluated on rank 0).
pub fn broadcast<T: Serialize + DeserializeOwned>(value: impl FnOnce() -> Result<T>) -> Result<T> {
    let w = world();
    if w.size() == 1 {
        return value();
    }
    let bytes = if w.rank() == 0 { bincode::serialize(&value()?)? } else { Vec::new() };
    let t0 = Instant::now();
    let n = bytes.len();
    let bytes = count(n, t0, w.broadcast_bytes(bytes))?;
    bincode::deserialize(&bytes).context("decoding rank 0's broadcast")
}

/// Units of work with `costs` (tokens), divided among the ranks ([`balance`]): `compute` gets
/// this rank's unit indices (ascending) and returns one result per unit; every rank gets every
/// unit's result, in unit order. With one rank, `compute` gets every unit.
pub fn map_units<T: Serialize + DeserializeOwned>(
    costs: &[usize],
    compute: impl FnOnce(&[usize]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let w = world();
    if w.size() == 1 {
        let all: Vec<usize> = (0..costs.len()).collect();
        return compute(&all);
    }
    let shares = balance(costs, w.size());
    let mine = &shares[w.rank()];
    let results = compute(mine)?;
    ensure!(results.len() == mine.len(), "{} results for {} units", results.len(), mine.len());
    let gathered = all_gather(&results)?;
    let mut out: Vec<Option<T>> = (0..costs.len()).map(|_| None).collect();
    for (share, results) in shares.iter().zip(gathered) {
        ensure!(share.len() == results.len(), "a rank returned {} results for {} units", results.len(), share.len());
        for (&u, r) in share.iter().zip(results) {
            out[u] = Some(r);
        }
    }
    Ok(out.into_iter().map(Option::unwrap).collect())
}

/// Floats per all-reduce call: gradients go in buckets of 64 MiB, so the flat buffer never holds
/// more than one bucket beside the gradients.
pub const BUCKET_FLOATS: usize = 16 << 20;

/// The element-wise sum over ranks of each tensor of `tensors` (f32 or f64, any shapes; the same
/// list on every rank), as new contiguous tensors: the tensors are laid end to end in flat
/// buffers of at most [`BUCKET_FLOATS`] values, one all-reduce per buffer. With one rank the
/// tensors come back as they are.
pub fn all_reduce_tensors(tensors: Vec<Tensor>) -> Result<Vec<Tensor>> {
    let w = world();
    if w.size() == 1 {
        return Ok(tensors);
    }
    let mut out: Vec<Option<Tensor>> = (0..tensors.len()).map(|_| None).collect();
    for dtype in [DType::F32, DType::F64] {
        let mut bucket: Vec<usize> = Vec::new();
        let mut filled = 0;
        let of_dtype: Vec<usize> = (0..tensors.len()).filter(|&i| tensors[i].dtype() == dtype).collect();
        for (k, &i) in of_dtype.iter().enumerate() {
            bucket.push(i);
            filled += tensors[i].elem_count();
            let last = k + 1 == of_dtype.len();
            if filled >= BUCKET_FLOATS || last {
                match dtype {
                    DType::F32 => reduce_bucket::<f32>(&tensors, &bucket, &mut out, |b| w.all_reduce_sum_f32(b))?,
                    _ => reduce_bucket::<f64>(&tensors, &bucket, &mut out, |b| w.all_reduce_sum_f64(b))?,
                }
                bucket.clear();
                filled = 0;
            }
        }
    }
    for (t, o) in tensors.iter().zip(&out) {
        if o.is_none() {
            bail!("all-reduce: tensors of dtype {:?} are not supported", t.dtype());
        }
    }
    Ok(out.into_iter().map(Option::unwrap).collect())
}

fn reduce_bucket<T: candle_core::WithDType>(
    tensors: &[Tensor],
    bucket: &[usize],
    out: &mut [Option<Tensor>],
    reduce: impl FnOnce(&mut [T]) -> Result<()>,
) -> Result<()> {
    let n: usize = bucket.iter().map(|&i| tensors[i].elem_count()).sum();
    let mut flat: Vec<T> = Vec::with_capacity(n);
    for &i in bucket {
        flat.extend(tensors[i].flatten_all()?.to_vec1::<T>()?);
    }
    let t0 = Instant::now();
    count(n * std::mem::size_of::<T>(), t0, reduce(&mut flat))?;
    let mut at = 0;
    for &i in bucket {
        let len = tensors[i].elem_count();
        out[i] = Some(Tensor::from_slice(&flat[at..at + len], tensors[i].dims(), &candle_core::Device::Cpu)?);
        at += len;
    }
    Ok(())
}

/// Rank `r`'s `mine` into `out[displs[r]..][..counts[r]]` on every rank (an all-gather of
/// variable-length f32 slices; ZeRO's exchange of updated parameters).
pub fn all_gather_f32(mine: &[f32], out: &mut [f32], counts: &[usize], displs: &[usize]) -> Result<()> {
    let t0 = Instant::now();
    count(4 * mine.len(), t0, world().all_gather_f32_into(mine, out, counts, displs))
}

/// Element-wise sum of `values` over the ranks (small vectors: metrics, counts).
pub fn all_reduce_f64(values: &mut [f64]) -> Result<()> {
    let t0 = Instant::now();
    count(8 * values.len(), t0, world().all_reduce_sum_f64(values))
}

/// Checks that every rank holds the same `what` (a hash of its inputs, its weights): an error
/// naming the first rank that differs from rank 0.
pub fn check_agree(what: &str, value: &str) -> Result<()> {
    let all = all_gather(&value.to_string())?;
    for (r, v) in all.iter().enumerate().skip(1) {
        ensure!(*v == all[0], "rank {r} has another {what} than rank 0 ({v} vs {}): every rank must run the same command on the same files", all[0]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_is_deterministic_complete_and_balanced() {
        let costs = [5, 9, 1, 7, 3, 3, 8, 2];
        let s = balance(&costs, 3);
        let mut all: Vec<usize> = s.concat();
        all.sort_unstable();
        assert_eq!(all, (0..costs.len()).collect::<Vec<_>>());
        // LPT: 9, 8, 7 open the three ranks; 5 -> rank 2 (7); 3 -> rank 1 (8); 3 -> rank 0 (9); 2 -> rank 1; 1 -> rank 0
        assert_eq!(s, vec![vec![1, 2, 5], vec![4, 6, 7], vec![0, 3]]);
        let loads: Vec<usize> = s.iter().map(|v| v.iter().map(|&u| costs[u]).sum()).collect();
        assert_eq!(loads, vec![13, 13, 12]);
        assert_eq!(s, balance(&costs, 3));
        assert_eq!(balance(&costs, 1), vec![(0..costs.len()).collect::<Vec<_>>()]);
        // more ranks than units: some get nothing
        assert_eq!(balance(&[4, 4], 3), vec![vec![0], vec![1], vec![]]);
    }

    #[test]
    fn one_rank_maps_every_unit_and_reduces_to_itself() {
        let got = map_units(&[3, 1, 2], |mine| Ok(mine.iter().map(|&u| u * 10).collect())).unwrap();
        assert_eq!(got, vec![0, 10, 20]);
        let t = Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu).unwrap();
        let r = all_reduce_tensors(vec![t.clone()]).unwrap();
        assert_eq!(r[0].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        check_agree("input", "abc").unwrap();
    }
}
