//! The hypernetwork's weight generation on CUDA tensors (`ops::hypernet`).
//!
//! For now the same math composed from the existing kernels: the forward is the GEMM of h and
//! f seen as [K, P]; the backward joins the steps' gradients into one [N, P] tensor (a copy)
//! and runs the GEMM twice. The fused kernel of issue 10 replaces both; the interface stays.

use crate::{Result, Tensor};

/// [K, ..] as [K, P].
fn flat_stack(f: &Tensor) -> Result<Tensor> {
    let k = f.shape()[0];
    f.reshape(&[k, f.numel() / k.max(1)])
}

/// Shapes: h [N, K], f [K, ..] -> w [N, ..]
pub fn generate(h: &Tensor, f: &Tensor) -> Result<Tensor> {
    let mut shape = f.shape().to_vec();
    shape[0] = h.shape()[0];
    h.to_dtype(f.dtype())?.matmul(&flat_stack(f)?)?.reshape(&shape)
}

/// Shapes: dws N x [..], h [N, K], f [K, ..] -> dh [N, K], df [K, ..]
pub fn generate_bwd(dws: &[Tensor], h: &Tensor, f: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = h.shape()[0];
    let p = f.numel() / f.shape()[0].max(1);
    let rows: Vec<Tensor> = dws.iter().map(|d| d.reshape(&[1, p])).collect::<Result<_>>()?;
    let dw = Tensor::cat(&rows, 0)?; // [N, P]
    let (h_f, f2) = (h.to_dtype(f.dtype())?, flat_stack(f)?);
    let dh = dw.matmul(&f2.t()?)?.to_dtype(h.dtype())?;
    let df = h_f.t()?.matmul(&dw)?.reshape(f.shape())?;
    debug_assert_eq!(dh.shape(), &[n, h.shape()[1]]);
    Ok((dh, df))
}
