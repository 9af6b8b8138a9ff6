//! Choosing the micro-kernel: the register tile that does all the arithmetic.
//!
//! Every micro-kernel has the same contract (see [`MicroKernel`]); they differ in the tile size
//! MR x NR, which is set by the SIMD width and the number of vector registers.

use std::ops::Range;
use std::sync::OnceLock;

use super::pack::{pack_a_block, pack_b_block};
use super::{avx2, avx512, scalar, MatRef};

/// Largest MR * NR over all kernels: the size of the scratch tile used for edge tiles.
pub(super) const MAX_TILE: usize = avx512::MR * avx512::NR;

/// A micro-kernel: C tile = A panel x B panel (`accumulate == false`) or C tile += A panel x B
/// panel (`accumulate == true`), where kc = `a.len() / MR`.
///
/// Shapes: a [kc, MR] (column p of the A tile, contiguous), b [kc, NR] (row p of the B tile,
/// contiguous), C an MR x NR tile at `c` with row stride `ldc`.
///
/// # Safety
/// `c` must point to MR rows of NR writable floats, `ldc` apart, that nothing else reads or
/// writes during the call; `a.len() == kc * MR` and `b.len() == kc * NR`; and the CPU must
/// support the kernel's instructions ([`Kernel::is_available`]).
pub(super) type MicroKernel =
    unsafe fn(a: &[f32], b: &[f32], c: *mut f32, ldc: usize, accumulate: bool);

/// Packs A[rows, ks] into MR-row panels: `pack::pack_a_block` for the kernel's MR.
pub(super) type PackA = fn(a: MatRef<'_>, rows: Range<usize>, ks: Range<usize>, dst: &mut [f32]);

/// Packs B[ks, cols] into NR-column panels: `pack::pack_b_block` for the kernel's NR.
pub(super) type PackB = fn(b: MatRef<'_>, ks: Range<usize>, cols: Range<usize>, dst: &mut [f32]);

/// A micro-kernel together with its tile size and the packing routines for that size.
#[derive(Clone, Copy)]
pub(super) struct KernelSpec {
    pub mr: usize,
    pub nr: usize,
    pub run: MicroKernel,
    pub pack_a: PackA,
    pub pack_b: PackB,
}

impl KernelSpec {
    /// The spec of a kernel with an MR x NR tile.
    pub const fn new<const MR: usize, const NR: usize>(run: MicroKernel) -> KernelSpec {
        KernelSpec {
            mr: MR,
            nr: NR,
            run,
            pack_a: pack_a_block::<MR>,
            pack_b: pack_b_block::<NR>,
        }
    }
}

/// The micro-kernels, from the most portable to the widest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, 4 x 8 tile; runs everywhere (the compiler may vectorise it).
    Scalar,
    /// x86-64 AVX2 + FMA, 6 x 16 tile (8 lanes of f32 per register).
    Avx2Fma,
    /// x86-64 AVX-512F, 12 x 32 tile (16 lanes of f32 per register).
    Avx512,
}

impl Kernel {
    /// Every kernel, available on this CPU or not.
    pub const ALL: [Kernel; 3] = [Kernel::Scalar, Kernel::Avx2Fma, Kernel::Avx512];

    /// The widest kernel this CPU can run; detected once per process.
    pub fn detect() -> Kernel {
        static DETECTED: OnceLock<Kernel> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let mut widest_first = Kernel::ALL.into_iter().rev();
            widest_first
                .find(|k| k.is_available())
                .unwrap_or(Kernel::Scalar)
        })
    }

    /// Whether this CPU supports the kernel's instructions.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            Kernel::Avx2Fma => avx2::is_available(),
            Kernel::Avx512 => avx512::is_available(),
        }
    }

    /// The kernel's tile size and entry point. Panics if the CPU cannot run it, which is what
    /// makes calling `run` sound.
    pub(super) fn spec(self) -> KernelSpec {
        assert!(
            self.is_available(),
            "gemm: kernel {self:?} is not supported by this CPU"
        );
        match self {
            Kernel::Scalar => scalar::SPEC,
            Kernel::Avx2Fma => avx2::spec(),
            Kernel::Avx512 => avx512::spec(),
        }
    }
}
