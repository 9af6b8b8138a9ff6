//! The direct loops for products not worth packing: tiny ones (see `SMALL_GEMM_MACS`) and
//! matrix-vector products, where packing would pad the vector to a whole MR- or NR-wide tile and
//! waste most of the arithmetic.

use super::{zero_c, MatRef};

/// C = A B or C += A B without packing.
///
/// Shapes: as `gemm`; the caller has checked the arguments. For n == 1, each C(i, 0) is a dot
/// product; otherwise row i of C gets a_ip times row p of B added, for each p, which with
/// row-major B runs over contiguous memory that the compiler vectorises. Single-threaded.
pub(super) fn gemm_small(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if !accumulate {
        zero_c(c, m, n, ldc);
    }
    for (i, c_row) in c.chunks_mut(ldc).take(m).enumerate() {
        if n == 1 {
            c_row[0] += dot(a, i, b);
        } else {
            for p in 0..k {
                add_scaled_row(&mut c_row[..n], a.at(i, p), b, p);
            }
        }
    }
}

/// c_row += alpha * (row p of B). Shapes: B [k, n], c_row [1, n].
fn add_scaled_row(c_row: &mut [f32], alpha: f32, b: MatRef<'_>, p: usize) {
    let start = p * b.row_stride;
    if b.col_stride == 1 {
        let b_row = &b.data[start..start + c_row.len()];
        for (c_j, &b_j) in c_row.iter_mut().zip(b_row) {
            *c_j += alpha * b_j;
        }
    } else {
        for (j, c_j) in c_row.iter_mut().enumerate() {
            *c_j += alpha * b.data[start + j * b.col_stride];
        }
    }
}

/// Row i of A times the single column of B. Shapes: A [m, k], B [k, 1].
fn dot(a: MatRef<'_>, i: usize, b: MatRef<'_>) -> f32 {
    let k = a.cols;
    let a_start = i * a.row_stride;
    if a.col_stride == 1 && b.row_stride == 1 {
        return crate::cpu::math::dot(&a.data[a_start..a_start + k], &b.data[..k]);
    }
    (0..k)
        .map(|p| a.data[a_start + p * a.col_stride] * b.data[p * b.row_stride])
        .sum()
}

/// Most elements of C for which `gemm_dots` is used instead of packing.
pub(super) const DOTS_MAX_OUTPUTS: usize = 64;
/// Shortest k for which `gemm_dots` pays.
pub(super) const DOTS_MIN_K: usize = 1024;
/// Steps of k per task of `gemm_dots`: a chunk of every row of A and column of B (up to 64 of
/// them, 16 KiB each) stays in L2 while all the dot products over it are taken.
const DOTS_K_CHUNK: usize = 4096;

/// Whether `gemm_dots` can take this product: a small C (m n <= 64) over a long k, with the rows
/// of A and the columns of B each contiguous along k. The hypernetwork's backward has this
/// shape: d[1, h(t_i)] = dW_i . F_j over all d_in d_out weights, a [L, P] times [P, E+1] product
/// with P in the tens of thousands, where a packed kernel would pad the 4 x 9 output to a whole
/// register tile and waste nine tenths of its arithmetic.
pub(super) fn suits_dots(a: MatRef<'_>, b: MatRef<'_>) -> bool {
    a.rows * b.cols <= DOTS_MAX_OUTPUTS
        && a.cols >= DOTS_MIN_K
        && a.col_stride == 1
        && b.row_stride == 1
}

/// C = A B (or C += A B) as m n dot products, with k cut into fixed chunks: each chunk's m n
/// partial sums are one task, and the partials are added in chunk order, so the result does not
/// depend on how many threads ran the chunks.
///
/// Shapes: as `gemm`, with `suits_dots(a, b)`.
pub(super) fn gemm_dots(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
) {
    use rayon::prelude::*;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let chunk = |start: usize| -> Vec<f32> {
        let end = (start + DOTS_K_CHUNK).min(k);
        let mut sums = vec![0.0f32; m * n];
        for i in 0..m {
            let a_row = &a.data[i * a.row_stride + start..i * a.row_stride + end];
            for j in 0..n {
                let b_col = &b.data[j * b.col_stride + start..j * b.col_stride + end];
                sums[i * n + j] = crate::cpu::math::dot(a_row, b_col);
            }
        }
        sums
    };
    let starts: Vec<usize> = (0..k).step_by(DOTS_K_CHUNK).collect();
    let partials: Vec<Vec<f32>> = if parallel {
        starts.par_iter().map(|&s| chunk(s)).collect()
    } else {
        starts.iter().map(|&s| chunk(s)).collect()
    };
    if !accumulate {
        zero_c(c, m, n, ldc);
    }
    for sums in &partials {
        for i in 0..m {
            for j in 0..n {
                c[i * ldc + j] += sums[i * n + j];
            }
        }
    }
}
