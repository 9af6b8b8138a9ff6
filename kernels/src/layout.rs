//! Launchers of `kernels/cuda/layout.cu`: the f32 <-> bf16 casts and the transpose of the last
//! two dims of a batch of matrices.
//!
//! Each launcher has an allocating form and an `_into` form that writes a buffer the caller owns
//! (the tests poison it first). Outputs are overwritten, never accumulated.

use crate::check::{bytes_of, check_args, launch_error, Arg};
use crate::elementwise::ElemType;
use crate::error::{cuda, Result};
use crate::gpu::DeviceBuffer;
use crate::launch::{elementwise_config, MAX_GRID_X, MAX_GRID_YZ};
use crate::module::Module;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// The side of a transpose tile: a warp's width, so one tile row is one coalesced access.
pub const TILE: u32 = 32;

/// Thread rows of a transpose block: 32 x 8 = 256 threads, each moving TILE / 8 = 4 elements.
pub const TILE_ROWS: u32 = 8;

/// The two casts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cast {
    /// Rounded to nearest, ties to even (as `half::bf16::from_f32`).
    F32ToBf16,
    /// Exact.
    Bf16ToF32,
}

impl Cast {
    pub const ALL: [Cast; 2] = [Cast::F32ToBf16, Cast::Bf16ToF32];

    pub fn from(self) -> ElemType {
        match self {
            Cast::F32ToBf16 => ElemType::F32,
            Cast::Bf16ToF32 => ElemType::Bf16,
        }
    }

    pub fn to(self) -> ElemType {
        match self {
            Cast::F32ToBf16 => ElemType::Bf16,
            Cast::Bf16ToF32 => ElemType::F32,
        }
    }
}

/// The kernel of a cast: `cast_fwd_{from}_{to}`.
pub fn cast_kernel(cast: Cast) -> &'static str {
    match cast {
        Cast::F32ToBf16 => "cast_fwd_f32_bf16",
        Cast::Bf16ToF32 => "cast_fwd_bf16_f32",
    }
}

pub fn transpose_kernel(ty: ElemType) -> &'static str {
    match ty {
        ElemType::F32 => "transpose_fwd_f32",
        ElemType::Bf16 => "transpose_fwd_bf16",
    }
}

/// The configuration of a transpose of `batch` matrices of `rows` x `cols`: one block of
/// 32 x 8 threads per 32 x 32 tile, grid (ceil(C / 32), ceil(R / 32), batch); `None` when there
/// is nothing to move. A grid past CUDA's y or z limit (R > 65535 x 32, batch > 65535) is
/// refused rather than looped over: no use in this model comes near it.
pub fn transpose_config(
    kernel: &str,
    batch: usize,
    rows: usize,
    cols: usize,
) -> Result<Option<LaunchConfig>> {
    if batch == 0 || rows == 0 || cols == 0 {
        return Ok(None);
    }
    let tiles = |n: usize| n.div_ceil(TILE as usize);
    let max = MAX_GRID_YZ;
    if tiles(rows) > max || batch > max || tiles(cols) > MAX_GRID_X {
        let msg = format!(
            "[{batch}, {rows}, {cols}] needs a grid of ({}, {}, {batch}) tiles; \
             the grid's y and z stop at {max}",
            tiles(cols),
            tiles(rows)
        );
        return Err(launch_error(kernel, msg));
    }
    Ok(Some(LaunchConfig {
        grid_dim: (tiles(cols) as u32, tiles(rows) as u32, batch as u32),
        block_dim: (TILE, TILE_ROWS, 1),
        shared_mem_bytes: 0, // the tile is static shared memory
    }))
}

/// y = x as another dtype.
///
/// Shapes: x [n] (cast.from()) -> y [n] (cast.to())
pub fn cast_fwd(cast: Cast, x: &DeviceBuffer, n: usize) -> Result<DeviceBuffer> {
    let bytes = bytes_of(cast_kernel(cast), &[n], cast.to().size())?;
    let mut y = x.gpu().alloc(bytes)?;
    cast_fwd_into(&mut y, cast, x, n)?;
    Ok(y)
}

/// `cast_fwd` into `y` (overwritten).
///
/// Shapes: y [n] (cast.to(), written), x [n] (cast.from())
pub fn cast_fwd_into(y: &mut DeviceBuffer, cast: Cast, x: &DeviceBuffer, n: usize) -> Result<()> {
    let name = cast_kernel(cast);
    let y_bytes = bytes_of(name, &[n], cast.to().size())?;
    let x_bytes = bytes_of(name, &[n], cast.from().size())?;
    check_args(
        name,
        &[Arg::new("y", y, y_bytes), Arg::new("x", x, x_bytes)],
    )?;
    let Some(cfg) = elementwise_config(n) else {
        return Ok(());
    };
    let (gpu, n) = (x.gpu().clone(), n as u64);
    let f = gpu.function(Module::Layout, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(y.slice_mut()).arg(x.slice()).arg(&n);
    // The arguments are the kernel's (To* y, const From* x, u64 n), in that order; y
    // holds n elements of the target type and x n of the source type (checked above); they are
    // distinct (y is borrowed mutably); the kernel touches indices below n only.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

/// y[b] = x[b]^T for each matrix b of the batch.
///
/// Shapes: x [batch, R, C] -> y [batch, C, R]
pub fn transpose_fwd(
    ty: ElemType,
    x: &DeviceBuffer,
    batch: usize,
    rows: usize,
    cols: usize,
) -> Result<DeviceBuffer> {
    let bytes = bytes_of(transpose_kernel(ty), &[batch, rows, cols], ty.size())?;
    let mut y = x.gpu().alloc(bytes)?;
    transpose_fwd_into(&mut y, ty, x, batch, rows, cols)?;
    Ok(y)
}

/// `transpose_fwd` into `y` (overwritten).
///
/// Shapes: y [batch, C, R] (written), x [batch, R, C]
pub fn transpose_fwd_into(
    y: &mut DeviceBuffer,
    ty: ElemType,
    x: &DeviceBuffer,
    batch: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let name = transpose_kernel(ty);
    let bytes = bytes_of(name, &[batch, rows, cols], ty.size())?;
    check_args(name, &[Arg::new("y", y, bytes), Arg::new("x", x, bytes)])?;
    let Some(cfg) = transpose_config(name, batch, rows, cols)? else {
        return Ok(());
    };
    let gpu = x.gpu().clone();
    let (rows, cols) = (rows as u64, cols as u64);
    let f = gpu.function(Module::Layout, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(y.slice_mut())
        .arg(x.slice())
        .arg(&rows)
        .arg(&cols);
    // The arguments are the kernel's (T* y, const T* x, u64 rows, u64 cols); both
    // buffers hold batch R C elements of T (checked), and y is borrowed mutably so it is not x.
    // Block z handles matrix z < batch, and every index is bounds-checked against R and C.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_a_launcher_names_is_in_the_ptx() {
        let entries = Module::Layout.entries();
        let mut names: Vec<&str> = Cast::ALL.iter().map(|&c| cast_kernel(c)).collect();
        names.extend(ElemType::ALL.iter().map(|&ty| transpose_kernel(ty)));
        for name in &names {
            assert!(entries.contains(name), "{name} is not in layout.ptx");
        }
        assert_eq!(entries.len(), names.len(), "layout.ptx holds {entries:?}");
    }

    #[test]
    fn casts_go_between_f32_and_bf16() {
        for c in Cast::ALL {
            assert_ne!(c.from(), c.to());
            assert!(cast_kernel(c).contains(match c.from() {
                ElemType::F32 => "_f32_",
                ElemType::Bf16 => "_bf16_",
            }));
        }
    }

    #[test]
    fn the_transpose_grid_has_one_block_per_tile() {
        assert!(transpose_config("t", 0, 5, 5).unwrap().is_none());
        assert!(transpose_config("t", 3, 0, 5).unwrap().is_none());
        assert!(transpose_config("t", 3, 5, 0).unwrap().is_none());
        // (batch, R, C) -> grid (tiles of C, tiles of R, batch): single, exact, partial tiles
        let cases = [
            ((1, 1, 1), (1, 1, 1)),
            ((1, 32, 32), (1, 1, 1)),
            ((1, 33, 31), (1, 2, 1)),
            ((7, 100, 65), (3, 4, 7)),
            ((65_535, 1, 1), (1, 1, 65_535)),
            ((1, 65_535 * 32, 1), (1, 65_535, 1)),
        ];
        for ((b, r, c), grid) in cases {
            let cfg = transpose_config("t", b, r, c).unwrap().unwrap();
            assert_eq!(cfg.grid_dim, grid, "[{b}, {r}, {c}]");
            assert_eq!(cfg.block_dim, (32, 8, 1));
            // every element lies in some tile
            assert!(grid.0 as usize * 32 >= c && grid.1 as usize * 32 >= r);
        }
    }

    #[test]
    fn a_transpose_past_the_grid_limits_is_refused() {
        for (b, r) in [(65_536, 1), (1, 65_535 * 32 + 1)] {
            let err = transpose_config("transpose_fwd_f32", b, r, 4).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with("transpose_fwd_f32: ") && msg.contains("65535"),
                "{msg}"
            );
        }
    }
}
