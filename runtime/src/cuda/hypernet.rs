//! The hypernetwork's weight generation on CUDA tensors (`kernels/cuda/hypernet.cu` through
//! `odeflow_kernels::hypernet`).
//!
//! The interface `ops::hypernet::{generate, generate_bwd}` call; the op has already checked that
//! h [N, K] and f [K, ..] are float tensors on one device, and that the N step gradients have
//! f's trailing shape, dtype and device. What is left here is the kernels' own domain: f (and
//! the gradients) f32 or bf16, h f32 or bf16 (f16 is `UnsupportedDType`), and dense inputs.
//! Each input is made `dense` (a copy only where it is a view); each step's gradient is made
//! dense on its own and handed to the kernel by its address, so the N gradients are never
//! joined. The outputs are fresh buffers, overwritten by the kernels: w and df in f's dtype, dh
//! in h's, as on the CPU; given a gradient gathered so far (`acc`), the backward's kernel reads
//! it in the same pass and writes acc + df in acc's dtype instead.

use super::{dense, elem_type, flat, wrap};
use crate::{DType, Result, Tensor};
use odeflow_kernels::hypernet::{self as kernels, HypernetShape};
use odeflow_kernels::DeviceBuffer;

/// h [N, K] and f [K, ..] as the kernels' (N, K, P), P the product of f's trailing dims (so a
/// K of 0 keeps its P).
fn shape_of(h: &Tensor, f: &Tensor) -> HypernetShape {
    HypernetShape::new(h.shape()[0], f.shape()[0], f.shape()[1..].iter().product())
}

/// Every step's weights: w[i] = sum_k h[i, k] f[k].
///
/// Shapes: h [N, K], f [K, ..] -> w [N, ..]
pub fn generate(h: &Tensor, f: &Tensor) -> Result<Tensor> {
    let op = "generate";
    let (f_ty, h_ty) = (elem_type(op, f.dtype())?, elem_type(op, h.dtype())?);
    let (h, f) = (dense(h)?, dense(f)?);
    let (hs, fs) = (flat(op, &h)?, flat(op, &f)?);
    let shape = shape_of(&h, &f);
    let w = kernels::hypernet_fwd(f_ty, h_ty, hs.buffer(), fs.buffer(), &shape)?;
    let mut w_shape = f.shape().to_vec();
    w_shape[0] = shape.n;
    Ok(wrap(w, f.dtype(), &w_shape, fs.ordinal()))
}

/// The backward of `generate` from the N steps' gradients: (dh, df), dh[i, k] = dw[i] . f[k]
/// and df[k] = sum_i h[i, k] dw[i], with df added to `acc` (in acc's dtype) in the same pass
/// when one is given.
///
/// Shapes: dws N x [..], h [N, K], f [K, ..], acc [K, ..] -> dh [N, K], df [K, ..]
pub fn generate_bwd(
    dws: &[Tensor],
    h: &Tensor,
    f: &Tensor,
    acc: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let op = "generate_bwd";
    if let Some(acc) = acc.filter(|a| f.dtype() == DType::F32 && a.dtype() == DType::BF16) {
        // a bf16 gradient over an f32 parameter, which no model keeps, has no kernel: the sum
        // is made in f32 and rounded once, as on the CPU, at the cost of two casts
        let (dh, sum) = generate_bwd(dws, h, f, Some(&acc.to_dtype(DType::F32)?))?;
        return Ok((dh, sum.to_dtype(DType::BF16)?));
    }
    let (f_ty, h_ty) = (elem_type(op, f.dtype())?, elem_type(op, h.dtype())?);
    let df_dtype = acc.map_or(f.dtype(), Tensor::dtype);
    let df_ty = elem_type(op, df_dtype)?;
    let (h, f) = (dense(h)?, dense(f)?);
    let dws: Vec<Tensor> = dws.iter().map(dense).collect::<Result<_>>()?;
    let acc = acc.map(dense).transpose()?;
    let (hs, fs) = (flat(op, &h)?, flat(op, &f)?);
    let dw_buffers: Vec<&DeviceBuffer> = dws
        .iter()
        .map(|dw| flat(op, dw).map(|s| s.buffer()))
        .collect::<Result<_>>()?;
    let acc_buffer = match &acc {
        Some(acc) => Some(flat(op, acc)?.buffer()),
        None => None,
    };
    let shape = shape_of(&h, &f);
    let (dh, df) = kernels::hypernet_bwd(
        f_ty,
        h_ty,
        df_ty,
        &dw_buffers,
        hs.buffer(),
        fs.buffer(),
        acc_buffer,
        &shape,
    )?;
    Ok((
        wrap(dh, h.dtype(), h.shape(), hs.ordinal()),
        wrap(df, df_dtype, f.shape(), fs.ordinal()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn cpu_tensors_are_not_the_kernels_and_say_so() {
        // the op sends only CUDA tensors here; a CPU one is refused, not misread
        let (h, f) = (
            Tensor::zeros(&[2, 3], DType::F32),
            Tensor::zeros(&[3, 4], DType::F32),
        );
        let err = generate(&h, &f).unwrap_err().to_string();
        assert!(err.contains("generate"), "{err}");
        let dws = vec![Tensor::zeros(&[4], DType::F32); 2];
        let err = generate_bwd(&dws, &h, &f, None).unwrap_err().to_string();
        assert!(err.contains("generate_bwd"), "{err}");
        // f16 has no kernel
        let f16 = Tensor::zeros(&[3, 4], DType::F16);
        let err = generate(&h, &f16).unwrap_err().to_string();
        assert!(
            err.contains("generate") && err.contains("f32 or bf16"),
            "{err}"
        );
    }

    #[test]
    fn a_zero_k_keeps_the_columns() {
        let (h, f) = (
            Tensor::zeros(&[2, 0], DType::F32),
            Tensor::zeros(&[0, 3, 5], DType::F32),
        );
        assert_eq!(shape_of(&h, &f), HypernetShape::new(2, 0, 15));
    }
}
