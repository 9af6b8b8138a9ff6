//! Flash attention on CUDA tensors (`kernels/cuda/flash.cu` through `odeflow_kernels::flash`).
//!
//! The interface the runtime's `ops::attention::flash_attention_{fwd,bwd}` call; the op has
//! already checked that q, k, v (and dout, out) are float [B, H, T, hd] tensors of one shape,
//! dtype and device, and that lse is f32 [B, H, T]. What is left here is the kernels' own
//! domain: bf16 only (the tensor-core kernels have no f32 variant), and the head dims flash.cu
//! instantiates (32, 64, 128). `supports` says so before the tape picks the tiled attention;
//! anything else is `Error::Unsupported`, and the tape keeps the materialised attention.
//!
//! Each input is made `dense` (a strided copy of a view, such as the heads split out of a
//! fused QKV projection) and seen as [b_h, T, hd], b_h = B * H. Every output is a fresh buffer,
//! overwritten by its kernel: out and the gradients in bf16, lse in f32, as on the CPU.

use super::{dense, flat, unsupported, wrap};
use crate::{DType, Device, Result, Tensor};
use odeflow_kernels::flash::{self, FlashShape};

/// Whether the kernel takes q: a bf16 [B, H, T, hd] CUDA tensor with hd in
/// `flash::FLASH_HEAD_DIMS`. The tape asks before choosing the tiled attention.
pub fn supports(q: &Tensor) -> bool {
    matches!(q.device(), Device::Cuda(_))
        && q.dtype() == DType::BF16
        && q.rank() == 4
        && flash::supports_head_dim(q.shape()[3])
}

/// [B, H, T, hd] as the kernels' (b_h, T, hd).
fn shape_of(q: &Tensor) -> FlashShape {
    let s = q.shape();
    FlashShape::new(s[0] * s[1], s[2], s[3])
}

/// out and lse (f32 [B, H, T]) of causal attention.
///
/// Shapes: q, k, v [B, H, T, hd] -> out [B, H, T, hd], lse [B, H, T]
pub fn flash_fwd(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = "flash_attention";
    if !supports(q) {
        return Err(unsupported(op, q.device()));
    }
    let (q, k, v) = (dense(q)?, dense(k)?, dense(v)?);
    let (qs, ks, vs) = (flat(op, &q)?, flat(op, &k)?, flat(op, &v)?);
    let (out, lse) = flash::flash_fwd(qs.buffer(), ks.buffer(), vs.buffer(), &shape_of(&q))?;
    Ok((
        wrap(out, DType::BF16, q.shape(), qs.ordinal()),
        wrap(lse, DType::F32, &q.shape()[..3], qs.ordinal()),
    ))
}

/// dq, dk, dv of `flash_fwd`, from its saved out and lse.
///
/// Shapes: dout, q, k, v, out [B, H, T, hd], lse [B, H, T] -> dq, dk, dv [B, H, T, hd]
pub fn flash_bwd(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "flash_attention_bwd";
    if !supports(q) {
        return Err(unsupported(op, q.device()));
    }
    let (dout, q, k, v) = (dense(dout)?, dense(q)?, dense(k)?, dense(v)?);
    let (out, lse) = (dense(out)?, dense(lse)?);
    let (gs, qs, ks) = (flat(op, &dout)?, flat(op, &q)?, flat(op, &k)?);
    let (vs, os, ls) = (flat(op, &v)?, flat(op, &out)?, flat(op, &lse)?);
    let (dq, dk, dv) = flash::flash_bwd(
        gs.buffer(),
        qs.buffer(),
        ks.buffer(),
        vs.buffer(),
        os.buffer(),
        ls.buffer(),
        &shape_of(&q),
    )?;
    let grad = |g| wrap(g, DType::BF16, q.shape(), qs.ordinal());
    Ok((grad(dq), grad(dk), grad(dv)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_tensors_are_not_the_kernels_and_say_so() {
        // the op sends only CUDA tensors here; a CPU one is refused, not misread
        let q = Tensor::zeros(&[1, 2, 3, 64], DType::BF16);
        assert!(!supports(&q));
        let err = flash_fwd(&q, &q, &q).unwrap_err().to_string();
        assert!(err.contains("flash_attention"), "{err}");
        let lse = Tensor::zeros(&[1, 2, 3], DType::F32);
        let err = flash_bwd(&q, &q, &q, &q, &q, &lse).unwrap_err().to_string();
        assert!(err.contains("flash_attention_bwd"), "{err}");
    }
}
