//! The elementwise ops on CUDA tensors: `kernels/cuda/elementwise.cu` through
//! `odeflow_kernels::elementwise`.

use super::{dense, elem_type, flat, unsupported, wrap};
use crate::ops::elementwise::{BinaryOp, UnaryOp};
use crate::{Result, Tensor};
use odeflow_kernels::elementwise::{self, Activation, Binary};
use odeflow_kernels::DeviceBuffer;

fn activation(op: UnaryOp) -> Option<Activation> {
    match op {
        UnaryOp::Gelu => Some(Activation::Gelu),
        UnaryOp::Silu => Some(Activation::Silu),
        _ => None,
    }
}

/// `unary_fwd` on CUDA: the activations that have a kernel.
///
/// Shapes: x [any] -> y [same]
pub(crate) fn unary_fwd(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let name = op.name();
    if op == UnaryOp::Neg {
        return affine_fwd(x, -1.0, 0.0); // -x
    }
    let act = activation(op).ok_or_else(|| unsupported(name, x.device()))?;
    let x = dense(x)?;
    let (xs, ty) = (flat(name, &x)?, elem_type(name, x.dtype())?);
    let y = elementwise::activation_fwd(act, ty, &xs.buf, xs.len)?;
    Ok(wrap(y, x.dtype(), x.shape(), xs.ordinal))
}

/// `unary_bwd` on CUDA: dx = dy f'(x) for the activations that have a kernel.
///
/// Shapes: dy, x [any, equal] -> dx [same]
pub(crate) fn unary_bwd(op: UnaryOp, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    let name = op.name();
    if op == UnaryOp::Neg {
        return affine_fwd(dy, -1.0, 0.0); // d(-x) = -dy
    }
    let act = activation(op).ok_or_else(|| unsupported(name, x.device()))?;
    let (dy, x) = (dense(dy)?, dense(x)?);
    let (dys, xs) = (flat(name, &dy)?, flat(name, &x)?);
    let ty = elem_type(name, x.dtype())?;
    let dx = elementwise::activation_bwd(act, ty, &dys.buf, &xs.buf, xs.len)?;
    Ok(wrap(dx, x.dtype(), x.shape(), xs.ordinal))
}

/// `binary_fwd` on CUDA: add, sub and mul. `binary_fwd` has already broadcast both operands
/// to one shape as views; `dense` materialises a broadcast (stride-0) view with the strided
/// copy, so the kernel always sees two flat buffers of one length. (A kernel that reads the
/// broadcast operand in place would save that copy: not written yet.)
///
/// Shapes: a, b [same] -> c [same]
pub(crate) fn binary_fwd(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = op.name();
    let kernel = match op {
        BinaryOp::Add => Binary::Add,
        BinaryOp::Sub => Binary::Sub,
        BinaryOp::Mul => Binary::Mul,
        _ => return Err(unsupported(name, a.device())),
    };
    let (a, b) = (dense(a)?, dense(b)?);
    let (as_, bs) = (flat(name, &a)?, flat(name, &b)?);
    let ty = elem_type(name, a.dtype())?;
    let c = elementwise::binary_fwd(kernel, ty, &as_.buf, &bs.buf, as_.len)?;
    Ok(wrap(c, a.dtype(), a.shape(), as_.ordinal))
}

/// `affine_fwd` on CUDA: y = mul x + add.
///
/// Shapes: x [any] -> y [same]
pub(crate) fn affine_fwd(x: &Tensor, mul: f32, add: f32) -> Result<Tensor> {
    let x = dense(x)?;
    let (xs, ty) = (flat("affine", &x)?, elem_type("affine", x.dtype())?);
    let y = elementwise::affine_fwd(ty, &xs.buf, mul, add, xs.len)?;
    Ok(wrap(y, x.dtype(), x.shape(), xs.ordinal))
}

/// `causal_mask_fill` on CUDA: `value` where the key is after the query in every trailing
/// [T, T] matrix.
///
/// Shapes: x [.., T, T] -> y [same]
pub(crate) fn causal_mask_fill(x: &Tensor, value: f32) -> Result<Tensor> {
    let name = "causal_mask_fill";
    let x = dense(x)?;
    let (xs, ty) = (flat(name, &x)?, elem_type(name, x.dtype())?);
    let t = x.layout().row_len();
    let y = elementwise::causal_mask_fwd(ty, &xs.buf, value, t, xs.len)?;
    Ok(wrap(y, x.dtype(), x.shape(), xs.ordinal))
}

/// `lincomb` on CUDA: y = x + sum_s alpha_s k_s, one kernel that reads x and every k_s once and
/// writes y once (views are made dense first, a copy each).
///
/// Shapes: x [any], each k_s [same] -> y [same]
pub(crate) fn lincomb(x: &Tensor, terms: &[(f32, &Tensor)]) -> Result<Tensor> {
    let name = "lincomb";
    let x = dense(x)?;
    let ks: Vec<Tensor> = terms.iter().map(|(_, k)| dense(k)).collect::<Result<_>>()?;
    let (xs, ty) = (flat(name, &x)?, elem_type(name, x.dtype())?);
    let flat_terms: Vec<(f32, &DeviceBuffer)> = terms
        .iter()
        .zip(&ks)
        .map(|((alpha, _), k)| flat(name, k).map(|s| (*alpha, &s.buf)))
        .collect::<Result<_>>()?;
    let y = elementwise::lincomb_fwd(ty, &xs.buf, &flat_terms, xs.len)?;
    Ok(wrap(y, x.dtype(), x.shape(), xs.ordinal))
}
