//! The job's ranks over MPI (the `mpi` crate, rsmpi, over the system's MPI library: Open MPI,
//! MPICH, a vendor MPI). `mpirun -np N dpo ...` or Slurm's `srun --mpi=pmix dpo ...` starts the
//! ranks; [`init`] joins them.

use super::Collective;
use anyhow::{ensure, Context, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

/// MPI's world communicator.
struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
}

// SAFETY: MPI is initialised at the "funneled" level and every call is made from the main thread
// (the module's contract: kernels' worker threads never communicate); the communicator handle is
// only read.
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

/// Keeps MPI initialised; dropping it finalises MPI (drop it last, after every collective).
pub struct Guard(#[allow(dead_code)] Universe);

fn count(n: usize, what: &str) -> Result<Count> {
    Count::try_from(n).ok().with_context(|| format!("{what}: {n} elements exceed one MPI message (2^31 - 1)"))
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        count(buf.len(), "all-reduce")?;
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        count(buf.len(), "all-reduce")?;
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let n = count(mine.len(), "all-gather")?;
        let mut lens: Vec<Count> = vec![0; self.size];
        self.world.all_gather_into(&n, &mut lens[..]);
        let total: usize = lens.iter().map(|&l| l as usize).sum();
        count(total, "all-gather")?;
        let displs: Vec<Count> = lens.iter().scan(0, |a, &l| Some(std::mem::replace(a, *a + l))).collect();
        let mut buf = vec![0u8; total];
        {
            let mut part = PartitionMut::new(&mut buf[..], &lens[..], &displs[..]);
            self.world.all_gather_varcount_into(mine, &mut part);
        }
        Ok(lens.iter().zip(&displs).map(|(&l, &d)| buf[d as usize..(d + l) as usize].to_vec()).collect())
    }
    fn all_gather_f32_into(&self, mine: &[f32], out: &mut [f32], counts: &[usize], displs: &[usize]) -> Result<()> {
        ensure!(
            counts.len() == self.size && displs.len() == self.size && counts[self.rank] == mine.len(),
            "all-gather: bad partition"
        );
        let c: Vec<Count> = counts.iter().map(|&c| count(c, "all-gather")).collect::<Result<_>>()?;
        let d: Vec<Count> = displs.iter().map(|&d| count(d, "all-gather")).collect::<Result<_>>()?;
        let end = displs.iter().zip(counts).map(|(d, c)| d + c).max().unwrap_or(0);
        ensure!(out.len() >= end, "all-gather: output of {} for {end} values", out.len());
        let mut part = PartitionMut::new(out, &c[..], &d[..]);
        self.world.all_gather_varcount_into(mine, &mut part);
        Ok(())
    }
    fn broadcast_bytes(&self, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        let root = self.world.process_at_rank(0);
        let mut n = count(buf.len(), "broadcast")?;
        root.broadcast_into(&mut n);
        buf.resize(n as usize, 0);
        root.broadcast_into(&mut buf[..]);
        Ok(buf)
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// Joins the job started by `mpirun`/`srun` (a process started alone is a job of one) and makes
/// it the library's world ([`super::install`]). Returns the guard that finalises MPI when dropped.
/// Errors: MPI was already initialised, or cannot provide the "funneled" threading level.
pub fn init() -> Result<Guard> {
    let (universe, provided) =
        mpi::initialize_with_threading(mpi::Threading::Funneled).context("MPI is already initialised")?;
    ensure!(
        provided >= mpi::Threading::Funneled,
        "the MPI library provides threading level {provided:?}, dpo needs Funneled"
    );
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    super::install(Box::new(Mpi { world, rank, size }))?;
    Ok(Guard(universe))
}
