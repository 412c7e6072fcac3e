//! The AVX512-BF16 GEMM `C[m, n] (+)= bf16(A)[m, k] · B[k, n]` on packed bf16 weights: the
//! forward product (`B = W^T`, straight from the packed panels) and the input gradient
//! (`B = W`, panels transposed on the fly).
//!
//! Blocking (Goto & van de Geijn 2008, "Anatomy of high-performance matrix multiplication"):
//! the `MR x 32` micro-kernel sweeps the `MC` rows of an activation block (`MC x kc` bf16
//! pairs, at most 288 KB, in L2) for one `kc x 32` weight panel (at most 48 KB, streaming from
//! L2: measured faster on Zen 4 than L1-sized panels, which make more passes over C). Each
//! activation block is rounded to bf16 right before use, so `A` is read from memory once.
//!
//! Work is split into tasks (about [`TASKS_PER_THREAD`] per thread, scheduled by rayon so that a
//! thread slowed by other jobs takes fewer): by blocks of `MC` rows when `m` is large; for
//! smaller `m`, the input gradient splits the reduction when it is long (each task sums a range
//! of `k` into its own partial output, added up in a fixed order at the end), and otherwise the
//! column groups are split, sharing activations rounded once up front. The result does not
//! depend on scheduling, only on `m`, the shape and `num_threads()`.

use super::super::raw;
use super::{lines, words, words_mut, Line, PackedBf16, GROUP, NR};
use crate::Output;
use crate::{num_threads, SendPtr};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

/// Rows of the activations per micro-tile: `MR x 32` outputs live in `2·MR` zmm accumulators
/// (24 of the 32 registers; the other 8 hold the two weight vectors and the broadcasts).
const MR: usize = 12;
/// At most this many k-pairs per block (a weight panel of `KC_MAX x 32` words is 48 KB).
const KC_MAX: usize = 384;
/// Activation rows per block.
const MC: usize = 192;
/// Bytes of transposed weight panels made at a time for the input gradient (in L2), unless the
/// weight is larger than [`STREAMED_WEIGHT`].
const PACK_BYTES: usize = 512 << 10;
/// Above this many bytes the weight comes from DRAM: the input gradient then transposes up to
/// [`STREAMED_PACK_BYTES`] of column groups of a k-block together, reading the forward panels in
/// address order (36 KB runs for 576 columns instead of 2 KB pieces), which the hardware
/// prefetcher streams (measured: the 128 x 49152 x 576 head gradient went from 170 to 183 GFLOP/s).
const STREAMED_WEIGHT: usize = 8 << 20;
const STREAMED_PACK_BYTES: usize = 2 << 20;
/// Tasks per thread: enough slack for rayon to balance threads that other jobs slow down.
const TASKS_PER_THREAD: usize = 4;

/// Which product.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// `y = x W^T`: `k` = cols, `n` = rows.
    Forward,
    /// `dx = dy W`: `k` = rows, `n` = cols.
    Backward,
}

/// The low `n` bits (`n <= 16`).
fn mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// The k-block length in pairs: `kp` split evenly into blocks of at most `KC_MAX`, rounded up to
/// a multiple of `GROUP` (forward panels are transposed 16 pairs at a time).
fn k_block(kp: usize) -> usize {
    let blocks = kp.div_ceil(KC_MAX);
    kp.div_ceil(blocks).div_ceil(GROUP) * GROUP
}

/// `y[m, rows] (+)= bf16(x)[m, cols] · W^T`, split as `strategy` says (by default as
/// [`Gemm::strategy`] picks).
///
/// # Safety
/// The CPU has avx512f, avx512bw and avx512bf16; `x` is `m x cols` and `y` is `m x rows`.
pub(super) unsafe fn forward(
    w: &PackedBf16,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    output: Output,
    strategy: Option<Strategy>,
) {
    // SAFETY: forwarded from the caller.
    unsafe { Gemm::new(w, Dir::Forward, x, m).run(y, output, strategy) }
}

/// `dx[m, cols] (+)= bf16(dy)[m, rows] · W`, split as `strategy` says.
///
/// # Safety
/// The CPU has avx512f, avx512bw and avx512bf16; `dy` is `m x rows` and `dx` is `m x cols`.
pub(super) unsafe fn backward(
    w: &PackedBf16,
    dy: &[f32],
    m: usize,
    dx: &mut [f32],
    output: Output,
    strategy: Option<Strategy>,
) {
    // SAFETY: forwarded from the caller.
    unsafe { Gemm::new(w, Dir::Backward, dy, m).run(dx, output, strategy) }
}

/// One product to compute.
struct Gemm<'a> {
    w: &'a PackedBf16,
    dir: Dir,
    /// The activations, `m x k` f32.
    a: &'a [f32],
    m: usize,
    k: usize,
    /// `⌈k/2⌉`.
    kp: usize,
    /// Columns of the output.
    n: usize,
    /// `⌈n/32⌉`.
    groups: usize,
    /// k-block length in pairs.
    kc: usize,
}

/// How the work is split into tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in super::super) enum Strategy {
    /// This many tasks (at least `⌈m / MC⌉`) over ranges of rows.
    Rows(usize),
    /// This many ranges of the reduction, each into its own partial output, times this many
    /// ranges of the column groups (input gradient).
    SplitK(usize, usize),
    /// About this many tasks over the column groups (per block of rows), `A` rounded up front.
    SplitGroups(usize),
}

/// A share of the work: output rows, k-pairs and column groups.
struct Task {
    rows: Range<usize>,
    pairs: Range<usize>,
    groups: Range<usize>,
}

/// Per-thread scratch: a rounded activation block and transposed weight panels.
struct Scratch {
    a: Vec<u32>,
    b: Vec<Line>,
}

thread_local! {
    /// Grow-only (at most `MC x KC_MAX` words and `STREAMED_PACK_BYTES`, 2.3 MB, per thread), so
    /// that repeated products do not fault in fresh pages each call.
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { a: Vec::new(), b: Vec::new() }) };
}

/// Splits `0..n` into `parts` ranges, each a multiple of `align` long except the last.
fn split(n: usize, parts: usize, align: usize) -> Vec<Range<usize>> {
    let units = n.div_ceil(align);
    let parts = parts.clamp(1, units.max(1));
    (0..parts).map(|i| ((units * i / parts) * align).min(n)..((units * (i + 1) / parts) * align).min(n)).collect()
}

impl<'a> Gemm<'a> {
    fn new(w: &'a PackedBf16, dir: Dir, a: &'a [f32], m: usize) -> Self {
        let (k, n) = match dir {
            Dir::Forward => (w.cols, w.rows),
            Dir::Backward => (w.rows, w.cols),
        };
        let kp = k.div_ceil(2);
        Self { w, dir, a, m, k, kp, n, groups: n.div_ceil(NR), kc: k_block(kp) }
    }

    /// How to split the work among `threads` threads.
    fn strategy(&self, threads: usize) -> Strategy {
        let target = if threads > 1 { threads * TASKS_PER_THREAD } else { 1 };
        let blocks = self.m.div_ceil(MC);
        if blocks * 2 >= target {
            // Equal shares (a multiple of `threads` of them): 2048 rows in 10 blocks of 192 and
            // one of 128 left one of two threads 6 blocks to the other's 5.
            Strategy::Rows(blocks.div_ceil(threads) * threads)
        } else if self.dir == Dir::Backward && self.kp >= 2 * self.kc {
            let k_parts = target.min(self.kp / self.kc);
            Strategy::SplitK(k_parts, target.div_ceil(k_parts))
        } else {
            Strategy::SplitGroups(target)
        }
    }

    /// Computes the product into `c` (`m x n`), with `strategy` or the one [`Gemm::strategy`]
    /// picks for `num_threads()`.
    ///
    /// # Safety
    /// The CPU has avx512f, avx512bw and avx512bf16; `a` is `m x k` and `c` is `m x n`.
    unsafe fn run(&self, c: &mut [f32], output: Output, strategy: Option<Strategy>) {
        let row_blocks = self.m.div_ceil(MC);
        let cp = SendPtr(c.as_mut_ptr());
        let block = |i: usize| i * MC..((i + 1) * MC).min(self.m);
        match strategy.unwrap_or_else(|| self.strategy(num_threads())) {
            Strategy::Rows(parts) => {
                // Ranges of at most MC rows (multiples of MR), each task reading its rows of A once.
                let parts = parts.max(row_blocks);
                let tasks: Vec<Task> = split(self.m, parts, MR)
                    .into_iter()
                    .map(|rows| Task { rows, pairs: 0..self.kp, groups: 0..self.groups })
                    .collect();
                // SAFETY: each task writes its own rows of c.
                for_each(&tasks, |t| unsafe { self.task(t, None, cp, output) });
            }
            Strategy::SplitK(k_parts, group_parts) => {
                // Ranges of k (times ranges of column groups); the tasks of k-range i > 0 sum
                // into partial output i - 1.
                let mut tasks = Vec::new();
                for (i, pairs) in split(self.kp, k_parts, self.kc).into_iter().enumerate() {
                    for groups in split(self.groups, group_parts, 1) {
                        tasks.push((i, Task { rows: 0..self.m, pairs: pairs.clone(), groups }));
                    }
                }
                let len = self.m * self.n;
                let parts = tasks.last().map_or(1, |t| t.0 + 1);
                let mut partial = vec![0f32; len * (parts - 1)];
                let pp = SendPtr(partial.as_mut_ptr());
                let run = |(i, t): &(usize, Task)| {
                    // SAFETY: the tasks of k-range 0 write their columns of c, those of range
                    // i > 0 their columns of partial buffer i - 1 (len floats each).
                    unsafe {
                        if *i == 0 {
                            self.task(t, None, cp, output)
                        } else {
                            self.task(t, None, SendPtr(raw(pp).add((i - 1) * len)), Output::Overwrite)
                        }
                    }
                };
                if num_threads() > 1 {
                    tasks.par_iter().for_each(run);
                } else {
                    tasks.iter().for_each(run);
                }
                c.par_chunks_mut(1 << 12).enumerate().for_each(|(j, cj)| {
                    for part in partial.chunks_exact(len) {
                        for (o, &p) in cj.iter_mut().zip(&part[j << 12..]) {
                            *o += p;
                        }
                    }
                });
            }
            Strategy::SplitGroups(parts) => {
                // Column groups split, sharing A rounded once.
                let mut a = vec![0u32; self.m * self.kp];
                // SAFETY: the CPU has avx512f and avx512bf16 (the caller's guarantee); a is m x kp.
                unsafe { round_rows(self.a, self.k, &mut a) };
                let mut tasks = Vec::new();
                for i in 0..row_blocks {
                    for groups in split(self.groups, parts.div_ceil(row_blocks), 1) {
                        tasks.push(Task { rows: block(i), pairs: 0..self.kp, groups });
                    }
                }
                // SAFETY: each task writes its own rows and columns of c; a covers m x kp.
                for_each(&tasks, |t| unsafe { self.task(t, Some(&a), cp, output) });
            }
        }
    }

    /// One task into `c` (`m x n`, row stride `n`), loading `c` first when `accumulate`;
    /// `rounded` is `A` already rounded (`m x kp` words), or `None` to round it block by block.
    ///
    /// # Safety
    /// As for [`Gemm::run`]; no other task writes the rows and columns of `c` this task covers.
    unsafe fn task(&self, t: &Task, rounded: Option<&[u32]>, c: SendPtr<f32>, output: Output) {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let Scratch { a: abuf, b: bbuf } = &mut *s;
            if rounded.is_none() && abuf.len() < MC * self.kc {
                abuf.resize(MC * self.kc, 0);
            }
            let pack_bytes = if self.w.bytes() > STREAMED_WEIGHT { STREAMED_PACK_BYTES } else { PACK_BYTES };
            let chunk_groups = (pack_bytes / (self.kc * NR * 4)).max(1);
            if self.dir == Dir::Backward && bbuf.len() * 16 < chunk_groups * self.kc * NR {
                *bbuf = lines(chunk_groups * self.kc * NR);
            }
            let wd = words(&self.w.data);
            let panel_words = self.w.kpad * NR;
            for pc in t.pairs.clone().step_by(self.kc) {
                let kc = self.kc.min(t.pairs.end - pc);
                let load = output.adds() || pc > t.pairs.start;
                for ic in t.rows.clone().step_by(MC) {
                    let mc = MC.min(t.rows.end - ic);
                    let (ap, lda) = match rounded {
                        Some(a) => (a[ic * self.kp + pc..].as_ptr(), self.kp),
                        None => {
                            let cols = 2 * pc..(2 * (pc + kc)).min(self.k);
                            for (i, row) in abuf[..mc * kc].chunks_exact_mut(kc).enumerate() {
                                let src = &self.a[(ic + i) * self.k..(ic + i + 1) * self.k];
                                // SAFETY: the CPU has avx512f and avx512bf16; the source is the
                                // f32 columns of pairs pc..pc+kc (fewer at the end of a row).
                                unsafe { round_row(&src[cols.clone()], row) };
                            }
                            (abuf.as_ptr(), kc)
                        }
                    };
                    for g0 in t.groups.clone().step_by(chunk_groups) {
                        let chunk = g0..(g0 + chunk_groups).min(t.groups.end);
                        if self.dir == Dir::Backward {
                            let b = words_mut(bbuf);
                            let panels = pc / GROUP..(pc + kc).div_ceil(GROUP);
                            // 16x16 blocks in the order of their source addresses.
                            for p in panels {
                                for (gi, g) in chunk.clone().enumerate() {
                                    // SAFETY: forward panel p (< panels, as 2(pc + kc) <= 2 kp <= 32
                                    // panels), pairs 16g..16g+16 (16g < kpad), i.e. 512 aligned
                                    // words, is inside wd; the 16 destination rows (p·16 - pc < kc)
                                    // are inside group gi's kc rows of the buffer.
                                    unsafe {
                                        transpose_group(
                                            wd.as_ptr().add(p * panel_words + g * GROUP * NR),
                                            b.as_mut_ptr().add((gi * self.kc + p * GROUP - pc) * NR),
                                        )
                                    };
                                }
                            }
                        }
                        for (gi, g) in chunk.enumerate() {
                            let bp = match self.dir {
                                Dir::Forward => wd[g * panel_words + pc * NR..].as_ptr(),
                                Dir::Backward => words(bbuf)[gi * self.kc * NR..].as_ptr(),
                            };
                            // SAFETY: A rows ic..ic+mc (kc pairs from ap, stride lda) and the kc
                            // panel rows at bp exist; c rows ic..ic+mc, columns 32g..32g+ncols
                            // belong to this task.
                            unsafe {
                                panel(
                                    kc,
                                    ap,
                                    lda,
                                    mc,
                                    bp,
                                    c.0.add(ic * self.n + g * NR),
                                    self.n,
                                    NR.min(self.n - g * NR),
                                    load,
                                )
                            };
                        }
                    }
                }
            }
        })
    }
}

/// Runs `f` on every task: on the rayon pool when `num_threads() > 1`, else in turn here.
fn for_each(tasks: &[Task], f: impl Fn(&Task) + Sync + Send) {
    if num_threads() > 1 && tasks.len() > 1 {
        tasks.par_iter().for_each(f);
    } else {
        tasks.iter().for_each(f);
    }
}

/// Rounds rows of `x` (`m x k`, f32) to bf16 pairs `out` (`m x ⌈k/2⌉` words), rows in parallel.
///
/// # Safety
/// The CPU has avx512f and avx512bf16.
unsafe fn round_rows(x: &[f32], k: usize, out: &mut [u32]) {
    let kp = k.div_ceil(2);
    out.par_chunks_mut(kp * 16).zip(x.par_chunks(k * 16)).for_each(|(o, x)| {
        for (o, x) in o.chunks_exact_mut(kp).zip(x.chunks_exact(k)) {
            // SAFETY: the CPU has avx512f and avx512bf16 (the caller's guarantee).
            unsafe { round_row(x, o) };
        }
    });
}

/// `dst[j] = bf16(src[2j]) | bf16(src[2j+1]) << 16` for `j < ⌈src.len()/2⌉` (the high half of
/// the last word is 0 when the length is odd), rounding to nearest even (`vcvtne2ps2bf16`).
#[target_feature(enable = "avx512f,avx512bf16")]
fn round_row(src: &[f32], dst: &mut [u32]) {
    let k = src.len();
    debug_assert!(dst.len() >= k.div_ceil(2));
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    // SAFETY: every access is inside src (k floats) and dst (⌈k/2⌉ words): full vectors while
    // i + 32 <= k, masked ones for the tail.
    unsafe {
        while i + 32 <= k {
            let v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s.add(i + 16)), _mm512_loadu_ps(s.add(i)));
            _mm512_storeu_si512(d.add(i / 2) as *mut __m512i, std::mem::transmute::<__m512bh, __m512i>(v));
            i += 32;
        }
        if i < k {
            let n = k - i;
            let lo = _mm512_maskz_loadu_ps(mask(n), s.add(i));
            let hi = _mm512_maskz_loadu_ps(mask(n.saturating_sub(16)), s.add(i + 16));
            let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi32(d.add(i / 2) as *mut i32, mask(n.div_ceil(2)), v);
        }
    }
}

/// `C[R x 32] (+)= A[R x 2kc] · B[2kc x 32]`, columns masked by `(m0, m1)`.
///
/// `a`: R rows of bf16 pairs, row stride `lda` words; `b`: `kc` rows of 32 words (64-byte
/// aligned); `c`: R rows of f32, stride `ldc`. Loads C first when `load`.
///
/// # Safety
/// The CPU has avx512f and avx512bf16; the pointers cover what the strides describe for the
/// unmasked columns.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const R: usize>(
    kc: usize,
    a: *const u32,
    lda: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    m0: __mmask16,
    m1: __mmask16,
    load: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    if load {
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: row r of C, masked to its columns.
            unsafe {
                row[0] = _mm512_maskz_loadu_ps(m0, c.add(r * ldc));
                row[1] = _mm512_maskz_loadu_ps(m1, c.add(r * ldc + 16));
            }
        }
    }
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc {
        // SAFETY: bp is a 64-byte aligned row of 32 words of B; ap + r·lda is inside row r of A.
        unsafe {
            let b0 = std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(bp as *const __m512i));
            let b1 = std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(bp.add(16) as *const __m512i));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*ap.add(r * lda) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], b0, av);
                row[1] = _mm512_dpbf16_ps(row[1], b1, av);
            }
            bp = bp.add(NR);
            ap = ap.add(1);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: row r of C, masked to its columns.
        unsafe {
            _mm512_mask_storeu_ps(c.add(r * ldc), m0, row[0]);
            _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, row[1]);
        }
    }
}

/// `C[mc x ncols] (+)= A[mc x 2kc] · B[2kc x ncols]` for one panel of B (`ncols <= 32`),
/// `MR` rows at a time.
///
/// # Safety
/// As for [`micro`], for `mc` rows of A and C.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn panel(
    kc: usize,
    a: *const u32,
    lda: usize,
    mc: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    load: bool,
) {
    let (m0, m1) = (mask(ncols), mask(ncols.saturating_sub(16)));
    let mut i = 0;
    // SAFETY: rows i..i+R of A and C are inside the mc rows the caller covers.
    unsafe {
        while i + MR <= mc {
            micro::<MR>(kc, a.add(i * lda), lda, b, c.add(i * ldc), ldc, m0, m1, load);
            i += MR;
        }
        let (a, c) = (a.add(i * lda), c.add(i * ldc));
        match mc - i {
            0 => {}
            1 => micro::<1>(kc, a, lda, b, c, ldc, m0, m1, load),
            2 => micro::<2>(kc, a, lda, b, c, ldc, m0, m1, load),
            3 => micro::<3>(kc, a, lda, b, c, ldc, m0, m1, load),
            4 => micro::<4>(kc, a, lda, b, c, ldc, m0, m1, load),
            5 => micro::<5>(kc, a, lda, b, c, ldc, m0, m1, load),
            6 => micro::<6>(kc, a, lda, b, c, ldc, m0, m1, load),
            7 => micro::<7>(kc, a, lda, b, c, ldc, m0, m1, load),
            8 => micro::<8>(kc, a, lda, b, c, ldc, m0, m1, load),
            9 => micro::<9>(kc, a, lda, b, c, ldc, m0, m1, load),
            10 => micro::<10>(kc, a, lda, b, c, ldc, m0, m1, load),
            _ => micro::<11>(kc, a, lda, b, c, ldc, m0, m1, load),
        }
    }
}

/// Transposes a 8x8 matrix of u64 held as 8 rows: three rounds of swapping the off-diagonal
/// blocks (4x4, 2x2, 1x1).
#[target_feature(enable = "avx512f")]
fn transpose8(r: [__m512i; 8]) -> [__m512i; 8] {
    let mut s = r;
    for i in 0..4 {
        s[i] = _mm512_shuffle_i64x2::<0x44>(r[i], r[i + 4]);
        s[i + 4] = _mm512_shuffle_i64x2::<0xee>(r[i], r[i + 4]);
    }
    let lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
    let hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    let mut u = s;
    for i in [0, 1, 4, 5] {
        u[i] = _mm512_permutex2var_epi64(s[i], lo, s[i + 2]);
        u[i + 2] = _mm512_permutex2var_epi64(s[i], hi, s[i + 2]);
    }
    let mut v = u;
    for i in [0, 2, 4, 6] {
        v[i] = _mm512_unpacklo_epi64(u[i], u[i + 1]);
        v[i + 1] = _mm512_unpackhi_epi64(u[i], u[i + 1]);
    }
    v
}

/// Input-gradient panel rows from a forward panel: `src` is 16 k-pair rows of 32 words
/// (lanes = 32 rows of W, i.e. 16 row-pair u64s `W[2i..2i+2, 2j..2j+2]`), `dst` gets 16
/// row-pair rows of 32 words (lanes = the 32 columns `2j, 2j+1`, words `(W[2i, c], W[2i+1, c])`).
///
/// # Safety
/// The CPU has avx512f and avx512bw; `src` and `dst` are 64-byte aligned and cover 512 words.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn transpose_group(src: *const u32, dst: *mut u32) {
    let mut x = [[_mm512_setzero_si512(); 2]; 16];
    for (j, row) in x.iter_mut().enumerate() {
        // SAFETY: row j of src, two aligned vectors.
        unsafe {
            row[0] = _mm512_load_si512(src.add(j * NR) as *const __m512i);
            row[1] = _mm512_load_si512(src.add(j * NR + 16) as *const __m512i);
        }
    }
    // Inside each u64 (bf16 lanes W[2i,c], W[2i,c+1], W[2i+1,c], W[2i+1,c+1]): swap the middle
    // two, giving (W[2i,c], W[2i+1,c]), (W[2i,c+1], W[2i+1,c+1]).
    let swap = _mm512_set_epi64(
        0x0f0e_0b0a_0d0c_0908,
        0x0706_0302_0504_0100,
        0x0f0e_0b0a_0d0c_0908,
        0x0706_0302_0504_0100,
        0x0f0e_0b0a_0d0c_0908,
        0x0706_0302_0504_0100,
        0x0f0e_0b0a_0d0c_0908,
        0x0706_0302_0504_0100,
    );
    // Block (h, g): rows 8g.. of x, half h (row pairs 8h..), become rows 8h.. of dst, half g.
    for (h, g) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let t = transpose8(std::array::from_fn(|j| x[8 * g + j][h]));
        for (i, v) in t.into_iter().enumerate() {
            // SAFETY: row 8h + i of dst, half g: an aligned vector inside the 512 words.
            unsafe {
                _mm512_store_si512(dst.add((8 * h + i) * NR + 16 * g) as *mut __m512i, _mm512_shuffle_epi8(v, swap))
            };
        }
    }
}

/// The micro-kernel alone on L1-resident data, in GFLOP/s (for tuning).
#[cfg(test)]
pub(in super::super) fn micro_peak_for_test(kc: usize, reps: usize) -> f64 {
    let a = vec![0x3f80_3f80u32; MR * kc];
    let b = lines(kc * NR);
    let mut c = vec![0f32; MR * NR];
    let t = std::time::Instant::now();
    for _ in 0..reps {
        // SAFETY: tests call this only where simd_available(); a is MR x kc, b kc x 32, c MR x 32.
        unsafe { micro::<MR>(kc, a.as_ptr(), kc, words(&b).as_ptr(), c.as_mut_ptr(), NR, 0xffff, 0xffff, true) };
    }
    let s = t.elapsed().as_secs_f64();
    std::hint::black_box(&c);
    (2 * MR * NR * 2 * kc * reps) as f64 / s / 1e9
}

/// [`transpose_group`] on slices (tests).
#[cfg(test)]
pub(in super::super) fn transpose_group_for_test(src: &[u32], dst: &mut [u32]) {
    let (mut s, mut d) = (lines(512), lines(512));
    words_mut(&mut s).copy_from_slice(&src[..512]);
    // SAFETY: the tests run this only where simd_available(); both buffers are aligned 512 words.
    unsafe { transpose_group(words(&s).as_ptr(), words_mut(&mut d).as_mut_ptr()) };
    dst[..512].copy_from_slice(words(&d));
}
