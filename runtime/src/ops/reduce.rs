//! Reductions over one axis: sum, mean, max, argmax; and `sum_to`, which undoes broadcasting.
//!
//! Each reduction moves the reduced dim last (a permute view), makes it contiguous, and reduces
//! each row: one simple loop instead of one per axis position.

use crate::cpu;
use crate::{Device, Error, Result, Tensor};

/// The reductions that share the row-reduce path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

impl ReduceOp {
    fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
        }
    }

    fn reduce_row(self, row: &[f32]) -> f32 {
        match self {
            ReduceOp::Sum => row.iter().sum(),
            ReduceOp::Mean => row.iter().sum::<f32>() / row.len() as f32,
            ReduceOp::Max => row.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        }
    }
}

/// The permutation that moves `dim` to the end, keeping the other dims in order.
fn dim_last_perm(rank: usize, dim: usize) -> Vec<usize> {
    (0..rank).filter(|&d| d != dim).chain([dim]).collect()
}

/// The output shape of a reduction over `dim`.
fn reduced_shape(shape: &[usize], dim: usize, keepdim: bool) -> Vec<usize> {
    let mut out = shape.to_vec();
    if keepdim {
        out[dim] = 1;
    } else {
        out.remove(dim);
    }
    out
}

/// `x` with `dim` moved last, contiguous, as f32 rows of length shape[dim].
fn rows_along(x: &Tensor, op: &'static str, dim: usize) -> Result<(Vec<f32>, usize)> {
    x.layout().check_dim(op, dim)?;
    let moved = x.permute(&dim_last_perm(x.rank(), dim))?.contiguous()?;
    Ok((moved.f32_data().into_owned(), x.shape()[dim]))
}

/// Reduces `x` over `dim` with `op` (sum, mean or max).
///
/// Shapes: x [.., N, ..] -> y [.., ..] (or [.., 1, ..] with keepdim)
pub fn reduce_fwd(op: ReduceOp, x: &Tensor, dim: usize, keepdim: bool) -> Result<Tensor> {
    x.check_float(op.name())?;
    match x.device() {
        Device::Cpu => {
            let (rows, n) = rows_along(x, op.name(), dim)?;
            let shape = reduced_shape(x.shape(), dim, keepdim);
            let count: usize = shape.iter().product();
            if n == 0 && op != ReduceOp::Sum {
                return Err(Error::InvalidArgument {
                    op: op.name(),
                    msg: format!("cannot reduce an empty dim {dim} of {:?}", x.shape()),
                });
            }
            // an empty sum is 0: each of the `count` rows is the empty slice
            let y = cpu::map_rows(count, n, |r| op.reduce_row(&rows[r * n..(r + 1) * n]));
            Ok(Tensor::from_f32_values(y, &shape, x.dtype()))
        }
        Device::Cuda(_) => {
            // the CPU path's plan: `dim` moved last (a view, copied on the device unless it
            // already is last), then one reduction per row
            x.layout().check_dim(op.name(), dim)?;
            let moved = x.permute(&dim_last_perm(x.rank(), dim))?;
            let shape = reduced_shape(x.shape(), dim, keepdim);
            crate::cuda::reduce::reduce_rows(op, &moved, &shape)
        }
    }
}

/// Gradient of a sum or mean over `dim`: dy spread back along `dim` (divided by N for mean).
///
/// Shapes: dy [reduced shape, with or without keepdim], x_shape [.., N, ..] -> dx [x_shape]
pub fn sum_mean_bwd(op: ReduceOp, dy: &Tensor, x_shape: &[usize], dim: usize) -> Result<Tensor> {
    if dim >= x_shape.len() || op == ReduceOp::Max {
        return Err(Error::InvalidArgument {
            op: "sum_mean_bwd",
            msg: format!("needs sum or mean over a dim of {x_shape:?}, got {op:?} over {dim}"),
        });
    }
    let kept = dy.reshape(&reduced_shape(x_shape, dim, true))?;
    let dx = kept.broadcast_to(x_shape)?.contiguous()?;
    match op {
        ReduceOp::Mean => dx.scale(1.0 / x_shape[dim] as f32),
        _ => Ok(dx),
    }
}

/// Gradient of a max over `dim`: dy goes to the first position holding the maximum, zero
/// elsewhere (the max is piecewise the identity of one input).
///
/// Shapes: dy [reduced shape, with or without keepdim], x [.., N, ..] -> dx [x's shape]
pub fn max_bwd(dy: &Tensor, x: &Tensor, dim: usize) -> Result<Tensor> {
    dy.check_same_kind("max_bwd", x)?;
    let idx = argmax(x, dim)?.to_vec::<u32>()?;
    let dys = dy.to_f32_vec()?;
    if dys.len() != idx.len() {
        return Err(Error::ShapeMismatch {
            op: "max_bwd",
            lhs: dy.shape().to_vec(),
            rhs: reduced_shape(x.shape(), dim, false),
        });
    }
    // build dx with `dim` last, then permute it back into place
    let n = x.shape()[dim];
    let mut moved = vec![0.0; x.numel()];
    for (r, (&i, &g)) in idx.iter().zip(&dys).enumerate() {
        moved[r * n + i as usize] = g;
    }
    let perm = dim_last_perm(x.rank(), dim);
    let moved_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let inverse = inverse_perm(&perm);
    Tensor::from_f32_values(moved, &moved_shape, x.dtype())
        .permute(&inverse)?
        .contiguous()
}

/// The inverse of a permutation: `inverse[perm[i]] = i`.
pub fn inverse_perm(perm: &[usize]) -> Vec<usize> {
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    inverse
}

/// Index of the first maximum along `dim` (NaN compares below every number), as u32.
///
/// Shapes: x [.., N, ..] -> idx [.., ..] (u32)
pub fn argmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    x.check_float("argmax")?;
    match x.device() {
        Device::Cpu => {
            let (rows, n) = rows_along(x, "argmax", dim)?;
            if n == 0 {
                return Err(Error::InvalidArgument {
                    op: "argmax",
                    msg: format!("cannot take argmax over empty dim {dim} of {:?}", x.shape()),
                });
            }
            let idx: Vec<u32> = rows.chunks(n).map(first_max_index).collect();
            Tensor::from_vec(idx, &reduced_shape(x.shape(), dim, false))
        }
        Device::Cuda(_) => Err(crate::cuda::unsupported("argmax", x.device())),
    }
}

fn first_max_index(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        // `!(v <= best)` would let NaN win; `v > best` keeps the first finite maximum
        if v > row[best] || row[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

impl Tensor {
    /// Sum over `dim`.
    pub fn sum(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        reduce_fwd(ReduceOp::Sum, self, dim, keepdim)
    }

    /// Mean over `dim`.
    pub fn mean(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        reduce_fwd(ReduceOp::Mean, self, dim, keepdim)
    }

    /// Maximum over `dim`.
    pub fn max(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        reduce_fwd(ReduceOp::Max, self, dim, keepdim)
    }

    /// Index of the first maximum over `dim` (u32).
    pub fn argmax(&self, dim: usize) -> Result<Tensor> {
        argmax(self, dim)
    }

    /// The sum of all elements, as a rank-0 tensor of the same dtype.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])?.sum(0, false)
    }

    /// Sums a broadcast result back to `shape`: over the leading dims that broadcasting added
    /// and over the dims where `shape` has size 1. The backward of `broadcast_to`.
    ///
    /// Shapes: self [broadcast of shape] -> [shape]
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        let incompatible = || Error::BroadcastIncompatible {
            op: "sum_to",
            lhs: self.shape().to_vec(),
            rhs: shape.to_vec(),
        };
        if shape.len() > self.rank() {
            return Err(incompatible());
        }
        let lead = self.rank() - shape.len();
        // the CPU's one-pass sum over the leading dims; on CUDA the dim-by-dim sums below
        // (each a transposing copy and a row sum: a column-sum kernel would save the copy)
        if lead > 0 && shape == &self.shape()[lead..] && self.device() == Device::Cpu {
            return Ok(self.sum_leading(lead));
        }
        let mut t = self.clone();
        for _ in 0..lead {
            t = t.sum(0, false)?;
        }
        for (d, &size) in shape.iter().enumerate() {
            if size == 1 && t.shape()[d] != 1 {
                t = t.sum(d, true)?;
            } else if size != t.shape()[d] {
                return Err(incompatible());
            }
        }
        Ok(t)
    }

    /// The sum over the first `lead` dims: [A.., W..] -> [W..]. The fast path of `sum_to` for a
    /// bias gradient, with no transpose: the rows of the contiguous tensor are added together
    /// in `cpu::sum_over_rows`' fixed order.
    /// CPU only (`sum_to` checks the device).
    fn sum_leading(&self, lead: usize) -> Tensor {
        let x = self
            .contiguous()
            .expect("a float tensor has a contiguous copy");
        let xs = x.f32_data();
        let rows: usize = self.shape()[..lead].iter().product();
        let width = self.numel() / rows.max(1);
        let sums = cpu::sum_over_rows(rows, width, |r, acc| {
            let row = &xs[r * width..(r + 1) * width];
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
        });
        Tensor::from_f32_values(sums, &self.shape()[lead..], self.dtype())
    }
}
