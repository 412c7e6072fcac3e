#!/usr/bin/env python3
"""The serial fraction of a run, from a perf profile: how much of the wall time one thread works alone.

    perf record -F 1999 -o run.data -- dpo bench ...
    perf script -i run.data -F tid,time,ip,sym > run.txt
    scripts/serial_fraction.py run.txt --threads 2 [--timed S | --from T0 --to T1] [--top 25]

perf's cpu-clock event samples every thread that is on a CPU `F` times per second, so the samples
of a window of `dt` seconds count the threads at work in it: `busy = samples / (F * dt)`. Samples
in a worker's idle loop (rayon's sleep and yield, sched_yield, candle's barrier spin) are not
work. A window with `busy` threads of work out of `T` is counted as `s = (T - busy) / (T - 1)` of
its time serial (one thread at work, the others waiting) and the rest parallel, which is Amdahl's
split: over the run, `serial share = sum(s * dt) / sum(dt)` of wall time. `--from`/`--to` (perf
timestamps, seconds) restrict it to a range; `--timed S` to the S seconds that end with the last
sample in a gemm micro-kernel (a `dpo bench` run's timed steps: S = its seconds/step x steps; the
save after them runs no matrix product).

Prints the serial share of wall time, the utilisation (CPU time / (wall x T)), the Amdahl
projection of the step's speed-up for 16, 32 and 64 cores, and the functions that ran in the serial
windows (where the work left to parallelise is).
"""
import argparse
import collections
import json
import re
import sys

IDLE = re.compile(
    r"rayon_core::sleep|rayon_core::registry::WorkerThread::wait_until|sched_yield|yield_now|"
    r"spin_loop|BarrierGuard|candle_core::utils::BarrierPool|futex|__schedule|finish_task_switch|"
    r"crossbeam_epoch|std::thread::park|pthread_cond|do_idle|poll_idle"
)


def read_samples(path):
    """(time, tid, symbol) per sample line of `perf script -F tid,time,ip,sym`."""
    out = []
    with open(path) as f:
        for line in f:
            m = re.match(r"\s*(\d+)\s+([\d.]+):\s+[0-9a-f]+\s*(.*)", line)
            if m:
                out.append((float(m.group(2)), int(m.group(1)), m.group(3).strip() or "[unknown]"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("perf_script")
    ap.add_argument("--threads", type=int, required=True, help="worker threads T of the run")
    ap.add_argument("--freq", type=float, default=1999.0, help="perf record -F")
    ap.add_argument("--window-ms", type=float, default=5.0)
    ap.add_argument("--from", dest="t0", type=float)
    ap.add_argument("--to", dest="t1", type=float)
    ap.add_argument("--timed", type=float, help="seconds ending at the last gemm micro-kernel sample")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json-out")
    a = ap.parse_args()
    samples = read_samples(a.perf_script)
    if a.timed:
        a.t1 = max(t for t, _, sym in samples if "microkernel" in sym)
        a.t0 = a.t1 - a.timed
    samples = [s for s in samples if (a.t0 is None or s[0] >= a.t0) and (a.t1 is None or s[0] <= a.t1)]
    if not samples:
        sys.exit("no samples in the range")
    t0 = a.t0 if a.t0 is not None else samples[0][0]
    t1 = a.t1 if a.t1 is not None else samples[-1][0]
    dt = a.window_ms / 1000.0
    n = max(1, int((t1 - t0) / dt + 0.999))
    work = [0] * n
    by_window = collections.defaultdict(collections.Counter)
    for t, _tid, sym in samples:
        if IDLE.search(sym):
            continue
        w = min(n - 1, int((t - t0) / dt))
        work[w] += 1
        by_window[w][sym] += 1
    T = a.threads
    serial_s = 0.0
    serial_syms = collections.Counter()
    for w in range(n):
        busy = min(T, work[w] / (a.freq * dt))
        s = 1.0 if T == 1 else min(1.0, max(0.0, (T - busy) / (T - 1)))
        serial_s += s * dt
        if s > 0.5:
            serial_syms.update(by_window[w])
    wall = n * dt
    share = serial_s / wall
    cpu = sum(work) / a.freq
    # Amdahl: the serial time stays, the parallel work (in one-thread seconds) divides by N.
    serial_work, parallel_work = serial_s, (wall - serial_s) * T
    f = serial_work / (serial_work + parallel_work)
    proj = {N: 1.0 / (f + (1.0 - f) / N) for N in (T, 16, 32, 64)}
    res = {
        "wall_seconds": wall,
        "threads": T,
        "serial_share_of_wall": share,
        "utilisation": cpu / (wall * T),
        "serial_fraction_of_work": f,
        "amdahl_speedup": {str(k): v for k, v in proj.items()},
    }
    print(f"wall {wall:.2f} s, {T} threads: serial share of wall {100 * share:.1f} %, utilisation {res['utilisation']:.3f}")
    print(f"serial fraction of the work (one-thread seconds) {100 * f:.2f} %")
    print("Amdahl speed-up over one core: " + ", ".join(f"{k} cores x{v:.1f}" for k, v in proj.items()))
    total = sum(serial_syms.values()) or 1
    print(f"functions in the serial windows (share of their samples):")
    for sym, c in serial_syms.most_common(a.top):
        print(f"  {100 * c / total:5.1f} %  {sym[:110]}")
    if a.json_out:
        json.dump(res, open(a.json_out, "w"), indent=1)


if __name__ == "__main__":
    main()
