//! The AVX2 + FMA micro-kernel: a 6 x 16 tile of C in twelve 256-bit registers.
//!
//! Why 6 x 16: x86-64 has 16 ymm registers. A 16-wide row of the tile is two registers, so six
//! rows take 12 accumulators, plus 2 for the row of B and 1 for the broadcast element of A =
//! 15. Each step p then issues 12 FMAs against 8 loads (2 of B, 6 broadcasts of A), which keeps
//! both FMA pipes of a Zen 2 or Skylake core busy while the 2 load ports stay below their peak;
//! 12 independent accumulators also cover the FMA latency (5 cycles x 2 pipes = 10 in flight).
//! Tested on the dev machine (AMD EPYC Zen 2) by `tests::avx2_kernel_matches_reference` and by
//! the proptest `tests::packed_path_matches_reference`.

use super::kernel::KernelSpec;

/// Rows of the register tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) const MR: usize = 6;
/// Columns of the register tile: two 8-lane registers.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) const NR: usize = 16;

/// Whether this CPU has AVX2 and FMA (checked at run time: the binary targets any x86-64).
#[cfg(target_arch = "x86_64")]
pub(super) fn is_available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn is_available() -> bool {
    false
}

/// The kernel's tile size and entry point; only called once `is_available()` holds.
#[cfg(target_arch = "x86_64")]
pub(super) fn spec() -> KernelSpec {
    KernelSpec::new::<MR, NR>(x86::kernel_6x16)
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn spec() -> KernelSpec {
    unreachable!("AVX2 exists only on x86-64, and is_available() said so")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// C tile = (or +=) A panel x B panel; see `MicroKernel` for the contract.
    ///
    /// Shapes: a [kc, 6], b [kc, 16], C a 6 x 16 tile at `c` with row stride `ldc`.
    ///
    /// # Safety
    /// The `MicroKernel` contract; in particular the CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_6x16(
        a: &[f32],
        b: &[f32],
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller guarantees the 6 x 16 tile at c (stride ldc) lies inside C.
        unsafe { prefetch_tile(c, ldc) };
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for (a_col, b_row) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            // SAFETY: b_row holds NR = 16 floats and the two loads read 8 each.
            let (b_lo, b_hi) = unsafe {
                let p = b_row.as_ptr();
                (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
            };
            for (acc_row, &a_i) in acc.iter_mut().zip(a_col) {
                let a_i = _mm256_set1_ps(a_i);
                acc_row[0] = _mm256_fmadd_ps(a_i, b_lo, acc_row[0]);
                acc_row[1] = _mm256_fmadd_ps(a_i, b_hi, acc_row[1]);
            }
        }
        // SAFETY: the caller guarantees the 6 x 16 tile at c (stride ldc) is ours to write.
        unsafe { store_tile(&acc, c, ldc, accumulate) };
    }

    /// Asks for the C tile to be brought into L1 while the k loop runs: C is read and written
    /// only at the end, and its rows, `ldc` apart, are a pattern the hardware prefetcher misses.
    ///
    /// A row of the tile is 64 bytes, which straddles two cache lines unless C is aligned, so
    /// the first and the last float of each row are prefetched.
    ///
    /// # Safety
    /// `c` points to MR rows of NR floats, `ldc` apart (prefetching never faults, but the
    /// address arithmetic must stay inside the allocation).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn prefetch_tile(c: *mut f32, ldc: usize) {
        for i in 0..MR {
            // SAFETY: the first and last float of row i lie inside the tile.
            unsafe {
                let row = c.add(i * ldc);
                _mm_prefetch::<_MM_HINT_T0>(row.cast::<i8>());
                _mm_prefetch::<_MM_HINT_T0>(row.add(NR - 1).cast::<i8>());
            }
        }
    }

    /// Writes (or adds) the accumulators to the C tile.
    ///
    /// # Safety
    /// `c` points to MR rows of NR writable floats, `ldc` apart; the CPU has AVX2.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store_tile(acc: &[[__m256; 2]; MR], c: *mut f32, ldc: usize, accumulate: bool) {
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: row i of the tile is c[i * ldc .. i * ldc + 16], inside the caller's tile.
            unsafe {
                let lo = c.add(i * ldc);
                let hi = lo.add(8);
                let (mut v_lo, mut v_hi) = (row[0], row[1]);
                if accumulate {
                    v_lo = _mm256_add_ps(v_lo, _mm256_loadu_ps(lo));
                    v_hi = _mm256_add_ps(v_hi, _mm256_loadu_ps(hi));
                }
                _mm256_storeu_ps(lo, v_lo);
                _mm256_storeu_ps(hi, v_hi);
            }
        }
    }
}
