//! How busy this process's threads are while something runs: the CPU time of each thread listed
//! in Linux's `/proc/self/task`, read from its CPU-time clock every few milliseconds by a thread of
//! its own ([`BusyMeter`]). The figures of `dpo bench`'s scaling line: utilisation (CPU time /
//! (wall time x threads)) and the serial share (wall time with one thread at work).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The sampling interval: short beside a kernel call (tens of milliseconds), long beside the cost
/// of one sample (listing `/proc/self/task` and one clock read per thread, tens of µs).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(2);

/// What a [`BusyMeter`] measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Busy {
    /// Worker threads `T` the work may use.
    pub threads: usize,
    /// Wall time measured (seconds).
    pub wall_seconds: f64,
    /// CPU time of the process's threads in that time, the meter's own excluded (seconds).
    pub cpu_seconds: f64,
    /// Wall time during which the work kept only one thread busy (seconds): each interval with
    /// `b` threads' worth of CPU time counts `(T - b) / (T - 1)` of its length, Amdahl's split of
    /// it into a serial and a parallel part (all of it when `T` is 1).
    pub serial_seconds: f64,
}

impl Busy {
    /// CPU time / (wall time x threads): 1 when every thread worked all the time.
    pub fn utilisation(&self) -> f64 {
        self.cpu_seconds / (self.wall_seconds * self.threads as f64).max(f64::MIN_POSITIVE)
    }

    /// The share of wall time with one thread at work.
    pub fn serial_share(&self) -> f64 {
        self.serial_seconds / self.wall_seconds.max(f64::MIN_POSITIVE)
    }

    /// The serial share of the work in one-thread seconds (Amdahl's `s`): the serial time stays
    /// serial, the rest ran on `T` threads.
    pub fn serial_fraction(&self) -> f64 {
        let parallel = (self.wall_seconds - self.serial_seconds).max(0.0) * self.threads as f64;
        self.serial_seconds / (self.serial_seconds + parallel).max(f64::MIN_POSITIVE)
    }

    /// Amdahl's law (Amdahl 1967): the speed-up over one core on `cores` cores, `1 / (s + (1 -
    /// s) / cores)` with `s` = [`Busy::serial_fraction`].
    pub fn amdahl_speedup(&self, cores: usize) -> f64 {
        let s = self.serial_fraction();
        1.0 / (s + (1.0 - s) / cores.max(1) as f64)
    }
}

/// Samples the process's threads' CPU time from a thread of its own until [`BusyMeter::stop`].
/// A thread that spins while waiting (a work-stealing pool's short spin before it sleeps) counts as
/// busy, so the serial share it reports is a lower bound; `scripts/serial_fraction.py` tells
/// spinning from work in a perf profile.
pub struct BusyMeter {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Busy>,
}

impl BusyMeter {
    /// Starts measuring, for work that may use `threads` threads. `None` where the per-thread
    /// times cannot be read (not Linux, or no `/proc`).
    pub fn start(threads: usize) -> Option<Self> {
        task_cpu_ns(None)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("busy-meter".into())
            .spawn(move || sample_until(&flag, threads.max(1)))
            .ok()?;
        Some(Self { stop, handle })
    }

    /// Stops measuring and returns what was measured.
    pub fn stop(self) -> Busy {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

fn sample_until(stop: &AtomicBool, threads: usize) -> Busy {
    let me = own_tid();
    let t = threads as f64;
    let mut busy = Busy { threads, ..Busy::default() };
    let (mut last_time, mut last_cpu) = (Instant::now(), task_cpu_ns(me).unwrap_or(0));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(SAMPLE_INTERVAL);
        let (now, cpu) = (Instant::now(), task_cpu_ns(me).unwrap_or(last_cpu));
        let dt = now.duration_since(last_time).as_secs_f64();
        // A thread that ended since the last sample takes its time with it: never below zero.
        let used = cpu.saturating_sub(last_cpu) as f64 * 1e-9;
        let b = (used / dt).min(t);
        let serial = if threads == 1 { 1.0 } else { ((t - b) / (t - 1.0)).clamp(0.0, 1.0) };
        busy.wall_seconds += dt;
        busy.cpu_seconds += used.min(dt * t);
        busy.serial_seconds += serial * dt;
        (last_time, last_cpu) = (now, cpu);
    }
    busy
}

/// This thread's id (`/proc/thread-self` names it), to leave the meter's own time out.
fn own_tid() -> Option<u64> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// The summed CPU time (ns) of this process's threads, `skip` left out; `None` without `/proc`.
/// Each thread's time is read from its CPU-time clock (`clock_gettime` on the clock id Linux
/// derives from a thread id, `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`), which brings a running
/// thread's time up to date; `/proc/.../schedstat` lags for a thread that stays on its CPU.
fn task_cpu_ns(skip: Option<u64>) -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else { continue };
        if Some(tid) == skip {
            continue;
        }
        // A thread may end between the listing and the read: it then counts nothing.
        total += thread_cpu_ns(tid).unwrap_or(0);
    }
    Some(total)
}

#[cfg(target_os = "linux")]
fn thread_cpu_ns(tid: u64) -> Option<u64> {
    let clock = ((!(tid as libc::clockid_t)) << 3) | 6;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; an invalid clock id only returns an error.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_ns(_tid: u64) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amdahl_split_of_intervals() {
        // 10 s on 2 threads, 3 s of them with one thread at work: 3 s serial, 14 s of parallel work.
        let b = Busy { threads: 2, wall_seconds: 10.0, cpu_seconds: 17.0, serial_seconds: 3.0 };
        assert!((b.utilisation() - 0.85).abs() < 1e-12);
        assert!((b.serial_share() - 0.3).abs() < 1e-12);
        assert!((b.serial_fraction() - 3.0 / 17.0).abs() < 1e-12);
        let s = 3.0 / 17.0;
        assert!((b.amdahl_speedup(16) - 1.0 / (s + (1.0 - s) / 16.0)).abs() < 1e-12);
        assert!((b.amdahl_speedup(1) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_busy_thread_is_counted_and_the_meter_is_not() {
        if task_cpu_ns(None).is_none() {
            return; // no /proc here
        }
        // 8 threads allowed, one at work: mostly serial, even with other tests running beside it.
        let meter = BusyMeter::start(8).expect("a meter on Linux");
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let b = meter.stop();
        assert!(b.wall_seconds > 0.25, "{b:?}");
        assert!(b.cpu_seconds > 0.6 * b.wall_seconds, "{b:?}");
        assert!(b.serial_share() > 0.5 && b.serial_share() <= 1.0, "{b:?}");
        assert!(b.utilisation() < 0.5, "{b:?}");
    }
}
