//! The tiled f32 products of a compact weight: convert a tile of `W` to f32 in a scratch buffer
//! that fits the L2 cache, then run the f32 GEMM (the gemm crate) on the tile. Used by the GGML
//! block formats, and by bf16 where the AVX512-BF16 micro-kernel is not available.

use super::{gemm, num_threads, raw};
use crate::Output;
use crate::SendPtr;
use rayon::prelude::*;

/// A weight matrix that can write any tile of itself as f32.
pub(crate) trait TileSource: Sync {
    /// `out_features`.
    fn rows(&self) -> usize;
    /// `in_features`.
    fn cols(&self) -> usize;
    /// Column ranges given to [`TileSource::fill`] start at multiples of this (the block size).
    fn col_align(&self) -> usize;
    /// `W[r0..r1, c0..c1]` as f32 into `out` (row-major, `(r1 - r0) x (c1 - c0)`), where `c0` is a
    /// multiple of [`TileSource::col_align`] and `c1` is one too or `cols`.
    fn fill(&self, r0: usize, r1: usize, c0: usize, c1: usize, out: &mut [f32]);
}

/// Bytes of f32 scratch per tile (about Zen 4's L2). Larger tiles mean fewer GEMM calls, each of
/// which re-packs the activations (forward) or re-reads the output (input gradient): with 256 KB
/// tiles a `2048 x 1536` activation re-packed for every 42-row tile cost 15 %; 1 MB measured best.
const TILE_BYTES: usize = 1 << 20;

/// Splits `n` items into tiles of about `target` items, at least `threads` tiles (when `n`
/// allows) and a multiple of `threads` of them so that the threads get equal shares; returns
/// the tile length.
fn tile_len(n: usize, target: usize, threads: usize) -> usize {
    let mut tiles = n.div_ceil(target.max(1)).max(threads);
    tiles = tiles.div_ceil(threads) * threads;
    n.div_ceil(tiles.min(n)).max(1)
}

/// The whole matrix in f32, row-major.
pub(crate) fn dequantize(src: &impl TileSource) -> Vec<f32> {
    let (rows, cols) = (src.rows(), src.cols());
    let mut out = vec![0f32; rows * cols];
    let tr = tile_len(rows, TILE_BYTES / (4 * cols), num_threads());
    out.par_chunks_mut(tr * cols).enumerate().for_each(|(t, o)| {
        let r0 = t * tr;
        src.fill(r0, r0 + o.len() / cols, 0, cols, o);
    });
    out
}

/// `y[m, rows] (+)= x[m, cols] · W^T`: tiles of `W` rows (output columns) in parallel, each
/// converted once and multiplied by all of `x` (single-threaded GEMM per tile).
pub(crate) fn forward(src: &impl TileSource, x: &[f32], m: usize, y: &mut [f32], output: Output) {
    let (rows, cols) = (src.rows(), src.cols());
    let tr = tile_len(rows, TILE_BYTES / (4 * cols), num_threads());
    let yp = SendPtr(y.as_mut_ptr());
    (0..rows.div_ceil(tr)).into_par_iter().for_each_init(
        || vec![0f32; tr * cols],
        |buf, t| {
            let (r0, r1) = (t * tr, ((t + 1) * tr).min(rows));
            let n = r1 - r0;
            src.fill(r0, r1, 0, cols, &mut buf[..n * cols]);
            // SAFETY: x is m x cols, the tile is n x cols (read as cols x n: strides 1, cols), and
            // this task alone writes columns r0..r1 of y (m x rows).
            unsafe {
                gemm(
                    m,
                    n,
                    cols,
                    raw(yp).add(r0),
                    rows,
                    1,
                    output.adds(),
                    x.as_ptr(),
                    cols,
                    1,
                    buf.as_ptr(),
                    1,
                    cols,
                    1.0,
                    1,
                );
            }
        },
    );
}

/// `dx[m, cols] (+)= dy[m, rows] · W`: the columns of `dx` are split between the threads (at
/// block boundaries); each thread walks down `W` a tile of rows at a time, converting only its
/// columns, and accumulates `dy[:, tile] · tile` into its columns of `dx`.
pub(crate) fn backward(src: &impl TileSource, dy: &[f32], m: usize, dx: &mut [f32], output: Output) {
    let (rows, cols, align) = (src.rows(), src.cols(), src.col_align());
    let blocks = cols.div_ceil(align);
    let parts = num_threads().min(blocks).max(1);
    let dxp = SendPtr(dx.as_mut_ptr());
    (0..parts).into_par_iter().for_each(|p| {
        let (c0, c1) = ((blocks * p / parts) * align, ((blocks * (p + 1) / parts) * align).min(cols));
        let nc = c1 - c0;
        let tr = tile_len(rows, TILE_BYTES / (4 * nc), 1);
        let mut buf = vec![0f32; tr * nc];
        for r0 in (0..rows).step_by(tr) {
            let r1 = (r0 + tr).min(rows);
            src.fill(r0, r1, c0, c1, &mut buf[..(r1 - r0) * nc]);
            // SAFETY: dy is m x rows (columns r0..r1 read), the tile is (r1 - r0) x nc, and this
            // task alone writes columns c0..c1 of dx (m x cols).
            unsafe {
                gemm(
                    m,
                    nc,
                    r1 - r0,
                    raw(dxp).add(c0),
                    cols,
                    1,
                    output.adds() || r0 > 0,
                    dy.as_ptr().add(r0),
                    rows,
                    1,
                    buf.as_ptr(),
                    nc,
                    1,
                    1.0,
                    1,
                );
            }
        }
    });
}
