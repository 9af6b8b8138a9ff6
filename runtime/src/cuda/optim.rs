//! The optimiser's arithmetic on CUDA tensors: the fused AdamW update
//! (`kernels/cuda/optim.cu` through `odeflow_kernels::optim`) and the sum of squares of
//! global-norm clipping (`kernels/cuda/reduce.cu` through `odeflow_kernels::reduce`).
//!
//! The runtime's `adamw_update` returns new tensors and leaves its inputs alone, while the
//! kernel updates in place. So the parameter and its two moments are first copied on the
//! device, and the copies updated: three extra reads and writes of 4 bytes per element, as much
//! traffic again as the update itself. An in-place op on the runtime's side would remove them.

use super::{dense, elem_type, flat, wrap};
use crate::ops::optim::AdamWStep;
use crate::{DType, Result, Tensor};
use odeflow_kernels::{optim, reduce};

/// The kernels' copy of the step's hyperparameters (a mirror type: see its doc).
///
/// Shapes: none (scalars only)
fn kernel_step(h: &AdamWStep) -> optim::AdamWStep {
    optim::AdamWStep {
        lr: h.lr,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
        step: h.step,
        grad_scale: h.grad_scale,
    }
}

/// `adamw_update` on CUDA; returns the new (param, m, v), f32. Unlike the CPU loop, the
/// kernel's launcher refuses step 0 (its bias correction 1 - beta^0 = 0 would divide by zero,
/// where the CPU returns NaNs).
///
/// Shapes: param, grad, m, v [..] (all the same; param, m, v f32) -> param', m', v' [..] (f32)
pub(crate) fn adamw_update(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: &AdamWStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "adamw";
    let [p, g, m, v] = [param, grad, m, v].map(dense);
    let (p, g, m, v) = (p?, g?, m?, v?);
    let (ps, gs, ms, vs) = (flat(op, &p)?, flat(op, &g)?, flat(op, &m)?, flat(op, &v)?);
    let grad_ty = elem_type(op, g.dtype())?;
    // the kernel overwrites what it updates: give it copies, so the inputs stay as they were
    let gpu = ps.buf.gpu();
    let (mut p2, mut m2, mut v2) = (gpu.copy(&ps.buf)?, gpu.copy(&ms.buf)?, gpu.copy(&vs.buf)?);
    let n = p.numel();
    optim::adamw_update(
        &mut p2,
        &mut m2,
        &mut v2,
        &gs.buf,
        grad_ty,
        &kernel_step(h),
        n,
    )?;
    let f32s = |buf| wrap(buf, DType::F32, p.shape(), ps.ordinal);
    Ok((f32s(p2), f32s(m2), f32s(v2)))
}

/// `sum_squares` on CUDA: the kernel adds in f32 (in a fixed order), where the CPU adds in
/// f64, so the two differ by about f32 rounding times the square root of the block count.
/// A bf16 x is first cast to f32 (`Tensor::to_dtype`), a copy of n f32s.
///
/// Shapes: x [..] -> f64
pub(crate) fn sum_squares(x: &Tensor) -> Result<f64> {
    let x = dense(x)?.to_dtype(DType::F32)?;
    let xs = flat("sum_squares", &x)?;
    let out = reduce::sum_squares(&xs.buf, x.numel())?;
    let total: Vec<f32> = xs.buf.gpu().download(&out)?;
    Ok(total[0] as f64)
}
