//! Launchers of `kernels/cuda/norm.cu`: LayerNorm and RMSNorm over the last dim of a
//! [rows, D] buffer, forward and backward, f32 and bf16.
//!
//! Each launcher has an allocating form and an `_into` form that writes buffers the caller
//! owns (the tests poison them first, to catch a kernel that skips an element). Every output
//! is overwritten, never accumulated: dweight and dbias are the sums over this call's rows, and
//! a caller that accumulates a parameter's gradient over several calls adds them itself.
//!
//! - weight and bias are optional: `None` means weight 1 and bias 0 (the kernels take a null
//!   pointer), as in the runtime's `layer_norm_fwd`.
//! - mean and rstd, the per-row statistics the backward reads, are f32 whatever the dtype.
//! - dweight and dbias are reduced over the rows deterministically, without atomics: the
//!   launcher allocates an f32 scratch of [2, chunks, D] from the device's cache for the call,
//!   one kernel writes per-chunk column sums into it, and a second adds those in chunk order
//!   (norm.cu's header says why: a float atomicAdd's order, and so its last bits, would change
//!   from run to run).

use crate::check::{check_args, check_rows, Arg};
use crate::elementwise::ElemType;
use crate::error::{cuda, Result};
use crate::gpu::DeviceBuffer;
use crate::launch::MAX_GRID_X;
use crate::module::Module;
use cudarc::driver::{LaunchArgs, LaunchConfig, PushKernelArg};

/// Warps per block of the warp-per-row kernels (forward and dx): 4 warps, 128 threads. sm_90
/// keeps at most 32 blocks resident per SM, and 32 blocks of 4 warps still reach its 64 warps,
/// so small blocks cost no occupancy; they make a short batch spread further (1024 rows are
/// 256 blocks, about two per SM of the H200's 132) and waste at most 3 warps in the last one.
pub const NORM_WARPS_PER_BLOCK: u32 = 4;

/// Threads (one per column) of a block of the two dweight/dbias passes: 8 warps, each reading
/// 32 adjacent columns of a row in one coalesced load.
pub const DPARAMS_THREADS: u32 = 256;

/// The fewest rows one block of the first dweight/dbias pass adds: enough that its loop, not
/// the block's start and its two stores, is the work.
pub const DPARAMS_MIN_ROWS_PER_CHUNK: usize = 64;

/// The most chunks the rows are split into: bounds the scratch at 2 KiB per column and the
/// second pass's loop at 256 loads, while 256 chunks of D = 768 columns are still 768 blocks
/// for the first pass (about 6 per SM).
pub const DPARAMS_MAX_CHUNKS: usize = 256;

/// A null device pointer, for an absent weight, bias or output.
static NULL: u64 = 0;

/// Which normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Mean-centred, with an optional bias.
    Layer,
    /// Root-mean-square only.
    Rms,
}

/// The forward or dx kernel of `norm` for `ty`: `{layernorm|rmsnorm}_{fwd|bwd}_{dtype}`.
pub fn norm_kernel(norm: Norm, backward: bool, ty: ElemType) -> &'static str {
    use {ElemType::*, Norm::*};
    match (norm, backward, ty) {
        (Layer, false, F32) => "layernorm_fwd_f32",
        (Layer, false, Bf16) => "layernorm_fwd_bf16",
        (Layer, true, F32) => "layernorm_bwd_f32",
        (Layer, true, Bf16) => "layernorm_bwd_bf16",
        (Rms, false, F32) => "rmsnorm_fwd_f32",
        (Rms, false, Bf16) => "rmsnorm_fwd_bf16",
        (Rms, true, F32) => "rmsnorm_bwd_f32",
        (Rms, true, Bf16) => "rmsnorm_bwd_bf16",
    }
}

/// The first dweight/dbias pass (per-chunk column sums) for `ty`, shared by both norms.
pub fn dparams_partial_kernel(ty: ElemType) -> &'static str {
    match ty {
        ElemType::F32 => "norm_dparams_partial_f32",
        ElemType::Bf16 => "norm_dparams_partial_bf16",
    }
}

/// The second dweight/dbias pass (the sum over chunks) for `ty`.
pub fn dparams_sum_kernel(ty: ElemType) -> &'static str {
    match ty {
        ElemType::F32 => "norm_dparams_sum_f32",
        ElemType::Bf16 => "norm_dparams_sum_bf16",
    }
}

// ---- launch configurations ----

/// The configuration of a warp-per-row kernel over `rows` rows, `None` when there are none.
///
/// Grid: ceil(rows / 4) blocks of 4 warps (128 threads), no shared memory.
pub fn norm_config(rows: usize) -> Option<LaunchConfig> {
    if rows == 0 {
        return None;
    }
    let blocks = rows.div_ceil(NORM_WARPS_PER_BLOCK as usize) as u32;
    Some(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (NORM_WARPS_PER_BLOCK * 32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The two passes of the dweight/dbias reduction over [rows, D].
#[derive(Clone, Copy, Debug)]
pub struct DParamsConfig {
    /// The first pass, `None` when there are no rows (the sums are then zeros, which the
    /// second pass writes from an empty scratch).
    pub partial: Option<LaunchConfig>,
    /// The second pass.
    pub sum: LaunchConfig,
    /// Chunks of rows the first pass splits the rows into (0 without rows).
    pub chunks: usize,
    /// Rows per chunk (the last chunk may hold fewer).
    pub rows_per_chunk: usize,
}

/// The configuration of the dweight/dbias reduction of `rows` rows of `d >= 1` columns.
///
/// rows_per_chunk = max(64, ceil(rows / 256)), chunks = ceil(rows / rows_per_chunk) <= 256.
/// Grids: first pass (ceil(D / 256), chunks), second pass ceil(D / 256); 256 threads each.
pub fn dparams_config(rows: usize, d: usize) -> DParamsConfig {
    let rows_per_chunk = DPARAMS_MIN_ROWS_PER_CHUNK.max(rows.div_ceil(DPARAMS_MAX_CHUNKS));
    let chunks = rows.div_ceil(rows_per_chunk);
    let column_blocks = d.div_ceil(DPARAMS_THREADS as usize) as u32;
    let block_dim = (DPARAMS_THREADS, 1, 1);
    let partial = (chunks > 0).then_some(LaunchConfig {
        grid_dim: (column_blocks, chunks as u32, 1),
        block_dim,
        shared_mem_bytes: 0,
    });
    let sum = LaunchConfig {
        grid_dim: (column_blocks, 1, 1),
        block_dim,
        shared_mem_bytes: 0,
    };
    DParamsConfig {
        partial,
        sum,
        chunks,
        rows_per_chunk,
    }
}

// ---- argument helpers ----

/// Pushes a buffer, or a null pointer when it is absent.
fn arg_or_null<'a>(launch: &mut LaunchArgs<'a>, buf: Option<&'a DeviceBuffer>) {
    match buf {
        Some(b) => launch.arg(b.slice()),
        None => launch.arg(&NULL),
    };
}

/// Pushes an output buffer, or a null pointer when it is not wanted.
fn out_or_null<'a>(launch: &mut LaunchArgs<'a>, buf: Option<&'a mut DeviceBuffer>) {
    match buf {
        Some(b) => launch.arg(b.slice_mut()),
        None => launch.arg(&NULL),
    };
}

/// The checks of a [D] parameter, when present.
fn param_arg<'a>(name: &'static str, p: Option<&'a DeviceBuffer>, needs: usize) -> Option<Arg<'a>> {
    p.map(|p| Arg::new(name, p, needs))
}

/// The most rows a warp-per-row launch covers.
const NORM_MAX_ROWS: usize = MAX_GRID_X * NORM_WARPS_PER_BLOCK as usize;

// ---- forward ----

/// LayerNorm: y = (x - mean) rstd weight + bias, rstd = 1 / sqrt(var + eps) (biased
/// variance). Returns (y, mean, rstd).
///
/// Shapes: x [rows, D], weight [D], bias [D] -> y [rows, D], mean [rows] (f32), rstd [rows] (f32)
pub fn layer_norm_fwd(
    ty: ElemType,
    x: &DeviceBuffer,
    weight: Option<&DeviceBuffer>,
    bias: Option<&DeviceBuffer>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<(DeviceBuffer, DeviceBuffer, DeviceBuffer)> {
    let n = check_rows(norm_kernel(Norm::Layer, false, ty), rows, d, NORM_MAX_ROWS)?;
    let gpu = x.gpu();
    let mut y = gpu.alloc(n * ty.size())?;
    let mut mean = gpu.alloc(rows * 4)?;
    let mut rstd = gpu.alloc(rows * 4)?;
    layer_norm_fwd_into(
        &mut y, &mut mean, &mut rstd, ty, x, weight, bias, rows, d, eps,
    )?;
    Ok((y, mean, rstd))
}

/// `layer_norm_fwd` into `y`, `mean` and `rstd` (all three overwritten).
///
/// Shapes: y [rows, D], mean [rows] (f32), rstd [rows] (f32) (written); x [rows, D],
/// weight [D], bias [D]
#[allow(clippy::too_many_arguments)] // the kernel's own list: outputs, inputs, sizes
pub fn layer_norm_fwd_into(
    y: &mut DeviceBuffer,
    mean: &mut DeviceBuffer,
    rstd: &mut DeviceBuffer,
    ty: ElemType,
    x: &DeviceBuffer,
    weight: Option<&DeviceBuffer>,
    bias: Option<&DeviceBuffer>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    let name = norm_kernel(Norm::Layer, false, ty);
    let n = check_rows(name, rows, d, NORM_MAX_ROWS)?;
    let e = ty.size();
    let mut args = vec![
        Arg::new("x", x, n * e),
        Arg::new("y", y, n * e),
        Arg::new("mean", mean, rows * 4),
        Arg::new("rstd", rstd, rows * 4),
    ];
    args.extend(param_arg("weight", weight, d * e));
    args.extend(param_arg("bias", bias, d * e));
    check_args(name, &args)?;
    let Some(cfg) = norm_config(rows) else {
        return Ok(());
    };
    let (gpu, rows, d) = (x.gpu().clone(), rows as u64, d as u64);
    let f = gpu.function(Module::Norm, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(y.slice_mut())
        .arg(mean.slice_mut())
        .arg(rstd.slice_mut())
        .arg(x.slice());
    arg_or_null(&mut launch, weight);
    arg_or_null(&mut launch, bias);
    launch.arg(&rows).arg(&d).arg(&eps);
    // The arguments are the kernel's (T* y, float* mean, float* rstd, const T* x,
    // const T* weight, const T* bias, u64 rows, u64 d, float eps), in that order; y and x hold
    // rows * D values of T, mean and rstd rows floats, weight and bias D values or are null
    // (which the kernel reads as 1 and 0), all checked above; the outputs are borrowed mutably,
    // so they alias nothing; warps past the last row return before touching memory.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

/// RMSNorm: y = x rstd weight, rstd = 1 / sqrt(mean(x^2) + eps). Returns (y, rstd).
///
/// Shapes: x [rows, D], weight [D] -> y [rows, D], rstd [rows] (f32)
pub fn rms_norm_fwd(
    ty: ElemType,
    x: &DeviceBuffer,
    weight: Option<&DeviceBuffer>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    let n = check_rows(norm_kernel(Norm::Rms, false, ty), rows, d, NORM_MAX_ROWS)?;
    let gpu = x.gpu();
    let mut y = gpu.alloc(n * ty.size())?;
    let mut rstd = gpu.alloc(rows * 4)?;
    rms_norm_fwd_into(&mut y, &mut rstd, ty, x, weight, rows, d, eps)?;
    Ok((y, rstd))
}

/// `rms_norm_fwd` into `y` and `rstd` (both overwritten).
///
/// Shapes: y [rows, D], rstd [rows] (f32) (written); x [rows, D], weight [D]
#[allow(clippy::too_many_arguments)] // the kernel's own list: outputs, inputs, sizes
pub fn rms_norm_fwd_into(
    y: &mut DeviceBuffer,
    rstd: &mut DeviceBuffer,
    ty: ElemType,
    x: &DeviceBuffer,
    weight: Option<&DeviceBuffer>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    let name = norm_kernel(Norm::Rms, false, ty);
    let n = check_rows(name, rows, d, NORM_MAX_ROWS)?;
    let e = ty.size();
    let mut args = vec![
        Arg::new("x", x, n * e),
        Arg::new("y", y, n * e),
        Arg::new("rstd", rstd, rows * 4),
    ];
    args.extend(param_arg("weight", weight, d * e));
    check_args(name, &args)?;
    let Some(cfg) = norm_config(rows) else {
        return Ok(());
    };
    let (gpu, rows, d) = (x.gpu().clone(), rows as u64, d as u64);
    let f = gpu.function(Module::Norm, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(y.slice_mut())
        .arg(rstd.slice_mut())
        .arg(x.slice());
    arg_or_null(&mut launch, weight);
    launch.arg(&rows).arg(&d).arg(&eps);
    // The arguments are the kernel's (T* y, float* rstd, const T* x, const T* weight,
    // u64 rows, u64 d, float eps); y and x hold rows * D values of T, rstd rows floats, weight
    // D values or is null (read as 1), all checked above; the outputs alias nothing (borrowed
    // mutably); warps past the last row return at once.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

// ---- backward ----

/// LayerNorm backward. With xhat = (x - mean) rstd and g = dy weight:
///   dx = rstd (g - mean(g) - xhat mean(g xhat)),
///   dweight = sum over rows of dy xhat (when `weight` is given), dbias = sum over rows of dy
///   (when `has_bias`). Returns (dx, dweight, dbias), like the runtime's `layer_norm_bwd`.
///
/// Shapes: dy [rows, D], x [rows, D], weight [D], mean [rows], rstd [rows] -> dx [rows, D],
/// dweight [D], dbias [D]
#[allow(clippy::too_many_arguments)] // the kernel's own list: inputs, then sizes
#[allow(clippy::type_complexity)] // (dx, dweight, dbias), as the runtime returns them
pub fn layer_norm_bwd(
    ty: ElemType,
    dy: &DeviceBuffer,
    x: &DeviceBuffer,
    weight: Option<&DeviceBuffer>,
    has_bias: bool,
    mean: &DeviceBuffer,
    rstd: &DeviceBuffer,
    rows: usize,
    d: usize,
) -> Result<(DeviceBuffer, Option<DeviceBuffer>, Option<DeviceBuffer>)> {
    let n = check_rows(norm_kernel(Norm::Layer, true, ty), rows, d, NORM_MAX_ROWS)?;
    let gpu = x.gpu();
    let mut dx = gpu.alloc(n * ty.size())?;
    let param = || gpu.alloc(d * ty.size());
    let mut dweight = weight.map(|_| param()).transpose()?;
    let mut dbias = has_bias.then(param).transpose()?;
    layer_norm_bwd_into(
        &mut dx,
        dweight.as_mut(),
        dbias.as_mut(),
        ty,
        dy,
        x,
        weight,
        mean,
        rstd,
        rows,
        d,
    )?;
    Ok((dx, dweight, dbias))
}

/// `layer_norm_bwd` into `dx`, and into `dweight` and `dbias` where given (all overwritten:
/// the parameter gradients are this call's sums, not added to what the buffers held).
///
/// Shapes: dx [rows, D], dweight [D], dbias [D] (written); dy [rows, D], x [rows, D],
/// weight [D], mean [rows] (f32), rstd [rows] (f32)
#[allow(clippy::too_many_arguments)] // the kernels' own list: outputs, inputs, sizes
pub fn layer_norm_bwd_into(
    dx: &mut DeviceBuffer,
    dweight: Option<&mut DeviceBuffer>,
    dbias: Option<&mut DeviceBuffer>,
    ty: ElemType,
    dy: &DeviceBuffer,
    x: &DeviceBuffer,
    weight: Option<&DeviceBuffer>,
    mean: &DeviceBuffer,
    rstd: &DeviceBuffer,
    rows: usize,
    d: usize,
) -> Result<()> {
    let name = norm_kernel(Norm::Layer, true, ty);
    let n = check_rows(name, rows, d, NORM_MAX_ROWS)?;
    let e = ty.size();
    let mut args = vec![
        Arg::new("x", x, n * e),
        Arg::new("dx", dx, n * e),
        Arg::new("dy", dy, n * e),
        Arg::new("mean", mean, rows * 4),
        Arg::new("rstd", rstd, rows * 4),
    ];
    args.extend(param_arg("weight", weight, d * e));
    args.extend(param_arg("dweight", dweight.as_deref(), d * e));
    args.extend(param_arg("dbias", dbias.as_deref(), d * e));
    check_args(name, &args)?;
    if let Some(cfg) = norm_config(rows) {
        let (gpu, rows, d) = (x.gpu().clone(), rows as u64, d as u64);
        let f = gpu.function(Module::Norm, name)?;
        let mut launch = gpu.stream().launch_builder(&f);
        launch.arg(dx.slice_mut()).arg(dy.slice()).arg(x.slice());
        arg_or_null(&mut launch, weight);
        launch
            .arg(mean.slice())
            .arg(rstd.slice())
            .arg(&rows)
            .arg(&d);
        // The arguments are the kernel's (T* dx, const T* dy, const T* x,
        // const T* weight, const float* mean, const float* rstd, u64 rows, u64 d); dx, dy, x
        // hold rows * D values of T, mean and rstd rows floats, weight D values or is null
        // (read as 1), all checked above; dx is borrowed mutably, so it aliases no input.
        // SAFETY: sound for the reasons just given.
        unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    }
    if dweight.is_some() || dbias.is_some() {
        dparams_into(dweight, dbias, ty, dy, x, Some(mean), rstd, rows, d)?;
    }
    Ok(())
}

/// RMSNorm backward. With xhat = x rstd and g = dy weight:
///   dx = rstd (g - xhat mean(g xhat)),  dweight = sum over rows of dy xhat (when `weight`
///   is given). Returns (dx, dweight), like the runtime's `rms_norm_bwd`.
///
/// Shapes: dy [rows, D], x [rows, D], weight [D], rstd [rows] -> dx [rows, D], dweight [D]
pub fn rms_norm_bwd(
    ty: ElemType,
    dy: &DeviceBuffer,
    x: &DeviceBuffer,
    weight: Option<&DeviceBuffer>,
    rstd: &DeviceBuffer,
    rows: usize,
    d: usize,
) -> Result<(DeviceBuffer, Option<DeviceBuffer>)> {
    let n = check_rows(norm_kernel(Norm::Rms, true, ty), rows, d, NORM_MAX_ROWS)?;
    let gpu = x.gpu();
    let mut dx = gpu.alloc(n * ty.size())?;
    let mut dweight = weight.map(|_| gpu.alloc(d * ty.size())).transpose()?;
    rms_norm_bwd_into(&mut dx, dweight.as_mut(), ty, dy, x, weight, rstd, rows, d)?;
    Ok((dx, dweight))
}

/// `rms_norm_bwd` into `dx`, and into `dweight` where given (both overwritten).
///
/// Shapes: dx [rows, D], dweight [D] (written); dy [rows, D], x [rows, D], weight [D],
/// rstd [rows] (f32)
#[allow(clippy::too_many_arguments)] // the kernels' own list: outputs, inputs, sizes
pub fn rms_norm_bwd_into(
    dx: &mut DeviceBuffer,
    dweight: Option<&mut DeviceBuffer>,
    ty: ElemType,
    dy: &DeviceBuffer,
    x: &DeviceBuffer,
    weight: Option<&DeviceBuffer>,
    rstd: &DeviceBuffer,
    rows: usize,
    d: usize,
) -> Result<()> {
    let name = norm_kernel(Norm::Rms, true, ty);
    let n = check_rows(name, rows, d, NORM_MAX_ROWS)?;
    let e = ty.size();
    let mut args = vec![
        Arg::new("x", x, n * e),
        Arg::new("dx", dx, n * e),
        Arg::new("dy", dy, n * e),
        Arg::new("rstd", rstd, rows * 4),
    ];
    args.extend(param_arg("weight", weight, d * e));
    args.extend(param_arg("dweight", dweight.as_deref(), d * e));
    check_args(name, &args)?;
    if let Some(cfg) = norm_config(rows) {
        let (gpu, rows, d) = (x.gpu().clone(), rows as u64, d as u64);
        let f = gpu.function(Module::Norm, name)?;
        let mut launch = gpu.stream().launch_builder(&f);
        launch.arg(dx.slice_mut()).arg(dy.slice()).arg(x.slice());
        arg_or_null(&mut launch, weight);
        launch.arg(rstd.slice()).arg(&rows).arg(&d);
        // The arguments are the kernel's (T* dx, const T* dy, const T* x,
        // const T* weight, const float* rstd, u64 rows, u64 d); dx, dy, x hold rows * D values
        // of T, rstd rows floats, weight D values or is null (read as 1), all checked above;
        // dx is borrowed mutably, so it aliases no input.
        // SAFETY: sound for the reasons just given.
        unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    }
    if dweight.is_some() {
        dparams_into(dweight, None, ty, dy, x, None, rstd, rows, d)?;
    }
    Ok(())
}

/// dweight = sum over rows of dy xhat and dbias = sum over rows of dy, into the outputs that
/// are given (overwritten), in the two deterministic passes. `mean` is `None` for RMSNorm.
/// The caller has checked every buffer against [rows, D].
#[allow(clippy::too_many_arguments)] // the two kernels' outputs, inputs and sizes
fn dparams_into(
    dweight: Option<&mut DeviceBuffer>,
    dbias: Option<&mut DeviceBuffer>,
    ty: ElemType,
    dy: &DeviceBuffer,
    x: &DeviceBuffer,
    mean: Option<&DeviceBuffer>,
    rstd: &DeviceBuffer,
    rows: usize,
    d: usize,
) -> Result<()> {
    let cfg = dparams_config(rows, d);
    let gpu = x.gpu().clone();
    // the scratch [2, chunks, D] f32: freed back to the cache on return, which is safe because
    // the device's one stream runs the next user of the memory after these kernels
    let mut partial = gpu.alloc(2 * cfg.chunks * d * 4)?;
    let (rows, d, chunks) = (rows as u64, d as u64, cfg.chunks as u64);
    if let Some(partial_cfg) = cfg.partial {
        let rows_per_chunk = cfg.rows_per_chunk as u64;
        let f = gpu.function(Module::Norm, dparams_partial_kernel(ty))?;
        let mut launch = gpu.stream().launch_builder(&f);
        launch
            .arg(partial.slice_mut())
            .arg(dy.slice())
            .arg(x.slice());
        arg_or_null(&mut launch, mean);
        launch
            .arg(rstd.slice())
            .arg(&rows)
            .arg(&d)
            .arg(&rows_per_chunk);
        // The arguments are the kernel's (float* partial, const T* dy, const T* x,
        // const float* mean, const float* rstd, u64 rows, u64 d, u64 rows_per_chunk); partial
        // was allocated for 2 * chunks * D floats and grid.y = chunks; dy, x, mean (or null),
        // rstd were checked by the caller; chunk c reads rows below min(rows, (c + 1) *
        // rows_per_chunk) and columns below D only.
        // SAFETY: sound for the reasons just given.
        unsafe { launch.launch(partial_cfg) }.map_err(cuda("cuLaunchKernel"))?;
    }
    let f = gpu.function(Module::Norm, dparams_sum_kernel(ty))?;
    let mut launch = gpu.stream().launch_builder(&f);
    out_or_null(&mut launch, dweight);
    out_or_null(&mut launch, dbias);
    launch.arg(partial.slice()).arg(&chunks).arg(&d);
    // The arguments are the kernel's (T* dweight, T* dbias, const float* partial,
    // u64 chunks, u64 d); dweight and dbias hold D values of T (checked by the caller) or are
    // null (not written); partial holds 2 * chunks * D floats, written by the first pass
    // earlier on the same stream.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg.sum) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_a_launcher_names_is_in_the_ptx() {
        let entries = Module::Norm.entries();
        let mut names = Vec::new();
        for ty in ElemType::ALL {
            for norm in [Norm::Layer, Norm::Rms] {
                names.push(norm_kernel(norm, false, ty));
                names.push(norm_kernel(norm, true, ty));
            }
            names.push(dparams_partial_kernel(ty));
            names.push(dparams_sum_kernel(ty));
        }
        for name in &names {
            assert!(entries.contains(name), "{name} is not in norm.ptx");
        }
        // and the PTX holds nothing the launchers cannot reach
        assert_eq!(entries.len(), names.len());
    }

    #[test]
    fn the_norm_grid_has_one_warp_per_row() {
        assert!(norm_config(0).is_none());
        let warps = NORM_WARPS_PER_BLOCK as usize;
        for rows in [1, 3, 4, 5, 1000, 1 << 20] {
            let cfg = norm_config(rows).unwrap();
            let (blocks, threads) = (cfg.grid_dim.0 as usize, cfg.block_dim.0 as usize);
            assert_eq!(threads, 32 * warps);
            // every row has a warp, and only the last block has idle warps
            assert!(
                blocks * warps >= rows && (blocks - 1) * warps < rows,
                "{rows}"
            );
            assert_eq!(cfg.shared_mem_bytes, 0);
        }
    }

    #[test]
    fn the_dparams_chunks_cover_every_row_once() {
        // no rows: no first pass, and the second pass writes zeros from an empty scratch
        let cfg = dparams_config(0, 5);
        assert!(cfg.partial.is_none() && cfg.chunks == 0);
        assert_eq!(cfg.sum.grid_dim, (1, 1, 1));
        let min = DPARAMS_MIN_ROWS_PER_CHUNK;
        let capped = min * DPARAMS_MAX_CHUNKS;
        for rows in [
            1,
            min - 1,
            min,
            min + 1,
            capped,
            capped + 1,
            10 * capped + 7,
        ] {
            for d in [1, 255, 256, 257, 768] {
                let cfg = dparams_config(rows, d);
                let (c, per) = (cfg.chunks, cfg.rows_per_chunk);
                assert!((1..=DPARAMS_MAX_CHUNKS).contains(&c), "{rows}");
                assert!(per >= min, "{rows}");
                // the chunks cover the rows, and none is empty
                assert!(c * per >= rows && (c - 1) * per < rows, "{rows}");
                // rows_per_chunk grows only once the chunk count is capped
                assert_eq!(per > min, rows > capped, "{rows}");
                let columns = d.div_ceil(DPARAMS_THREADS as usize) as u32;
                let partial = cfg.partial.unwrap();
                assert_eq!(partial.grid_dim, (columns, c as u32, 1));
                assert_eq!(partial.block_dim, (DPARAMS_THREADS, 1, 1));
                assert_eq!(cfg.sum.grid_dim, (columns, 1, 1));
            }
        }
    }
}
