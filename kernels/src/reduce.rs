//! Launchers of `kernels/cuda/reduce.cu`: the sum over the last dim, and the sum of squares of a
//! flat buffer (the global gradient norm, squared) in two deterministic passes.
//!
//! Each launcher has an allocating form and an `_into` form that writes a buffer the caller owns
//! (the tests poison it first). Outputs are overwritten, never accumulated. Both reductions add
//! in an order fixed by the launch configuration alone, so a rerun gives the same bits.

use crate::check::{bytes_of, check_args, Arg};
use crate::elementwise::ElemType;
use crate::error::{cuda, Result};
use crate::gpu::DeviceBuffer;
use crate::module::Module;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Threads per block of both reductions: 8 warps striding over a row keep enough loads in
/// flight, and the block sum's last step is then one warp adding 8 values.
pub const REDUCE_BLOCK: u32 = 256;

/// The most blocks of a reduction: about what the H200 holds at once (132 SMs x 8 resident
/// blocks of 256 threads = 1056), rounded down to a power of two. For the sum of squares it
/// also bounds the partials, which the second pass's one block adds with 4 per thread.
pub const REDUCE_MAX_BLOCKS: u32 = 1024;

/// The first pass of the sum of squares (the second is `sum_fwd_f32` on its partials).
pub const SUMSQ_KERNEL: &str = "sumsq_fwd_f32";

pub fn sum_kernel(ty: ElemType) -> &'static str {
    match ty {
        ElemType::F32 => "sum_fwd_f32",
        ElemType::Bf16 => "sum_fwd_bf16",
    }
}

/// The configuration of a sum over `rows` rows: one block of 256 threads per row, at most
/// 1024 blocks (past that each block strides over rows); `None` for no rows.
pub fn sum_config(rows: usize) -> Option<LaunchConfig> {
    if rows == 0 {
        return None;
    }
    let blocks = rows.min(REDUCE_MAX_BLOCKS as usize) as u32;
    Some(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (REDUCE_BLOCK, 1, 1),
        shared_mem_bytes: 0, // the warp sums are static shared memory
    })
}

/// The configuration of the sum of squares' first pass over `n` elements: one element per
/// thread, max(1, min(ceil(n / 256), 1024)) blocks; one block even for n = 0, so that the
/// second pass always has a partial (of 0) to read.
pub fn sumsq_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(REDUCE_BLOCK as usize);
    let blocks = blocks.clamp(1, REDUCE_MAX_BLOCKS as usize) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (REDUCE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// y[r] = sum over c of x[r, c], accumulated in f32.
///
/// Shapes: x [rows, D] (ty) -> y [rows] (f32)
pub fn sum_fwd(ty: ElemType, x: &DeviceBuffer, rows: usize, d: usize) -> Result<DeviceBuffer> {
    let mut y = x.gpu().alloc(bytes_of(sum_kernel(ty), &[rows], 4)?)?;
    sum_fwd_into(&mut y, ty, x, rows, d)?;
    Ok(y)
}

/// `sum_fwd` into `y` (overwritten).
///
/// Shapes: y [rows] (f32, written), x [rows, D] (ty)
pub fn sum_fwd_into(
    y: &mut DeviceBuffer,
    ty: ElemType,
    x: &DeviceBuffer,
    rows: usize,
    d: usize,
) -> Result<()> {
    let name = sum_kernel(ty);
    let args = [
        Arg::new("y", y, bytes_of(name, &[rows], 4)?),
        Arg::new("x", x, bytes_of(name, &[rows, d], ty.size())?),
    ];
    check_args(name, &args)?;
    let Some(cfg) = sum_config(rows) else {
        return Ok(());
    };
    let gpu = x.gpu().clone();
    let (rows, d) = (rows as u64, d as u64);
    let f = gpu.function(Module::Reduce, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(y.slice_mut()).arg(x.slice()).arg(&rows).arg(&d);
    // The arguments are the kernel's (float* y, const T* x, u64 rows, u64 d); y holds
    // rows f32s and x rows D elements of T (checked above); y is borrowed mutably, so it is not
    // x; block b writes y[r] only for its rows r < rows and reads x below rows D.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

/// The sum of x[i]^2 over the n elements, as one f32 on the device (the squared global
/// gradient norm, read by the clipping step).
///
/// Shapes: x [n] (f32) -> out [1] (f32)
pub fn sum_squares(x: &DeviceBuffer, n: usize) -> Result<DeviceBuffer> {
    let mut out = x.gpu().alloc(4)?;
    sum_squares_into(&mut out, x, n)?;
    Ok(out)
}

/// `sum_squares` into `out` (overwritten). Allocates the per-block partials (from the cache).
///
/// Shapes: out [1] (f32, written), x [n] (f32)
pub fn sum_squares_into(out: &mut DeviceBuffer, x: &DeviceBuffer, n: usize) -> Result<()> {
    let args = [
        Arg::new("out", out, 4),
        Arg::new("x", x, bytes_of(SUMSQ_KERNEL, &[n], 4)?),
    ];
    check_args(SUMSQ_KERNEL, &args)?;
    let cfg = sumsq_config(n);
    let blocks = cfg.grid_dim.0 as usize;
    let gpu = x.gpu().clone();
    let mut partials = gpu.alloc(blocks * 4)?;
    // pass 1: one partial per block
    let n = n as u64;
    let f = gpu.function(Module::Reduce, SUMSQ_KERNEL)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(partials.slice_mut()).arg(x.slice()).arg(&n);
    // The arguments are the kernel's (float* partials, const float* x, u64 n); x holds
    // n f32s (checked above) and partials one f32 per block of the grid, the only index block b
    // writes; partials is a fresh buffer, so it is not x.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    // pass 2: one block adds the partials, as a single row (ordered after pass 1 on the stream)
    sum_fwd_into(out, ElemType::F32, &partials, 1, blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_a_launcher_names_is_in_the_ptx() {
        let entries = Module::Reduce.entries();
        let names = [
            sum_kernel(ElemType::F32),
            sum_kernel(ElemType::Bf16),
            SUMSQ_KERNEL,
        ];
        for name in &names {
            assert!(entries.contains(name), "{name} is not in reduce.ptx");
        }
        assert_eq!(entries.len(), names.len(), "reduce.ptx holds {entries:?}");
    }

    #[test]
    fn the_sum_has_a_block_per_row_up_to_the_cap() {
        assert!(sum_config(0).is_none());
        for (rows, blocks) in [(1, 1), (7, 7), (1024, 1024), (1025, 1024), (1 << 20, 1024)] {
            let cfg = sum_config(rows).unwrap();
            assert_eq!(cfg.grid_dim, (blocks, 1, 1), "rows={rows}");
            assert_eq!(cfg.block_dim, (256, 1, 1));
        }
    }

    #[test]
    fn the_sum_of_squares_has_at_least_one_and_at_most_1024_partials() {
        let one_pass = 256 * 1024; // one element per thread at the cap
        let cases = [
            (0, 1),
            (1, 1),
            (255, 1),
            (256, 1),
            (257, 2),
            (one_pass, 1024),
            (one_pass + 1, 1024),
            (1 << 30, 1024),
        ];
        for (n, blocks) in cases {
            let cfg = sumsq_config(n);
            assert_eq!(cfg.grid_dim, (blocks, 1, 1), "n={n}");
            assert_eq!(cfg.block_dim, (256, 1, 1));
        }
        // the second pass sums the partials as one row: a single block
        assert_eq!(sum_config(1).unwrap().grid_dim, (1, 1, 1));
    }
}
