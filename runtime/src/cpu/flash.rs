//! Tiled ("flash") causal attention on the CPU: the result of the materialised attention of
//! `crate::ops::attention`, computed without ever holding a [T, T] matrix.
//!
//! What it computes, per (batch*head) and query i, with s_ij = q_i . k_j / sqrt(hd):
//!   out_i = sum_{j <= i} softmax_j(s_ij) v_j,    lse_i = ln sum_{j <= i} exp(s_ij)
//!
//! Layout: q, k, v, dout, out, dq, dk, dv are contiguous row-major [b_h, T, hd] f32 slices
//! (b_h = B * H, the two leading dims of [B, H, T, hd] flattened); lse is [b_h, T]. These are
//! raw-slice kernels like `gemm`: dtype, device and shape checks belong to the op that will wrap
//! them (`ops::attention::flash_attention_fwd` and `_bwd`).
//!
//! The forward: online softmax (Milakov and Gimelshein 2018; Dao et al. 2022, FlashAttention).
//! The keys are visited in blocks of `block_k`. For each query we keep a running max m, a running
//! sum l = sum_j exp(s_ij - m) and an accumulator acc = sum_j exp(s_ij - m) v_j over the keys seen
//! so far. When a block brings a larger max m', every term exp(s - m) already summed must become
//! exp(s - m'), which is the same term times exp(m - m'): so l and acc are multiplied by that one
//! factor. This is an identity, not an approximation; once every key is seen, acc / l is exactly
//! softmax(s) v and m + ln l is exactly lse, up to f32 rounding (and in a different order of
//! summation from the reference, which is why the tests compare with a tolerance). Subtracting
//! the running max keeps every exponent <= 0, so nothing overflows.
//!
//! Work split: one rayon task per (batch*head, block of `block_q` queries). Each task walks its
//! key blocks in phases:
//!   1. load tiles: on the CPU a block of K or V rows is already a contiguous slice, so "loading"
//!      is slicing; nothing is copied.
//!   2. scores: s = q k^T * scale for the [block_q, block_k] tile, -inf where the key is after
//!      the query (causal mask).
//!   3. online softmax: raise m, rescale l and acc by exp(m_old - m_new), turn s into exp(s - m).
//!   4. accumulate: acc += p v_tile.
//!   5. write back (after the last block): out = acc / l, lse = m + ln l.
//!
//! Causality also skips work: a key block that starts after the block's last query is masked for
//! every query in it, so the walk stops at the diagonal block.
//!
//! Memory: per task, one [block_q, block_k] tile of scores (reused for the probabilities) plus
//! block_q values of m and l; the accumulator is the task's own block of `out`. The backward adds
//! a second tile (dS) and D [b_h, T]. Nothing grows as T^2.
//!
//! The backward recomputes the probabilities tile by tile from q, k and the saved lse
//! (p_ij = exp(s_ij - lse_i), the softmax itself), so it needs no [T, T] matrix either. Its
//! formulas are those of `attention_bwd`, with D_i = rowsum(dP * P)_i rewritten as dout_i . out_i
//! (since dP_ij = dout_i . v_j and sum_j P_ij v_j = out_i), which costs one dot per row instead
//! of a pass over a row of dP.
//!
//! Determinism: every output row is written by exactly one task, and each task sums in a fixed
//! order, so the result does not depend on the number of threads (it does depend on the block
//! sizes, which fix the order of summation).
//!
//! Test reference: the materialised `attention_fwd` / `attention_bwd` of `ops/attention.rs`, at
//! every block size pair of the tests below.
//!
//! Known shortfall: no performance work yet (no benchmark, no SIMD beyond what the compiler does
//! for `math::dot`, scalar loops for p v and the gradient updates). It is a correct CPU
//! reference for the tiling that a GPU kernel will use, not yet a fast CPU kernel.

use super::gemm::{gemm, MatRef, Parallelism};
use super::{math, simd};
use rayon::prelude::*;

/// Queries per task. A [BLOCK_Q, BLOCK_K] f32 score tile is 16 KiB; with hd = 64 the query
/// block, the K and V tiles and the output block are 16 KiB each too: about 80 KiB in all, which
/// stays in a core's L2 (256 KiB and up on current x86), so each key block is read from memory
/// once per query block and reused from cache 64 times.
pub const BLOCK_Q: usize = 64;
/// Keys per tile; see `BLOCK_Q` for the cache budget.
pub const BLOCK_K: usize = 64;

/// The forward: out and the log-sum-exp of each query's scaled, masked scores (the backward's
/// saved statistic). Overwrites nothing: both outputs are fresh.
///
/// Shapes: q, k, v [b_h, T, hd] -> out [b_h, T, hd], lse [b_h, T]
#[allow(clippy::too_many_arguments)] // the kernel's own list: inputs, then sizes
pub fn flash_fwd(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b_h: usize,
    t: usize,
    hd: usize,
    block_q: usize,
    block_k: usize,
) -> (Vec<f32>, Vec<f32>) {
    let sizes = Sizes::checked("flash_fwd", b_h, t, hd, block_q, block_k);
    for (name, x) in [("q", q), ("k", k), ("v", v)] {
        sizes.check_rows("flash_fwd", name, x);
    }
    let mut out = vec![0.0f32; b_h * t * hd];
    let mut lse = vec![0.0f32; b_h * t];
    if out.is_empty() {
        return (out, lse);
    }
    out.par_chunks_mut(t * hd)
        .zip(lse.par_chunks_mut(t))
        .enumerate()
        .for_each(|(h, (out_h, lse_h))| {
            let head = Head::new(q, k, v, h, t, hd);
            out_h
                .par_chunks_mut(block_q * hd)
                .zip(lse_h.par_chunks_mut(block_q))
                .enumerate()
                .for_each(|(qb, (out_b, lse_b))| {
                    fwd_query_block(&head, qb * block_q, block_k, out_b, lse_b)
                });
        });
    (out, lse)
}

/// The backward of `flash_fwd`, one forward line at a time (S = scaled scores, P = softmax(S)):
///   out = P v          ->  dv = P^T dout,  dP = dout v^T
///   P = softmax(S)     ->  dS = P * (dP - D),  D_i = rowsum(dP * P)_i = dout_i . out_i
///   S = q k^T * scale  ->  dq = dS k * scale,  dk = dS^T q * scale
/// P is recomputed tile by tile as exp(S - lse). Returns fresh gradients (overwrites nothing).
///
/// Every task owns the rows it writes, so no two threads write the same row and nothing needs
/// locks, atomics or per-thread partial sums. Two schedules do that (`BwdSchedule`):
/// - per head, one task per (batch*head) walking every tile once: 5 tile products per tile
///   (q k^T and dout v^T to recompute P and dP, then the three gradient products);
/// - two passes, for few heads: pass 1 per (head, key block) writes dk and dv, pass 2 per
///   (head, query block) writes dq. More tasks, so a batch of one still fills the cores, at the
///   price of recomputing P and dP in both passes: 7 tile products per tile.
///
/// The choice depends on b_h only, never on the thread count, so results stay independent of it.
///
/// Shapes: dout, q, k, v, out [b_h, T, hd], lse [b_h, T] -> dq, dk, dv [b_h, T, hd]
#[allow(clippy::too_many_arguments)] // the kernel's own list: inputs, then sizes
pub fn flash_bwd(
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    b_h: usize,
    t: usize,
    hd: usize,
    block_q: usize,
    block_k: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let schedule = BwdSchedule::for_heads(b_h);
    let inputs = BwdInputs {
        dout,
        q,
        k,
        v,
        out,
        lse,
    };
    flash_bwd_scheduled(schedule, inputs, b_h, t, hd, block_q, block_k)
}

/// The backward's slices, as `flash_bwd` takes them.
pub struct BwdInputs<'a> {
    pub dout: &'a [f32],
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub out: &'a [f32],
    pub lse: &'a [f32],
}

/// `flash_bwd` with the schedule chosen by the caller: the tests and the benchmark compare the
/// two. They sum in different orders, so they agree to f32 rounding, not bit for bit.
///
/// Shapes: as `flash_bwd`
pub fn flash_bwd_scheduled(
    schedule: BwdSchedule,
    inputs: BwdInputs,
    b_h: usize,
    t: usize,
    hd: usize,
    block_q: usize,
    block_k: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let BwdInputs {
        dout,
        q,
        k,
        v,
        out,
        lse,
    } = inputs;
    let sizes = Sizes::checked("flash_bwd", b_h, t, hd, block_q, block_k);
    for (name, x) in [("dout", dout), ("q", q), ("k", k), ("v", v), ("out", out)] {
        sizes.check_rows("flash_bwd", name, x);
    }
    assert_eq!(lse.len(), b_h * t, "flash_bwd: lse must be [b_h, T]");
    let n = b_h * t * hd;
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    if n == 0 {
        return (dq, dk, dv);
    }
    // D_i = dout_i . out_i, first: every tile of row i needs it
    let dsum: Vec<f32> = dout
        .par_chunks(hd)
        .zip(out.par_chunks(hd))
        .map(|(g, o)| math::dot(g, o))
        .collect();
    let saved_of = |h: usize| Saved::new(dout, lse, &dsum, h, t, hd);

    if schedule == BwdSchedule::PerHead {
        dq.par_chunks_mut(t * hd)
            .zip(dk.par_chunks_mut(t * hd))
            .zip(dv.par_chunks_mut(t * hd))
            .enumerate()
            .for_each(|(h, ((dq_h, dk_h), dv_h))| {
                let (head, saved) = (Head::new(q, k, v, h, t, hd), saved_of(h));
                let sizes = (block_q, block_k);
                bwd_head(&head, &saved, sizes, dq_h, dk_h, dv_h)
            });
        return (dq, dk, dv);
    }

    // pass 1: dk, dv, one task per (head, key block)
    dk.par_chunks_mut(t * hd)
        .zip(dv.par_chunks_mut(t * hd))
        .enumerate()
        .for_each(|(h, (dk_h, dv_h))| {
            let (head, saved) = (Head::new(q, k, v, h, t, hd), saved_of(h));
            dk_h.par_chunks_mut(block_k * hd)
                .zip(dv_h.par_chunks_mut(block_k * hd))
                .enumerate()
                .for_each(|(kb, (dk_b, dv_b))| {
                    bwd_key_block(&head, &saved, kb * block_k, block_q, dk_b, dv_b, |_, _| ())
                });
        });

    // pass 2: dq, one task per (head, query block)
    dq.par_chunks_mut(t * hd).enumerate().for_each(|(h, dq_h)| {
        let (head, saved) = (Head::new(q, k, v, h, t, hd), saved_of(h));
        dq_h.par_chunks_mut(block_q * hd)
            .enumerate()
            .for_each(|(qb, dq_b)| bwd_query_block(&head, &saved, qb * block_q, block_k, dq_b));
    });
    (dq, dk, dv)
}

/// How `flash_bwd` splits its work over threads (see there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BwdSchedule {
    PerHead,
    TwoPass,
}

/// From this many heads (b_h) on, the backward runs one task per head: enough tasks to keep
/// 32 cores busy without splitting a head. Measured on 2 cores at b_h = 32, hd 32 and 64, T 64
/// to 1024: the per-head schedule is 1.5-1.6x as fast as the two passes
/// (`bench/src/bin/attention.rs`), about the 7 / 5 of their tile products.
pub const PER_HEAD_MIN_HEADS: usize = 32;

impl BwdSchedule {
    /// The schedule for b_h heads: a function of the shape only.
    pub fn for_heads(b_h: usize) -> BwdSchedule {
        if b_h >= PER_HEAD_MIN_HEADS {
            BwdSchedule::PerHead
        } else {
            BwdSchedule::TwoPass
        }
    }
}

/// The size arguments, checked once.
struct Sizes {
    b_h: usize,
    t: usize,
    hd: usize,
}

impl Sizes {
    fn checked(op: &str, b_h: usize, t: usize, hd: usize, block_q: usize, block_k: usize) -> Self {
        assert!(hd > 0, "{op}: head dim hd must be positive");
        assert!(
            block_q > 0 && block_k > 0,
            "{op}: block sizes must be positive, got block_q {block_q}, block_k {block_k}"
        );
        Sizes { b_h, t, hd }
    }

    fn check_rows(&self, op: &str, name: &str, x: &[f32]) {
        let (b_h, t, hd) = (self.b_h, self.t, self.hd);
        assert_eq!(
            x.len(),
            b_h * t * hd,
            "{op}: {name} must be [b_h, T, hd] = [{b_h}, {t}, {hd}]"
        );
    }
}

/// One (batch*head)'s inputs: q, k, v [T, hd], cut from the [b_h, T, hd] slices.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    t: usize,
    hd: usize,
    /// 1 / sqrt(hd), the scale of the scores.
    scale: f32,
}

impl<'a> Head<'a> {
    fn new(q: &'a [f32], k: &'a [f32], v: &'a [f32], h: usize, t: usize, hd: usize) -> Self {
        let rows = h * t * hd..(h + 1) * t * hd;
        Head {
            q: &q[rows.clone()],
            k: &k[rows.clone()],
            v: &v[rows],
            t,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
        }
    }

    /// Rows i0..i0 + n of q as a row-major [n, hd] matrix.
    fn q_rows(&self, i0: usize, n: usize) -> MatRef<'a> {
        rows_of(self.q, i0, n, self.hd)
    }

    /// Rows j0..j0 + n of k, [n, hd].
    fn k_rows(&self, j0: usize, n: usize) -> MatRef<'a> {
        rows_of(self.k, j0, n, self.hd)
    }

    /// Rows j0..j0 + n of v, [n, hd].
    fn v_rows(&self, j0: usize, n: usize) -> MatRef<'a> {
        rows_of(self.v, j0, n, self.hd)
    }
}

/// Rows r0..r0 + n of a row-major [.., width] buffer, as a matrix (a slice: nothing is copied).
fn rows_of(buf: &[f32], r0: usize, n: usize, width: usize) -> MatRef<'_> {
    MatRef::row_major(&buf[r0 * width..(r0 + n) * width], n, width)
}

/// One (batch*head)'s share of what the backward reads besides q, k, v.
struct Saved<'a> {
    /// [T, hd]
    dout: &'a [f32],
    /// [T]: the forward's log-sum-exp.
    lse: &'a [f32],
    /// [T]: D_i = dout_i . out_i.
    dsum: &'a [f32],
    hd: usize,
}

impl<'a> Saved<'a> {
    fn new(
        dout: &'a [f32],
        lse: &'a [f32],
        dsum: &'a [f32],
        h: usize,
        t: usize,
        hd: usize,
    ) -> Self {
        Saved {
            dout: &dout[h * t * hd..(h + 1) * t * hd],
            lse: &lse[h * t..(h + 1) * t],
            dsum: &dsum[h * t..(h + 1) * t],
            hd,
        }
    }

    /// Rows i0..i0 + n of dout, [n, hd].
    fn dout_rows(&self, i0: usize, n: usize) -> MatRef<'a> {
        rows_of(self.dout, i0, n, self.hd)
    }
}

/// A rectangle of the [T, T] score matrix: queries q0..q0 + rows against keys k0..k0 + cols.
/// Its tiles are stored row-major, `cols` per row.
#[derive(Clone, Copy)]
struct Tile {
    q0: usize,
    rows: usize,
    k0: usize,
    cols: usize,
}

impl Tile {
    fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// The tile's buffer as a row-major [rows, cols] matrix.
    fn view(self, buf: &[f32]) -> MatRef<'_> {
        MatRef::row_major(buf, self.rows, self.cols)
    }
}

/// One row of a row-major buffer of `width`-long rows.
fn row_mut(buf: &mut [f32], r: usize, width: usize) -> &mut [f32] {
    &mut buf[r * width..(r + 1) * width]
}

/// c = a b (`accumulate` false) or c += a b, on the calling thread (each rayon task already owns
/// a core), through the runtime's GEMM: the tile products are where the time goes.
///
/// Shapes: a [m, k], b [k, n], c [m, n] row-major
fn tile_gemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], accumulate: bool) {
    let ldc = b.cols;
    gemm(a, b, c, ldc, accumulate, Parallelism::Sequential);
}

/// The forward for queries q0..q0 + lse_b.len() of one head: writes their out and lse rows.
///
/// Shapes: out_b [rows, hd], lse_b [rows]; scratch: one [rows, block_k] tile, m and l [rows]
fn fwd_query_block(head: &Head, q0: usize, block_k: usize, out_b: &mut [f32], lse_b: &mut [f32]) {
    let rows = lse_b.len();
    let q_end = q0 + rows;
    // running max and sum per query; out_b itself is the accumulator
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0.0f32; rows];
    let mut tile_buf = vec![0.0f32; rows * block_k];
    // causal: keys from q_end on are after every query here, so the walk stops at the diagonal
    for k0 in (0..q_end).step_by(block_k) {
        // load tiles: the key rows k0..k0 + cols are a slice of k and v, nothing to copy
        let tile = Tile {
            q0,
            rows,
            k0,
            cols: block_k.min(q_end - k0),
        };
        let s = &mut tile_buf[..tile.len()];
        scores_tile(head, tile, s);
        online_softmax_step(tile, s, &mut m, &mut l, out_b, head.hd);
        // accumulate: acc += p v_tile, [rows, cols] x [cols, hd]
        tile_gemm(tile.view(s), head.v_rows(k0, tile.cols), out_b, true);
    }
    write_back(&m, &l, out_b, lse_b, head.hd);
}

/// s_ij = q_i . k_j * scale for the tile ([rows, hd] x [hd, cols]: q against k's rows seen as
/// columns, k^T without a copy), then -inf where key j comes after query i.
fn scores_tile(head: &Head, tile: Tile, s: &mut [f32]) {
    let q_blk = head.q_rows(tile.q0, tile.rows);
    tile_gemm(q_blk, head.k_rows(tile.k0, tile.cols).t(), s, false);
    simd(|| scale_and_mask_rows(s, tile, head.scale))
}

/// s *= scale where key j <= query i, -inf after (inlined into `simd`, as `exp_minus_rows`).
#[inline(always)]
fn scale_and_mask_rows(s: &mut [f32], tile: Tile, scale: f32) {
    for (r, s_r) in s.chunks_mut(tile.cols).enumerate() {
        // keys k0..=i are visible to query i = q0 + r: the whole row below the diagonal
        let visible = (tile.q0 + r + 1).saturating_sub(tile.k0).min(tile.cols);
        let (seen, masked) = s_r.split_at_mut(visible);
        for x in seen.iter_mut() {
            *x *= scale;
        }
        masked.fill(f32::NEG_INFINITY);
    }
}

/// Folds a tile of scores into the running max m and sum l, rescales the accumulator to the new
/// max, and turns the scores into exp(s - m_new), the weights the p v product adds.
fn online_softmax_step(
    tile: Tile,
    s: &mut [f32],
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    hd: usize,
) {
    simd(|| online_softmax_rows(tile, s, m, l, acc, hd))
}

/// `online_softmax_step`'s loop, row by row (inlined into `simd`, as `exp_minus_rows`).
#[inline(always)]
fn online_softmax_rows(
    tile: Tile,
    s: &mut [f32],
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    hd: usize,
) {
    for r in 0..tile.rows {
        let s_r = row_mut(s, r, tile.cols);
        // m_new is finite: every query's first tile holds key 0, which no mask hides
        let m_new = m[r].max(math::max(s_r));
        // on the first tile m[r] = -inf and alpha = 0, harmless since l and acc are still 0
        let alpha = math::exp(m[r] - m_new);
        // masked scores are -inf, so their weight exp(-inf) is exactly 0
        s_r.iter_mut().for_each(|x| *x = math::exp(*x - m_new));
        l[r] = alpha * l[r] + math::sum(s_r);
        row_mut(acc, r, hd).iter_mut().for_each(|a| *a *= alpha);
        m[r] = m_new;
    }
}

/// out_i = acc_i / l_i, lse_i = m_i + ln l_i (l_i >= 1: the max term contributes exp(0)).
fn write_back(m: &[f32], l: &[f32], out_b: &mut [f32], lse_b: &mut [f32], hd: usize) {
    for (r, lse_i) in lse_b.iter_mut().enumerate() {
        let inv_l = 1.0 / l[r];
        row_mut(out_b, r, hd).iter_mut().for_each(|o| *o *= inv_l);
        *lse_i = m[r] + l[r].ln();
    }
}

/// p_ij = exp(s_ij - lse_i) for the tile: the forward's softmax, recomputed (0 where masked).
fn probs_tile(head: &Head, saved: &Saved, tile: Tile, p: &mut [f32]) {
    scores_tile(head, tile, p);
    let lse = &saved.lse[tile.q0..tile.q0 + tile.rows];
    simd(|| exp_minus_rows(p, tile.cols, lse))
}

/// x = exp(x - c_r) along each row r of a row-major buffer. Always inlined, so that inside
/// `simd` it is compiled for AVX2 (a closure holding the loop itself was not inlined there, and
/// ran 4 lanes wide).
#[inline(always)]
fn exp_minus_rows(x: &mut [f32], cols: usize, c: &[f32]) {
    for (x_r, &c_r) in x.chunks_mut(cols).zip(c) {
        for x in x_r.iter_mut() {
            *x = math::exp(*x - c_r);
        }
    }
}

/// ds_ij = p_ij (dp_ij - D_i) * scale for the tile (0 where p is), dp = dout v^T
/// ([rows, hd] x [hd, cols]). The scale of the scores is folded in here, so that dq and dk are
/// plain products of this tile: dq = ds k, dk = ds^T q.
fn dscores_tile(head: &Head, saved: &Saved, tile: Tile, p: &[f32], ds: &mut [f32]) {
    let dout_blk = saved.dout_rows(tile.q0, tile.rows);
    tile_gemm(dout_blk, head.v_rows(tile.k0, tile.cols).t(), ds, false);
    let (dsum, scale) = (&saved.dsum[tile.q0..tile.q0 + tile.rows], head.scale);
    simd(|| dscores_rows(ds, p, tile.cols, dsum, scale))
}

/// ds = p (ds - D_r) scale along each row r (inlined into `simd`, as `exp_minus_rows`).
#[inline(always)]
fn dscores_rows(ds: &mut [f32], p: &[f32], cols: usize, dsum: &[f32], scale: f32) {
    let rows = ds.chunks_mut(cols).zip(p.chunks(cols));
    for ((ds_r, p_r), &d_i) in rows.zip(dsum) {
        for (ds_ij, &p_ij) in ds_r.iter_mut().zip(p_r) {
            *ds_ij = p_ij * (*ds_ij - d_i) * scale;
        }
    }
}

/// dq, dk and dv of one head, every tile visited once: for each key block, the query blocks
/// that see it (from its first key on), each tile adding to its key block's dk, dv rows and to
/// its query rows' dq.
///
/// Shapes: dq_h, dk_h, dv_h [T, hd]; scratch: two [block_q, block_k] tiles (p and ds)
fn bwd_head(
    head: &Head,
    saved: &Saved,
    (block_q, block_k): (usize, usize),
    dq_h: &mut [f32],
    dk_h: &mut [f32],
    dv_h: &mut [f32],
) {
    let hd = head.hd;
    let blocks = dk_h
        .chunks_mut(block_k * hd)
        .zip(dv_h.chunks_mut(block_k * hd));
    for (kb, (dk_b, dv_b)) in blocks.enumerate() {
        let k0 = kb * block_k;
        // the key block's dk, dv as in pass 1, and each tile's dS also adds dq += ds k
        bwd_key_block(head, saved, k0, block_q, dk_b, dv_b, |tile, ds| {
            let dq_rows = &mut dq_h[tile.q0 * hd..(tile.q0 + tile.rows) * hd];
            tile_gemm(tile.view(ds), head.k_rows(k0, tile.cols), dq_rows, true);
        });
    }
}

/// dk and dv of keys k0..k0 + cols of one head: sums over the queries that see them, i >= k0.
/// `on_tile(tile, ds)` is handed each tile's dS once it is used (the per-head schedule adds
/// dq from it; pass 1 of the two passes ignores it).
///
/// Shapes: dk_b, dv_b [cols, hd]; scratch: two [block_q, cols] tiles (p and ds)
fn bwd_key_block(
    head: &Head,
    saved: &Saved,
    k0: usize,
    block_q: usize,
    dk_b: &mut [f32],
    dv_b: &mut [f32],
    mut on_tile: impl FnMut(Tile, &[f32]),
) {
    let (hd, t) = (head.hd, head.t);
    let cols = dk_b.len() / hd;
    let mut p = vec![0.0f32; block_q * cols];
    let mut ds = vec![0.0f32; block_q * cols];
    // causal: queries before k0 see none of these keys, so the walk starts at k0
    for q0 in (k0..t).step_by(block_q) {
        let tile = Tile {
            q0,
            rows: block_q.min(t - q0),
            k0,
            cols,
        };
        let (p, ds) = (&mut p[..tile.len()], &mut ds[..tile.len()]);
        probs_tile(head, saved, tile, p);
        dscores_tile(head, saved, tile, p, ds);
        // dv += p^T dout, dk += ds^T q: [cols, rows] x [rows, hd], the tiles read transposed
        let dout_blk = saved.dout_rows(q0, tile.rows);
        tile_gemm(tile.view(p).t(), dout_blk, dv_b, true);
        tile_gemm(tile.view(ds).t(), head.q_rows(q0, tile.rows), dk_b, true);
        on_tile(tile, ds);
    }
}

/// dq of queries q0..q0 + rows of one head: sums over the keys they see, j <= i.
///
/// Shapes: dq_b [rows, hd]; scratch: two [rows, block_k] tiles (p and ds)
fn bwd_query_block(head: &Head, saved: &Saved, q0: usize, block_k: usize, dq_b: &mut [f32]) {
    let hd = head.hd;
    let rows = dq_b.len() / hd;
    let q_end = q0 + rows;
    let mut p = vec![0.0f32; rows * block_k];
    let mut ds = vec![0.0f32; rows * block_k];
    for k0 in (0..q_end).step_by(block_k) {
        let tile = Tile {
            q0,
            rows,
            k0,
            cols: block_k.min(q_end - k0),
        };
        let (p, ds) = (&mut p[..tile.len()], &mut ds[..tile.len()]);
        probs_tile(head, saved, tile, p);
        dscores_tile(head, saved, tile, p, ds);
        // dq += ds k: [rows, cols] x [cols, hd]
        tile_gemm(tile.view(ds), head.k_rows(k0, tile.cols), dq_b, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::{attention_bwd, attention_fwd};
    use crate::{DType, Rng, Tensor};

    /// Batch and heads of every test case: b_h = 4 heads, enough to catch a head-offset slip.
    const B: usize = 2;
    const H: usize = 2;
    /// 1 runs the online softmax once per key; 7 and 16 leave ragged last blocks; 64 is the
    /// default and exceeds the short sequences.
    const BLOCKS: [usize; 4] = [1, 7, 16, 64];
    /// 1: a single key; 100 and 130: not multiples of any block above 1.
    const LENGTHS: [usize; 5] = [1, 5, 64, 100, 130];
    const HEAD_DIMS: [usize; 2] = [8, 16];

    /// Pass bar: max |got - want| <= REL_TOL * max(max |want|, 1). Both sides sum the same terms
    /// in f32 in different orders (blocks of keys against whole rows), so they differ by the
    /// rounding of a sum of up to T = 130 terms: a few dozen f32 epsilons (1.2e-7) at worst,
    /// and 1e-5 is about 84 of them (the worst seen is about 5e-7, at T = 100). The floor of 1,
    /// the scale of the unit-normal inputs, is for gradients that are exactly 0 (T = 1: a
    /// softmax over one score has zero derivative, so dq = dk = 0) where both sides hold only
    /// rounding noise.
    const REL_TOL: f32 = 1e-5;

    fn values(x: &Tensor) -> Vec<f32> {
        x.to_vec::<f32>().unwrap()
    }

    fn randn(shape: &[usize], rng: &mut Rng) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, DType::F32, rng)
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let magnitude = want.iter().fold(1.0f32, |m, w| m.max(w.abs()));
        let (worst_at, worst) = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .enumerate()
            .fold(
                (0, 0.0f32),
                |best, (i, e)| if e > best.1 { (i, e) } else { best },
            );
        assert!(
            worst <= REL_TOL * magnitude,
            "{what}: element {worst_at}: got {}, want {}, error {worst:.3e} > {:.3e}",
            got[worst_at],
            want[worst_at],
            REL_TOL * magnitude
        );
    }

    /// The reference's log-sum-exp, read off its probabilities: p_ij = exp(s_ij - lse_i), so
    /// lse_i = s_ij - ln p_ij for any unmasked j; the largest p_ij keeps ln well conditioned.
    fn lse_from_probs(
        q: &[f32],
        k: &[f32],
        probs: &[f32],
        b_h: usize,
        t: usize,
        hd: usize,
    ) -> Vec<f32> {
        let scale = 1.0 / (hd as f64).sqrt();
        let mut lse = Vec::with_capacity(b_h * t);
        for h in 0..b_h {
            for i in 0..t {
                let p_i = &probs[(h * t + i) * t..(h * t + i + 1) * t];
                let j = (0..t).fold(0, |best, j| if p_i[j] > p_i[best] { j } else { best });
                let q_i = &q[(h * t + i) * hd..(h * t + i + 1) * hd];
                let k_j = &k[(h * t + j) * hd..(h * t + j + 1) * hd];
                let s_ij: f64 = q_i
                    .iter()
                    .zip(k_j)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                lse.push((s_ij * scale - (p_i[j] as f64).ln()) as f32);
            }
        }
        lse
    }

    /// Every (block_q, block_k) pair of `blocks` against the materialised reference, forward
    /// (out, lse) and backward, on inputs of shape [b, h, t, hd].
    fn check_against_reference(shape: [usize; 4], blocks: &[usize], rng: &mut Rng) {
        let [b, h, t, hd] = shape;
        let b_h = b * h;
        let (q, k, v, dout) = (
            randn(&shape, rng),
            randn(&shape, rng),
            randn(&shape, rng),
            randn(&shape, rng),
        );
        let (out_ref, probs) = attention_fwd(&q, &k, &v).unwrap();
        let (dq_ref, dk_ref, dv_ref) = attention_bwd(&dout, &q, &k, &v, &probs).unwrap();
        let (q, k, v, dout) = (values(&q), values(&k), values(&v), values(&dout));
        let lse_ref = lse_from_probs(&q, &k, &values(&probs), b_h, t, hd);
        for &block_q in blocks {
            for &block_k in blocks {
                let case = format!("{shape:?}, block_q {block_q}, block_k {block_k}");
                let (out, lse) = flash_fwd(&q, &k, &v, b_h, t, hd, block_q, block_k);
                assert_close(&out, &values(&out_ref), &format!("out, {case}"));
                assert_close(&lse, &lse_ref, &format!("lse, {case}"));
                for schedule in [BwdSchedule::PerHead, BwdSchedule::TwoPass] {
                    let case = format!("{case}, {schedule:?}");
                    let (dout, q, k, v, out, lse) = (&dout, &q, &k, &v, &out, &lse);
                    let inputs = BwdInputs {
                        dout,
                        q,
                        k,
                        v,
                        out,
                        lse,
                    };
                    let (dq, dk, dv) =
                        flash_bwd_scheduled(schedule, inputs, b_h, t, hd, block_q, block_k);
                    assert_close(&dq, &values(&dq_ref), &format!("dq, {case}"));
                    assert_close(&dk, &values(&dk_ref), &format!("dk, {case}"));
                    assert_close(&dv, &values(&dv_ref), &format!("dv, {case}"));
                }
            }
        }
    }

    /// Both backward schedules, every block size pair, ragged and short T.
    #[test]
    fn flash_matches_materialised_attention_at_every_block_size() {
        let mut rng = Rng::new(9);
        for t in LENGTHS {
            for hd in HEAD_DIMS {
                check_against_reference([B, H, t, hd], &BLOCKS, &mut rng);
            }
        }
    }

    #[test]
    fn the_schedule_depends_on_the_head_count_only() {
        assert_eq!(BwdSchedule::for_heads(1), BwdSchedule::TwoPass);
        let n = PER_HEAD_MIN_HEADS;
        assert_eq!(BwdSchedule::for_heads(n - 1), BwdSchedule::TwoPass);
        assert_eq!(BwdSchedule::for_heads(n), BwdSchedule::PerHead);
    }

    /// Keys and values after position `last` are replaced by large different values: the
    /// outputs of queries 0..=last must not move at all. Equality is exact, not approximate:
    /// a masked score is -inf, its weight exp(-inf) is exactly 0, and 0 * v adds exactly 0.
    #[test]
    fn keys_after_the_query_have_no_influence() {
        let (b_h, t, hd, last) = (3, 100, 8, 40);
        let mut rng = Rng::new(10);
        let shape = [b_h, t, hd];
        let (q, k, v) = (
            values(&randn(&shape, &mut rng)),
            values(&randn(&shape, &mut rng)),
            values(&randn(&shape, &mut rng)),
        );
        let perturb = |x: &[f32], rng: &mut Rng| -> Vec<f32> {
            let mut y = x.to_vec();
            for row in y.chunks_mut(hd).enumerate().filter(|(r, _)| r % t > last) {
                row.1.iter_mut().for_each(|e| *e = 100.0 * rng.normal());
            }
            y
        };
        let (k2, v2) = (perturb(&k, &mut rng), perturb(&v, &mut rng));
        for block in [7, 16, BLOCK_Q] {
            let (out, lse) = flash_fwd(&q, &k, &v, b_h, t, hd, block, block);
            let (out2, lse2) = flash_fwd(&q, &k2, &v2, b_h, t, hd, block, block);
            for h in 0..b_h {
                let rows = h * t..h * t + last + 1;
                assert_eq!(lse[rows.clone()], lse2[rows.clone()], "lse, block {block}");
                let elems = rows.start * hd..rows.end * hd;
                assert_eq!(out[elems.clone()], out2[elems], "out, block {block}");
            }
        }
    }
}
