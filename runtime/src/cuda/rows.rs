//! The row-wise ops on CUDA tensors: LayerNorm and RMSNorm (`kernels/cuda/norm.cu` through
//! `odeflow_kernels::norm`), softmax and the fused softmax cross-entropy
//! (`kernels/cuda/softmax.cu` through `odeflow_kernels::softmax`).
//!
//! Each function mirrors its CPU op in `ops/norm.rs`, `ops/softmax.rs` or `ops/loss.rs`: the
//! op has already checked shapes, dtypes and the float operands' devices; what is left here is
//! to make each input `dense` (a strided copy of a view), see [.., D] as [rows, D], hand the
//! buffers to the launcher, and wrap what comes back in the CPU op's shapes and dtypes (the
//! statistics mean, rstd and lse are f32 whatever x's dtype, as on the CPU). Every output is a
//! fresh buffer, overwritten by its kernel; the parameter gradients are this call's sums, as
//! the CPU's are.
//!
//! A u32 or statistics operand on the CPU is refused by `dense` or `flat` with
//! `Error::DeviceMismatch`. A row length of 0 is refused by the launchers (`Error::Cuda`),
//! where the CPU ops return an empty tensor or NaN statistics. Log-softmax has no kernel: it
//! stays `Unsupported`.

use super::{dense, elem_type, flat, wrap, CudaStorage};
use crate::{DType, Error, Result, Tensor};
use odeflow_kernels::softmax::{cross_entropy_scale, mean_loss};
use odeflow_kernels::{norm, softmax, DeviceBuffer};

/// A contiguous [.., D] tensor seen as [rows, D].
///
/// Shapes: x [.., D] -> (rows, D)
fn rows_of(x: &Tensor) -> (usize, usize) {
    let d = x.layout().row_len();
    (x.numel() / d.max(1), d)
}

/// The shape of the per-row statistics: x's shape without its last dim (x has rank >= 1).
///
/// Shapes: x [.., D] -> [..]
fn stats_shape(x: &Tensor) -> &[usize] {
    &x.shape()[..x.rank() - 1]
}

/// An optional parameter made `dense`, kept alive for its buffer to be borrowed.
///
/// Shapes: p [D] -> [D]
fn dense_param(p: Option<&Tensor>) -> Result<Option<Tensor>> {
    p.map(dense).transpose()
}

/// The device buffer of an optional (contiguous) parameter; `None` is the kernels' null.
///
/// Shapes: p [D] -> D elements of p's dtype
fn param<'a>(op: &'static str, p: Option<&'a Tensor>) -> Result<Option<&'a DeviceBuffer>> {
    p.map(|p| flat(op, p).map(|s| &s.buf)).transpose()
}

/// The buffer of a saved f32 statistic (mean, rstd, lse): the kernels read it as f32, so any
/// other dtype would be misread rather than converted, as the CPU's `to_f32_vec` does.
///
/// Shapes: t [..] (f32) -> its elements
fn stats<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a CudaStorage> {
    if t.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType {
            op,
            got: t.dtype(),
            expected: "f32 (the statistics the forward returned)",
        });
    }
    flat(op, t)
}

// ---- LayerNorm ----

/// `layer_norm_fwd` on CUDA: returns (y, mean, rstd), the statistics in f32.
///
/// Shapes: x [.., D], weight [D], bias [D] -> y [.., D], mean [..] (f32), rstd [..] (f32)
pub(crate) fn layer_norm_fwd(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "layer_norm_fwd";
    let (x, weight, bias) = (dense(x)?, dense_param(weight)?, dense_param(bias)?);
    let (xs, ty) = (flat(op, &x)?, elem_type(op, x.dtype())?);
    let (w, b) = (param(op, weight.as_ref())?, param(op, bias.as_ref())?);
    let (rows, d) = rows_of(&x);
    let (y, mean, rstd) = norm::layer_norm_fwd(ty, &xs.buf, w, b, rows, d, eps)?;
    let stats = stats_shape(&x);
    Ok((
        wrap(y, x.dtype(), x.shape(), xs.ordinal),
        wrap(mean, DType::F32, stats, xs.ordinal),
        wrap(rstd, DType::F32, stats, xs.ordinal),
    ))
}

/// `layer_norm_bwd` on CUDA: returns (dx, dweight, dbias), the last two only for a given
/// weight and for `has_bias`, in x's dtype.
///
/// Shapes: dy [.., D], x [.., D], weight [D], mean [..], rstd [..] -> dx [.., D], dweight [D],
/// dbias [D]
pub(crate) fn layer_norm_bwd(
    dy: &Tensor,
    x: &Tensor,
    weight: Option<&Tensor>,
    has_bias: bool,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let op = "layer_norm_bwd";
    let (dy, x, weight) = (dense(dy)?, dense(x)?, dense_param(weight)?);
    let (mean, rstd) = (dense(mean)?, dense(rstd)?);
    let (dys, xs, ty) = (flat(op, &dy)?, flat(op, &x)?, elem_type(op, x.dtype())?);
    let (means, rstds) = (stats(op, &mean)?, stats(op, &rstd)?);
    let w = param(op, weight.as_ref())?;
    let (rows, d) = rows_of(&x);
    let (dx, dweight, dbias) = norm::layer_norm_bwd(
        ty, &dys.buf, &xs.buf, w, has_bias, &means.buf, &rstds.buf, rows, d,
    )?;
    let per_feature = |g| wrap(g, x.dtype(), &[d], xs.ordinal);
    Ok((
        wrap(dx, x.dtype(), x.shape(), xs.ordinal),
        dweight.map(per_feature),
        dbias.map(per_feature),
    ))
}

// ---- RMSNorm ----

/// `rms_norm_fwd` on CUDA: returns (y, rstd), rstd in f32.
///
/// Shapes: x [.., D], weight [D] -> y [.., D], rstd [..] (f32)
pub(crate) fn rms_norm_fwd(
    x: &Tensor,
    weight: Option<&Tensor>,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let op = "rms_norm_fwd";
    let (x, weight) = (dense(x)?, dense_param(weight)?);
    let (xs, ty) = (flat(op, &x)?, elem_type(op, x.dtype())?);
    let w = param(op, weight.as_ref())?;
    let (rows, d) = rows_of(&x);
    let (y, rstd) = norm::rms_norm_fwd(ty, &xs.buf, w, rows, d, eps)?;
    Ok((
        wrap(y, x.dtype(), x.shape(), xs.ordinal),
        wrap(rstd, DType::F32, stats_shape(&x), xs.ordinal),
    ))
}

/// `rms_norm_bwd` on CUDA: returns (dx, dweight), dweight only for a given weight.
///
/// Shapes: dy [.., D], x [.., D], weight [D], rstd [..] -> dx [.., D], dweight [D]
pub(crate) fn rms_norm_bwd(
    dy: &Tensor,
    x: &Tensor,
    weight: Option<&Tensor>,
    rstd: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let op = "rms_norm_bwd";
    let (dy, x, weight) = (dense(dy)?, dense(x)?, dense_param(weight)?);
    let rstd = dense(rstd)?;
    let (dys, xs, ty) = (flat(op, &dy)?, flat(op, &x)?, elem_type(op, x.dtype())?);
    let (rstds, w) = (stats(op, &rstd)?, param(op, weight.as_ref())?);
    let (rows, d) = rows_of(&x);
    let (dx, dweight) = norm::rms_norm_bwd(ty, &dys.buf, &xs.buf, w, &rstds.buf, rows, d)?;
    Ok((
        wrap(dx, x.dtype(), x.shape(), xs.ordinal),
        dweight.map(|g| wrap(g, x.dtype(), &[d], xs.ordinal)),
    ))
}

// ---- softmax ----

/// `softmax_fwd` on CUDA; an all -inf row gives zeros, as on the CPU.
///
/// Shapes: x [.., N] -> y [.., N]
pub(crate) fn softmax_fwd(x: &Tensor) -> Result<Tensor> {
    let op = "softmax";
    let x = dense(x)?;
    let (xs, ty) = (flat(op, &x)?, elem_type(op, x.dtype())?);
    let (rows, n) = rows_of(&x);
    let y = softmax::softmax_fwd(ty, &xs.buf, rows, n)?;
    Ok(wrap(y, x.dtype(), x.shape(), xs.ordinal))
}

/// `softmax_bwd` on CUDA: dx = y (dy - sum(dy y)) along each row.
///
/// Shapes: dy [.., N], y [.., N] (the forward's output) -> dx [.., N]
pub(crate) fn softmax_bwd(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    let op = "softmax_bwd";
    let (dy, y) = (dense(dy)?, dense(y)?);
    let (dys, ys, ty) = (flat(op, &dy)?, flat(op, &y)?, elem_type(op, y.dtype())?);
    let (rows, n) = rows_of(&y);
    let dx = softmax::softmax_bwd(ty, &dys.buf, &ys.buf, rows, n)?;
    Ok(wrap(dx, y.dtype(), y.shape(), ys.ordinal))
}

// ---- cross-entropy ----

/// `cross_entropy_fwd` on CUDA, given `count`, the number of non-ignored targets that the op
/// counted while it checked them on the host. Returns (loss, lse), both f32 on the device.
///
/// The kernel writes one loss term per row; their mean is taken on the host in f64, as the
/// CPU op does (`mean_loss`), and the scalar is uploaded again. That costs a download of N
/// floats and a wait for the kernel on every call; a device-side mean would save both.
///
/// Shapes: logits [N, V], targets [N] (u32) -> loss [] (f32), lse [N] (f32)
pub(crate) fn cross_entropy_fwd(
    logits: &Tensor,
    targets: &Tensor,
    ignore_index: Option<u32>,
    count: usize,
) -> Result<(Tensor, Tensor)> {
    let op = "cross_entropy";
    let (logits, targets) = (dense(logits)?, dense(targets)?);
    let (zs, ts) = (flat(op, &logits)?, flat(op, &targets)?);
    let ty = elem_type(op, logits.dtype())?;
    let (n, v) = (logits.shape()[0], logits.shape()[1]);
    let (terms, lse) = softmax::cross_entropy_fwd(ty, &zs.buf, &ts.buf, ignore_index, n, v)?;
    let terms: Vec<f32> = zs.buf.gpu().download(&terms)?;
    let loss = Tensor::scalar(mean_loss(&terms, count)).to_device(logits.device())?;
    Ok((loss, wrap(lse, DType::F32, &[n], zs.ordinal)))
}

/// `cross_entropy_bwd` on CUDA: dlogits = dloss / count (softmax - one_hot), zero rows where
/// the target is ignored; `count` as in `cross_entropy_fwd`, `dloss` the scalar already read.
///
/// Shapes: logits [N, V], targets [N] (u32), lse [N] (f32) -> dlogits [N, V]
pub(crate) fn cross_entropy_bwd(
    dloss: f32,
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    ignore_index: Option<u32>,
    count: usize,
) -> Result<Tensor> {
    let op = "cross_entropy_bwd";
    let (logits, targets) = (dense(logits)?, dense(targets)?);
    let lse = dense(lse)?;
    let (zs, ts, lses) = (flat(op, &logits)?, flat(op, &targets)?, stats(op, &lse)?);
    let ty = elem_type(op, logits.dtype())?;
    let (n, v) = (logits.shape()[0], logits.shape()[1]);
    let scale = cross_entropy_scale(dloss, count);
    let dz =
        softmax::cross_entropy_bwd(ty, &zs.buf, &ts.buf, &lses.buf, scale, ignore_index, n, v)?;
    Ok(wrap(dz, logits.dtype(), &[n, v], zs.ordinal))
}
