//! Single-precision matrix multiply (GEMM) for the CPU backend.
//!
//! [`gemm`] computes C = A B or C += A B for f32 matrices given as strided views, so a transposed
//! operand costs nothing: A^T is A with its two strides (and its two sizes) swapped.
//!
//! The design follows BLIS (Van Zee and van de Geijn, "BLIS: A Framework for Rapidly
//! Instantiating BLAS Functionality", 2015). Five loops wrap a small register-tile kernel, and
//! each loop keeps one operand resident in one level of the cache:
//!
//! ```text
//! for jc in 0..n step NC                      B block [KC, NC] packed once, stays in L3
//!   for pc in 0..k step KC
//!     pack B[pc.., jc..] into NR-column panels
//!     for ic in 0..m step MC                  A block [MC, KC] packed, stays in L2
//!       pack A[ic.., pc..] into MR-row panels
//!       for jr in 0..NC step NR               B panel [KC, NR] stays in L1
//!         for ir in 0..MC step MR
//!           micro-kernel: C[ir.., jr..] (an MR x NR tile held in registers) += A panel B panel
//! ```
//!
//! Files: `kernel.rs` picks the micro-kernel for this CPU (`avx512.rs`, `avx2.rs`, `scalar.rs`);
//! `pack.rs` copies operands into panels; `driver.rs` runs the loops above, and splits them over
//! rayon threads; `small.rs` has the direct loops for tiny and matrix-vector products;
//! `reference.rs` is the slow f64 reference that the tests (`tests.rs`) and benchmarks share.

#![warn(unsafe_op_in_unsafe_fn)]

mod avx2;
mod avx512;
mod driver;
mod kernel;
mod pack;
mod reference;
mod scalar;
mod small;
#[cfg(test)]
mod tests;

pub use kernel::Kernel;
pub use reference::gemm_reference;

/// Below this many multiply-adds (m * n * k), [`gemm`] skips packing and runs a direct loop.
/// Packing and the kernel dispatch cost about half a microsecond whatever the size; measured on
/// Zen 2 with the AVX2 kernel, the direct loop wins up to about 10^3 and loses from 16^3 on.
const SMALL_GEMM_MACS: usize = 12 * 12 * 12;

/// Below this many multiply-adds, [`Parallelism::Rayon`] runs on one thread. A rayon fork-join
/// costs a couple of microseconds; measured on the 2-core dev machine, two threads break even at
/// 48^3 and win by 15% at 64^3 (8 us on one core), and by 1.7x at 128^3.
const PARALLEL_MIN_MACS: usize = 64 * 64 * 64;

/// A read-only strided matrix over an f32 slice: element (i, j) is
/// `data[i * row_stride + j * col_stride]`.
///
/// Row-major storage has `col_stride == 1`; the transpose of a row-major matrix has
/// `row_stride == 1`. Any other strides (a column slice, every other row) work too.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major matrix. Shapes: data [rows, cols].
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        let (row_stride, col_stride) = (cols, 1);
        MatRef {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// The transposed view: no data moves, the sizes and the strides swap.
    /// Shapes: [rows, cols] -> [cols, rows].
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Element (i, j). Shapes: i < rows, j < cols.
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row_stride + j * self.col_stride]
    }

    /// Panics unless every element (i, j) with i < rows, j < cols lies inside `data`
    /// (with the index computed without overflow). An empty matrix is always valid.
    fn assert_in_bounds(&self, name: &str) {
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(r, c)| r.checked_add(c));
        assert!(
            last.is_some_and(|last| last < self.data.len()),
            "gemm: {name} [{}, {}] with strides ({}, {}) reaches past its {} elements",
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
            self.data.len()
        );
    }
}

/// Whether the gemm may split its work over the current rayon pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    Sequential,
    Rayon,
}

/// C = A B (`accumulate == false`) or C += A B (`accumulate == true`), with the fastest
/// micro-kernel this CPU supports ([`Kernel::detect`]).
///
/// Shapes: A [m, k], B [k, n], C [m, n] row-major with leading dimension `ldc` (>= n):
/// C(i, j) is `c[i * ldc + j]`; the elements between n and ldc are left untouched.
///
/// With `Parallelism::Rayon` the work is split over `rayon::current_num_threads()` threads (so
/// a one-thread pool runs it sequentially); products under 64^3 multiply-adds, and
/// matrix-vector products (m == 1 or n == 1), run on the calling thread. k == 0 sets C to zero
/// (or leaves it as is when accumulating). The result does not depend on the thread count: each
/// element is always summed by one thread in the same order.
///
/// Preconditions, checked with `assert!` (the tensor layer validates shapes first, so a failure
/// here is an internal bug): `a.cols == b.rows`, every element of A and B lies inside its
/// slice, `ldc >= n`, and `c` holds at least `(m - 1) * ldc + n` elements.
///
/// Memory: each thread that runs this keeps its packing buffers in thread-local storage and
/// reuses them across calls. They grow to at most KC x (MC + NC) floats (about 4 MiB with the
/// AVX2 kernel, see `driver.rs`) and are never shrunk.
pub fn gemm(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    par: Parallelism,
) {
    gemm_with_kernel(Kernel::detect(), a, b, c, ldc, accumulate, par);
}

/// [`gemm`] with a chosen micro-kernel, for tests and benchmarks that compare kernels. Tiny
/// products and matrix-vector products take the direct loop whatever the kernel.
///
/// Shapes: as [`gemm`]. Panics if `kernel` cannot run on this CPU ([`Kernel::is_available`]).
pub fn gemm_with_kernel(
    kernel: Kernel,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    par: Parallelism,
) {
    assert!(
        kernel.is_available(),
        "gemm: kernel {kernel:?} is not supported by this CPU"
    );
    assert_gemm_args(a, b, c, ldc);
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let macs = m.saturating_mul(n).saturating_mul(k);
    if macs < SMALL_GEMM_MACS || m == 1 || n == 1 {
        small::gemm_small(a, b, c, ldc, accumulate);
        return;
    }
    if small::suits_dots(a, b) {
        let parallel = par == Parallelism::Rayon && macs >= PARALLEL_MIN_MACS;
        small::gemm_dots(a, b, c, ldc, accumulate, parallel);
        return;
    }
    let threads = match par {
        Parallelism::Rayon if macs >= PARALLEL_MIN_MACS => rayon::current_num_threads(),
        _ => 1,
    };
    let blocking = driver::Blocking::for_kernel(kernel);
    driver::gemm_packed(kernel, blocking, a, b, c, ldc, accumulate, threads);
}

/// Checks the preconditions shared by every gemm entry point (see [`gemm`]).
fn assert_gemm_args(a: MatRef<'_>, b: MatRef<'_>, c: &[f32], ldc: usize) {
    assert!(
        a.cols == b.rows,
        "gemm: inner sizes differ: A [{}, {}] times B [{}, {}]",
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    a.assert_in_bounds("A");
    b.assert_in_bounds("B");
    let (m, n) = (a.rows, b.cols);
    assert!(ldc >= n, "gemm: ldc {ldc} is smaller than n {n}");
    if m > 0 && n > 0 {
        let needed = (m - 1).checked_mul(ldc).and_then(|x| x.checked_add(n));
        assert!(
            needed.is_some_and(|needed| needed <= c.len()),
            "gemm: C [{m}, {n}] with ldc {ldc} needs more than its {} elements",
            c.len()
        );
    }
}

/// Sets the [m, n] block of C (leading dimension ldc) to zero, for the k == 0 product.
fn zero_c(c: &mut [f32], m: usize, n: usize, ldc: usize) {
    for row in c.chunks_mut(ldc).take(m) {
        row[..n].fill(0.0);
    }
}
