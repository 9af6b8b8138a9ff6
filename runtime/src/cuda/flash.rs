//! Flash attention on CUDA tensors (`kernels/cuda/flash.cu` through `odeflow_kernels::flash`).
//!
//! The interface the runtime's `ops::attention::flash_attention_{fwd,bwd}` call; the op has
//! already checked that q, k, v are float [B, H, T, hd] tensors of one shape, dtype and device.
//! Until the kernel lands, every call is `Error::Unsupported` and `supports` says no, so the
//! tape keeps the materialised attention on CUDA.

use super::unsupported;
use crate::{Result, Tensor};

/// Whether the kernel takes q (its dtype and head dim): the tape asks before choosing it.
pub fn supports(_q: &Tensor) -> bool {
    false
}

/// out and lse (f32 [B, H, T]) of causal attention.
///
/// Shapes: q, k, v [B, H, T, hd] -> out [B, H, T, hd], lse [B, H, T]
pub fn flash_fwd(q: &Tensor, _k: &Tensor, _v: &Tensor) -> Result<(Tensor, Tensor)> {
    Err(unsupported("flash_attention", q.device()))
}

/// dq, dk, dv of `flash_fwd`, from its saved out and lse.
///
/// Shapes: dout, q, k, v, out [B, H, T, hd], lse [B, H, T] -> dq, dk, dv [B, H, T, hd]
pub fn flash_bwd(
    dout: &Tensor,
    _q: &Tensor,
    _k: &Tensor,
    _v: &Tensor,
    _out: &Tensor,
    _lse: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    Err(unsupported("flash_attention_bwd", dout.device()))
}
