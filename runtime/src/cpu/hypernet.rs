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
//! other size is huge (P up to 768 x 3072 = 2.4 M): memory-bound, with 2 N K FLOPs for every
//! (N + K) floats moved. A general GEMM packs F into panels (a copy of it) before multiplying,
//! and the tape's plain path also joins the N per-step gradients into one [N, P] tensor (another
//! copy) and then reads that twice (once for dF, once for dH). Here:
//!
//! - the forward walks F in column chunks of `CHUNK` floats: a [K, CHUNK] slab of F (K x 16 KiB)
//!   stays in L1/L2 while the N output rows of that chunk are written, so F is read once and W
//!   written once: (K + N) P floats in all, the least possible;
//! - the backward reads the N step gradients where they are (N slices, no join) and F, chunk by
//!   chunk, and in the same pass writes dF's chunk and adds each chunk's share of dH: (N + 2K) P
//!   floats (read dW, read F, write dF), against about (4N + 3K) P for the plain path.
//!
//! Parallelism: chunks are split over rayon tasks. dF's chunks are disjoint, so each task owns
//! its columns. dH is a sum over all chunks: each task keeps its own [N, K] partial sum, and the
//! partials are added in chunk order afterwards, so the result is the same whatever the number
//! of threads. Sums of dH are accumulated in f64 (each is a dot product of up to 2.4 M terms).
//!
//! Test reference: the plain matrix products of `ops::matmul` (f64 in the tests of
//! `ops/hypernet.rs`).

use super::simd;
use rayon::prelude::*;

/// Columns of F per task step: 4096 f32 = 16 KiB per row of F, so with K = 21 rows the slab of F
/// a chunk reads is 336 KiB, about a core's L2, and each output row chunk is 16 KiB.
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
    // one task per chunk of columns: it fills columns c0..c0 + len of every step's row
    column_chunks(&mut w, p)
        .into_par_iter()
        .enumerate()
        .for_each(|(c, mut rows)| {
            let c0 = c * CHUNK;
            for (i, w_i) in rows.iter_mut().enumerate() {
                // w_i[chunk] = sum_k h[i, k] f[k, chunk], F's slab read from cache after step 0
                for kk in 0..k {
                    let f_k = &f[kk * p + c0..kk * p + c0 + w_i.len()];
                    simd(|| axpy(h[i * k + kk], f_k, w_i));
                }
            }
        });
    w
}

/// The backward of `generate`, from the per-step gradients as they are (N slices of P).
///
/// Shapes: dws N x [P], h [N, K], f [K, P] -> (dh [N, K], df [K, P])
pub fn generate_bwd(
    dws: &[&[f32]],
    h: &[f32],
    f: &[f32],
    n: usize,
    k: usize,
    p: usize,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(dws.len(), n, "generate_bwd: one gradient per step");
    for dw in dws {
        assert_eq!(dw.len(), p, "generate_bwd: each step's gradient must be [P] = [{p}]");
    }
    assert_eq!(h.len(), n * k, "generate_bwd: h must be [N, K] = [{n}, {k}]");
    assert_eq!(f.len(), k * p, "generate_bwd: f must be [K, P] = [{k}, {p}]");
    let mut df = vec![0.0f32; k * p];
    if df.is_empty() {
        return (vec![0.0; n * k], df);
    }
    // each task owns dF's columns of its chunk, and returns its chunk's share of dH
    let partials: Vec<Vec<f64>> = column_chunks(&mut df, p)
        .into_par_iter()
        .enumerate()
        .map(|(c, mut df_rows)| {
            let c0 = c * CHUNK;
            let mut dh_c = vec![0.0f64; n * k];
            for (i, dw) in dws.iter().enumerate() {
                for (kk, df_kc) in df_rows.iter_mut().enumerate() {
                    let len = df_kc.len();
                    let (dw_c, f_kc) = (&dw[c0..c0 + len], &f[kk * p + c0..kk * p + c0 + len]);
                    // dF[k, chunk] += h[i, k] dW_i[chunk];  dH[i, k] += dW_i[chunk] . F[k, chunk]
                    simd(|| axpy(h[i * k + kk], dw_c, df_kc));
                    dh_c[i * k + kk] += simd(|| dot_f64(dw_c, f_kc));
                }
            }
            dh_c
        })
        .collect();
    // dH: the chunks' partial sums, added in chunk order (the same whatever the thread count)
    let mut dh = vec![0.0f64; n * k];
    for dh_c in partials {
        dh.iter_mut().zip(dh_c).for_each(|(a, b)| *a += b);
    }
    (dh.into_iter().map(|x| x as f32).collect(), df)
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

/// y += a x.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// x . y with f32 products summed in 8 f64 lanes.
#[inline(always)]
fn dot_f64(x: &[f32], y: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f64 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum();
    for (xs, ys) in xc.zip(yc) {
        for ((a, &p), &q) in acc.iter_mut().zip(xs).zip(ys) {
            *a += p as f64 * q as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}
