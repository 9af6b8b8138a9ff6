//! Launchers of `kernels/cuda/softmax.cu`: softmax over the last dim (forward, backward) and
//! the fused softmax cross-entropy (forward, backward), f32 and bf16.
//!
//! Each launcher has an allocating form and an `_into` form that writes buffers the caller
//! owns (the tests poison them first). Every output is overwritten, never accumulated.
//!
//! The cross-entropy forward returns one loss term per row (lse_i - logits[i, target_i], and 0
//! on ignored rows) and lse [N], both f32; the mean over the non-ignored rows is left to the
//! host in this first version (`mean_loss`), which knows the count from the targets it
//! uploaded, and so does the backward's `scale = dloss / count` (`cross_entropy_scale`). A
//! device-side mean would save downloading N floats per step.
//!
//! An out-of-range target (>= V and not the ignore index) cannot be an error from a kernel:
//! its row gets a NaN loss term and a NaN gradient row instead (the runtime's CPU op returns
//! `IndexOutOfRange`). With `ignore_index = None` the kernels are passed `NO_IGNORE`
//! (u32::MAX), so a target of u32::MAX is then ignored, not reported: no vocabulary has 2^32
//! entries, and the data loaders never write it.

use crate::check::{check_args, check_rows, Arg};
use crate::elementwise::ElemType;
use crate::error::{cuda, Result};
use crate::gpu::DeviceBuffer;
use crate::launch::MAX_GRID_X;
use crate::module::Module;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// The most threads of a block (one block per row): 8 warps, enough loads in flight to
/// stream a row of V = 50257 logits at full bandwidth while each thread's loop stays short
/// (197 entries). Must equal `SOFTMAX_MAX_THREADS` in softmax.cu, which sizes the kernels'
/// shared memory by it (a CPU test compares the two).
pub const SOFTMAX_MAX_THREADS: u32 = 256;

/// The ignore index the kernels get when no target is ignored.
pub const NO_IGNORE: u32 = u32::MAX;

/// The softmax kernel for `ty`: `softmax_{fwd|bwd}_{dtype}`.
pub fn softmax_kernel(backward: bool, ty: ElemType) -> &'static str {
    match (backward, ty) {
        (false, ElemType::F32) => "softmax_fwd_f32",
        (false, ElemType::Bf16) => "softmax_fwd_bf16",
        (true, ElemType::F32) => "softmax_bwd_f32",
        (true, ElemType::Bf16) => "softmax_bwd_bf16",
    }
}

/// The fused cross-entropy kernel for `ty`: `crossentropy_{fwd|bwd}_{dtype}`.
pub fn crossentropy_kernel(backward: bool, ty: ElemType) -> &'static str {
    match (backward, ty) {
        (false, ElemType::F32) => "crossentropy_fwd_f32",
        (false, ElemType::Bf16) => "crossentropy_fwd_bf16",
        (true, ElemType::F32) => "crossentropy_bwd_f32",
        (true, ElemType::Bf16) => "crossentropy_bwd_bf16",
    }
}

/// The configuration of a block-per-row kernel over `rows` rows of `n` entries, `None` when
/// there are no rows. The launchers have checked rows <= 2^31 - 1 (grid.x's limit).
///
/// Grid: `rows` blocks of min(256, n rounded up to a multiple of 32) threads: a short row
/// (attention over a few positions) gets one warp instead of 7 idle ones. The shared memory
/// is static (declared in the kernels).
pub fn softmax_config(rows: usize, n: usize) -> Option<LaunchConfig> {
    if rows == 0 {
        return None;
    }
    let threads = n.div_ceil(32).max(1) * 32;
    let threads = threads.min(SOFTMAX_MAX_THREADS as usize) as u32;
    Some(LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The host's share of the mean cross-entropy: the sum of the per-row terms over the count of
/// non-ignored rows (the ignored rows' terms are 0), added in f64 like the runtime's
/// `cross_entropy_fwd`. With every row ignored the loss is 0, as there.
pub fn mean_loss(terms: &[f32], count: usize) -> f32 {
    if count == 0 {
        return 0.0;
    }
    let total: f64 = terms.iter().map(|&t| t as f64).sum();
    (total / count as f64) as f32
}

/// The backward's scale: dloss / count, with count 0 read as 1 (every row ignored: the
/// gradient is zero anyway), as in the runtime's `cross_entropy_bwd`.
pub fn cross_entropy_scale(dloss: f32, count: usize) -> f32 {
    dloss / count.max(1) as f32
}

// ---- softmax ----

/// y = softmax(x) along each row; an all -inf row gives zeros.
///
/// Shapes: x [rows, n] -> y [rows, n]
pub fn softmax_fwd(ty: ElemType, x: &DeviceBuffer, rows: usize, n: usize) -> Result<DeviceBuffer> {
    let len = check_rows(softmax_kernel(false, ty), rows, n, MAX_GRID_X)?;
    let mut y = x.gpu().alloc(len * ty.size())?;
    softmax_fwd_into(&mut y, ty, x, rows, n)?;
    Ok(y)
}

/// `softmax_fwd` into `y` (overwritten).
///
/// Shapes: y [rows, n] (written), x [rows, n]
pub fn softmax_fwd_into(
    y: &mut DeviceBuffer,
    ty: ElemType,
    x: &DeviceBuffer,
    rows: usize,
    n: usize,
) -> Result<()> {
    let name = softmax_kernel(false, ty);
    let len = check_rows(name, rows, n, MAX_GRID_X)?;
    let e = ty.size();
    check_args(
        name,
        &[Arg::new("x", x, len * e), Arg::new("y", y, len * e)],
    )?;
    let Some(cfg) = softmax_config(rows, n) else {
        return Ok(());
    };
    let (gpu, n) = (x.gpu().clone(), n as u64);
    let f = gpu.function(Module::Softmax, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(y.slice_mut()).arg(x.slice()).arg(&n);
    // The arguments are the kernel's (T* y, const T* x, u64 n); both buffers hold
    // rows * n values of T (checked above) and are distinct (y is borrowed mutably); block b
    // touches row b only, and there are `rows` blocks.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

/// dx = y (dy - sum(dy y)) along each row, from the forward's output y.
///
/// Shapes: dy [rows, n], y [rows, n] -> dx [rows, n]
pub fn softmax_bwd(
    ty: ElemType,
    dy: &DeviceBuffer,
    y: &DeviceBuffer,
    rows: usize,
    n: usize,
) -> Result<DeviceBuffer> {
    let len = check_rows(softmax_kernel(true, ty), rows, n, MAX_GRID_X)?;
    let mut dx = y.gpu().alloc(len * ty.size())?;
    softmax_bwd_into(&mut dx, ty, dy, y, rows, n)?;
    Ok(dx)
}

/// `softmax_bwd` into `dx` (overwritten).
///
/// Shapes: dx [rows, n] (written), dy [rows, n], y [rows, n]
pub fn softmax_bwd_into(
    dx: &mut DeviceBuffer,
    ty: ElemType,
    dy: &DeviceBuffer,
    y: &DeviceBuffer,
    rows: usize,
    n: usize,
) -> Result<()> {
    let name = softmax_kernel(true, ty);
    let len = check_rows(name, rows, n, MAX_GRID_X)?;
    let e = ty.size();
    let args = [
        Arg::new("y", y, len * e),
        Arg::new("dx", dx, len * e),
        Arg::new("dy", dy, len * e),
    ];
    check_args(name, &args)?;
    let Some(cfg) = softmax_config(rows, n) else {
        return Ok(());
    };
    let (gpu, n) = (y.gpu().clone(), n as u64);
    let f = gpu.function(Module::Softmax, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(dx.slice_mut())
        .arg(dy.slice())
        .arg(y.slice())
        .arg(&n);
    // The arguments are the kernel's (T* dx, const T* dy, const T* y, u64 n); the
    // three buffers hold rows * n values of T (checked above), dx is borrowed mutably so it
    // aliases neither input; block b touches row b only, and there are `rows` blocks.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

// ---- fused softmax cross-entropy ----

/// The per-row cross-entropy terms loss_i = lse_i - logits[i, target_i] (0 where the target
/// is `ignore_index`) and lse_i = log sum_j exp(logits[i, j]). Returns (loss, lse); the mean
/// is `mean_loss(loss, count)` on the host.
///
/// Shapes: logits [N, V], targets [N] (u32) -> loss [N] (f32), lse [N] (f32)
pub fn cross_entropy_fwd(
    ty: ElemType,
    logits: &DeviceBuffer,
    targets: &DeviceBuffer,
    ignore_index: Option<u32>,
    rows: usize,
    v: usize,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    check_rows(crossentropy_kernel(false, ty), rows, v, MAX_GRID_X)?;
    let gpu = logits.gpu();
    let (mut loss, mut lse) = (gpu.alloc(rows * 4)?, gpu.alloc(rows * 4)?);
    cross_entropy_fwd_into(
        &mut loss,
        &mut lse,
        ty,
        logits,
        targets,
        ignore_index,
        rows,
        v,
    )?;
    Ok((loss, lse))
}

/// `cross_entropy_fwd` into `loss` and `lse` (both overwritten).
///
/// Shapes: loss [N] (f32), lse [N] (f32) (written); logits [N, V], targets [N] (u32)
#[allow(clippy::too_many_arguments)] // the kernel's own list: outputs, inputs, sizes
pub fn cross_entropy_fwd_into(
    loss: &mut DeviceBuffer,
    lse: &mut DeviceBuffer,
    ty: ElemType,
    logits: &DeviceBuffer,
    targets: &DeviceBuffer,
    ignore_index: Option<u32>,
    rows: usize,
    v: usize,
) -> Result<()> {
    let name = crossentropy_kernel(false, ty);
    let len = check_rows(name, rows, v, MAX_GRID_X)?;
    let args = [
        Arg::new("logits", logits, len * ty.size()),
        Arg::new("targets", targets, rows * 4),
        Arg::new("loss", loss, rows * 4),
        Arg::new("lse", lse, rows * 4),
    ];
    check_args(name, &args)?;
    let Some(cfg) = softmax_config(rows, v) else {
        return Ok(());
    };
    let (gpu, v) = (logits.gpu().clone(), v as u64);
    let ignore = ignore_index.unwrap_or(NO_IGNORE);
    let f = gpu.function(Module::Softmax, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(loss.slice_mut())
        .arg(lse.slice_mut())
        .arg(logits.slice())
        .arg(targets.slice())
        .arg(&ignore)
        .arg(&v);
    // The arguments are the kernel's (float* loss, float* lse, const T* logits,
    // const u32* targets, u32 ignore, u64 v); logits holds N * V values of T, targets N u32s,
    // loss and lse N floats (checked above); the outputs are borrowed mutably, so they alias
    // nothing; block i reads row i of the logits and, only when targets[i] < V, entry
    // targets[i] of it.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

/// dlogits[i, j] = scale (softmax(logits_i)_j - [j == target_i]), with the softmax
/// recomputed from the forward's lse, and zero rows where the target is `ignore_index`.
/// `scale` is dloss / count (`cross_entropy_scale`).
///
/// Shapes: logits [N, V], targets [N] (u32), lse [N] (f32) -> dlogits [N, V]
#[allow(clippy::too_many_arguments)] // the kernel's own list: inputs, then sizes
pub fn cross_entropy_bwd(
    ty: ElemType,
    logits: &DeviceBuffer,
    targets: &DeviceBuffer,
    lse: &DeviceBuffer,
    scale: f32,
    ignore_index: Option<u32>,
    rows: usize,
    v: usize,
) -> Result<DeviceBuffer> {
    let len = check_rows(crossentropy_kernel(true, ty), rows, v, MAX_GRID_X)?;
    let mut dlogits = logits.gpu().alloc(len * ty.size())?;
    cross_entropy_bwd_into(
        &mut dlogits,
        ty,
        logits,
        targets,
        lse,
        scale,
        ignore_index,
        rows,
        v,
    )?;
    Ok(dlogits)
}

/// `cross_entropy_bwd` into `dlogits` (overwritten, ignored rows included).
///
/// Shapes: dlogits [N, V] (written); logits [N, V], targets [N] (u32), lse [N] (f32)
#[allow(clippy::too_many_arguments)] // the kernel's own list: outputs, inputs, sizes
pub fn cross_entropy_bwd_into(
    dlogits: &mut DeviceBuffer,
    ty: ElemType,
    logits: &DeviceBuffer,
    targets: &DeviceBuffer,
    lse: &DeviceBuffer,
    scale: f32,
    ignore_index: Option<u32>,
    rows: usize,
    v: usize,
) -> Result<()> {
    let name = crossentropy_kernel(true, ty);
    let len = check_rows(name, rows, v, MAX_GRID_X)?;
    let e = ty.size();
    let args = [
        Arg::new("logits", logits, len * e),
        Arg::new("dlogits", dlogits, len * e),
        Arg::new("targets", targets, rows * 4),
        Arg::new("lse", lse, rows * 4),
    ];
    check_args(name, &args)?;
    let Some(cfg) = softmax_config(rows, v) else {
        return Ok(());
    };
    let (gpu, v) = (logits.gpu().clone(), v as u64);
    let ignore = ignore_index.unwrap_or(NO_IGNORE);
    let f = gpu.function(Module::Softmax, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(dlogits.slice_mut())
        .arg(logits.slice())
        .arg(targets.slice())
        .arg(lse.slice())
        .arg(&scale)
        .arg(&ignore)
        .arg(&v);
    // The arguments are the kernel's (T* dlogits, const T* logits, const u32* targets,
    // const float* lse, float scale, u32 ignore, u64 v); dlogits and logits hold N * V values
    // of T, targets N u32s, lse N floats (checked above); dlogits is borrowed mutably, so it
    // aliases no input; block i touches row i only, and there are N blocks.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_a_launcher_names_is_in_the_ptx() {
        let entries = Module::Softmax.entries();
        let mut names = Vec::new();
        for ty in ElemType::ALL {
            for backward in [false, true] {
                names.push(softmax_kernel(backward, ty));
                names.push(crossentropy_kernel(backward, ty));
            }
        }
        for name in &names {
            assert!(entries.contains(name), "{name} is not in softmax.ptx");
        }
        // and the PTX holds nothing the launchers cannot reach
        assert_eq!(entries.len(), names.len());
    }

    #[test]
    fn the_kernels_shared_memory_is_sized_for_the_largest_block() {
        // the kernels size their cross-warp scratch by their own copy of the constant
        let source = include_str!("../cuda/softmax.cu");
        let define = format!("#define SOFTMAX_MAX_THREADS {SOFTMAX_MAX_THREADS}\n");
        assert!(source.contains(&define), "softmax.cu lacks {define:?}");
    }

    #[test]
    fn a_row_gets_whole_warps_up_to_the_largest_block() {
        assert!(softmax_config(0, 10).is_none());
        let max = SOFTMAX_MAX_THREADS;
        let cases = [
            (1, 32),
            (31, 32),
            (32, 32),
            (33, 64),
            (200, 224),
            (255, max),
            (256, max),
            (257, max),
            (50257, max),
        ];
        for (n, threads) in cases {
            for rows in [1, 7, 4096] {
                let cfg = softmax_config(rows, n).unwrap();
                assert_eq!(cfg.grid_dim, (rows as u32, 1, 1), "{rows} x {n}");
                assert_eq!(cfg.block_dim, (threads, 1, 1), "{rows} x {n}");
                assert_eq!(cfg.shared_mem_bytes, 0);
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused_before_the_driver() {
        let zero = check_rows(softmax_kernel(false, ElemType::F32), 3, 0, MAX_GRID_X);
        let msg = zero.unwrap_err().to_string();
        assert!(
            msg.starts_with("softmax_fwd_f32: ") && msg.contains("length 0"),
            "{msg}"
        );
        let name = crossentropy_kernel(false, ElemType::Bf16);
        let many = check_rows(name, MAX_GRID_X + 1, 50257, MAX_GRID_X).unwrap_err();
        assert!(
            many.to_string().starts_with("crossentropy_fwd_bf16: "),
            "{many}"
        );
    }

    #[test]
    fn the_mean_and_the_scale_skip_ignored_rows() {
        // two counted rows with terms ln 4 and ln 2 (the ignored row's term is 0)
        let terms = [4f32.ln(), 0.0, 2f32.ln()];
        let want = (8f32.ln()) / 2.0;
        assert!((mean_loss(&terms, 2) - want).abs() < 1e-7);
        assert_eq!(mean_loss(&[0.0, 0.0], 0), 0.0);
        assert_eq!(cross_entropy_scale(1.0, 4), 0.25);
        assert_eq!(cross_entropy_scale(1.0, 0), 1.0);
    }
}
