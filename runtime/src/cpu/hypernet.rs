//! The hypernetwork's weight generation on the CPU: every step's weights from the stacked
//! parameter in one pass over it, and the backward in one pass over the steps' gradients.
//!
//! What it computes (MODEL.md section 3), with H the [N, K] coefficient rows of the N evaluation
//! times (K = E + 1 rows [1, h(t_i)] for a weight, K = E rows h(t_i) for a bias or a norm) and F
//! the [K, P] stacked parameter (P = d_in d_out, or D):
//!
//! ```text
//! forward    W_i = sum_k H[i, k] F[k]                 for each step i < N     ([P] each)
//! backward   dF[k] = sum_i H[i, k] dW_i                                        ([K, P])
//!            dH[i, k] = dW_i . F[k]                                             ([N, K])
//! ```
//!
//! Both are matrix products whose inner or outer size is tiny (N and K are 4 to 21) and whose
//! other size is huge (P up to 768 x 3072 = 2.4 M). A general GEMM packs all of F into panels
//! (a copy of it) before multiplying, and the tape's plain path also joined the N per-step
//! gradients into one [N, P] tensor (another copy) and then read that twice (once for dF, once
//! for dH). Here the work is cut into column chunks of `CHUNK` floats, and each chunk is one
//! small GEMM on data that stays in L2:
//!
//! - forward: [N, K] x [K, chunk] straight from F's columns (a strided view, no copy of F), into
//!   a scratch tile, then each row to its step: F read once, W written once, (K + N) P floats
//!   moved through memory, the least possible;
//! - backward: the chunk of every step's gradient gathered into an [N, chunk] tile (each dW read
//!   once, where it is), then dF's chunk = H^T tile and this chunk's share of dH = tile F^T:
//!   (N + 2K) P floats moved (read dW and F, write dF), against about (4N + 3K) P before;
//!   into a gradient already gathered (`acc`), (N + 3K) P: the old sum is read in the same
//!   pass, where writing dF and adding it afterwards would move (N + 5K) P.
//!
//! Memory-bound on a GPU, not quite here: 2 N K FLOPs per element against (N + K) x 4 bytes is
//! 3.8 FLOP/byte at N = 12, K = 21, which a GPU's ratio (about 200) makes memory-bound but a CPU
//! core's (about 5-10) leaves near the balance point, and a GEMM with an inner size of 21 keeps
//! the register tile only partly busy. Measured in `bench/src/bin/hypernet.rs` against the plain
//! path and against a copy of the same bytes.
//!
//! Parallelism: chunks are split over rayon tasks. dF's chunks are disjoint, so each task owns
//! its columns (`column_chunks`). dH is a sum over all chunks: each task returns its own [N, K]
//! partial (f32, a sum over at most CHUNK terms), and the partials are added in chunk order in
//! f64 afterwards, so the result is the same whatever the number of threads.
//!
//! Test reference: the plain matrix products of `ops::matmul` (f64 in the tests of
//! `ops/hypernet.rs`).

use super::gemm::{gemm, MatRef, Parallelism};
use rayon::prelude::*;

/// Columns per chunk: 4096 f32 = 16 KiB per row, so with K = 21 and N = 12 the chunk's slab of
/// F and its output tile come to 528 KiB, about a core's L2.
pub const CHUNK: usize = 4096;

/// W = H F, written as N rows of P.
///
/// Shapes: h [N, K], f [K, P] -> w [N, P] (row-major)
pub fn generate(h: &[f32], f: &[f32], n: usize, k: usize, p: usize) -> Vec<f32> {
    assert_eq!(h.len(), n * k, "generate: h must be [N, K] = [{n}, {k}]");
    assert_eq!(f.len(), k * p, "generate: f must be [K, P] = [{k}, {p}]");
    let mut w = vec![0.0f32; n * p];
    if w.is_empty() {
        return w;
    }
    let h_mat = MatRef::row_major(h, n, k);
    // one task per chunk of columns: it fills columns c0..c0 + len of every step's row
    column_chunks(&mut w, p)
        .into_par_iter()
        .enumerate()
        .for_each(|(c, mut rows)| {
            let (c0, len) = (c * CHUNK, rows[0].len());
            // the product of the chunk, [N, K] x [K, len], by the register-tiled GEMM into an
            // L2-resident scratch tile; then each row to its step's weights
            let mut tile = vec![0.0f32; n * len];
            gemm(
                h_mat,
                f_columns(f, k, p, c0, len),
                &mut tile,
                len,
                false,
                SEQ,
            );
            for (w_i, tile_i) in rows.iter_mut().zip(tile.chunks(len)) {
                w_i.copy_from_slice(tile_i);
            }
        });
    w
}

/// The backward of `generate`, from the per-step gradients as they are (N slices of P), with dF
/// added to `acc` when one is given: the gradient a parameter has gathered so far, so that the
/// running sum is read and the new one written in the same pass as the product (instead of
/// writing dF, then reading it back with the old sum and writing their sum: 2 K P floats
/// saved). Chunk by chunk the sum is acc + (H^T dW), the very rounding of adding a finished dF.
///
/// Shapes: dws N x [P], h [N, K], f [K, P], acc [K, P] -> (dh [N, K], df [K, P])
pub fn generate_bwd(
    dws: &[&[f32]],
    h: &[f32],
    f: &[f32],
    (n, k, p): (usize, usize, usize),
    acc: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(dws.len(), n, "generate_bwd: one gradient per step");
    for dw in dws {
        assert_eq!(
            dw.len(),
            p,
            "generate_bwd: each step's gradient must be [P] = [{p}]"
        );
    }
    assert_eq!(
        h.len(),
        n * k,
        "generate_bwd: h must be [N, K] = [{n}, {k}]"
    );
    assert_eq!(
        f.len(),
        k * p,
        "generate_bwd: f must be [K, P] = [{k}, {p}]"
    );
    if let Some(acc) = acc {
        assert_eq!(
            acc.len(),
            k * p,
            "generate_bwd: acc must be [K, P] = [{k}, {p}]"
        );
    }
    let mut df = vec![0.0f32; k * p];
    if df.is_empty() {
        return (vec![0.0; n * k], df);
    }
    let h_t = MatRef::row_major(h, n, k).t();
    // each task owns dF's columns of its chunk, and returns its chunk's share of dH
    let partials: Vec<Vec<f32>> = column_chunks(&mut df, p)
        .into_par_iter()
        .enumerate()
        .map(|(c, mut df_rows)| {
            let (c0, len) = (c * CHUNK, df_rows[0].len());
            // load: the steps' gradients of this chunk, gathered into one [N, len] tile
            let mut dw = Vec::with_capacity(n * len);
            dws.iter()
                .for_each(|d| dw.extend_from_slice(&d[c0..c0 + len]));
            let dw = MatRef::row_major(&dw, n, len);
            // dF[:, chunk] = h^T dW: [K, N] x [N, len]
            let mut df_tile = vec![0.0f32; k * len];
            gemm(h_t, dw, &mut df_tile, len, false, SEQ);
            for (row, (df_k, tile_k)) in df_rows.iter_mut().zip(df_tile.chunks(len)).enumerate() {
                match acc {
                    None => df_k.copy_from_slice(tile_k),
                    Some(acc) => {
                        let acc_k = &acc[row * p + c0..row * p + c0 + len];
                        for ((d, &a), &t) in df_k.iter_mut().zip(acc_k).zip(tile_k) {
                            *d = a + t;
                        }
                    }
                }
            }
            // this chunk's dH = dW F[:, chunk]^T: [N, len] x [len, K]
            let mut dh_c = vec![0.0f32; n * k];
            gemm(
                dw,
                f_columns(f, k, p, c0, len).t(),
                &mut dh_c,
                k,
                false,
                SEQ,
            );
            dh_c
        })
        .collect();
    // dH: the chunks' partial sums, added in chunk order in f64 (the same whatever the thread
    // count; each partial is a sum over at most CHUNK terms, the total over up to P)
    let mut dh = vec![0.0f64; n * k];
    for dh_c in partials {
        dh.iter_mut().zip(dh_c).for_each(|(a, b)| *a += b as f64);
    }
    (dh.into_iter().map(|x| x as f32).collect(), df)
}

/// The GEMMs run on the calling task's thread: the chunks are the parallelism.
const SEQ: Parallelism = Parallelism::Sequential;

/// Columns c0..c0 + len of the row-major [K, P] F, as a [K, len] strided view (no copy).
fn f_columns(f: &[f32], k: usize, p: usize, c0: usize, len: usize) -> MatRef<'_> {
    MatRef {
        data: &f[c0..],
        rows: k,
        cols: len,
        row_stride: p,
        col_stride: 1,
    }
}

/// A row-major [rows, p] buffer cut into column chunks of `CHUNK`: entry c holds, for every
/// row, that row's columns c CHUNK .. (c + 1) CHUNK (the last chunk shorter). The pieces are
/// disjoint, so each chunk can go to its own task.
fn column_chunks(buf: &mut [f32], p: usize) -> Vec<Vec<&mut [f32]>> {
    let mut chunks: Vec<Vec<&mut [f32]>> = (0..p.div_ceil(CHUNK)).map(|_| Vec::new()).collect();
    for row in buf.chunks_mut(p) {
        for (c, piece) in row.chunks_mut(CHUNK).enumerate() {
            chunks[c].push(piece);
        }
    }
    chunks
}
