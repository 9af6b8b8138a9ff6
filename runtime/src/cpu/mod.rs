//! The CPU backend: the matmul kernel and the loops shared by the ops.
//!
//! Ops keep their CPU loops beside their shape checks in `crate::ops`; what lives here is what
//! several ops share: the GEMM and the helpers that split row-wise work over rayon's threads.
//!
//! Known shortfall: every op writes a freshly allocated output and no two ops are fused, so a
//! chain of elementwise ops makes one pass over memory per op. Fine for a CPU reference and for
//! small models; fused kernels are the GPU backend's job.
//!
//! Determinism: every parallel loop here splits work at fixed boundaries (rows, or fixed-size
//! chunks of rows) and combines partial results in a fixed order, so results do not depend on
//! the number of threads or on scheduling. Training runs that resume from a checkpoint rely on it.

pub mod flash;
pub mod gemm;
pub mod hypernet;
pub mod math;

use rayon::prelude::*;

/// Below this many elements an op runs on the calling thread: a rayon fork/join costs a few
/// microseconds, more than the whole loop on a small tensor.
pub const PAR_MIN_ELEMS: usize = 1 << 15;

/// Rows per task when partial sums over rows are computed in parallel (see `sum_over_rows`).
const ROWS_PER_CHUNK: usize = 64;

/// Makes the calling thread one of the worker threads of rayon's global pool. Call it first
/// thing in a binary's `main`, before any op runs.
///
/// Why: by default the main thread is not a worker, so every parallel op it starts is handed to
/// the pool while the main thread sleeps until a worker finishes it: two thread wake-ups per op.
/// A training step runs a few thousand ops, and on the 2-core CI machine that cost about 45,000
/// context switches a second and a tenth of the step (`bench/RESULTS.md`). As a worker, the main
/// thread runs its own share of each op and the other workers steal the rest. A library must
/// not configure the process's pool behind its caller's back, so nothing here calls it. Returns
/// false if the global pool had already been built (then nothing changes).
pub fn join_thread_pool() -> bool {
    rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global()
        .is_ok()
}

/// Runs `body` compiled for AVX2 when this CPU has it, else as is.
///
/// Rust builds for the x86-64 baseline, whose vectors are SSE2's 4 lanes; the elementwise loops
/// here (GELU, exp, the broadcast binary ops) run twice as wide with AVX2's 8. `body` is inlined
/// into a function compiled with AVX2 enabled, so its loop is vectorised for it; the result is
/// the same to the bit (elementwise math does the same operations in the same order whatever
/// the width; no FMA contraction is allowed). Every loop here is a plain loop over slices.
#[inline(always)]
pub fn simd<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2_available() {
            // SAFETY: `with_avx2` only needs the CPU to support AVX2, checked just above.
            return unsafe { with_avx2(body) };
        }
    }
    body()
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// Elements per task in the elementwise loops below: 64 KiB of f32, a comfortable L2 share.
const ELEMS_PER_CHUNK: usize = 1 << 14;

/// `f` applied to every element, in parallel for large inputs.
///
/// The loops here write into a preallocated output through plain zipped iterators, with no
/// index arithmetic or bounds checks in the body, so that the compiler vectorises them when `f`
/// is straight-line code (see `math` for exp/tanh written that way).
pub fn map<F>(xs: &[f32], f: F) -> Vec<f32>
where
    F: Fn(f32) -> f32 + Sync,
{
    let mut out = vec![0.0f32; xs.len()];
    let body = |(out, xs): (&mut [f32], &[f32])| {
        simd(|| {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = f(x);
            }
        })
    };
    if xs.len() < PAR_MIN_ELEMS {
        body((&mut out, xs));
    } else {
        out.par_chunks_mut(ELEMS_PER_CHUNK)
            .zip(xs.par_chunks(ELEMS_PER_CHUNK))
            .for_each(body);
    }
    out
}

/// `f(start, chunk)` on every chunk of `ys` (`start` is the chunk's offset), in parallel for
/// large inputs: for loops that read several other slices at the same offsets (`lincomb`).
pub fn for_each_chunk<F>(ys: &mut [f32], f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let body = |(c, ys): (usize, &mut [f32])| simd(|| f(c * ELEMS_PER_CHUNK, ys));
    if ys.len() < PAR_MIN_ELEMS {
        ys.chunks_mut(ELEMS_PER_CHUNK).enumerate().for_each(body);
    } else {
        ys.par_chunks_mut(ELEMS_PER_CHUNK)
            .enumerate()
            .for_each(body);
    }
}

/// `f` applied pairwise to two equal-length slices, in parallel for large inputs.
pub fn zip_map<F>(xs: &[f32], ys: &[f32], f: F) -> Vec<f32>
where
    F: Fn(f32, f32) -> f32 + Sync,
{
    assert_eq!(xs.len(), ys.len(), "zip_map: lengths differ");
    let mut out = vec![0.0f32; xs.len()];
    let body = |((out, xs), ys): ((&mut [f32], &[f32]), &[f32])| {
        simd(|| {
            for ((o, &x), &y) in out.iter_mut().zip(xs).zip(ys) {
                *o = f(x, y);
            }
        })
    };
    if xs.len() < PAR_MIN_ELEMS {
        body(((&mut out, xs), ys));
    } else {
        out.par_chunks_mut(ELEMS_PER_CHUNK)
            .zip(xs.par_chunks(ELEMS_PER_CHUNK))
            .zip(ys.par_chunks(ELEMS_PER_CHUNK))
            .for_each(body);
    }
    out
}

/// An output chunk and the three input chunks it is computed from, as rayon's zips nest them.
type OutAndThree<'a> = (((&'a mut [f32], &'a [f32]), &'a [f32]), &'a [f32]);

/// `f` applied to three equal-length slices element by element, in parallel for large inputs
/// (a unary op's backward reads dy, x and y).
pub fn zip3_map<F>(xs: &[f32], ys: &[f32], zs: &[f32], f: F) -> Vec<f32>
where
    F: Fn(f32, f32, f32) -> f32 + Sync,
{
    assert!(
        xs.len() == ys.len() && ys.len() == zs.len(),
        "zip3_map: lengths differ"
    );
    let mut out = vec![0.0f32; xs.len()];
    let body = |(((out, xs), ys), zs): OutAndThree| {
        simd(|| {
            for (((o, &x), &y), &z) in out.iter_mut().zip(xs).zip(ys).zip(zs) {
                *o = f(x, y, z);
            }
        })
    };
    if xs.len() < PAR_MIN_ELEMS {
        body((((&mut out, xs), ys), zs));
    } else {
        out.par_chunks_mut(ELEMS_PER_CHUNK)
            .zip(xs.par_chunks(ELEMS_PER_CHUNK))
            .zip(ys.par_chunks(ELEMS_PER_CHUNK))
            .zip(zs.par_chunks(ELEMS_PER_CHUNK))
            .for_each(body);
    }
    out
}

/// Calls `f(row_index, row)` on each `row_len`-long row of `out`, in parallel for large outputs.
pub fn for_each_row<F>(out: &mut [f32], row_len: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    if row_len == 0 {
        return;
    }
    if out.len() < PAR_MIN_ELEMS {
        out.chunks_mut(row_len)
            .enumerate()
            .for_each(|(r, row)| simd(|| f(r, row)));
    } else {
        out.par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(r, row)| simd(|| f(r, row)));
    }
}

/// `f(row)` for each of `rows` rows, collected in order (in parallel for large inputs).
pub fn map_rows<F>(rows: usize, work_per_row: usize, f: F) -> Vec<f32>
where
    F: Fn(usize) -> f32 + Sync + Send,
{
    if rows * work_per_row < PAR_MIN_ELEMS {
        (0..rows).map(f).collect()
    } else {
        (0..rows).into_par_iter().map(f).collect()
    }
}

/// Sums per-row contributions into one `width`-long vector: `out[j] = sum_r contrib(r)[j]`.
///
/// `add_row(r, acc)` adds row `r`'s contribution into `acc`. Rows are grouped in fixed chunks of
/// `ROWS_PER_CHUNK`, each chunk summed on its own, then chunk sums added in chunk order: the same
/// rounding whatever the thread count. (Used for weight gradients of norms and similar.)
pub fn sum_over_rows<F>(rows: usize, width: usize, add_row: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let chunk_sum = |c: usize| {
        let mut acc = vec![0.0f32; width];
        let end = ((c + 1) * ROWS_PER_CHUNK).min(rows);
        simd(|| {
            for r in c * ROWS_PER_CHUNK..end {
                add_row(r, &mut acc);
            }
        });
        acc
    };
    let chunks = rows.div_ceil(ROWS_PER_CHUNK);
    let partials: Vec<Vec<f32>> = if rows * width < PAR_MIN_ELEMS {
        (0..chunks).map(chunk_sum).collect()
    } else {
        (0..chunks).into_par_iter().map(chunk_sum).collect()
    };
    let mut total = vec![0.0f32; width];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(t, x)| *t += x);
    }
    total
}
