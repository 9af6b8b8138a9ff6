//! Launchers of `kernels/cuda/hypernet.cu`: the hypernetwork's weight generation W = H F and
//! its backward (dF = H^T dW, dH = dW F^T), with the N steps' gradients read where they are.
//!
//! What the kernels compute (MODEL.md section 3), with H [N, K] the coefficient rows of the N
//! evaluation times and F [K, P] the stacked parameter:
//!
//! ```text
//! hypernet_fwd   W[i] = sum_k H[i, k] F[k]                          -> W [N, P]
//! hypernet_bwd   dF[k] = (acc[k] +) sum_i H[i, k] dW_i,  partial[b] = block b's share of dW F^T
//! hypernet_dh    dH = sum_b partial[b], in block order               -> dH [N, K]
//! ```
//!
//! F, W, dF and the dW_i are in the kernels' element type `f_ty` (f32 or bf16); H and dH in
//! their own `h_ty`; everything is summed in f32. The dW_i are N separate buffers of P
//! elements: `hypernet_bwd_into` uploads their N device addresses as a small table (8 N bytes,
//! per call) and the kernel reads each where it lies, so the tape's per-step gradients are never
//! joined into one copy. Every output is overwritten, never accumulated in place; the backward
//! may instead be handed `acc`, a gradient gathered so far, and then writes acc + dF in the same
//! pass (read once beside the rest: (N + 3K) P elements moved, against (N + 5K) P for dF
//! written and then added). dF and acc share a type `df_ty`: F's, or f32 over a bf16 F (the
//! `_accf32` entries; there is none for a bf16 dF over an f32 F). The backward allocates the
//! table and an f32 scratch of [G, N, K] partial sums per call.
//!
//! The grid is G = min(ceil(P / 512), the blocks the device holds at once), from the driver's
//! occupancy of each kernel: every block is resident and owns an equal share of the columns,
//! so none runs alone at the end. The launch arithmetic (kernel names, shared memory, grids,
//! shares) is pure functions here, which the CPU tests check against hypernet.cu's constants.
//! Reference: `runtime/src/cpu/hypernet.rs`; test: `tests/tests/gpu_hypernet.rs`.

use crate::check::{bytes_of, check_args, launch_error, Arg};
use crate::elementwise::ElemType;
use crate::error::{cuda, Result};
use crate::gpu::{DeviceBuffer, Gpu};
use crate::launch::MAX_GRID_X;
use crate::module::Module;
use cudarc::driver::{CudaFunction, DevicePtr, LaunchConfig, PushKernelArg};

/// Threads per block of the forward and backward: 4 warps (`THREADS` in hypernet.cu).
pub const HYPERNET_THREADS: u32 = 128;

/// Warps per block: the backward keeps one [N, K] f32 accumulator of dH per warp.
pub const HYPERNET_WARPS: usize = 4;

/// Columns of F per thread in the combine (`COLS`).
pub const HYPERNET_COLS: usize = 4;

/// Columns per chunk a block walks: 4 per thread (`CHUNK`).
pub const HYPERNET_CHUNK: usize = HYPERNET_THREADS as usize * HYPERNET_COLS;

/// Output rows per pass of the combine (`ROWS`); the coefficients are padded to a multiple.
pub const HYPERNET_ROWS: usize = 12;

/// Block shares start at multiples of this many columns (`SHARE_ALIGN`).
pub const SHARE_ALIGN: usize = 8;

/// Bytes of padding after each slab row (`PAD_BYTES`).
pub const PAD_BYTES: usize = 16;

/// Rows of an mma tile: bf16's backward slabs are padded to a multiple (`MMA_ROWS`).
pub const MMA_ROWS: usize = 16;

/// Threads per block of the dH reduction, one block per (i, k) (`DH_THREADS`).
pub const DH_THREADS: u32 = 128;

/// Blocks per SM the f32 backward is compiled for (`BWD_F32_BLOCKS`, its `__launch_bounds__`):
/// at most 128 registers per thread. Only the .cu uses it; the test below keeps the two equal.
pub const HYPERNET_BWD_F32_BLOCKS: usize = 4;

/// The most dynamic shared memory a block may opt in to on sm_90.
pub const MAX_DYNAMIC_SHARED_BYTES: usize = 227 * 1024;

/// The most columns one launch takes: 2^36, which keeps the kernels' share arithmetic
/// (G x ceil(P / 8), G <= ceil(P / 512)) within a u64, and is far past any weight.
pub const MAX_COLUMNS: usize = 1 << 36;

/// The sizes of one generation: N steps, K stacked rows, P columns per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypernetShape {
    pub n: usize,
    pub k: usize,
    pub p: usize,
}

impl HypernetShape {
    pub fn new(n: usize, k: usize, p: usize) -> HypernetShape {
        HypernetShape { n, k, p }
    }
}

/// The two main kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypernetKernel {
    Fwd,
    Bwd,
}

/// The entry of `kernel` for F's type and H's: `hypernet_{fwd|bwd}_{f}_h{h}`.
pub fn hypernet_kernel(kernel: HypernetKernel, f_ty: ElemType, h_ty: ElemType) -> &'static str {
    use {ElemType::*, HypernetKernel::*};
    match (kernel, f_ty, h_ty) {
        (Fwd, F32, F32) => "hypernet_fwd_f32_hf32",
        (Fwd, F32, Bf16) => "hypernet_fwd_f32_hbf16",
        (Fwd, Bf16, F32) => "hypernet_fwd_bf16_hf32",
        (Fwd, Bf16, Bf16) => "hypernet_fwd_bf16_hbf16",
        (Bwd, F32, F32) => "hypernet_bwd_f32_hf32",
        (Bwd, F32, Bf16) => "hypernet_bwd_f32_hbf16",
        (Bwd, Bf16, F32) => "hypernet_bwd_bf16_hf32",
        (Bwd, Bf16, Bf16) => "hypernet_bwd_bf16_hbf16",
    }
}

/// The backward's entry for F's type, H's, and dF's (also acc's): `hypernet_kernel(Bwd, ..)`
/// when dF is in F's type, `hypernet_bwd_bf16_h{h}_accf32` for an f32 dF over a bf16 F, and
/// `None` for a bf16 dF over an f32 F, which no kernel writes.
pub fn hypernet_bwd_kernel(
    f_ty: ElemType,
    h_ty: ElemType,
    df_ty: ElemType,
) -> Option<&'static str> {
    use ElemType::*;
    match (f_ty, h_ty, df_ty) {
        _ if df_ty == f_ty => Some(hypernet_kernel(HypernetKernel::Bwd, f_ty, h_ty)),
        (Bf16, F32, F32) => Some("hypernet_bwd_bf16_hf32_accf32"),
        (Bf16, Bf16, F32) => Some("hypernet_bwd_bf16_hbf16_accf32"),
        _ => None,
    }
}

/// The dH reduction's entry for H's type: `hypernet_dh_{h}`.
pub fn dh_kernel(h_ty: ElemType) -> &'static str {
    match h_ty {
        ElemType::F32 => "hypernet_dh_f32",
        ElemType::Bf16 => "hypernet_dh_bf16",
    }
}

/// Elements of a padded slab row (`slab_stride<T>`).
pub fn slab_stride(ty: ElemType) -> usize {
    HYPERNET_CHUNK + PAD_BYTES / ty.size()
}

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Rows of a backward slab holding `rows` rows: whole mma tiles for bf16 (`bwd_slab_rows`).
pub fn bwd_slab_rows(ty: ElemType, rows: usize) -> usize {
    match ty {
        ElemType::Bf16 => round_up(rows, MMA_ROWS),
        ElemType::F32 => rows,
    }
}

/// The forward's shared memory: F's slab [K][stride] and the coefficients [K][N to 12] f32.
pub fn fwd_smem_bytes(ty: ElemType, n: usize, k: usize) -> usize {
    k * slab_stride(ty) * ty.size() + k * round_up(n, HYPERNET_ROWS) * 4
}

/// The backward's shared memory: the slabs of F and dW, the coefficients [N][K to 12] f32,
/// and the warps' dH accumulators [4][N][K] f32.
pub fn bwd_smem_bytes(ty: ElemType, n: usize, k: usize) -> usize {
    let rows = bwd_slab_rows(ty, k) + bwd_slab_rows(ty, n);
    let coef = n * round_up(k, HYPERNET_ROWS) * 4;
    rows * slab_stride(ty) * ty.size() + coef + HYPERNET_WARPS * n * k * 4
}

/// The grid G: one block per chunk of columns, at most `resident` (what the device holds at
/// once), at least 1.
pub fn hypernet_blocks(p: usize, resident: usize) -> usize {
    p.div_ceil(HYPERNET_CHUNK).min(resident).max(1)
}

/// Block b's columns [lo, hi) of G shares (hypernet.cu's `column_share`): P cut at multiples
/// of `SHARE_ALIGN` into near-equal pieces.
pub fn column_share(b: usize, blocks: usize, p: usize) -> (usize, usize) {
    let units = p.div_ceil(SHARE_ALIGN) as u128;
    let at = |b: usize| ((b as u128 * units / blocks as u128) as usize * SHARE_ALIGN).min(p);
    (at(b), at(b + 1))
}

/// The configuration of the forward or backward over `blocks` blocks with `smem` bytes.
pub fn hypernet_config(blocks: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (HYPERNET_THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// The dH reduction: one block per (i, k), 4 floats of shared memory per warp; `None` when
/// N K = 0.
pub fn dh_config(nk: usize) -> Option<LaunchConfig> {
    (nk > 0).then_some(LaunchConfig {
        grid_dim: (nk as u32, 1, 1),
        block_dim: (DH_THREADS, 1, 1),
        shared_mem_bytes: DH_THREADS / 32 * 4,
    })
}

/// Checks the shape against the kernels' limits (N and K as `int`s, the dH grid, byte counts
/// within a usize, the shared memory a block may have); returns the kernel's shared memory.
pub fn check_shape(
    name: &str,
    kernel: HypernetKernel,
    ty: ElemType,
    s: &HypernetShape,
) -> Result<usize> {
    let int_max = i32::MAX as usize;
    if s.n > int_max || s.k > int_max || s.n * s.k > MAX_GRID_X.min(int_max) {
        let msg = format!(
            "N = {}, K = {}: more than the kernels' int sizes hold",
            s.n, s.k
        );
        return Err(launch_error(name, msg));
    }
    if s.p > MAX_COLUMNS {
        let msg = format!(
            "P = {} columns, more than one launch takes ({MAX_COLUMNS})",
            s.p
        );
        return Err(launch_error(name, msg));
    }
    bytes_of(name, &[s.n.max(s.k), s.p], 4)?;
    let smem = match kernel {
        HypernetKernel::Fwd => fwd_smem_bytes(ty, s.n, s.k),
        HypernetKernel::Bwd => bwd_smem_bytes(ty, s.n, s.k),
    };
    if smem > MAX_DYNAMIC_SHARED_BYTES {
        let msg = format!(
            "N = {}, K = {} needs {smem} bytes of shared memory, more than a block may have \
             ({MAX_DYNAMIC_SHARED_BYTES}); generate fewer steps per call",
            s.n, s.k
        );
        return Err(launch_error(name, msg));
    }
    Ok(smem)
}

/// G for kernel `f` on this device: its blocks per multiprocessor (by the driver) times the
/// multiprocessors, capped by the chunks there are.
fn grid_of(gpu: &Gpu, name: &str, f: &CudaFunction, smem: usize, p: usize) -> Result<usize> {
    let per_sm = gpu.blocks_per_multiprocessor(f, HYPERNET_THREADS, smem as u32)?;
    if per_sm == 0 {
        let msg = format!("not one block of {smem} bytes of shared memory fits a multiprocessor");
        return Err(launch_error(name, msg));
    }
    Ok(hypernet_blocks(p, per_sm * gpu.multiprocessors()?))
}

// ---- forward ----

/// Every step's weights, in a new buffer.
///
/// Shapes: h [N, K] (h_ty), f [K, P] (f_ty) -> w [N, P] (f_ty)
pub fn hypernet_fwd(
    f_ty: ElemType,
    h_ty: ElemType,
    h: &DeviceBuffer,
    f: &DeviceBuffer,
    shape: &HypernetShape,
) -> Result<DeviceBuffer> {
    let name = hypernet_kernel(HypernetKernel::Fwd, f_ty, h_ty);
    let bytes = bytes_of(name, &[shape.n, shape.p], f_ty.size())?;
    let mut w = f.gpu().alloc(bytes)?;
    hypernet_fwd_into(&mut w, f_ty, h_ty, h, f, shape)?;
    Ok(w)
}

/// `hypernet_fwd` into `w` (overwritten).
///
/// Shapes: w [N, P] (written); h [N, K], f [K, P]
pub fn hypernet_fwd_into(
    w: &mut DeviceBuffer,
    f_ty: ElemType,
    h_ty: ElemType,
    h: &DeviceBuffer,
    f: &DeviceBuffer,
    shape: &HypernetShape,
) -> Result<()> {
    let name = hypernet_kernel(HypernetKernel::Fwd, f_ty, h_ty);
    let smem = check_shape(name, HypernetKernel::Fwd, f_ty, shape)?;
    let HypernetShape { n, k, p } = *shape;
    let e = f_ty.size();
    let args = [
        Arg::new("h", h, n * k * h_ty.size()),
        Arg::new("f", f, k * p * e),
        Arg::new("w", w, n * p * e),
    ];
    check_args(name, &args)?;
    if n == 0 || p == 0 {
        return Ok(());
    }
    let gpu = f.gpu().clone();
    let func = gpu.function(Module::Hypernet, name)?;
    gpu.allow_dynamic_shared(&func, smem as u32)?;
    let cfg = hypernet_config(grid_of(&gpu, name, &func, smem, p)?, smem);
    let (n32, k32, p64) = (n as i32, k as i32, p as u64);
    let mut launch = gpu.stream().launch_builder(&func);
    launch.arg(w.slice_mut()).arg(h.slice()).arg(f.slice());
    launch.arg(&n32).arg(&k32).arg(&p64);
    // The arguments are the kernel's (T* w, const H* h, const T* f, int n, int k, u64 p). h
    // holds N K values of H, f K P and w N P values of T (checked above); block b writes
    // only the columns of its share of [0, P) in w's N rows, reading the same columns of f's
    // K rows and all of h. w is borrowed mutably, so it aliases no input. The shared memory
    // is the kernel's carve (`fwd_smem_bytes`, within the opt-in limit, checked); buffers
    // start at their allocation, 256-byte aligned, as its 16-byte copies need.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

// ---- backward ----

/// (dh, df) of `hypernet_fwd` from the N steps' gradients, in new buffers; df is acc + dF when
/// `acc` is given. dF (and acc) are of `df_ty`: f_ty, or f32 over a bf16 f.
///
/// Shapes: dws N x [P] (f_ty), h [N, K] (h_ty), f [K, P] (f_ty), acc [K, P] (df_ty)
/// -> dh [N, K] (h_ty), df [K, P] (df_ty)
#[allow(clippy::too_many_arguments)] // the kernels' own list: outputs, inputs, sizes
pub fn hypernet_bwd(
    f_ty: ElemType,
    h_ty: ElemType,
    df_ty: ElemType,
    dws: &[&DeviceBuffer],
    h: &DeviceBuffer,
    f: &DeviceBuffer,
    acc: Option<&DeviceBuffer>,
    shape: &HypernetShape,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    let name = bwd_name(f_ty, h_ty, df_ty)?;
    let gpu = f.gpu();
    let mut dh = gpu.alloc(bytes_of(name, &[shape.n, shape.k], h_ty.size())?)?;
    let mut df = gpu.alloc(bytes_of(name, &[shape.k, shape.p], df_ty.size())?)?;
    hypernet_bwd_into(&mut dh, &mut df, f_ty, h_ty, df_ty, dws, h, f, acc, shape)?;
    Ok((dh, df))
}

/// The backward's entry, or the refusal of a bf16 dF over an f32 F.
fn bwd_name(f_ty: ElemType, h_ty: ElemType, df_ty: ElemType) -> Result<&'static str> {
    hypernet_bwd_kernel(f_ty, h_ty, df_ty).ok_or_else(|| {
        let msg = "no kernel writes a bf16 dF over an f32 F; pass an f32 acc and round the sum";
        launch_error(
            hypernet_kernel(HypernetKernel::Bwd, f_ty, h_ty),
            msg.to_string(),
        )
    })
}

/// `hypernet_bwd` into `dh` and `df` (both overwritten; df with acc + dF when `acc` is given).
/// Allocates the table of the dws' addresses (8 N bytes) and
/// the [G, N, K] f32 partial sums for the call.
///
/// Shapes: dh [N, K] (h_ty), df [K, P] (df_ty) (written); dws N x [P], h [N, K], f [K, P],
/// acc [K, P] (df_ty)
#[allow(clippy::too_many_arguments)] // the kernels' own list: outputs, inputs, sizes
pub fn hypernet_bwd_into(
    dh: &mut DeviceBuffer,
    df: &mut DeviceBuffer,
    f_ty: ElemType,
    h_ty: ElemType,
    df_ty: ElemType,
    dws: &[&DeviceBuffer],
    h: &DeviceBuffer,
    f: &DeviceBuffer,
    acc: Option<&DeviceBuffer>,
    shape: &HypernetShape,
) -> Result<()> {
    let name = bwd_name(f_ty, h_ty, df_ty)?;
    let smem = check_shape(name, HypernetKernel::Bwd, f_ty, shape)?;
    let HypernetShape { n, k, p } = *shape;
    if dws.len() != n {
        let msg = format!("{} step gradients for N = {n} steps", dws.len());
        return Err(launch_error(name, msg));
    }
    let e = f_ty.size();
    let mut args = vec![
        Arg::new("h", h, n * k * h_ty.size()),
        Arg::new("f", f, k * p * e),
        Arg::new("dh", dh, n * k * h_ty.size()),
        Arg::new("df", df, k * p * df_ty.size()),
    ];
    args.extend(dws.iter().map(|dw| Arg::new("dw", dw, p * e)));
    args.extend(acc.map(|acc| Arg::new("acc", acc, k * p * df_ty.size())));
    check_args(name, &args)?;
    let gpu = f.gpu().clone();
    if p == 0 {
        // no columns: dH is a sum of nothing, and dF has no elements
        if n * k > 0 {
            gpu.stream()
                .memset_zeros(dh.slice_mut())
                .map_err(cuda("cuMemsetD8Async"))?;
        }
        return Ok(());
    }
    if k == 0 {
        return Ok(()); // dF and dH have no elements
    }
    let func = gpu.function(Module::Hypernet, name)?;
    gpu.allow_dynamic_shared(&func, smem as u32)?;
    let blocks = grid_of(&gpu, name, &func, smem, p)?;
    let mut partial = gpu.alloc(bytes_of(name, &[blocks, n, k], 4)?.max(4))?;
    // the table of the steps' addresses; each guard waits for the buffer's pending writes and
    // records this launch's read when dropped (after the launch is queued)
    let stream = gpu.stream();
    let (ptrs, _reads): (Vec<u64>, Vec<_>) =
        dws.iter().map(|dw| dw.slice().device_ptr(stream)).unzip();
    let table = gpu.upload(&ptrs)?;
    let (n32, k32, p64, no_acc) = (n as i32, k as i32, p as u64, 0u64);
    let mut launch = stream.launch_builder(&func);
    launch.arg(df.slice_mut()).arg(partial.slice_mut());
    launch.arg(table.slice()).arg(h.slice()).arg(f.slice());
    match acc {
        Some(acc) => launch.arg(acc.slice()),
        None => launch.arg(&no_acc), // the kernel's nullptr: dF overwritten
    };
    launch.arg(&n32).arg(&k32).arg(&p64);
    // The arguments are the kernel's (O* df, float* partial, const T* const* dws, const H* h,
    // const T* f, const O* acc, int n, int k, u64 p), O the type of df_ty. df holds K P values
    // of O, partial G N K floats (allocated so), h N K values of H, f K P values of T, acc
    // (when not null) K P values of O, and the table N addresses, each of a live buffer of P
    // values of T on this device (checked above; the buffers outlive the launch, and the
    // stream orders their later reuse after it). Block b reads and writes only its share's
    // columns of acc and df, and its own row of partial. df and partial are borrowed mutably
    // and alias no input (a dw or an acc that was df would be borrowed twice). The shared
    // memory is the kernel's carve (`bwd_smem_bytes`, checked); every buffer starts 256-byte
    // aligned.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(hypernet_config(blocks, smem)) }.map_err(cuda("cuLaunchKernel"))?;
    launch_dh(&gpu, dh, h_ty, &partial, blocks, n * k)
}

/// dh = the sum of the blocks' partials, in block order.
///
/// Shapes: dh [N K] (written); partial [blocks, N K] f32
fn launch_dh(
    gpu: &Gpu,
    dh: &mut DeviceBuffer,
    h_ty: ElemType,
    partial: &DeviceBuffer,
    blocks: usize,
    nk: usize,
) -> Result<()> {
    let Some(cfg) = dh_config(nk) else {
        return Ok(());
    };
    let f = gpu.function(Module::Hypernet, dh_kernel(h_ty))?;
    let (blocks32, nk32) = (blocks as i32, nk as i32);
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(dh.slice_mut()).arg(partial.slice());
    launch.arg(&blocks32).arg(&nk32);
    // The arguments are the kernel's (H* dh, const float* partial, int blocks, int nk). dh
    // holds nk values of H and partial blocks x nk floats (checked and allocated by the
    // caller); block q reads column q of partial and writes dh[q] only, and there are nk
    // blocks with the 16 bytes of shared memory the kernel uses. dh is borrowed mutably.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_name() -> Vec<&'static str> {
        let mut names = Vec::new();
        for f_ty in ElemType::ALL {
            for h_ty in ElemType::ALL {
                for kernel in [HypernetKernel::Fwd, HypernetKernel::Bwd] {
                    names.push(hypernet_kernel(kernel, f_ty, h_ty));
                }
            }
            names.push(dh_kernel(f_ty));
        }
        // the f32 dF over a bf16 F
        for h_ty in ElemType::ALL {
            names.extend(hypernet_bwd_kernel(ElemType::Bf16, h_ty, ElemType::F32));
        }
        names
    }

    #[test]
    fn the_backward_is_named_by_its_three_types_and_refuses_bf16_over_f32() {
        use ElemType::*;
        for f_ty in ElemType::ALL {
            for h_ty in ElemType::ALL {
                // dF in F's own type: the plain backward's entry, with or without acc
                let plain = hypernet_kernel(HypernetKernel::Bwd, f_ty, h_ty);
                assert_eq!(hypernet_bwd_kernel(f_ty, h_ty, f_ty), Some(plain));
            }
        }
        assert_eq!(
            hypernet_bwd_kernel(Bf16, F32, F32),
            Some("hypernet_bwd_bf16_hf32_accf32")
        );
        assert_eq!(
            hypernet_bwd_kernel(Bf16, Bf16, F32),
            Some("hypernet_bwd_bf16_hbf16_accf32")
        );
        for h_ty in ElemType::ALL {
            assert_eq!(hypernet_bwd_kernel(F32, h_ty, Bf16), None);
        }
        // the refusal names the plain kernel and says what to do instead
        let msg = bwd_name(F32, Bf16, Bf16).unwrap_err().to_string();
        assert!(
            msg.starts_with("hypernet_bwd_f32_hbf16: ") && msg.contains("f32 acc"),
            "{msg}"
        );
    }

    #[test]
    fn every_kernel_a_launcher_names_is_in_the_ptx_and_nothing_else() {
        let entries = Module::Hypernet.entries();
        let names = every_name();
        for name in &names {
            assert!(entries.contains(name), "{name} is not in hypernet.ptx");
        }
        assert_eq!(entries.len(), names.len(), "{entries:?}");
    }

    #[test]
    fn the_constants_are_those_of_hypernet_cu() {
        // hypernet.cu carves its shared memory and splits its work by its own copies of these
        let source = include_str!("../cuda/hypernet.cu");
        let lines = [
            format!("constexpr int THREADS = {HYPERNET_THREADS};"),
            "constexpr int WARPS = THREADS / 32;".to_string(),
            format!("constexpr int COLS = {HYPERNET_COLS};"),
            "constexpr int CHUNK = THREADS * COLS;".to_string(),
            format!("constexpr int ROWS = {HYPERNET_ROWS};"),
            format!("constexpr int SHARE_ALIGN = {SHARE_ALIGN};"),
            format!("constexpr int PAD_BYTES = {PAD_BYTES};"),
            format!("constexpr int MMA_ROWS = {MMA_ROWS};"),
            format!("constexpr int DH_THREADS = {DH_THREADS};"),
            format!("constexpr int BWD_F32_BLOCKS = {HYPERNET_BWD_F32_BLOCKS};"),
        ];
        for line in &lines {
            assert!(source.contains(line.as_str()), "hypernet.cu lacks {line:?}");
        }
        assert_eq!(HYPERNET_WARPS, HYPERNET_THREADS as usize / 32);
        assert_eq!(HYPERNET_CHUNK, 512);
        // a share's start is a whole 16-byte vector of either dtype
        for ty in ElemType::ALL {
            assert_eq!(SHARE_ALIGN % (16 / ty.size()), 0);
            assert_eq!(slab_stride(ty) * ty.size() % 16, 0);
        }
    }

    #[test]
    fn the_shared_memory_matches_the_header_and_fits() {
        // hypernet.cu's header: at N = 12, K = 21, forward 22 KB (bf16) / 43 KB (f32),
        // backward 54 KB / 72 KB
        let (bf, f32) = (ElemType::Bf16, ElemType::F32);
        // forward bf16: F 21 x 520 x 2 + coef 21 x 12 x 4
        assert_eq!(fwd_smem_bytes(bf, 12, 21), 21 * 1040 + 21 * 48);
        assert_eq!(fwd_smem_bytes(f32, 12, 21), 21 * 2064 + 21 * 48);
        // backward bf16: F 32 rows and dW 16 rows of 1040 B, coef 12 x 24 x 4, dH 4 x 12 x 21 x 4
        assert_eq!(
            bwd_smem_bytes(bf, 12, 21),
            48 * 1040 + 12 * 24 * 4 + 4 * 252 * 4
        );
        assert_eq!(
            bwd_smem_bytes(f32, 12, 21),
            33 * 2064 + 12 * 24 * 4 + 4 * 252 * 4
        );
        let kb = |b: usize| (b as f64 / 1024.0).round() as usize;
        assert_eq!(
            [
                kb(fwd_smem_bytes(bf, 12, 21)),
                kb(fwd_smem_bytes(f32, 12, 21))
            ],
            [22, 43]
        );
        assert_eq!(
            [
                kb(bwd_smem_bytes(bf, 12, 21)),
                kb(bwd_smem_bytes(f32, 12, 21))
            ],
            [54, 72]
        );
        // the model's sizes all fit: N up to 48, K up to 21
        for ty in ElemType::ALL {
            for n in [1, 4, 12, 48] {
                for k in [8, 9, 20, 21] {
                    assert!(
                        bwd_smem_bytes(ty, n, k) <= MAX_DYNAMIC_SHARED_BYTES,
                        "{n} {k}"
                    );
                    assert!(fwd_smem_bytes(ty, n, k) <= MAX_DYNAMIC_SHARED_BYTES);
                }
            }
            assert_eq!(bwd_slab_rows(ty, 16), 16);
        }
        assert_eq!([bwd_slab_rows(bf, 1), bwd_slab_rows(bf, 17)], [16, 32]);
        assert_eq!(bwd_slab_rows(f32, 17), 17);
    }

    #[test]
    fn the_shares_tile_the_columns_evenly_at_multiples_of_8() {
        for p in [
            1,
            7,
            8,
            130,
            511,
            512,
            513,
            3 * 512 + 40,
            589_824,
            2_359_296,
            2_359_297,
        ] {
            for resident in [1, 2, 3, 132, 528, 924, usize::MAX] {
                let blocks = hypernet_blocks(p, resident);
                assert!(blocks >= 1 && blocks <= resident.max(1));
                assert!(blocks <= p.div_ceil(HYPERNET_CHUNK));
                let mut next = 0;
                let (mut least, mut most) = (usize::MAX, 0);
                for b in 0..blocks {
                    let (lo, hi) = column_share(b, blocks, p);
                    assert_eq!(lo, next, "P {p}, {blocks} blocks: share {b} starts at {lo}");
                    assert!(hi > lo, "P {p}, {blocks} blocks: share {b} is empty");
                    assert!(lo % SHARE_ALIGN == 0 && (hi % SHARE_ALIGN == 0 || hi == p));
                    (least, most, next) = (least.min(hi - lo), most.max(hi - lo), hi);
                }
                assert_eq!(next, p, "the shares end at P");
                // every block moves the same bytes, to within one unit (and P's ragged end)
                assert!(most - least <= 2 * SHARE_ALIGN, "P {p}: {least} .. {most}");
            }
        }
    }

    #[test]
    fn the_grids_are_whole_blocks_of_128() {
        let cfg = hypernet_config(528, 57_000);
        assert_eq!(cfg.grid_dim, (528, 1, 1));
        assert_eq!(cfg.block_dim, (HYPERNET_THREADS, 1, 1));
        assert_eq!(cfg.shared_mem_bytes, 57_000);
        assert!(dh_config(0).is_none());
        let dh = dh_config(252).unwrap();
        assert_eq!(
            (dh.grid_dim, dh.block_dim, dh.shared_mem_bytes),
            ((252, 1, 1), (128, 1, 1), 16)
        );
        // the GPT-2-small-shaped model: P = 768 x 3072 in 4608 chunks, capped at the device
        assert_eq!(hypernet_blocks(768 * 3072, 528), 528);
        assert_eq!(hypernet_blocks(768, 528), 2);
        assert_eq!(hypernet_blocks(0, 528), 1);
    }

    #[test]
    fn shapes_past_the_kernels_limits_are_refused_with_the_kernel_name() {
        let name = hypernet_kernel(HypernetKernel::Bwd, ElemType::F32, ElemType::F32);
        let ok = HypernetShape::new(12, 21, 768 * 3072);
        assert_eq!(
            check_shape(name, HypernetKernel::Bwd, ElemType::F32, &ok).unwrap(),
            bwd_smem_bytes(ElemType::F32, 12, 21)
        );
        let wide = HypernetShape::new(200, 200, 10);
        let msg = check_shape(name, HypernetKernel::Bwd, ElemType::F32, &wide)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("hypernet_bwd_f32_hf32: ") && msg.contains("shared memory"),
            "{msg}"
        );
        let huge = HypernetShape::new(1, usize::MAX / 2, 3);
        assert!(check_shape(name, HypernetKernel::Fwd, ElemType::F32, &huge).is_err());
        let long = HypernetShape::new(1, 1, MAX_COLUMNS + 1);
        let msg = check_shape(name, HypernetKernel::Fwd, ElemType::F32, &long).unwrap_err();
        assert!(msg.to_string().contains("columns"), "{msg}");
    }
}
