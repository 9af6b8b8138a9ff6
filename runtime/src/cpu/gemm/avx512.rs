//! The AVX-512F micro-kernel: a 12 x 32 tile of C in twenty-four 512-bit registers.
//!
//! Why 12 x 32: x86-64 with AVX-512 has 32 zmm registers. A 32-wide row of the tile is two
//! registers, so twelve rows take 24 accumulators, plus 2 for the row of B and 1 for the
//! broadcast element of A = 27. Each step p issues 24 FMAs against 14 loads, and 24 independent
//! accumulators cover the FMA latency of two 512-bit pipes.
//!
//! UNTESTED on the development machine (AMD EPYC Zen 2 has no AVX-512): its test,
//! `tests::avx512_kernel_matches_reference`, returns early there and only runs on a CPU with
//! AVX-512F. The code mirrors the AVX2 kernel, which is tested, line for line.

use super::kernel::KernelSpec;

/// Rows of the register tile.
pub(super) const MR: usize = 12;
/// Columns of the register tile: two 16-lane registers.
pub(super) const NR: usize = 32;

/// Whether this CPU has AVX-512F (checked at run time: the binary targets any x86-64).
#[cfg(target_arch = "x86_64")]
pub(super) fn is_available() -> bool {
    is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn is_available() -> bool {
    false
}

/// The kernel's tile size and entry point; only called once `is_available()` holds.
#[cfg(target_arch = "x86_64")]
pub(super) fn spec() -> KernelSpec {
    KernelSpec::new::<MR, NR>(x86::kernel_12x32)
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn spec() -> KernelSpec {
    unreachable!("AVX-512 exists only on x86-64, and is_available() said so")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// Lanes of f32 in one zmm register.
    const LANES: usize = 16;

    /// C tile = (or +=) A panel x B panel; see `MicroKernel` for the contract.
    ///
    /// Shapes: a [kc, 12], b [kc, 32], C a 12 x 32 tile at `c` with row stride `ldc`.
    ///
    /// # Safety
    /// The `MicroKernel` contract; in particular the CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_12x32(
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller guarantees the 12 x 32 tile at c (stride ldc) lies inside C.
        unsafe { prefetch_tile(c, ldc) };
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for (a_col, b_row) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            // SAFETY: b_row holds NR = 32 floats and the two loads read 16 each.
            let (b_lo, b_hi) = unsafe {
                let p = b_row.as_ptr();
                (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(LANES)))
            };
            for (acc_row, &a_i) in acc.iter_mut().zip(a_col) {
                let a_i = _mm512_set1_ps(a_i);
                acc_row[0] = _mm512_fmadd_ps(a_i, b_lo, acc_row[0]);
                acc_row[1] = _mm512_fmadd_ps(a_i, b_hi, acc_row[1]);
            }
        }
        // SAFETY: the caller guarantees the 12 x 32 tile at c (stride ldc) is ours to write.
        unsafe { store_tile(&acc, c, ldc, accumulate) };
    }

    /// Asks for the C tile to be brought into L1 while the k loop runs (see the AVX2 kernel): a
    /// row of the tile is 128 bytes, so up to three cache lines, and the floats at 0, 16 and 31
    /// touch each of them.
    ///
    /// # Safety
    /// `c` points to MR rows of NR floats, `ldc` apart (prefetching never faults, but the
    /// address arithmetic must stay inside the allocation).
    #[target_feature(enable = "avx512f")]
    unsafe fn prefetch_tile(c: *mut f32, ldc: usize) {
        for i in 0..MR {
            for j in [0, LANES, NR - 1] {
                // SAFETY: float j of row i lies inside the tile.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + j).cast::<i8>()) };
            }
        }
    }

    /// Writes (or adds) the accumulators to the C tile.
    ///
    /// # Safety
    /// `c` points to MR rows of NR writable floats, `ldc` apart; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn store_tile(acc: &[[__m512; 2]; MR], c: *mut f32, ldc: usize, accumulate: bool) {
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: row i of the tile is c[i * ldc .. i * ldc + 32], inside the caller's tile.
            unsafe {
                let lo = c.add(i * ldc);
                let hi = lo.add(LANES);
                let (mut v_lo, mut v_hi) = (row[0], row[1]);
                if accumulate {
                    v_lo = _mm512_add_ps(v_lo, _mm512_loadu_ps(lo));
                    v_hi = _mm512_add_ps(v_hi, _mm512_loadu_ps(hi));
                }
                _mm512_storeu_ps(lo, v_lo);
                _mm512_storeu_ps(hi, v_hi);
            }
        }
    }
}
