//! Causal self-attention over a packed batch in which completions share their prompt.

use super::{by_dtype, cpu_slice, dispatch_float, gemm, slice_of, tensor_of, Real, SendPtr};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// A prompt and the completions that continue it, as row ranges of a packed batch.
///
/// Prompt rows attend causally to the prompt. The rows of each completion ("branch") attend to
/// the whole prompt and causally to their own completion, never to a sibling completion, and take
/// positions `prompt.len()..`: exactly the attention each `prompt + completion` sequence would get
/// alone, with the prompt computed once (the prefix-sharing layout of the issue; cf. Hydra/"shared
/// prefix" batching). A plain sequence is a group with one branch, or a prompt with no branches.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub prompt: Range<usize>,
    pub branches: Vec<Range<usize>>,
}

/// How the rows of a packed batch form attention [`Group`]s; rows not in a group are not allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionLayout {
    pub groups: Vec<Group>,
    pub rows: usize,
}

impl AttentionLayout {
    /// The rotary position of every row (`prompt` rows from 0, each branch continuing the prompt).
    pub fn positions(&self) -> Vec<u32> {
        let mut pos = vec![0u32; self.rows];
        for g in &self.groups {
            for (i, r) in g.prompt.clone().enumerate() {
                pos[r] = i as u32;
            }
            for b in &g.branches {
                for (i, r) in b.clone().enumerate() {
                    pos[r] = (g.prompt.len() + i) as u32;
                }
            }
        }
        pos
    }

    fn validate(&self) -> Result<()> {
        let mut seen = vec![false; self.rows];
        for g in &self.groups {
            for r in std::iter::once(&g.prompt).chain(&g.branches) {
                if r.end > self.rows {
                    candle_core::bail!("attention layout: range {r:?} beyond {} rows", self.rows);
                }
                for i in r.clone() {
                    if std::mem::replace(&mut seen[i], true) {
                        candle_core::bail!("attention layout: row {i} is in two ranges");
                    }
                }
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            candle_core::bail!("attention layout: row {i} is in no group");
        }
        Ok(())
    }
}

/// A run of key rows seen by a block of queries; `causal`: query `i` sees keys `0..=i` of the run.
/// `pos0`: the sequence position of the run's first key.
#[derive(Clone, Copy)]
struct KeySpan {
    start: usize,
    len: usize,
    causal: bool,
    pos0: usize,
}

/// What the backward pass reads: the forward's inputs `q`, `k`, `v`, its output `o` and the
/// output's gradient `g`.
struct Saved<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    o: &'a [T],
    g: &'a [T],
}

/// Where the backward pass writes `dq`, `dk` and `dv` (shared by the tasks, each writing its own
/// rows and columns).
#[derive(Clone, Copy)]
struct Grads<T> {
    dq: SendPtr<T>,
    dk: SendPtr<T>,
    dv: SendPtr<T>,
}

/// A task's buffers for one block: the weights `a`, their gradient `ds`, and the soft-capping's
/// derivative `dcap`.
struct Scratch<T> {
    a: Vec<T>,
    ds: Vec<T>,
    dcap: Vec<T>,
}

/// Query rows `q0..q0+nq` (sequence positions from `pos0`) and the key runs they attend to.
struct QueryBlock {
    q0: usize,
    nq: usize,
    pos0: usize,
    spans: Vec<KeySpan>,
}

fn blocks(g: &Group) -> Vec<QueryBlock> {
    let p = KeySpan { start: g.prompt.start, len: g.prompt.len(), causal: false, pos0: 0 };
    let mut out = Vec::with_capacity(1 + g.branches.len());
    if !g.prompt.is_empty() {
        out.push(QueryBlock { q0: p.start, nq: p.len, pos0: 0, spans: vec![KeySpan { causal: true, ..p }] });
    }
    for b in g.branches.iter().filter(|b| !b.is_empty()) {
        let own = KeySpan { start: b.start, len: b.len(), causal: true, pos0: p.len };
        let spans = if p.len > 0 { vec![p, own] } else { vec![own] };
        out.push(QueryBlock { q0: b.start, nq: b.len(), pos0: p.len, spans });
    }
    out
}

/// What a family changes in a layer's attention scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    /// Scores are `scale * q.k`: `head_dim^-0.5` (Vaswani et al. 2017), or Gemma 2/3's
    /// `query_pre_attn_scalar^-0.5`.
    pub scale: f64,
    /// Scores become `cap * tanh(scores / cap)` before the mask (Gemma 2's attention soft-capping).
    pub softcap: Option<f64>,
    /// Sliding-window attention (Mistral, Gemma 2/3; Beltagy et al. 2020): the query at position
    /// `i` sees the key at position `j` when `0 <= i - j < window` (transformers'
    /// `sliding_window_overlay`: `kv_idx > q_idx - sliding_window`).
    pub window: Option<usize>,
}

impl AttentionParams {
    /// Plain causal attention scaled by `head_dim^-0.5`.
    pub fn plain(head_dim: usize) -> Self {
        Self { scale: 1.0 / (head_dim as f64).sqrt(), softcap: None, window: None }
    }
}

/// Scaled dot-product attention `softmax(Q K^T / sqrt(d) + mask) V` (Vaswani et al. 2017, eq. 1)
/// with grouped-query heads (Ainslie et al. 2023: query head `h` reads key/value head
/// `h / (n_heads / n_kv_heads)`) and the mask of an [`AttentionLayout`]; the scale, soft-capping
/// and sliding window of [`AttentionParams`]. With soft-capping the backward pass multiplies the
/// score gradient by `1 - tanh^2`.
///
/// Inputs: `q` `[rows, n_heads*head_dim]`, `k`, `v` `[rows, n_kv_heads*head_dim]` (rotary already
/// applied). Output `[rows, n_heads*head_dim]`. The forward pass keeps only the log-sum-exp of each
/// query row (`[n_heads, rows]`); the backward pass recomputes the attention weights from it, as
/// FlashAttention does (Dao et al. 2022, Algorithm 2), so no `[rows, rows]` matrix outlives a block.
pub struct Attention {
    pub layout: Arc<AttentionLayout>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub params: AttentionParams,
    lse: Mutex<Vec<f64>>,
}

const OP: &str = "attention";

impl Attention {
    pub fn new(
        layout: Arc<AttentionLayout>,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        params: AttentionParams,
    ) -> Result<Self> {
        layout.validate()?;
        if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            candle_core::bail!("{OP}: {n_heads} heads are not a multiple of {n_kv_heads} key/value heads");
        }
        if params.window == Some(0) {
            candle_core::bail!("{OP}: a sliding window of 0 keys");
        }
        Ok(Self { layout, n_heads, n_kv_heads, head_dim, params, lse: Mutex::new(Vec::new()) })
    }

    fn check(&self, lq: &Layout, lk: &Layout, lv: &Layout) -> Result<()> {
        let rows = self.layout.rows;
        let want_q = [rows, self.n_heads * self.head_dim];
        let want_kv = [rows, self.n_kv_heads * self.head_dim];
        if lq.dims() != want_q || lk.dims() != want_kv || lv.dims() != want_kv {
            candle_core::bail!(
                "{OP}: q {:?}, k {:?}, v {:?} do not fit {rows} rows, {} heads, {} kv heads of {}",
                lq.dims(),
                lk.dims(),
                lv.dims(),
                self.n_heads,
                self.n_kv_heads,
                self.head_dim
            );
        }
        Ok(())
    }

    fn forward<T: Real>(&self, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
        let (nh, d, rows) = (self.n_heads, self.head_dim, self.layout.rows);
        let rep = nh / self.n_kv_heads;
        let mut out = vec![T::zero(); rows * nh * d];
        let mut lse = vec![0f64; nh * rows];
        let (po, pl) = (SendPtr(out.as_mut_ptr()), SendPtr(lse.as_mut_ptr()));
        let tasks: Vec<(usize, usize)> =
            (0..self.layout.groups.len()).flat_map(|g| (0..nh).map(move |h| (g, h))).collect();
        tasks.into_par_iter().for_each(|(g, h)| {
            let (po, pl) = (po, pl);
            let mut s = Vec::new();
            for b in blocks(&self.layout.groups[g]) {
                // SAFETY: task (g, h) writes only rows of group g in the columns of head h.
                unsafe { self.block_fwd(q, k, v, po.0, pl.0.add(h * rows), h, h / rep, &b, &mut s) };
            }
        });
        *self.lse.lock().unwrap() = lse;
        out
    }

    /// Scores of one block into `s` `[nq, nk]`, soft-capped, masked and turned into attention
    /// weights in place; returns `nk`. Writes the log-sum-exp of each row to `lse[q0 + i]` when
    /// `lse` is given, and the soft-capping's derivative `1 - tanh^2` to `dcap` when given.
    #[allow(clippy::too_many_arguments)]
    unsafe fn weights<T: Real>(
        &self,
        q: &[T],
        k: &[T],
        h: usize,
        kvh: usize,
        b: &QueryBlock,
        s: &mut Vec<T>,
        lse_out: Option<*mut f64>,
        lse_in: Option<&[f64]>,
        dcap: Option<&mut Vec<T>>,
    ) -> usize {
        let d = self.head_dim;
        let (q_rs, kv_rs) = (self.n_heads * d, self.n_kv_heads * d);
        let scale = T::from(self.params.scale).unwrap();
        let nk: usize = b.spans.iter().map(|s| s.len).sum();
        s.clear();
        s.resize(b.nq * nk, T::zero());
        let mut c = 0;
        let qp = q.as_ptr().add(b.q0 * q_rs + h * d);
        for sp in &b.spans {
            let kp = k.as_ptr().add(sp.start * kv_rs + kvh * d);
            gemm(b.nq, sp.len, d, s.as_mut_ptr().add(c), nk, 1, false, qp, q_rs, 1, kp, 1, kv_rs, scale, 1);
            c += sp.len;
        }
        self.soft_cap(s, dcap);
        for i in 0..b.nq {
            self.mask_and_normalize(&mut s[i * nk..(i + 1) * nk], b, i, lse_out, lse_in);
        }
        nk
    }

    /// Soft-capping of the scores `s` in place, `cap * tanh(s / cap)` (Gemma 2), with its
    /// derivative `1 - tanh^2` into `dcap` when given.
    fn soft_cap<T: Real>(&self, s: &mut [T], dcap: Option<&mut Vec<T>>) {
        let Some(cap) = self.params.softcap else { return };
        let cap = T::from(cap).unwrap();
        let mut dcap = dcap;
        if let Some(dc) = dcap.as_deref_mut() {
            dc.clear();
            dc.resize(s.len(), T::zero());
        }
        for (j, x) in s.iter_mut().enumerate() {
            let t = (*x / cap).tanh();
            *x = cap * t;
            if let Some(dc) = dcap.as_deref_mut() {
                dc[j] = T::one() - t * t;
            }
        }
    }

    /// Row `i` of block `b`'s scores masked (causal within a branch, the sliding window) and
    /// turned into weights in place: `exp(s - lse)`, `lse` given (`lse_in`) or computed (and then
    /// written to `lse_out[q0 + i]` when given).
    ///
    /// # Safety
    /// `lse_out`, when given, must point at one value per row of the layout.
    unsafe fn mask_and_normalize<T: Real>(
        &self,
        row: &mut [T],
        b: &QueryBlock,
        i: usize,
        lse_out: Option<*mut f64>,
        lse_in: Option<&[f64]>,
    ) {
        let qpos = b.pos0 + i;
        let mut c = 0;
        for sp in &b.spans {
            if sp.causal {
                for x in &mut row[c + i + 1..c + sp.len] {
                    *x = T::neg_infinity();
                }
            }
            // Keys at positions <= qpos - window are out of the window.
            if let Some(w) = self.params.window {
                let end = (qpos + 1).saturating_sub(w).saturating_sub(sp.pos0).min(sp.len);
                for x in &mut row[c..c + end] {
                    *x = T::neg_infinity();
                }
            }
            c += sp.len;
        }
        let lse = match lse_in {
            Some(l) => T::from(l[b.q0 + i]).unwrap(),
            None => {
                let m = row.iter().fold(T::neg_infinity(), |a, &x| num_traits::Float::max(a, x));
                let sum: f64 = row.iter().map(|&x| (x - m).exp().as_f64()).sum();
                let lse = T::from(m.as_f64() + sum.ln()).unwrap();
                if let Some(p) = lse_out {
                    *p.add(b.q0 + i) = lse.as_f64();
                }
                lse
            }
        };
        for x in row.iter_mut() {
            *x = (*x - lse).exp();
        }
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn block_fwd<T: Real>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        out: *mut T,
        lse: *mut f64,
        h: usize,
        kvh: usize,
        b: &QueryBlock,
        s: &mut Vec<T>,
    ) {
        let d = self.head_dim;
        let (q_rs, kv_rs) = (self.n_heads * d, self.n_kv_heads * d);
        let nk = self.weights(q, k, h, kvh, b, s, Some(lse), None, None);
        let mut c = 0;
        let op = out.add(b.q0 * q_rs + h * d);
        for (si, sp) in b.spans.iter().enumerate() {
            let vp = v.as_ptr().add(sp.start * kv_rs + kvh * d);
            gemm(b.nq, d, sp.len, op, q_rs, 1, si > 0, s.as_ptr().add(c), nk, 1, vp, kv_rs, 1, T::one(), 1);
            c += sp.len;
        }
    }

    #[allow(clippy::type_complexity)]
    fn backward<T: Real>(&self, q: &[T], k: &[T], v: &[T], o: &[T], g: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (nh, nkv) = (self.n_heads, self.n_kv_heads);
        let rows = self.layout.rows;
        let rep = nh / nkv;
        let lse = self.lse.lock().unwrap();
        assert_eq!(lse.len(), nh * rows, "{OP}: backward before forward");
        let mut dq = vec![T::zero(); q.len()];
        let mut dk = vec![T::zero(); k.len()];
        let mut dv = vec![T::zero(); v.len()];
        let out = Grads { dq: SendPtr(dq.as_mut_ptr()), dk: SendPtr(dk.as_mut_ptr()), dv: SendPtr(dv.as_mut_ptr()) };
        let x = Saved { q, k, v, o, g };
        let tasks: Vec<(usize, usize)> =
            (0..self.layout.groups.len()).flat_map(|g| (0..nkv).map(move |h| (g, h))).collect();
        tasks.into_par_iter().for_each(|(gi, kvh)| {
            let mut scratch = Scratch { a: Vec::new(), ds: Vec::new(), dcap: Vec::new() };
            for h in kvh * rep..(kvh + 1) * rep {
                let lse_h = &lse[h * rows..(h + 1) * rows];
                for b in blocks(&self.layout.groups[gi]) {
                    // SAFETY: task (group, kv head) writes only rows of its group, in the columns
                    // of its kv head (dk, dv) and of the query heads that read it (dq).
                    unsafe { self.block_bwd(&x, (h, kvh), &b, lse_h, &mut scratch, out) };
                }
            }
        });
        (dq, dk, dv)
    }

    /// The backward pass of query block `b` of query head `heads.0` (which reads kv head
    /// `heads.1`): the weights `A` again (from the forward's log-sum-exp `lse_h`), then
    /// `dS = A * (dA - rowsum(dO * O))` with `dA = dO V^T` (times `tanh'` under soft-capping),
    /// then the products into `out` ([`Attention::accumulate_grads`]).
    ///
    /// # Safety
    /// `out` must point at buffers of the inputs' sizes that no other task writes in the rows of
    /// this block's group and the columns of these heads.
    unsafe fn block_bwd<T: Real>(
        &self,
        x: &Saved<T>,
        heads: (usize, usize),
        b: &QueryBlock,
        lse_h: &[f64],
        buf: &mut Scratch<T>,
        out: Grads<T>,
    ) {
        let (h, kvh) = heads;
        let d = self.head_dim;
        let (q_rs, kv_rs) = (self.n_heads * d, self.n_kv_heads * d);
        let nk = self.weights(x.q, x.k, h, kvh, b, &mut buf.a, None, Some(lse_h), Some(&mut buf.dcap));
        let qo = b.q0 * q_rs + h * d;
        buf.ds.clear();
        buf.ds.resize(b.nq * nk, T::zero());
        let mut c = 0;
        for sp in &b.spans {
            let vo = x.v.as_ptr().add(sp.start * kv_rs + kvh * d);
            gemm(
                b.nq,
                sp.len,
                d,
                buf.ds.as_mut_ptr().add(c),
                nk,
                1,
                false,
                x.g.as_ptr().add(qo),
                q_rs,
                1,
                vo,
                1,
                kv_rs,
                T::one(),
                1,
            );
            c += sp.len;
        }
        let capped = self.params.softcap.is_some();
        for i in 0..b.nq {
            let r = qo + i * q_rs;
            let di: T = (0..d).map(|j| x.g[r + j] * x.o[r + j]).sum();
            for j in 0..nk {
                let s = &mut buf.ds[i * nk + j];
                *s = buf.a[i * nk + j] * (*s - di);
                if capped {
                    *s *= buf.dcap[i * nk + j];
                }
            }
        }
        self.accumulate_grads(x, heads, b, nk, buf, out);
    }

    /// `dV += A^T dO`, `dQ += scale dS K`, `dK += scale dS^T Q` for query block `b` of query
    /// head `heads.0` over each span of keys (`nk` of them in all).
    ///
    /// # Safety
    /// As [`Attention::block_bwd`].
    unsafe fn accumulate_grads<T: Real>(
        &self,
        x: &Saved<T>,
        heads: (usize, usize),
        b: &QueryBlock,
        nk: usize,
        buf: &Scratch<T>,
        out: Grads<T>,
    ) {
        let (h, kvh) = heads;
        let d = self.head_dim;
        let (q_rs, kv_rs) = (self.n_heads * d, self.n_kv_heads * d);
        let scale = T::from(self.params.scale).unwrap();
        let qo = b.q0 * q_rs + h * d;
        let (g, q) = (x.g.as_ptr().add(qo), x.q.as_ptr().add(qo));
        let mut c = 0;
        for (si, sp) in b.spans.iter().enumerate() {
            let ko = sp.start * kv_rs + kvh * d;
            let (a, ds) = (buf.a.as_ptr().add(c), buf.ds.as_ptr().add(c));
            gemm(sp.len, d, b.nq, out.dv.0.add(ko), kv_rs, 1, true, a, 1, nk, g, q_rs, 1, T::one(), 1);
            gemm(
                b.nq,
                d,
                sp.len,
                out.dq.0.add(qo),
                q_rs,
                1,
                si > 0,
                ds,
                nk,
                1,
                x.k.as_ptr().add(ko),
                kv_rs,
                1,
                scale,
                1,
            );
            gemm(sp.len, d, b.nq, out.dk.0.add(ko), kv_rs, 1, true, ds, 1, nk, q, q_rs, 1, scale, 1);
            c += sp.len;
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.check(lq, lk, lv)?;
        dispatch_float!(sq, OP, |T| {
            let o = self.forward::<T>(slice_of(sq, lq, OP)?, slice_of(sk, lk, OP)?, slice_of(sv, lv, OP)?);
            Ok((<T as WithDType>::to_cpu_storage_owned(o), lq.shape().clone()))
        })
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = by_dtype!(q.dtype(), OP, bwd_t(self, q, k, v, res, g))?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

fn bwd_t<T: Real>(
    op: &Attention,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    g: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    cpu_slice!(T, q => qs);
    cpu_slice!(T, k => ks);
    cpu_slice!(T, v => vs);
    cpu_slice!(T, o => os);
    cpu_slice!(T, g => gs);
    let (dq, dk, dv) = op.backward(qs, ks, vs, os, gs);
    Ok((tensor_of(dq, q.shape())?, tensor_of(dk, k.shape())?, tensor_of(dv, v.shape())?))
}

/// Attention of one new query row per sequence over that sequence's cached keys and values
/// (generation; no backward), with the scale, soft-capping and window of `params`. `q`
/// `[sequences, n_heads*head_dim]`; `ks[b]`, `vs[b]` `[len_b, n_kv_heads*head_dim]` include the
/// new token. Returns `[sequences, n_heads*head_dim]`.
pub fn decode_attention(
    q: &[f32],
    ks: &[&[f32]],
    vs: &[&[f32]],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    params: AttentionParams,
) -> Vec<f32> {
    let (qw, kw, rep) = (n_heads * head_dim, n_kv_heads * head_dim, n_heads / n_kv_heads);
    let scale = params.scale as f32;
    let mut out = vec![0f32; q.len()];
    out.par_chunks_mut(qw).enumerate().for_each(|(b, o)| {
        let (k, v) = (ks[b], vs[b]);
        let len = k.len() / kw;
        let mut s = vec![0f32; len];
        for h in 0..n_heads {
            let (qh, kvh) = (&q[b * qw + h * head_dim..b * qw + (h + 1) * head_dim], h / rep);
            for (t, st) in s.iter_mut().enumerate() {
                let kt = &k[t * kw + kvh * head_dim..t * kw + (kvh + 1) * head_dim];
                *st = qh.iter().zip(kt).map(|(a, b)| a * b).sum::<f32>() * scale;
                if let Some(cap) = params.softcap {
                    *st = cap as f32 * (*st / cap as f32).tanh();
                }
                // the new token is at position len - 1
                if params.window.is_some_and(|w| t + w < len) {
                    *st = f32::NEG_INFINITY;
                }
            }
            let m = s.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            let sum: f64 = s.iter().map(|&x| ((x - m).exp()) as f64).sum();
            let lse = m + sum.ln() as f32;
            let oh = &mut o[h * head_dim..(h + 1) * head_dim];
            for (t, &st) in s.iter().enumerate() {
                let w = (st - lse).exp();
                let vt = &v[t * kw + kvh * head_dim..t * kw + (kvh + 1) * head_dim];
                for (x, y) in oh.iter_mut().zip(vt) {
                    *x += w * y;
                }
            }
        }
    });
    out
}

/// Attention of `q`, `k`, `v` under `layout` as a differentiable op (see [`Attention`]).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &Arc<AttentionLayout>,
    n_heads: usize,
    n_kv_heads: usize,
    params: AttentionParams,
) -> Result<Tensor> {
    let head_dim = q.dim(1)? / n_heads;
    let op = Attention::new(layout.clone(), n_heads, n_kv_heads, head_dim, params)?;
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
// A group with one branch (`vec![10..11]`) is meant, not a range of branches.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::testutil::{check_grad, rand_t};
    use candle_core::{DType, Device};

    /// Reference: dense attention over one explicit sequence with candle ops.
    fn dense(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        nh: usize,
        nkv: usize,
        visible: &dyn Fn(usize, usize) -> bool,
    ) -> Tensor {
        let d = q.dim(1).unwrap() / nh;
        dense_with(q, k, v, nh, nkv, visible, AttentionParams::plain(d))
    }

    /// [`dense`] with a scale and soft-capping.
    fn dense_with(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        nh: usize,
        nkv: usize,
        visible: &dyn Fn(usize, usize) -> bool,
        p: AttentionParams,
    ) -> Tensor {
        let (rows, w) = q.dims2().unwrap();
        let d = w / nh;
        let mut heads = vec![];
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            let qh = q.narrow(1, h * d, d).unwrap();
            let kh = k.narrow(1, kvh * d, d).unwrap();
            let vh = v.narrow(1, kvh * d, d).unwrap();
            let s = (qh.matmul(&kh.t().unwrap()).unwrap() * p.scale).unwrap();
            let s = match p.softcap {
                Some(c) => ((s / c).unwrap().tanh().unwrap() * c).unwrap(),
                None => s,
            };
            let mask: Vec<f64> =
                (0..rows * rows).map(|x| if visible(x / rows, x % rows) { 0.0 } else { f64::NEG_INFINITY }).collect();
            let s = (s + Tensor::from_vec(mask, (rows, rows), &Device::Cpu).unwrap()).unwrap();
            let a = candle_nn::ops::softmax(&s, 1).unwrap();
            heads.push(a.matmul(&vh).unwrap());
        }
        Tensor::cat(&heads, 1).unwrap()
    }

    fn layout() -> Arc<AttentionLayout> {
        // group 0: prompt rows 0..3, branches 3..5 and 5..8; group 1: prompt 8..10, branch 10..11
        Arc::new(AttentionLayout {
            groups: vec![
                Group { prompt: 0..3, branches: vec![3..5, 5..8] },
                Group { prompt: 8..10, branches: vec![10..11] },
            ],
            rows: 11,
        })
    }

    #[test]
    fn packed_branches_equal_separate_sequences() {
        let (nh, nkv, d) = (4, 2, 3);
        let l = layout();
        let q = rand_t(&[11, nh * d], 11);
        let k = rand_t(&[11, nkv * d], 12);
        let v = rand_t(&[11, nkv * d], 13);
        let out = attention(&q, &k, &v, &l, nh, nkv, AttentionParams::plain(d)).unwrap();
        // Each prompt+branch as its own causal sequence.
        for g in &l.groups {
            for b in &g.branches {
                let idx: Vec<u32> = g.prompt.clone().chain(b.clone()).map(|r| r as u32).collect();
                let ix = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
                let want = dense(
                    &q.index_select(&ix, 0).unwrap(),
                    &k.index_select(&ix, 0).unwrap(),
                    &v.index_select(&ix, 0).unwrap(),
                    nh,
                    nkv,
                    &|i, j| j <= i,
                );
                let got = out.index_select(&ix, 0).unwrap();
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                assert!(diff < 1e-12, "{diff}");
            }
        }
        assert_eq!(l.positions(), vec![0, 1, 2, 3, 4, 3, 4, 5, 0, 1, 2]);
        assert_eq!(out.dtype(), DType::F64);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (nh, nkv, d) = (4, 2, 3);
        let l = layout();
        let inputs = [rand_t(&[11, nh * d], 14), rand_t(&[11, nkv * d], 15), rand_t(&[11, nkv * d], 16)];
        check_grad(&inputs, &|t| attention(&t[0], &t[1], &t[2], &l, nh, nkv, AttentionParams::plain(d)), 1e-6);
    }

    /// Gemma 2's attention: scale, soft-capping and a sliding window of 2 keys.
    const GEMMA2: AttentionParams = AttentionParams { scale: 0.7, softcap: Some(1.5), window: Some(2) };

    #[test]
    fn windowed_soft_capped_branches_equal_separate_sequences() {
        let (nh, nkv, d) = (4, 2, 3);
        let l = layout();
        let q = (rand_t(&[11, nh * d], 31) * 3.0).unwrap();
        let k = (rand_t(&[11, nkv * d], 32) * 3.0).unwrap();
        let v = rand_t(&[11, nkv * d], 33);
        let out = attention(&q, &k, &v, &l, nh, nkv, GEMMA2).unwrap();
        let plain = attention(&q, &k, &v, &l, nh, nkv, AttentionParams::plain(d)).unwrap();
        let mut changed = 0f64;
        for g in &l.groups {
            for b in &g.branches {
                let idx: Vec<u32> = g.prompt.clone().chain(b.clone()).map(|r| r as u32).collect();
                let ix = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
                let want = dense_with(
                    &q.index_select(&ix, 0).unwrap(),
                    &k.index_select(&ix, 0).unwrap(),
                    &v.index_select(&ix, 0).unwrap(),
                    nh,
                    nkv,
                    &|i, j| j <= i && i - j < 2,
                    GEMMA2,
                );
                let got = out.index_select(&ix, 0).unwrap();
                let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                assert!(diff < 1e-12, "{diff}");
                let p = plain.index_select(&ix, 0).unwrap();
                changed =
                    changed.max((p - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap());
            }
        }
        assert!(changed > 1e-2, "the window and cap change nothing: {changed}");
        // generation: the last row of a sequence from its cache equals the packed row
        let g = &l.groups[0];
        let rows: Vec<usize> = g.prompt.clone().chain(g.branches[1].clone()).collect();
        let row = |t: &Tensor, r: usize| t.get(r).unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        let ks: Vec<f32> = rows.iter().flat_map(|&r| row(&k, r)).collect();
        let vs: Vec<f32> = rows.iter().flat_map(|&r| row(&v, r)).collect();
        let last = *rows.last().unwrap();
        let dec = decode_attention(&row(&q, last), &[&ks], &[&vs], nh, nkv, d, GEMMA2);
        for (a, b) in dec.iter().zip(row(&out, last)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn windowed_soft_capped_gradient_matches_finite_differences() {
        let (nh, nkv, d) = (4, 2, 3);
        let l = layout();
        let inputs = [rand_t(&[11, nh * d], 34), rand_t(&[11, nkv * d], 35), rand_t(&[11, nkv * d], 36)];
        check_grad(&inputs, &|t| attention(&t[0], &t[1], &t[2], &l, nh, nkv, GEMMA2), 1e-6);
    }

    #[test]
    fn rejects_overlapping_rows() {
        let bad = AttentionLayout { groups: vec![Group { prompt: 0..2, branches: vec![1..3] }], rows: 3 };
        assert!(Attention::new(Arc::new(bad), 2, 1, 4, AttentionParams::plain(4)).is_err());
    }
}
