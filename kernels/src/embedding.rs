//! Launchers of `kernels/cuda/embedding.cu`: the embedding gather and its scatter-add backward.
//!
//! `embedding_fwd` overwrites its output. `embedding_bwd_into` ACCUMULATES into `dweight` (it
//! adds each position's gradient row to its token's row); `embedding_bwd` starts from zeros, so
//! it returns the plain gradient. The backward's atomic adds make the last bits of a repeated
//! token's row depend on scheduling (see the kernel's header).
//!
//! The ids live on the device, so no launcher can check them: an id >= V is skipped by the
//! kernels (nothing is read or written for it), and the runtime validates ids on the host before
//! uploading them (runtime/src/ops/embedding.rs `check_ids`).

use crate::check::{bytes_of, check_args, Arg};
use crate::elementwise::ElemType;
use crate::error::{cuda, Result};
use crate::gpu::DeviceBuffer;
use crate::module::Module;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// The most threads per block: 8 warps; a wider row loops over its columns.
pub const EMBEDDING_MAX_THREADS: u32 = 256;

/// The most blocks: 132 SMs x 32 resident blocks (Hopper's limit per SM), the most the H200
/// runs at once when blocks are one warp; past that each block strides over positions.
pub const EMBEDDING_MAX_BLOCKS: u32 = 4224;

const WARP: usize = 32;

pub fn embedding_kernel(backward: bool, ty: ElemType) -> &'static str {
    match (backward, ty) {
        (false, ElemType::F32) => "embedding_fwd_f32",
        (false, ElemType::Bf16) => "embedding_fwd_bf16",
        (true, ElemType::F32) => "embedding_bwd_f32",
        (true, ElemType::Bf16) => "embedding_bwd_bf16",
    }
}

/// The configuration of an embedding kernel over `n` positions of `d` columns: one block per
/// position (min(n, 4224) blocks), its threads across the row (D rounded up to a warp, at most
/// 256). `None` when there is nothing to move.
pub fn embedding_config(n: usize, d: usize) -> Option<LaunchConfig> {
    if n == 0 || d == 0 {
        return None;
    }
    let threads = (d.div_ceil(WARP) * WARP).min(EMBEDDING_MAX_THREADS as usize) as u32;
    let blocks = n.min(EMBEDDING_MAX_BLOCKS as usize) as u32;
    Some(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// out[i, :] = weight[ids[i], :]
///
/// Shapes: weight [V, D] (ty), ids [n] (u32) -> out [n, D] (ty)
pub fn embedding_fwd(
    ty: ElemType,
    weight: &DeviceBuffer,
    ids: &DeviceBuffer,
    n: usize,
    vocab: usize,
    d: usize,
) -> Result<DeviceBuffer> {
    let bytes = bytes_of(embedding_kernel(false, ty), &[n, d], ty.size())?;
    let mut out = weight.gpu().alloc(bytes)?;
    embedding_fwd_into(&mut out, ty, weight, ids, n, vocab, d)?;
    Ok(out)
}

/// `embedding_fwd` into `out` (overwritten, except the rows of out-of-range ids).
///
/// Shapes: out [n, D] (ty, written), weight [V, D] (ty), ids [n] (u32)
pub fn embedding_fwd_into(
    out: &mut DeviceBuffer,
    ty: ElemType,
    weight: &DeviceBuffer,
    ids: &DeviceBuffer,
    n: usize,
    vocab: usize,
    d: usize,
) -> Result<()> {
    let name = embedding_kernel(false, ty);
    let args = [
        Arg::new("out", out, bytes_of(name, &[n, d], ty.size())?),
        Arg::new("weight", weight, bytes_of(name, &[vocab, d], ty.size())?),
        Arg::new("ids", ids, bytes_of(name, &[n], 4)?),
    ];
    check_args(name, &args)?;
    launch(
        name,
        embedding_config(n, d),
        out,
        weight,
        ids,
        [n, vocab, d],
    )
}

/// dweight[v, :] = sum of dout[i, :] over the positions i with ids[i] = v, from zeros.
///
/// Shapes: dout [n, D] (ty), ids [n] (u32) -> dweight [V, D] (f32)
pub fn embedding_bwd(
    ty: ElemType,
    dout: &DeviceBuffer,
    ids: &DeviceBuffer,
    n: usize,
    vocab: usize,
    d: usize,
) -> Result<DeviceBuffer> {
    let bytes = bytes_of(embedding_kernel(true, ty), &[vocab, d], 4)?;
    let mut dweight = dout.gpu().alloc(bytes)?;
    if bytes > 0 {
        dout.gpu()
            .stream()
            .memset_zeros(dweight.slice_mut())
            .map_err(cuda("cuMemsetD8"))?;
    }
    embedding_bwd_into(&mut dweight, ty, dout, ids, n, vocab, d)?;
    Ok(dweight)
}

/// dweight[ids[i], :] += dout[i, :] for every position i: ACCUMULATES into `dweight`.
///
/// Shapes: dweight [V, D] (f32, accumulated), dout [n, D] (ty), ids [n] (u32)
pub fn embedding_bwd_into(
    dweight: &mut DeviceBuffer,
    ty: ElemType,
    dout: &DeviceBuffer,
    ids: &DeviceBuffer,
    n: usize,
    vocab: usize,
    d: usize,
) -> Result<()> {
    let name = embedding_kernel(true, ty);
    let args = [
        Arg::new("dweight", dweight, bytes_of(name, &[vocab, d], 4)?),
        Arg::new("dout", dout, bytes_of(name, &[n, d], ty.size())?),
        Arg::new("ids", ids, bytes_of(name, &[n], 4)?),
    ];
    check_args(name, &args)?;
    launch(
        name,
        embedding_config(n, d),
        dweight,
        dout,
        ids,
        [n, vocab, d],
    )
}

/// Launches a kernel of signature (Out* out, const In* table_or_rows, const u32* ids, u64 n,
/// u64 vocab, u64 d), the shape of all four embedding kernels.
fn launch(
    name: &'static str,
    cfg: Option<LaunchConfig>,
    out: &mut DeviceBuffer,
    input: &DeviceBuffer,
    ids: &DeviceBuffer,
    [n, vocab, d]: [usize; 3],
) -> Result<()> {
    let Some(cfg) = cfg else {
        return Ok(());
    };
    let gpu = input.gpu().clone();
    let (n, vocab, d) = (n as u64, vocab as u64, d as u64);
    let f = gpu.function(Module::Embedding, name)?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch
        .arg(out.slice_mut())
        .arg(input.slice())
        .arg(ids.slice());
    launch.arg(&n).arg(&vocab).arg(&d);
    // Every kernel launched here has the signature (Out* out, const In* input,
    // const u32* ids, u64 n, u64 vocab, u64 d); the callers check that out and input hold their
    // [n, D] or [V, D] elements and ids n u32s; out is borrowed mutably, so it aliases neither
    // input; the kernels read ids[i] for i < n only, and skip any id >= V before indexing the
    // table, so no row outside [V, D] is touched whatever the ids hold.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_a_launcher_names_is_in_the_ptx() {
        let entries = Module::Embedding.entries();
        let mut names = Vec::new();
        for ty in ElemType::ALL {
            names.push(embedding_kernel(false, ty));
            names.push(embedding_kernel(true, ty));
        }
        for name in &names {
            assert!(entries.contains(name), "{name} is not in embedding.ptx");
        }
        assert_eq!(
            entries.len(),
            names.len(),
            "embedding.ptx holds {entries:?}"
        );
    }

    #[test]
    fn a_block_per_position_with_a_warp_multiple_across_the_row() {
        assert!(embedding_config(0, 8).is_none());
        assert!(embedding_config(8, 0).is_none());
        // (n, D) -> (blocks, threads): one warp, a partial warp, several warps, the thread cap
        // with a looping row, and the block cap with looping positions
        let cases = [
            ((1, 1), (1, 32)),
            ((3, 32), (3, 32)),
            ((5, 33), (5, 64)),
            ((7, 256), (7, 256)),
            ((2, 300), (2, 256)),
            ((4224, 8), (4224, 32)),
            ((5000, 8), (4224, 32)),
        ];
        for ((n, d), (blocks, threads)) in cases {
            let cfg = embedding_config(n, d).unwrap();
            assert_eq!(cfg.grid_dim, (blocks, 1, 1), "n={n} d={d}");
            assert_eq!(cfg.block_dim, (threads, 1, 1), "n={n} d={d}");
            assert_eq!(threads % 32, 0);
            // one pass covers the row when it fits the block; else each thread loops
            assert!(threads as usize >= d || threads == EMBEDDING_MAX_THREADS);
        }
    }
}
