//! Sums and means over the last dim of CUDA tensors: `kernels/cuda/reduce.cu` through
//! `odeflow_kernels::reduce`, and the affine kernel for the mean's division.
//!
//! The op (`ops/reduce.rs` `reduce_fwd`) has already moved the reduced dim last, as a view, as
//! its CPU path does; `dense` copies that view (the strided copy) unless the dim was last
//! already, so every reduction here is over rows. The kernel adds in f32 and writes f32, and a
//! bf16 input gets its result by one cast (`Tensor::to_dtype`), as the CPU rounds once. The
//! maximum has no kernel and stays `Unsupported`.

use super::{dense, elem_type, flat, unsupported, wrap};
use crate::ops::reduce::ReduceOp;
use crate::{DType, Error, Result, Tensor};
use odeflow_kernels::elementwise::{self, ElemType};
use odeflow_kernels::reduce;

/// A sum or mean over the rows of a [.., N] tensor, shaped as `shape` (the reduced shape, with
/// or without the kept dim of size 1).
///
/// Shapes: x [.., N] -> y [shape] (the product of `shape` is x's row count)
pub(crate) fn reduce_rows(op: ReduceOp, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let name = match op {
        ReduceOp::Sum => "sum",
        ReduceOp::Mean => "mean",
        ReduceOp::Max => return Err(unsupported("max", x.device())),
    };
    let x = dense(x)?;
    let (xs, ty) = (flat(name, &x)?, elem_type(name, x.dtype())?);
    let n = x.layout().row_len();
    let rows: usize = shape.iter().product();
    if op == ReduceOp::Mean && n == 0 {
        // the CPU op's refusal: a mean of nothing has no value
        return Err(Error::InvalidArgument {
            op: name,
            msg: format!("cannot reduce an empty last dim of {:?}", x.shape()),
        });
    }
    let mut y = reduce::sum_fwd(ty, &xs.buf, rows, n)?;
    if op == ReduceOp::Mean {
        // sum * (1 / N) in f32: at most one rounding away from the CPU's sum / N
        y = elementwise::affine_fwd(ElemType::F32, &y, 1.0 / n as f32, 0.0, rows)?;
    }
    wrap(y, DType::F32, shape, xs.ordinal).to_dtype(x.dtype())
}
