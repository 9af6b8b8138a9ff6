//! The direct loops for products not worth packing: tiny ones (see `SMALL_GEMM_MACS`) and
//! matrix-vector products, where packing would pad the vector to a whole MR- or NR-wide tile and
//! waste most of the arithmetic.

use super::{zero_c, MatRef};

/// Partial sums in `dot_contiguous`: 8 f32 lanes fill one AVX register (two SSE registers).
const DOT_LANES: usize = 8;

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
        return dot_contiguous(&a.data[a_start..a_start + k], &b.data[..k]);
    }
    (0..k)
        .map(|p| a.data[a_start + p * a.col_stride] * b.data[p * b.row_stride])
        .sum()
}

/// `sum_p x[p] y[p]` over two contiguous runs of equal length, in DOT_LANES independent partial
/// sums that the compiler keeps in vector registers (one running sum would be a chain of
/// dependent adds, one per element).
fn dot_contiguous(x: &[f32], y: &[f32]) -> f32 {
    let mut partial = [0.0f32; DOT_LANES];
    let (x_chunks, y_chunks) = (x.chunks_exact(DOT_LANES), y.chunks_exact(DOT_LANES));
    let tail: f32 = x_chunks
        .remainder()
        .iter()
        .zip(y_chunks.remainder())
        .map(|(p, q)| p * q)
        .sum();
    for (xs, ys) in x_chunks.zip(y_chunks) {
        for ((s, &p), &q) in partial.iter_mut().zip(xs).zip(ys) {
            *s += p * q;
        }
    }
    partial.iter().sum::<f32>() + tail
}
