//! Concatenation and split, and the backward companions of the views.
//!
//! The views themselves (`reshape`, `permute`, `narrow`, `broadcast_to`) live on `Tensor`; their
//! backwards live here, beside cat and split, which are each other's backward.

use crate::ops::reduce::inverse_perm;
use crate::storage::CpuStorage;
use crate::{DType, Device, Element, Error, Result, Tensor};

/// Joins tensors along `dim`; all other dims must match, and so must dtype and device.
///
/// Shapes: xs[i] [.., N_i, ..] -> y [.., sum_i N_i, ..]
pub fn cat(xs: &[Tensor], dim: usize) -> Result<Tensor> {
    let first = xs.first().ok_or_else(|| Error::InvalidArgument {
        op: "cat",
        msg: "needs at least one tensor".into(),
    })?;
    first.layout().check_dim("cat", dim)?;
    let mut shape = first.shape().to_vec();
    shape[dim] = 0;
    for x in xs {
        x.check_same_kind("cat", first)?;
        let same_rest = x.rank() == first.rank()
            && (0..x.rank()).all(|d| d == dim || x.shape()[d] == first.shape()[d]);
        if !same_rest {
            return Err(Error::ShapeMismatch {
                op: "cat",
                lhs: first.shape().to_vec(),
                rhs: x.shape().to_vec(),
            });
        }
        shape[dim] += x.shape()[dim];
    }
    match first.device() {
        Device::Cpu => {
            let parts = xs
                .iter()
                .map(|x| x.contiguous())
                .collect::<Result<Vec<_>>>()?;
            let data = match first.dtype() {
                DType::F32 => CpuStorage::from_vec(cat_cpu::<f32>(&parts, dim)),
                DType::BF16 => CpuStorage::from_vec(cat_cpu::<half::bf16>(&parts, dim)),
                DType::F16 => CpuStorage::from_vec(cat_cpu::<half::f16>(&parts, dim)),
                DType::U32 => CpuStorage::from_vec(cat_cpu::<u32>(&parts, dim)),
            };
            Ok(Tensor::from_cpu(data, &shape))
        }
        Device::Cuda(_) => crate::cuda::layout::cat(xs, dim, &shape),
    }
}

/// Concatenation of contiguous tensors: seen as [outer, N_i * inner] matrices, the result takes
/// row o of every part in turn.
fn cat_cpu<T: Element>(parts: &[Tensor], dim: usize) -> Vec<T> {
    let outer: usize = parts[0].shape()[..dim].iter().product();
    let inner: usize = parts[0].shape()[dim + 1..].iter().product();
    let total: usize = parts.iter().map(|p| p.numel()).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for p in parts {
            let block = p.shape()[dim] * inner;
            let start = p.layout().offset() + o * block;
            out.extend_from_slice(&p.cpu().as_slice::<T>()[start..start + block]);
        }
    }
    out
}

/// Splits `x` along `dim` into pieces of the given sizes (which must add up to the dim). Views.
///
/// Shapes: x [.., sum_i N_i, ..] -> ys[i] [.., N_i, ..]
pub fn split(x: &Tensor, sizes: &[usize], dim: usize) -> Result<Vec<Tensor>> {
    x.layout().check_dim("split", dim)?;
    if sizes.iter().sum::<usize>() != x.shape()[dim] {
        return Err(Error::InvalidArgument {
            op: "split",
            msg: format!(
                "sizes {sizes:?} do not add up to dim {dim} of {:?}",
                x.shape()
            ),
        });
    }
    let mut start = 0;
    let mut pieces = Vec::with_capacity(sizes.len());
    for &len in sizes {
        pieces.push(x.narrow(dim, start, len)?);
        start += len;
    }
    Ok(pieces)
}

/// The backward of `cat`: the output gradient split back into the inputs' sizes.
///
/// Shapes: dy [.., sum_i N_i, ..] -> dxs[i] [.., N_i, ..]
pub fn cat_bwd(dy: &Tensor, sizes: &[usize], dim: usize) -> Result<Vec<Tensor>> {
    split(dy, sizes, dim)
}

/// The backward of `split`: the pieces' gradients joined again.
///
/// Shapes: dys[i] [.., N_i, ..] -> dx [.., sum_i N_i, ..]
pub fn split_bwd(dys: &[Tensor], dim: usize) -> Result<Tensor> {
    cat(dys, dim)
}

/// The backward of `narrow(dim, start, len)`: dy placed at `start` in a zero tensor of the
/// input's shape (the elements the view did not see get no gradient).
///
/// Shapes: dy [.., len, ..], x_shape [.., N, ..] -> dx [x_shape]
pub fn narrow_bwd(dy: &Tensor, x_shape: &[usize], dim: usize, start: usize) -> Result<Tensor> {
    dy.layout().check_dim("narrow_bwd", dim)?;
    let len = dy.shape()[dim];
    if dim >= x_shape.len() || start + len > x_shape[dim] {
        return Err(Error::InvalidArgument {
            op: "narrow_bwd",
            msg: format!("{len} rows at {start} do not fit dim {dim} of {x_shape:?}"),
        });
    }
    let zeros_of = |size: usize| {
        let mut shape = dy.shape().to_vec();
        shape[dim] = size;
        Tensor::zeros(&shape, dy.dtype())
    };
    let after = x_shape[dim] - start - len;
    cat(&[zeros_of(start), dy.clone(), zeros_of(after)], dim)
}

/// The backward of `permute(perm)`: dy permuted back by the inverse permutation (a view).
///
/// Shapes: dy [permuted shape] -> dx [original shape]
pub fn permute_bwd(dy: &Tensor, perm: &[usize]) -> Result<Tensor> {
    dy.permute(&inverse_perm(perm))
}

/// The backward of `reshape`: dy viewed in the input's shape.
///
/// Shapes: dy [new shape] -> dx [x_shape]
pub fn reshape_bwd(dy: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
    dy.reshape(x_shape)
}

/// The backward of `broadcast_to`: dy summed over the broadcast dims.
///
/// Shapes: dy [broadcast shape] -> dx [x_shape]
pub fn broadcast_bwd(dy: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
    dy.sum_to(x_shape)
}

impl Tensor {
    /// Joins tensors along `dim`.
    pub fn cat(xs: &[Tensor], dim: usize) -> Result<Tensor> {
        cat(xs, dim)
    }

    /// Splits along `dim` into pieces of the given sizes (views).
    pub fn split(&self, sizes: &[usize], dim: usize) -> Result<Vec<Tensor>> {
        split(self, sizes, dim)
    }
}
