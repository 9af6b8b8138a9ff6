//! Launchers of `kernels/cuda/flash.cu`: causal flash attention, bf16 in and out with f32
//! accumulation on the tensor cores, forward and backward, for head dims 32, 64 and 128.
//!
//! What the kernels compute, per (batch*head) and query i, with s_ij = q_i . k_j / sqrt(hd) over
//! the keys j <= i: out_i = sum_j softmax_j(s_ij) v_j and lse_i = ln sum_j exp(s_ij) (f32); the
//! backward recomputes the probabilities from q, k and lse, tile by tile, and returns dq, dk, dv.
//! No [T, T] matrix is ever stored. `runtime/src/cpu/flash.rs` runs the same tiling on the CPU;
//! it is the reference of `tests/tests/gpu_flash.rs`.
//!
//! Layout: q, k, v, out, dout, dq, dk, dv are dense [b_h, T, hd] bf16 buffers (b_h = B * H, the
//! two leading dims of [B, H, T, hd]), lse is [b_h, T] f32. Every output is overwritten, never
//! accumulated. The backward allocates one scratch of b_h T floats (D_i = dout_i . out_i) per
//! call and runs three kernels: D, then dk and dv (one block per key tile), then dq (one block
//! per query tile), so no two blocks write the same row and nothing needs atomics.
//!
//! The launch arithmetic (grids, shared memory, the head-dim set) is pure functions, which the
//! CPU tests check against the constants of flash.cu. `FlashPtx` says where the kernels come
//! from: the promoted module, or one of the numbered versions of the workbench (`bench/flash/`),
//! which define the same kernels with the same arguments and may differ in their stages.

use crate::check::{bytes_of, check_args, launch_error, Arg};
use crate::error::{cuda, Error, Result};
use crate::gpu::{DeviceBuffer, Gpu};
use crate::launch::{MAX_GRID_X, MAX_GRID_YZ};
use crate::module::Module;
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

/// The head dims flash.cu instantiates. Another hd has no kernel: the runtime keeps the
/// materialised attention for it.
pub const FLASH_HEAD_DIMS: [usize; 3] = [32, 64, 128];

/// Queries per block of the forward and dq kernels: 4 warps of 16 rows, the height of one
/// mma.m16n8k16 (`BQ = WARPS * MMA_M` in flash.cu).
pub const FLASH_BQ: usize = 64;

/// Keys per tile of the forward's and dq's walk, and per block of dkdv (`BKV` in flash.cu).
pub const FLASH_BKV: usize = 64;

/// bf16 of padding at the end of each shared row, against bank conflicts (`PAD` in flash.cu).
pub const FLASH_PAD: usize = 8;

/// Threads per block of the tiled kernels: 4 warps (`THREADS` in flash.cu).
pub const FLASH_THREADS: u32 = 128;

/// Threads per block of the D kernel: 8 warps, one row each (`DSUM_THREADS` in flash.cu).
pub const DSUM_THREADS: u32 = 256;

/// Copies of each walked tile in the promoted kernels (`KV_STAGES` in flash.cu): 2, so the
/// next tile's copy overlaps this tile's math.
pub const FLASH_STAGES: usize = 2;

/// The most dynamic shared memory a block may opt in to on sm_90 (`MAX_SMEM_BYTES`).
pub const MAX_DYNAMIC_SHARED_BYTES: usize = 227 * 1024;

/// The longest sequence one launch covers: a grid's y dimension of 64-row tiles. It also
/// keeps the kernels' `int` row arithmetic (a tile past T) far from overflow.
pub const MAX_T: usize = MAX_GRID_YZ * FLASH_BQ;

/// Where the kernels come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashPtx {
    /// `kernels/cuda/flash.cu` (`Module::Flash`), what the runtime uses.
    Promoted,
    /// A workbench version (`bench/flash/vN.cu`): its name ("v1"), its PTX, and its stages
    /// (`KV_STAGES`), which size its shared memory.
    Version {
        name: &'static str,
        ptx: &'static str,
        stages: usize,
    },
}

impl FlashPtx {
    /// Copies of each walked tile: the factor of the shared memory the launches give.
    pub fn stages(self) -> usize {
        match self {
            FlashPtx::Promoted => FLASH_STAGES,
            FlashPtx::Version { stages, .. } => stages,
        }
    }

    /// The PTX text.
    pub fn ptx(self) -> &'static str {
        match self {
            FlashPtx::Promoted => Module::Flash.ptx(),
            FlashPtx::Version { ptx, .. } => ptx,
        }
    }

    fn function(self, gpu: &Gpu, kernel: &'static str) -> Result<CudaFunction> {
        match self {
            FlashPtx::Promoted => gpu.function(Module::Flash, kernel),
            FlashPtx::Version { name, ptx, .. } => gpu.extra_function(name, ptx, kernel),
        }
    }
}

/// The sizes of one attention: b_h = B * H heads of T positions and head dim hd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashShape {
    pub b_h: usize,
    pub t: usize,
    pub hd: usize,
}

impl FlashShape {
    pub fn new(b_h: usize, t: usize, hd: usize) -> FlashShape {
        FlashShape { b_h, t, hd }
    }

    /// Nothing to compute: no heads or no positions.
    pub fn is_empty(&self) -> bool {
        self.b_h == 0 || self.t == 0
    }
}

/// The four kernels of flash.cu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashKernel {
    /// out and lse (`flash_fwd_bf16_hd*`).
    Fwd,
    /// D_i = dout_i . out_i (`flash_bwd_dsum_bf16`, one kernel for every hd).
    Dsum,
    /// dk and dv, one block per key tile (`flash_bwd_dkdv_bf16_hd*`).
    Dkdv,
    /// dq, one block per query tile (`flash_bwd_dq_bf16_hd*`).
    Dq,
}

impl FlashKernel {
    pub const ALL: [FlashKernel; 4] = [
        FlashKernel::Fwd,
        FlashKernel::Dsum,
        FlashKernel::Dkdv,
        FlashKernel::Dq,
    ];

    /// Its `.entry` for head dim `hd`, or an error naming the head dims there are.
    pub fn name(self, hd: usize) -> Result<&'static str> {
        let name = match (self, hd) {
            (FlashKernel::Dsum, _) => "flash_bwd_dsum_bf16",
            (FlashKernel::Fwd, 32) => "flash_fwd_bf16_hd32",
            (FlashKernel::Fwd, 64) => "flash_fwd_bf16_hd64",
            (FlashKernel::Fwd, 128) => "flash_fwd_bf16_hd128",
            (FlashKernel::Dkdv, 32) => "flash_bwd_dkdv_bf16_hd32",
            (FlashKernel::Dkdv, 64) => "flash_bwd_dkdv_bf16_hd64",
            (FlashKernel::Dkdv, 128) => "flash_bwd_dkdv_bf16_hd128",
            (FlashKernel::Dq, 32) => "flash_bwd_dq_bf16_hd32",
            (FlashKernel::Dq, 64) => "flash_bwd_dq_bf16_hd64",
            (FlashKernel::Dq, 128) => "flash_bwd_dq_bf16_hd128",
            _ => return Err(no_kernel_for(hd)),
        };
        Ok(name)
    }
}

/// Whether flash.cu has kernels for head dim `hd`.
pub fn supports_head_dim(hd: usize) -> bool {
    FLASH_HEAD_DIMS.contains(&hd)
}

fn no_kernel_for(hd: usize) -> Error {
    let msg = format!(
        "head dim {hd} has no kernel (flash.cu instantiates hd {FLASH_HEAD_DIMS:?}); use the \
         materialised attention (ops::attention::attention_fwd) or add an instantiation"
    );
    launch_error("flash_attention_bf16", msg)
}

/// The dkdv kernel's query tile: 64, or 32 for hd = 128 (its registers hold two [16, hd]
/// accumulators and two [16, tile] slices per warp; see flash.cu).
pub fn bwd_query_tile(hd: usize) -> usize {
    if hd <= 64 {
        64
    } else {
        32
    }
}

/// Bytes of a shared [rows, hd] bf16 tile, each row padded by `FLASH_PAD`.
pub fn tile_bytes(hd: usize, rows: usize) -> usize {
    rows * (hd + FLASH_PAD) * 2
}

/// The dynamic shared memory of `kernel` for head dim `hd` with `stages` copies of each walked
/// tile (the carve of flash.cu's `*_smem_bytes`):
///   forward: Q + stages x (K + V);
///   dkdv:    K + V + stages x (Q + dout + lse + D of a query tile);
///   dq:      Q + dout + lse + D + stages x (K + V);
///   D:       none.
pub fn smem_bytes(kernel: FlashKernel, hd: usize, stages: usize) -> usize {
    let kv = 2 * tile_bytes(hd, FLASH_BKV);
    match kernel {
        FlashKernel::Fwd => tile_bytes(hd, FLASH_BQ) + stages * kv,
        FlashKernel::Dsum => 0,
        FlashKernel::Dkdv => {
            let bqb = bwd_query_tile(hd);
            kv + stages * (2 * tile_bytes(hd, bqb) + 2 * bqb * 4)
        }
        FlashKernel::Dq => 2 * tile_bytes(hd, FLASH_BQ) + 2 * FLASH_BQ * 4 + stages * kv,
    }
}

/// The configuration of `kernel` over `shape`, `None` when the shape is empty.
///
/// Grid: the tiled kernels (b_h, ceil(T / 64)) blocks of 128 threads, blockIdx.y mapped in the
/// kernel so the heaviest tiles start first; D ceil(b_h T / 8) blocks of 256 threads. Errors
/// when hd has no kernel, or the grid or the shared memory exceed the device's limits.
pub fn flash_config(
    kernel: FlashKernel,
    shape: &FlashShape,
    stages: usize,
) -> Result<Option<LaunchConfig>> {
    let name = kernel.name(shape.hd)?;
    check_grid(name, shape)?;
    if shape.is_empty() {
        return Ok(None);
    }
    if kernel == FlashKernel::Dsum {
        let rows_per_block = DSUM_THREADS as usize / 32;
        let blocks = (shape.b_h * shape.t).div_ceil(rows_per_block);
        if blocks > MAX_GRID_X {
            let msg = format!("{blocks} blocks of D rows, more than one launch covers");
            return Err(launch_error(name, msg));
        }
        return Ok(Some(LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (DSUM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }));
    }
    let smem = smem_bytes(kernel, shape.hd, stages);
    if smem > MAX_DYNAMIC_SHARED_BYTES {
        let msg = format!("{smem} bytes of shared memory, more than a block may have");
        return Err(launch_error(name, msg));
    }
    Ok(Some(LaunchConfig {
        grid_dim: (shape.b_h as u32, shape.t.div_ceil(FLASH_BQ) as u32, 1),
        block_dim: (FLASH_THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    }))
}

/// b_h within grid.x, T within grid.y's tiles (`MAX_T`), and every buffer's byte count within
/// a usize.
fn check_grid(name: &str, shape: &FlashShape) -> Result<()> {
    if shape.b_h > MAX_GRID_X {
        let msg = format!(
            "{} heads, more than one launch covers ({MAX_GRID_X})",
            shape.b_h
        );
        return Err(launch_error(name, msg));
    }
    if shape.t > MAX_T {
        let msg = format!("T = {}, more than one launch covers ({MAX_T})", shape.t);
        return Err(launch_error(name, msg));
    }
    bytes_of(name, &[shape.b_h, shape.t, shape.hd], 4).map(|_| ())
}

// ---- forward ----

/// out and lse of causal attention, in new buffers, with the promoted kernels.
///
/// Shapes: q, k, v [b_h, T, hd] (bf16) -> out [b_h, T, hd] (bf16), lse [b_h, T] (f32)
pub fn flash_fwd(
    q: &DeviceBuffer,
    k: &DeviceBuffer,
    v: &DeviceBuffer,
    shape: &FlashShape,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    let name = FlashKernel::Fwd.name(shape.hd)?;
    let rows = bytes_of(name, &[shape.b_h, shape.t, shape.hd], 2)?;
    let stats = bytes_of(name, &[shape.b_h, shape.t], 4)?;
    let gpu = q.gpu();
    let (mut out, mut lse) = (gpu.alloc(rows)?, gpu.alloc(stats)?);
    flash_fwd_into(&mut out, &mut lse, FlashPtx::Promoted, q, k, v, shape)?;
    Ok((out, lse))
}

/// `flash_fwd` into `out` and `lse` (both overwritten), with the kernels of `ptx`.
///
/// Shapes: out [b_h, T, hd] (bf16), lse [b_h, T] (f32) (written); q, k, v [b_h, T, hd] (bf16)
pub fn flash_fwd_into(
    out: &mut DeviceBuffer,
    lse: &mut DeviceBuffer,
    ptx: FlashPtx,
    q: &DeviceBuffer,
    k: &DeviceBuffer,
    v: &DeviceBuffer,
    shape: &FlashShape,
) -> Result<()> {
    let name = FlashKernel::Fwd.name(shape.hd)?;
    let cfg = flash_config(FlashKernel::Fwd, shape, ptx.stages())?;
    let rows = bytes_of(name, &[shape.b_h, shape.t, shape.hd], 2)?;
    let stats = bytes_of(name, &[shape.b_h, shape.t], 4)?;
    let args = [
        Arg::new("q", q, rows),
        Arg::new("k", k, rows),
        Arg::new("v", v, rows),
        Arg::new("out", out, rows),
        Arg::new("lse", lse, stats),
    ];
    check_args(name, &args)?;
    let Some(cfg) = cfg else {
        return Ok(());
    };
    let (gpu, t) = (q.gpu().clone(), shape.t as i32);
    let f = ptx.function(&gpu, name)?;
    gpu.allow_dynamic_shared(&f, cfg.shared_mem_bytes)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(out.slice_mut()).arg(lse.slice_mut());
    launch.arg(q.slice()).arg(k.slice()).arg(v.slice()).arg(&t);
    // The arguments are the kernel's (bf16* out, float* lse, const bf16* q, const bf16* k,
    // const bf16* v, int t), in that order. q, k, v and out hold b_h T hd bf16 and lse b_h T
    // floats (checked above), and block (h, y) touches only head h's rows, of which it reads
    // tiles guarded by t and writes rows < t; the grid has b_h x ceil(T / 64) blocks and the
    // shared memory the kernel carves (`smem_bytes`). The outputs are borrowed mutably, so they
    // alias no input. Buffers start at their allocation, 256-byte aligned, as the kernel's
    // 16-byte row copies need.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

// ---- backward ----

/// dq, dk, dv of `flash_fwd`, in new buffers, with the promoted kernels, from the forward's
/// out and lse.
///
/// Shapes: dout, q, k, v, out [b_h, T, hd] (bf16), lse [b_h, T] (f32) -> dq, dk, dv
/// [b_h, T, hd] (bf16)
pub fn flash_bwd(
    dout: &DeviceBuffer,
    q: &DeviceBuffer,
    k: &DeviceBuffer,
    v: &DeviceBuffer,
    out: &DeviceBuffer,
    lse: &DeviceBuffer,
    shape: &FlashShape,
) -> Result<(DeviceBuffer, DeviceBuffer, DeviceBuffer)> {
    let name = FlashKernel::Dq.name(shape.hd)?;
    let rows = bytes_of(name, &[shape.b_h, shape.t, shape.hd], 2)?;
    let gpu = q.gpu();
    let (mut dq, mut dk, mut dv) = (gpu.alloc(rows)?, gpu.alloc(rows)?, gpu.alloc(rows)?);
    let grads = [&mut dq, &mut dk, &mut dv];
    let ptx = FlashPtx::Promoted;
    flash_bwd_into(grads, ptx, dout, q, k, v, out, lse, shape)?;
    Ok((dq, dk, dv))
}

/// `flash_bwd` into `[dq, dk, dv]` (all overwritten), with the kernels of `ptx`. Allocates the
/// D scratch (b_h T floats) for the call.
///
/// Shapes: dq, dk, dv [b_h, T, hd] (bf16) (written); dout, q, k, v, out [b_h, T, hd] (bf16),
/// lse [b_h, T] (f32)
#[allow(clippy::too_many_arguments)] // the kernels' own list: outputs, inputs, sizes
pub fn flash_bwd_into(
    grads: [&mut DeviceBuffer; 3],
    ptx: FlashPtx,
    dout: &DeviceBuffer,
    q: &DeviceBuffer,
    k: &DeviceBuffer,
    v: &DeviceBuffer,
    out: &DeviceBuffer,
    lse: &DeviceBuffer,
    shape: &FlashShape,
) -> Result<()> {
    let [dq, dk, dv] = grads;
    let name = FlashKernel::Dkdv.name(shape.hd)?;
    let stages = ptx.stages();
    let configs = [
        flash_config(FlashKernel::Dsum, shape, stages)?,
        flash_config(FlashKernel::Dkdv, shape, stages)?,
        flash_config(FlashKernel::Dq, shape, stages)?,
    ];
    let rows = bytes_of(name, &[shape.b_h, shape.t, shape.hd], 2)?;
    let stats = bytes_of(name, &[shape.b_h, shape.t], 4)?;
    let args = [
        Arg::new("dout", dout, rows),
        Arg::new("q", q, rows),
        Arg::new("k", k, rows),
        Arg::new("v", v, rows),
        Arg::new("out", out, rows),
        Arg::new("lse", lse, stats),
        Arg::new("dq", dq, rows),
        Arg::new("dk", dk, rows),
        Arg::new("dv", dv, rows),
    ];
    check_args(name, &args)?;
    let [Some(dsum_cfg), Some(dkdv_cfg), Some(dq_cfg)] = configs else {
        return Ok(());
    };
    let gpu = q.gpu().clone();
    let mut dsum = gpu.alloc(stats)?;
    launch_dsum(&gpu, ptx, &mut dsum, dout, out, shape, dsum_cfg)?;
    launch_dkdv(
        &gpu,
        ptx,
        [dk, dv],
        [dout, q, k, v, lse, &dsum],
        shape,
        dkdv_cfg,
    )?;
    launch_dq(&gpu, ptx, dq, [dout, q, k, v, lse, &dsum], shape, dq_cfg)
}

/// D_i = dout_i . out_i into `dsum` (b_h T floats, checked by the caller as `lse`'s size).
///
/// Shapes: dsum [b_h, T] (f32) (written); dout, out [b_h, T, hd] (bf16)
fn launch_dsum(
    gpu: &Gpu,
    ptx: FlashPtx,
    dsum: &mut DeviceBuffer,
    dout: &DeviceBuffer,
    out: &DeviceBuffer,
    shape: &FlashShape,
    cfg: LaunchConfig,
) -> Result<()> {
    let f = ptx.function(gpu, FlashKernel::Dsum.name(shape.hd)?)?;
    let (rows, hd) = ((shape.b_h * shape.t) as u64, shape.hd as i32);
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(dsum.slice_mut())
        .arg(dout.slice())
        .arg(out.slice());
    launch.arg(&rows).arg(&hd);
    // The arguments are the kernel's (float* dsum, const bf16* dout, const bf16* out,
    // u64 rows, int hd). dout and out hold rows x hd bf16 (checked by the caller) and dsum was
    // allocated for rows floats; warp w of block b handles row 8 b + w only when it is < rows.
    // dsum is a fresh buffer, aliasing nothing.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

/// dk and dv, one block per (head, key tile).
///
/// Shapes: dk, dv [b_h, T, hd] (written); dout, q, k, v [b_h, T, hd], lse, dsum [b_h, T]
fn launch_dkdv(
    gpu: &Gpu,
    ptx: FlashPtx,
    [dk, dv]: [&mut DeviceBuffer; 2],
    [dout, q, k, v, lse, dsum]: [&DeviceBuffer; 6],
    shape: &FlashShape,
    cfg: LaunchConfig,
) -> Result<()> {
    let f = ptx.function(gpu, FlashKernel::Dkdv.name(shape.hd)?)?;
    gpu.allow_dynamic_shared(&f, cfg.shared_mem_bytes)?;
    let t = shape.t as i32;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(dk.slice_mut()).arg(dv.slice_mut());
    launch
        .arg(dout.slice())
        .arg(q.slice())
        .arg(k.slice())
        .arg(v.slice());
    launch.arg(lse.slice()).arg(dsum.slice()).arg(&t);
    // The arguments are the kernel's (bf16* dk, bf16* dv, const bf16* dout, const bf16* q,
    // const bf16* k, const bf16* v, const float* lse, const float* dsum, int t). Every bf16
    // buffer holds b_h T hd values and lse, dsum b_h T floats (checked by the caller, dsum
    // allocated so); block (h, y) writes the rows < t of key tile y of head h only, reading
    // tiles guarded by t; dk and dv are borrowed mutably (distinct from each other and from
    // the inputs); the shared memory is the kernel's carve (`smem_bytes`); buffers are
    // 256-byte aligned (their allocation's start).
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

/// dq, one block per (head, query tile).
///
/// Shapes: dq [b_h, T, hd] (written); dout, q, k, v [b_h, T, hd], lse, dsum [b_h, T]
fn launch_dq(
    gpu: &Gpu,
    ptx: FlashPtx,
    dq: &mut DeviceBuffer,
    [dout, q, k, v, lse, dsum]: [&DeviceBuffer; 6],
    shape: &FlashShape,
    cfg: LaunchConfig,
) -> Result<()> {
    let f = ptx.function(gpu, FlashKernel::Dq.name(shape.hd)?)?;
    gpu.allow_dynamic_shared(&f, cfg.shared_mem_bytes)?;
    let t = shape.t as i32;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(dq.slice_mut()).arg(dout.slice()).arg(q.slice());
    launch
        .arg(k.slice())
        .arg(v.slice())
        .arg(lse.slice())
        .arg(dsum.slice());
    launch.arg(&t);
    // The arguments are the kernel's (bf16* dq, const bf16* dout, const bf16* q,
    // const bf16* k, const bf16* v, const float* lse, const float* dsum, int t), with the
    // sizes, grid, shared memory and alignment of `launch_dkdv`; block (h, y) writes the rows
    // < t of one query tile of head h only; dq is borrowed mutably, aliasing no input.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel name, for every head dim.
    fn every_name() -> Vec<&'static str> {
        let mut names = vec![FlashKernel::Dsum.name(64).unwrap()];
        for hd in FLASH_HEAD_DIMS {
            for kernel in [FlashKernel::Fwd, FlashKernel::Dkdv, FlashKernel::Dq] {
                names.push(kernel.name(hd).unwrap());
            }
        }
        names
    }

    #[test]
    fn every_kernel_a_launcher_names_is_in_the_ptx_and_nothing_else() {
        let entries = Module::Flash.entries();
        let names = every_name();
        for name in &names {
            assert!(entries.contains(name), "{name} is not in flash.ptx");
        }
        assert_eq!(entries.len(), names.len(), "{entries:?}");
    }

    #[test]
    fn the_constants_are_those_of_flash_cu() {
        // flash.cu sizes its tiles and carves its shared memory by its own copies of these
        let source = include_str!("../cuda/flash.cu");
        let lines = [
            "constexpr int WARPS = 4;".to_string(),
            "constexpr int MMA_M = 16;".to_string(),
            format!("constexpr int BKV = {FLASH_BKV};"),
            format!("constexpr int PAD = {FLASH_PAD};"),
            format!("constexpr int KV_STAGES = {FLASH_STAGES};"),
            format!("constexpr int DSUM_THREADS = {DSUM_THREADS};"),
            "constexpr int MAX_SMEM_BYTES = 227 * 1024;".to_string(),
            "constexpr int BQ = WARPS * MMA_M;".to_string(),
            "constexpr int THREADS = 32 * WARPS;".to_string(),
            "return HD <= 64 ? 64 : 32;".to_string(),
        ];
        for line in &lines {
            assert!(source.contains(line.as_str()), "flash.cu lacks {line:?}");
        }
        assert_eq!((FLASH_BQ, FLASH_THREADS), (4 * 16, 32 * 4));
        assert_eq!(MAX_DYNAMIC_SHARED_BYTES, 227 * 1024);
        for hd in [32, 64, 128] {
            assert_eq!(bwd_query_tile(hd), if hd <= 64 { 64 } else { 32 });
        }
    }

    #[test]
    fn the_shared_memory_matches_the_header_and_fits() {
        // the byte counts flash.cu's header states for the forward, 2 stages and (v1) 1
        let fwd = |hd, stages| smem_bytes(FlashKernel::Fwd, hd, stages);
        assert_eq!([fwd(32, 2), fwd(64, 2), fwd(128, 2)], [25600, 46080, 87040]);
        assert_eq!([fwd(32, 1), fwd(64, 1), fwd(128, 1)], [15360, 27648, 52224]);
        // dkdv at hd 64: K, V (2 x 9216) + 2 x (Q, dout (2 x 9216) + lse, D (512))
        assert_eq!(
            smem_bytes(FlashKernel::Dkdv, 64, 2),
            18432 + 2 * (18432 + 512)
        );
        // dq at hd 128: Q, dout (2 x 17408) + lse, D (512) + 2 x (K, V (2 x 17408))
        assert_eq!(smem_bytes(FlashKernel::Dq, 128, 2), 34816 + 512 + 2 * 34816);
        assert_eq!(smem_bytes(FlashKernel::Dsum, 128, 2), 0);
        for hd in FLASH_HEAD_DIMS {
            for kernel in FlashKernel::ALL {
                for stages in [1, 2] {
                    assert!(smem_bytes(kernel, hd, stages) <= MAX_DYNAMIC_SHARED_BYTES);
                }
            }
        }
    }

    #[test]
    fn the_grid_covers_ragged_lengths_with_whole_tiles() {
        for t in [1, 17, 63, 64, 65, 100, 257, 1024, 4097, MAX_T] {
            for b_h in [1, 3, 96] {
                for hd in FLASH_HEAD_DIMS {
                    let shape = FlashShape::new(b_h, t, hd);
                    for kernel in [FlashKernel::Fwd, FlashKernel::Dkdv, FlashKernel::Dq] {
                        let cfg = flash_config(kernel, &shape, 2).unwrap().unwrap();
                        let (x, y, z) = cfg.grid_dim;
                        assert_eq!((x as usize, z), (b_h, 1), "{kernel:?} {shape:?}");
                        // the last tile reaches T, and none lies wholly past it
                        let y = y as usize;
                        assert!(y * FLASH_BQ >= t && (y - 1) * FLASH_BQ < t, "{shape:?}");
                        assert_eq!(cfg.block_dim, (FLASH_THREADS, 1, 1));
                        assert_eq!(cfg.shared_mem_bytes as usize, smem_bytes(kernel, hd, 2));
                    }
                    // D: one warp per row, 8 rows per block
                    let cfg = flash_config(FlashKernel::Dsum, &shape, 2).unwrap().unwrap();
                    let blocks = cfg.grid_dim.0 as usize;
                    assert!(blocks * 8 >= b_h * t && (blocks - 1) * 8 < b_h * t);
                    assert_eq!(cfg.block_dim, (DSUM_THREADS, 1, 1));
                }
            }
        }
    }

    #[test]
    fn empty_shapes_launch_nothing_and_huge_ones_are_refused() {
        for kernel in FlashKernel::ALL {
            for shape in [FlashShape::new(0, 5, 64), FlashShape::new(5, 0, 64)] {
                assert!(flash_config(kernel, &shape, 2).unwrap().is_none());
            }
            let long = FlashShape::new(1, MAX_T + 1, 64);
            let err = flash_config(kernel, &long, 2).unwrap_err().to_string();
            assert!(err.contains("more than one launch covers"), "{err}");
            let wide = FlashShape::new(MAX_GRID_X + 1, 1, 64);
            assert!(flash_config(kernel, &wide, 2).is_err());
        }
    }

    #[test]
    fn a_head_dim_without_a_kernel_is_refused_with_the_ones_there_are() {
        for hd in [0, 16, 48, 96, 256] {
            assert!(!supports_head_dim(hd));
            for kernel in [FlashKernel::Fwd, FlashKernel::Dkdv, FlashKernel::Dq] {
                let err = flash_config(kernel, &FlashShape::new(2, 10, hd), 2).unwrap_err();
                let msg = err.to_string();
                assert!(
                    msg.contains(&format!("head dim {hd}")) && msg.contains("[32, 64, 128]"),
                    "{msg}"
                );
            }
        }
        for hd in FLASH_HEAD_DIMS {
            assert!(supports_head_dim(hd));
        }
    }
}
