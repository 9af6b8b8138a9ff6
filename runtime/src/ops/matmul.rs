//! Matrix products: plain and batched, with either operand transposed.
//!
//! A transposed operand is just a view (`x.t()` swaps the strides of the last two dims); the
//! GEMM reads any strides while packing, so no transpose is ever copied. Leading (batch) dims
//! broadcast like numpy's: a [B, M, K] times a [K, N] weight reuses the weight for each of the B
//! matrices without repeating it in memory (its batch stride is 0).

use crate::cpu::gemm::{gemm, MatRef, Parallelism};
use crate::layout::broadcast_shape;
use crate::{Device, Error, Result, Tensor};
use rayon::prelude::*;

/// Below this many multiply-adds per matrix, a batch is split over threads one matrix each,
/// rather than each product being split: attention's many small [T, hd] x [hd, T] products.
/// It is 64^3, where the gemm itself starts using threads (see `cpu/gemm/mod.rs`).
const SMALL_GEMM_MACS: usize = 1 << 18;

/// The (rows, cols) of the last two dims, or an error for rank < 2.
fn matrix_dims(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    if x.rank() < 2 {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("operands need rank >= 2, got {:?}", x.shape()),
        });
    }
    Ok((x.shape()[x.rank() - 2], x.shape()[x.rank() - 1]))
}

/// c = a b, batched over the leading dims.
///
/// Shapes: a [.., M, K], b [.., K, N] (batch dims broadcast) -> c [.., M, N]
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.check_float("matmul")?;
    a.check_same_kind("matmul", b)?;
    let (m, k) = matrix_dims("matmul", a)?;
    let (k2, n) = matrix_dims("matmul", b)?;
    if k != k2 {
        return Err(Error::ShapeMismatch {
            op: "matmul",
            lhs: a.shape().to_vec(),
            rhs: b.shape().to_vec(),
        });
    }
    let batch = broadcast_shape(
        "matmul",
        &a.shape()[..a.rank() - 2],
        &b.shape()[..b.rank() - 2],
    )?;
    let full = |x: &Tensor, r: usize, c: usize| {
        let shape: Vec<usize> = batch.iter().copied().chain([r, c]).collect();
        x.broadcast_to(&shape)
    };
    let (a, b) = (full(a, m, k)?, full(b, k, n)?);
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    match a.device() {
        Device::Cpu => {
            let c = matmul_cpu(&a, &b, batch.len(), (m, k, n));
            Ok(Tensor::from_f32_values(c, &out_shape, a.dtype()))
        }
        Device::Cuda(_) => crate::cuda::matmul::matmul(&a, &b, batch.len(), (m, k, n)),
    }
}

/// The batched product over two views already broadcast to the same batch shape.
///
/// Known shortfall: the gemm is f32 only, so bf16/f16 operands are first widened to f32 in a
/// full copy of their buffers (`f32_buffer`). Correct, but no faster than f32; a native
/// low-precision path belongs to the GPU backend.
fn matmul_cpu(a: &Tensor, b: &Tensor, lead: usize, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    let (abuf, bbuf) = (a.f32_buffer(), b.f32_buffer());
    let (a_off, b_off) = (
        a.layout().leading_offsets(lead),
        b.layout().leading_offsets(lead),
    );
    let (ast, bst) = (&a.strides()[lead..], &b.strides()[lead..]);
    let mut c = vec![0.0f32; a_off.len() * m * n];
    if m * n * k == 0 {
        // nothing to multiply: an empty product, or k = 0 where every entry is an empty sum
        return c;
    }
    let product = |i: usize, ci: &mut [f32], par: Parallelism| {
        let am = matrix(&abuf[a_off[i]..], (m, k), ast);
        let bm = matrix(&bbuf[b_off[i]..], (k, n), bst);
        gemm(am, bm, ci, n, false, par);
    };
    if a_off.len() > 1 && m * n * k < SMALL_GEMM_MACS {
        let chunks = c.par_chunks_mut(m * n).enumerate();
        chunks.for_each(|(i, ci)| product(i, ci, Parallelism::Sequential));
    } else {
        let chunks = c.chunks_mut(m * n).enumerate();
        chunks.for_each(|(i, ci)| product(i, ci, Parallelism::Rayon));
    }
    c
}

/// The [rows, cols] matrix starting at `data[0]`, with the strides of a tensor's last two dims.
fn matrix<'a>(data: &'a [f32], (rows, cols): (usize, usize), strides: &[usize]) -> MatRef<'a> {
    MatRef {
        data,
        rows,
        cols,
        row_stride: strides[0],
        col_stride: strides[1],
    }
}

/// da = dc b^T and db = a^T dc, each summed over the batch dims its operand was broadcast along.
///
/// Shapes: dc [.., M, N], a [.., M, K], b [.., K, N] -> da [a's shape], db [b's shape]
pub fn matmul_bwd(dc: &Tensor, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let da = matmul(dc, &b.t()?)?.sum_to(a.shape())?;
    let db = matmul(&a.t()?, dc)?.sum_to(b.shape())?;
    Ok((da, db))
}

impl Tensor {
    /// The matrix product with `rhs` (batched over leading dims).
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        matmul(self, rhs)
    }
}
