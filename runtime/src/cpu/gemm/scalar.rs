//! The portable micro-kernel: a 4 x 8 tile of C in plain Rust.
//!
//! It is the fallback for CPUs without AVX2 (and for non-x86 targets). 4 x 8 = 32 accumulators
//! fit in the 16 SSE registers of x86-64 as 8 vectors of 4, or in 8 of the 32 NEON registers of
//! aarch64, when the compiler vectorises the inner loop; written as plain loops over fixed-size
//! arrays so that it can. Tested by `tests::scalar_kernel_matches_reference` and by the proptest
//! `tests::packed_path_matches_reference`, which force it.

use super::kernel::KernelSpec;

/// Rows of the register tile.
const MR: usize = 4;
/// Columns of the register tile.
const NR: usize = 8;

/// The kernel's tile size and entry point.
pub(super) const SPEC: KernelSpec = KernelSpec::new::<MR, NR>(kernel_4x8);

/// C tile = (or +=) A panel x B panel; see `MicroKernel` for the contract.
///
/// Shapes: a [kc, 4], b [kc, 8], C a 4 x 8 tile at `c` with row stride `ldc`.
///
/// # Safety
/// The `MicroKernel` contract (this kernel needs no special instructions).
unsafe fn kernel_4x8(a: &[f32], b: &[f32], c: *mut f32, ldc: usize, accumulate: bool) {
    let mut acc = [[0.0f32; NR]; MR];
    for (a_col, b_row) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (acc_row, &a_i) in acc.iter_mut().zip(a_col) {
            for (acc_ij, &b_j) in acc_row.iter_mut().zip(b_row) {
                // Not f32::mul_add: without an FMA unit that is a slow library call.
                *acc_ij += a_i * b_j;
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate() {
        // SAFETY: the caller guarantees row i of the tile, c[i * ldc .. i * ldc + NR], is ours
        // to write and that nothing else touches it during the call.
        let c_row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) };
        for (c_ij, &v) in c_row.iter_mut().zip(acc_row) {
            *c_ij = if accumulate { *c_ij + v } else { v };
        }
    }
}
