//! The embedding lookup and its backward on CUDA tensors: `kernels/cuda/embedding.cu` through
//! `odeflow_kernels::embedding`.
//!
//! The kernels skip an id >= V instead of failing, so the ops check the ids on the host before
//! they get here (`ops/embedding.rs` `check_ids`; for ids on the device that downloads them,
//! n u32s). Ids on the CPU with a table on the device are refused by `dense` or `flat` with
//! `Error::DeviceMismatch`.

use super::{dense, elem_type, flat, wrap};
use crate::{DType, Result, Tensor};
use odeflow_kernels::embedding;

/// `embedding_fwd` on CUDA: out[i, :] = weight[ids[i], :], overwritten.
///
/// Shapes: weight [V, D], ids [..] (u32) -> out [.., D]
pub(crate) fn embedding_fwd(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let op = "embedding";
    let (weight, ids) = (dense(weight)?, dense(ids)?);
    let (ws, is) = (flat(op, &weight)?, flat(op, &ids)?);
    let ty = elem_type(op, weight.dtype())?;
    let (v, d) = (weight.shape()[0], weight.shape()[1]);
    let out = embedding::embedding_fwd(ty, &ws.buf, &is.buf, ids.numel(), v, d)?;
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    Ok(wrap(out, weight.dtype(), &shape, ws.ordinal))
}

/// `embedding_bwd` on CUDA: dweight[v, :] = the sum of dout[i, :] over the positions with
/// ids[i] = v, from zeros, in dout's dtype.
///
/// The kernel adds the rows with f32 atomics, so where a token repeats, the last bits of its
/// row depend on the order the blocks ran in (the CPU adds in position order). It adds into
/// f32 whatever dout's dtype; a bf16 dout gets its dweight by one cast (`Tensor::to_dtype`),
/// as the CPU rounds its f32 sums once.
///
/// Shapes: dout [.., D], ids [..] (u32), vocab V -> dweight [V, D]
pub(crate) fn embedding_bwd(dout: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
    let op = "embedding_bwd";
    let (dout, ids) = (dense(dout)?, dense(ids)?);
    let (gs, is) = (flat(op, &dout)?, flat(op, &ids)?);
    let ty = elem_type(op, dout.dtype())?;
    let d = dout.layout().row_len();
    let dweight = embedding::embedding_bwd(ty, &gs.buf, &is.buf, ids.numel(), vocab, d)?;
    let dweight = wrap(dweight, DType::F32, &[vocab, d], gs.ordinal);
    dweight.to_dtype(dout.dtype())
}
