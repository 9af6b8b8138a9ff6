//! Causal self-attention, twice: materialised, and tiled ("flash").
//!
//! `attention_fwd` / `attention_bwd` are the slow, obviously-correct reference. They build the
//! whole [T, T] score matrix per head from existing ops (matmul, mask, softmax), so their
//! correctness rests on theirs, and their memory grows as T^2 (the probabilities are saved for
//! the backward).
//!
//! `flash_attention_fwd` / `flash_attention_bwd` compute the same numbers tile by tile (the
//! online softmax of `cpu/flash.rs`, or `kernels/cuda/flash.cu` on CUDA) and save only the
//! output and one log-sum-exp per query, so their memory is linear in T. The tape uses them
//! wherever `flash_supported` says yes (every CPU tensor; on CUDA the dtypes and head dims the
//! kernel takes) and the reference elsewhere; the tests hold the two to each other.

use crate::cpu::flash;
use crate::ops::softmax::softmax_bwd;
use crate::{DType, Device, Error, Result, Tensor};

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

/// Whether the tiled attention runs for q's device, dtype and head dim: always on the CPU, and
/// on CUDA where the kernel has an instantiation (`cuda::flash::supports`).
pub fn flash_supported(q: &Tensor) -> bool {
    match q.device() {
        Device::Cpu => true,
        Device::Cuda(_) => crate::cuda::flash::supports(q),
    }
}

/// [B, H, T, hd] as the kernels' (b_h, T, hd), b_h = B * H.
fn heads(q: &Tensor) -> (usize, usize, usize) {
    let s = q.shape();
    (s[0] * s[1], s[2], s[3])
}

/// The tiled forward: the same `out` as `attention_fwd`, and lse_i = ln sum_{j <= i} exp(s_ij)
/// (f32 whatever q's dtype) in place of the [T, T] probabilities. On the CPU the math is f32
/// (a bf16 input is widened, the output rounded back to bf16).
///
/// Shapes: q, k, v [B, H, T, hd] -> out [B, H, T, hd], lse [B, H, T] (f32)
pub fn flash_attention_fwd(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    check_qkv(q, k, v)?;
    match q.device() {
        Device::Cpu => {
            let (b_h, t, hd) = heads(q);
            let (qs, ks, vs) = (q.f32_data(), k.f32_data(), v.f32_data());
            let (block_q, block_k) = (flash::BLOCK_Q, flash::BLOCK_K);
            let (out, lse) = flash::flash_fwd(&qs, &ks, &vs, b_h, t, hd, block_q, block_k);
            Ok((
                Tensor::from_f32_values(out, q.shape(), q.dtype()),
                Tensor::from_f32_values(lse, &q.shape()[..3], DType::F32),
            ))
        }
        Device::Cuda(_) => crate::cuda::flash::flash_fwd(q, k, v),
    }
}

/// The tiled backward (see `cpu/flash.rs` for its formulas): the probabilities are recomputed
/// tile by tile from q, k and the saved lse, so it needs no [T, T] matrix either.
///
/// Shapes: dout, q, k, v, out [B, H, T, hd], lse [B, H, T] (f32) -> dq, dk, dv [B, H, T, hd]
pub fn flash_attention_bwd(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_qkv(q, k, v)?;
    for x in [dout, out] {
        q.check_same_kind("flash_attention_bwd", x)?;
        q.check_same_shape("flash_attention_bwd", x)?;
    }
    if lse.shape() != &q.shape()[..3] || lse.dtype() != DType::F32 {
        return Err(Error::InvalidArgument {
            op: "flash_attention_bwd",
            msg: format!(
                "lse must be f32 [B, H, T] = {:?}, got {} {:?}",
                &q.shape()[..3],
                lse.dtype(),
                lse.shape()
            ),
        });
    }
    match q.device() {
        Device::Cpu => {
            let (b_h, t, hd) = heads(q);
            let (g, qs, ks, vs) = (dout.f32_data(), q.f32_data(), k.f32_data(), v.f32_data());
            let (os, ls) = (out.f32_data(), lse.f32_data());
            let (block_q, block_k) = (flash::BLOCK_Q, flash::BLOCK_K);
            let (dq, dk, dv) =
                flash::flash_bwd(&g, &qs, &ks, &vs, &os, &ls, b_h, t, hd, block_q, block_k);
            let wrap = |x: Vec<f32>| Tensor::from_f32_values(x, q.shape(), q.dtype());
            Ok((wrap(dq), wrap(dk), wrap(dv)))
        }
        Device::Cuda(_) => crate::cuda::flash::flash_bwd(dout, q, k, v, out, lse),
    }
}
