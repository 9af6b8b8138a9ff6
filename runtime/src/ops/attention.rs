//! Causal self-attention, materialised: the slow, obviously-correct reference.
//!
//! It builds the whole [T, T] score matrix per head from existing ops (matmul, mask, softmax),
//! so its correctness rests on theirs. The fused (flash-style) kernels of a later issue are
//! tested against it; it is not meant to be fast, and its memory grows as T^2.

use crate::ops::softmax::softmax_bwd;
use crate::{Device, Error, Result, Tensor};

/// Sets the strictly-upper triangle of the last two dims (key j > query i) to `value`.
///
/// Shapes: x [.., T, T] -> y [.., T, T]
pub fn causal_mask_fill(x: &Tensor, value: f32) -> Result<Tensor> {
    x.check_float("causal_mask_fill")?;
    let t = x.layout().row_len();
    if x.rank() < 2 || x.shape()[x.rank() - 2] != t {
        return Err(Error::InvalidArgument {
            op: "causal_mask_fill",
            msg: format!("needs square trailing dims [.., T, T], got {:?}", x.shape()),
        });
    }
    match x.device() {
        Device::Cpu => {
            let x = x.contiguous()?;
            let mut y = x.f32_data().into_owned();
            for (r, row) in y.chunks_mut(t.max(1)).enumerate() {
                row[r % t + 1..].fill(value);
            }
            Ok(Tensor::from_f32_values(y, x.shape(), x.dtype()))
        }
        Device::Cuda(_) => crate::cuda::elementwise::causal_mask_fill(x, value),
    }
}

fn check_qkv(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    q.check_float("attention")?;
    q.check_same_kind("attention", k)?;
    q.check_same_kind("attention", v)?;
    if q.rank() != 4 {
        return Err(Error::InvalidArgument {
            op: "attention",
            msg: format!("q, k, v must be [B, H, T, hd], got q {:?}", q.shape()),
        });
    }
    q.check_same_shape("attention", k)?;
    q.check_same_shape("attention", v)
}

/// out = softmax(mask(q k^T / sqrt(hd))) v, keys after the query masked out.
/// Returns (out, probs); probs is what the backward needs.
///
/// Shapes: q, k, v [B, H, T, hd] -> out [B, H, T, hd], probs [B, H, T, T]
pub fn attention_fwd(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    check_qkv(q, k, v)?;
    let scale = 1.0 / (q.shape()[3] as f32).sqrt();
    let scores = q.matmul(&k.t()?)?.scale(scale)?;
    let probs = causal_mask_fill(&scores, f32::NEG_INFINITY)?.softmax()?;
    let out = probs.matmul(v)?;
    Ok((out, probs))
}

/// The backward, one forward line at a time (S = scaled scores, P = probs):
///   out = P v          ->  dv = P^T dout,  dP = dout v^T
///   P = softmax(S)     ->  dS = P * (dP - rowsum(dP * P))   (masked entries have P = 0)
///   S = q k^T * scale  ->  dq = dS k * scale,  dk = dS^T q * scale
///
/// Shapes: dout [B, H, T, hd], q, k, v [B, H, T, hd], probs [B, H, T, T] -> dq, dk, dv
pub fn attention_bwd(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_qkv(q, k, v)?;
    dout.check_same_shape("attention_bwd", q)?;
    let scale = 1.0 / (q.shape()[3] as f32).sqrt();
    let dv = probs.t()?.matmul(dout)?;
    let dprobs = dout.matmul(&v.t()?)?;
    let dscores = softmax_bwd(&dprobs, probs)?.scale(scale)?;
    let dq = dscores.matmul(k)?;
    let dk = dscores.t()?.matmul(q)?;
    Ok((dq, dk, dv))
}
