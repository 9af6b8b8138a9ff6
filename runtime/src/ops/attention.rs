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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// The model hands attention permuted views ([B, T, H, hd] read as [B, H, T, hd]); the tiled
    /// op must read them as the reference does. Tolerance: f32 sums in another order (see
    /// `cpu/flash.rs`, whose tests cover block sizes and ragged T on contiguous slices).
    #[test]
    fn tiled_op_matches_the_reference_on_permuted_views() {
        let mut rng = Rng::new(3);
        let (b, t, h, hd) = (2, 70, 3, 8);
        let view = |rng: &mut Rng| {
            Tensor::randn(&[b, t, h, hd], 0.0, 1.0, DType::F32, rng)
                .permute(&[0, 2, 1, 3])
                .unwrap()
        };
        let (q, k, v, dout) = (
            view(&mut rng),
            view(&mut rng),
            view(&mut rng),
            view(&mut rng),
        );
        assert!(!q.is_contiguous());
        let (out_ref, probs) = attention_fwd(&q, &k, &v).unwrap();
        let (out, lse) = flash_attention_fwd(&q, &k, &v).unwrap();
        assert_eq!(lse.shape(), &[b, h, t]);
        assert!(max_diff(&out, &out_ref) < 1e-5);
        let grads_ref = attention_bwd(&dout, &q, &k, &v, &probs).unwrap();
        let grads = flash_attention_bwd(&dout, &q, &k, &v, &out, &lse).unwrap();
        for (got, want) in [
            (&grads.0, &grads_ref.0),
            (&grads.1, &grads_ref.1),
            (&grads.2, &grads_ref.2),
        ] {
            assert!(max_diff(got, want) < 1e-5);
        }
    }

    #[test]
    fn tiled_backward_refuses_an_lse_of_the_wrong_shape() {
        let mut rng = Rng::new(4);
        let x = Tensor::randn(&[1, 2, 5, 4], 0.0, 1.0, DType::F32, &mut rng);
        let lse = Tensor::zeros(&[1, 2, 4], DType::F32);
        let err = flash_attention_bwd(&x, &x, &x, &x, &x, &lse).unwrap_err();
        assert!(
            err.to_string().contains("lse must be f32 [B, H, T]"),
            "{err}"
        );
    }

    /// bf16 inputs on the CPU: the math is f32 and only the output rounds back to bf16, so it
    /// is the f32 reference on the same (bf16-valued) inputs, rounded: within half a bf16 step
    /// (8 significant bits: 2^-8 relative), plus the f32 summation noise.
    #[test]
    fn tiled_op_keeps_bf16_in_bf16_out() {
        let mut rng = Rng::new(5);
        let x = |rng: &mut Rng| {
            Tensor::randn(&[1, 2, 40, 8], 0.0, 1.0, DType::F32, rng)
                .to_dtype(DType::BF16)
                .unwrap()
        };
        let (q, k, v) = (x(&mut rng), x(&mut rng), x(&mut rng));
        let (out, lse) = flash_attention_fwd(&q, &k, &v).unwrap();
        assert_eq!((out.dtype(), lse.dtype()), (DType::BF16, DType::F32));
        let f32_of = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
        let (out_ref, _) = attention_fwd(&f32_of(&q), &f32_of(&k), &f32_of(&v)).unwrap();
        let (got, want) = (out.to_f32_vec().unwrap(), out_ref.to_f32_vec().unwrap());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= w.abs() * 2f32.powi(-8) + 1e-6,
                "{g} vs {w}"
            );
        }
    }
}
