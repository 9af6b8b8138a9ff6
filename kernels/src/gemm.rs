//! Launchers of `kernels/cuda/gemm.cu`: C = alpha op(A) op(B) + beta C, batched, with either
//! operand transposed, in f32 (SIMT) or bf16 (tensor cores, f32 accumulation).
//!
//! The backward of c = a b is two more products of the same kind, da = dc b^T and db = a^T dc,
//! so one kernel family serves both directions: the transposes are flags of the launch, read
//! through the kernel's indexing, never copies.
//!
//! Each launcher has an allocating form (`gemm`, beta = 0) and an `_into` form that writes a
//! buffer the caller owns. With beta = 0 the output is overwritten and never read; otherwise it
//! accumulates (C = alpha op(A) op(B) + beta C), which is how a gradient sums into its buffer.
//! Every argument is checked (`check`, `operand_bytes`) before the driver is touched.

use crate::check::{check_args, check_sizes, launch_error, Arg};
use crate::elementwise::ElemType;
use crate::error::{cuda, Error, Result};
use crate::gpu::DeviceBuffer;
use crate::launch::{MAX_GRID_X, MAX_GRID_YZ};
use crate::module::Module;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// The product one launch computes: sizes, transposes, and batch strides in elements.
///
/// op(A) is [M, K] and op(B) is [K, N]; A is stored [M, K], or [K, M] when `trans_a`; B is
/// stored [K, N], or [N, K] when `trans_b`; C is [M, N]. Every matrix is row-major and dense.
/// Batch entry z of an operand starts `z * stride` elements into its buffer; a stride of 0
/// broadcasts the operand (a weight shared by the whole batch). C's entries must not overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl GemmShape {
    /// One product [M, K] x [K, N], no transposes.
    pub fn new(m: usize, n: usize, k: usize) -> GemmShape {
        GemmShape::batched(1, m, n, k)
    }

    /// `batch` products, each operand's matrices stored one after the other.
    pub fn batched(batch: usize, m: usize, n: usize, k: usize) -> GemmShape {
        GemmShape {
            batch,
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
        }
    }

    /// The same product with A and/or B stored transposed.
    pub fn transposed(self, trans_a: bool, trans_b: bool) -> GemmShape {
        GemmShape {
            trans_a,
            trans_b,
            ..self
        }
    }

    /// Elements the A buffer must hold: up to the end of the last batch entry.
    pub fn a_len(&self) -> Option<usize> {
        self.extent(self.stride_a, self.m.checked_mul(self.k)?)
    }

    pub fn b_len(&self) -> Option<usize> {
        self.extent(self.stride_b, self.k.checked_mul(self.n)?)
    }

    pub fn c_len(&self) -> Option<usize> {
        self.extent(self.stride_c, self.m.checked_mul(self.n)?)
    }

    /// (batch - 1) stride + matrix, or 0 when there is nothing to read; None on overflow.
    fn extent(&self, stride: usize, matrix: usize) -> Option<usize> {
        if self.batch == 0 || matrix == 0 {
            return Some(0);
        }
        (self.batch - 1).checked_mul(stride)?.checked_add(matrix)
    }
}

/// The GEMM kernels, by input and output type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// f32 in, f32 accumulation, f32 out (`gemm_fwd_f32`).
    F32,
    /// bf16 in, f32 accumulation on tensor cores, bf16 out (`gemm_fwd_bf16`).
    Bf16,
    /// bf16 in, f32 accumulation on tensor cores, f32 out (`gemm_fwd_bf16_f32out`).
    Bf16F32Out,
}

impl GemmKernel {
    pub const ALL: [GemmKernel; 3] = [GemmKernel::F32, GemmKernel::Bf16, GemmKernel::Bf16F32Out];

    /// The kernel for these element types; f32 inputs with a bf16 output have none.
    pub fn for_types(input: ElemType, output: ElemType) -> Result<GemmKernel> {
        match (input, output) {
            (ElemType::F32, ElemType::F32) => Ok(GemmKernel::F32),
            (ElemType::Bf16, ElemType::Bf16) => Ok(GemmKernel::Bf16),
            (ElemType::Bf16, ElemType::F32) => Ok(GemmKernel::Bf16F32Out),
            (ElemType::F32, ElemType::Bf16) => Err(Error::Launch {
                kernel: "gemm".into(),
                msg: "no kernel takes f32 inputs to a bf16 output; round the inputs to bf16 \
                      or keep the output f32"
                    .into(),
            }),
        }
    }

    /// Its `.entry` in gemm.ptx, `{op}_{fwd|bwd}_{dtype}` (see the header of gemm.cu).
    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::F32 => "gemm_fwd_f32",
            GemmKernel::Bf16 => "gemm_fwd_bf16",
            GemmKernel::Bf16F32Out => "gemm_fwd_bf16_f32out",
        }
    }

    /// The type of A and B.
    pub fn input(self) -> ElemType {
        match self {
            GemmKernel::F32 => ElemType::F32,
            GemmKernel::Bf16 | GemmKernel::Bf16F32Out => ElemType::Bf16,
        }
    }

    /// The type of C.
    pub fn output(self) -> ElemType {
        match self {
            GemmKernel::F32 | GemmKernel::Bf16F32Out => ElemType::F32,
            GemmKernel::Bf16 => ElemType::Bf16,
        }
    }

    pub fn tiling(self) -> GemmTiling {
        match self {
            GemmKernel::F32 => GEMM_F32_TILING,
            GemmKernel::Bf16 | GemmKernel::Bf16F32Out => GEMM_BF16_TILING,
        }
    }
}

/// How a kernel splits C: one block of `threads` per [bm, bn] tile, walking K in steps of bk,
/// with `static_shared_bytes` of shared memory declared in the kernel. These mirror the named
/// constants of gemm.cu, where each size has its reason; a CPU test checks the shared memory
/// against the PTX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTiling {
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    pub threads: u32,
    pub static_shared_bytes: usize,
}

/// `gemm_fwd_f32`: 128x128x8, 256 threads each with an 8 x 8 micro-tile; two [8, 128 + 4] f32
/// tiles in shared memory.
pub const GEMM_F32_TILING: GemmTiling = GemmTiling {
    bm: 128,
    bn: 128,
    bk: 8,
    threads: 256,
    static_shared_bytes: 2 * 8 * (128 + 4) * 4,
};

/// `gemm_fwd_bf16*`: 128x128x32, 8 warps each with a 64 x 32 tile of m16n8k16 mmas; two
/// [128, 32 + 8] bf16 tiles in shared memory.
pub const GEMM_BF16_TILING: GemmTiling = GemmTiling {
    bm: 128,
    bn: 128,
    bk: 32,
    threads: 256,
    static_shared_bytes: 2 * 128 * (32 + 8) * 2,
};

/// The largest M, N or K: the kernels take them as `int` and form row and column indices up to
/// a tile (128) past the last one, which must not overflow.
pub const MAX_DIM: usize = i32::MAX as usize - 256;

/// The configuration of a GEMM launch, `None` when C is empty (a launch with an empty grid is an
/// error in CUDA). K = 0 still launches: C = beta C.
///
/// Grid: (ceil(N / bn), ceil(M / bm), batch) blocks of `threads`, no dynamic shared memory.
/// An error when the grid exceeds CUDA's limits (batch > 65535, or M > 65535 x 128).
pub fn gemm_config(kernel: GemmKernel, shape: &GemmShape) -> Result<Option<LaunchConfig>> {
    if shape.batch == 0 || shape.m == 0 || shape.n == 0 {
        return Ok(None);
    }
    let tiling = kernel.tiling();
    let grid = (
        shape.n.div_ceil(tiling.bn),
        shape.m.div_ceil(tiling.bm),
        shape.batch,
    );
    if grid.0 > MAX_GRID_X || grid.1 > MAX_GRID_YZ || grid.2 > MAX_GRID_YZ {
        let msg = format!(
            "grid {grid:?} exceeds CUDA's limits ({MAX_GRID_X}, {MAX_GRID_YZ}, {MAX_GRID_YZ}) \
             for M {} N {} batch {}; split the batch or the rows over several launches",
            shape.m, shape.n, shape.batch
        );
        return Err(launch_error(kernel.name(), msg));
    }
    Ok(Some(LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
        block_dim: (tiling.threads, 1, 1),
        shared_mem_bytes: 0,
    }))
}

/// Checks a launch before it touches the driver: the sizes fit the kernel's `int` arithmetic,
/// distinct batch entries of C do not overlap, and each buffer holds its operand (computed from
/// the shape, the strides and the kernel's element types).
pub fn check(
    kernel: GemmKernel,
    shape: &GemmShape,
    c_bytes: usize,
    a_bytes: usize,
    b_bytes: usize,
) -> Result<()> {
    let [c, a, b] = operand_bytes(kernel, shape)?;
    let sizes = [("C", c_bytes, c), ("A", a_bytes, a), ("B", b_bytes, b)];
    check_sizes(kernel.name(), &sizes)
}

/// The bytes C, A and B must hold for `shape`, once the shape is known to fit the kernel: M, N
/// and K within its `int` arithmetic, and C's batch entries apart.
fn operand_bytes(kernel: GemmKernel, shape: &GemmShape) -> Result<[usize; 3]> {
    if shape.m.max(shape.n).max(shape.k) > MAX_DIM {
        let msg = format!("{shape:?}: M, N and K must each be at most {MAX_DIM}");
        return Err(launch_error(kernel.name(), msg));
    }
    if shape.batch > 1 && shape.stride_c < shape.m * shape.n {
        let msg = format!(
            "stride_c {} is less than M N = {}: the batch entries of C would overlap",
            shape.stride_c,
            shape.m * shape.n
        );
        return Err(launch_error(kernel.name(), msg));
    }
    let (input, output) = (kernel.input().size(), kernel.output().size());
    let bytes = |name: &str, len: Option<usize>, size: usize| {
        len.and_then(|len| len.checked_mul(size)).ok_or_else(|| {
            let msg = format!("{shape:?}: the extent of {name} overflows usize");
            launch_error(kernel.name(), msg)
        })
    };
    Ok([
        bytes("C", shape.c_len(), output)?,
        bytes("A", shape.a_len(), input)?,
        bytes("B", shape.b_len(), input)?,
    ])
}

/// C = alpha op(A) op(B), in a new buffer of `shape.c_len()` elements of the kernel's output.
///
/// Shapes: a [batch, M, K] (stored [batch, K, M] if trans_a), b [batch, K, N] (stored
/// [batch, N, K] if trans_b) -> c [batch, M, N]; a stride of 0 broadcasts an operand.
pub fn gemm(
    kernel: GemmKernel,
    a: &DeviceBuffer,
    b: &DeviceBuffer,
    alpha: f32,
    shape: &GemmShape,
) -> Result<DeviceBuffer> {
    let [c_bytes, ..] = operand_bytes(kernel, shape)?;
    let mut c = a.gpu().alloc(c_bytes)?;
    gemm_into(&mut c, kernel, a, b, alpha, 0.0, shape)?;
    Ok(c)
}

/// C = alpha op(A) op(B) + beta C, into `c`: overwritten (never read) when beta = 0,
/// accumulated into otherwise.
///
/// Shapes: c [batch, M, N] (written), a [batch, M, K] (stored [batch, K, M] if trans_a),
/// b [batch, K, N] (stored [batch, N, K] if trans_b); a stride of 0 broadcasts A or B.
pub fn gemm_into(
    c: &mut DeviceBuffer,
    kernel: GemmKernel,
    a: &DeviceBuffer,
    b: &DeviceBuffer,
    alpha: f32,
    beta: f32,
    shape: &GemmShape,
) -> Result<()> {
    let [c_bytes, a_bytes, b_bytes] = operand_bytes(kernel, shape)?;
    let args = [
        Arg::new("C", c, c_bytes),
        Arg::new("A", a, a_bytes),
        Arg::new("B", b, b_bytes),
    ];
    check_args(kernel.name(), &args)?;
    let Some(cfg) = gemm_config(kernel, shape)? else {
        return Ok(());
    };
    // the kernel's scalar arguments, as the types it declares (int sizes and flags, u64 strides)
    let (m, n, k) = (shape.m as i32, shape.n as i32, shape.k as i32);
    let (trans_a, trans_b) = (shape.trans_a as i32, shape.trans_b as i32);
    let strides = (
        shape.stride_a as u64,
        shape.stride_b as u64,
        shape.stride_c as u64,
    );
    let gpu = c.gpu().clone();
    let f = gpu.function(Module::Gemm, kernel.name())?;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(c.slice_mut()).arg(a.slice()).arg(b.slice());
    launch.arg(&alpha).arg(&beta).arg(&m).arg(&n).arg(&k);
    launch.arg(&trans_a).arg(&trans_b);
    launch.arg(&strides.0).arg(&strides.1).arg(&strides.2);
    // The arguments are the kernel's (TC* c, const T* a, const T* b, float alpha,
    // float beta, int m, int n, int k, int trans_a, int trans_b, u64 stride_a, u64 stride_b,
    // u64 stride_c), in that order and of those types, with T and TC the kernel's input and
    // output types. The checks above proved m, n, k fit an int and each buffer holds its
    // operand's last batch entry at its stride, which bounds every address the kernel forms (it
    // guards rows, columns and k past the edges); C's batch entries do not overlap, and C is
    // borrowed mutably, so it aliases neither input.
    // SAFETY: sound for the reasons just given.
    unsafe { launch.launch(cfg) }.map_err(cuda("cuLaunchKernel"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::{MAX_BLOCK_THREADS, MAX_STATIC_SHARED_BYTES};

    /// Sizes either side of the tiles (8, 32, 128) and well past them.
    const RAGGED: [usize; 9] = [1, 7, 17, 64, 127, 128, 129, 300, 4097];

    #[test]
    fn every_kernel_a_launcher_names_is_in_the_ptx_and_nothing_else() {
        let entries = Module::Gemm.entries();
        for kernel in GemmKernel::ALL {
            assert!(
                entries.contains(&kernel.name()),
                "{} is not in gemm.ptx",
                kernel.name()
            );
        }
        assert_eq!(entries.len(), GemmKernel::ALL.len(), "{entries:?}");
    }

    #[test]
    fn the_kernel_follows_the_element_types() {
        for kernel in GemmKernel::ALL {
            let found = GemmKernel::for_types(kernel.input(), kernel.output()).unwrap();
            assert_eq!(found, kernel);
        }
        let err = GemmKernel::for_types(ElemType::F32, ElemType::Bf16).unwrap_err();
        assert!(err.to_string().contains("bf16"), "{err}");
    }

    #[test]
    fn the_grid_covers_every_output_element_of_ragged_shapes() {
        for kernel in GemmKernel::ALL {
            let t = kernel.tiling();
            for (m, n, batch) in ragged_triples() {
                let shape = GemmShape::batched(batch, m, n, 5);
                let cfg = gemm_config(kernel, &shape).unwrap().unwrap();
                let (gx, gy, gz) = cfg.grid_dim;
                let (gx, gy, gz) = (gx as usize, gy as usize, gz as usize);
                // the last block row and column reach the edge, and none lies wholly past it
                assert!(gx * t.bn >= n && (gx - 1) * t.bn < n, "{kernel:?} n={n}");
                assert!(gy * t.bm >= m && (gy - 1) * t.bm < m, "{kernel:?} m={m}");
                assert_eq!(gz, batch);
                // and so every element (row, col) of every entry has a block
                for (row, col) in [(0, 0), (m - 1, n - 1), (m / 2, n - 1), (m - 1, 0)] {
                    assert!(row / t.bm < gy && col / t.bn < gx);
                }
                assert_eq!(cfg.block_dim, (t.threads, 1, 1));
            }
        }
    }

    /// (m, n, batch) over the ragged sizes and a few batch counts.
    fn ragged_triples() -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        for m in RAGGED {
            for n in RAGGED {
                for batch in [1, 3, MAX_GRID_YZ] {
                    out.push((m, n, batch));
                }
            }
        }
        out
    }

    #[test]
    fn the_configuration_never_exceeds_the_limits() {
        for kernel in GemmKernel::ALL {
            let t = kernel.tiling();
            assert!(t.threads <= MAX_BLOCK_THREADS && t.threads % 32 == 0);
            assert!(t.static_shared_bytes <= MAX_STATIC_SHARED_BYTES);
            // the largest batch and row count the grid can take, and one past each
            let rows = MAX_GRID_YZ * t.bm;
            assert!(gemm_config(kernel, &GemmShape::batched(MAX_GRID_YZ, rows, 1, 1)).is_ok());
            let too_many = GemmShape::batched(MAX_GRID_YZ + 1, 1, 1, 1);
            let err = gemm_config(kernel, &too_many).unwrap_err().to_string();
            assert!(
                err.contains(kernel.name()) && err.contains("split"),
                "{err}"
            );
            assert!(gemm_config(kernel, &GemmShape::new(rows + 1, 1, 1)).is_err());
        }
    }

    #[test]
    fn an_empty_output_launches_nothing_but_k_zero_does() {
        for kernel in GemmKernel::ALL {
            assert!(gemm_config(kernel, &GemmShape::new(0, 5, 5))
                .unwrap()
                .is_none());
            assert!(gemm_config(kernel, &GemmShape::new(5, 0, 5))
                .unwrap()
                .is_none());
            let empty_batch = GemmShape::batched(0, 5, 5, 5);
            assert!(gemm_config(kernel, &empty_batch).unwrap().is_none());
            // K = 0 is an empty sum: C = beta C still has to be written
            assert!(gemm_config(kernel, &GemmShape::new(5, 5, 0))
                .unwrap()
                .is_some());
        }
    }

    #[test]
    fn the_shared_memory_matches_the_ptx() {
        for kernel in GemmKernel::ALL {
            let declared = shared_bytes_in_ptx(Module::Gemm.ptx(), kernel.name());
            assert_eq!(
                declared,
                kernel.tiling().static_shared_bytes,
                "{}",
                kernel.name()
            );
        }
    }

    /// The sum of the `.shared ... .b8 name[bytes];` arrays declared in entry `kernel`.
    fn shared_bytes_in_ptx(ptx: &str, kernel: &str) -> usize {
        let start = format!(".visible .entry {kernel}(");
        let body = ptx
            .split(start.as_str())
            .nth(1)
            .expect("the entry is in the PTX");
        let body = body.split(".visible .entry").next().unwrap();
        body.lines()
            .filter(|line| line.trim_start().starts_with(".shared"))
            .map(|line| {
                let size = line.rsplit('[').next().unwrap().trim_end_matches("];");
                size.parse::<usize>().expect("a byte count")
            })
            .sum()
    }

    #[test]
    fn buffer_sizes_follow_the_shape_strides_and_types() {
        let shape = GemmShape::batched(3, 4, 5, 6);
        let (a, b, c) = (3 * 4 * 6, 3 * 6 * 5, 3 * 4 * 5);
        assert_eq!(
            (shape.a_len(), shape.b_len(), shape.c_len()),
            (Some(a), Some(b), Some(c))
        );
        // f32: 4 bytes an element, exactly enough passes and one byte less fails
        let f32_ok = check(GemmKernel::F32, &shape, 4 * c, 4 * a, 4 * b);
        assert!(f32_ok.is_ok());
        let err = check(GemmKernel::F32, &shape, 4 * c, 4 * a - 1, 4 * b).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("gemm_fwd_f32") && msg.contains("A holds 287 bytes"),
            "{msg}"
        );
        // bf16 inputs take 2 bytes; the f32 output of Bf16F32Out still 4
        assert!(check(GemmKernel::Bf16, &shape, 2 * c, 2 * a, 2 * b).is_ok());
        assert!(check(GemmKernel::Bf16F32Out, &shape, 2 * c, 2 * a, 2 * b).is_err());
        assert!(check(GemmKernel::Bf16F32Out, &shape, 4 * c, 2 * a, 2 * b).is_ok());
        // a transpose changes the layout, not the sizes
        let t = shape.transposed(true, true);
        assert!(check(GemmKernel::F32, &t, 4 * c, 4 * a, 4 * b).is_ok());
    }

    #[test]
    fn a_broadcast_operand_needs_one_matrix_and_c_may_not_overlap() {
        // a weight [K, N] shared by a batch of 8 (stride 0): one matrix is enough
        let shape = GemmShape {
            stride_b: 0,
            ..GemmShape::batched(8, 4, 5, 6)
        };
        assert_eq!(shape.b_len(), Some(6 * 5));
        assert!(check(GemmKernel::F32, &shape, 4 * 8 * 20, 4 * 8 * 24, 4 * 30).is_ok());
        // C's batch entries overlapping would race
        let overlapping = GemmShape {
            stride_c: 19,
            ..shape
        };
        let err = check(GemmKernel::F32, &overlapping, 1 << 20, 1 << 20, 1 << 20);
        assert!(err.unwrap_err().to_string().contains("overlap"));
        // a gap between entries is fine, and counted in C's extent
        let gapped = GemmShape {
            stride_c: 32,
            ..shape
        };
        assert_eq!(gapped.c_len(), Some(7 * 32 + 20));
    }

    #[test]
    fn sizes_past_the_kernels_int_arguments_are_refused() {
        let big = MAX_DIM + 1;
        for shape in [GemmShape::new(big, 1, 1), GemmShape::new(1, 1, big)] {
            let err = check(GemmKernel::Bf16, &shape, usize::MAX, usize::MAX, usize::MAX);
            assert!(err.unwrap_err().to_string().contains("at most"));
        }
        let largest = GemmShape::new(1, 1, MAX_DIM);
        assert!(check(
            GemmKernel::Bf16,
            &largest,
            usize::MAX,
            usize::MAX,
            usize::MAX
        )
        .is_ok());
        // an extent that overflows usize is an error, not a wrap-around
        let huge = GemmShape {
            stride_a: usize::MAX / 2,
            ..GemmShape::batched(4, 2, 2, 2)
        };
        assert_eq!(huge.a_len(), None);
        let err = check(GemmKernel::F32, &huge, usize::MAX, usize::MAX, usize::MAX);
        assert!(err.unwrap_err().to_string().contains("overflows"));
    }
}
