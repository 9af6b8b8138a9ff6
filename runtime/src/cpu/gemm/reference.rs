//! The slow, obviously correct GEMM that the tests and benchmarks compare against.

use super::{assert_gemm_args, MatRef};

/// C = A B (`accumulate == false`) or C += A B, one dot product per element, summed in f64 and
/// rounded to f32 once. No blocking, no SIMD, no threads: trust comes from simplicity.
///
/// Shapes: A [m, k], B [k, n], C [m, n] with leading dimension `ldc`; same preconditions as
/// `gemm`.
pub fn gemm_reference(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    assert_gemm_args(a, b, c, ldc);
    let (m, k, n) = (a.rows, a.cols, b.cols);
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| f64::from(a.at(i, p)) * f64::from(b.at(p, j)))
                .sum();
            let c_ij = &mut c[i * ldc + j];
            let start = if accumulate { f64::from(*c_ij) } else { 0.0 };
            *c_ij = (start + dot) as f32;
        }
    }
}
